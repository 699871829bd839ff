//! The OTLP exporter against a receiver built from the official OTLP protos (PyPI
//! `opentelemetry-proto` + `grpcio`, tests/otlp_receiver.py): gRPC and HTTP/protobuf,
//! gzip (also checked on the gRPC wire), headers, mutual TLS, partial success; names,
//! attributes and values are checked on the decoded requests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nodescope_delivery::ExporterContext;
use nodescope_exporter_otlp::{Compression, MetricNames, OtlpConfig, Protocol};
use nodescope_model::{
    ExporterQueue, Histogram, LogRecord, MetricBatch, MetricFamily, MetricType, Resource, Severity,
    Signal,
};
use serde_json::Value as J;

struct Receiver {
    child: Child,
    /// Decoded requests (and the READY line).
    lines: mpsc::Receiver<String>,
    /// gRPC messages as seen on the wire by the receiver's HTTP/2 tap (plaintext only).
    wire: mpsc::Receiver<J>,
    grpc_port: u16,
    http_port: u16,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    fn start(test: &str, tls: Option<&std::path::Path>, extra: &[&str]) -> Option<Receiver> {
        let py = nodescope_testsupport::require_tool(test, "python3", &[])?;
        let ok = Command::new(&py)
            .args([
                "-c",
                "import grpc, opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc",
            ])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            nodescope_testsupport::skip(test, "python3 modules grpcio / opentelemetry-proto are missing (scripts/install-test-deps.sh installs them)");
            return None;
        }
        let grpc_port = nodescope_testsupport::free_port();
        let http_port = nodescope_testsupport::free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/otlp_receiver.py");
        let mut cmd = Command::new(py);
        cmd.arg(script)
            .args(["--grpc-port", &grpc_port.to_string()])
            .args(["--http-port", &http_port.to_string()])
            .args(extra);
        if let Some(d) = tls {
            cmd.arg("--cert").arg(d.join("server.pem"));
            cmd.arg("--key").arg(d.join("server.key"));
            cmd.arg("--client-ca").arg(d.join("ca.pem"));
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting otlp_receiver.py");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let (wire_tx, wire_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let sent = match serde_json::from_str::<J>(&l) {
                    Ok(v) if v["transport"] == "grpc-wire" => wire_tx.send(v).is_ok(),
                    _ => tx.send(l).is_ok(),
                };
                if !sent {
                    break;
                }
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("receiver output");
        assert_eq!(first, "READY");
        Some(Receiver {
            child,
            lines: rx,
            wire: wire_rx,
            grpc_port,
            http_port,
        })
    }

    /// The next `n` gRPC messages the wire tap saw.
    fn wire(&self, n: usize) -> Vec<J> {
        (0..n)
            .map(|_| {
                self.wire
                    .recv_timeout(Duration::from_secs(20))
                    .expect("a gRPC message on the wire")
            })
            .collect()
    }

    /// Fails if the receiver gets another request within `wait`.
    fn expect_no_more_requests(&self, wait: Duration) {
        if let Ok(l) = self.lines.recv_timeout(wait) {
            panic!("the exporter sent another request: {l}");
        }
    }

    fn requests(&self, n: usize) -> Vec<J> {
        (0..n)
            .map(|_| {
                let l = self
                    .lines
                    .recv_timeout(Duration::from_secs(20))
                    .expect("a request at the receiver");
                serde_json::from_str(&l).unwrap()
            })
            .collect()
    }
}

fn ctx() -> ExporterContext {
    let mut r = Resource::default();
    for (k, v) in [
        ("service.name", "nodescope"),
        ("host.name", "node-a"),
        ("host.id", "0123abcd"),
        ("os.type", "linux"),
        ("k8s.node.name", "worker-1"),
    ] {
        r.set(k, v);
    }
    ExporterContext {
        resource: r,
        ..Default::default()
    }
}

fn signals(ts: SystemTime) -> Vec<Signal> {
    let mut cpu = MetricFamily::new("node_cpu_seconds_total", "CPU time", MetricType::Counter);
    cpu.push([("cpu", "0"), ("mode", "idle")], 1234.5);
    cpu.push([("cpu", "0"), ("mode", "user")], 55.25);
    let mut rx = MetricFamily::new(
        "node_network_receive_bytes_total",
        "rx",
        MetricType::Counter,
    );
    rx.push([("device", "eth0")], 1e6);
    let mut tx = MetricFamily::new(
        "node_network_transmit_bytes_total",
        "tx",
        MetricType::Counter,
    );
    tx.push([("device", "eth0")], 2e6);
    let load = MetricFamily::single("node_load1", "load", MetricType::Gauge, 0.75);
    let mut h = MetricFamily::new(
        "nodescope_tcp_connect_duration_seconds",
        "connect",
        MetricType::Histogram,
    );
    h.push_histogram(
        [("workload", "nginx.service")],
        Histogram::from_bucket_counts(&[0.001, 0.01], &[5, 3, 2], 0.125),
    );
    let logs = vec![LogRecord {
        timestamp: ts,
        severity: Severity::Error,
        kind: "tcp_connect_failed".into(),
        body: "connect to 10.0.0.9:443 refused".into(),
        labels: vec![("workload_kind".into(), "container".into())],
        attributes: vec![
            ("pid".into(), "4242".into()),
            ("comm".into(), "curl".into()),
        ],
    }];
    vec![
        Signal::Metrics(Arc::new(MetricBatch {
            source: "host".into(),
            timestamp: ts,
            families: vec![cpu, rx, tx, load, h],
        })),
        Signal::Logs(nodescope_model::LogBatch::from(logs)),
    ]
}

async fn export(cfg: OtlpConfig, ctx: &ExporterContext, ts: SystemTime) {
    export_signals(cfg, ctx, signals(ts)).await
}

async fn export_signals(cfg: OtlpConfig, ctx: &ExporterContext, sigs: Vec<Signal>) {
    let mut issues = nodescope_model::config::Issues::default();
    cfg.validate("exporters.otlp", &mut issues);
    assert!(issues.is_empty(), "{:?}", issues.list);
    let e = cfg.build(ctx).unwrap();
    let (txq, rxq) = tokio::sync::mpsc::channel(8);
    for s in sigs {
        txq.send(s).await.unwrap();
    }
    drop(txq);
    tokio::time::timeout(
        Duration::from_secs(30),
        e.run(ExporterQueue {
            rx: rxq,
            flush_timeout: Duration::from_secs(10),
        }),
    )
    .await
    .expect("exporter finished");
}

fn attr(list: &J, key: &str) -> Option<String> {
    list.as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .and_then(|a| a["value"]["stringValue"].as_str().map(String::from))
}

fn check(reqs: &[J], transport: &str, ts: SystemTime) {
    let ts_nanos = ts
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        .to_string();
    let m = reqs
        .iter()
        .find(|r| r["signal"] == "metrics")
        .expect("metrics request");
    let l = reqs
        .iter()
        .find(|r| r["signal"] == "logs")
        .expect("logs request");
    for r in [m, l] {
        assert_eq!(r["transport"], transport);
        assert_eq!(r["headers"]["x-nodescope-test"], "yes", "{}", r["headers"]);
    }
    let rm = &m["request"]["resourceMetrics"][0];
    let res = &rm["resource"]["attributes"];
    assert_eq!(attr(res, "service.name").as_deref(), Some("nodescope"));
    assert_eq!(attr(res, "host.name").as_deref(), Some("node-a"));
    assert_eq!(attr(res, "host.id").as_deref(), Some("0123abcd"));
    assert_eq!(attr(res, "os.type").as_deref(), Some("linux"));
    assert_eq!(attr(res, "k8s.node.name").as_deref(), Some("worker-1"));
    assert_eq!(attr(res, "deployment.environment").as_deref(), Some("test"));
    assert_eq!(rm["scopeMetrics"][0]["scope"]["name"], "nodescope");
    let metrics = rm["scopeMetrics"][0]["metrics"].as_array().unwrap();
    let get = |n: &str| {
        metrics
            .iter()
            .find(|m| m["name"] == n)
            .unwrap_or_else(|| panic!("{n} missing from {metrics:?}"))
    };
    let cpu = get("system.cpu.time");
    assert_eq!(cpu["unit"], "s");
    assert_eq!(cpu["sum"]["isMonotonic"], true);
    assert_eq!(
        cpu["sum"]["aggregationTemporality"],
        "AGGREGATION_TEMPORALITY_CUMULATIVE"
    );
    let dps = cpu["sum"]["dataPoints"].as_array().unwrap();
    let idle = dps
        .iter()
        .find(|d| attr(&d["attributes"], "state").as_deref() == Some("idle"))
        .unwrap();
    assert_eq!(attr(&idle["attributes"], "cpu").as_deref(), Some("cpu0"));
    assert_eq!(idle["asDouble"], 1234.5);
    assert_eq!(idle["timeUnixNano"], ts_nanos);
    let net = get("system.network.io");
    let dirs: Vec<(String, f64)> = net["sum"]["dataPoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                attr(&d["attributes"], "direction").unwrap(),
                d["asDouble"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        dirs,
        vec![("receive".into(), 1e6), ("transmit".into(), 2e6)]
    );
    let load = get("system.cpu.load_average.1m");
    assert_eq!(load["gauge"]["dataPoints"][0]["asDouble"], 0.75);
    let h = get("nodescope_tcp_connect_duration_seconds");
    let hp = &h["histogram"]["dataPoints"][0];
    assert_eq!(hp["count"], "10");
    assert_eq!(hp["sum"], 0.125);
    assert_eq!(hp["bucketCounts"], serde_json::json!(["5", "3", "2"]));
    assert_eq!(hp["explicitBounds"], serde_json::json!([0.001, 0.01]));
    assert!(metrics
        .iter()
        .all(|m| !m["name"].as_str().unwrap().starts_with("node_")));

    let rl = &l["request"]["resourceLogs"][0];
    assert_eq!(
        attr(&rl["resource"]["attributes"], "host.name").as_deref(),
        Some("node-a")
    );
    let rec = &rl["scopeLogs"][0]["logRecords"][0];
    assert_eq!(
        rec["body"]["stringValue"],
        "connect to 10.0.0.9:443 refused"
    );
    assert_eq!(rec["severityNumber"], "SEVERITY_NUMBER_ERROR");
    assert_eq!(rec["severityText"], "ERROR");
    assert_eq!(rec["eventName"], "tcp_connect_failed");
    assert_eq!(rec["timeUnixNano"], ts_nanos);
    assert_eq!(attr(&rec["attributes"], "pid").as_deref(), Some("4242"));
    assert_eq!(
        attr(&rec["attributes"], "workload_kind").as_deref(),
        Some("container")
    );
}

fn base_cfg(protocol: Protocol, endpoint: String) -> OtlpConfig {
    let mut c = OtlpConfig {
        enabled: true,
        protocol,
        endpoint: Some(endpoint),
        metric_names: MetricNames::Otel,
        ..Default::default()
    };
    c.headers.insert("x-nodescope-test".into(), "yes".into());
    c.resource_attributes
        .insert("deployment.environment".into(), "test".into());
    c.batch.timeout = Duration::from_millis(100);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_receiver_decodes_grpc_and_http() {
    let Some(rcv) = Receiver::start("official_receiver_decodes_grpc_and_http", None, &[]) else {
        return;
    };
    let ts = SystemTime::now();
    let ctx = ctx();
    // gRPC, gzip
    export(
        base_cfg(
            Protocol::Grpc,
            format!("http://127.0.0.1:{}", rcv.grpc_port),
        ),
        &ctx,
        ts,
    )
    .await;
    let reqs = rcv.requests(2);
    check(&reqs, "grpc", ts);
    // grpcio hides grpc-encoding from the servicer; the receiver's tap reads the gRPC
    // length prefix on the wire: Compressed-Flag set and a gzip member as the message.
    for w in rcv.wire(2) {
        assert_eq!(w["compressed"], true, "{w}");
        assert_eq!(w["gzip"], true, "{w}");
    }
    // gRPC, uncompressed
    let mut c = base_cfg(
        Protocol::Grpc,
        format!("http://127.0.0.1:{}", rcv.grpc_port),
    );
    c.compression = Compression::None;
    export(c, &ctx, ts).await;
    let reqs = rcv.requests(2);
    check(&reqs, "grpc", ts);
    for w in rcv.wire(2) {
        assert_eq!(w["compressed"], false, "{w}");
        assert_eq!(w["gzip"], false, "{w}");
    }
    // HTTP/protobuf, gzip
    export(
        base_cfg(
            Protocol::HttpProtobuf,
            format!("http://127.0.0.1:{}", rcv.http_port),
        ),
        &ctx,
        ts,
    )
    .await;
    let reqs = rcv.requests(2);
    check(&reqs, "http", ts);
    assert_eq!(reqs[0]["headers"]["content-encoding"], "gzip");
    assert_eq!(reqs[0]["headers"]["content-type"], "application/x-protobuf");
    // HTTP/protobuf, uncompressed
    let mut c = base_cfg(
        Protocol::HttpProtobuf,
        format!("http://127.0.0.1:{}", rcv.http_port),
    );
    c.compression = Compression::None;
    export(c, &ctx, ts).await;
    let reqs = rcv.requests(2);
    check(&reqs, "http", ts);
    assert!(reqs[0]["headers"].get("content-encoding").is_none());

    let sent = ctx
        .self_metrics
        .collect()
        .into_iter()
        .find(|f| f.name == "nodescope_exporter_sent_total")
        .unwrap();
    // 4 exports x (10 samples + 1 log line): 5 numbers and a histogram of 2 bounds
    // (3 buckets, _sum, _count), counted as Prometheus counts samples.
    assert_eq!(sent.points[0].value, nodescope_model::Value::Number(44.0));
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let st = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("running openssl");
    assert!(st.success(), "openssl {args:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_with_mutual_tls() {
    let test = "grpc_with_mutual_tls";
    if nodescope_testsupport::require_tool(test, "openssl", &[]).is_none() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::write(
        p.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        p,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=nodescope-test-ca",
        ],
    );
    for name in ["server", "client"] {
        openssl(
            p,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            p,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
        );
    }
    let Some(rcv) = Receiver::start(test, Some(p), &[]) else {
        return;
    };
    let ts = SystemTime::now();
    let ctx = ctx();
    let mut c = base_cfg(
        Protocol::Grpc,
        format!("https://localhost:{}", rcv.grpc_port),
    );
    c.tls.ca_file = Some(p.join("ca.pem"));
    c.tls.cert_file = Some(p.join("client.pem"));
    c.tls.key_file = Some(p.join("client.key"));
    export(c, &ctx, ts).await;
    let reqs = rcv.requests(2);
    check(&reqs, "grpc", ts);
}

/// Warn-level events of this test binary, as JSON lines (one global subscriber: the
/// exporter logs from the runtime's worker threads).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured() -> &'static Captured {
    static C: OnceLock<Captured> = OnceLock::new();
    C.get_or_init(|| {
        let c = Captured::default();
        let w = c.clone();
        tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || w.clone())
            .try_init()
            .expect("installing the test's log capture");
        c
    })
}

/// Captured events whose `error_message` field is `msg`.
fn events_with_error_message(msg: &str) -> Vec<J> {
    let buf = captured().0.lock().unwrap().clone();
    String::from_utf8_lossy(&buf)
        .lines()
        .filter_map(|l| serde_json::from_str::<J>(l).ok())
        .filter(|e| e["fields"]["error_message"] == msg)
        .collect()
}

fn self_metric(ctx: &ExporterContext, name: &str, reason: Option<&str>) -> f64 {
    let fams = ctx.self_metrics.collect();
    let f = fams
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("{name} is not registered"));
    let p = f
        .points
        .iter()
        .find(|p| {
            p.labels.iter().any(|(k, v)| k == "exporter" && v == "otlp")
                && reason.is_none_or(|r| p.labels.iter().any(|(k, v)| k == "reason" && v == r))
        })
        .unwrap_or_else(|| panic!("{name}{{exporter=otlp,reason={reason:?}}} missing"));
    match p.value {
        nodescope_model::Value::Number(n) => n,
        nodescope_model::Value::Histogram(_) => panic!("{name} is a histogram"),
    }
}

/// The usual signals plus two memory families (the OTel name map derives a third data
/// point, `system.memory.usage{state="used"}`, so OTLP data points != model points) and
/// three log records.
fn partial_signals(ts: SystemTime) -> Vec<Signal> {
    let mut out = Vec::new();
    for s in signals(ts) {
        match s {
            Signal::Metrics(b) => {
                let mut b = (*b).clone();
                b.families.push(MetricFamily::single(
                    "node_memory_MemTotal_bytes",
                    "total",
                    MetricType::Gauge,
                    8e9,
                ));
                b.families.push(MetricFamily::single(
                    "node_memory_MemFree_bytes",
                    "free",
                    MetricType::Gauge,
                    3e9,
                ));
                out.push(Signal::Metrics(Arc::new(b)));
            }
            Signal::Logs(l) => {
                let mut l = (*l).clone();
                for i in 0..2 {
                    let mut r = l[0].clone();
                    r.body = format!("record {i}");
                    l.push(r);
                }
                out.push(Signal::Logs(nodescope_model::LogBatch::from(l)));
            }
            other => out.push(other),
        }
    }
    out
}

/// A receiver answering every export with a partial success: the exporter must not resend,
/// must count exactly the rejected items as dropped (and the rest as sent, in samples,
/// the receiver's data points converted in proportion), and must log the receiver's error_message once per response at warn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_success_is_counted_logged_and_not_retried() {
    let test = "partial_success_is_counted_logged_and_not_retried";
    let msg = "nodescope-test: points with unit \"furlong\" are not accepted";
    let Some(rcv) = Receiver::start(
        test,
        None,
        &[
            "--reject-points",
            "2",
            "--reject-logs",
            "1",
            "--reject-message",
            msg,
        ],
    ) else {
        return;
    };
    captured();
    let ts = SystemTime::now();
    for (protocol, transport, port) in [
        (Protocol::HttpProtobuf, "http", rcv.http_port),
        (Protocol::Grpc, "grpc", rcv.grpc_port),
    ] {
        let ctx = ctx();
        let mut c = base_cfg(protocol, format!("http://127.0.0.1:{port}"));
        // A resend (the bug this guards against) would come quickly.
        c.retry.initial_backoff = Duration::from_millis(50);
        c.retry.max_backoff = Duration::from_millis(200);
        export_signals(c, &ctx, partial_signals(ts)).await;
        let reqs = rcv.requests(2);
        let get = |signal: &str| {
            reqs.iter()
                .find(|r| r["signal"] == signal)
                .unwrap_or_else(|| panic!("{signal} request missing: {reqs:?}"))
                .clone()
        };
        let (m, l) = (get("metrics"), get("logs"));
        for r in [&m, &l] {
            assert_eq!(r["transport"], transport);
        }
        // Counted by the receiver on the decoded request: cpu 2, network 2, load 1,
        // histogram 1, memory limit/free/used 3.
        assert_eq!(m["items"], 9, "{transport}");
        assert_eq!(m["rejected"], 2, "{transport}");
        assert_eq!(l["items"], 3, "{transport}");
        assert_eq!(l["rejected"], 1, "{transport}");
        // The exporter finished (queue drained, sender stopped): nothing is resent later.
        rcv.expect_no_more_requests(Duration::from_millis(1500));
        if protocol == Protocol::Grpc {
            assert_eq!(rcv.wire(2).len(), 2);
        }

        // In samples: 8 numbers + a histogram of 5 samples = 13; 2 of 9 data points
        // rejected = ceil(2 x 13 / 9) = 3 samples.
        let sent = self_metric(&ctx, "nodescope_exporter_sent_total", None);
        assert_eq!(sent, (13.0 - 3.0) + (3.0 - 1.0), "{transport}: sent_total");
        let rejected = self_metric(&ctx, "nodescope_exporter_dropped_total", Some("rejected"));
        assert_eq!(
            rejected, 4.0,
            "{transport}: dropped_total{{reason=rejected}}"
        );
        for reason in [
            "memory_limit",
            "wal_full",
            "retries_exhausted",
            "shutdown",
            "encode",
        ] {
            let n = self_metric(&ctx, "nodescope_exporter_dropped_total", Some(reason));
            assert_eq!(n, 0.0, "{transport}: dropped_total{{reason={reason}}}");
        }
        for name in [
            "nodescope_exporter_failed_total",
            "nodescope_exporter_retries_total",
        ] {
            assert_eq!(self_metric(&ctx, name, None), 0.0, "{transport}: {name}");
        }

        // `rejected` as the receiver reported it (data points, log records); `items` in
        // the exporter's unit (samples, log lines).
        for (signal, rejected, items) in [("metrics", 2, 13), ("logs", 1, 3)] {
            let em = format!("{msg} ({transport} {signal})");
            let ev = events_with_error_message(&em);
            assert_eq!(ev.len(), 1, "one warning per response for {em:?}: {ev:?}");
            let e = &ev[0];
            assert_eq!(e["level"], "WARN", "{e}");
            assert_eq!(e["fields"]["signal"], signal, "{e}");
            assert_eq!(e["fields"]["rejected"], rejected, "{e}");
            assert_eq!(e["fields"]["items"], items, "{e}");
        }
    }
}
