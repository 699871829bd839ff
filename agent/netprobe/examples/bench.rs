//! Probes on vs off, in one run, alternating: a loopback connect/accept loop and a bulk
//! loopback TCP transfer. Reports the ratio of medians, the kernel CPU time of each BPF
//! program under load (BPF run-time stats), and this process's RSS with the probes on.
//!
//! Run as root:
//!   cargo run --release -p nodescope-netprobe --example bench -- [rounds] [connects] [bulk_mib]
//! (defaults 40 rounds, 5000 connects, 1024 MiB). See docs/bench/network.md.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nodescope_model::selfmetrics::SelfMetrics;
use nodescope_model::{Emitter, StatusRegistry};
use nodescope_netprobe::{NetProbe, NetProbeContext, NetworkConfig};

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

/// User + system CPU time of the whole process (all threads), seconds.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage writes into a valid, zeroed rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn median(v: &mut [f64]) -> f64 {
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

fn probe_on(rt: &tokio::runtime::Runtime) -> (NetProbe, tokio_util::sync::CancellationToken) {
    let (emitter, rx) = Emitter::for_test(1024);
    // Drain events like the pipeline would.
    rt.spawn(async move {
        let mut rx = rx;
        while rx.recv().await.is_some() {}
    });
    let p = NetworkConfig::default().build(NetProbeContext {
        emitter,
        status: StatusRegistry::default(),
        self_metrics: SelfMetrics::new(),
        pods: None,
        cgroup_root: PathBuf::new(),
    });
    assert!(
        p.health().iter().all(|h| h.up),
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

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rounds = args.first().copied().unwrap_or(40).max(10);
    let connects = args.get(1).copied().unwrap_or(5000);
    let mib = args.get(2).copied().unwrap_or(1024);
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
    // Other load on this 2-vCPU machine changes the baseline cost of a connection (the
    // vCPUs share caches and may be hyperthread siblings): say what it was.
    let loadavg = || {
        std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".into())
    };
    println!("load average before the rounds: {}", loadavg());
    // Warm-up (page cache, TCP memory, code paths).
    connect_loop(connects / 4);
    bulk(mib / 4);
    let rss_off = rss_kib();

    let mut c_on = Vec::new();
    let mut c_off = Vec::new();
    let mut b_on = Vec::new();
    let mut b_off = Vec::new();
    let mut rss_on = 0;
    let (mut cc_on, mut cc_off, mut bc_on, mut bc_off) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        // Alternate which side goes first to cancel drift.
        let order = if r % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for on in order {
            let probe = on.then(|| probe_on(&rt));
            // Same short warm-up in both conditions (caches after loading the object).
            connect_loop(200);
            let t0 = cpu_secs();
            let c = connect_loop(connects).as_secs_f64();
            let t1 = cpu_secs();
            let b = bulk(mib);
            let t2 = cpu_secs();
            let (cc, bc) = (t1 - t0, t2 - t1);
            if on {
                cc_on.push(cc);
                bc_on.push(bc);
                c_on.push(c);
                b_on.push(b);
                rss_on = rss_on.max(rss_kib());
                if let Some((p, tok)) = &probe {
                    // Exercise the collector like a scrape would.
                    let _ = p.collector().collect();
                    tok.cancel();
                }
            } else {
                cc_off.push(cc);
                bc_off.push(bc);
                c_off.push(c);
                b_off.push(b);
            }
            drop(probe);
        }
        eprintln!(
            "round {r}: connect on {:.3}s off {:.3}s | bulk on {:.0} off {:.0} MiB/s",
            c_on[r], c_off[r], b_on[r], b_off[r]
        );
    }

    // CPU cost of each program per phase, with BPF run-time stats enabled (only now: the
    // stats add two clock reads per program run, which must not weigh on the rounds).
    let stats_fd = aya::sys::enable_stats(aya::sys::Stats::RunTime);
    let (probe, tok) = probe_on(&rt);
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
    let tc = Instant::now();
    let fams = probe.collector().collect().expect("collect");
    let collect_ms = tc.elapsed().as_secs_f64() * 1e3;
    let points: usize = fams.iter().map(|f| f.points.len()).sum();
    tok.cancel();
    drop(probe);

    // Secondary statistic: the median of the per-round on/off ratios (each round's pair
    // ran back to back, so slow drifts of the machine cancel).
    let paired = |on: &[f64], off: &[f64]| {
        let mut r: Vec<f64> = on.iter().zip(off).map(|(a, b)| a / b).collect();
        median(&mut r)
    };
    let (pc, pb) = (paired(&c_on, &c_off), paired(&b_on, &b_off));
    let (pcc, pbc) = (paired(&cc_on, &cc_off), paired(&bc_on, &bc_off));
    println!("load average after the rounds: {}", loadavg());
    let mc_on = median(&mut c_on);
    let mc_off = median(&mut c_off);
    let mb_on = median(&mut b_on);
    let mb_off = median(&mut b_off);
    println!(
        "rounds: {rounds} (alternating on/off), connects/round: {connects}, bulk/round: {mib} MiB"
    );
    println!(
        "connect loop: median off {:.4} s, on {:.4} s -> on/off time ratio {:.4} ({:+.2}% slower)",
        mc_off,
        mc_on,
        mc_on / mc_off,
        (mc_on / mc_off - 1.0) * 100.0
    );
    println!(
        "bulk transfer: median off {:.0} MiB/s, on {:.0} MiB/s -> on/off throughput ratio {:.4} ({:+.2}%)",
        mb_off,
        mb_on,
        mb_on / mb_off,
        (mb_on / mb_off - 1.0) * 100.0
    );
    let (mcc_on, mcc_off) = (median(&mut cc_on), median(&mut cc_off));
    let (mbc_on, mbc_off) = (median(&mut bc_on), median(&mut bc_off));
    println!(
        "connect loop CPU (user+sys, all threads): median off {:.4} s, on {:.4} s -> ratio {:.4} ({:+.2}%)",
        mcc_off,
        mcc_on,
        mcc_on / mcc_off,
        (mcc_on / mcc_off - 1.0) * 100.0
    );
    println!(
        "bulk CPU per {mib} MiB (user+sys, all threads): median off {:.4} s, on {:.4} s -> ratio {:.4} ({:+.2}%)",
        mbc_off,
        mbc_on,
        mbc_on / mbc_off,
        (mbc_on / mbc_off - 1.0) * 100.0
    );
    println!(
        "median of per-round on/off ratios: connect time {pc:.4}, connect CPU {pcc:.4}, \
         bulk throughput {pb:.4}, bulk CPU {pbc:.4}"
    );
    println!(
        "RSS of this process: {} KiB before probes, max {} KiB with probes on",
        rss_off, rss_on
    );
    println!("collect(): {collect_ms:.2} ms for {points} points");
    match stats_fd {
        Ok(_fd) => {
            println!(
                "BPF program cost during {connects} connects ({:.3} s, wall {wall_c:.3} s):",
                cl.as_secs_f64()
            );
            print_delta(&s0, &s1, wall_c, Some(connects));
            println!(
                "BPF program cost during {mib} MiB bulk ({tput:.0} MiB/s, wall {wall_b:.3} s):"
            );
            print_delta(&s1, &s2, wall_b, None);
        }
        Err(e) => println!("BPF run-time stats unavailable: {e}"),
    }
}

/// Prints the per-program run-time deltas between two `prog_stats()` snapshots. The
/// programs are node-wide: other processes' TCP traffic is included.
fn print_delta(
    before: &[(String, u64, u64)],
    after: &[(String, u64, u64)],
    wall: f64,
    connects: Option<usize>,
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
    if let Some(n) = connects.filter(|n| *n > 0) {
        println!(
            "  all programs: {:.0} ns of BPF run time per connection",
            total as f64 / n as f64
        );
    }
}
