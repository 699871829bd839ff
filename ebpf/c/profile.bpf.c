// SPDX-License-Identifier: Apache-2.0
/*
 * nodescope CPU sampler.
 *
 * Attached by user space to one software cpu-clock perf event per CPU (frequency mode).
 * On each sample: filter by pid / cgroup FIRST (cheap map lookups, before any stack
 * walk), then walk the kernel and user stacks (frame pointers, bpf_get_stack) into a
 * per-CPU scratch record and write the used part of it, with its boot-clock timestamp,
 * to a bounded ring buffer that user space drains and aggregates. Every way a sample can
 * be lost is counted per CPU.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
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

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&profile_counters, &idx);

	if (v)
		*v += 1; /* per-CPU slot: no other writer */
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
	__u32 klen = 0, ulen = 0;

	cfg = bpf_map_lookup_elem(&profile_config, &zero);
	if (!cfg || cfg->filter_mode == PROFILE_FILTER_NONE)
		return 0;
	if (tid == 0 && !cfg->include_idle)
		return 0;

	cgid = bpf_get_current_cgroup_id();

	/* Filter before any stack is walked. */
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

	/* -EFAULT means "no such stack" (a sample taken in user mode has no kernel stack,
	 * a kernel thread has no user stack): not an error. */
	n = bpf_get_stack(ctx, s->ips, PROFILE_MAX_KSTACK * sizeof(__u64), 0);
	if (n > 0)
		klen = (__u32)n / sizeof(__u64);
	else if (n < 0 && n != -EFAULT)
		count(PROFILE_CTR_KSTACK_ERROR);
	if (klen > PROFILE_MAX_KSTACK)
		klen = PROFILE_MAX_KSTACK;

	n = bpf_get_stack(ctx, &s->ips[klen], PROFILE_MAX_USTACK * sizeof(__u64), BPF_F_USER_STACK);
	if (n > 0)
		ulen = (__u32)n / sizeof(__u64);
	else if (n < 0 && n != -EFAULT)
		count(PROFILE_CTR_USTACK_ERROR);
	if (ulen > PROFILE_MAX_USTACK)
		ulen = PROFILE_MAX_USTACK;

	s->kernel_len = klen;
	s->user_len = ulen;
	n = PROFILE_SAMPLE_HDR_BYTES + (klen + ulen) * sizeof(__u64);
	if (n > sizeof(*s))
		n = sizeof(*s);
	if (bpf_ringbuf_output(&profile_samples, s, n, 0)) {
		count(PROFILE_CTR_LOST_RINGBUF);
		return 0;
	}
	count(PROFILE_CTR_SAMPLES);
	return 0;
}
