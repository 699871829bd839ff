//! Off-CPU and wall-clock profiles (`type=offcpu`, `type=wall`) through the HTTP endpoint,
//! against real workloads: totals checked against the workload's design and against the
//! kernel's own accounting (`/proc/<pid>/schedstat`), stacks and labels checked, and the
//! profile read by `go tool pprof`. Root-only (eBPF), gated with `require_root`.

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use nodescope_profiler::proto;
use nodescope_testsupport::{require_root, require_tool};

fn decode(body: &[u8]) -> proto::Profile {
    nodescope_pprof::decode_gzip(body, 64 << 20).expect("a gzip pprof")
}

fn type_index(p: &proto::Profile, ty: &str, unit: &str) -> usize {
    p.sample_type
        .iter()
        .position(|v| {
            p.string_table[v.r#type as usize] == ty && p.string_table[v.unit as usize] == unit
        })
        .unwrap_or_else(|| panic!("sample type {ty}/{unit} missing"))
}

fn label<'a>(p: &'a proto::Profile, s: &proto::Sample, key: &str) -> Option<&'a str> {
    s.label
        .iter()
        .find(|l| p.string_table[l.key as usize] == key && l.str != 0)
        .map(|l| p.string_table[l.str as usize].as_str())
}

/// Sum of sample type `ty/unit` per value of label `by` (samples without it: "").
fn sums_by(p: &proto::Profile, ty: &str, unit: &str, by: &str) -> HashMap<String, i64> {
    let i = type_index(p, ty, unit);
    let mut out: HashMap<String, i64> = HashMap::new();
    for s in &p.sample {
        *out.entry(label(p, s, by).unwrap_or("").to_string())
            .or_default() += s.value[i];
    }
    out
}

/// Function names of a sample's stack.
fn stack_names(p: &proto::Profile, s: &proto::Sample) -> Vec<String> {
    let mut out = Vec::new();
    for id in &s.location_id {
        let Some(loc) = p.location.iter().find(|l| l.id == *id) else {
            continue;
        };
        for line in &loc.line {
            if let Some(f) = p.function.iter().find(|f| f.id == line.function_id) {
                out.push(p.string_table[f.name as usize].clone());
            }
        }
    }
    out
}

/// One trace point: wall time, the thread group's on-CPU and runqueue-wait ns, and the
/// machine's steal time in ns (`/proc/stat`, all CPUs).
type TracePoint = (SystemTime, u64, u64, u64);

/// Steal time of all CPUs (the hypervisor ran something else), ns.
fn steal_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = s
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(8))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1_000_000_000 / hz
}

/// Samples `schedstat(pid)` and the steal time every 5 ms with the wall time.
struct SchedTrace {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    h: Option<std::thread::JoinHandle<Vec<TracePoint>>>,
}

impl SchedTrace {
    fn start(pid: u32) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let h = std::thread::spawn(move || {
            let mut v = Vec::new();
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let (c, w) = schedstat(pid);
                v.push((SystemTime::now(), c, w, steal_ns()));
                std::thread::sleep(Duration::from_millis(5));
            }
            v
        });
        SchedTrace { stop, h: Some(h) }
    }

    fn finish(mut self) -> Vec<TracePoint> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.h.take().unwrap().join().unwrap()
    }
}

/// The kernel's numbers over one profile's window (nearest trace points, 5 ms apart).
#[derive(Debug)]
struct Kernel {
    /// On-CPU ns of the process.
    cpu: f64,
    /// Runqueue-wait ns of the process.
    wait: f64,
    /// Steal ns of the machine (all CPUs): time no guest-side tracer sees.
    steal: f64,
}

fn kernel_over(tr: &[TracePoint], p: &proto::Profile) -> Kernel {
    let from = UNIX_EPOCH + Duration::from_nanos(p.time_nanos as u64);
    let to = from + Duration::from_nanos(p.duration_nanos as u64);
    let at = |t: SystemTime| {
        tr.iter()
            .min_by_key(|(x, _, _, _)| {
                x.duration_since(t)
                    .unwrap_or_else(|e| e.duration())
                    .as_nanos()
            })
            .map(|(_, c, w, s)| (*c as f64, *w as f64, *s as f64))
            .expect("schedstat samples")
    };
    let (c0, w0, s0) = at(from);
    let (c1, w1, s1) = at(to);
    Kernel {
        cpu: c1 - c0,
        wait: w1 - w0,
        steal: s1 - s0,
    }
}

/// (on-CPU ns, runqueue-wait ns) of every thread of `pid`, from the kernel's schedstat.
fn schedstat(pid: u32) -> (u64, u64) {
    let mut cpu = 0;
    let mut wait = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir") {
        let p = e.unwrap().path().join("schedstat");
        let s = std::fs::read_to_string(p).unwrap_or_default();
        let v: Vec<u64> = s
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() >= 2 {
            cpu += v[0];
            wait += v[1];
        }
    }
    (cpu, wait)
}

async fn fetch(addr: std::net::SocketAddr, q: &str) -> Vec<u8> {
    let resp = get(format!("http://{addr}/debug/pprof/profile?{q}")).await;
    assert_eq!(resp.status(), 200, "{q}: {:?}", resp.text().await);
    resp.bytes().await.unwrap().to_vec()
}

fn within(got: f64, want: f64, rel: f64) -> bool {
    (got - want).abs() <= want * rel
}

/// `within`, widened by time the hypervisor stole from the machine's CPUs during the
/// window (`steal` ns, all CPUs): while a vCPU is stolen its current task is neither
/// switched out nor sampled, so no tracer inside the guest can charge that time.
fn within_steal(got: f64, want: f64, rel: f64, steal: f64) -> bool {
    (got - want).abs() <= want * rel + steal
}

/// Sleeps 30 % / spins 70 %. The truth is the kernel's own accounting over the same
/// window (`/proc/<pid>/task/*/schedstat`, traced every 5 ms): the off-CPU total is within
/// ±5 % of duration − on-CPU time, its `blocked` part within ±5 % of duration − on-CPU −
/// runqueue wait, a wall profile's total within ±5 % of the duration (one thread), and
/// its on-CPU part within ±10 % of a cpu profile taken at the same time. The design's
/// 30 % (0.3 × duration blocked) is checked at ±5 % when the spinner was not preempted
/// much (runqueue wait < 3 % of the window: a preempted spin phase is longer than 70 ms,
/// so the share drops on a busy machine); every number is printed. Time stolen by the
/// hypervisor during the window widens the tolerances (see `within_steal`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleep_spin_offcpu_and_wall_totals() {
    const T: &str = "sleep_spin_offcpu_and_wall_totals";
    if !require_root(T) {
        return;
    }
    let Some(go) = require_tool(T, "go", GO_PATHS) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = build_workload(T, "sleepspin", dir.path()) else {
        return;
    };
    let w = Workload::spawn(&bin);
    let pid = w.pid();
    let h = serve(on_demand_only()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Round 1: wall and cpu profiles side by side.
    let trace = SchedTrace::start(pid);
    let (qw, qc) = (
        format!("pid={pid}&seconds=4&hz=499&type=wall"),
        format!("pid={pid}&seconds=4&hz=499"),
    );
    let (wall, cpu) = tokio::join!(fetch(h.addr, &qw), fetch(h.addr, &qc));
    let trace = trace.finish();
    let wp = decode(&wall);
    for c in &wp.comment {
        eprintln!("comment: {}", wp.string_table[*c as usize]);
    }
    let k = kernel_over(&trace, &wp);
    let dur = wp.duration_nanos as f64;
    let w_cpu: i64 = sums_by(&wp, "cpu", "nanoseconds", "state").values().sum();
    let w_off = sums_by(&wp, "offcpu", "nanoseconds", "state");
    let w_wall: i64 = sums_by(&wp, "wall", "nanoseconds", "state").values().sum();
    let w_off_total: i64 = w_off.values().sum();
    let blocked = *w_off.get("blocked").unwrap_or(&0) as f64;
    let cp = decode(&cpu);
    let c_cpu: i64 = sums_by(&cp, "cpu", "nanoseconds", "pid").values().sum();
    eprintln!(
        "wall profile over {:.3} s: cpu {:.3} s, offcpu {:.3} s ({:?}), wall {:.3} s; \
         cpu profile {:.3} s; kernel: {k:?}",
        dur / 1e9,
        w_cpu as f64 / 1e9,
        w_off_total as f64 / 1e9,
        w_off,
        w_wall as f64 / 1e9,
        c_cpu as f64 / 1e9,
    );
    assert_eq!(w_wall, w_cpu + w_off_total, "wall is cpu + offcpu");
    assert!(
        within_steal(w_wall as f64, dur, 0.05, k.steal),
        "one thread: wall {w_wall} ns vs duration {dur} ns"
    );
    let truth_off = dur - k.cpu;
    assert!(
        within_steal(w_off_total as f64, truth_off, 0.05, k.steal),
        "off-CPU {w_off_total} ns vs kernel truth {truth_off:.0} ns"
    );
    let truth_blocked = dur - k.cpu - k.wait;
    assert!(
        within_steal(blocked, truth_blocked, 0.05, k.steal),
        "blocked {blocked} ns vs kernel truth {truth_blocked:.0} ns"
    );
    if k.wait < 0.03 * dur {
        assert!(
            within(blocked, dur * 0.3, 0.05),
            "blocked {blocked} ns vs 0.3 × {dur} ns"
        );
    }
    assert!(
        within(w_cpu as f64, c_cpu as f64, 0.10),
        "on-CPU in the wall profile {w_cpu} ns vs the cpu profile {c_cpu} ns"
    );

    // Round 2: an off-CPU profile alone, read by go tool pprof.
    let trace = SchedTrace::start(pid);
    let off = fetch(h.addr, &format!("pid={pid}&seconds=3&type=offcpu")).await;
    let trace = trace.finish();
    let op = decode(&off);
    let k = kernel_over(&trace, &op);
    assert_eq!(
        op.string_table[op.default_sample_type as usize], "offcpu",
        "default sample type"
    );
    let dur = op.duration_nanos as f64;
    let by_state = sums_by(&op, "offcpu", "nanoseconds", "state");
    let total: i64 = by_state.values().sum();
    let blocked = *by_state.get("blocked").unwrap_or(&0) as f64;
    eprintln!(
        "offcpu profile over {:.3} s: {by_state:?}; switch-outs {:?}; kernel: {k:?}",
        dur / 1e9,
        sums_by(&op, "switches", "count", "state")
    );
    let truth_off = dur - k.cpu;
    assert!(
        within_steal(total as f64, truth_off, 0.05, k.steal),
        "off-CPU {total} ns vs kernel truth {truth_off:.0} ns"
    );
    if k.wait < 0.03 * dur {
        assert!(
            within(blocked, dur * 0.3, 0.05),
            "blocked {blocked} ns vs 0.3 × {dur} ns"
        );
    }
    // The blocked time is in the kernel's nanosleep, called from main (sleep_30ms is a tail call).
    let i = type_index(&op, "offcpu", "nanoseconds");
    let in_sleep: i64 = op
        .sample
        .iter()
        .filter(|s| label(&op, s, "state") == Some("blocked"))
        .filter(|s| {
            let n = stack_names(&op, s);
            n.iter().any(|n| n.contains("do_nanosleep")) && n.iter().any(|n| n.contains("main"))
        })
        .map(|s| s.value[i])
        .sum();
    assert!(
        in_sleep as f64 >= blocked * 0.95,
        "{in_sleep} of {blocked} blocked ns under do_nanosleep … main"
    );
    let file = dir.path().join("offcpu.pb.gz");
    std::fs::write(&file, &off).unwrap();
    let top = go_pprof(&go, &["-top", "-nodecount=40"], &file);
    eprintln!("{top}");
    assert!(top.contains("Type: offcpu"), "{top}");
    assert!(top.contains("nanosleep"), "{top}");
    // Values in time units (the default type is offcpu/nanoseconds), and the stacks start
    // at __schedule (the tracing frames above it are dropped).
    assert!(top.contains("ms") || top.contains("s "), "{top}");
    assert!(top.contains("__schedule"), "{top}");
    assert!(!top.contains("bpf_trace_run"), "{top}");
    let raw = go_pprof(&go, &["-raw"], &file);
    assert!(raw.contains("offcpu/nanoseconds"), "{raw}");
    assert!(raw.contains("blocked"), "{raw}");
    let tags = go_pprof(&go, &["-tags"], &file);
    assert!(tags.contains("task_state"), "{tags}");
}

/// A thread blocked on a futex the whole time: its off-CPU total is within ±5 % of the
/// profile's duration, all of it blocked, with the futex wait in the stack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn futex_blocked_thread_is_off_cpu_all_along() {
    const T: &str = "futex_blocked_thread_is_off_cpu_all_along";
    if !require_root(T) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = build_workload(T, "futexwait", dir.path()) else {
        return;
    };
    let w = Workload::spawn(&bin);
    let pid = w.pid();
    let h = serve(on_demand_only()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = fetch(h.addr, &format!("pid={pid}&seconds=3&type=offcpu")).await;
    let p = decode(&body);
    let dur = p.duration_nanos as f64;
    let i = type_index(&p, "offcpu", "nanoseconds");
    let mut total = 0i64;
    let mut futex = 0i64;
    let mut preempted = 0i64;
    for s in &p.sample {
        if label(&p, s, "comm") != Some("futexwaiter") {
            continue;
        }
        total += s.value[i];
        if label(&p, s, "state") != Some("blocked") {
            preempted += s.value[i];
        }
        let names = stack_names(&p, s);
        if names.iter().any(|n| n.contains("futex_wait"))
            && names.iter().any(|n| n.contains("wait_on_futex"))
        {
            futex += s.value[i];
        }
    }
    eprintln!(
        "futexwaiter off CPU {:.3} s of {:.3} s (futex stacks {:.3} s, not blocked {preempted} ns)",
        total as f64 / 1e9,
        dur / 1e9,
        futex as f64 / 1e9
    );
    assert!(within(total as f64, dur, 0.05), "{total} ns vs {dur} ns");
    // The intervals are counted in the self metrics; nothing was dropped.
    let fams = h.metrics.collect();
    let counter = |name: &str| -> f64 {
        let f = fams
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("{name} missing"));
        match f.points[0].value {
            nodescope_model::metrics::Value::Number(v) => v,
            _ => panic!("{name} is not a number"),
        }
    };
    let intervals = counter("nodescope_profiler_offcpu_intervals_total");
    assert!(
        intervals >= 100.0,
        "{intervals} intervals (20 ms waits over 3 s)"
    );
    assert_eq!(counter("nodescope_profiler_offcpu_lost_total"), 0.0);
    assert_eq!(
        counter("nodescope_profiler_offcpu_skipped_switches_total"),
        0.0
    );
    assert!(
        futex as f64 >= total as f64 * 0.95,
        "futex wait (kernel futex_wait under wait_on_futex) in {futex} of {total} ns"
    );
}

/// `type=` is checked: a bad value is a 400 naming the parameter and the allowed values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_type_is_a_400() {
    let h = serve(on_demand_only()).await;
    let resp = get(format!("http://{}/debug/pprof/profile?type=bogus", h.addr)).await;
    assert_eq!(resp.status(), 400);
    let text = resp.text().await.unwrap();
    assert!(text.contains("`type`"), "{text}");
    assert!(text.contains("cpu, offcpu or wall"), "{text}");
    assert!(text.contains("bogus"), "{text}");
}

/// With `offcpu_sample_ratio = 4`, a quarter of the switch-outs is followed and every
/// value is multiplied by 4: the futex waiter's total stays about its duration (20 ms
/// waits, ≈ 150 in 3 s, ≈ 37 followed: ±40 % is three standard deviations; without the
/// rescaling it would be ≈ 25 %), and the skipped switches are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_ratio_is_rescaled() {
    const T: &str = "sampling_ratio_is_rescaled";
    if !require_root(T) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = build_workload(T, "futexwait", dir.path()) else {
        return;
    };
    let w = Workload::spawn(&bin);
    let pid = w.pid();
    let h = serve(nodescope_profiler::ProfilingConfig {
        offcpu_sample_ratio: 4,
        ..on_demand_only()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = fetch(h.addr, &format!("pid={pid}&seconds=3&type=offcpu")).await;
    let p = decode(&body);
    let dur = p.duration_nanos as f64;
    let i = type_index(&p, "offcpu", "nanoseconds");
    let total: i64 = p
        .sample
        .iter()
        .filter(|s| label(&p, s, "comm") == Some("futexwaiter"))
        .map(|s| s.value[i])
        .sum();
    eprintln!(
        "ratio 4: futexwaiter off CPU {:.3} s of {:.3} s",
        total as f64 / 1e9,
        dur / 1e9
    );
    assert!(within(total as f64, dur, 0.40), "{total} ns vs {dur} ns");
    let comments: Vec<&str> = p
        .comment
        .iter()
        .map(|c| p.string_table[*c as usize].as_str())
        .collect();
    assert!(
        comments
            .iter()
            .any(|c| c.contains("1 in 4 context switches")),
        "{comments:?}"
    );
    let skipped = h
        .metrics
        .collect()
        .into_iter()
        .find(|f| f.name == "nodescope_profiler_offcpu_skipped_switches_total")
        .map(|f| match f.points[0].value {
            nodescope_model::metrics::Value::Number(v) => v,
            _ => 0.0,
        })
        .unwrap_or(0.0);
    assert!(skipped > 0.0, "skipped switches counted");
}
