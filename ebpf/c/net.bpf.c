// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * nodescope network latency probes. Raw tracepoints only (no kprobes, no fentry, no
 * tracefs needed):
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
 * Raw tracepoint arguments are read as a plain __u64 array: vmlinux.h declares
 * bpf_raw_tracepoint_args.args as a zero-length array, and a CO-RE relocation on it
 * (args[2]) is rejected by aya as out of bounds.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

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

/* Sockets being tracked (connecting or established since the probe started). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
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

/* Last RTT sample time per socket (throttle). LRU: an evicted entry only allows one
 * extra sample. */
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

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NS_DROP_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

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

static __always_inline __u32 slot_connect(__u64 v)
{
	const __u64 b[NS_CONNECT_BOUNDS] = NS_CONNECT_BOUNDS_NS;
	__u32 i;
#pragma unroll
	for (i = 0; i < NS_CONNECT_BOUNDS; i++)
		if (v <= b[i])
			return i;
	return NS_CONNECT_BOUNDS;
}

static __always_inline __u32 slot_rtt(__u64 v)
{
	const __u64 b[NS_RTT_BOUNDS] = NS_RTT_BOUNDS_US;
	__u32 i;
#pragma unroll
	for (i = 0; i < NS_RTT_BOUNDS; i++)
		if (v <= b[i])
			return i;
	return NS_RTT_BOUNDS;
}

static __always_inline __u32 slot_duration(__u64 v)
{
	const __u64 b[NS_DURATION_BOUNDS] = NS_DURATION_BOUNDS_NS;
	__u32 i;
#pragma unroll
	for (i = 0; i < NS_DURATION_BOUNDS; i++)
		if (v <= b[i])
			return i;
	return NS_DURATION_BOUNDS;
}

static __always_inline __u64 sk_cgroup_id(const struct sock *sk)
{
	struct cgroup *cg = BPF_CORE_READ(sk, sk_cgrp_data.cgroup);
	if (!cg)
		return 0;
	return BPF_CORE_READ(cg, kn, id);
}

/* Full sockets only carry sk_cgrp_data; request and timewait sockets share sock_common. */
static __always_inline int sk_is_full(const struct sock *sk)
{
	__u8 st = BPF_CORE_READ(sk, __sk_common.skc_state);
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
	__u16 fam = BPF_CORE_READ(c, skc_family);
	*family = (__u8)fam;
	if (fam == AF_INET6) {
		/* Explicit size: BPF_CORE_READ_INTO would read sizeof(*dst) == 1 byte. */
		bpf_core_read(dst, 16, &c->skc_v6_daddr);
	} else {
		set_mapped_v4(dst, BPF_CORE_READ(c, skc_daddr));
	}
}

static __always_inline void local_addr(const struct sock_common *c, __u8 *dst)
{
	__u16 fam = BPF_CORE_READ(c, skc_family);
	if (fam == AF_INET6) {
		bpf_core_read(dst, 16, &c->skc_v6_rcv_saddr);
	} else {
		set_mapped_v4(dst, BPF_CORE_READ(c, skc_rcv_saddr));
	}
}

/* Builds the peer key of a socket. dir < 0: unknown (socket older than the probe):
 * inbound when the local port is below the remote one (we are the server). */
static __always_inline void key_from_sk(const struct sock *sk, struct ns_peer_key *k, int dir)
{
	const struct sock_common *c = (const struct sock_common *)sk;
	__u16 lport = BPF_CORE_READ(c, skc_num);
	__u16 rport = bpf_ntohs(BPF_CORE_READ(c, skc_dport));

	remote_addr(c, k->addr, &k->family);
	if (dir < 0)
		dir = lport < rport ? NS_DIR_INBOUND : NS_DIR_OUTBOUND;
	k->direction = (__u8)dir;
	k->port = dir == NS_DIR_INBOUND ? lport : rport;
	k->cgroup_id = sk_is_full(sk) ? sk_cgroup_id(sk) : 0;
	k->_pad = 0;
}

/* The key of a socket: the tracked one when we saw it connect / accept, else derived. */
static __always_inline void key_for_sk(const struct sock *sk, struct ns_peer_key *k)
{
	__u64 skp = (__u64)sk;
	struct ns_sock *st = bpf_map_lookup_elem(&socks, &skp);
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
	const struct sock_common *c = (const struct sock_common *)sk;
	e->ts_ns = now;
	e->cgroup_id = k->cgroup_id;
	e->latency_ns = latency;
	local_addr(c, e->saddr);
	remote_addr(c, e->daddr, &e->family);
	e->sport = BPF_CORE_READ(c, skc_num);
	e->dport = bpf_ntohs(BPF_CORE_READ(c, skc_dport));
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

SEC("raw_tracepoint/inet_sock_set_state")
int ns_set_state(__u64 *ctx)
{
	const struct sock *sk = (const struct sock *)ctx[0];
	int oldstate = (int)ctx[1];
	int newstate = (int)ctx[2];
	__u64 skp = (__u64)sk;

	/* Cheap filter first (arguments only): most transitions (FIN_WAIT*, CLOSE_WAIT,
	 * LAST_ACK, LISTEN -> SYN_RECV, ...) carry nothing we aggregate. */
	if (newstate != TCP_SYN_SENT && oldstate != TCP_SYN_SENT && newstate != TCP_CLOSE &&
	    !(oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED))
		return 0;
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	__u64 now = bpf_ktime_get_ns();

	if (newstate == TCP_SYN_SENT) {
		struct ns_sock st = {};
		st.start_ns = now;
		key_from_sk(sk, &st.key, NS_DIR_OUTBOUND);
		st.pid = bpf_get_current_pid_tgid() >> 32;
		bpf_get_current_comm(st.comm, sizeof(st.comm));
		if (bpf_map_update_elem(&socks, &skp, &st, BPF_ANY))
			count(NS_CNT_SOCK_MAP_FULL);
		return 0;
	}

	if (oldstate == TCP_SYN_SENT) {
		struct ns_sock *st = bpf_map_lookup_elem(&socks, &skp);
		if (!st)
			return 0;
		__u64 lat = now - st->start_ns;
		struct ns_peer_stats *s = peer_get(&st->key);
		if (newstate == TCP_ESTABLISHED) {
			if (s) {
				__u32 i = slot_connect(lat);
				if (i > NS_CONNECT_BOUNDS)
					i = NS_CONNECT_BOUNDS;
				__sync_fetch_and_add(&s->connect_hist[i], 1);
				__sync_fetch_and_add(&s->connect_sum_ns, lat);
				__sync_fetch_and_add(&s->active, 1);
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
			int err = BPF_CORE_READ(sk, sk_err);
			__u8 cls = classify_error(err);
			if (s) {
				if (cls >= NS_ERR_SLOTS)
					cls = NS_ERR_OTHER;
				__sync_fetch_and_add(&s->connect_errors[cls], 1);
				s->last_seen_ns = now;
			}
			emit(sk, &st->key, st, NS_EV_CONNECT_FAILED, now, lat, cls, 0, (__u16)err);
			bpf_map_delete_elem(&socks, &skp);
		}
		return 0;
	}

	if (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED) {
		struct ns_sock st = {};
		st.start_ns = now;
		st.established_ns = now;
		st.rtt_last_ns = now;
		st.flags = NS_SOCK_ESTABLISHED;
		key_from_sk(sk, &st.key, NS_DIR_INBOUND);
		if (bpf_map_update_elem(&socks, &skp, &st, BPF_ANY)) {
			count(NS_CNT_SOCK_MAP_FULL);
			return 0;
		}
		struct ns_peer_stats *s = peer_get(&st.key);
		if (s) {
			__sync_fetch_and_add(&s->active, 1);
			s->last_seen_ns = now;
		}
		return 0;
	}

	if (newstate == TCP_CLOSE) {
		struct ns_sock *st = bpf_map_lookup_elem(&socks, &skp);
		if (st && (st->flags & NS_SOCK_ESTABLISHED)) {
			struct ns_peer_stats *s = peer_get(&st->key);
			if (s) {
				const struct tcp_sock *tp = (const struct tcp_sock *)sk;
				__u64 dur = now - st->established_ns;
				__u32 i = slot_duration(dur);
				if (i > NS_DURATION_BOUNDS)
					i = NS_DURATION_BOUNDS;
				__sync_fetch_and_add(&s->duration_hist[i], 1);
				__sync_fetch_and_add(&s->duration_sum_ns, dur);
				__sync_fetch_and_add(&s->active, -1);
				__sync_fetch_and_add(&s->bytes_sent, BPF_CORE_READ(tp, bytes_acked));
				__sync_fetch_and_add(&s->bytes_received, BPF_CORE_READ(tp, bytes_received));
				if (!(st->flags & NS_SOCK_RTT_SAMPLED)) {
					__u32 srtt = BPF_CORE_READ(tp, srtt_us) >> 3;
					if (srtt)
						add_rtt(s, srtt);
				}
				s->last_seen_ns = now;
			}
		}
		if (st)
			bpf_map_delete_elem(&socks, &skp);
		/* rtt_last (LRU) only holds sockets older than the probe; not deleting here
		 * saves an LRU operation per connection. A stale entry can at most delay the
		 * first sample of a new untracked socket at the same address by one interval. */
	}
	return 0;
}

SEC("raw_tracepoint/tcp_probe")
int ns_tcp_probe(__u64 *ctx)
{
	const struct sock *sk = (const struct sock *)ctx[0];
	__u64 skp = (__u64)sk;
	__u64 now = bpf_ktime_get_ns();
	struct ns_peer_key k;
	/* Tracked sockets throttle in their own entry (one lookup on the hot path); only
	 * sockets older than the probe use the LRU throttle map. */
	struct ns_sock *st = bpf_map_lookup_elem(&socks, &skp);

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
	const struct tcp_sock *tp = (const struct tcp_sock *)sk;
	__u32 srtt = BPF_CORE_READ(tp, srtt_us) >> 3;
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

SEC("raw_tracepoint/tcp_retransmit_skb")
int ns_retransmit(__u64 *ctx)
{
	const struct sock *sk = (const struct sock *)ctx[0];
	struct ns_peer_key k;
	key_for_sk(sk, &k);
	struct ns_peer_stats *s = peer_get(&k);
	if (s) {
		__sync_fetch_and_add(&s->retransmits, 1);
		s->last_seen_ns = bpf_ktime_get_ns();
	}
	return 0;
}

SEC("raw_tracepoint/tcp_retransmit_synack")
int ns_retransmit_synack(__u64 *ctx)
{
	const struct sock *listener = (const struct sock *)ctx[0];
	const struct request_sock *req = (const struct request_sock *)ctx[1];
	const struct sock_common *c = &req->__req_common;
	struct ns_peer_key k = {};

	remote_addr(c, k.addr, &k.family);
	k.port = BPF_CORE_READ(c, skc_num);
	k.direction = NS_DIR_INBOUND;
	k.cgroup_id = sk_is_full(listener) ? sk_cgroup_id(listener) : 0;
	struct ns_peer_stats *s = peer_get(&k);
	if (s) {
		__sync_fetch_and_add(&s->retransmits, 1);
		s->last_seen_ns = bpf_ktime_get_ns();
	}
	return 0;
}

/* A reset sent with no socket: the peer is the packet's source, the port its destination. */
static __always_inline int key_from_skb(const struct sk_buff *skb, struct ns_peer_key *k)
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
		k->family = AF_INET;
	} else if ((vihl >> 4) == 6) {
		struct ipv6hdr ip6;
		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh))
			return -1;
		__builtin_memcpy(k->addr, &ip6.saddr, 16);
		k->family = AF_INET6;
	} else {
		return -1;
	}
	if (bpf_probe_read_kernel(&t, sizeof(t), head + th))
		return -1;
	k->port = bpf_ntohs(t.dest);
	k->direction = NS_DIR_INBOUND;
	k->cgroup_id = 0;
	return 0;
}

SEC("raw_tracepoint/tcp_send_reset")
int ns_send_reset(__u64 *ctx)
{
	const struct sock *sk = (const struct sock *)ctx[0];
	const struct sk_buff *skb = (const struct sk_buff *)ctx[1];
	__u32 reason = (__u32)ctx[2];
	struct ns_peer_key k = {};
	struct ns_sock *st = 0;
	__u64 now = bpf_ktime_get_ns();

	if (sk) {
		__u64 skp = (__u64)sk;
		st = bpf_map_lookup_elem(&socks, &skp);
		if (st)
			k = st->key;
		else
			key_from_sk(sk, &k, -1);
	} else if (!skb || key_from_skb(skb, &k)) {
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
		__builtin_memcpy(e->daddr, k.addr, 16);
		e->family = k.family;
		e->sport = k.port;
		e->kind = NS_EV_RESET_SENT;
		e->direction = NS_DIR_INBOUND;
		e->reason = (__u16)reason;
		bpf_ringbuf_submit(e, 0);
		count(NS_CNT_EVENTS_SENT);
	}
	return 0;
}

SEC("raw_tracepoint/tcp_receive_reset")
int ns_receive_reset(__u64 *ctx)
{
	const struct sock *sk = (const struct sock *)ctx[0];
	__u64 skp = (__u64)sk;
	__u64 now = bpf_ktime_get_ns();
	struct ns_peer_key k;
	struct ns_sock *st = bpf_map_lookup_elem(&socks, &skp);

	if (st)
		k = st->key;
	else
		key_from_sk(sk, &k, -1);
	__u32 state = BPF_CORE_READ(sk, __sk_common.skc_state);
	__u32 slot = state & (NS_TCP_STATE_SLOTS - 1);
	struct ns_peer_stats *s = peer_get(&k);
	if (s) {
		__sync_fetch_and_add(&s->resets_received[slot], 1);
		s->last_seen_ns = now;
	}
	emit(sk, &k, st, NS_EV_RESET_RECEIVED, now, st ? now - st->start_ns : 0, 0, (__u16)state, 0);
	return 0;
}

SEC("raw_tracepoint/kfree_skb")
int ns_kfree_skb(__u64 *ctx)
{
	__u32 reason = (__u32)ctx[2];
	__u32 slot = reason < NS_DROP_SLOTS - 1 ? reason : NS_DROP_SLOTS - 1;
	__u64 *v = bpf_map_lookup_elem(&drops, &slot);
	if (v)
		*v += 1;
	return 0;
}
