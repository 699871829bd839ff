//! Clients that ask for a large response and never read it: the agent's memory stays
//! bounded while they hang on, and goes back down once they are gone. Its own test binary,
//! so no other test's allocations move the process's RSS.

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use nodescope_httpguard::{harden, serve, SecurityConfig};
use nodescope_model::selfmetrics::SelfMetrics;
use nodescope_model::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BODY: usize = 16 * 1024 * 1024;
const MIB: f64 = 1024.0 * 1024.0;

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

fn refused(metrics: &SelfMetrics, reason: &str) -> f64 {
    metrics
        .collect()
        .into_iter()
        .filter(|f| f.name == "nodescope_http_refused_total")
        .flat_map(|f| f.points)
        .find(|p| p.labels.iter().any(|(k, v)| k == "reason" && v == reason))
        .map_or(0.0, |p| match p.value {
            Value::Number(n) => n,
            _ => 0.0,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_clients_that_never_read_a_16_mib_metrics() {
    // The agent's allocator settings (main.rs applies them at start).
    nodescope_httpguard::tune_allocator();
    let cfg = SecurityConfig {
        write_timeout: Duration::from_secs(4),
        ..Default::default()
    };
    let budget_mib = cfg.max_response_buffer_bytes as f64 / MIB;
    let settings = cfg.build().unwrap();
    let metrics = SelfMetrics::new();
    // A fresh 16 MiB body per request, every page touched, as a busy /metrics is.
    let app = Router::new().route("/metrics", get(|| async { vec![b'#'; BODY] }));
    let router = harden(app, &settings, true, &metrics);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let m2 = metrics.clone();
    let server = tokio::spawn(async move {
        serve(listener, router, &settings, &m2, async {
            let _ = rx.await;
            tokio::time::Instant::now() + Duration::from_secs(2)
        })
        .await
    });

    // One normal scrape first, read in full.
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).await.unwrap();
    assert!(out.len() > BODY);
    drop(out);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = rss_mib();

    let mut clients = Vec::new();
    for _ in 0..100 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        clients.push(c);
    }
    let mut peak = 0.0f64;
    for _ in 0..30 {
        peak = peak.max(rss_mib());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refusals =
        refused(&metrics, "response_buffer_full") + refused(&metrics, "too_many_connections");
    eprintln!(
        "RSS base {base:.1} MiB, peak with 100 stalled clients {peak:.1} MiB; refusals {refusals}"
    );
    // Budget + two bodies being built at once + the allocator's slack.
    let bound = budget_mib + 2.0 * BODY as f64 / MIB + 16.0;
    assert!(
        peak - base < bound,
        "RSS grew {:.1} MiB with 100 stalled clients (bound {bound:.1} MiB)",
        peak - base
    );
    assert!(refusals >= 90.0, "{refusals}");

    drop(clients);
    let mut after = f64::MAX;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = rss_mib();
        if after - base < 8.0 {
            break;
        }
    }
    eprintln!("RSS after the clients closed {after:.1} MiB");

    assert!(
        after - base < 8.0,
        "RSS still {:.1} MiB above the base after the clients closed",
        after - base
    );
    let _ = tx.send(());
    server.await.unwrap().unwrap();
}
