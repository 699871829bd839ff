//! The `cgroup` collector against real cgroups on this kernel (root; cgroup v2, or the v1
//! cpu/cpuacct/memory hierarchies of a hybrid host). The test creates its own cgroups
//! (`nodescope-host-test-<pid>-*`), runs a known load in them as a child process, compares
//! what the collector exports with what the cgroup files say at the same moment, and
//! removes the cgroups.
//!
//! * CPU: a busy loop under a 0.2-core CFS limit for 2 s: usage and throttling within 5% of
//!   the files; throttled periods > 0 and usage near 0.2 × the run time.
//! * Memory: 96 MiB touched and held: usage, peak and working set within 5% of the files.
//! * OOM: a child allocating past a 48 MiB limit is killed by the kernel's OOM killer and
//!   `nodescope_workload_memory_events_total{event="oom_kill"}` counts it.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nodescope_host::{HostMetricsConfig, HostPaths};
use nodescope_model::{MetricFamily, Value};
use nodescope_testsupport::require_root;

const CHILD_ENV: &str = "NODESCOPE_HOST_CGROUP_CHILD";

/// The load, run in a child process of this test binary: waits for a line on stdin (so it
/// is moved into its cgroup before it works), then `cpu:<ms>` spins, `mem:<MiB>` touches and
/// holds memory until stdin closes.
#[test]
fn cgroup_child() {
    let Ok(what) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();
    let (kind, n) = what.split_once(':').unwrap();
    let n: u64 = n.parse().unwrap();
    match kind {
        "cpu" => {
            let end = Instant::now() + Duration::from_millis(n);
            let mut x = 0u64;
            while Instant::now() < end {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                std::hint::black_box(x);
            }
        }
        "mem" => {
            let mut v: Vec<u8> = vec![0; (n << 20) as usize];
            for i in (0..v.len()).step_by(4096) {
                v[i] = 1;
            }
            std::hint::black_box(&v);
            println!("ready");
            std::io::stdout().flush().unwrap();
            let mut rest = String::new();
            let _ = std::io::stdin().lock().read_line(&mut rest);
            std::hint::black_box(&v);
        }
        _ => panic!("unknown child load {what}"),
    }
}

#[derive(Clone, Debug)]
enum Layout {
    V2(PathBuf),
    V1 {
        cpu: PathBuf,
        cpuacct: PathBuf,
        memory: PathBuf,
    },
}

fn layout() -> Option<Layout> {
    let root = Path::new("/sys/fs/cgroup");
    if let Ok(c) = std::fs::read_to_string(root.join("cgroup.controllers")) {
        if c.contains("cpu") && c.contains("memory") {
            return Some(Layout::V2(root.to_path_buf()));
        }
        return None;
    }
    let (cpu, cpuacct, memory) = (root.join("cpu"), root.join("cpuacct"), root.join("memory"));
    (cpu.join("cpu.cfs_quota_us").is_file()
        && cpuacct.join("cpuacct.usage").is_file()
        && memory.join("memory.limit_in_bytes").is_file())
    .then_some(Layout::V1 {
        cpu,
        cpuacct,
        memory,
    })
}

/// A cgroup the test made (in every hierarchy it needs); removed on drop.
struct Cg {
    name: String,
    dirs: Vec<PathBuf>,
    layout: Layout,
}

impl Cg {
    fn new(layout: &Layout, suffix: &str) -> Cg {
        let name = format!("nodescope-host-test-{}-{suffix}", std::process::id());
        let dirs: Vec<PathBuf> = match layout {
            Layout::V2(root) => {
                let sc = root.join("cgroup.subtree_control");
                let _ = std::fs::write(&sc, "+cpu +memory +pids +io");
                vec![root.join(&name)]
            }
            Layout::V1 {
                cpu,
                cpuacct,
                memory,
            } => {
                let mut v = vec![cpu.join(&name), memory.join(&name)];
                if std::fs::canonicalize(cpu).ok() != std::fs::canonicalize(cpuacct).ok() {
                    v.push(cpuacct.join(&name));
                }
                v
            }
        };
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        Cg {
            name,
            dirs,
            layout: layout.clone(),
        }
    }

    fn file(&self, ctrl: &str, f: &str) -> PathBuf {
        match &self.layout {
            Layout::V2(root) => root.join(&self.name).join(f),
            Layout::V1 {
                cpu,
                cpuacct,
                memory,
            } => match ctrl {
                "cpu" => cpu.join(&self.name).join(f),
                "cpuacct" => cpuacct.join(&self.name).join(f),
                _ => memory.join(&self.name).join(f),
            },
        }
    }

    fn set(&self, ctrl: &str, f: &str, v: &str) {
        let p = self.file(ctrl, f);
        std::fs::write(&p, v).unwrap_or_else(|e| panic!("write {v:?} to {}: {e}", p.display()));
    }

    fn read(&self, ctrl: &str, f: &str) -> String {
        std::fs::read_to_string(self.file(ctrl, f)).unwrap()
    }

    fn add(&self, pid: u32) {
        for d in &self.dirs {
            std::fs::write(d.join("cgroup.procs"), pid.to_string()).unwrap();
        }
    }

    fn workload(&self) -> String {
        format!("/{}", self.name)
    }
}

impl Drop for Cg {
    fn drop(&mut self) {
        for d in &self.dirs {
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

struct Load(Child);

impl Load {
    fn start(what: &str, cg: &Cg) -> Load {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "cgroup_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, what)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        cg.add(child.id());
        writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
        Load(child)
    }

    fn wait_ready(&mut self) {
        let out = self.0.stdout.as_mut().unwrap();
        let mut r = std::io::BufReader::new(out);
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap() == 0 {
                panic!("child exited before it was ready");
            }
            if line.contains("ready") {
                return;
            }
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn collect() -> Vec<MetricFamily> {
    let cfg = HostMetricsConfig {
        collectors: vec!["cgroup".into()],
        ..Default::default()
    };
    let c = cfg.build(&HostPaths::default()).unwrap();
    c[0].collect().unwrap()
}

fn get(f: &[MetricFamily], name: &str, workload: &str, extra: &[(&str, &str)]) -> Option<f64> {
    let fam = f.iter().find(|f| f.name == name)?;
    fam.points.iter().find_map(|p| {
        let ok = p
            .labels
            .iter()
            .any(|(k, v)| k == "workload" && v == workload)
            && extra
                .iter()
                .all(|(k, v)| p.labels.iter().any(|(pk, pv)| pk == k && pv == v));
        match (ok, &p.value) {
            (true, Value::Number(v)) => Some(*v),
            _ => None,
        }
    })
}

fn within(ours: f64, file: f64, rel: f64) -> bool {
    (ours - file).abs() <= file.abs() * rel
}

fn key(text: &str, k: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{k} missing in {text:?}"))
}

fn setup(test: &str) -> Option<Layout> {
    if !require_root(test) {
        return None;
    }
    let l = layout();
    if l.is_none() {
        nodescope_testsupport::skip(
            test,
            "no cgroup v2 with cpu+memory and no cgroup v1 cpu/cpuacct/memory hierarchies",
        );
    }
    l
}

#[test]
fn cpu_usage_and_throttling_match_the_cgroup_files() {
    let Some(layout) = setup("cpu_usage_and_throttling_match_the_cgroup_files") else {
        return;
    };
    let cg = Cg::new(&layout, "cpu");
    match &layout {
        Layout::V2(_) => cg.set("cpu", "cpu.max", "20000 100000"),
        Layout::V1 { .. } => {
            cg.set("cpu", "cpu.cfs_period_us", "100000");
            cg.set("cpu", "cpu.cfs_quota_us", "20000");
        }
    }
    let t0 = Instant::now();
    let mut load = Load::start("cpu:2000", &cg);
    let _ = load.0.wait();
    let wall = t0.elapsed().as_secs_f64();
    let f = collect();
    let w = cg.workload();
    let (usage, periods, throttled, throttled_s) = match &layout {
        Layout::V2(_) => {
            let t = cg.read("cpu", "cpu.stat");
            (
                key(&t, "usage_usec") / 1e6,
                key(&t, "nr_periods"),
                key(&t, "nr_throttled"),
                key(&t, "throttled_usec") / 1e6,
            )
        }
        Layout::V1 { .. } => {
            let t = cg.read("cpu", "cpu.stat");
            (
                cg.read("cpuacct", "cpuacct.usage")
                    .trim()
                    .parse::<f64>()
                    .unwrap()
                    / 1e9,
                key(&t, "nr_periods"),
                key(&t, "nr_throttled"),
                key(&t, "throttled_time") / 1e9,
            )
        }
    };
    let ours = |n: &str| {
        get(&f, n, &w, &[]).unwrap_or_else(|| panic!("{n}{{workload={w:?}}} not exported"))
    };
    let o_usage = ours("nodescope_workload_cpu_usage_seconds_total");
    assert!(
        within(o_usage, usage, 0.05),
        "usage: ours {o_usage}, cgroup {usage}"
    );
    let o_thr = ours("nodescope_workload_cpu_throttled_periods_total");
    assert!(
        within(o_thr, throttled, 0.05),
        "throttled: ours {o_thr}, cgroup {throttled}"
    );
    let o_per = ours("nodescope_workload_cpu_periods_total");
    assert!(
        within(o_per, periods, 0.05),
        "periods: ours {o_per}, cgroup {periods}"
    );
    let o_ts = ours("nodescope_workload_cpu_throttled_seconds_total");
    assert!(
        within(o_ts, throttled_s, 0.05),
        "throttled s: ours {o_ts}, cgroup {throttled_s}"
    );
    assert_eq!(ours("nodescope_workload_cpu_limit_cores"), 0.2);
    // The load really ran under the limit: throttled, and about 0.2 cores of the run.
    assert!(
        o_thr > 0.0,
        "a busy loop under a 0.2-core limit was never throttled"
    );
    assert!(
        o_usage > 0.1 * wall && o_usage < 0.3 * wall,
        "usage {o_usage} s over {wall} s under a 0.2-core limit"
    );
    drop(load);
}

#[test]
fn memory_usage_matches_the_cgroup_files() {
    let Some(layout) = setup("memory_usage_matches_the_cgroup_files") else {
        return;
    };
    let cg = Cg::new(&layout, "mem");
    let mut load = Load::start("mem:96", &cg);
    load.wait_ready();
    let f = collect();
    let (usage, peak, inactive_file) = match &layout {
        Layout::V2(_) => (
            cg.read("memory", "memory.current")
                .trim()
                .parse::<f64>()
                .unwrap(),
            cg.read("memory", "memory.peak").trim().parse::<f64>().ok(),
            key(&cg.read("memory", "memory.stat"), "inactive_file"),
        ),
        Layout::V1 { .. } => (
            cg.read("memory", "memory.usage_in_bytes")
                .trim()
                .parse::<f64>()
                .unwrap(),
            cg.read("memory", "memory.max_usage_in_bytes")
                .trim()
                .parse::<f64>()
                .ok(),
            key(&cg.read("memory", "memory.stat"), "total_inactive_file"),
        ),
    };
    let w = cg.workload();
    let o_usage =
        get(&f, "nodescope_workload_memory_usage_bytes", &w, &[]).expect("usage exported");
    assert!(
        within(o_usage, usage, 0.05),
        "usage: ours {o_usage}, cgroup {usage}"
    );
    assert!(
        o_usage >= 96.0 * 1048576.0,
        "96 MiB touched, usage {o_usage}"
    );
    let o_wss =
        get(&f, "nodescope_workload_memory_working_set_bytes", &w, &[]).expect("working set");
    assert!(
        within(o_wss, usage - inactive_file, 0.05),
        "working set: ours {o_wss}, cgroup {}",
        usage - inactive_file
    );
    if let Some(peak) = peak {
        let o_peak = get(&f, "nodescope_workload_memory_peak_bytes", &w, &[]).expect("peak");
        assert!(
            within(o_peak, peak, 0.05),
            "peak: ours {o_peak}, cgroup {peak}"
        );
    }
    drop(load);
}

#[test]
fn oom_kill_in_a_memory_limited_cgroup_is_counted() {
    let Some(layout) = setup("oom_kill_in_a_memory_limited_cgroup_is_counted") else {
        return;
    };
    let cg = Cg::new(&layout, "oom");
    match &layout {
        Layout::V2(_) => {
            cg.set("memory", "memory.max", &(48u64 << 20).to_string());
            let _ = std::fs::write(cg.file("memory", "memory.swap.max"), "0");
        }
        Layout::V1 { .. } => {
            cg.set(
                "memory",
                "memory.limit_in_bytes",
                &(48u64 << 20).to_string(),
            );
            let _ = std::fs::write(
                cg.file("memory", "memory.memsw.limit_in_bytes"),
                (48u64 << 20).to_string(),
            );
        }
    }
    let before = collect();
    let w = cg.workload();
    let b = get(
        &before,
        "nodescope_workload_memory_events_total",
        &w,
        &[("event", "oom_kill")],
    )
    .unwrap_or(0.0);
    assert_eq!(b, 0.0, "fresh cgroup already has OOM kills");
    let mut load = Load::start("mem:256", &cg);
    let status = load.0.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "the child was not OOM-killed: {status:?}"
    );
    let f = collect();
    let kills = get(
        &f,
        "nodescope_workload_memory_events_total",
        &w,
        &[("event", "oom_kill")],
    )
    .expect("oom_kill event exported");
    assert!(kills >= 1.0, "oom_kill {kills} after an OOM kill");
    let file = match &layout {
        Layout::V2(_) => key(&cg.read("memory", "memory.events"), "oom_kill"),
        Layout::V1 { .. } => key(&cg.read("memory", "memory.oom_control"), "oom_kill"),
    };
    assert_eq!(kills, file);
    assert_eq!(
        get(&f, "nodescope_workload_memory_limit_bytes", &w, &[]),
        Some((48u64 << 20) as f64)
    );
    drop(load);
}
