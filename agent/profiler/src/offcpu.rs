//! Off-CPU and wall-clock profiles (`type=offcpu`, `type=wall`): bounded aggregation of
//! off-CPU intervals per stack and state, rescaling for the 1-in-N sampling, and the
//! pprof shapes `go tool pprof` reads (`offcpu/nanoseconds`, `wall/nanoseconds`).
//!
//! The intervals come from `tp_btf/sched_switch` (see `ebpf/include/profile.h`): the
//! stack is taken at switch-out, the time charged at switch-in (or at the end of the
//! profile for tasks still off CPU then).

use std::collections::HashMap;

use nodescope_pprof::proto;

use crate::output::{build_pprof_with, ExtraLabels, PprofShape, ProfileMeta};
use crate::request::ProfileKind;
use crate::sampler::{offcpu_preempted, OffCpuInterval, OFFCPU_STATE_WAKEUP};
use crate::samples::{RawSample, StackKey};
use crate::symbolize::ResolvedSample;

/// Off-CPU nanoseconds and interval counts per (stack, state), bounded: keys past
/// `max_keys` are dropped and counted.
#[derive(Debug)]
pub struct OffCpuAggregator {
    map: HashMap<(StackKey, u32), (u64, u64)>,
    max_keys: usize,
    dropped: u64,
}

/// One aggregated off-CPU stack: nanoseconds and intervals, not yet rescaled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffCpuRow {
    pub key: StackKey,
    pub state: u32,
    pub nanos: u64,
    pub intervals: u64,
}

impl OffCpuAggregator {
    pub fn new(max_keys: usize) -> Self {
        OffCpuAggregator {
            map: HashMap::new(),
            max_keys: max_keys.max(1),
            dropped: 0,
        }
    }

    /// Adds one interval; returns false (and counts it) when the bound is reached.
    pub fn add(&mut self, i: OffCpuInterval) -> bool {
        // Only the state class matters for labels: keep the task-state byte and the
        // preempted bit.
        let state = i.state
            & (0xff | nodescope_ebpf::profile::OFFCPU_STATE_PREEMPTED | OFFCPU_STATE_WAKEUP);
        let k = (i.key, state);
        if let Some(v) = self.map.get_mut(&k) {
            v.0 = v.0.saturating_add(i.nanos);
            v.1 = v.1.saturating_add(i.switches);
            return true;
        }
        if self.map.len() >= self.max_keys {
            self.dropped += 1;
            return false;
        }
        self.map.insert(k, (i.nanos, i.switches));
        true
    }

    /// Intervals dropped because the bound was reached.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Takes everything out, each value multiplied by `ratio` (1 in `ratio` switch-outs
    /// was followed, so each stands for `ratio`: the expected totals are right).
    pub fn take_rescaled(&mut self, ratio: u32) -> Vec<OffCpuRow> {
        let r = ratio.max(1) as u64;
        self.map
            .drain()
            .map(|((key, state), (nanos, intervals))| OffCpuRow {
                key,
                state,
                nanos: nanos.saturating_mul(r),
                intervals: intervals.saturating_mul(r),
            })
            .collect()
    }
}

/// `blocked` (waiting for I/O, a lock, a timer, ... until woken), `wakeup` (woken,
/// waiting for a CPU) or `preempted` (switched out while runnable, waiting for a CPU).
pub fn state_label(state: u32) -> &'static str {
    if offcpu_preempted(state) {
        "preempted"
    } else if state & OFFCPU_STATE_WAKEUP != 0 {
        "wakeup"
    } else {
        "blocked"
    }
}

/// The task state at switch-out as `ps` prints it (R, S, D, T, t, P, other).
pub fn task_state_label(state: u32) -> &'static str {
    match state & 0xff {
        0 => "R",
        1 => "S",
        s if s & 2 != 0 => "D",
        4 => "T",
        8 => "t",
        0x40 => "P",
        _ => "other",
    }
}

/// What one row of a time profile contributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeValue {
    pub cpu_nanos: u64,
    pub off_nanos: u64,
    /// Off-CPU intervals (rescaled); 0 for CPU rows.
    pub intervals: u64,
    /// `None` for CPU rows, else the off-CPU state (`OFFCPU_STATE_*`).
    pub off_state: Option<u32>,
}

/// The raw samples to symbolize and their values: CPU samples (`count` × `period_ns`)
/// then off-CPU rows. `count` of each raw sample is its number of samples or intervals.
pub fn time_rows(
    cpu: Vec<RawSample>,
    period_ns: u64,
    off: Vec<OffCpuRow>,
) -> (Vec<RawSample>, Vec<TimeValue>) {
    let mut raw = Vec::with_capacity(cpu.len() + off.len());
    let mut vals = Vec::with_capacity(cpu.len() + off.len());
    for s in cpu {
        vals.push(TimeValue {
            cpu_nanos: s.count.saturating_mul(period_ns),
            off_nanos: 0,
            intervals: 0,
            off_state: None,
        });
        raw.push(s);
    }
    for r in off {
        vals.push(TimeValue {
            cpu_nanos: 0,
            off_nanos: r.nanos,
            intervals: r.intervals,
            off_state: Some(r.state),
        });
        raw.push(RawSample {
            key: r.key,
            count: r.intervals,
        });
    }
    (raw, vals)
}

fn labels(v: &TimeValue) -> ExtraLabels {
    match v.off_state {
        None => [Some(("state", "on-cpu")), None],
        Some(s) => [
            Some(("state", state_label(s))),
            Some(("task_state", task_state_label(s))),
        ],
    }
}

fn ns(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

/// The pprof message of an off-CPU or wall profile. `samples[i]` has the values `vals[i]`.
pub fn build_time_pprof(
    kind: ProfileKind,
    samples: &[ResolvedSample],
    vals: &[TimeValue],
    meta: &ProfileMeta,
) -> proto::Profile {
    match kind {
        ProfileKind::Wall => {
            let shape = PprofShape {
                sample_types: &[
                    ("cpu", "nanoseconds"),
                    ("offcpu", "nanoseconds"),
                    ("wall", "nanoseconds"),
                ],
                period_type: ("wall", "nanoseconds"),
                period: 1,
                default_type: Some("wall"),
            };
            build_pprof_with(samples, meta, &shape, |i, _| {
                let v = &vals[i];
                (
                    vec![
                        ns(v.cpu_nanos),
                        ns(v.off_nanos),
                        ns(v.cpu_nanos.saturating_add(v.off_nanos)),
                    ],
                    labels(v),
                )
            })
        }
        ProfileKind::OffCpu | ProfileKind::Cpu => {
            let shape = PprofShape {
                sample_types: &[("switches", "count"), ("offcpu", "nanoseconds")],
                period_type: ("offcpu", "nanoseconds"),
                period: 1,
                default_type: Some("offcpu"),
            };
            build_pprof_with(samples, meta, &shape, |i, _| {
                let v = &vals[i];
                (vec![ns(v.intervals), ns(v.off_nanos)], labels(v))
            })
        }
    }
}

/// Drops the tracing frames on top of a switch-out stack (the BPF program, which kallsyms
/// names after the nearest symbol, and `bpf_trace_run*`): the stack starts at
/// `__schedule`. Only when `__schedule` is among the first few kernel frames.
pub fn strip_tracing_frames(s: &mut ResolvedSample) {
    let pos = s
        .frames
        .iter()
        .take(6)
        .take_while(|f| f.kernel)
        .position(|f| f.outer_name() == "__schedule");
    if let Some(p) = pos {
        s.frames.drain(..p);
    }
}

/// Sets each sample's `count` to its nanoseconds (wall, or off-CPU), for the folded
/// and SVG formats; a `[blocked]`/`[preempted]` frame is not added: the flame graph shows
/// the stacks as taken.
pub fn set_nanos_as_count(samples: &mut [ResolvedSample], vals: &[TimeValue]) {
    for (s, v) in samples.iter_mut().zip(vals) {
        s.count = v.cpu_nanos.saturating_add(v.off_nanos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodescope_ebpf::profile::OFFCPU_STATE_PREEMPTED;
    use std::sync::Arc;

    fn key(tid: u32, ips: &[u64]) -> StackKey {
        StackKey {
            pid: 1,
            tid,
            cgroup_id: 1,
            comm: "c".into(),
            kernel: Arc::from(Vec::new()),
            user: ips.into(),
            unwind: 0,
        }
    }

    fn iv(tid: u32, state: u32, nanos: u64) -> OffCpuInterval {
        OffCpuInterval {
            key: key(tid, &[1, 2]),
            state,
            nanos,
            switches: 1,
        }
    }

    #[test]
    fn aggregates_per_stack_and_state_bounded_and_rescaled() {
        let mut a = OffCpuAggregator::new(2);
        assert!(a.add(iv(1, 1, 10)));
        assert!(a.add(iv(1, 1, 5)));
        assert!(a.add(iv(1, OFFCPU_STATE_PREEMPTED, 7)));
        assert!(!a.add(iv(2, 1, 100)), "third key is over the bound");
        assert_eq!(a.dropped(), 1);
        let mut rows = a.take_rescaled(4);
        rows.sort_by_key(|r| r.state);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].nanos, rows[0].intervals), (60, 8));
        assert_eq!((rows[1].nanos, rows[1].intervals), (28, 4));
        assert!(a.is_empty());
    }

    #[test]
    fn strips_frames_above_schedule() {
        use crate::symbolize::{ResolvedFrame, WorkloadInfo};
        let f = |n: &str, kernel: bool| {
            Arc::new(ResolvedFrame {
                address: 1,
                mapping: None,
                names: Arc::from(vec![Arc::<str>::from(n)]),
                kernel,
            })
        };
        let mut s = ResolvedSample {
            pid: 1,
            tid: 1,
            comm: "c".into(),
            workload: Arc::new(WorkloadInfo::host()),
            frames: vec![
                f("_einittext", true),
                f("bpf_trace_run4", true),
                f("__schedule", true),
                f("schedule", true),
                f("main", false),
            ],
            count: 1,
            unwind: 0,
            reached_root: true,
            leaf_binary: "x".into(),
        };
        strip_tracing_frames(&mut s);
        let names: Vec<&str> = s.frames.iter().map(|f| f.outer_name()).collect();
        assert_eq!(names, ["__schedule", "schedule", "main"]);
        // Without __schedule on top nothing is dropped.
        s.frames.remove(0);
        strip_tracing_frames(&mut s);
        assert_eq!(s.frames.len(), 2);
    }

    #[test]
    fn labels_states() {
        assert_eq!(state_label(1), "blocked");
        assert_eq!(state_label(OFFCPU_STATE_PREEMPTED), "preempted");
        assert_eq!(state_label(1 | OFFCPU_STATE_WAKEUP), "wakeup");
        assert_eq!(task_state_label(1), "S");
        assert_eq!(task_state_label(2), "D");
        assert_eq!(task_state_label(OFFCPU_STATE_PREEMPTED), "R");
        assert_eq!(task_state_label(0x40), "P");
    }

    #[test]
    fn time_rows_put_cpu_then_offcpu() {
        let cpu = vec![RawSample {
            key: key(1, &[9]),
            count: 3,
        }];
        let off = vec![OffCpuRow {
            key: key(1, &[1]),
            state: 1,
            nanos: 500,
            intervals: 2,
        }];
        let (raw, vals) = time_rows(cpu, 10, off);
        assert_eq!(raw.len(), 2);
        assert_eq!(vals[0].cpu_nanos, 30);
        assert_eq!(vals[0].off_state, None);
        assert_eq!((vals[1].off_nanos, vals[1].intervals), (500, 2));
        assert_eq!(raw[1].count, 2);
    }
}
