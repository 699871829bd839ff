//! CPU cost of one full collect of every host collector, side by side with Debian's
//! node_exporter in the same run.
//!
//! ```text
//! cargo run --release -p nodescope-host --example collect_bench -- [--rounds 10] [--iterations 200] [--scrapes 30] [--no-anchor] [--root /]
//! ```
//!
//! Each round runs `iterations` full collects (all 16 collectors, one after the other,
//! as the agent does per scrape) and measures this process's CPU time
//! (CLOCK_PROCESS_CPUTIME_ID, so the statfs worker thread is included); then, when
//! `prometheus-node-exporter` is installed, it scrapes a node_exporter it started on a free
//! loopback port `scrapes` times and reads that process's utime+stime from
//! `/proc/<pid>/stat`. Rounds alternate the two; the medians and their ratio are printed.
//!
//! `--fake-mounts N` instead measures the `filesystem` collector alone against a
//! generated host root whose `proc/1/mountinfo` lists N mounts (each a real directory, so
//! every `statfs` succeeds): the cost per mount on a busy Kubernetes node.
//! `--cgroups N` (root) measures the `cgroup` collector alone on this machine's real
//! cgroup filesystem with N extra cgroups the bench creates (cgroup v2 under the root, or
//! in the v1 cpu, cpuacct, memory, blkio and pids hierarchies) and removes afterwards.
//! Our number is the collectors only (no text encoding, no HTTP); node_exporter's is a
//! whole scrape. A per-collector breakdown follows.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodescope_host::{HostMetricsConfig, HostPaths};
use nodescope_model::Collector;
use rustix::time::{clock_gettime, ClockId};

fn cpu_now() -> Duration {
    let t = clock_gettime(ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn collect_all(cs: &[Arc<dyn Collector>]) -> usize {
    let mut points = 0;
    for c in cs {
        if let Ok(f) = c.collect() {
            points += f.iter().map(|f| f.points.len()).sum::<usize>();
        }
    }
    points
}

struct Anchor {
    child: Child,
    port: u16,
    ticks: f64,
}

impl Anchor {
    fn start() -> Option<Anchor> {
        let bin = [
            "/usr/bin/prometheus-node-exporter",
            "/usr/sbin/prometheus-node-exporter",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
        let port = TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new(bin)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut a = Anchor {
            child,
            port,
            ticks: rustix::param::clock_ticks_per_second() as f64,
        };
        for _ in 0..100 {
            if a.scrape().is_some() {
                return Some(a);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = a.child.kill();
        let _ = a.child.wait();
        None
    }

    fn scrape(&self) -> Option<usize> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .ok()?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).ok()?;
        Some(body.len())
    }

    fn cpu(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = f.get(11)?.parse().ok()?;
        let stime: f64 = f.get(12)?.parse().ok()?;
        Some((utime + stime) / self.ticks)
    }

    fn rss_kb(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }
}

impl Drop for Anchor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() {
    let mut rounds = 10usize;
    let mut iterations = 200usize;
    let mut scrapes = 30usize;
    let mut anchor_wanted = true;
    let mut root = String::from("/");
    let mut fake_mounts = 0usize;
    let mut cgroups = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| {
            args.next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        };
        match a.as_str() {
            "--rounds" => rounds = val("--rounds").parse().expect("--rounds N"),
            "--iterations" => iterations = val("--iterations").parse().expect("--iterations N"),
            "--scrapes" => scrapes = val("--scrapes").parse().expect("--scrapes N"),
            "--root" => root = val("--root"),
            "--no-anchor" => anchor_wanted = false,
            "--fake-mounts" => fake_mounts = val("--fake-mounts").parse().expect("--fake-mounts N"),
            "--cgroups" => cgroups = val("--cgroups").parse().expect("--cgroups N"),
            other => panic!("unknown argument {other}"),
        }
    }
    if fake_mounts > 0 {
        fake_mount_bench(fake_mounts, rounds, iterations);
        return;
    }
    if cgroups > 0 {
        cgroup_bench(cgroups, rounds, iterations);
        return;
    }
    let paths = HostPaths::from_root(Path::new(&root));
    let collectors = HostMetricsConfig::default()
        .build(&paths)
        .expect("building collectors");
    let points = collect_all(&collectors);
    for _ in 0..50 {
        collect_all(&collectors);
    }
    let anchor = if anchor_wanted { Anchor::start() } else { None };
    if anchor_wanted && anchor.is_none() {
        eprintln!("prometheus-node-exporter not found or did not start; measuring nodescope only");
    }
    if let Some(a) = &anchor {
        for _ in 0..5 {
            a.scrape();
        }
    }

    let mut ours_cpu = Vec::new();
    let mut ours_wall = Vec::new();
    let mut ne_cpu = Vec::new();
    for r in 0..rounds {
        let c0 = cpu_now();
        let w0 = Instant::now();
        for _ in 0..iterations {
            collect_all(&collectors);
        }
        let cpu = (cpu_now() - c0).as_secs_f64() / iterations as f64;
        let wall = w0.elapsed().as_secs_f64() / iterations as f64;
        ours_cpu.push(cpu * 1e3);
        ours_wall.push(wall * 1e3);
        let mut line = format!(
            "round {r:2}: nodescope {:.3} ms CPU/collect ({:.3} ms wall)",
            cpu * 1e3,
            wall * 1e3
        );
        if let Some(a) = &anchor {
            if let Some(before) = a.cpu() {
                for _ in 0..scrapes {
                    a.scrape();
                }
                if let Some(after) = a.cpu() {
                    let per = (after - before) / scrapes as f64 * 1e3;
                    ne_cpu.push(per);
                    line.push_str(&format!("; node_exporter {per:.3} ms CPU/scrape"));
                }
            }
        }
        println!("{line}");
    }
    let own_rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(String::from))
        })
        .unwrap_or_default();
    println!();
    println!("series per collect:            {points}");
    println!(
        "nodescope median:              {:.3} ms CPU per full collect, {:.3} ms wall",
        median(&mut ours_cpu),
        median(&mut ours_wall)
    );
    println!("bench process RSS:             {own_rss} kB");
    if !ne_cpu.is_empty() {
        let ne = median(&mut ne_cpu);
        println!("node_exporter median:          {ne:.3} ms CPU per scrape");
        println!(
            "ratio nodescope/node_exporter: {:.3}",
            median(&mut ours_cpu) / ne
        );
        if let Some(a) = &anchor {
            println!(
                "node_exporter RSS:             {} kB",
                a.rss_kb().unwrap_or(0)
            );
        }
    }
    drop(anchor);

    println!();
    println!("per collector (median of {rounds} rounds of {iterations}):");
    for c in &collectors {
        let mut v = Vec::new();
        for _ in 0..rounds {
            let c0 = cpu_now();
            for _ in 0..iterations {
                let _ = c.collect();
            }
            v.push((cpu_now() - c0).as_secs_f64() / iterations as f64 * 1e6);
        }
        println!("  {:<10} {:8.1} us", c.name(), median(&mut v));
    }
}

fn fake_mount_bench(n: usize, rounds: usize, iterations: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = HostPaths::from_root(dir.path());
    std::fs::create_dir_all(paths.proc.join("1")).expect("mkdir");
    std::fs::create_dir_all(&paths.sys).expect("mkdir");
    // Every mount point is a directory of the temp dir's filesystem: give the mounts its
    // device so the collector's mount check passes and the success path is measured.
    std::fs::create_dir_all(&paths.root).expect("mkdir");
    let dev = {
        use std::os::unix::fs::MetadataExt;
        let d = std::fs::metadata(&paths.root).expect("stat").dev();
        format!("{}:{}", rustix::fs::major(d), rustix::fs::minor(d))
    };
    let mut mountinfo = format!("1 0 {dev} / / rw,relatime - ext4 /dev/root rw\n");
    for i in 0..n {
        let mp = format!("/var/lib/kubelet/pods/pod{i}/volumes/kubernetes.io~projected/token");
        std::fs::create_dir_all(paths.root.join(mp.trim_start_matches('/'))).expect("mkdir");
        mountinfo.push_str(&format!(
            "{} 1 {dev} / {mp} rw,relatime - tmpfs tmpfs rw,size=1024k\n",
            i + 2,
        ));
    }
    std::fs::write(paths.proc.join("1/mountinfo"), mountinfo).expect("write");
    let cfg = HostMetricsConfig {
        collectors: vec!["filesystem".into()],
        ..Default::default()
    };
    let cs = cfg.build(&paths).expect("build");
    let series = collect_all(&cs);
    let mut v = Vec::new();
    for _ in 0..rounds {
        let c0 = cpu_now();
        for _ in 0..iterations {
            collect_all(&cs);
        }
        v.push((cpu_now() - c0).as_secs_f64() / iterations as f64 * 1e6);
    }
    let med = median(&mut v);
    println!(
        "filesystem collector, {} mounts ({series} series): {med:.1} us CPU per collect, {:.2} us per mount",
        n + 1,
        med / (n + 1) as f64
    );
}

/// Cgroup directories the bench made; removed on drop.
struct BenchCgroups(Vec<std::path::PathBuf>);

impl Drop for BenchCgroups {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn cgroup_bench(n: usize, rounds: usize, iterations: usize) {
    let root = Path::new("/sys/fs/cgroup");
    let bases: Vec<std::path::PathBuf> = if root.join("cgroup.controllers").is_file() {
        vec![root.to_path_buf()]
    } else {
        let mut v: Vec<std::path::PathBuf> = Vec::new();
        for c in ["cpu", "cpuacct", "memory", "blkio", "pids"] {
            let p = root.join(c);
            let canon = std::fs::canonicalize(&p).ok();
            if p.is_dir() && !v.iter().any(|x| std::fs::canonicalize(x).ok() == canon) {
                v.push(p);
            }
        }
        v
    };
    let cfg = HostMetricsConfig {
        collectors: vec!["cgroup".into()],
        ..Default::default()
    };
    let cs = cfg.build(&HostPaths::default()).expect("build");
    let measure = |cs: &[Arc<dyn Collector>]| {
        let mut v = Vec::new();
        for _ in 0..rounds {
            let c0 = cpu_now();
            for _ in 0..iterations {
                collect_all(cs);
            }
            v.push((cpu_now() - c0).as_secs_f64() / iterations as f64 * 1e3);
        }
        median(&mut v)
    };
    let base_series = collect_all(&cs);
    let base = measure(&cs);
    let mut made = BenchCgroups(Vec::new());
    for i in 0..n {
        for b in &bases {
            let d = b.join(format!("nodescope-host-bench-{}-{i}", std::process::id()));
            std::fs::create_dir(&d)
                .unwrap_or_else(|e| panic!("mkdir {}: {e} (needs root)", d.display()));
            made.0.push(d);
        }
    }
    let series = collect_all(&cs);
    let with = measure(&cs);
    drop(made);
    println!(
        "cgroup collector on {}: {base:.3} ms CPU per collect before ({base_series} series), \
         {with:.3} ms with {n} more cgroups ({series} series); {:.2} us per added cgroup",
        bases
            .iter()
            .map(|b| b.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        (with - base) * 1e3 / n as f64
    );
}
