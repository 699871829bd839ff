//! DWARF CFI unwinding in BPF, against code without frame pointers: a g++ -O2
//! -fomit-frame-pointer program with a known split between two callers of `main`, a
//! 300-frame recursion, and Debian's own python3.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use nodescope_profiler::ProfilingConfig;
use nodescope_testsupport::{require_root, require_tool};

fn build_split(test: &str, dir: &Path) -> Option<PathBuf> {
    let gxx = require_tool(test, "g++", &[])?;
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/split.cpp");
    let out = dir.join("split");
    let st = Command::new(gxx)
        .args(["-O2", "-g", "-fomit-frame-pointer", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("running g++");
    assert!(st.success(), "compiling {}", src.display());
    Some(out)
}

/// (count, frames root first) per folded line of the profile of `pid`.
async fn folded(h: &Harness, pid: u32, seconds: u32, hz: u32) -> Vec<(u64, Vec<String>)> {
    let resp = get(format!(
        "http://{}/debug/pprof/profile?pid={pid}&seconds={seconds}&hz={hz}&format=folded",
        h.addr
    ))
    .await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    text.lines()
        .filter_map(|l| {
            let (stack, n) = l.rsplit_once(' ')?;
            let frames: Vec<String> = stack.split(';').skip(1).map(str::to_string).collect();
            Some((n.parse().ok()?, frames))
        })
        .collect()
}

fn share(lines: &[(u64, Vec<String>)], pred: impl Fn(&[String]) -> bool) -> (u64, u64) {
    let total: u64 = lines.iter().map(|(n, _)| n).sum();
    let hit: u64 = lines.iter().filter(|(_, f)| pred(f)).map(|(n, _)| n).sum();
    (hit, total)
}

fn user(frames: &[String]) -> impl Iterator<Item = &String> {
    frames.iter().filter(|f| !f.ends_with("_[k]"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gxx_o2_without_frame_pointers_reaches_main_with_the_right_split() {
    const T: &str = "gxx_o2_without_frame_pointers_reaches_main_with_the_right_split";
    if !require_root(T) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = build_split(T, dir.path()) else {
        return;
    };
    let w = Workload::spawn(&bin);
    let h = serve(on_demand_only()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines = folded(&h, w.pid(), 5, 499).await;
    let (main, total) = share(&lines, |f| user(f).any(|x| x == "main"));
    let (hot, _) = share(&lines, |f| {
        user(f).any(|x| x == "main") && user(f).any(|x| x.starts_with("hot_caller("))
    });
    let (cold, _) = share(&lines, |f| {
        user(f).any(|x| x == "main") && user(f).any(|x| x.starts_with("cold_caller("))
    });
    let reach = main as f64 * 100.0 / total as f64;
    let hot_pct = hot as f64 * 100.0 / main.max(1) as f64;
    let cold_pct = cold as f64 * 100.0 / main.max(1) as f64;
    eprintln!(
        "g++ -O2 -fomit-frame-pointer: {main}/{total} samples reach main ({reach:.2} %), \
         hot_caller {hot_pct:.1} %, cold_caller {cold_pct:.1} %"
    );
    assert!(total >= 300, "only {total} samples");
    assert!(reach >= 99.0, "{reach:.2} % reach main\n{lines:?}");
    assert!((hot_pct - 75.0).abs() <= 3.0, "hot_caller {hot_pct:.1} %");
    assert!(
        (cold_pct - 25.0).abs() <= 3.0,
        "cold_caller {cold_pct:.1} %"
    );
    // The unwind quality is in the self metrics: the walks ended at the root.
    let fams = h.metrics.collect();
    let ends = fams
        .iter()
        .find(|f| f.name == "nodescope_profiler_unwind_ends_total")
        .expect("unwind_ends_total");
    assert!(ends
        .points
        .iter()
        .any(|p| p.labels.iter().any(|(_, v)| v == "root")));
    let root = fams
        .iter()
        .find(|f| f.name == "nodescope_profiler_root_reached_ratio")
        .expect("root_reached_ratio");
    let split = root
        .points
        .iter()
        .find(|p| p.labels.iter().any(|(_, v)| v == "split"))
        .expect("binary=split");
    assert!(matches!(split.value, nodescope_model::Value::Number(v) if v >= 0.99));
    // And in the status page.
    let st = h.status.snapshot();
    let s = st.iter().find(|s| s.name == "profiler").unwrap();
    let q = s
        .details
        .get("unwind_quality")
        .expect("unwind_quality detail");
    assert!(
        q.contains("split: 100.0% reach root") || q.contains("split: 99."),
        "{q}"
    );
    assert!(s
        .details
        .get("unwind_tables")
        .is_some_and(|t| t.contains("rows")));

    // The pprof carries the quality as comments, and go tool pprof reads it.
    if let Some(go) = require_tool(T, "go", GO_PATHS) {
        let resp = get(format!(
            "http://{}/debug/pprof/profile?pid={}&seconds=1&hz=99",
            h.addr,
            w.pid()
        ))
        .await;
        assert_eq!(resp.status(), 200);
        let body = resp.bytes().await.unwrap();
        let p = nodescope_pprof::decode_gzip(&body, 64 << 20).unwrap();
        let comments: Vec<&str> = p
            .comment
            .iter()
            .map(|&i| p.string_table[i as usize].as_str())
            .collect();
        assert!(
            comments
                .iter()
                .any(|c| c.starts_with("unwind split: ") && c.contains("reach a process root")),
            "{comments:?}"
        );
        assert!(
            comments.iter().any(|c| c.contains("DWARF CFI")),
            "{comments:?}"
        );
        let file = dir.path().join("split.pb.gz");
        std::fs::write(&file, &body).unwrap();
        let top = go_pprof(&go, &["-top"], &file);
        assert!(top.contains("spin"), "{top}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_recursion_is_not_truncated() {
    const T: &str = "deep_recursion_is_not_truncated";
    if !require_root(T) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = build_split(T, dir.path()) else {
        return;
    };
    let w = Workload(
        Command::new(&bin)
            .args(["deep", "220"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let h = serve(on_demand_only()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines = folded(&h, w.pid(), 3, 199).await;
    let (deep, total) = share(&lines, |f| {
        user(f).filter(|x| x.starts_with("deep(")).count() >= 221 && user(f).any(|x| x == "main")
    });
    eprintln!("220-deep recursion: {deep}/{total} samples have all 221 frames and main");
    assert!(total >= 100, "only {total} samples");
    assert!(deep * 100 >= total * 95, "{deep}/{total}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_python3_reaches_a_process_root() {
    const T: &str = "debian_python3_reaches_a_process_root";
    if !require_root(T) {
        return;
    }
    let py = Path::new("/usr/bin/python3");
    if !py.exists() {
        nodescope_testsupport::skip(T, "no /usr/bin/python3 (Debian's python3 package)");
        return;
    }
    let w = Workload(
        Command::new(py)
            .args(["-c", "while True:\n    pass"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let h = serve(ProfilingConfig {
        continuous: false,
        ..Default::default()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = folded(&h, w.pid(), 4, 199).await;
    let (root, total) = share(&lines, |f| {
        user(f)
            .next()
            .is_some_and(|x| nodescope_profiler::symbolize::ENTRY_POINTS.contains(&x.as_str()))
    });
    let (main, _) = share(&lines, |f| {
        user(f).any(|x| x == "main" || x == "Py_RunMain")
    });
    let pct = root as f64 * 100.0 / total.max(1) as f64;
    eprintln!(
        "Debian python3: {root}/{total} samples reach a process root ({pct:.2} %), {main} pass Py_RunMain/main"
    );
    assert!(total >= 100, "only {total} samples");
    assert!(
        pct >= 95.0,
        "{pct:.2} % reach a root\n{:?}",
        &lines[..lines.len().min(5)]
    );
}

/// Node with `--perf-basic-prof`: JIT frames get their names from /tmp/perf-<pid>.map
/// (read through /proc/<pid>/root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_jit_frames_are_named_from_the_perf_map() {
    const T: &str = "node_jit_frames_are_named_from_the_perf_map";
    if !require_root(T) {
        return;
    }
    let Some(node) = require_tool(T, "node", &["/usr/bin/node"]) else {
        return;
    };
    // V8 writes isolate-*-v8.log files into its working directory: not the source tree.
    let cwd = tempfile::tempdir().unwrap();
    let w = Workload(
        Command::new(node)
            .current_dir(cwd.path())
            .args([
                "--perf-basic-prof",
                "-e",
                "function spinJs(n){let x=0;for(let i=0;i<n;i++){x=(x*31+i)|0}return x}\
                 for(;;){spinJs(1e6)}",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let h = serve(on_demand_only()).await;
    // Let V8 optimize spinJs (and write its perf-map line).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let lines = folded(&h, w.pid(), 4, 199).await;
    // Leaf user frames outside any file mapping: named from the perf map, or not.
    let mut named = 0;
    let mut unnamed = 0;
    let mut total = 0;
    for (n, f) in &lines {
        total += n;
        let Some(leaf) = user(f).last() else { continue };
        if leaf.contains("spinJs") {
            named += n;
        } else if leaf.starts_with("[unknown] 0x") {
            unnamed += n;
        }
    }
    let pct = named as f64 * 100.0 / (named + unnamed).max(1) as f64;
    eprintln!("node --perf-basic-prof: {named} JIT leaf samples named spinJs, {unnamed} unnamed, {total} samples ({pct:.1} % named)");
    assert!(named + unnamed >= 100, "{lines:?}");
    assert!(pct >= 90.0, "{pct:.1} % named");
}

/// Bad input: a binary deleted while mapped is still unwound (its table is read through
/// /proc/<pid>/map_files); a process that execs mid-profile is profiled on, never a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_binary_and_exec_mid_profile() {
    const T: &str = "deleted_binary_and_exec_mid_profile";
    if !require_root(T) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = build_split(T, dir.path()) else {
        return;
    };
    let w = Workload::spawn(&bin);
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::remove_file(&bin).unwrap();
    let h = serve(on_demand_only()).await;
    let lines = folded(&h, w.pid(), 2, 199).await;
    let (main, total) = share(&lines, |f| user(f).any(|x| x == "main"));
    eprintln!("deleted binary: {main}/{total} samples reach main");
    assert!(total >= 50, "only {total} samples");
    assert!(main * 100 >= total * 95, "{main}/{total}\n{lines:?}");
    drop(w);

    // A shell that spins, then execs python3: the old entry describes the shell.
    let Some(bin) = build_split(T, dir.path()) else {
        return;
    };
    let w = Workload(
        Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "timeout 1 {} ; exec /usr/bin/python3 -c 'while True:\n    pass'",
                bin.display()
            ))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let lines = folded(&h, w.pid(), 3, 199).await;
    let total: u64 = lines.iter().map(|(n, _)| n).sum();
    eprintln!("exec mid-profile: {total} samples");
    assert!(total >= 50, "only {total} samples\n{lines:?}");
}

/// A Rust release binary without frame pointers (linked with a page-shifted .text
/// segment): stacks reach the process root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_release_without_frame_pointers_reaches_the_root() {
    const T: &str = "rust_release_without_frame_pointers_reaches_the_root";
    if !require_root(T) {
        return;
    }
    let Some(rustc) = require_tool(T, "rustc", &[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("spin.rs");
    std::fs::write(
        &src,
        "#[inline(never)] fn spin(n: u64) -> u64 { let mut x = 1u64; \
         for i in 0..n { x = x.wrapping_mul(6364136223846793005).wrapping_add(i); } \
         std::hint::black_box(x) }\n\
         #[inline(never)] fn work_loop() { loop { std::hint::black_box(spin(1_000_000)); } }\n\
         fn main() { work_loop() }\n",
    )
    .unwrap();
    let bin = dir.path().join("spin");
    let st = Command::new(rustc)
        .args(["-O", "-C", "force-frame-pointers=no", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success());
    let w = Workload::spawn(&bin);
    let h = serve(on_demand_only()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines = folded(&h, w.pid(), 3, 199).await;
    let (root, total) = share(&lines, |f| {
        user(f).next().is_some_and(|x| x == "_start") && user(f).any(|x| x.ends_with("work_loop"))
    });
    eprintln!(
        "Rust -O without frame pointers: {root}/{total} samples reach _start through work_loop"
    );
    assert!(total >= 100, "only {total} samples");
    assert!(
        root * 100 >= total * 95,
        "{root}/{total}\n{:?}",
        &lines[..lines.len().min(5)]
    );
}
