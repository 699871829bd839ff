//! Continuous profiling through the Emitter, and cgroup / container targets filtered in BPF.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use nodescope_model::signal::Signal;
use nodescope_model::status::ComponentState;
use nodescope_profiler::ProfilingConfig;
use nodescope_testsupport::{require_root, require_tool};
use tokio_util::sync::CancellationToken;

fn decode(pprof_gz: &[u8]) -> nodescope_profiler::proto::Profile {
    nodescope_pprof::decode_gzip(pprof_gz, 64 << 20).unwrap()
}

fn function_names(pprof_gz: &[u8]) -> Vec<String> {
    let p = decode(pprof_gz);
    p.function
        .iter()
        .map(|f| p.string_table[f.name as usize].clone())
        .collect()
}

/// Values of the numeric `pid` sample label.
fn pids(pprof_gz: &[u8]) -> Vec<i64> {
    let p = decode(pprof_gz);
    let key = p.string_table.iter().position(|s| s == "pid").unwrap() as i64;
    p.sample
        .iter()
        .flat_map(|s| s.label.iter().filter(|l| l.key == key).map(|l| l.num))
        .collect()
}

/// Every interval, one profile per workload goes to the pipeline; the workload's profile
/// names its functions, carries the workload label and opens in `go tool pprof`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_profiles_are_emitted_per_workload() {
    const T: &str = "continuous_profiles_are_emitted_per_workload";
    if !require_root(T) {
        return;
    }
    let Some(go) = require_tool(T, "go", GO_PATHS) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = build_workload(T, "burn", dir.path()) else {
        return;
    };
    let w = Workload::spawn(&bin);
    let mut h = serve(ProfilingConfig {
        continuous: true,
        hz: 49,
        interval_secs: 2,
        drain_interval_ms: 500,
        ..Default::default()
    })
    .await;
    let shutdown = CancellationToken::new();
    h.svc.spawn(shutdown.clone());
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut found = None;
    let mut seen_workloads = Vec::new();
    while Instant::now() < deadline && found.is_none() {
        let Ok(Some(sig)) = tokio::time::timeout(Duration::from_secs(5), h.rx.recv()).await else {
            continue;
        };
        let Signal::Profile(p) = sig else { continue };
        assert_eq!(p.sample_rate_hz, 49);
        assert!(
            p.duration >= Duration::from_millis(1500),
            "{:?}",
            p.duration
        );
        let wl = p
            .labels
            .iter()
            .find(|(k, _)| k == "workload")
            .map(|(_, v)| v.clone())
            .expect("workload label");
        seen_workloads.push(wl);
        // (Other tests run burn workloads too: match our pid.)
        if function_names(&p.pprof_gz)
            .iter()
            .any(|n| n == "burn_hot_75")
            && pids(&p.pprof_gz).contains(&(w.pid() as i64))
        {
            found = Some(p);
        }
    }
    shutdown.cancel();
    let p = found.unwrap_or_else(|| {
        panic!("no profile with burn_hot_75; workloads seen: {seen_workloads:?}")
    });
    // Our own workload's cgroup classification.
    let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", w.pid())).unwrap();
    let want = nodescope_model::workload::cgroup_path_from_proc(&cg)
        .map(nodescope_model::workload::classify_cgroup_path)
        .unwrap();
    let wl = p
        .labels
        .iter()
        .find(|(k, _)| k == "workload")
        .unwrap()
        .1
        .clone();
    assert!(
        wl == "host" || wl.ends_with(&want.id),
        "label {wl} vs {want:?}"
    );
    let file = dir.path().join("cont.pb.gz");
    std::fs::write(&file, &p.pprof_gz).unwrap();
    let top = go_pprof(&go, &["-top"], &file);
    assert!(top.contains("burn_hot_75"), "{top}");
    // Self metrics moved.
    let fams = h.metrics.collect();
    let samples = fams
        .iter()
        .find(|f| f.name == "nodescope_profiler_samples_total")
        .unwrap();
    assert!(matches!(samples.points[0].value, nodescope_model::Value::Number(n) if n > 0.0));
    assert!(fams
        .iter()
        .any(|f| f.name == "nodescope_profiler_truncated_stacks_ratio"));
    let emitted = fams
        .iter()
        .find(|f| f.name == "nodescope_profiler_profiles_emitted_total")
        .unwrap();
    assert!(matches!(emitted.points[0].value, nodescope_model::Value::Number(n) if n >= 1.0));
    // The collector reports the eBPF sampler up.
    let c = h.svc.collector().collect().unwrap();
    assert!(c.iter().any(|f| f.name == "nodescope_profiler_ebpf_up"));
    // Shutdown stops the thread.
    let stop_deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = h.status.snapshot();
        let s = st.iter().find(|s| s.name == "profiler").unwrap();
        if s.state == nodescope_model::ComponentState::Stopped {
            break;
        }
        assert!(
            Instant::now() < stop_deadline,
            "profiler did not stop: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(w);
}

/// A cgroup v2 directory this test creates and removes.
struct TestCgroup(PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Members are killed first by the Workload guards (declared after this guard).
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("could not remove {}", self.0.display());
    }
}

/// `cgroup=` and `container=` targets: only processes of that cgroup are sampled (the
/// filter runs in BPF); a busy process outside it does not appear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_and_container_targets_filter_in_bpf() {
    const T: &str = "cgroup_and_container_targets_filter_in_bpf";
    if !require_root(T) {
        return;
    }
    let roots = nodescope_ebpf::loader::mounts_of_type("cgroup2");
    let Some(root) = roots.first().cloned() else {
        nodescope_testsupport::skip(T, "no cgroup2 mount");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(burn) = build_workload(T, "burn", dir.path()) else {
        return;
    };
    let Some(sys) = build_workload(T, "syscalls", dir.path()) else {
        return;
    };
    // A fake container: a cgroup named like a runtime's scope.
    let id = format!("{:0>64x}", 0xabcdef00u64 + std::process::id() as u64);
    let name = format!("nodescope-test-docker-{id}.scope");
    let cg = TestCgroup(root.join(&name));
    std::fs::create_dir(&cg.0).expect("creating a test cgroup");
    let inside = Workload::spawn(&burn);
    let outside = Workload::spawn(&sys);
    std::fs::write(cg.0.join("cgroup.procs"), inside.pid().to_string())
        .expect("moving the workload");
    let h = serve(on_demand_only()).await;
    for query in [format!("cgroup=/{name}"), format!("container={id}")] {
        let r = get(format!(
            "http://{}/debug/pprof/profile?{query}&seconds=2&format=folded",
            h.addr
        ))
        .await;
        assert_eq!(r.status(), 200, "{query}: {:?}", r.text().await);
        let text = r.text().await.unwrap();
        assert!(text.contains("burn_hot_75"), "{query}:\n{text}");
        for line in text.lines() {
            assert!(line.starts_with("burn;"), "{query}: foreign sample {line}");
        }
    }
    drop(outside);
    drop(inside);
    drop(cg);
    let r = get(format!(
        "http://{}/debug/pprof/profile?cgroup=/does-not-exist-{}&seconds=1",
        h.addr,
        std::process::id()
    ))
    .await;
    assert_eq!(r.status(), 404);
}

/// Polls the profiler's status until `pred` holds (5 s at most); returns the last one.
fn wait_status(
    h: &Harness,
    pred: impl Fn(&nodescope_model::status::ComponentStatus) -> bool,
) -> nodescope_model::status::ComponentStatus {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = h
            .status
            .snapshot()
            .into_iter()
            .find(|s| s.name == "profiler")
            .expect("profiler status");
        if pred(&st) || Instant::now() > deadline {
            return st;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// With continuous profiling off, the start-up check loads the sampler once and reports
/// the profiler Ok (as root) — before any profile is requested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_check_reports_ok_as_root() {
    if !require_root("startup_check_reports_ok_as_root") {
        return;
    }
    let h = serve(on_demand_only()).await;
    h.svc.spawn(CancellationToken::new());
    let st = wait_status(&h, |s| s.state == ComponentState::Ok);
    assert_eq!(st.state, ComponentState::Ok, "{st:?}");
    assert_eq!(h.svc.ebpf_error(), None);
}

const CHILD_ENV: &str = "NODESCOPE_PROFILER_UNPRIVILEGED_CHILD";

/// Not root: the same test binary re-run as uid 65534 with no capabilities. The start-up
/// check reports the profiler degraded with the reason, without any request.
#[test]
fn startup_check_reports_degraded_when_not_permitted() {
    nodescope_testsupport::run_unprivileged_child(
        "startup_check_reports_degraded_when_not_permitted",
        "unprivileged_startup_check_child",
        CHILD_ENV,
    );
}

/// Runs only when spawned by `startup_check_reports_degraded_when_not_permitted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprivileged_startup_check_child() {
    if std::env::var(CHILD_ENV).is_err() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    assert_ne!(unsafe { libc::geteuid() }, 0, "child must not be root");
    let h = serve(on_demand_only()).await;
    h.svc.spawn(CancellationToken::new());
    let st = wait_status(&h, |s| s.state == ComponentState::Degraded);
    assert_eq!(st.state, ComponentState::Degraded, "{st:?}");
    let reason = st.last_error.clone().unwrap_or_default();
    assert!(reason.contains("eBPF sampler unavailable"), "{st:?}");
    assert!(h.svc.ebpf_error().is_some());
    println!("{}: {reason}", nodescope_testsupport::CHILD_OK);
}
