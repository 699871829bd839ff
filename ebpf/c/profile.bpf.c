// SPDX-License-Identifier: Apache-2.0
/*
 * nodescope CPU sampler.
 *
 * Attached by user space to one software cpu-clock perf event per CPU (frequency mode).
 * On each sample: filter by pid / cgroup FIRST (cheap map lookups, before any stack
 * walk), then walk the kernel stack (bpf_get_stack) and the user stack (DWARF CFI tables
 * from unwind_* maps when user space registered the process, one bpf_loop step per frame
 * with a binary search for the mapping and one for the row, frame pointers where a
 * mapping has no table or a row no usable rule; bpf_get_stack's frame-pointer walk for
 * processes without tables) into a per-CPU scratch record and write the used part of it, with its boot-clock timestamp,
 * to a bounded ring buffer that user space drains and aggregates. Every way a sample can
 * be lost is counted per CPU.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "profile.h"

#define EFAULT 14

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct profile_config);
} profile_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PROFILE_FILTER_MAX_ENTRIES);
	__type(key, __u32);
	__type(value, __u8);
} profile_filter_pids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PROFILE_FILTER_MAX_ENTRIES);
	__type(key, __u64);
	__type(value, __u8);
} profile_filter_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, PROFILE_RINGBUF_BYTES);
} profile_samples SEC(".maps");

/* Scratch space for one sample (too large for the BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct profile_sample);
} profile_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PROFILE_CTR_MAX);
	__type(key, __u32);
	__type(value, __u64);
} profile_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, UNWIND_MAX_PROCS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct unwind_proc);
} unwind_procs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, UNWIND_MAX_TABLES);
	__type(key, __u32);
	__type(value, struct unwind_table_info);
} unwind_tables SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, UNWIND_MAX_ROWS);
	__uint(map_flags, BPF_F_MMAPABLE); /* user space writes tables with memcpy */
	__type(key, __u32);
	__type(value, struct unwind_row);
} unwind_rows SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&profile_counters, &idx);

	if (v)
		*v += 1; /* per-CPU slot: no other writer */
}

/* State of one DWARF walk, on the program's stack, passed to each bpf_loop step. */
struct walk {
	__u64 ip;
	__u64 sp;
	__u64 bp;
	__u32 pid;
	__u32 klen;
	__u32 n;
	__u32 end;
	__u32 signal; /* the frame was entered by a signal: its ip is exact (no -1) */
	__u32 _pad;
};

/* Offsets in the x86-64 rt_sigframe as seen from rsp inside __restore_rt: the ucontext
 * (uc_flags, uc_link, uc_stack = 40 bytes) then struct sigcontext. */
#define SIGCTX 40
#define SIGCTX_RBP (SIGCTX + 80)
#define SIGCTX_RSP (SIGCTX + 120)
#define SIGCTX_RIP (SIGCTX + 128)

/*
 * The two binary searches are global functions: the verifier checks each once with
 * unknown arguments, instead of once per path through the caller (which explodes).
 */

/* Index of the mapping of p containing pc, or -1. */
__attribute__((noinline)) int find_mapping(struct unwind_proc *p, __u64 pc)
{
	__u32 lo = 0, hi, mid;
	int j;

	if (!p)
		return -1;
	hi = p->n;
	if (hi > UNWIND_MAX_MAPPINGS)
		hi = UNWIND_MAX_MAPPINGS;
	for (j = 0; j < 8; j++) {
		if (lo >= hi)
			break;
		mid = (lo + hi) / 2;
		if (p->maps[mid & (UNWIND_MAX_MAPPINGS - 1)].start <= pc)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		return -1;
	mid = (lo - 1) & (UNWIND_MAX_MAPPINGS - 1);
	if (pc >= p->maps[mid].end)
		return -1;
	return mid;
}

/* Index in unwind_rows of the last row of [first, first + n) with pc <= rel, or -1. */
__attribute__((noinline)) int find_row(__u32 first, __u32 n, __u64 rel)
{
	__u32 lo = first, hi = first + n, mid;
	struct unwind_row *r;
	int j;

	for (j = 0; j < UNWIND_SEARCH_STEPS; j++) {
		if (lo >= hi)
			break;
		mid = lo + (hi - lo) / 2;
		r = bpf_map_lookup_elem(&unwind_rows, &mid);
		if (!r)
			return -1;
		if (r->pc <= rel)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo <= first)
		return -1;
	return (int)(lo - 1);
}

static long walk_step(__u64 i, void *vctx)
{
	struct walk *w = vctx;
	__u32 zero = 0;
	struct profile_sample *s;
	struct unwind_proc *p;
	struct unwind_mapping *m;
	struct unwind_table_info *t;
	struct unwind_row row = {}, *r;
	__u64 pc, cfa, ra = 0, v = 0, rel;
	__u32 k;
	int idx;

	if (w->n >= PROFILE_MAX_USTACK) {
		w->end = UNWIND_END_DEPTH;
		return 1;
	}
	s = bpf_map_lookup_elem(&profile_scratch, &zero);
	if (!s)
		return 1;
	k = w->klen + w->n;
	if (k >= PROFILE_MAX_KSTACK + PROFILE_MAX_USTACK) {
		w->end = UNWIND_END_DEPTH;
		return 1;
	}
	s->ips[k] = w->ip;
	w->n++;

	p = bpf_map_lookup_elem(&unwind_procs, &w->pid);
	if (!p) {
		w->end = UNWIND_END_NO_PROC;
		return 1;
	}
	/* A return address points after the call: look up the call itself. */
	pc = w->ip;
	if (w->n > 1 && !w->signal)
		pc -= 1;
	w->signal = 0;

	idx = find_mapping(p, pc);
	/* Keep the mask below: clang knows the range, the verifier does not. */
	asm volatile("" : "+r"(idx));
	if (idx < 0) {
		w->end = UNWIND_END_NO_MAPPING;
		return 1;
	}
	m = &p->maps[idx & (UNWIND_MAX_MAPPINGS - 1)];

	if (m->kind == UNWIND_MAPPING_CFI) {
		t = bpf_map_lookup_elem(&unwind_tables, &m->table);
		rel = pc - m->bias;
		if (t && t->nrows && rel < (1ULL << 32)) {
			idx = find_row(t->first_row, t->nrows, rel);
			asm volatile("" : "+r"(idx));
			if (idx >= 0) {
				k = idx;
				r = bpf_map_lookup_elem(&unwind_rows, &k);
				if (r)
					row = *r;
			}
		}
	}

	switch (row.kind & 15) {
	case UNWIND_CFA_END:
		w->end = UNWIND_END_ROOT;
		return 1;
	case UNWIND_CFA_RSP:
		cfa = w->sp + row.cfa_off;
		break;
	case UNWIND_CFA_RBP:
		cfa = w->bp + row.cfa_off;
		break;
	case UNWIND_CFA_PLT:
		cfa = w->sp + 8 + ((w->ip & 15) >= (__u64)row.cfa_off ? 8 : 0);
		break;
	case UNWIND_CFA_DEREF_RSP:
		if (bpf_probe_read_user(&v, sizeof(v), (void *)(w->sp + row.cfa_off))) {
			w->end = UNWIND_END_READ;
			return 1;
		}
		cfa = v + row.rbp_off;
		row.kind = UNWIND_CFA_DEREF_RSP; /* rbp unchanged */
		break;
	case UNWIND_CFA_SIGNAL:
		if (bpf_probe_read_user(&v, sizeof(v), (void *)(w->sp + SIGCTX_RBP)) ||
		    bpf_probe_read_user(&cfa, sizeof(cfa), (void *)(w->sp + SIGCTX_RSP)) ||
		    bpf_probe_read_user(&ra, sizeof(ra), (void *)(w->sp + SIGCTX_RIP))) {
			w->end = UNWIND_END_READ;
			return 1;
		}
		w->bp = v;
		w->sp = cfa;
		w->ip = ra;
		w->signal = 1;
		return 0;
	default:
		/* No usable rule (frame-pointer mapping, no row, unsupported rule):
		 * follow the frame pointer. */
		if (w->bp == 0) {
			w->end = UNWIND_END_ROOT;
			return 1;
		}
		if (w->bp < w->sp) {
			w->end = UNWIND_END_BAD_FRAME;
			return 1;
		}
		cfa = w->bp + 16;
		row.kind = UNWIND_RBP_CFA << 4;
		row.rbp_off = -16;
		break;
	}
	if (cfa <= w->sp) {
		w->end = UNWIND_END_BAD_FRAME;
		return 1;
	}
	if (bpf_probe_read_user(&ra, sizeof(ra), (void *)(cfa - 8))) {
		w->end = UNWIND_END_READ;
		return 1;
	}
	if ((row.kind >> 4) == UNWIND_RBP_CFA) {
		if (bpf_probe_read_user(&v, sizeof(v), (void *)(cfa + row.rbp_off))) {
			w->end = UNWIND_END_READ;
			return 1;
		}
		w->bp = v;
	}
	if (ra == 0) {
		w->end = UNWIND_END_ROOT;
		return 1;
	}
	w->ip = ra;
	w->sp = cfa;
	return 0;
}

/*
 * Walks the kernel stack (from ctx, the current task) and the user stack of the current
 * task `task` (DWARF CFI when the process has tables, else frame pointers) into s->ips and
 * sets s->kernel_len, s->user_len and the unwind bits of s->flags. Shared by the CPU
 * sampler and the off-CPU switch-out (both run with the target task current, so user
 * memory is the task's own).
 */
static __always_inline void capture_stacks(void *ctx, struct profile_sample *s,
					   struct task_struct *task, __u32 tgid)
{
	long n;
	__u32 klen = 0, ulen = 0;

	/* -EFAULT means "no such stack" (a sample taken in user mode has no kernel stack,
	 * a kernel thread has no user stack): not an error. */
	n = bpf_get_stack(ctx, s->ips, PROFILE_MAX_KSTACK * sizeof(__u64), 0);
	if (n > 0)
		klen = (__u32)n / sizeof(__u64);
	else if (n < 0 && n != -EFAULT)
		count(PROFILE_CTR_KSTACK_ERROR);
	if (klen > PROFILE_MAX_KSTACK)
		klen = PROFILE_MAX_KSTACK;

	if (task->mm && bpf_map_lookup_elem(&unwind_procs, &tgid)) {
		/* DWARF CFI walk from the task's user registers (saved at kernel entry, also
		 * when the sample interrupted user mode). */
		struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
		struct walk w = {};

		w.ip = regs->ip;
		w.sp = regs->sp;
		w.bp = regs->bp;
		w.pid = tgid;
		w.klen = klen;
		bpf_loop(PROFILE_MAX_USTACK, walk_step, &w, 0);
		ulen = w.n;
		if (w.end == UNWIND_END_NONE)
			w.end = UNWIND_END_DEPTH;
		s->flags |= UNWIND_FLAG_DWARF | w.end;
		count(PROFILE_CTR_DWARF);
	} else if (task->mm) {
		n = bpf_get_stack(ctx, &s->ips[klen], PROFILE_MAX_USTACK * sizeof(__u64),
				  BPF_F_USER_STACK);
		if (n > 0)
			ulen = (__u32)n / sizeof(__u64);
		else if (n < 0 && n != -EFAULT)
			count(PROFILE_CTR_USTACK_ERROR);
	}
	if (ulen > PROFILE_MAX_USTACK)
		ulen = PROFILE_MAX_USTACK;

	s->kernel_len = klen;
	s->user_len = ulen;
}

/* Whether the current task (tgid, cgroup cgid) passes the configured filter. */
static __always_inline int passes_filter(struct profile_config *cfg, __u32 tgid, __u64 cgid)
{
	if (cfg->filter_mode == PROFILE_FILTER_PIDS) {
		if (!bpf_map_lookup_elem(&profile_filter_pids, &tgid)) {
			count(PROFILE_CTR_FILTERED);
			return 0;
		}
	} else if (cfg->filter_mode == PROFILE_FILTER_CGROUPS) {
		if (!bpf_map_lookup_elem(&profile_filter_cgroups, &cgid)) {
			count(PROFILE_CTR_FILTERED);
			return 0;
		}
	}
	return 1;
}

SEC("perf_event")
int nodescope_profile(struct bpf_perf_event_data *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	__u32 tid = (__u32)pid_tgid;
	__u32 zero = 0;
	struct profile_config *cfg;
	struct profile_sample *s;
	__u64 cgid;
	long n;

	cfg = bpf_map_lookup_elem(&profile_config, &zero);
	if (!cfg || cfg->filter_mode == PROFILE_FILTER_NONE)
		return 0;
	if (tid == 0 && !cfg->include_idle)
		return 0;

	cgid = bpf_get_current_cgroup_id();

	/* Filter before any stack is walked. */
	if (!passes_filter(cfg, tgid, cgid))
		return 0;

	s = bpf_map_lookup_elem(&profile_scratch, &zero);
	if (!s)
		return 0;
	s->time_ns = bpf_ktime_get_boot_ns();
	s->cgroup_id = cgid;
	s->pid = tgid;
	s->tid = tid;
	s->cpu = bpf_get_smp_processor_id();
	s->flags = 0;
	s->_pad = 0;
	bpf_get_current_comm(s->comm, sizeof(s->comm));

	capture_stacks(ctx, s, bpf_get_current_task_btf(), tgid);

	n = PROFILE_SAMPLE_HDR_BYTES + (s->kernel_len + s->user_len) * sizeof(__u64);
	if (n > sizeof(*s))
		n = sizeof(*s);
	if (bpf_ringbuf_output(&profile_samples, s, n, 0)) {
		count(PROFILE_CTR_LOST_RINGBUF);
		return 0;
	}
	count(PROFILE_CTR_SAMPLES);
	return 0;
}

/* Tasks switched out while followed, until they switch back in (see profile.h). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, OFFCPU_MAX_TASKS);
	__type(key, __u32); /* tid */
	__type(value, struct offcpu_task);
} offcpu_tasks SEC(".maps");

#define PF_EXITING 0x00000004
#define TASK_DEAD 0x00000080

/* Before 5.14 the task state was `long state`. */
struct task_struct___pre514 {
	long state;
} __attribute__((preserve_access_index));

/* The task's state (CO-RE: `__state` since 5.14, `state` before). Read instead of the
 * tracepoint's prev_state argument, which only exists since 5.18. */
static __always_inline unsigned int task_state(struct task_struct *t)
{
	if (bpf_core_field_exists(t->__state))
		return BPF_CORE_READ(t, __state);
	return (unsigned int)BPF_CORE_READ((struct task_struct___pre514 *)t, state);
}

/*
 * Off-CPU: one program on sched_switch does both halves. It runs in the context of `prev`
 * (still current, its address space still live), with interrupts off, so it shares the
 * per-CPU scratch record with the cpu-clock program (an hrtimer interrupt) safely.
 *   switch-in:  `next` in offcpu_tasks -> an offcpu_end record, entry deleted;
 *   switch-out: `prev` passes the filter and the 1-in-N draw -> its stacks as a sample
 *               record flagged OFFCPU_FLAG_START, and an offcpu_tasks entry.
 */
SEC("tp_btf/sched_switch")
int nodescope_offcpu(__u64 *ctx)
{
	/* TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next, ...) */
	bool preempt = (bool)ctx[0];
	struct task_struct *prev = (struct task_struct *)ctx[1];
	struct task_struct *next = (struct task_struct *)ctx[2];
	unsigned int prev_state = task_state(prev);
	__u32 zero = 0, tid, tgid, state;
	struct profile_config *cfg;
	struct profile_sample *s;
	struct offcpu_task *t, nt = {};
	__u64 now = bpf_ktime_get_boot_ns(), cgid;
	long n;

	cfg = bpf_map_lookup_elem(&profile_config, &zero);
	if (!cfg || cfg->filter_mode == PROFILE_FILTER_NONE)
		return 0;

	/* Switch-in. */
	tid = next->pid;
	if (tid) {
		t = bpf_map_lookup_elem(&offcpu_tasks, &tid);
		if (t) {
			struct offcpu_end e = {};

			e.start_ns = t->start_ns;
			e.wake_ns = t->wake_ns;
			e.end_ns = now;
			e.pid = t->pid;
			e.tid = tid;
			e.state = t->state;
			e.magic = OFFCPU_END_MAGIC;
			bpf_map_delete_elem(&offcpu_tasks, &tid);
			if (bpf_ringbuf_output(&profile_samples, &e, sizeof(e), 0))
				count(PROFILE_CTR_OFFCPU_LOST);
			else
				count(PROFILE_CTR_OFFCPU_ENDS);
		}
	}

	/* Switch-out. */
	tid = prev->pid;
	tgid = prev->tgid;
	if (tid == 0)
		return 0;
	if ((prev->flags & PF_EXITING) || (prev_state & TASK_DEAD))
		return 0;
	cgid = bpf_get_current_cgroup_id();
	if (!passes_filter(cfg, tgid, cgid))
		return 0;
	if (cfg->offcpu_sample_ratio > 1 &&
	    bpf_get_prandom_u32() % cfg->offcpu_sample_ratio != 0) {
		count(PROFILE_CTR_OFFCPU_SKIPPED);
		return 0;
	}
	state = prev_state & 0xff;
	if (preempt || state == 0)
		state |= OFFCPU_STATE_PREEMPTED;

	s = bpf_map_lookup_elem(&profile_scratch, &zero);
	if (!s)
		return 0;
	s->time_ns = now;
	s->cgroup_id = cgid;
	s->pid = tgid;
	s->tid = tid;
	s->cpu = bpf_get_smp_processor_id();
	s->flags = OFFCPU_FLAG_START;
	s->_pad = state;
	bpf_probe_read_kernel_str(s->comm, sizeof(s->comm), prev->comm);

	capture_stacks(ctx, s, prev, tgid);

	n = PROFILE_SAMPLE_HDR_BYTES + (s->kernel_len + s->user_len) * sizeof(__u64);
	if (n > sizeof(*s))
		n = sizeof(*s);
	if (bpf_ringbuf_output(&profile_samples, s, n, 0)) {
		count(PROFILE_CTR_OFFCPU_LOST);
		return 0;
	}
	nt.start_ns = now;
	nt.pid = tgid;
	nt.state = state;
	if (bpf_map_update_elem(&offcpu_tasks, &tid, &nt, BPF_ANY)) {
		count(PROFILE_CTR_OFFCPU_MAP_FULL);
		return 0;
	}
	count(PROFILE_CTR_OFFCPU_STARTS);
	return 0;
}

/* A followed task is woken: stamp the time (it now waits for a CPU until switch-in). */
SEC("tp_btf/sched_wakeup")
int nodescope_offcpu_wakeup(__u64 *ctx)
{
	/* TP_PROTO(struct task_struct *p) */
	struct task_struct *p = (struct task_struct *)ctx[0];
	struct offcpu_task *t;
	__u32 tid = p->pid;

	t = bpf_map_lookup_elem(&offcpu_tasks, &tid);
	if (t && !t->wake_ns)
		t->wake_ns = bpf_ktime_get_boot_ns();
	return 0;
}
