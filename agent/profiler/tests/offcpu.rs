//! Off-CPU and wall-clock profiles (`type=offcpu`, `type=wall`) through the HTTP endpoint,
//! against real workloads: totals checked against the workload's design and against the
//! kernel's own accounting (`/proc/<pid>/schedstat`), stacks and labels checked, and the
//! profile read by `go tool pprof`. Root-only (eBPF), gated with `require_root`.

mod common;

use std::collections::HashMap;
use std::path::Path;
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

/// Samples `schedstat(pid)` every 5 ms with the wall time, until dropped.
struct SchedTrace {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    h: Option<std::thread::JoinHandle<Vec<(SystemTime, u64, u64)>>>,
}

impl SchedTrace {
    fn start(pid: u32) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let h = std::thread::spawn(move || {
            let mut v = Vec::new();
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let (c, w) = schedstat(pid);
                v.push((SystemTime::now(), c, w));
                std::thread::sleep(Duration::from_millis(5));
            }
            v
        });
        SchedTrace { stop, h: Some(h) }
    }

    fn finish(mut self) -> Vec<(SystemTime, u64, u64)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.h.take().unwrap().join().unwrap()
    }
}

/// (on-CPU, runqueue wait) ns of the trace between `from` and `from + dur` (nearest
/// samples, 5 ms apart).
fn sched_between(tr: &[(SystemTime, u64, u64)], from: SystemTime, dur: Duration) -> (f64, f64) {
    let at = |t: SystemTime| {
        tr.iter()
            .min_by_key(|(x, _, _)| {
                x.duration_since(t)
                    .unwrap_or_else(|e| e.duration())
                    .as_nanos()
            })
            .map(|(_, c, w)| (*c as f64, *w as f64))
            .expect("schedstat samples")
    };
    let (c0, w0) = at(from);
    let (c1, w1) = at(from + dur);
    (c1 - c0, w1 - w0)
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

/// Sleeps 30 % / spins 70 %: the off-CPU total is within ±5 % of the kernel's own
/// accounting over the same window (duration − on-CPU time from schedstat), its blocked
/// part within ±5 % of the kernel's sleep time (duration − on-CPU − runqueue wait) and of
/// 0.3 × duration (the design, which holds while the machine has a CPU to spare: the
/// numbers are printed); a wall profile is the sum (≈ the duration for one thread), and
/// its on-CPU part agrees with a cpu profile of the same program taken at the same time.
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
    let dur = wp.duration_nanos as f64;
    let (k_cpu, k_wait) = sched_between(
        &trace,
        UNIX_EPOCH + Duration::from_nanos(wp.time_nanos as u64),
        Duration::from_nanos(wp.duration_nanos as u64),
    );
    let w_cpu: i64 = sums_by(&wp, "cpu", "nanoseconds", "state").values().sum();
    let w_off = sums_by(&wp, "offcpu", "nanoseconds", "state");
    let w_wall: i64 = sums_by(&wp, "wall", "nanoseconds", "state").values().sum();
    let w_off_total: i64 = w_off.values().sum();
    let blocked = *w_off.get("blocked").unwrap_or(&0) as f64;
    let cp = decode(&cpu);
    let c_cpu: i64 = sums_by(&cp, "cpu", "nanoseconds", "pid").values().sum();
    eprintln!(
        "wall profile over {:.3} s: cpu {:.3} s, offcpu {:.3} s ({:?}), wall {:.3} s; \
         cpu profile {:.3} s; schedstat: on-CPU {:.3} s, runqueue {:.3} s",
        dur / 1e9,
        w_cpu as f64 / 1e9,
        w_off_total as f64 / 1e9,
        w_off,
        w_wall as f64 / 1e9,
        c_cpu as f64 / 1e9,
        k_cpu / 1e9,
        k_wait / 1e9,
    );
    assert_eq!(w_wall, w_cpu + w_off_total, "wall is cpu + offcpu");
    assert!(
        within(w_wall as f64, dur, 0.05),
        "one thread: wall {w_wall} ns vs duration {dur} ns"
    );
    let truth_off = dur - k_cpu;
    assert!(
        within(w_off_total as f64, truth_off, 0.05),
        "off-CPU {w_off_total} ns vs schedstat truth {truth_off:.0} ns"
    );
    let truth_blocked = dur - k_cpu - k_wait;
    assert!(
        within(blocked, truth_blocked, 0.05),
        "blocked {blocked} ns vs schedstat truth {truth_blocked:.0} ns"
    );
    assert!(
        within(blocked, dur * 0.3, 0.05),
        "blocked {blocked} ns vs 0.3 × {dur} ns"
    );
    assert!(
        within(w_cpu as f64, c_cpu as f64, 0.10),
        "on-CPU in the wall profile {w_cpu} ns vs the cpu profile {c_cpu} ns"
    );
    assert!(
        within(c_cpu as f64, k_cpu, 0.10),
        "cpu profile {c_cpu} ns vs schedstat {k_cpu:.0} ns"
    );

    // Round 2: an off-CPU profile alone, read by go tool pprof.
    let off = fetch(h.addr, &format!("pid={pid}&seconds=3&type=offcpu")).await;
    let op = decode(&off);
    assert_eq!(
        op.string_table[op.default_sample_type as usize], "offcpu",
        "default sample type"
    );
    let dur = op.duration_nanos as f64;
    let by_state = sums_by(&op, "offcpu", "nanoseconds", "state");
    let blocked = *by_state.get("blocked").unwrap_or(&0) as f64;
    eprintln!("offcpu profile over {:.3} s: {by_state:?}", dur / 1e9);
    assert!(
        within(blocked, dur * 0.3, 0.05),
        "blocked {blocked} ns vs 0.3 × {dur} ns"
    );
    // The blocked time is in nanosleep, under sleep_30ms.
    let i = type_index(&op, "offcpu", "nanoseconds");
    let in_sleep: i64 = op
        .sample
        .iter()
        .filter(|s| label(&op, s, "state") == Some("blocked"))
        .filter(|s| stack_names(&op, s).iter().any(|n| n.contains("sleep_30ms")))
        .map(|s| s.value[i])
        .sum();
    assert!(
        in_sleep as f64 >= blocked * 0.95,
        "{in_sleep} of {blocked} blocked ns under sleep_30ms"
    );
    let file = dir.path().join("offcpu.pb.gz");
    std::fs::write(&file, &off).unwrap();
    let top = go_pprof(&go, &["-top", "-nodecount=40"], &file);
    eprintln!("{top}");
    assert!(top.contains("Type: offcpu"), "{top}");
    assert!(top.contains("sleep_30ms"), "{top}");
    let raw = go_pprof(&go, &["-raw"], &file);
    assert!(raw.contains("offcpu/nanoseconds"), "{raw}");
    assert!(raw.contains("blocked"), "{raw}");
    let tags = go_pprof(&go, &["-tags"], &file);
    assert!(tags.contains("task_state"), "{tags}");
    assert!(Path::new(&file).exists());
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
