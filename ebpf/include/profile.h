/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Structs shared by ebpf/c/profile.bpf.c (kernel) and ebpf/src/profile.rs (user space).
 * The Rust side mirrors every type here once, with compile-time size asserts and a test
 * that compiles this header with the host C compiler and compares sizeof/offsetof.
 */
#ifndef NODESCOPE_PROFILE_H
#define NODESCOPE_PROFILE_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Kernel frames kept per sample (PERF_MAX_STACK_DEPTH, the kernel's default cap). */
#define PROFILE_MAX_KSTACK 127
/* User frames kept per sample. */
#define PROFILE_MAX_USTACK 256
#define PROFILE_COMM_LEN 16

/* Map sizes. */
#define PROFILE_RINGBUF_BYTES (4 << 20) /* sample records; full → PROFILE_CTR_LOST_RINGBUF */
#define PROFILE_FILTER_MAX_ENTRIES 1024

/* profile_config.filter_mode */
#define PROFILE_FILTER_ALL 0     /* every task (idle excluded unless include_idle) */
#define PROFILE_FILTER_PIDS 1    /* only tgids present in profile_filter_pids */
#define PROFILE_FILTER_CGROUPS 2 /* only cgroup v2 ids present in profile_filter_cgroups */
#define PROFILE_FILTER_NONE 3    /* paused: count nothing (the state before user space configures) */

/* Indices into the per-CPU profile_counters array. */
#define PROFILE_CTR_SAMPLES 0       /* sample records written to the ring buffer */
#define PROFILE_CTR_LOST_RINGBUF 1  /* samples lost: the ring buffer was full */
#define PROFILE_CTR_KSTACK_ERROR 2  /* kernel stack walks that failed (not -EFAULT = no kernel stack) */
#define PROFILE_CTR_USTACK_ERROR 3  /* user stack walks that failed (not -EFAULT = no user stack) */
#define PROFILE_CTR_FILTERED 4      /* perf events dropped by the pid/cgroup filter */
#define PROFILE_CTR_MAX 5

struct profile_config {
	__u32 filter_mode;
	__u32 include_idle; /* count pid 0 (the idle task) when non-zero */
};

/* One sample as written to the ring buffer: the header, then kernel_len kernel frames
 * followed by user_len user frames (leaf first each). Only the used part of ips is sent. */
struct profile_sample {
	__u64 time_ns;   /* bpf_ktime_get_boot_ns() (CLOCK_BOOTTIME) */
	__u64 cgroup_id; /* cgroup v2 id (inode of the cgroup directory) */
	__u32 pid;       /* tgid */
	__u32 tid;
	__u32 cpu;
	__u16 kernel_len;
	__u16 user_len;
	__u32 flags;     /* reserved (unwind outcome) */
	char comm[PROFILE_COMM_LEN];
	__u32 _pad;
	__u64 ips[PROFILE_MAX_KSTACK + PROFILE_MAX_USTACK];
};

#define PROFILE_SAMPLE_HDR_BYTES 56

#endif /* NODESCOPE_PROFILE_H */
