//! The real agent with a large `/metrics` and 100 clients that ask for it and never read
//! (issue 16, item 1): its memory stays bounded while they hang on and comes back down
//! once they are gone. Its own test binary; `scripts/http-stall.py` is the same scenario
//! by hand, with a 16 MB `/metrics`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap()
        / 1024.0
}

#[test]
fn hundred_clients_never_reading_metrics_keep_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = String::from("# TYPE bench_peer_info gauge\n");
    for i in 0..60_000u32 {
        t.push_str(&format!(
            "bench_peer_info{{peer=\"10.{}.{}.{}\",workload=\"deployment/workload-{}\"}} 1\n",
            i >> 16,
            (i >> 8) & 255,
            i & 255,
            i % 500
        ));
    }
    std::fs::write(dir.path().join("big.prom"), t).unwrap();
    let agent = start_agent(&format!(
        "[host.textfile]\ndirectory = \"{}\"\nmax_series = 100000\n[network]\nenabled = false\n[profiling]\nenabled = false\n",
        dir.path().display()
    ));
    let pid = agent.proc.child.id();
    let get = |close: bool| {
        let mut s = TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
        let c = if close { "Connection: close\r\n" } else { "" };
        s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{c}\r\n").as_bytes())
            .unwrap();
        s
    };
    let mut body = Vec::new();
    get(true).read_to_end(&mut body).unwrap();
    assert!(body.len() > 4_000_000, "/metrics is {} bytes", body.len());
    drop(body);
    std::thread::sleep(Duration::from_millis(500));
    let base = rss_mib(pid);

    let clients: Vec<TcpStream> = (0..100).map(|_| get(false)).collect();
    let mut peak = base;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(15) {
        peak = peak.max(rss_mib(pid));
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(clients);
    let mut after = f64::MAX;
    for _ in 0..60 {
        std::thread::sleep(Duration::from_millis(500));
        after = rss_mib(pid);
        if after - base < 24.0 {
            break;
        }
    }
    let (_, m) = http_get(&agent.url("/metrics")).unwrap();
    let refused = |reason: &str| {
        m.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "nodescope_http_refused_total{{reason=\"{reason}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    eprintln!(
        "RSS {base:.1} MiB, peak {peak:.1} MiB with 100 clients not reading, {after:.1} MiB after; \
         refused: too_many_connections {}, response_buffer_full {}",
        refused("too_many_connections"),
        refused("response_buffer_full")
    );
    // Without the bounds every client held its own ~5 MB body: 500 MB and more.
    assert!(peak - base < 200.0, "RSS grew {:.1} MiB", peak - base);
    assert!(
        after - base < 24.0,
        "RSS still {:.1} MiB above after the clients closed",
        after - base
    );
    assert_eq!(refused("too_many_connections"), 36.0);
}
