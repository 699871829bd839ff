//! Pushes host-like series into a real Prometheus (Debian `prometheus`, started here with
//! `--web.enable-remote-write-receiver`) and reads them back with PromQL.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nodescope_delivery::ExporterContext;
use nodescope_exporter_remote_write::RemoteWriteConfig;
use nodescope_model::{
    ExporterQueue, Histogram, MetricBatch, MetricFamily, MetricType, Resource, Signal,
};

struct Prom {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prom {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_prometheus(bin: &std::path::Path) -> Prom {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(&cfg, "global:\n  scrape_interval: 1h\n").unwrap();
    let port = nodescope_testsupport::free_port();
    let child = Command::new(bin)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--web.enable-remote-write-receiver")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting prometheus");
    let p = Prom {
        child,
        port,
        _dir: dir,
    };
    let url = format!("http://127.0.0.1:{port}/-/ready");
    for _ in 0..100 {
        if let Ok(r) = reqwest::get(&url).await {
            if r.status().is_success() {
                return p;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("prometheus did not become ready on port {port}");
}

async fn query(port: u16, q: &str, at: f64) -> Vec<(serde_json::Value, f64)> {
    let text = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/api/v1/query"))
        .query(&[("query", q), ("time", &format!("{at:.3}"))])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(r["status"], "success", "{r}");
    r["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let v: f64 = s["value"][1].as_str().unwrap().parse().unwrap();
            (s["metric"].clone(), v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_receives_host_series() {
    let Some(bin) =
        nodescope_testsupport::require_tool("prometheus_receives_host_series", "prometheus", &[])
    else {
        return;
    };
    let prom = start_prometheus(&bin).await;

    let mut cfg = RemoteWriteConfig {
        enabled: true,
        endpoint: format!("http://127.0.0.1:{}/api/v1/write", prom.port),
        ..Default::default()
    };
    cfg.batch.timeout = Duration::from_millis(100);
    let mut issues = nodescope_model::config::Issues::default();
    cfg.validate("exporters.remote_write", &mut issues);
    assert!(issues.is_empty(), "{:?}", issues.list);
    let mut resource = Resource::default();
    resource.set("host.name", "node-a");
    let ctx = ExporterContext {
        resource,
        ..Default::default()
    };
    let exporter = cfg.build(&ctx).unwrap();

    let now = SystemTime::now();
    let at = now.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let mut cpu = MetricFamily::new("node_cpu_seconds_total", "cpu", MetricType::Counter);
    for (c, m, v) in [
        ("0", "idle", 1234.5),
        ("0", "user", 55.25),
        ("1", "idle", 999.0),
    ] {
        cpu.push([("cpu", c), ("mode", m)], v);
    }
    let mem = MetricFamily::single(
        "node_memory_MemAvailable_bytes",
        "mem",
        MetricType::Gauge,
        8.0 * 1024.0 * 1024.0 * 1024.0,
    );
    let mut h = MetricFamily::new(
        "nodescope_tcp_connect_duration_seconds",
        "connect",
        MetricType::Histogram,
    );
    h.push_histogram(
        [("workload", "nginx.service")],
        Histogram::from_bucket_counts(&[0.001, 0.01, 0.1], &[5, 3, 1, 1], 0.25),
    );
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(Signal::Metrics(Arc::new(MetricBatch {
        source: "cpu".into(),
        timestamp: now,
        families: vec![cpu, mem, h],
    })))
    .await
    .unwrap();
    drop(tx);
    tokio::time::timeout(
        Duration::from_secs(20),
        exporter.run(ExporterQueue {
            rx,
            flush_timeout: Duration::from_secs(10),
        }),
    )
    .await
    .expect("exporter finished");

    let r = query(
        prom.port,
        r#"node_cpu_seconds_total{cpu="0",mode="idle"}"#,
        at,
    )
    .await;
    eprintln!("PromQL node_cpu_seconds_total{{cpu=\"0\",mode=\"idle\"}} -> {r:?}");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].1, 1234.5);
    assert_eq!(r[0].0["job"], "nodescope");
    assert_eq!(r[0].0["instance"], "node-a");
    let r = query(prom.port, "sum(node_cpu_seconds_total)", at).await;
    assert_eq!(r[0].1, 1234.5 + 55.25 + 999.0);
    let r = query(prom.port, "node_memory_MemAvailable_bytes", at).await;
    assert_eq!(r[0].1, 8589934592.0);
    let r = query(
        prom.port,
        r#"nodescope_tcp_connect_duration_seconds_bucket{le="0.01"}"#,
        at,
    )
    .await;
    assert_eq!(r[0].1, 8.0);
    let r = query(
        prom.port,
        r#"nodescope_tcp_connect_duration_seconds_bucket{le="+Inf"}"#,
        at,
    )
    .await;
    assert_eq!(r[0].1, 10.0);
    let r = query(prom.port, "nodescope_tcp_connect_duration_seconds_sum", at).await;
    assert_eq!(r[0].1, 0.25);
    let r = query(
        prom.port,
        "histogram_quantile(0.5, nodescope_tcp_connect_duration_seconds_bucket)",
        at,
    )
    .await;
    assert!(r[0].1 > 0.0 && r[0].1 <= 0.001, "{r:?}");

    let fams = ctx.self_metrics.collect();
    let sent = fams
        .iter()
        .find(|f| f.name == "nodescope_exporter_sent_total")
        .unwrap();
    // Samples, counted as Prometheus counts them: the series it stored for this batch
    // (3 cpu, 1 memory, and the histogram's 4 buckets + _sum + _count).
    let stored = query(prom.port, r#"count({job="nodescope"})"#, at).await;
    assert_eq!(stored[0].1, 10.0, "{stored:?}");
    assert_eq!(
        sent.points[0].value,
        nodescope_model::Value::Number(stored[0].1)
    );
    let st = ctx.status.snapshot();
    assert_eq!(st[0].name, "remote_write");
    assert!(st[0].last_success.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_sample_is_rejected_not_retried() {
    let Some(bin) = nodescope_testsupport::require_tool(
        "out_of_order_sample_is_rejected_not_retried",
        "prometheus",
        &[],
    ) else {
        return;
    };
    let prom = start_prometheus(&bin).await;
    let mut cfg = RemoteWriteConfig {
        enabled: true,
        endpoint: format!("http://127.0.0.1:{}/api/v1/write", prom.port),
        ..Default::default()
    };
    cfg.batch.timeout = Duration::from_millis(50);
    cfg.batch.max_items = 1;
    let ctx = ExporterContext::default();
    let exporter = cfg.build(&ctx).unwrap();
    let now = SystemTime::now();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for (t, v) in [(now, 1.0), (now - Duration::from_secs(60), 2.0)] {
        tx.send(Signal::Metrics(Arc::new(MetricBatch {
            source: "t".into(),
            timestamp: t,
            families: vec![MetricFamily::single("ooo_test", "x", MetricType::Gauge, v)],
        })))
        .await
        .unwrap();
    }
    drop(tx);
    exporter
        .run(ExporterQueue {
            rx,
            flush_timeout: Duration::from_secs(10),
        })
        .await;
    let fams = ctx.self_metrics.collect();
    let get = |name: &str, reason: Option<&str>| {
        fams.iter()
            .find(|f| f.name == name)
            .unwrap()
            .points
            .iter()
            .find(|p| reason.is_none_or(|r| p.labels.iter().any(|(_, v)| v == r)))
            .map(|p| p.value.clone())
            .unwrap()
    };
    use nodescope_model::Value::Number;
    assert_eq!(get("nodescope_exporter_sent_total", None), Number(1.0));
    assert_eq!(
        get("nodescope_exporter_dropped_total", Some("rejected")),
        Number(1.0)
    );
    assert_eq!(get("nodescope_exporter_retries_total", None), Number(0.0));
}
