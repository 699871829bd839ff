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

/* PERF_MAX_STACK_DEPTH: the kernel's default cap of bpf_get_stackid frames. */
#define PROFILE_MAX_STACK_DEPTH 127
#define PROFILE_COMM_LEN 16

/* Map sizes. User space sizes its drain buffers from the same numbers. */
#define PROFILE_COUNTS_MAX_ENTRIES 16384
#define PROFILE_STACKS_MAX_ENTRIES 8192
#define PROFILE_FILTER_MAX_ENTRIES 1024

/* profile_config.filter_mode */
#define PROFILE_FILTER_ALL 0     /* every task (idle excluded unless include_idle) */
#define PROFILE_FILTER_PIDS 1    /* only tgids present in profile_filter_pids */
#define PROFILE_FILTER_CGROUPS 2 /* only cgroup v2 ids present in profile_filter_cgroups */
#define PROFILE_FILTER_NONE 3    /* paused: count nothing (the state before user space configures) */

/* Indices into the per-CPU profile_counters array. */
#define PROFILE_CTR_SAMPLES 0          /* samples counted into profile_counts */
#define PROFILE_CTR_LOST_MAP_FULL 1    /* samples dropped: profile_counts was full */
#define PROFILE_CTR_KSTACK_COLLISION 2 /* bpf_get_stackid(kernel) == -EEXIST (hash bucket taken) */
#define PROFILE_CTR_USTACK_COLLISION 3 /* bpf_get_stackid(user) == -EEXIST */
#define PROFILE_CTR_KSTACK_ERROR 4     /* other kernel stack errors (not -EFAULT = no kernel stack) */
#define PROFILE_CTR_USTACK_ERROR 5     /* other user stack errors (not -EFAULT = no user stack) */
#define PROFILE_CTR_FILTERED 6         /* perf events dropped by the pid/cgroup filter */
#define PROFILE_CTR_MAX 7

struct profile_config {
	__u32 filter_mode;
	__u32 include_idle; /* count pid 0 (the idle task) when non-zero */
};

struct profile_key {
	__u32 pid; /* tgid */
	__u32 tid;
	__u64 cgroup_id; /* cgroup v2 id (inode of the cgroup directory) */
	__s32 kernel_stack_id; /* < 0: no kernel stack (see counters) */
	__s32 user_stack_id;   /* < 0: no user stack */
};

struct profile_value {
	__u64 count;
	char comm[PROFILE_COMM_LEN];
};

#endif /* NODESCOPE_PROFILE_H */
