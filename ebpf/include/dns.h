/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Structs and constants shared by ebpf/c/dns.bpf.c (kernel) and ebpf/src/dns.rs (user
 * space). The Rust side mirrors every struct here once, with size asserts and a test that
 * compiles this header with the host C compiler and compares sizeof/offsetof.
 */
#ifndef NODESCOPE_DNS_H
#define NODESCOPE_DNS_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* nodescope_dns_request_duration_seconds: .0005 .001 .0025 .005 .01 .025 .05 .1 .25 .5 1 2.5 5 10 (ns). */
#define NS_DNS_BOUNDS 14
#define NS_DNS_BOUNDS_NS                                                                       \
	{ 500000ULL, 1000000ULL, 2500000ULL, 5000000ULL, 10000000ULL, 25000000ULL, 50000000ULL, \
	  100000000ULL, 250000000ULL, 500000000ULL, 1000000000ULL, 2500000000ULL,             \
	  5000000000ULL, 10000000000ULL }

/* Query-name bytes kept per in-flight query for events (wire format, from the question).
 * A power of two: the kernel masks offsets with it. Never a label. */
#define NS_DNS_NAME_MAX 256
/* Labels walked to find the end of the question name (and its QTYPE). */
#define NS_DNS_MAX_LABELS 64

/* Ports recognised as DNS (user space fills unused slots with the first port). */
#define NS_DNS_PORTS 4

/* Slots per set of the in-flight table (set-associative, like the TCP socket table). */
#define NS_DNS_WAYS 8

/* `rcode` of an aggregate: the DNS RCODE (0..15) of the answer, or one of these. */
#define NS_DNS_RCODE_TIMEOUT 16   /* no answer: retransmitted, or swept after the timeout */
#define NS_DNS_RCODE_TRUNCATED 17 /* a UDP answer with TC set (the client retries over TCP) */
#define NS_DNS_RCODE_SLOTS 18

#define NS_DNS_UDP 0
#define NS_DNS_TCP 1

/* QTYPEs kept as themselves in aggregate keys; every other QTYPE is folded into 0
 * ("other"), so a client cannot create 65 536 series with made-up types. */
#define NS_DNS_QTYPES { 1, 2, 5, 6, 12, 15, 16, 28, 33, 35, 64, 65, 255, 257 }
#define NS_DNS_NQTYPES 14

/* Indices of the `dns_counters` per-CPU array. */
#define NS_DNS_CNT_QUERIES 0          /* queries seen (egress) */
#define NS_DNS_CNT_ANSWERS 1          /* answers matched to a query */
#define NS_DNS_CNT_UNMATCHED 2        /* answers matching no in-flight query */
#define NS_DNS_CNT_INFLIGHT_FULL 3    /* query not tracked: dns_inflight full */
#define NS_DNS_CNT_RETRANSMITS 4      /* query re-sent with the same 5-tuple and id */
#define NS_DNS_CNT_STATS_OVERFLOW 5   /* aggregate counted under server "other" */
#define NS_DNS_CNT_OTHER_FULL 6       /* even dns_stats_other was full: update lost */
#define NS_DNS_CNT_EVENTS_RATE_LIMITED 7
#define NS_DNS_CNT_EVENTS_LOST 8      /* ring buffer full */
#define NS_DNS_CNT_EVENTS_SENT 9
#define NS_DNS_CNT_LOOKUPS_FULL 10    /* dns_lookups full: a lookup's counts lost */
#define NS_DNS_CNT_MALFORMED 11       /* port-53 payload that is not a DNS message we parse */
#define NS_DNS_CNT_LATE 12            /* answer to a query user space had just swept as a timeout */
#define NS_DNS_CNT_SLOTS 16

/* Event kinds (struct ns_dns_event.kind). */
#define NS_DNS_EV_SLOW 1    /* answered after at least the slow threshold */
#define NS_DNS_EV_FAILED 2  /* answered with SERVFAIL, REFUSED, FORMERR, NOTIMP or another error */
#define NS_DNS_EV_TIMEOUT 3 /* no answer (retransmitted; user space also sweeps stale queries) */

/* struct ns_dns_lookup_state.done: the QTYPEs (A, AAAA, any other) a lookup already got
 * records for. A query of such a type starts a new lookup; a query of another type (the
 * AAAA that follows an A answered first) continues it. */
#define NS_DNS_DONE_A 1
#define NS_DNS_DONE_AAAA 2
#define NS_DNS_DONE_OTHER 4

/* Aggregation key of nodescope_dns_request_duration_seconds / nodescope_dns_requests_total:
 * workload (cgroup v2 id) x server x qtype x rcode x transport. Addresses are IPv6 or
 * IPv4-mapped IPv6; the "other" overflow key has a zero server and family 0. */
struct ns_dns_key {
	__u64 cgroup_id;
	__u8 server[16];
	__u16 qtype;
	__u8 rcode;
	__u8 transport;
	__u8 family;
	__u8 _pad[3];
};

struct ns_dns_stats {
	__u64 hist[NS_DNS_BOUNDS + 1]; /* answered requests by latency */
	__u64 sum_ns;
	__u64 requests; /* answered + timed out */
	__u64 last_seen_ns;
};

/* An in-flight query: client and server endpoints, transaction id, transport. */
struct ns_dns_qkey {
	__u8 client[16];
	__u8 server[16];
	__u16 client_port;
	__u16 server_port;
	__u16 id;
	__u8 transport;
	__u8 _pad;
};

/* The lookup a query belongs to: one process of one workload asking about names with
 * the same first label (the search-path expansions of one name). The process, not the
 * thread: resolvers such as Go's send the A and AAAA queries of one lookup from
 * different threads. */
struct ns_dns_lkey {
	__u64 cgroup_id;
	__u32 pid;
	__u32 label_hash;
};

struct ns_dns_lookup_state {
	__u64 last_ns;     /* last query sent or answer received */
	__u32 outstanding; /* queries sent and not answered yet */
	__u32 done;        /* NS_DNS_DONE_*: types already answered with records */
};

/* Per workload: lookups started and queries sent (fan-out = queries / lookups). */
struct ns_dns_lookup_stats {
	__u64 lookups;
	__u64 queries;
};

struct ns_dns_query {
	__u64 start_ns;
	__u64 cgroup_id;
	struct ns_dns_lkey lkey;
	__u32 pid;
	__u16 qtype; /* raw QTYPE (0 if the name did not fit) */
	__u8 family;
	__u8 _pad;
	__u16 name_len; /* bytes of `name` holding the question name (wire format), with its
	                 * zero label when the name fit */
	__u16 _pad2[3];
	char comm[16];
	__u8 name[NS_DNS_NAME_MAX];
};

/* The owners of the NS_DNS_WAYS slots of one set of the in-flight table (`dns_tags`): a
 * hash of the query key, never 0; 0 = free. Claimed by compare-and-swap in the kernel,
 * released by exchange in the kernel (answer) or by compare-and-swap in user space (a
 * swept timeout), through the memory mapping. */
struct ns_dns_tags {
	__u64 tag[NS_DNS_WAYS];
};

/* One slot of the in-flight table (`dns_slots`): the query and its key. `q.start_ns` is
 * 0 while the slot is being filled or given back, so the sweep never takes it then. */
struct ns_dns_slot {
	struct ns_dns_qkey key;
	struct ns_dns_query q;
};

/* One notable DNS event (ring buffer record). */
struct ns_dns_event {
	__u64 ts_ns;
	__u64 cgroup_id;
	__u64 latency_ns;
	__u8 client[16];
	__u8 server[16];
	__u16 client_port;
	__u16 server_port;
	__u32 pid;
	__u16 id;
	__u16 qtype;
	__u8 kind;
	__u8 rcode;
	__u8 transport;
	__u8 family;
	__u16 name_len;
	__u16 _pad[3];
	char comm[16];
	__u8 name[NS_DNS_NAME_MAX];
};

/* Fixed-window rate limiter of events. */
struct ns_dns_rate {
	__u64 window_start_ns;
	__u64 count;
};

#endif /* NODESCOPE_DNS_H */
