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
#define PROFILE_CTR_DWARF 5         /* user stacks walked with DWARF CFI tables */
#define PROFILE_CTR_OFFCPU_STARTS 6 /* off-CPU switch-outs followed (stack record written) */
#define PROFILE_CTR_OFFCPU_ENDS 7   /* off-CPU intervals closed at switch-in (end record written) */
#define PROFILE_CTR_OFFCPU_LOST 8   /* off-CPU records lost: the ring buffer was full */
#define PROFILE_CTR_OFFCPU_SKIPPED 9 /* switch-outs not followed (1-in-N sampling) */
#define PROFILE_CTR_OFFCPU_MAP_FULL 10 /* switch-outs whose task could not enter offcpu_tasks */
#define PROFILE_CTR_MAX 11

struct profile_config {
	__u32 filter_mode;
	__u32 include_idle; /* count pid 0 (the idle task) when non-zero */
	__u32 offcpu_sample_ratio; /* off-CPU: follow 1 in N switch-outs (0 or 1: every one) */
	__u32 _pad;
};

/*
 * Off-CPU profiling (tp_btf/sched_switch, attached only while an offcpu/wall profile runs).
 *
 * At switch-out of a task that passes the filter (and the 1-in-N draw), its kernel and
 * user stacks are written to profile_samples as a struct profile_sample whose flags carry
 * OFFCPU_FLAG_START and whose time_ns is the switch-out time, and the task enters
 * offcpu_tasks (LRU: tid -> struct offcpu_task). At switch-in of a task found there, a
 * struct offcpu_end (OFFCPU_END_BYTES, shorter than any sample record) is written and the
 * entry deleted. User space pairs the two by (tid, start_ns). tp_btf/sched_wakeup stamps
 * the entry's wake_ns, splitting a blocked interval into blocked (until the wake-up) and
 * waiting for a CPU after it.
 */
#define OFFCPU_MAX_TASKS 16384
#define OFFCPU_FLAG_START 0x10000   /* profile_sample.flags: an off-CPU switch-out record */
#define OFFCPU_END_BYTES 40
#define OFFCPU_END_MAGIC 0x6f666663 /* "offc" */

struct offcpu_task {
	__u64 start_ns; /* switch-out time, bpf_ktime_get_boot_ns() */
	__u64 wake_ns;  /* sched_wakeup time (0: not woken yet, or preempted) */
	__u32 pid;      /* tgid */
	__u32 state;    /* OFFCPU_STATE_* */
};

/* offcpu_task.state / offcpu_end.state: the low byte is the task state at switch-out
 * (prev_state & 0xff: 0 = TASK_RUNNING, 1 = INTERRUPTIBLE, 2 = UNINTERRUPTIBLE, ...);
 * OFFCPU_STATE_PREEMPTED is set when the task stayed runnable (preempted or yielded). */
#define OFFCPU_STATE_PREEMPTED 0x100

struct offcpu_end {
	__u64 start_ns;
	__u64 wake_ns; /* 0: no wake-up seen (preempted tasks are never woken) */
	__u64 end_ns;
	__u32 pid;
	__u32 tid;
	__u32 state;
	__u32 magic; /* OFFCPU_END_MAGIC */
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
	__u32 flags;     /* unwind outcome (low 16 bits); OFFCPU_FLAG_START */
	char comm[PROFILE_COMM_LEN];
	__u32 _pad;      /* off-CPU start records: OFFCPU_STATE_* of the task; else 0 */
	__u64 ips[PROFILE_MAX_KSTACK + PROFILE_MAX_USTACK];
};

#define PROFILE_SAMPLE_HDR_BYTES 56

/*
 * DWARF CFI unwinding (user space builds the tables from .eh_frame / .debug_frame).
 *
 * unwind_procs:  tgid -> the process's executable mappings, sorted by start; each points
 *                at a table (UNWIND_MAPPING_CFI) or says "frame pointers" (UNWIND_MAPPING_FP).
 *                A process without an entry is unwound with frame pointers (bpf_get_stack).
 * unwind_tables: table id -> [first_row, first_row + nrows) in unwind_rows.
 * unwind_rows:   8-byte rows sorted by pc (ELF virtual address) within a table.
 */
#define UNWIND_MAX_MAPPINGS 128
#define UNWIND_MAX_PROCS 4096
#define UNWIND_MAX_TABLES 1024
#define UNWIND_MAX_ROWS (2 << 20)
#define UNWIND_SEARCH_STEPS 22 /* >= log2(UNWIND_MAX_ROWS) + 1 */

#define UNWIND_MAPPING_FP 0
#define UNWIND_MAPPING_CFI 1

/* unwind_row.kind, low 4 bits: how to find the CFA */
#define UNWIND_CFA_INVALID 0   /* no rule we can follow: try frame pointers */
#define UNWIND_CFA_RSP 1       /* cfa = rsp + cfa_off */
#define UNWIND_CFA_RBP 2       /* cfa = rbp + cfa_off */
#define UNWIND_CFA_PLT 3       /* cfa = rsp + 8 + ((ip & 15) >= cfa_off ? 8 : 0) */
#define UNWIND_CFA_DEREF_RSP 4 /* cfa = *(rsp + cfa_off) + rbp_off (rbp unchanged) */
#define UNWIND_CFA_SIGNAL 5    /* signal trampoline: registers from the ucontext at rsp */
#define UNWIND_CFA_END 6       /* return address undefined: the outermost frame */
/* unwind_row.kind, bits 4-5: where the caller's rbp is */
#define UNWIND_RBP_SAME 0      /* unchanged */
#define UNWIND_RBP_CFA 1       /* *(cfa + rbp_off) */

/* End of a user stack walk (profile_sample.flags, low byte). */
#define UNWIND_END_NONE 0       /* frame pointers (bpf_get_stack), no DWARF walk */
#define UNWIND_END_ROOT 1       /* reached a frame whose return address is undefined / zero */
#define UNWIND_END_NO_MAPPING 2 /* pc outside every known executable mapping */
#define UNWIND_END_READ 3       /* reading the stack failed */
#define UNWIND_END_DEPTH 4      /* PROFILE_MAX_USTACK frames: truncated */
#define UNWIND_END_BAD_FRAME 5  /* no rule and no usable frame pointer */
#define UNWIND_END_NO_PROC 6    /* the process entry vanished during the walk */
/* profile_sample.flags bit 8: the user stack was walked with DWARF CFI. */
#define UNWIND_FLAG_DWARF 0x100

struct unwind_row {
	__u32 pc;      /* ELF virtual address (table-relative) */
	__s16 cfa_off;
	__s8 rbp_off;
	__u8 kind;
};

struct unwind_table_info {
	__u32 first_row;
	__u32 nrows;
};

struct unwind_mapping {
	__u64 start;
	__u64 end;
	__u64 bias; /* pc - bias = ELF virtual address */
	__u32 table;
	__u32 kind; /* UNWIND_MAPPING_* */
};

struct unwind_proc {
	__u32 n;
	__u32 _pad;
	struct unwind_mapping maps[UNWIND_MAX_MAPPINGS];
};

#endif /* NODESCOPE_PROFILE_H */
