//! Test harness: network namespaces + veth pairs the test creates and removes, iptables in
//! the namespace, an NFQUEUE delayer, a cgroup made by the test, and probe start-up.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nodescope_ebpf::net::PeerStats;
use nodescope_model::selfmetrics::SelfMetrics;
use nodescope_model::{Emitter, Signal, StatusRegistry};
use nodescope_netprobe::aggregate::{RowKey, Rows};
use nodescope_netprobe::{NetProbe, NetProbeContext, NetworkConfig};
use tokio::sync::mpsc;

/// The probes see every socket on the host, and timing assertions need the CPU: run the
/// privileged tests one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|p| p.into_inner())
}

/// Root and the tools the test needs; false means skipped.
pub fn require(test: &str, tools: &[&str]) -> bool {
    if !nodescope_testsupport::require_root(test) {
        return false;
    }
    for t in tools {
        if nodescope_testsupport::require_tool(test, t, &[&format!("/usr/sbin/{t}")]).is_none() {
            return false;
        }
    }
    true
}

pub fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A network namespace with a veth pair: host side `host_ip`, namespace side `ns_ip`.
/// Removed (namespace, veth, its iptables rules with it) on drop, even on panic.
pub struct NetNs {
    pub name: String,
    pub host_if: String,
    pub host_ip: Ipv4Addr,
    pub ns_ip: Ipv4Addr,
}

impl NetNs {
    pub fn new() -> NetNs {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Prefixed `nsnet`: other engineers' tests on this machine use other prefixes.
        let name = format!("nsnet{}_{n}", pid % 100_000);
        let host_if = format!("nsnet{}v{n}", pid % 10_000);
        let peer_if = format!("{host_if}p");
        let b = (pid % 200) as u8 + 20;
        let c = (n as u8).wrapping_mul(4);
        let host_ip = Ipv4Addr::new(10, b, 77, c + 1);
        let ns_ip = Ipv4Addr::new(10, b, 77, c + 2);
        let ns = NetNs {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip,
            ns_ip,
        };
        run(&["ip", "netns", "add", &name]);
        run(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
        ]);
        run(&["ip", "link", "set", &peer_if, "netns", &name]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &host_if,
        ]);
        run(&["ip", "link", "set", &host_if, "up"]);
        ns.exec(&["ip", "addr", "add", &format!("{ns_ip}/30"), "dev", &peer_if]);
        ns.exec(&["ip", "link", "set", &peer_if, "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        run(&v);
    }

    pub fn iptables(&self, rule: &str) {
        let mut v = vec!["iptables"];
        v.extend(rule.split_whitespace());
        self.exec(&v);
    }

    /// Runs `f` on a thread that entered the namespace; sockets it creates live there.
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter_netns(&path);
            f()
        })
        .join()
        .expect("netns thread panicked")
    }

    /// Spawns a long-running thread inside the namespace.
    pub fn spawn_in(&self, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter_netns(&path);
            f()
        })
    }
}

fn enter_netns(path: &str) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    use std::os::fd::AsRawFd;
    // SAFETY: setns on a valid namespace fd; affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
    }
}

/// An echo server listening in the namespace (accept loop on its own thread).
pub struct EchoServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(ns: &NetNs, port: u16) -> EchoServer {
        let ip = ns.ns_ip;
        let listener = ns.run_in(move || TcpListener::bind((ip, port)).expect("bind in netns"));
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        std::thread::spawn(move || {
                            let _ = c.set_nonblocking(false);
                            let mut buf = [0u8; 65536];
                            while let Ok(n) = c.read(&mut buf) {
                                if n == 0 || c.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        EchoServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// NFQUEUE delayer: holds every queued packet `delay` then accepts it (FIFO). Runs in
/// the namespace (the netlink socket must be there).
pub struct Delayer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Delayer {
    pub fn start(ns: &NetNs, queue: u16, delay: Duration) -> Delayer {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns.spawn_in(move || {
            let mut q = nfq::Queue::open().expect("nfqueue open");
            q.bind(queue).expect("nfqueue bind");
            q.set_nonblocking(true);
            ready_tx.send(()).unwrap();
            let mut held: std::collections::VecDeque<(Instant, nfq::Message)> = Default::default();
            while !s2.load(Ordering::Relaxed) {
                while let Ok(m) = q.recv() {
                    held.push_back((Instant::now() + delay, m));
                }
                while held.front().is_some_and(|(t, _)| *t <= Instant::now()) {
                    let (_, mut m) = held.pop_front().unwrap();
                    m.set_verdict(nfq::Verdict::Accept);
                    let _ = q.verdict(m);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            for (_, mut m) in held {
                m.set_verdict(nfq::Verdict::Accept);
                let _ = q.verdict(m);
            }
            let _ = q.unbind(queue);
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("delayer did not start");
        Delayer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A cgroup v2 directory made by the test; removed on drop.
pub struct TestCgroup {
    pub dir: PathBuf,
    /// Path relative to the cgroup2 mount (`/nsnet-test-...`).
    pub rel: String,
}

impl TestCgroup {
    pub fn new(root: &std::path::Path) -> TestCgroup {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let rel = format!("/nsnet-test-{}-{n}", std::process::id());
        let dir = root.join(rel.trim_start_matches('/'));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        TestCgroup { dir, rel }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}

pub struct Harness {
    pub probe: NetProbe,
    pub events: mpsc::Receiver<Signal>,
    pub status: StatusRegistry,
    pub self_metrics: SelfMetrics,
}

pub fn start_probe(cfg: NetworkConfig) -> Harness {
    let (emitter, events): (Emitter, _) = Emitter::for_test(1024);
    let status = StatusRegistry::default();
    let self_metrics = SelfMetrics::new();
    let probe = cfg.build(NetProbeContext {
        emitter,
        status: status.clone(),
        self_metrics: self_metrics.clone(),
        pods: None,
        cgroup_root: PathBuf::new(),
    });
    Harness {
        probe,
        events,
        status,
        self_metrics,
    }
}

impl Harness {
    pub fn rows(&self) -> Rows {
        self.probe.snapshot().expect("snapshot")
    }

    /// Rows whose peer is `addr` (and `port`, when given).
    pub fn rows_for(&self, addr: &str, port: Option<u16>) -> Vec<(RowKey, PeerStats)> {
        self.rows()
            .into_iter()
            .filter(|(k, _)| {
                k.peer_address == addr && port.is_none_or(|p| k.peer_port == p.to_string())
            })
            .collect()
    }

    pub fn self_counter(&self, name: &str, label: Option<(&str, &str)>) -> f64 {
        for f in self.self_metrics.collect() {
            if f.name != name {
                continue;
            }
            for p in &f.points {
                let ok = label.is_none_or(|(k, v)| p.labels.iter().any(|(a, b)| a == k && b == v));
                if ok {
                    if let nodescope_model::Value::Number(n) = p.value {
                        return n;
                    }
                }
            }
        }
        panic!("self metric {name} {label:?} not found");
    }

    /// Log records received so far.
    pub fn drain_logs(&mut self) -> Vec<nodescope_model::LogRecord> {
        let mut out = Vec::new();
        while let Ok(s) = self.events.try_recv() {
            if let Signal::Logs(l) = s {
                out.extend(l.iter().cloned());
            }
        }
        out
    }
}

/// Connects and exchanges `rounds` small messages `gap` apart.
pub fn ping_pong(addr: SocketAddr, rounds: usize, gap: Duration) -> Duration {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    let connect = t.elapsed();
    exchange(&mut s, rounds, gap);
    connect
}

/// Sends "ping" and reads the echo `rounds` times, sleeping `gap` after each.
pub fn exchange(s: &mut TcpStream, rounds: usize, gap: Duration) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 4];
    for _ in 0..rounds {
        s.write_all(b"ping").unwrap();
        s.read_exact(&mut buf).unwrap();
        std::thread::sleep(gap);
    }
}

pub fn connect_bucket_index(stats: &PeerStats) -> Vec<usize> {
    stats
        .connect_hist
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(i, _)| i)
        .collect()
}
