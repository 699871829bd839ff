// SPDX-License-Identifier: Apache-2.0
/*
 * nodescope CPU sampler.
 *
 * Attached by user space to one software cpu-clock perf event per CPU (frequency mode).
 * On each sample: filter by pid / cgroup FIRST (cheap map lookups, before any stack
 * walk), then collect the kernel and user stacks into a stack-trace map (frame-pointer
 * unwinding by the kernel's bpf_get_stackid), then add one to the count of
 * (pid, tid, cgroup, kernel stack, user stack) in a bounded hash map that user space
 * drains periodically. Every way a sample can be lost is counted per CPU.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "profile.h"

#define EEXIST 17
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
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PROFILE_COUNTS_MAX_ENTRIES);
	__type(key, struct profile_key);
	__type(value, struct profile_value);
} profile_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, PROFILE_STACKS_MAX_ENTRIES);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, PROFILE_MAX_STACK_DEPTH * sizeof(__u64));
} profile_stacks SEC(".maps");

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
	struct profile_key key = {};
	struct profile_value *val;
	__u64 cgid;
	long err;

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

	key.pid = tgid;
	key.tid = tid;
	key.cgroup_id = cgid;

	/* -EFAULT means "no such stack" (a sample taken in user mode has no kernel stack,
	 * a kernel thread has no user stack): not an error. */
	err = bpf_get_stackid(ctx, &profile_stacks, 0);
	key.kernel_stack_id = (__s32)err;
	if (err == -EEXIST)
		count(PROFILE_CTR_KSTACK_COLLISION);
	else if (err < 0 && err != -EFAULT)
		count(PROFILE_CTR_KSTACK_ERROR);

	err = bpf_get_stackid(ctx, &profile_stacks, BPF_F_USER_STACK);
	key.user_stack_id = (__s32)err;
	if (err == -EEXIST)
		count(PROFILE_CTR_USTACK_COLLISION);
	else if (err < 0 && err != -EFAULT)
		count(PROFILE_CTR_USTACK_ERROR);

	val = bpf_map_lookup_elem(&profile_counts, &key);
	if (val) {
		__sync_fetch_and_add(&val->count, 1);
		count(PROFILE_CTR_SAMPLES);
		return 0;
	}

	struct profile_value init = { .count = 1 };

	bpf_get_current_comm(init.comm, sizeof(init.comm));
	err = bpf_map_update_elem(&profile_counts, &key, &init, BPF_NOEXIST);
	if (err == -EEXIST) {
		/* Another CPU inserted the same key in between. */
		val = bpf_map_lookup_elem(&profile_counts, &key);
		if (val) {
			__sync_fetch_and_add(&val->count, 1);
			count(PROFILE_CTR_SAMPLES);
			return 0;
		}
	}
	if (err) {
		count(PROFILE_CTR_LOST_MAP_FULL);
		return 0;
	}
	count(PROFILE_CTR_SAMPLES);
	return 0;
}
