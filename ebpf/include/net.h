/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Structs and constants shared by ebpf/c/net.bpf.c (kernel) and ebpf/src/net.rs (user
 * space). The Rust side mirrors every struct here once, with size asserts and a test that
 * compiles this header with the host C compiler and compares sizeof/offsetof.
 *
 * Histogram slots: slot i (< N) counts observations <= bound[i]; slot N counts the rest.
 * The bounds are the Prometheus bucket upper bounds of the corresponding metric.
 */
#ifndef NODESCOPE_NET_H
#define NODESCOPE_NET_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* nodescope_tcp_connect_duration_seconds: .0005 .001 .0025 .005 .01 .025 .05 .1 .25 .5 1 2 3.5 7 (ns). */
#define NS_CONNECT_BOUNDS 14
#define NS_CONNECT_BOUNDS_NS                                                                   \
	{ 500000ULL, 1000000ULL, 2500000ULL, 5000000ULL, 10000000ULL, 25000000ULL, 50000000ULL, \
	  100000000ULL, 250000000ULL, 500000000ULL, 1000000000ULL, 2000000000ULL,             \
	  3500000000ULL, 7000000000ULL }

/* nodescope_tcp_rtt_seconds: 50us 100us 250us 500us 1ms 2.5ms 5ms 10ms 25ms 50ms 100ms 250ms 500ms 1s (us). */
#define NS_RTT_BOUNDS 14
#define NS_RTT_BOUNDS_US                                                                     \
	{ 50ULL, 100ULL, 250ULL, 500ULL, 1000ULL, 2500ULL, 5000ULL, 10000ULL, 25000ULL, 50000ULL, \
	  100000ULL, 250000ULL, 500000ULL, 1000000ULL }

/* nodescope_tcp_connection_duration_seconds: 1ms 10ms 100ms 1s 10s 60s 300s 1800s 3600s (ns). */
#define NS_DURATION_BOUNDS 9
#define NS_DURATION_BOUNDS_NS                                                              \
	{ 1000000ULL, 10000000ULL, 100000000ULL, 1000000000ULL, 10000000000ULL, 60000000000ULL, \
	  300000000000ULL, 1800000000000ULL, 3600000000000ULL }

/* Connect error classes (nodescope_tcp_connect_errors_total{error}). */
#define NS_ERR_REFUSED 0
#define NS_ERR_TIMEOUT 1
#define NS_ERR_RESET 2
#define NS_ERR_UNREACHABLE 3
#define NS_ERR_OTHER 4
#define NS_ERR_SLOTS 8

/* Sent resets are counted by enum sk_rst_reason (0..31, 31 = out of range);
 * received resets by the TCP state the socket was in (0..15). */
#define NS_RST_REASON_SLOTS 32
#define NS_TCP_STATE_SLOTS 16

#define NS_DIR_OUTBOUND 0
#define NS_DIR_INBOUND 1

/* Drop reasons: enum skb_drop_reason values below NS_DROP_SLOTS-1; the last slot collects
 * larger (subsystem) reasons. */
#define NS_DROP_SLOTS 1024

/* Key of the `drops` map: workload (cgroup v2 id; 0 = no socket) x drop reason slot. */
struct ns_drop_key {
	__u64 cgroup_id;
	__u32 reason;
	__u32 _pad;
};

/* Indices of the `counters` per-CPU array: what the kernel side dropped or overflowed. */
#define NS_CNT_SOCK_MAP_FULL 0       /* socket not tracked: socks map full */
#define NS_CNT_PEER_OVERFLOW 1       /* peer cap reached: counted under peer "other" */
#define NS_CNT_OTHER_MAP_FULL 2      /* even the "other" map was full: update lost */
#define NS_CNT_EVENTS_RATE_LIMITED 3 /* notable event suppressed by the rate limit */
#define NS_CNT_EVENTS_LOST 4         /* ring buffer full */
#define NS_CNT_RTT_SAMPLES 5         /* RTT samples taken (throttled tcp_probe hits) */
#define NS_CNT_EVENTS_SENT 6         /* events written to the ring buffer */
#define NS_CNT_SLOTS 8

/* Event kinds carried by the ring buffer. */
#define NS_EV_CONNECT_FAILED 1
#define NS_EV_CONNECT_SLOW 2
#define NS_EV_RESET_SENT 3
#define NS_EV_RESET_RECEIVED 4

/* Per-socket flags (struct ns_sock.flags). */
#define NS_SOCK_ESTABLISHED 1
#define NS_SOCK_RTT_SAMPLED 2

/* Peer identity: workload (cgroup v2 id) x peer. Addresses are IPv6 or IPv4-mapped IPv6.
 * Outbound: the remote address and port. Inbound: the remote address and the LOCAL
 * (listening) port. The "other" overflow key has a zero address, port 0 and family 0. */
struct ns_peer_key {
	__u64 cgroup_id;
	__u8 addr[16];
	__u16 port;
	__u8 direction;
	__u8 family;
	__u32 _pad;
};

/* Aggregates per peer key. Updated with atomic adds. `active` is not written by the
 * kernel: user space fills it from the established slots of the `socks` table. */
struct ns_peer_stats {
	__u64 connect_hist[NS_CONNECT_BOUNDS + 1];
	__u64 connect_sum_ns;
	__u64 rtt_hist[NS_RTT_BOUNDS + 1];
	__u64 rtt_sum_us;
	__u64 duration_hist[NS_DURATION_BOUNDS + 1];
	__u64 duration_sum_ns;
	__u64 connect_errors[NS_ERR_SLOTS];
	__u64 resets_sent[NS_RST_REASON_SLOTS];
	__u64 resets_received[NS_TCP_STATE_SLOTS];
	__u64 retransmits;
	__u64 bytes_sent;
	__u64 bytes_received;
	__s64 active;
	__u64 last_seen_ns;
};

/* Slots per set of the `socks` table (set-associative, indexed by a hash of the socket
 * pointer); its max_entries is a multiple of this. */
#define NS_SOCK_WAYS 8

/* The owners (socket addresses, 0 = free) of the NS_SOCK_WAYS slots of one set of the
 * `socks` table: the `sock_tags` map value. Kernel side only. */
struct ns_sock_tags {
	__u64 sk[NS_SOCK_WAYS];
};

/* Per-socket state, kernel side only (kept here so the layout is documented once):
 * one slot of the `socks` table. */
struct ns_sock {
	__u64 start_ns;
	__u64 established_ns;
	__u64 rtt_last_ns; /* last RTT sample (throttle) */
	struct ns_peer_key key;
	__u32 pid;
	__u8 flags;
	__u8 _pad[3];
	char comm[16];
};

/* One notable event (ring buffer record). */
struct ns_event {
	__u64 ts_ns;      /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
	__u64 cgroup_id;
	__u64 latency_ns; /* connect latency so far (failed / slow connects) */
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u32 pid;
	__u8 kind;
	__u8 family;
	__u8 direction;
	__u8 error;       /* NS_ERR_* for failed connects */
	__u16 reason;     /* sk_rst_reason (sent) or TCP state (received) */
	__u16 sk_err;     /* raw socket errno for failed connects */
	char comm[16];
};

/* Global fixed-window rate limiter state for events. */
struct ns_rate {
	__u64 window_start_ns;
	__u64 count;
};

#endif /* NODESCOPE_NET_H */
