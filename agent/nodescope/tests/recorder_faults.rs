//! Fault injection against the flight recorder (root only): in resources this test owns,
//! a CPU hog in a test cgroup, packet loss on a veth pair into a test network namespace,
//! a memory hog killed by the OOM killer in a memory-limited cgroup, and a connect storm
//! to a closed port. Each fault is injected `NODESCOPE_FAULT_RUNS` times (default 5) after
//! a clean period; each time an incident is triggered and the bundle's top finding must
//! name the fault, in at least 4 of 5 runs.
//!
//! The agent records workloads and peers every 2 s here (`recorder.workload_interval`) and
//! rescans cgroups every second so that a run takes about 15 s.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// The faults must not run at the same time (a CPU hog slows everything else).
static SERIAL: Mutex<()> = Mutex::new(());

/// Longer than the baseline window (before + after = 7 s), so it holds no fault.
const CLEAN: Duration = Duration::from_secs(9);
const FAULT: Duration = Duration::from_secs(6);

fn runs() -> usize {
    std::env::var("NODESCOPE_FAULT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(5)
}

fn start() -> Agent {
    let spool = tempfile::tempdir().unwrap().keep();
    start_agent(&format!(
        "[host.cgroup]\nrescan_interval_ms = 1000\n[recorder]\nspool_dir = {:?}\ncooldown = \"0s\"\nworkload_interval = \"2s\"\n",
        spool.display().to_string()
    ))
}

fn post(url: &str, body: &str) -> (u16, serde_json::Value) {
    let c = reqwest::blocking::Client::new();
    let r = c
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .unwrap();
    let st = r.status().as_u16();
    (st, r.json().unwrap_or_default())
}

/// Triggers an incident covering the fault and returns the bundle's findings.
fn incident(agent: &Agent) -> Vec<serde_json::Value> {
    let (st, r) = post(
        &agent.url("/api/v1/incidents"),
        &format!(r#"{{"before":"{}s","after":"1s"}}"#, FAULT.as_secs()),
    );
    assert_eq!(st, 202, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, l) = http_get(&agent.url("/api/v1/incidents")).unwrap();
        let l: serde_json::Value = serde_json::from_str(&l).unwrap();
        let i = l["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == id.as_str())
            .cloned()
            .unwrap();
        match i["state"].as_str().unwrap() {
            "ready" => break,
            "failed" => panic!("bundle failed: {i}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "bundle not ready: {i}");
        std::thread::sleep(Duration::from_millis(200));
    }
    offcpu_profile_is_in_the_bundle(agent, &id);
    let (code, f) =
        http_get(&agent.url(&format!("/api/v1/incidents/{id}/files/findings.json"))).unwrap();
    assert_eq!(code, 200);
    serde_json::from_str(&f).unwrap()
}

/// The after window brought an off-CPU profile of the node (the agent runs as root with
/// eBPF here); once per test process, `go tool pprof` reads it and finds off-CPU time.
fn offcpu_profile_is_in_the_bundle(agent: &Agent, id: &str) {
    static READ_WITH_PPROF: AtomicBool = AtomicBool::new(false);
    let (code, m) =
        http_get(&agent.url(&format!("/api/v1/incidents/{id}/files/manifest.json"))).unwrap();
    assert_eq!(code, 200);
    let m: serde_json::Value = serde_json::from_str(&m).unwrap();
    assert_eq!(
        m["offcpu"]["file"], "offcpu-incident.pb.gz",
        "{}",
        m["offcpu"]
    );
    if READ_WITH_PPROF.swap(true, Ordering::SeqCst) {
        return;
    }
    let body = reqwest::blocking::get(agent.url(&format!(
        "/api/v1/incidents/{id}/files/offcpu-incident.pb.gz"
    )))
    .unwrap()
    .bytes()
    .unwrap();
    assert_eq!(&body[..2], &[0x1f, 0x8b]);
    let Some(go) = require_tool("recorder_offcpu_pprof", "go", &["/usr/lib/go/bin/go"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("offcpu.pb.gz");
    std::fs::write(&f, &body).unwrap();
    let o = Command::new(go)
        .args(["tool", "pprof", "-top", "-sample_index=offcpu"])
        .arg(&f)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.contains("Type: offcpu"),
        "pprof: {text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs `inject` (which returns its own cleanup) `runs()` times and counts the runs whose
/// top finding `names` the fault.
fn exercise(
    name: &str,
    agent: &Agent,
    mut inject: impl FnMut(usize) -> Box<dyn FnOnce()>,
    names: impl Fn(usize, &serde_json::Value) -> bool,
) {
    let n = runs();
    let mut ok = 0;
    for run in 0..n {
        std::thread::sleep(CLEAN);
        let stop = inject(run);
        std::thread::sleep(FAULT);
        let findings = incident(agent);
        stop();
        let top: Vec<String> = findings
            .iter()
            .take(3)
            .map(|f| format!("{} [{}] score {}", f["title"], f["kind"], f["score"]))
            .collect();
        let hit = findings.first().is_some_and(|f| names(run, f));
        ok += usize::from(hit);
        println!(
            "{name} run {}: {} top findings: {}",
            run + 1,
            if hit { "NAMED" } else { "missed" },
            top.join(" | ")
        );
    }
    let need = (n * 4).div_ceil(5);
    println!("{name}: the top finding named the fault in {ok} of {n} runs (need {need})");
    assert!(
        ok >= need,
        "{name}: top finding named the fault in only {ok} of {n} runs"
    );
}

/// A test cgroup with the given controllers (v2: one directory; v1: one per hierarchy).
struct Cgroup {
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    fn new(name: &str, v1_controllers: &[&str]) -> Cgroup {
        let root = PathBuf::from("/sys/fs/cgroup");
        let dirs: Vec<PathBuf> = if root.join("cgroup.controllers").exists() {
            vec![root.join(name)]
        } else {
            v1_controllers
                .iter()
                .map(|c| root.join(c).join(name))
                .collect()
        };
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        }
        Cgroup { dirs }
    }
    fn v2(&self) -> bool {
        self.dirs.len() == 1
            && self.dirs[0].parent() == Some(std::path::Path::new("/sys/fs/cgroup"))
    }
    fn write(&self, file_v1: &str, file_v2: &str, v: &str) {
        for d in &self.dirs {
            let f = d.join(if self.v2() { file_v2 } else { file_v1 });
            if f.exists() {
                let _ = std::fs::write(&f, v);
            }
        }
    }
    /// Runs `script` with sh inside the cgroup.
    fn spawn(&self, script: &str) -> Child {
        let procs: Vec<String> = self
            .dirs
            .iter()
            .map(|d| format!("echo $$ > {}/cgroup.procs", d.display()))
            .collect();
        Command::new("sh")
            .arg("-c")
            .arg(format!("{}; exec {script}", procs.join("; ")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn kill(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

#[test]
fn cpu_hog_in_a_test_cgroup_is_the_top_finding() {
    if !require_root("cpu_hog_in_a_test_cgroup_is_the_top_finding") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let agent = start();
    let pid = std::process::id();
    exercise(
        "cpu hog",
        &agent,
        |run| {
            let cg = Cgroup::new(
                &format!("nstest-hog-{pid}-{run}"),
                &["cpuacct", "cpu", "memory"],
            );
            let child = cg.spawn("sh -c 'while :; do :; done'");
            Box::new(move || {
                kill(child);
                drop(cg);
            })
        },
        |run, f| {
            f["kind"] == "workload_cpu"
                && f["subject"]["workload"] == format!("/nstest-hog-{pid}-{run}").as_str()
        },
    );
}

#[test]
fn oom_kill_in_a_memory_limited_cgroup_is_the_top_finding() {
    if !require_root("oom_kill_in_a_memory_limited_cgroup_is_the_top_finding") {
        return;
    }
    let Some(py) = require_tool(
        "oom_kill_in_a_memory_limited_cgroup_is_the_top_finding",
        "python3",
        &["--version"],
    ) else {
        return;
    };
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let agent = start();
    let pid = std::process::id();
    exercise(
        "oom kill",
        &agent,
        |run| {
            let cg = Cgroup::new(&format!("nstest-oom-{pid}-{run}"), &["memory"]);
            cg.write("memory.limit_in_bytes", "memory.max", "48M");
            cg.write("memory.swappiness", "memory.swap.max", "0");
            cg.write("memory.memsw.limit_in_bytes", "memory.swap.max", "48M");
            let script = format!(
                "{} -c 'b=[]\nwhile True: b.append(bytearray(1<<20))'",
                py.display()
            );
            let child = cg.spawn(&format!("sh -c \"{}\"", script.replace('"', "\\\"")));
            Box::new(move || {
                kill(child);
                drop(cg);
            })
        },
        |run, f| {
            f["kind"] == "oom_kill"
                && f["subject"]["workload"] == format!("/nstest-oom-{pid}-{run}").as_str()
        },
    );
}

#[test]
fn connect_storm_to_a_closed_port_is_the_top_finding() {
    if !require_root("connect_storm_to_a_closed_port_is_the_top_finding") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let agent = start();
    let ports: Arc<Mutex<Vec<u16>>> = Arc::default();
    let p2 = ports.clone();
    exercise(
        "connect storm",
        &agent,
        move |_| {
            let port = free_port();
            p2.lock().unwrap().push(port);
            let stop = Arc::new(AtomicBool::new(false));
            let s2 = stop.clone();
            let t = std::thread::spawn(move || {
                let addr: SocketAddr = ([127, 0, 0, 1], port).into();
                while !s2.load(Ordering::Relaxed) {
                    let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(200));
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
            Box::new(move || {
                stop.store(true, Ordering::Relaxed);
                let _ = t.join();
            })
        },
        |run, f| {
            let port = ports.lock().unwrap()[run].to_string();
            f["kind"] == "connect_errors" && f["subject"]["peer_port"] == port.as_str()
        },
    );
}

/// A sink: reads what a client sends and answers 4 KiB per read.
const SINK: &str = r#"
import socket, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000))
s.listen(128)
def h(c):
    try:
        while True:
            d = c.recv(16384)
            if not d:
                break
            c.sendall(b"x" * 4096)
    except Exception:
        pass
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=h, args=(c,), daemon=True).start()
"#;

/// A network namespace with a veth pair to it and a TCP sink server inside.
struct NetNs {
    name: String,
    host_if: String,
    server: Option<Child>,
}

impl NetNs {
    fn new(tag: &str, octet: u8) -> NetNs {
        let name = format!("nstest-{tag}");
        let host_if = format!("nsv{}h", octet);
        let run = |args: &[&str]| {
            let o = Command::new("ip").args(args).output().unwrap();
            assert!(
                o.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        let peer_if = format!("nsv{}p", octet);
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        run(&["netns", "add", &name]);
        run(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
        ]);
        run(&["link", "set", &peer_if, "netns", &name]);
        run(&[
            "addr",
            "add",
            &format!("10.231.{octet}.1/24"),
            "dev",
            &host_if,
        ]);
        run(&["link", "set", &host_if, "up"]);
        run(&[
            "netns",
            "exec",
            &name,
            "ip",
            "addr",
            "add",
            &format!("10.231.{octet}.2/24"),
            "dev",
            &peer_if,
        ]);
        run(&["netns", "exec", &name, "ip", "link", "set", &peer_if, "up"]);
        run(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        let server = Command::new("ip")
            .args(["netns", "exec", &name, "python3", "-c"])
            .arg(SINK)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        NetNs {
            name,
            host_if,
            server: Some(server),
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            kill(s);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// Keeps connecting to `addr`, sending 64 KiB and reading the answers, until `stop`.
fn traffic(addr: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let buf = vec![7u8; 64 << 10];
        let mut rb = vec![0u8; 64 << 10];
        while !stop.load(Ordering::Relaxed) {
            if let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = c.set_write_timeout(Some(Duration::from_secs(2)));
                if c.write_all(&buf).is_ok() {
                    let _ = c.read(&mut rb);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

#[test]
fn packet_loss_on_a_veth_pair_is_the_top_finding() {
    if !require_root("packet_loss_on_a_veth_pair_is_the_top_finding") {
        return;
    }
    for tool in ["ip", "iptables", "python3"] {
        if require_tool(
            "packet_loss_on_a_veth_pair_is_the_top_finding",
            tool,
            &["--version"],
        )
        .is_none()
            && tool != "ip"
        {
            return;
        }
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let octet = (std::process::id() % 200) as u8 + 20;
    let ns = NetNs::new(&format!("loss{}", std::process::id()), octet);
    let peer = format!("10.231.{octet}.2");
    let addr: SocketAddr = format!("{peer}:7000").parse().unwrap();
    // The server is up once a connect succeeds.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the sink in {} did not start",
            ns.name
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let agent = start();
    // Steady traffic in every window, the loss only during the fault.
    let stop = Arc::new(AtomicBool::new(false));
    let t = traffic(addr, stop.clone());
    let rule = [
        "OUTPUT",
        "-d",
        &peer,
        "-m",
        "statistic",
        "--mode",
        "random",
        "--probability",
        "0.2",
        "-j",
        "DROP",
    ];
    let rule: Vec<String> = rule.iter().map(|s| s.to_string()).collect();
    exercise(
        "packet loss",
        &agent,
        |_| {
            let o = Command::new("iptables")
                .arg("-I")
                .args(&rule)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "iptables: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let rule = rule.clone();
            Box::new(move || {
                let _ = Command::new("iptables").arg("-D").args(&rule).output();
            })
        },
        |_, f| {
            f["subject"]["peer"] == peer.as_str()
                && matches!(
                    f["kind"].as_str(),
                    Some("retransmits" | "connect_p99" | "rtt_p99")
                )
        },
    );
    stop.store(true, Ordering::Relaxed);
    let _ = t.join();
    drop(ns);
    let _ = TcpListener::bind("127.0.0.1:0");
}
