//! Loki exporter benchmarks.
//!
//! Throughput, per core (encode + snappy + HTTP to a local counting sink):
//!   `cargo run --release -p nodescope-exporter-loki --example loki_bench -- throughput [rounds] [lines]`
//! The exporter runs on a current-thread runtime on the main thread; lines per second of
//! that thread's CPU time (CLOCK_THREAD_CPUTIME_ID) is the per-core rate.
//!
//! RSS during an outage with the WAL on:
//!   `cargo run --release -p nodescope-exporter-loki --example loki_bench -- outage [secs] [lines_per_sec] [wal_dir]`
//! The backend port is closed for `secs`; the agent keeps producing; VmRSS is sampled
//! every second. Then the backend comes up and the backlog drain is timed and checked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use nodescope_delivery::{ExporterContext, FsyncPolicy};
use nodescope_exporter_loki::LokiConfig;
use nodescope_model::{ExporterQueue, LogRecord, Resource, Severity, Signal, Value};

static RECEIVED_BYTES: AtomicU64 = AtomicU64::new(0);

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn records(n: usize, start: u64) -> Vec<LogRecord> {
    let now = SystemTime::now();
    (0..n as u64)
        .map(|i| {
            let seq = start + i;
            LogRecord {
                timestamp: now,
                severity: if seq.is_multiple_of(10) { Severity::Error } else { Severity::Warn },
                kind: if seq.is_multiple_of(3) { "tcp_reset".into() } else { "tcp_connect_failed".into() },
                body: format!(
                    "seq={seq} connect from pod web-{} to 10.0.{}.{}:443 failed: connection refused after 1003 ms (SYN retries 1)",
                    seq % 50,
                    seq % 200,
                    seq % 250
                ),
                labels: vec![("workload_kind".into(), "container".into())],
                attributes: vec![
                    ("pid".into(), (1000 + seq % 5000).to_string()),
                    ("comm".into(), "envoy".into()),
                    ("peer".into(), format!("10.0.{}.{}:443", seq % 200, seq % 250)),
                ],
            }
        })
        .collect()
}

fn counter(ctx: &ExporterContext, name: &str, reason: Option<&str>) -> f64 {
    ctx.self_metrics
        .collect()
        .into_iter()
        .find(|f| f.name == name)
        .and_then(|f| {
            f.points.into_iter().find(|p| {
                reason.is_none_or(|r| p.labels.iter().any(|(k, v)| k == "reason" && v == r))
            })
        })
        .map_or(0.0, |p| match p.value {
            Value::Number(v) => v,
            _ => 0.0,
        })
}

fn start_sink(port: u16) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/loki/api/v1/push",
                axum::routing::post(|body: axum::body::Bytes| async move {
                    RECEIVED_BYTES.fetch_add(body.len() as u64, Ordering::Relaxed);
                    axum::http::StatusCode::NO_CONTENT
                }),
            );
            let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    std::thread::sleep(Duration::from_millis(200));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ctx() -> ExporterContext {
    let mut r = Resource::default();
    r.set("host.name", "bench");
    ExporterContext {
        resource: r,
        ..Default::default()
    }
}

fn throughput(rounds: usize, lines: usize) {
    let port = free_port();
    start_sink(port);
    let ctx = ctx();
    let chunk = 1000;
    let signals: Vec<Signal> = (0..lines / chunk)
        .map(|i| {
            Signal::Logs(nodescope_model::LogBatch::from(records(
                chunk,
                (i * chunk) as u64,
            )))
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rates = vec![];
    for round in 0..rounds {
        let mut cfg = LokiConfig {
            enabled: true,
            endpoint: format!("http://127.0.0.1:{port}"),
            ..Default::default()
        };
        cfg.batch.max_items = 10_000;
        cfg.batch.memory_limit_bytes = 256 << 20;
        let e = cfg.build(&ctx).unwrap();
        let sent0 = counter(&ctx, "nodescope_exporter_sent_total", None);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let cpu0 = thread_cpu();
        let t0 = Instant::now();
        rt.block_on(async {
            let sigs = signals.clone();
            let prod = async move {
                for s in sigs {
                    tx.send(s).await.unwrap();
                }
            };
            tokio::join!(
                prod,
                e.run(ExporterQueue {
                    rx,
                    flush_timeout: Duration::from_secs(120)
                })
            );
        });
        let cpu = (thread_cpu() - cpu0).as_secs_f64();
        let wall = t0.elapsed().as_secs_f64();
        let sent = counter(&ctx, "nodescope_exporter_sent_total", None) - sent0;
        assert_eq!(
            sent as usize,
            signals.len() * chunk,
            "not everything was delivered"
        );
        println!(
            "round {round:2} lines {sent:.0}  {:>10.0} lines/cpu-s  {:>10.0} lines/s wall  cpu {cpu:.2}s",
            sent / cpu,
            sent / wall
        );
        rates.push(sent / cpu);
    }
    rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "\nmedian over {rounds} rounds: {:.0} log lines per CPU-second (one core)",
        rates[rates.len() / 2]
    );
}

fn outage(secs: u64, rate: u64, wal_dir: Option<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = wal_dir.map_or_else(|| tmp.path().to_path_buf(), Into::into);
    let port = free_port(); // nothing listens: connection refused
    let ctx = ctx();
    let mut cfg = LokiConfig {
        enabled: true,
        endpoint: format!("http://127.0.0.1:{port}"),
        ..Default::default()
    };
    cfg.wal.enabled = true;
    cfg.wal.dir = dir.clone();
    cfg.wal.fsync = FsyncPolicy::Interval;
    cfg.retry.max_backoff = Duration::from_secs(5);
    let bound = cfg.batch.memory_limit_bytes as u64;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let e = cfg.build(&ctx).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let handle = rt.spawn(e.run(ExporterQueue {
        rx,
        flush_timeout: Duration::from_secs(30),
    }));
    let rss0 = rss_bytes();
    println!(
        "outage {secs}s at {rate} lines/s, WAL in {}, memory bound {} MiB, RSS at start {:.1} MiB",
        dir.display(),
        bound >> 20,
        rss0 as f64 / 1048576.0
    );
    let mut max_rss = rss0;
    let mut produced = 0u64;
    let t0 = Instant::now();
    let mut last_print = 0;
    rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while t0.elapsed() < Duration::from_secs(secs) {
            tick.tick().await;
            let n = (rate / 10) as usize;
            tx.send(Signal::Logs(nodescope_model::LogBatch::from(records(n, produced)))).await.unwrap();
            produced += n as u64;
            let r = rss_bytes();
            max_rss = max_rss.max(r);
            let el = t0.elapsed().as_secs();
            if el >= last_print + 30 {
                last_print = el;
                println!(
                    "t={el:4}s produced {produced:>9} RSS {:>6.1} MiB (max {:>6.1}) WAL {:>7.1} MiB queue {:>6.1} KiB retries {:.0}",
                    r as f64 / 1048576.0,
                    max_rss as f64 / 1048576.0,
                    counter(&ctx, "nodescope_exporter_wal_bytes", None) / 1048576.0,
                    counter(&ctx, "nodescope_exporter_queue_bytes", None) / 1024.0,
                    counter(&ctx, "nodescope_exporter_retries_total", None),
                );
            }
        }
    });
    let wal_full = counter(&ctx, "nodescope_exporter_dropped_total", Some("wal_full"));
    println!(
        "\nduring the outage: produced {produced}, max RSS {:.1} MiB, bound + 20 MiB = {:.1} MiB -> {}",
        max_rss as f64 / 1048576.0,
        (bound + (20 << 20)) as f64 / 1048576.0,
        if max_rss <= bound + (20 << 20) { "PASS" } else { "FAIL" }
    );
    println!(
        "WAL {:.1} MiB, dropped(wal_full) {wal_full}",
        counter(&ctx, "nodescope_exporter_wal_bytes", None) / 1048576.0
    );
    // Backend back: time the drain.
    start_sink(port);
    let t1 = Instant::now();
    let target = produced as f64 - wal_full;
    while counter(&ctx, "nodescope_exporter_sent_total", None) < target {
        if t1.elapsed() > Duration::from_secs(600) {
            println!("drain did not finish in 600 s");
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        max_rss = max_rss.max(rss_bytes());
    }
    println!(
        "backend back: {:.0} lines delivered in {:.1}s (expected {target:.0}), max RSS incl. drain {:.1} MiB",
        counter(&ctx, "nodescope_exporter_sent_total", None),
        t1.elapsed().as_secs_f64(),
        max_rss as f64 / 1048576.0
    );
    drop(tx);
    let _ = rt.block_on(handle);
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    match a.get(1).map(String::as_str) {
        Some("outage") => outage(
            a.get(2).and_then(|s| s.parse().ok()).unwrap_or(600),
            a.get(3).and_then(|s| s.parse().ok()).unwrap_or(20_000),
            a.get(4).cloned(),
        ),
        _ => throughput(
            a.get(2).and_then(|s| s.parse().ok()).unwrap_or(10),
            a.get(3).and_then(|s| s.parse().ok()).unwrap_or(1_000_000),
        ),
    }
}
