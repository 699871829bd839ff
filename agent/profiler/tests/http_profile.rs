//! The profiler through its HTTP endpoint, against real workloads and `go tool pprof`.
//! Root-only tests (eBPF) are gated with `require_root`; tools with `require_tool`.

mod common;

use std::time::Duration;

use common::*;
use nodescope_profiler::config::SelfProfiler;
use nodescope_profiler::ProfilingConfig;
use nodescope_testsupport::{require_root, require_tool};

/// The known-split workload: both function names appear and their shares are within
/// ±5 points of 75/25; the pprof opens in `go tool pprof -top`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_split_workload_shares() {
    const T: &str = "known_split_workload_shares";
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
    let h = serve(on_demand_only()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = get(format!(
        "http://{}/debug/pprof/profile?pid={}&seconds=6&hz=199",
        h.addr,
        w.pid()
    ))
    .await;
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert_eq!(resp.headers()["x-nodescope-sampler"], "ebpf");
    let body = resp.bytes().await.unwrap();
    assert_eq!(&body[..2], &[0x1f, 0x8b], "gzip body as Go serves it");
    let file = dir.path().join("burn.pb.gz");
    std::fs::write(&file, &body).unwrap();
    let top = go_pprof(&go, &["-top", "-nodecount=50"], &file);
    eprintln!("{top}");
    let hot = cum_percent(&top, "burn_hot_75").expect("burn_hot_75 in -top");
    let cold = cum_percent(&top, "burn_cold_25").expect("burn_cold_25 in -top");
    assert!(
        (hot - 75.0).abs() <= 5.0,
        "burn_hot_75 at {hot}% (want 75±5)"
    );
    assert!(
        (cold - 25.0).abs() <= 5.0,
        "burn_cold_25 at {cold}% (want 25±5)"
    );
    // Labels are there: pprof -tags lists pid/comm/workload.
    let tags = go_pprof(&go, &["-tags"], &file);
    assert!(tags.contains("comm"), "{tags}");
    assert!(tags.contains("burn"), "{tags}");
    assert!(tags.contains(&w.pid().to_string()), "{tags}");
    assert!(tags.contains("workload"), "{tags}");
    // Mappings carry the build id and locations their addresses.
    let raw = go_pprof(&go, &["-raw"], &file);
    assert!(raw.contains("Mappings"), "{raw}");
    assert!(raw.contains("burn"), "{raw}");
}

/// A syscall-heavy workload shows kernel frames on top of (called by) its user frames,
/// in the folded format; the folded output is well formed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syscall_workload_has_kernel_frames_under_user_frames() {
    const T: &str = "syscall_workload_has_kernel_frames_under_user_frames";
    if !require_root(T) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = build_workload(T, "syscalls", dir.path()) else {
        return;
    };
    let w = Workload::spawn(&bin);
    let h = serve(on_demand_only()).await;
    let resp = get(format!(
        "http://{}/debug/pprof/profile?pid={}&seconds=3&format=folded",
        h.addr,
        w.pid()
    ))
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = resp.text().await.unwrap();
    let mut total = 0u64;
    let mut kernel_under_user = 0u64;
    for line in text.lines() {
        let (stack, count) = line.rsplit_once(' ').expect("`stack count` line");
        let count: u64 = count.parse().expect("integer count");
        assert!(!stack.is_empty());
        total += count;
        let frames: Vec<&str> = stack.split(';').collect();
        assert_eq!(frames[0], "syscalls", "comm first: {line}");
        // glibc's syscall wrappers keep no frame pointer, so their direct caller
        // (do_syscalls_loop) is skipped by a frame-pointer walk; main is the anchor.
        if let Some(u) = frames.iter().position(|f| *f == "main") {
            if frames[u + 1..].iter().any(|f| f.ends_with("_[k]")) {
                kernel_under_user += count;
            }
        }
    }
    assert!(total > 50, "too few samples: {total}\n{text}");
    assert!(
        kernel_under_user * 2 > total,
        "kernel frames under main in only {kernel_under_user}/{total} samples:\n{text}"
    );
    assert!(
        text.contains("_write_[k]")
            || text.contains("sys_write_[k]")
            || text.contains("ksys_write_[k]"),
        "no write syscall frame:\n{text}"
    );
}

/// SVG: parses as XML and contains the workload's function names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svg_is_xml_with_function_names() {
    const T: &str = "svg_is_xml_with_function_names";
    if !require_root(T) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = build_workload(T, "burn", dir.path()) else {
        return;
    };
    let w = Workload::spawn(&bin);
    let h = serve(on_demand_only()).await;
    let resp = get(format!(
        "http://{}/debug/pprof/profile?pid={}&seconds=2&format=svg",
        h.addr,
        w.pid()
    ))
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/svg+xml");
    let svg = resp.text().await.unwrap();
    let opt = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(&svg, opt).expect("SVG is XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let titles: Vec<String> = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "title")
        .filter_map(|n| n.text().map(str::to_string))
        .collect();
    assert!(
        titles.iter().any(|t| t.contains("burn_hot_75")),
        "{titles:?}"
    );
    assert!(
        titles.iter().any(|t| t.contains("burn_cold_25")),
        "{titles:?}"
    );
}

/// The self profile (no target) opens in `go tool pprof` and names the profiler's own
/// functions (the test process is the "agent": it runs profiler code while profiled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_profile_names_own_functions() {
    self_profile_case("self_profile_names_own_functions", SelfProfiler::Auto).await;
}

/// The same through the SIGPROF (pprof-rs) path, used when eBPF is unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigprof_self_profile_names_own_functions() {
    self_profile_case(
        "sigprof_self_profile_names_own_functions",
        SelfProfiler::Sigprof,
    )
    .await;
}

async fn self_profile_case(test: &'static str, mode: SelfProfiler) {
    const T: &str = "self_profile";
    let _ = T;
    let Some(go) = require_tool(test, "go", GO_PATHS) else {
        return;
    };
    let h = serve(ProfilingConfig {
        self_profiler: mode,
        ..on_demand_only()
    })
    .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let worker = std::thread::spawn(move || {
        // Keep profiler code on CPU: parse kallsyms-formatted text and render outputs.
        let text: String = (0..20_000u64)
            .map(|i| format!("{:016x} T fn_{i}\n", 0xffff_ffff_8100_0000u64 + i * 16))
            .collect();
        let mut n = 0usize;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            let k = nodescope_profiler::kallsyms::KernelSymbols::parse(
                &text,
                std::path::Path::new("x"),
            )
            .unwrap();
            n += k.len();
        }
        n
    });
    let resp = get(format!("http://{}/debug/pprof/profile?seconds=3", h.addr)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = worker.join();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    let sampler = resp.headers()["x-nodescope-sampler"]
        .to_str()
        .unwrap()
        .to_string();
    let body = resp.bytes().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("self.pb.gz");
    std::fs::write(&file, &body).unwrap();
    let top = go_pprof(&go, &["-top", "-nodecount=200"], &file);
    eprintln!("sampler={sampler}\n{top}");
    if mode == SelfProfiler::Sigprof {
        assert_eq!(sampler, "sigprof");
    }
    assert!(
        top.contains("nodescope_profiler::kallsyms::KernelSymbols::parse"),
        "self profile does not name the profiler's functions:\n{top}"
    );
}

/// Bad parameters → 400 naming the parameter; seconds over the max → 400; an unknown
/// pid → 404; a second concurrent profile of the same target → 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_errors_and_conflicts() {
    const T: &str = "parameter_errors_and_conflicts";
    let h = serve(ProfilingConfig {
        max_seconds: 20,
        default_seconds: 10,
        ..on_demand_only()
    })
    .await;
    for (q, param) in [
        ("seconds=abc", "seconds"),
        ("seconds=21", "seconds"),
        ("seconds=0", "seconds"),
        ("hz=100000", "hz"),
        ("format=png", "format"),
        ("pid=1&all=true", "all"),
        ("container=nothex", "container"),
        ("frobnicate=1", "frobnicate"),
    ] {
        let r = get(format!("http://{}/debug/pprof/profile?{q}", h.addr)).await;
        assert_eq!(r.status(), 400, "{q}");
        let body = r.text().await.unwrap();
        assert!(body.contains(&format!("`{param}`")), "{q}: {body}");
    }
    let r = get(format!(
        "http://{}/debug/pprof/profile?pid=2147483646&seconds=1",
        h.addr
    ))
    .await;
    assert_eq!(r.status(), 404);

    // 409: the agent itself is a target every test environment has (eBPF or SIGPROF).
    let a = h.addr;
    let first =
        tokio::spawn(async move { get(format!("http://{a}/debug/pprof/profile?seconds=3")).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = get(format!("http://{}/debug/pprof/profile?seconds=1", h.addr)).await;
    assert_eq!(second.status(), 409, "{:?}", second.text().await);
    let first = first.await.unwrap();
    assert_eq!(first.status(), 200);
    // Released afterwards.
    let third = get(format!(
        "http://{}/debug/pprof/profile?seconds=1&format=folded",
        h.addr
    ))
    .await;
    assert_eq!(third.status(), 200);
    let _ = T;

    // The index is served.
    let idx = get(format!("http://{}/debug/pprof/", h.addr)).await;
    assert_eq!(idx.status(), 200);
    assert!(idx.text().await.unwrap().contains("profile?seconds="));
}

/// A client that goes away cancels the profile: the target is free again right after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_releases_the_target() {
    let h = serve(on_demand_only()).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(800))
        .build()
        .unwrap();
    let r = client
        .get(format!("http://{}/debug/pprof/profile?seconds=60", h.addr))
        .send()
        .await;
    assert!(r.is_err(), "the 60 s profile cannot have finished");
    // The drop guard cancels; the sampling thread notices within ~50 ms.
    let mut ok = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = get(format!(
            "http://{}/debug/pprof/profile?seconds=1&format=folded",
            h.addr
        ))
        .await;
        if r.status() == 200 {
            ok = true;
            break;
        }
        assert_eq!(r.status(), 409);
    }
    assert!(ok, "target still busy 4 s after the client went away");
}
