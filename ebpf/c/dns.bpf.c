// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * nodescope DNS probe: request latency and answer codes per workload, server, qtype,
 * rcode and transport, plus lookups (search-path fan-out), without kprobes.
 *
 * Two cgroup_skb programs on the cgroup2 root see every packet of every local socket
 * (attached with BPF_F_ALLOW_MULTI through a BPF link, so programs of others on the root
 * or below keep running; both always return 1 = pass):
 *   egress   a DNS query leaving a client socket (UDP, or TCP with its length prefix) to
 *            one of the configured server ports: remembered in the in-flight table under
 *            its 5-tuple and transaction id, with the time, the socket's cgroup, the
 *            process, the question name (for events only) and its QTYPE;
 *   ingress  a DNS answer arriving at a client socket: matched to its query by the same
 *            5-tuple and id; its latency goes into the workload x server x qtype x rcode
 *            x transport histogram (`dns_stats`).
 * Queries never answered are timeouts: re-sent with the same 5-tuple and id (counted
 * here), or swept from the in-flight table by user space once older than the timeout.
 *
 * The in-flight table is a set-associative array (NS_DNS_WAYS slots per set, the set
 * chosen by a hash of the query key), memory-mapped by user space: a query claims a slot
 * with one compare-and-swap on its tag and writes straight into it; its answer finds it
 * with a few loads and gives it back with one exchange. No hash-map insert and delete
 * (bucket lock, free list, 320-byte value copy) per query.
 *
 * Cost: every packet of every socket passes through these programs, so the first test
 * uses only the socket (skb->sk, no packet access): packets of a socket connected to a
 * non-DNS port, or bound to a DNS port (a server), return at once. Only sockets connected
 * to a DNS port and unconnected UDP sockets (and listeners, refused on their state) get
 * their headers read.
 *
 * A lookup (nodescope_dns_lookups_total) is what one process of a workload asks about
 * one name: its queries share the first label of the question name (the search-path
 * expansions name.ns.svc.cluster.local, name.svc.cluster.local, ..., name; the A and AAAA
 * pair; retries; the TCP retry of a truncated answer). A query starts a new lookup unless
 * the process's lookup for that label is still open: active within cfg_lookup_gap_ns
 * (cfg_timeout_ns while a query is unanswered), and not yet answered with records for
 * the query's type (A, AAAA, other).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "dns.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define EEXIST 17

#define DNS_QR 0x8000
#define DNS_TC 0x0200

/* Tunables, set by user space before load. */
volatile const __u64 cfg_dns_port0 = 53;
volatile const __u64 cfg_dns_port1 = 53;
volatile const __u64 cfg_dns_port2 = 53;
volatile const __u64 cfg_dns_port3 = 53;
volatile const __u64 cfg_slow_ns = 250000000ULL;
volatile const __u64 cfg_events_per_sec = 100;
volatile const __u64 cfg_lookup_gap_ns = 100000000ULL;
volatile const __u64 cfg_timeout_ns = 5000000000ULL;
/* 1: NXDOMAIN answers are events too (off: search-path expansions make them common). */
volatile const __u64 cfg_nxdomain_events = 0;

/* Sets of the in-flight table: dns_slots' max_entries / NS_DNS_WAYS (user space sets
 * both). */
volatile const __u64 cfg_dns_sets = 4096 / NS_DNS_WAYS;

/* Queries waiting for their answer: the owners of each set's slots, and the slots. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4096 / NS_DNS_WAYS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct ns_dns_tags);
} dns_tags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct ns_dns_slot);
} dns_slots SEC(".maps");

/* Aggregates per workload x server x qtype x rcode x transport. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct ns_dns_key);
	__type(value, struct ns_dns_stats);
} dns_stats SEC(".maps");

/* Overflow once dns_stats is full: the same key with server "other". */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct ns_dns_key);
	__type(value, struct ns_dns_stats);
} dns_stats_other SEC(".maps");

/* Open lookups. LRU: an evicted open lookup only makes its next query count as a new
 * lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct ns_dns_lkey);
	__type(value, struct ns_dns_lookup_state);
} dns_lookup_state SEC(".maps");

/* Lookups and queries per workload, per CPU (16 bytes per workload and CPU: no atomic
 * adds on the query path). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct ns_dns_lookup_stats);
} dns_lookups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NS_DNS_CNT_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} dns_counters SEC(".maps");

/* One all-zero value used to insert new aggregates (never written). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ns_dns_stats);
} dns_zero SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ns_dns_rate);
} dns_rate SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} dns_events SEC(".maps");

struct dnshdr {
	__be16 id;
	__be16 flags;
	__be16 qdcount;
	__be16 ancount;
	__be16 nscount;
	__be16 arcount;
};

/* A packet's endpoints and where its DNS message starts. */
struct pkt {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u32 off; /* DNS header offset from skb->data (the network header) */
	__u32 len; /* DNS message bytes in this packet from `off` */
	__u8 transport;
	__u8 family;
};

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&dns_counters, &idx);
	if (v)
		*v += 1;
}

static __always_inline int is_dns_port(__u32 p)
{
	return p == cfg_dns_port0 || p == cfg_dns_port1 || p == cfg_dns_port2 ||
	       p == cfg_dns_port3;
}

/* The socket alone decides for most packets. 1: look at the packet. */
static __always_inline int sock_may_carry_dns(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 0;
	__u32 rport = bpf_ntohs(sk->dst_port);
	if (rport)
		return is_dns_port(rport); /* connected: to a DNS server or not */
	/* Unconnected: a UDP socket that may sendto() a server, unless it is bound to a
	 * DNS port itself (a server), or a TCP listener. */
	if (is_dns_port(sk->src_port))
		return 0;
	return sk->state != BPF_TCP_LISTEN;
}

static __always_inline void set_mapped_v4(__u8 *dst, __u32 a)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &a, 4);
}

/* Reads the network and transport headers. 0: a UDP or TCP packet with room for a DNS
 * header; its endpoints, ports and DNS offset in `p`. */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u32 l4, tot, proto;

	if (data + 1 > end)
		return -1;
	__u8 ver = *(__u8 *)data >> 4;
	if (ver == 4) {
		struct iphdr *ip = data;
		if ((void *)(ip + 1) > end)
			return -1;
		if (ip->frag_off & bpf_htons(0x3fff)) /* a fragment: no (whole) L4 header */
			return -1;
		l4 = ip->ihl * 4;
		tot = bpf_ntohs(ip->tot_len);
		proto = ip->protocol;
		set_mapped_v4(p->saddr, ip->saddr);
		set_mapped_v4(p->daddr, ip->daddr);
		p->family = AF_INET;
	} else if (ver == 6) {
		struct ipv6hdr *ip6 = data;
		if ((void *)(ip6 + 1) > end)
			return -1;
		l4 = sizeof(*ip6);
		tot = sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
		proto = ip6->nexthdr; /* extension headers are not walked */
		__builtin_memcpy(p->saddr, &ip6->saddr, 16);
		__builtin_memcpy(p->daddr, &ip6->daddr, 16);
		p->family = AF_INET6;
	} else {
		return -1;
	}
	if (l4 < 20 || l4 > 60)
		return -1;
	if (proto == IPPROTO_UDP) {
		struct udphdr *u = data + l4;
		if ((void *)(u + 1) > end)
			return -1;
		__u32 ulen = bpf_ntohs(u->len);
		if (ulen < sizeof(*u) + sizeof(struct dnshdr))
			return -1;
		p->sport = bpf_ntohs(u->source);
		p->dport = bpf_ntohs(u->dest);
		p->off = l4 + sizeof(*u);
		p->len = ulen - sizeof(*u);
		p->transport = NS_DNS_UDP;
		return 0;
	}
	if (proto == IPPROTO_TCP) {
		struct tcphdr *t = data + l4;
		if ((void *)(t + 1) > end)
			return -1;
		__u32 doff = t->doff * 4;
		/* A segment that starts with the 2-byte length of a DNS message. */
		if (tot < l4 + doff + 2 + sizeof(struct dnshdr))
			return -1;
		p->sport = bpf_ntohs(t->source);
		p->dport = bpf_ntohs(t->dest);
		p->off = l4 + doff + 2;
		p->len = tot - l4 - doff - 2;
		p->transport = NS_DNS_TCP;
		return 0;
	}
	return -1;
}

/* The aggregate key's qtype: the QTYPE itself when it is one of NS_DNS_QTYPES, else 0. */
static __always_inline __u16 qtype_class(__u16 t)
{
	switch (t) {
	case 1:
	case 2:
	case 5:
	case 6:
	case 12:
	case 15:
	case 16:
	case 28:
	case 33:
	case 35:
	case 64:
	case 65:
	case 255:
	case 257:
		return t;
	default:
		return 0;
	}
}

static __always_inline __u32 slot_of(__u64 v)
{
	const __u64 b[NS_DNS_BOUNDS] = NS_DNS_BOUNDS_NS;
	__u32 i;
#pragma unroll
	for (i = 0; i < NS_DNS_BOUNDS; i++)
		if (v <= b[i])
			return i;
	return NS_DNS_BOUNDS;
}

/* Counts one request (answered: with its latency) under `k`; past the map's bound under
 * server "other". */
static __always_inline void stats_add(struct ns_dns_key *k, __u64 lat, int answered, __u64 now)
{
	struct ns_dns_stats *s = bpf_map_lookup_elem(&dns_stats, k);
	if (!s) {
		__u32 z = 0;
		struct ns_dns_stats *zv = bpf_map_lookup_elem(&dns_zero, &z);
		if (!zv)
			return;
		bpf_map_update_elem(&dns_stats, k, zv, BPF_NOEXIST);
		s = bpf_map_lookup_elem(&dns_stats, k);
		if (!s) {
			count(NS_DNS_CNT_STATS_OVERFLOW);
			__builtin_memset(k->server, 0, sizeof(k->server));
			k->family = 0;
			s = bpf_map_lookup_elem(&dns_stats_other, k);
			if (!s) {
				bpf_map_update_elem(&dns_stats_other, k, zv, BPF_NOEXIST);
				s = bpf_map_lookup_elem(&dns_stats_other, k);
			}
			if (!s) {
				count(NS_DNS_CNT_OTHER_FULL);
				return;
			}
		}
	}
	if (answered) {
		__u32 i = slot_of(lat);
		if (i > NS_DNS_BOUNDS)
			i = NS_DNS_BOUNDS;
		__sync_fetch_and_add(&s->hist[i], 1);
		__sync_fetch_and_add(&s->sum_ns, lat);
	}
	__sync_fetch_and_add(&s->requests, 1);
	s->last_seen_ns = now;
}

static __always_inline int rate_ok(__u64 now)
{
	__u32 z = 0;
	struct ns_dns_rate *r = bpf_map_lookup_elem(&dns_rate, &z);
	if (!r)
		return 0;
	if (now - r->window_start_ns >= 1000000000ULL) {
		/* Racy across CPUs by design: at worst a few extra events per window. */
		r->window_start_ns = now;
		r->count = 0;
	}
	if (r->count >= cfg_events_per_sec) {
		count(NS_DNS_CNT_EVENTS_RATE_LIMITED);
		return 0;
	}
	__sync_fetch_and_add(&r->count, 1);
	return 1;
}

static __always_inline void fill_event(struct ns_dns_event *e, const struct ns_dns_query *q,
				       const struct ns_dns_qkey *qk, __u8 kind, __u8 rcode,
				       __u64 lat, __u64 now)
{
	e->ts_ns = now;
	e->cgroup_id = q->cgroup_id;
	e->latency_ns = lat;
	__builtin_memcpy(e->client, qk->client, 16);
	__builtin_memcpy(e->server, qk->server, 16);
	e->client_port = qk->client_port;
	e->server_port = qk->server_port;
	e->pid = q->pid;
	e->id = qk->id;
	e->qtype = q->qtype;
	e->kind = kind;
	e->rcode = rcode;
	e->transport = qk->transport;
	e->family = q->family;
	e->name_len = q->name_len;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	__builtin_memcpy(e->comm, q->comm, sizeof(e->comm));
	__builtin_memcpy(e->name, q->name, sizeof(e->name));
}

static __always_inline void emit(const struct ns_dns_query *q, const struct ns_dns_qkey *qk,
				 __u8 kind, __u8 rcode, __u64 lat, __u64 now)
{
	if (!rate_ok(now))
		return;
	struct ns_dns_event *e = bpf_ringbuf_reserve(&dns_events, sizeof(*e), 0);
	if (!e) {
		count(NS_DNS_CNT_EVENTS_LOST);
		return;
	}
	fill_event(e, q, qk, kind, rcode, lat, now);
	bpf_ringbuf_submit(e, 0);
	count(NS_DNS_CNT_EVENTS_SENT);
}

/* A hash of the query key, never 0 (the tag of its slot). */
static __always_inline __u64 qkey_hash(const struct ns_dns_qkey *k)
{
	__u64 w[5];
	__builtin_memcpy(w, k, sizeof(w));
	__u64 h = 0;
#pragma unroll
	for (int i = 0; i < 5; i++) {
		h = (h ^ w[i]) * 0x9E3779B97F4A7C15ULL;
		h ^= h >> 29;
	}
	return h | 1;
}

static __always_inline int qkey_eq(const struct ns_dns_qkey *a, const struct ns_dns_qkey *b)
{
	__u64 x[5], y[5];
	__builtin_memcpy(x, a, sizeof(x));
	__builtin_memcpy(y, b, sizeof(y));
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3] && x[4] == y[4];
}

static __always_inline __u32 qkey_set(__u64 h)
{
	return (__u32)(((h >> 32) * cfg_dns_sets) >> 32);
}

static __always_inline struct ns_dns_slot *dns_slot(__u32 set, __u32 way)
{
	__u32 i = set * NS_DNS_WAYS + way;
	return bpf_map_lookup_elem(&dns_slots, &i);
}

static __always_inline void key_of(struct ns_dns_key *k, const struct ns_dns_query *q,
				   const struct ns_dns_qkey *qk, __u8 rcode)
{
	k->cgroup_id = q->cgroup_id;
	__builtin_memcpy(k->server, qk->server, 16);
	k->qtype = qtype_class(q->qtype);
	k->rcode = rcode;
	k->transport = qk->transport;
	k->family = q->family;
	k->_pad[0] = 0;
	k->_pad[1] = 0;
	k->_pad[2] = 0;
}

static __always_inline __u32 done_bit(__u16 qtype)
{
	return qtype == 1 ? NS_DNS_DONE_A : qtype == 28 ? NS_DNS_DONE_AAAA : NS_DNS_DONE_OTHER;
}

/* FNV-1a of the first label of a wire-format name. */
static __always_inline __u32 label_hash(const __u8 *name, __u32 n)
{
	__u32 h = 2166136261u;
	__u32 l = name[0];
	for (__u32 i = 1; i <= 63; i++) {
		if (i > l || i >= n)
			break;
		h ^= name[i];
		h *= 16777619u;
	}
	return h;
}

static __always_inline void on_query(struct __sk_buff *skb, struct pkt *p)
{
	struct dnshdr h;
	if (bpf_skb_load_bytes(skb, p->off, &h, sizeof(h)))
		return;
	__u16 flags = bpf_ntohs(h.flags);
	/* An answer leaving (we are a server or a forwarder) or another opcode. */
	if ((flags & DNS_QR) || ((flags >> 11) & 0xf))
		return;
	if (bpf_ntohs(h.qdcount) != 1 || p->len < sizeof(h) + 5) {
		count(NS_DNS_CNT_MALFORMED);
		return;
	}
	struct ns_dns_qkey qk __attribute__((aligned(8)));
	__builtin_memcpy(qk.client, p->saddr, 16);
	__builtin_memcpy(qk.server, p->daddr, 16);
	qk.client_port = p->sport;
	qk.server_port = p->dport;
	qk.id = bpf_ntohs(h.id);
	qk.transport = p->transport;
	qk._pad = 0;
	__u64 tag = qkey_hash(&qk);
	__u32 set = qkey_set(tag);
	struct ns_dns_tags *t = bpf_map_lookup_elem(&dns_tags, &set);
	if (!t)
		return;
	__u64 now = bpf_ktime_get_ns();
	count(NS_DNS_CNT_QUERIES);

	/* The same query again? Over TCP that is a segment retransmission (the first copy
	 * is still the one being answered); over UDP the client gave up waiting: the
	 * earlier attempt timed out, and this one takes its slot. */
	struct ns_dns_slot *sl = 0;
	int resent = 0;
#pragma unroll
	for (__u32 w = 0; w < NS_DNS_WAYS; w++) {
		if (t->tag[w] == tag) {
			struct ns_dns_slot *o = dns_slot(set, w);
			if (o && o->q.start_ns && qkey_eq(&o->key, &qk)) {
				if (p->transport == NS_DNS_TCP)
					return;
				struct ns_dns_key k;
				key_of(&k, &o->q, &o->key, NS_DNS_RCODE_TIMEOUT);
				stats_add(&k, 0, 0, now);
				emit(&o->q, &o->key, NS_DNS_EV_TIMEOUT, NS_DNS_RCODE_TIMEOUT,
				     now - o->q.start_ns, now);
				count(NS_DNS_CNT_RETRANSMITS);
				sl = o;
				resent = 1;
			}
			break;
		}
	}
	if (!sl) {
#pragma unroll
		for (__u32 w = 0; w < NS_DNS_WAYS; w++) {
			if (t->tag[w] == 0 && __sync_val_compare_and_swap(&t->tag[w], 0, tag) == 0) {
				sl = dns_slot(set, w);
				break;
			}
		}
	}
	if (!sl) {
		count(NS_DNS_CNT_INFLIGHT_FULL);
		return;
	}
	struct ns_dns_query *q = &sl->q;
	q->start_ns = 0; /* not yet: the sweep leaves the slot alone while it is filled */
	sl->key = qk;
	__u32 n = p->len - sizeof(h);
	if (n > NS_DNS_NAME_MAX)
		n = NS_DNS_NAME_MAX;
	if (n < 1 || bpf_skb_load_bytes(skb, p->off + sizeof(h), q->name, n))
		n = 0;
	/* The question name ends at a zero label; its QTYPE follows. */
	__u32 pos = 0, end = n;
	for (int i = 0; i < NS_DNS_MAX_LABELS; i++) {
		if (pos >= n)
			break;
		__u8 l = q->name[pos & (NS_DNS_NAME_MAX - 1)];
		if (l == 0) {
			end = pos;
			break;
		}
		if (l & 0xc0) /* a pointer or an extended label: not in a question */
			break;
		pos += l + 1;
	}
	q->qtype = 0;
	if (end < n && end + 2 < n)
		q->qtype = ((__u16)q->name[(end + 1) & (NS_DNS_NAME_MAX - 1)] << 8) |
			   q->name[(end + 2) & (NS_DNS_NAME_MAX - 1)];
	/* With its zero label when complete; without one user space knows it was cut. */
	q->name_len = end < n ? end + 1 : n;

	__u64 pid_tgid = bpf_get_current_pid_tgid();
	q->cgroup_id = bpf_skb_cgroup_id(skb);
	q->pid = pid_tgid >> 32;
	q->family = p->family;
	q->lkey.cgroup_id = q->cgroup_id;
	q->lkey.pid = pid_tgid >> 32;
	q->lkey.label_hash = n ? label_hash(q->name, n) : 0;
	bpf_get_current_comm(q->comm, sizeof(q->comm));
	asm volatile("" ::: "memory");
	q->start_ns = now;

	/* Lookup accounting. */
	int fresh = 0;
	struct ns_dns_lookup_state *st = bpf_map_lookup_elem(&dns_lookup_state, &q->lkey);
	if (!st) {
		struct ns_dns_lookup_state ns = {.last_ns = now, .outstanding = 1, .done = 0};
		bpf_map_update_elem(&dns_lookup_state, &q->lkey, &ns, BPF_ANY);
		fresh = 1;
	} else if ((st->done & done_bit(q->qtype)) ||
		   now - st->last_ns > (st->outstanding ? cfg_timeout_ns : cfg_lookup_gap_ns)) {
		/* A new lookup of a name this process asked before: restart its entry in place
		 * (an LRU update takes the map's lock and a free node; the same process asking
		 * the same name again is the common case). Only this process's queries for
		 * this label touch the entry; a racing answer at worst leaves `outstanding` one
		 * off, which the timeout of an open lookup absorbs. */
		st->last_ns = now;
		st->outstanding = 1;
		st->done = 0;
		fresh = 1;
	} else {
		st->last_ns = now;
		if (!resent)
			__sync_fetch_and_add(&st->outstanding, 1);
	}
	__u64 cg = q->cgroup_id;
	struct ns_dns_lookup_stats *ls = bpf_map_lookup_elem(&dns_lookups, &cg);
	if (!ls) {
		struct ns_dns_lookup_stats zl = {};
		bpf_map_update_elem(&dns_lookups, &cg, &zl, BPF_NOEXIST);
		ls = bpf_map_lookup_elem(&dns_lookups, &cg);
		if (!ls) {
			count(NS_DNS_CNT_LOOKUPS_FULL);
			return;
		}
	}
	/* This CPU's copy: plain adds. */
	ls->lookups += fresh;
	ls->queries += 1;
}

static __always_inline int is_failure(__u8 rcode)
{
	/* NOERROR and NXDOMAIN are answers; everything else is the server failing us. */
	return rcode != 0 && rcode != 3 && rcode < 16;
}

static __always_inline void on_answer(struct __sk_buff *skb, struct pkt *p)
{
	struct dnshdr h;
	if (bpf_skb_load_bytes(skb, p->off, &h, sizeof(h)))
		return;
	__u16 flags = bpf_ntohs(h.flags);
	if (!(flags & DNS_QR))
		return; /* a query arriving: we are the server */
	struct ns_dns_qkey qk __attribute__((aligned(8)));
	__builtin_memcpy(qk.client, p->daddr, 16);
	__builtin_memcpy(qk.server, p->saddr, 16);
	qk.client_port = p->dport;
	qk.server_port = p->sport;
	qk.id = bpf_ntohs(h.id);
	qk.transport = p->transport;
	qk._pad = 0;
	__u64 tag = qkey_hash(&qk);
	__u32 set = qkey_set(tag);
	struct ns_dns_tags *t = bpf_map_lookup_elem(&dns_tags, &set);
	if (!t)
		return;
	struct ns_dns_slot *sl = 0;
	__u32 way = 0;
#pragma unroll
	for (__u32 w = 0; w < NS_DNS_WAYS; w++) {
		if (t->tag[w] == tag) {
			sl = dns_slot(set, w);
			way = w;
			break;
		}
	}
	if (!sl || !sl->q.start_ns || !qkey_eq(&sl->key, &qk)) {
		count(NS_DNS_CNT_UNMATCHED);
		return;
	}
	struct ns_dns_query *q = &sl->q;
	__u64 now = bpf_ktime_get_ns();
	__u64 lat = now - q->start_ns;
	__u8 rcode = flags & 0xf;
	if (p->transport == NS_DNS_UDP && (flags & DNS_TC))
		rcode = NS_DNS_RCODE_TRUNCATED;
	struct ns_dns_key k;
	key_of(&k, q, &qk, rcode);
	struct ns_dns_lkey lk = q->lkey;
	__u16 qtype = q->qtype;

	__u8 kind = 0;
	if (is_failure(rcode) || (rcode == 3 && cfg_nxdomain_events))
		kind = NS_DNS_EV_FAILED;
	else if (lat >= cfg_slow_ns)
		kind = NS_DNS_EV_SLOW;
	struct ns_dns_event *e = 0;
	if (kind && rate_ok(now)) {
		e = bpf_ringbuf_reserve(&dns_events, sizeof(*e), 0);
		if (e)
			fill_event(e, q, &qk, kind, rcode, lat, now);
		else
			count(NS_DNS_CNT_EVENTS_LOST);
	}
	/* Give the slot back; if the sweep took it meanwhile (it counted a timeout), this
	 * answer is not counted again. */
	q->start_ns = 0;
	if (__sync_lock_test_and_set(&t->tag[way & (NS_DNS_WAYS - 1)], 0) != tag) {
		if (e)
			bpf_ringbuf_discard(e, 0);
		count(NS_DNS_CNT_LATE);
		return;
	}
	if (e) {
		bpf_ringbuf_submit(e, 0);
		count(NS_DNS_CNT_EVENTS_SENT);
	}
	stats_add(&k, lat, 1, now);

	struct ns_dns_lookup_state *st = bpf_map_lookup_elem(&dns_lookup_state, &lk);
	if (st) {
		if (st->outstanding)
			__sync_fetch_and_add(&st->outstanding, -1);
		st->last_ns = now;
		if (rcode == 0 && h.ancount)
			st->done |= done_bit(qtype);
	}
	count(NS_DNS_CNT_ANSWERS);
}

SEC("cgroup_skb/egress")
int ns_dns_egress(struct __sk_buff *skb)
{
	struct pkt p;
	if (!sock_may_carry_dns(skb))
		return 1;
	if (parse(skb, &p) || !is_dns_port(p.dport) || p.len > 65535)
		return 1;
	on_query(skb, &p);
	return 1;
}

SEC("cgroup_skb/ingress")
int ns_dns_ingress(struct __sk_buff *skb)
{
	struct pkt p;
	if (!sock_may_carry_dns(skb))
		return 1;
	if (parse(skb, &p) || !is_dns_port(p.sport) || p.len > 65535)
		return 1;
	on_answer(skb, &p);
	return 1;
}
