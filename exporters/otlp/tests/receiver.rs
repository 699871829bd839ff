//! The OTLP exporter against a receiver built from the official OTLP protos (PyPI
//! `opentelemetry-proto` + `grpcio`, tests/otlp_receiver.py): gRPC and HTTP/protobuf,
//! gzip, headers, mutual TLS; names, attributes and values are checked on the decoded
//! requests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
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
    lines: mpsc::Receiver<String>,
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
    fn start(test: &str, tls: Option<&std::path::Path>) -> Option<Receiver> {
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
            .args(["--http-port", &http_port.to_string()]);
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
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
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
            grpc_port,
            http_port,
        })
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
        Signal::Logs(Arc::new(logs)),
    ]
}

async fn export(cfg: OtlpConfig, ctx: &ExporterContext, ts: SystemTime) {
    let mut issues = nodescope_model::config::Issues::default();
    cfg.validate("exporters.otlp", &mut issues);
    assert!(issues.is_empty(), "{:?}", issues.list);
    let e = cfg.build(ctx).unwrap();
    let (txq, rxq) = tokio::sync::mpsc::channel(8);
    for s in signals(ts) {
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
    let Some(rcv) = Receiver::start("official_receiver_decodes_grpc_and_http", None) else {
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
    // (grpcio hides grpc-encoding from the servicer; the gzip path is exercised here, and
    // decoding proves tonic's compressed frames are valid)
    check(&reqs, "grpc", ts);
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
    // 3 exports x (6 points + 1 log line)
    assert_eq!(sent.points[0].value, nodescope_model::Value::Number(21.0));
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
    let Some(rcv) = Receiver::start(test, Some(p)) else {
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
