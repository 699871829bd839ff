// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * nodescope network latency probes. BTF-typed raw tracepoints (tp_btf) only (no kprobes,
 * no fentry, no tracefs needed):
 *   inet_sock_set_state  connect latency / failures, accepted connections, duration,
 *                        close-time summary (srtt, bytes)
 *   tcp_probe            live smoothed RTT, throttled per socket
 *   tcp_retransmit_skb   retransmits;  tcp_retransmit_synack  SYN-ACK retransmits
 *   tcp_send_reset / tcp_receive_reset   resets with reason / state
 *   kfree_skb            drops by reason
 *
 * Aggregation happens here, in bounded maps (struct ns_peer_stats per workload x peer);
 * only notable events (failed / slow connects, resets) go to the ring buffer, through a
 * global rate limit. Everything that does not fit is counted in `counters`.
 *
 * Cost matters: inet_sock_set_state runs ~10 times per connection. The per-socket state
 * lives in a set-associative array (no hash-map insert / delete per connection),
 * arguments are typed so socket fields are plain loads (no bpf_probe_read_kernel), and
 * transitions that carry nothing are filtered on the arguments before touching the
 * socket. (Socket-local storage, BPF_MAP_TYPE_SK_STORAGE, was measured and rejected: its
 * allocation per socket made inet_sock_set_state 1.7-2x slower than the hash map.)
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_tracing.h>

#include "net.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

#define ECONNRESET 104
#define ETIMEDOUT 110
#define ECONNREFUSED 111
#define ENETUNREACH 101
#define EHOSTUNREACH 113
#define EHOSTDOWN 112
#define ENETDOWN 100

/* Tunables, set by user space before load (aya EbpfLoader::set_global). */
volatile const __u64 cfg_slow_connect_ns = 500000000ULL;
volatile const __u64 cfg_rtt_interval_ns = 1000000000ULL;
volatile const __u64 cfg_events_per_sec = 100;
/* Sets in `socks`: its max_entries / NS_SOCK_WAYS (user space sets both). */
volatile const __u64 cfg_sock_sets = 16384 / NS_SOCK_WAYS;

/* Per-socket state of the sockets we saw connect / accept: a set-associative table
 * (NS_SOCK_WAYS slots per set), the set chosen by a hash of the socket address. The
 * owners of a set's slots sit together in one `sock_tags` value (one or two cache lines
 * to scan); the state of slot (set, way) is `socks[set * NS_SOCK_WAYS + way]`. Array
 * lookups are inlined by the verifier, a slot is claimed with one compare-and-swap and
 * freed with one exchange: tracking a connection costs a few loads instead of a
 * hash-map insert and delete (bucket lock, free list, hashing). max_entries of `socks`
 * (the socket cap) bounds the sockets tracked; a socket whose set is full is not tracked
 * (NS_CNT_SOCK_MAP_FULL), which can happen below the cap when one set fills first. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16384 / NS_SOCK_WAYS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct ns_sock_tags);
} sock_tags SEC(".maps");

/* Memory-mapped by user space, which counts the established connections per peer here
 * (nodescope_tcp_connections_active) instead of the kernel keeping a gauge per peer:
 * accepting a connection then touches no per-peer state at all. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct ns_sock);
} socks SEC(".maps");

/* Aggregates per workload x peer; max_entries is the peer cardinality cap. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct ns_peer_key);
	__type(value, struct ns_peer_stats);
} peers SEC(".maps");

/* Overflow: aggregates per workload x direction once `peers` is full (peer "other"). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct ns_peer_key);
	__type(value, struct ns_peer_stats);
} peers_other SEC(".maps");

/* Last RTT sample time per socket (throttle), for sockets older than the probe.
 * LRU: an evicted entry only allows one extra sample. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u64);
} rtt_last SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NS_CNT_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Which drop reasons are counted (1) and which not (0: benign reasons, unless configured);
 * filled by user space after load, before the program is attached. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NS_DROP_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} drop_filter SEC(".maps");

/* Drops per workload (the cgroup of the socket the skb belongs to or was received by;
 * 0: no socket) and reason. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct ns_drop_key);
	__type(value, __u64);
} drops SEC(".maps");

/* Drops whose workload x reason did not fit in `drops`, per reason (workload "other"). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NS_DROP_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} drops_other SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ns_rate);
} rate SEC(".maps");

/* One all-zero value used to insert new peer entries (never written). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ns_peer_stats);
} zero SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += 1;
}

/* The histogram slot of `v` for the `n` upper bounds `b` (slot n: above the last bound).
 * Inlined with constant `b` and `n`, the loop unrolls into a compare chain. */
static __always_inline __u32 slot_of(__u64 v, const __u64 *b, __u32 n)
{
	__u32 i;
#pragma unroll
	for (i = 0; i < n; i++)
		if (v <= b[i])
			return i;
	return n;
}

static __always_inline __u32 slot_connect(__u64 v)
{
	const __u64 b[NS_CONNECT_BOUNDS] = NS_CONNECT_BOUNDS_NS;
	return slot_of(v, b, NS_CONNECT_BOUNDS);
}

static __always_inline __u32 slot_rtt(__u64 v)
{
	const __u64 b[NS_RTT_BOUNDS] = NS_RTT_BOUNDS_US;
	return slot_of(v, b, NS_RTT_BOUNDS);
}

static __always_inline __u32 slot_duration(__u64 v)
{
	const __u64 b[NS_DURATION_BOUNDS] = NS_DURATION_BOUNDS_NS;
	return slot_of(v, b, NS_DURATION_BOUNDS);
}

/* Socket fields are read with plain CO-RE relocated loads: tp_btf arguments are typed
 * kernel pointers (PTR_TO_BTF_ID), so no bpf_probe_read_kernel call is needed. */
static __always_inline __u64 sk_cgroup_id(const struct sock *sk)
{
	struct cgroup *cg = sk->sk_cgrp_data.cgroup;
	if (!cg)
		return 0;
	return cg->kn->id;
}

/* Full sockets only carry sk_cgrp_data; request and timewait sockets share sock_common. */
static __always_inline int sk_is_full(const struct sock *sk)
{
	__u8 st = sk->__sk_common.skc_state;
	return st != TCP_TIME_WAIT && st != TCP_NEW_SYN_RECV;
}

static __always_inline void set_mapped_v4(__u8 *dst, __u32 a)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &a, 4);
}

static __always_inline void remote_addr(const struct sock_common *c, __u8 *dst, __u8 *family)
{
	__u16 fam = c->skc_family;
	*family = (__u8)fam;
	if (fam == AF_INET6) {
		/* Explicit size: BPF_CORE_READ_INTO would read sizeof(*dst) == 1 byte. */
		bpf_core_read(dst, 16, &c->skc_v6_daddr);
	} else {
		set_mapped_v4(dst, c->skc_daddr);
	}
}

static __always_inline void local_addr(const struct sock_common *c, __u8 *dst)
{
	__u16 fam = c->skc_family;
	if (fam == AF_INET6) {
		bpf_core_read(dst, 16, &c->skc_v6_rcv_saddr);
	} else {
		set_mapped_v4(dst, c->skc_rcv_saddr);
	}
}

/* The local port of a socket. A full socket whose port number was already released
 * (tcp_set_state(TCP_CLOSE) -> inet_put_port zeroes skc_num, e.g. before the reset of
 * an SO_LINGER 0 close) still has it in inet_sport, as the tcp_send_reset tracepoint's
 * own format reads it. */
static __always_inline __u16 sk_local_port(const struct sock *sk)
{
	__u16 p = sk->__sk_common.skc_num;
	if (p || !sk_is_full(sk))
		return p;
	__be16 sp = 0;
	bpf_core_read(&sp, sizeof(sp), &((const struct inet_sock *)sk)->inet_sport);
	return bpf_ntohs(sp);
}

/* Builds the peer key of a socket. dir < 0: unknown (socket older than the probe):
 * inbound when the local port is below the remote one (we are the server). */
static __always_inline void key_from_sk(const struct sock *sk, struct ns_peer_key *k, int dir)
{
	const struct sock_common *c = &sk->__sk_common;
	__u16 lport = dir < 0 ? sk_local_port(sk) : c->skc_num;
	__u16 rport = bpf_ntohs(c->skc_dport);

	remote_addr(c, k->addr, &k->family);
	if (dir < 0)
		dir = lport < rport ? NS_DIR_INBOUND : NS_DIR_OUTBOUND;
	k->direction = (__u8)dir;
	k->port = dir == NS_DIR_INBOUND ? lport : rport;
	k->cgroup_id = sk_is_full(sk) ? sk_cgroup_id(sk) : 0;
	k->_pad = 0;
}

/* Sockets are identified by their address. A tp_btf argument is a typed pointer on which
 * the verifier forbids arithmetic (the set hash needs it); passing it through a per-CPU
 * scratch slot turns it into a plain number for the cost of one store and one load
 * (bpf_get_socket_cookie did the same for ~20 ns per call). One slot per program: a
 * program never nests in itself on a CPU (the kernel skips such runs), but another
 * program can interrupt it between the store and the load. */
#define NS_SCRATCH_SET_STATE 0
#define NS_SCRATCH_TCP_PROBE 1
#define NS_SCRATCH_RETRANSMIT 2
#define NS_SCRATCH_SEND_RESET 3
#define NS_SCRATCH_RECEIVE_RESET 4
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
} scratch SEC(".maps");

static __always_inline __u64 sk_id(const struct sock *sk, __u32 slot)
{
	volatile __u64 *v = bpf_map_lookup_elem(&scratch, &slot);
	if (!v)
		return 0;
	*v = (__u64)sk;
	return *v;
}

/* The set of socket `id` (multiplicative hash, then range reduction by multiplication:
 * no division, any number of sets). */
static __always_inline __u32 sock_set(__u64 id)
{
	__u64 h = (id * 0x9E3779B97F4A7C15ULL) >> 32;
	return (__u32)((h * cfg_sock_sets) >> 32);
}

static __always_inline struct ns_sock *sock_slot(__u32 set, __u32 way)
{
	__u32 i = set * NS_SOCK_WAYS + way;
	return bpf_map_lookup_elem(&socks, &i);
}

/* The per-socket state of socket `id`, or NULL (not tracked). */
static __always_inline struct ns_sock *sock_find(__u64 id)
{
	__u32 set = sock_set(id);
	struct ns_sock_tags *t = bpf_map_lookup_elem(&sock_tags, &set);
	if (!t)
		return 0;
#pragma unroll
	for (__u32 w = 0; w < NS_SOCK_WAYS; w++)
		if (t->sk[w] == id)
			return sock_slot(set, w);
	return 0;
}

static __always_inline struct ns_sock *sock_get(const struct sock *sk, __u32 slot)
{
	__u64 id = sk_id(sk, slot);
	return id ? sock_find(id) : 0;
}

/* Claims a slot for socket `id` (or reuses its own: a socket whose close we missed, at
 * the same address); NULL (counted) when its set is full. The caller sets every field. */
static __always_inline struct ns_sock *sock_track(__u64 id)
{
	__u32 set = sock_set(id);
	struct ns_sock_tags *t = bpf_map_lookup_elem(&sock_tags, &set);
	struct ns_sock *e = 0;

	if (!t)
		return 0;
#pragma unroll
	for (__u32 w = 0; w < NS_SOCK_WAYS; w++) {
		if (t->sk[w] == id) {
			e = sock_slot(set, w);
			goto found;
		}
	}
#pragma unroll
	for (__u32 w = 0; w < NS_SOCK_WAYS; w++) {
		if (t->sk[w] == 0 && __sync_val_compare_and_swap(&t->sk[w], 0, id) == 0) {
			e = sock_slot(set, w);
			goto found;
		}
	}
found:
	if (!e)
		count(NS_CNT_SOCK_MAP_FULL);
	return e;
}

/* Frees the slot of socket `id`; call after the last read of its state (the exchange is
 * a full barrier). */
static __always_inline void sock_untrack(__u64 id)
{
	__u32 set = sock_set(id);
	struct ns_sock_tags *t = bpf_map_lookup_elem(&sock_tags, &set);
	if (!t)
		return;
#pragma unroll
	for (__u32 w = 0; w < NS_SOCK_WAYS; w++) {
		if (t->sk[w] == id) {
			__sync_lock_test_and_set(&t->sk[w], 0);
			return;
		}
	}
}

/* The key of a socket: the tracked one when we saw it connect / accept, else derived. */
static __always_inline void key_for_sk(struct sock *sk, struct ns_peer_key *k, __u32 slot)
{
	struct ns_sock *st = sock_get(sk, slot);
	if (st) {
		*k = st->key;
		return;
	}
	key_from_sk(sk, k, -1);
}

/* Finds or creates the stats of `k`; past the peer cap, the workload's "other" entry. */
static __always_inline struct ns_peer_stats *peer_get(const struct ns_peer_key *k)
{
	struct ns_peer_stats *s = bpf_map_lookup_elem(&peers, k);
	if (s)
		return s;
	__u32 z = 0;
	struct ns_peer_stats *zv = bpf_map_lookup_elem(&zero, &z);
	if (!zv)
		return 0;
	bpf_map_update_elem(&peers, k, zv, BPF_NOEXIST);
	s = bpf_map_lookup_elem(&peers, k);
	if (s)
		return s;
	count(NS_CNT_PEER_OVERFLOW);
	struct ns_peer_key o = {};
	o.cgroup_id = k->cgroup_id;
	o.direction = k->direction;
	s = bpf_map_lookup_elem(&peers_other, &o);
	if (s)
		return s;
	bpf_map_update_elem(&peers_other, &o, zv, BPF_NOEXIST);
	s = bpf_map_lookup_elem(&peers_other, &o);
	if (!s)
		count(NS_CNT_OTHER_MAP_FULL);
	return s;
}

static __always_inline int rate_ok(__u64 now)
{
	__u32 z = 0;
	struct ns_rate *r = bpf_map_lookup_elem(&rate, &z);
	if (!r)
		return 0;
	if (now - r->window_start_ns >= 1000000000ULL) {
		/* Racy across CPUs by design: at worst a few extra events per window. */
		r->window_start_ns = now;
		r->count = 0;
	}
	if (r->count >= cfg_events_per_sec) {
		count(NS_CNT_EVENTS_RATE_LIMITED);
		return 0;
	}
	__sync_fetch_and_add(&r->count, 1);
	return 1;
}

static __always_inline void emit(const struct sock *sk, const struct ns_peer_key *k,
				 const struct ns_sock *st, __u8 kind, __u64 now, __u64 latency,
				 __u8 error, __u16 reason, __u16 sk_err)
{
	if (!rate_ok(now))
		return;
	struct ns_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(NS_CNT_EVENTS_LOST);
		return;
	}
	const struct sock_common *c = &sk->__sk_common;
	e->ts_ns = now;
	e->cgroup_id = k->cgroup_id;
	e->latency_ns = latency;
	local_addr(c, e->saddr);
	remote_addr(c, e->daddr, &e->family);
	e->sport = sk_local_port(sk);
	e->dport = bpf_ntohs(c->skc_dport);
	e->kind = kind;
	e->direction = k->direction;
	e->error = error;
	e->reason = reason;
	e->sk_err = sk_err;
	if (st) {
		e->pid = st->pid;
		__builtin_memcpy(e->comm, st->comm, sizeof(e->comm));
	} else {
		e->pid = 0;
		__builtin_memset(e->comm, 0, sizeof(e->comm));
	}
	bpf_ringbuf_submit(e, 0);
	count(NS_CNT_EVENTS_SENT);
}

static __always_inline __u8 classify_error(int err)
{
	switch (err) {
	case ECONNREFUSED:
		return NS_ERR_REFUSED;
	case ETIMEDOUT:
		return NS_ERR_TIMEOUT;
	case ECONNRESET:
		return NS_ERR_RESET;
	case ENETUNREACH:
	case EHOSTUNREACH:
	case EHOSTDOWN:
	case ENETDOWN:
		return NS_ERR_UNREACHABLE;
	default:
		return NS_ERR_OTHER;
	}
}

static __always_inline void add_rtt(struct ns_peer_stats *s, __u32 srtt_us)
{
	__u32 i = slot_rtt(srtt_us);
	if (i > NS_RTT_BOUNDS)
		i = NS_RTT_BOUNDS;
	__sync_fetch_and_add(&s->rtt_hist[i], 1);
	__sync_fetch_and_add(&s->rtt_sum_us, srtt_us);
}

/* All programs are BTF-typed raw tracepoints (tp_btf): typed arguments and direct
 * (CO-RE relocated) socket loads instead of bpf_probe_read_kernel calls. Attached with
 * BPF_RAW_TRACEPOINT_OPEN: no tracefs. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(ns_set_state, struct sock *sk, int oldstate, int newstate)
{
	/* Cheap filter first (arguments only): most transitions (FIN_WAIT*, CLOSE_WAIT,
	 * LAST_ACK, LISTEN -> SYN_RECV, ...) carry nothing we aggregate. */
	if (newstate != TCP_SYN_SENT && oldstate != TCP_SYN_SENT && newstate != TCP_CLOSE &&
	    !(oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED))
		return 0;
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	__u64 id = sk_id(sk, NS_SCRATCH_SET_STATE);
	if (!id)
		return 0;

	if (newstate == TCP_SYN_SENT) {
		struct ns_sock *st = sock_track(id);
		if (!st)
			return 0;
		st->start_ns = bpf_ktime_get_ns();
		st->established_ns = 0;
		st->rtt_last_ns = 0;
		st->flags = 0;
		key_from_sk(sk, &st->key, NS_DIR_OUTBOUND);
		st->pid = bpf_get_current_pid_tgid() >> 32;
		bpf_get_current_comm(st->comm, sizeof(st->comm));
		return 0;
	}

	if (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED) {
		/* SYN_RECV -> ESTABLISHED: an accepted connection. */
		struct ns_sock *st = sock_track(id);
		if (!st)
			return 0;
		/* No per-peer state here: the peer's stats are created when the connection
		 * closes; user space counts it as active from this slot meanwhile. */
		__u64 now = bpf_ktime_get_ns();
		st->start_ns = now;
		st->established_ns = now;
		st->rtt_last_ns = now;
		key_from_sk(sk, &st->key, NS_DIR_INBOUND);
		st->pid = 0;
		__builtin_memset(st->comm, 0, sizeof(st->comm));
		/* Last: user space counts ESTABLISHED slots, so the key must be there first
		 * (stores are not reordered on x86; the barrier keeps the compiler in line). */
		asm volatile("" ::: "memory");
		st->flags = NS_SOCK_ESTABLISHED;
		return 0;
	}

	/* SYN_SENT -> ESTABLISHED / CLOSE, or anything -> CLOSE: tracked sockets only. */
	struct ns_sock *st = sock_find(id);
	if (!st)
		return 0;
	__u64 now = bpf_ktime_get_ns();

	if (oldstate == TCP_SYN_SENT) {
		__u64 lat = now - st->start_ns;
		struct ns_peer_stats *s = peer_get(&st->key);
		if (newstate == TCP_ESTABLISHED) {
			if (s) {
				__u32 i = slot_connect(lat);
				if (i > NS_CONNECT_BOUNDS)
					i = NS_CONNECT_BOUNDS;
				__sync_fetch_and_add(&s->connect_hist[i], 1);
				__sync_fetch_and_add(&s->connect_sum_ns, lat);
				s->last_seen_ns = now;
			}
			st->established_ns = now;
			/* First live RTT sample one interval after the handshake: short
			 * connections get theirs from the close-time summary instead. */
			st->rtt_last_ns = now;
			st->flags |= NS_SOCK_ESTABLISHED;
			if (lat >= cfg_slow_connect_ns)
				emit(sk, &st->key, st, NS_EV_CONNECT_SLOW, now, lat, 0, 0, 0);
			return 0;
		}
		if (newstate == TCP_CLOSE) {
			int err = sk->sk_err;
			__u8 cls = classify_error(err);
			if (s) {
				if (cls >= NS_ERR_SLOTS)
					cls = NS_ERR_OTHER;
				__sync_fetch_and_add(&s->connect_errors[cls], 1);
				s->last_seen_ns = now;
			}
			emit(sk, &st->key, st, NS_EV_CONNECT_FAILED, now, lat, cls, 0, (__u16)err);
			st->flags = 0;
			sock_untrack(id);
		}
		return 0;
	}

	if (newstate == TCP_CLOSE) {
		if (st->flags & NS_SOCK_ESTABLISHED) {
			struct ns_peer_stats *s = peer_get(&st->key);
			struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
			if (s) {
				__u64 dur = now - st->established_ns;
				__u32 i = slot_duration(dur);
				if (i > NS_DURATION_BOUNDS)
					i = NS_DURATION_BOUNDS;
				__sync_fetch_and_add(&s->duration_hist[i], 1);
				__sync_fetch_and_add(&s->duration_sum_ns, dur);
				if (tp) {
					__sync_fetch_and_add(&s->bytes_sent, tp->bytes_acked);
					__sync_fetch_and_add(&s->bytes_received, tp->bytes_received);
					if (!(st->flags & NS_SOCK_RTT_SAMPLED)) {
						__u32 srtt = tp->srtt_us >> 3;
						if (srtt)
							add_rtt(s, srtt);
					}
				}
				s->last_seen_ns = now;
			}
		}
		/* Not active any more (user space counts ESTABLISHED slots), before the slot
		 * is given back. */
		st->flags = 0;
		sock_untrack(id);
		/* rtt_last (LRU) only holds sockets older than the probe; not deleting here
		 * saves an LRU operation per connection. A stale entry can at most delay the
		 * first sample of a new untracked socket at the same address by one interval. */
	}
	return 0;
}

/* tcp_probe considers a socket only once it has received this many segments. Before
 * that its srtt is little more than the handshake RTT, and a tracked socket gets an RTT
 * from its close-time summary anyway. The check reads a field of the socket the kernel
 * is processing (no map lookup): short connections, most tcp_probe hits on a busy
 * server, never touch our tables here. Measured on a loopback connect loop: reading the
 * socket table from the CPU that receives the FIN cost ~125 ns in this program and
 * ~135 ns more in inet_sock_set_state (the slot's cache lines then bounce between CPUs). */
#define NS_RTT_MIN_SEGS 8

SEC("tp_btf/tcp_probe")
int BPF_PROG(ns_tcp_probe, struct sock *sk, struct sk_buff *skb)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp || tp->segs_in < NS_RTT_MIN_SEGS)
		return 0;
	/* Throttle: tracked sockets in their own storage (no hashing), sockets older than
	 * the probe in the LRU throttle map. */
	__u64 skp = sk_id(sk, NS_SCRATCH_TCP_PROBE);
	struct ns_sock *st = skp ? sock_find(skp) : 0;
	__u64 now = bpf_ktime_get_ns();
	struct ns_peer_key k;

	if (st) {
		if (now - st->rtt_last_ns < cfg_rtt_interval_ns)
			return 0;
		st->rtt_last_ns = now;
		st->flags |= NS_SOCK_RTT_SAMPLED;
		k = st->key;
	} else {
		__u64 *last = bpf_map_lookup_elem(&rtt_last, &skp);
		if (last) {
			if (now - *last < cfg_rtt_interval_ns)
				return 0;
			*last = now;
		} else {
			bpf_map_update_elem(&rtt_last, &skp, &now, BPF_ANY);
		}
		key_from_sk(sk, &k, -1);
	}
	__u32 srtt = tp->srtt_us >> 3;
	if (!srtt)
		return 0;
	struct ns_peer_stats *s = peer_get(&k);
	if (s) {
		add_rtt(s, srtt);
		s->last_seen_ns = now;
	}
	count(NS_CNT_RTT_SAMPLES);
	return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(ns_retransmit, struct sock *sk, struct sk_buff *skb)
{
	struct ns_peer_key k;
	key_for_sk(sk, &k, NS_SCRATCH_RETRANSMIT);
	struct ns_peer_stats *s = peer_get(&k);
	if (s) {
		__sync_fetch_and_add(&s->retransmits, 1);
		s->last_seen_ns = bpf_ktime_get_ns();
	}
	return 0;
}

SEC("tp_btf/tcp_retransmit_synack")
int BPF_PROG(ns_retransmit_synack, struct sock *listener, struct request_sock *req)
{
	const struct sock_common *c = &req->__req_common;
	struct ns_peer_key k = {};

	remote_addr(c, k.addr, &k.family);
	k.port = c->skc_num;
	k.direction = NS_DIR_INBOUND;
	k.cgroup_id = sk_is_full(listener) ? sk_cgroup_id(listener) : 0;
	struct ns_peer_stats *s = peer_get(&k);
	if (s) {
		__sync_fetch_and_add(&s->retransmits, 1);
		s->last_seen_ns = bpf_ktime_get_ns();
	}
	return 0;
}

/* A reset sent with no socket, from the packet that caused it: the peer is the packet's
 * source (`k->addr`, `*rport`), the local end its destination (`laddr`, `k->port`). */
static __always_inline int key_from_skb(const struct sk_buff *skb, struct ns_peer_key *k,
					__u8 *laddr, __u16 *rport)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u16 th = BPF_CORE_READ(skb, transport_header);
	__u8 vihl = 0;
	struct tcphdr t;

	if (!head || bpf_probe_read_kernel(&vihl, 1, head + nh))
		return -1;
	if ((vihl >> 4) == 4) {
		struct iphdr ip;
		if (bpf_probe_read_kernel(&ip, sizeof(ip), head + nh))
			return -1;
		set_mapped_v4(k->addr, ip.saddr);
		set_mapped_v4(laddr, ip.daddr);
		k->family = AF_INET;
	} else if ((vihl >> 4) == 6) {
		struct ipv6hdr ip6;
		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh))
			return -1;
		__builtin_memcpy(k->addr, &ip6.saddr, 16);
		__builtin_memcpy(laddr, &ip6.daddr, 16);
		k->family = AF_INET6;
	} else {
		return -1;
	}
	if (bpf_probe_read_kernel(&t, sizeof(t), head + th))
		return -1;
	k->port = bpf_ntohs(t.dest);
	*rport = bpf_ntohs(t.source);
	k->direction = NS_DIR_INBOUND;
	k->cgroup_id = 0;
	return 0;
}

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(ns_send_reset, struct sock *sk, struct sk_buff *skb, int reason_arg)
{
	__u32 reason = (__u32)reason_arg;
	struct ns_peer_key k = {};
	struct ns_sock *st = 0;
	__u64 now = bpf_ktime_get_ns();
	__u8 laddr[16] = {};
	__u16 rport = 0;

	if (sk) {
		st = sock_get(sk, NS_SCRATCH_SEND_RESET);
		if (st)
			k = st->key;
		else
			key_from_sk(sk, &k, -1);
	} else if (!skb || key_from_skb(skb, &k, laddr, &rport)) {
		return 0;
	}
	__u32 slot = reason < NS_RST_REASON_SLOTS - 1 ? reason : NS_RST_REASON_SLOTS - 1;
	struct ns_peer_stats *s = peer_get(&k);
	if (s) {
		if (slot >= NS_RST_REASON_SLOTS)
			slot = NS_RST_REASON_SLOTS - 1;
		__sync_fetch_and_add(&s->resets_sent[slot], 1);
		s->last_seen_ns = now;
	}
	if (sk) {
		emit(sk, &k, st, NS_EV_RESET_SENT, now, 0, 0, (__u16)reason, 0);
	} else if (rate_ok(now)) {
		/* No socket: report from the packet. */
		struct ns_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
		if (!e) {
			count(NS_CNT_EVENTS_LOST);
			return 0;
		}
		__builtin_memset(e, 0, sizeof(*e));
		e->ts_ns = now;
		__builtin_memcpy(e->saddr, laddr, 16);
		__builtin_memcpy(e->daddr, k.addr, 16);
		e->family = k.family;
		e->sport = k.port;
		e->dport = rport;
		e->kind = NS_EV_RESET_SENT;
		e->direction = NS_DIR_INBOUND;
		e->reason = (__u16)reason;
		bpf_ringbuf_submit(e, 0);
		count(NS_CNT_EVENTS_SENT);
	}
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(ns_receive_reset, struct sock *sk)
{
	__u64 now = bpf_ktime_get_ns();
	struct ns_peer_key k;
	struct ns_sock *st = sock_get(sk, NS_SCRATCH_RECEIVE_RESET);

	if (st)
		k = st->key;
	else
		key_from_sk(sk, &k, -1);
	__u32 state = sk->__sk_common.skc_state;
	__u32 slot = state & (NS_TCP_STATE_SLOTS - 1);
	struct ns_peer_stats *s = peer_get(&k);
	if (s) {
		__sync_fetch_and_add(&s->resets_received[slot], 1);
		s->last_seen_ns = now;
	}
	emit(sk, &k, st, NS_EV_RESET_RECEIVED, now, st ? now - st->start_ns : 0, 0, (__u16)state, 0);
	return 0;
}

/* Drops by workload and reason. The reason filter comes first (one inlined array load):
 * benign reasons such as queue_purge, one per closed loopback connection, cost no more.
 * The workload is the socket the skb belongs to (a sender's socket, e.g. an OUTPUT drop
 * by netfilter) or, for drops at a receiving socket (its buffer full, a listener's
 * queue), the receiving socket; a packet dropped with no socket (forwarded, or before
 * the socket lookup) has none (0). */
SEC("tp_btf/kfree_skb")
int BPF_PROG(ns_kfree_skb, struct sk_buff *skb, void *location, int reason_arg,
	     struct sock *rx_sk)
{
	__u32 reason = (__u32)reason_arg;
	__u32 slot = reason < NS_DROP_SLOTS - 1 ? reason : NS_DROP_SLOTS - 1;
	__u32 *on = bpf_map_lookup_elem(&drop_filter, &slot);
	if (!on || !*on)
		return 0;
	struct sock *sk = skb->sk;
	if (!sk)
		sk = rx_sk;
	struct ns_drop_key k = {};
	k.cgroup_id = sk && sk_is_full(sk) ? sk_cgroup_id(sk) : 0;
	k.reason = slot;
	__u64 *v = bpf_map_lookup_elem(&drops, &k);
	if (!v) {
		__u64 one = 1;
		if (!bpf_map_update_elem(&drops, &k, &one, BPF_NOEXIST))
			return 0;
		v = bpf_map_lookup_elem(&drops, &k);
		if (!v) {
			__u64 *o = bpf_map_lookup_elem(&drops_other, &slot);
			if (o)
				*o += 1;
			return 0;
		}
	}
	__sync_fetch_and_add(v, 1);
	return 0;
}
