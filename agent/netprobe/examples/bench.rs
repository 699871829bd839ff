//! Probes on vs off, in one run, alternating: a loopback connect/accept loop, a bulk
//! loopback TCP transfer and a UDP DNS query loop against a local server. Three sides
//! per round, in rotating order: **off** (nothing loaded), **tcp** (every network probe
//! but DNS) and **all** (every network probe, DNS included). Reports the ratio of medians
//! to off, the median of per-round ratios, the kernel CPU time of each BPF program per
//! workload (BPF run-time stats, after the rounds), and this process's RSS with every
//! probe on.
//!
//! Run as root:
//!   cargo run --release -p nodescope-netprobe --example bench -- [rounds] [connects] [bulk_mib] [dns_queries]
//! (defaults 40 rounds, 5000 connects, 1024 MiB, 5000 queries). Pin it to one CPU with
//! `taskset -c 0` for the single-CPU regime. `BENCH_DNS_SERVER=dnsmasq` runs the DNS loop
//! against Debian's dnsmasq instead of a responder thread. See docs/bench/network.md.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodescope_model::selfmetrics::SelfMetrics;
use nodescope_model::{Emitter, StatusRegistry};
use nodescope_netprobe::{NetProbe, NetProbeContext, NetworkConfig, ProbesConfig};

fn connect_loop(n: usize) -> Duration {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    // One connection at a time: the server accepts and closes, the client waits for the
    // EOF before the next connect (no accept-queue overflow, no SYN retries).
    let srv = std::thread::spawn(move || {
        for _ in 0..n {
            let (s, _) = l.accept().unwrap();
            drop(s);
        }
    });
    let t = Instant::now();
    let mut b = [0u8; 1];
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.read(&mut b);
    }
    srv.join().unwrap();
    t.elapsed()
}

/// Returns MiB/s.
fn bulk(mib: usize) -> f64 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let srv = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0usize;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        total
    });
    let buf = vec![7u8; 1 << 20];
    let mut c = TcpStream::connect(addr).unwrap();
    let t = Instant::now();
    for _ in 0..mib {
        c.write_all(&buf).unwrap();
    }
    drop(c);
    let total = srv.join().unwrap();
    let el = t.elapsed();
    assert_eq!(total, mib << 20);
    mib as f64 / el.as_secs_f64()
}

/// The DNS server of the query loop. By default a thread of this process on a loopback
/// UDP port answering every query at once: the question echoed back as a NOERROR answer
/// without records (flags QR, RD, RA), the cheapest possible server, so the probe's share
/// is the largest it can be. With `BENCH_DNS_SERVER=dnsmasq`, Debian's dnsmasq on a
/// loopback port answering `www.example.com A` from its configuration (an A record, no
/// upstream, no cache, no logging): a real server's own work per query. Its CPU time
/// (`/proc/<pid>/schedstat`) is added to the loop's.
enum DnsServer {
    Thread {
        port: u16,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
    Dnsmasq {
        port: u16,
        child: std::process::Child,
    },
}

impl DnsServer {
    fn start() -> DnsServer {
        match std::env::var("BENCH_DNS_SERVER").as_deref() {
            Ok("dnsmasq") => Self::dnsmasq(),
            Ok("") | Err(_) => Self::thread(),
            Ok(other) => panic!("BENCH_DNS_SERVER={other:?}: expected dnsmasq or nothing"),
        }
    }

    fn dnsmasq() -> DnsServer {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--cache-size=0",
                "--user=root",
                "--pid-file",
                "--address=/www.example.com/192.0.2.1",
            ])
            .arg(format!("--port={port}"))
            .spawn()
            .expect("dnsmasq (Debian package dnsmasq-base, scripts/install-test-deps.sh)");
        let server = DnsServer::Dnsmasq { port, child };
        // Ready once it answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dns_answers(port) {
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not answer on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn thread() -> DnsServer {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let port = sock.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s2.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if n >= 12 {
                    buf[2] = 0x81;
                    buf[3] = 0x80;
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        DnsServer::Thread {
            port,
            stop,
            thread: Some(thread),
        }
    }

    fn port(&self) -> u16 {
        match self {
            DnsServer::Thread { port, .. } | DnsServer::Dnsmasq { port, .. } => *port,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            DnsServer::Thread { .. } => "a responder thread that answers at once (no records)",
            DnsServer::Dnsmasq { .. } => "dnsmasq (an A record from its configuration, no cache)",
        }
    }

    /// CPU seconds the server spent outside this process (0 for the thread: it is
    /// counted in ours).
    fn outside_cpu_secs(&self) -> f64 {
        match self {
            DnsServer::Thread { .. } => 0.0,
            DnsServer::Dnsmasq { child, .. } => {
                std::fs::read_to_string(format!("/proc/{}/schedstat", child.id()))
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
                    .expect("dnsmasq's schedstat")
                    / 1e9
            }
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        match self {
            DnsServer::Thread { stop, thread, .. } => {
                stop.store(true, Ordering::Relaxed);
                if let Some(t) = thread.take() {
                    let _ = t.join();
                }
            }
            DnsServer::Dnsmasq { child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// One query with a short timeout: is the server up?
fn dns_answers(port: u16) -> bool {
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let q = query();
    let mut buf = [0u8; 512];
    c.send_to(&q, ("127.0.0.1", port)).is_ok() && c.recv(&mut buf).is_ok()
}

/// `www.example.com A`, id 0, RD.
fn query() -> Vec<u8> {
    let mut q: Vec<u8> = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in ["www", "example", "com"] {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// `n` sequential queries (`www.example.com` A, a new id each) over one connected UDP
/// socket, each waiting for its answer.
fn dns_loop(port: u16, n: usize) -> Duration {
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut q = query();
    let mut buf = [0u8; 512];
    let t = Instant::now();
    for i in 0..n {
        q[..2].copy_from_slice(&(i as u16).to_be_bytes());
        c.send(&q).unwrap();
        c.recv(&mut buf).expect("answer");
    }
    t.elapsed()
}

/// User + system CPU time of the whole process (all threads), seconds.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage writes into a valid, zeroed rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Off,
    Tcp,
    All,
}

const SIDES: [Side; 3] = [Side::Off, Side::Tcp, Side::All];

fn probe_on(
    rt: &tokio::runtime::Runtime,
    side: Side,
    dns_port: u16,
) -> (NetProbe, tokio_util::sync::CancellationToken) {
    let (emitter, rx) = Emitter::for_test(1024);
    // Drain events like the pipeline would.
    rt.spawn(async move {
        let mut rx = rx;
        while rx.recv().await.is_some() {}
    });
    let mut cfg = NetworkConfig::default();
    cfg.dns.ports = vec![dns_port];
    cfg.probes = ProbesConfig {
        dns: side == Side::All,
        ..ProbesConfig::default()
    };
    let p = cfg.build(NetProbeContext {
        emitter,
        status: StatusRegistry::default(),
        self_metrics: SelfMetrics::new(),
        pods: None,
        cgroup_root: PathBuf::new(),
    });
    assert!(
        p.health().iter().all(|h| h.up || !h.enabled),
        "probes not up: {:?}",
        p.health()
    );
    let tok = tokio_util::sync::CancellationToken::new();
    let _guard = rt.enter();
    p.spawn(tok.clone()).expect("event reader");
    (p, tok)
}

/// (name, run_time_ns, run_count) of our programs currently loaded.
fn prog_stats() -> Vec<(String, u64, u64)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| {
            let name = p.name_as_str()?.to_string();
            name.starts_with("ns_")
                .then(|| (name, p.run_time().as_nanos() as u64, p.run_count()))
        })
        .collect()
}

/// Per side: wall and CPU of each workload, every round.
#[derive(Default)]
struct Samples {
    connect_wall: Vec<f64>,
    connect_cpu: Vec<f64>,
    bulk_tput: Vec<f64>,
    bulk_cpu: Vec<f64>,
    dns_wall: Vec<f64>,
    dns_cpu: Vec<f64>,
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rounds = args.first().copied().unwrap_or(40).max(10);
    let connects = args.get(1).copied().unwrap_or(5000);
    let mib = args.get(2).copied().unwrap_or(1024);
    let queries = args.get(3).copied().unwrap_or(5000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // With kernel.bpf_stats_enabled=1 (set by anyone, machine-wide) every BPF program run
    // also pays two sched_clock() reads; on a KVM guest that is kvm-clock, which can
    // cost more than the programs themselves. Say so: the ratios are then inflated.
    let stats_sysctl = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    println!("kernel.bpf_stats_enabled during the rounds: {stats_sysctl}");
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| {
            // SAFETY: sched_getaffinity fills a zeroed cpu_set_t of the size given.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let ok = unsafe {
                libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set)
            } == 0;
            // SAFETY: c < CPU_SETSIZE.
            ok && unsafe { libc::CPU_ISSET(c, &set) }
        })
        .collect();
    println!("CPUs this process may run on: {cpus:?}");
    // Other load on this 2-vCPU machine changes the baseline cost of a connection (the
    // vCPUs share caches and may be hyperthread siblings): say what it was.
    let loadavg = || {
        std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".into())
    };
    println!("load average before the rounds: {}", loadavg());
    let dns = DnsServer::start();
    println!("DNS server: {}", dns.name());
    // Warm-up (page cache, TCP memory, code paths).
    connect_loop(connects / 4);
    bulk(mib / 4);
    dns_loop(dns.port(), queries / 4);
    let rss_off = rss_kib();

    let mut s: [Samples; 3] = Default::default();
    let mut rss_on = 0;
    for r in 0..rounds {
        for k in 0..SIDES.len() {
            // Rotate which side goes first to cancel drift.
            let side = SIDES[(r + k) % SIDES.len()];
            let idx = SIDES.iter().position(|x| *x == side).unwrap();
            let probe = (side != Side::Off).then(|| probe_on(&rt, side, dns.port()));
            // Same short warm-up in every condition (caches after loading the objects).
            connect_loop(200);
            dns_loop(dns.port(), 200);
            let t0 = cpu_secs();
            let c = connect_loop(connects).as_secs_f64();
            let t1 = cpu_secs();
            let b = bulk(mib);
            let t2 = cpu_secs();
            let o2 = dns.outside_cpu_secs();
            let d = dns_loop(dns.port(), queries).as_secs_f64();
            let t3 = cpu_secs();
            let o3 = dns.outside_cpu_secs();
            let x = &mut s[idx];
            x.connect_wall.push(c);
            x.connect_cpu.push(t1 - t0);
            x.bulk_tput.push(b);
            x.bulk_cpu.push(t2 - t1);
            x.dns_wall.push(d);
            x.dns_cpu.push(t3 - t2 + (o3 - o2));
            if side == Side::All {
                rss_on = rss_on.max(rss_kib());
            }
            if let Some((p, tok)) = &probe {
                // Exercise the collector like a scrape would.
                let _ = p.collector().collect();
                tok.cancel();
            }
            drop(probe);
        }
        let last = |v: &Vec<f64>| *v.last().unwrap();
        eprintln!(
            "round {r}: connect off {:.3}s tcp {:.3}s all {:.3}s | bulk off {:.0} tcp {:.0} all {:.0} MiB/s | dns off {:.3}s all {:.3}s",
            last(&s[0].connect_wall),
            last(&s[1].connect_wall),
            last(&s[2].connect_wall),
            last(&s[0].bulk_tput),
            last(&s[1].bulk_tput),
            last(&s[2].bulk_tput),
            last(&s[0].dns_wall),
            last(&s[2].dns_wall),
        );
    }
    println!("load average after the rounds: {}", loadavg());
    println!(
        "rounds: {rounds} (sides off / tcp / all, rotating), per round: {connects} connects, {mib} MiB bulk, {queries} DNS queries"
    );
    let ratio = |on: &[f64], off: &[f64]| median(on) / median(off);
    let paired = |on: &[f64], off: &[f64]| {
        let r: Vec<f64> = on.iter().zip(off).map(|(a, b)| a / b).collect();
        median(&r)
    };
    let line = |what: &str,
                off: &[f64],
                tcp: &[f64],
                all: &[f64],
                unit: &str,
                higher_is_worse: bool| {
        let (rt, ra) = (ratio(tcp, off), ratio(all, off));
        let pct = |x: f64| {
            if higher_is_worse {
                (x - 1.0) * 100.0
            } else {
                (1.0 - x) * 100.0
            }
        };
        println!(
            "{what}: median off {:.4} {unit}, tcp {:.4}, all {:.4} -> tcp/off {rt:.4} ({:+.2}% worse), all/off {ra:.4} ({:+.2}% worse); per-round ratio medians tcp {:.4}, all {:.4}",
            median(off),
            median(tcp),
            median(all),
            pct(rt),
            pct(ra),
            paired(tcp, off),
            paired(all, off),
        );
    };
    let [o, t, a] = &s;
    line(
        "connect loop wall",
        &o.connect_wall,
        &t.connect_wall,
        &a.connect_wall,
        "s",
        true,
    );
    line(
        "connect loop CPU",
        &o.connect_cpu,
        &t.connect_cpu,
        &a.connect_cpu,
        "s",
        true,
    );
    line(
        "bulk throughput",
        &o.bulk_tput,
        &t.bulk_tput,
        &a.bulk_tput,
        "MiB/s",
        false,
    );
    line("bulk CPU", &o.bulk_cpu, &t.bulk_cpu, &a.bulk_cpu, "s", true);
    line(
        "DNS query loop wall",
        &o.dns_wall,
        &t.dns_wall,
        &a.dns_wall,
        "s",
        true,
    );
    line(
        "DNS query loop CPU",
        &o.dns_cpu,
        &t.dns_cpu,
        &a.dns_cpu,
        "s",
        true,
    );
    println!(
        "RSS of this process: {} KiB before probes, max {} KiB with every probe on",
        rss_off, rss_on
    );

    // CPU cost of each program per workload, with BPF run-time stats enabled (only now:
    // the stats add two clock reads per program run, which must not weigh on the rounds).
    let stats_fd = aya::sys::enable_stats(aya::sys::Stats::RunTime);
    let (probe, tok) = probe_on(&rt, Side::All, dns.port());
    connect_loop(200);
    let s0 = prog_stats();
    let t = Instant::now();
    let cl = connect_loop(connects);
    let wall_c = t.elapsed().as_secs_f64();
    let s1 = prog_stats();
    let t = Instant::now();
    let tput = bulk(mib);
    let wall_b = t.elapsed().as_secs_f64();
    let s2 = prog_stats();
    let t = Instant::now();
    let dl = dns_loop(dns.port(), queries);
    let wall_d = t.elapsed().as_secs_f64();
    let s3 = prog_stats();
    let tc = Instant::now();
    let fams = probe.collector().collect().expect("collect");
    let collect_ms = tc.elapsed().as_secs_f64() * 1e3;
    let points: usize = fams.iter().map(|f| f.points.len()).sum();
    tok.cancel();
    drop(probe);
    println!("collect(): {collect_ms:.2} ms for {points} points");
    match stats_fd {
        Ok(_fd) => {
            println!(
                "BPF program cost during {connects} connects ({:.3} s, wall {wall_c:.3} s):",
                cl.as_secs_f64()
            );
            print_delta(&s0, &s1, wall_c, Some((connects, "connection")));
            println!(
                "BPF program cost during {mib} MiB bulk ({tput:.0} MiB/s, wall {wall_b:.3} s):"
            );
            print_delta(&s1, &s2, wall_b, None);
            println!(
                "BPF program cost during {queries} DNS queries ({:.3} s, wall {wall_d:.3} s):",
                dl.as_secs_f64()
            );
            print_delta(&s2, &s3, wall_d, Some((queries, "query")));
        }
        Err(e) => println!("BPF run-time stats unavailable: {e}"),
    }
    drop(dns);
}

/// Prints the per-program run-time deltas between two `prog_stats()` snapshots. The
/// programs are node-wide: other processes' traffic is included.
fn print_delta(
    before: &[(String, u64, u64)],
    after: &[(String, u64, u64)],
    wall: f64,
    per: Option<(usize, &str)>,
) {
    let mut total = 0u64;
    for (name, rt_ns, cnt) in after {
        let (b_rt, b_cnt) = before
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, a, b)| (*a, *b))
            .unwrap_or((0, 0));
        let d_rt = rt_ns.saturating_sub(b_rt);
        let d_cnt = cnt.saturating_sub(b_cnt);
        if d_cnt == 0 {
            continue;
        }
        total += d_rt;
        println!(
            "  {name:<16} runs {d_cnt:>9}  total {:>8.3} ms  {:>6.0} ns/run  {:.3}% of one CPU",
            d_rt as f64 / 1e6,
            d_rt as f64 / d_cnt as f64,
            d_rt as f64 / 1e9 / wall * 100.0
        );
    }
    if let Some((n, unit)) = per.filter(|(n, _)| *n > 0) {
        println!(
            "  all programs: {:.0} ns of BPF run time per {unit}",
            total as f64 / n as f64
        );
    }
}
