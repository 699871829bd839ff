//! The recorder end to end without the agent: synthetic collections, events and samples go
//! into a real `Recorder`; incidents are triggered through the real HTTP router; bundles
//! are written to a temporary spool and checked with real peers (promtool, go tool pprof).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use nodescope_model::feeds::{
    EventSink, Frame, OnDemandProfiler, SampleBatch, SampleKind, SampleSink, StackRecord,
    TimedSample,
};
use nodescope_model::selfmetrics::SelfMetrics;
use nodescope_model::{
    Histogram, LogRecord, MetricBatch, MetricFamily, MetricType, Services, Severity,
};
use nodescope_recorder::config::ByteSize;
use nodescope_recorder::http::{router, ApiState};
use nodescope_recorder::incidents::Incidents;
use nodescope_recorder::{Recorder, RecorderConfig};
use tower::ServiceExt;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn batch(source: &'static str, families: Vec<MetricFamily>, ts: i64) -> Arc<MetricBatch> {
    Arc::new(MetricBatch {
        source: source.into(),
        timestamp: UNIX_EPOCH + Duration::from_millis(ts as u64),
        families,
    })
}

/// One second of a node with two CPUs, a steady workload and, when `hog`, a hog at 0.9
/// cores; a peer whose connects are refused when `storm`.
fn collection(i: i64, ts: i64, hog_from: i64) -> Vec<Arc<MetricBatch>> {
    let hog = i >= hog_from;
    let mut cpu = MetricFamily::new("node_cpu_seconds_total", "", MetricType::Counter);
    let busy = if hog { 0.5 } else { 0.1 };
    for c in ["0", "1"] {
        cpu.push([("cpu", c), ("mode", "user")], i as f64 * busy);
        cpu.push([("cpu", c), ("mode", "idle")], i as f64 * (1.0 - busy));
    }
    let load = MetricFamily::single(
        "node_load1",
        "",
        MetricType::Gauge,
        if hog { 2.0 } else { 0.3 },
    );
    let mut wl = MetricFamily::new(
        "nodescope_workload_cpu_usage_seconds_total",
        "",
        MetricType::Counter,
    );
    wl.push([("workload", "/steady")], i as f64 * 0.2);
    let hog_secs = (i - hog_from).max(0) as f64 * 0.9;
    wl.push([("workload", "/hog")], hog_secs);
    let mut mem = MetricFamily::new(
        "nodescope_workload_memory_usage_bytes",
        "",
        MetricType::Gauge,
    );
    mem.push([("workload", "/steady")], 1e8);
    let mut conn = MetricFamily::new(
        "nodescope_tcp_connect_duration_seconds",
        "",
        MetricType::Histogram,
    );
    let l = [
        ("workload", "/steady"),
        ("peer_address", "10.0.0.7"),
        ("peer_port", "5432"),
        ("direction", "outbound"),
    ];
    conn.push_histogram(
        l,
        Histogram::from_bucket_counts(
            &[0.001, 0.01, 0.1],
            &[i as u64 * 3, i as u64, 0, 0],
            i as f64 * 0.004,
        ),
    );
    let mut errs = MetricFamily::new(
        "nodescope_tcp_connect_errors_total",
        "",
        MetricType::Counter,
    );
    errs.push(
        [
            ("workload", "/steady"),
            ("peer_address", "10.0.0.7"),
            ("peer_port", "5432"),
            ("direction", "outbound"),
            ("reason", "refused"),
        ],
        0.0,
    );
    vec![
        batch("cpu", vec![cpu], ts),
        batch("loadavg", vec![load], ts),
        batch("cgroup", vec![wl, mem], ts),
        batch("network", vec![conn, errs], ts),
    ]
}

fn stack(f: &str) -> StackRecord {
    StackRecord {
        frames: [f, "main"]
            .iter()
            .map(|n| Frame {
                function: (*n).into(),
                module: "/bin/app".into(),
                file: None,
                line: 0,
                address: 0x4000,
                kernel: false,
            })
            .collect(),
        process: "app".into(),
        workload: "/hog".into(),
    }
}

struct Setup {
    rec: Arc<Recorder>,
    inc: Arc<Incidents>,
    app: axum::Router,
    now: i64,
    _dir: tempfile::TempDir,
}

/// A recorder holding 120 s of history, the hog starting 30 s ago, and CPU samples: the
/// baseline mostly in `steady_fn`, the incident mostly in `hot_fn`.
fn setup(cfg: impl FnOnce(&mut RecorderConfig)) -> Setup {
    setup_with(Services::default(), cfg)
}

fn setup_with(services: Services, cfg: impl FnOnce(&mut RecorderConfig)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut c = RecorderConfig {
        spool_dir: dir.path().join("spool"),
        workload_interval: Duration::from_secs(1),
        cooldown: Duration::ZERO,
        ..Default::default()
    };
    cfg(&mut c);
    let rec = Recorder::new(c, "test-node".into(), &SelfMetrics::new());
    let now = now_ms() / 1000 * 1000;
    for i in 0..120 {
        let ts = now - (119 - i) * 1000;
        rec.ingest(ts, &collection(i, ts, 90));
    }
    let samples: Vec<TimedSample> = (0..1200)
        .map(|k| {
            let t = now - 60_000 + k * 50;
            let incident = t >= now - 30_000;
            TimedSample {
                time: UNIX_EPOCH + Duration::from_millis(t as u64),
                pid: 77,
                tid: 77,
                cpu: 0,
                stack: u32::from(incident && k % 4 != 0),
                kind: SampleKind::OnCpu,
            }
        })
        .collect();
    SampleSink::offer(
        &*rec,
        SampleBatch {
            hz: 20,
            stacks: vec![stack("steady_fn"), stack("hot_fn")],
            samples,
        },
    );
    EventSink::offer(
        &*rec,
        &Arc::new(vec![LogRecord {
            timestamp: SystemTime::now() - Duration::from_secs(5),
            severity: Severity::Warn,
            kind: "tcp_connect_failed".into(),
            body: "connect to 10.0.0.7:5432 refused; token=abc123".into(),
            labels: vec![("workload".into(), "/steady".into())],
            attributes: vec![
                ("cmdline".into(), "/bin/app --password hunter2".into()),
                ("environ".into(), "SECRET=1".into()),
            ],
        }]),
    );
    let inc = Incidents::new(rec.clone(), services, &SelfMetrics::new());
    let app = router(Arc::new(ApiState {
        rec: rec.clone(),
        incidents: inc.clone(),
    }));
    Setup {
        rec,
        inc,
        app,
        now,
        _dir: dir,
    }
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: &str,
) -> (StatusCode, HashMap<String, String>, Vec<u8>) {
    let r = app
        .clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    let st = r.status();
    let h = r
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    (
        st,
        h,
        r.into_body().collect().await.unwrap().to_bytes().to_vec(),
    )
}

fn json(b: &[u8]) -> serde_json::Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(b)))
}

async fn wait_ready(app: &axum::Router, id: &str) -> serde_json::Value {
    for _ in 0..100 {
        let (_, _, b) = call(app, "GET", "/api/v1/incidents", "").await;
        let l = json(&b);
        if let Some(i) = l["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == id)
        {
            match i["state"].as_str().unwrap() {
                "ready" => return i.clone(),
                "failed" => panic!("bundle failed: {i}"),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("incident {id} never became ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_documents_follow_the_contract() {
    let s = setup(|_| {});
    let (st, _, b) = call(
        &s.app,
        "GET",
        "/api/v1/recorder/timeline?group=cpu&from=-60",
        "",
    )
    .await;
    assert_eq!(st, 200);
    let t = json(&b);
    assert_eq!(t["step_seconds"], 1);
    assert!(t["timestamps"].as_array().unwrap().len() >= 55);
    let user = t["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "user")
        .unwrap();
    let last = user["values"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_f64()
        .unwrap();
    assert!((last - 0.5).abs() < 1e-6, "user share {last}");
    let (st, _, b) = call(&s.app, "GET", "/api/v1/recorder/timeline?group=nope", "").await;
    assert_eq!(st, 400, "{}", String::from_utf8_lossy(&b));
    let (_, _, b) = call(&s.app, "GET", "/api/v1/recorder/network?from=-60", "").await;
    let n = json(&b);
    let row = &n["rows"][0];
    assert_eq!(row["peer"], "10.0.0.7");
    assert_eq!(row["peer_port"], "5432");
    assert_eq!(
        n["connect_buckets"].as_array().unwrap().last().unwrap(),
        &serde_json::Value::Null
    );
    assert_eq!(
        row["connects"].as_array().unwrap().len(),
        n["timestamps"].as_array().unwrap().len()
    );
    assert_eq!(row["connect_hist"][5], serde_json::json!([3, 1, 0, 0]));
    let (_, _, b) = call(&s.app, "GET", "/api/v1/recorder/samples?from=-120", "").await;
    let smp = json(&b);
    assert_eq!(smp["count"], 1200);
    assert_eq!(smp["hz"], 20);
    let q = format!("from={}&to={}", (s.now - 30_000) / 1000, s.now / 1000);
    let (st, h, b) = call(
        &s.app,
        "GET",
        &format!("/api/v1/recorder/profile?{q}&format=folded&workload=/hog"),
        "",
    )
    .await;
    assert_eq!(st, 200);
    assert!(h["content-type"].starts_with("text/plain"));
    let folded = String::from_utf8(b).unwrap();
    assert!(folded.contains("app;main;hot_fn 450\n"), "{folded}");
    let (_, _, b) = call(
        &s.app,
        "GET",
        "/api/v1/recorder/profile?from=-30&format=pprof&workload=/other",
        "",
    )
    .await;
    assert_eq!(&b[..2], &[0x1f, 0x8b]);
    let (_, _, b) = call(
        &s.app,
        "GET",
        "/api/v1/recorder/events?from=-60&limit=10",
        "",
    )
    .await;
    let ev = json(&b);
    assert_eq!(ev["events"][0]["kind"], "tcp_connect_failed");
    for bad in ["from=abc", "from=-10&to=-20", "limit=0", "pid=x"] {
        let (st, _, _) = call(
            &s.app,
            "GET",
            &format!("/api/v1/recorder/samples?{bad}"),
            "",
        )
        .await;
        let (st2, _, _) = call(&s.app, "GET", &format!("/api/v1/recorder/events?{bad}"), "").await;
        assert!(st == 400 || st2 == 400, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_names_the_hog_redacts_secrets_and_its_files_pass_promtool_and_pprof() {
    let s = setup(|_| {});
    let (emitter, mut rx) = nodescope_model::Emitter::for_test(16);
    s.inc.set_emitter(emitter);
    let (st, _, b) = call(
        &s.app,
        "POST",
        "/api/v1/incidents",
        r#"{"before":"30s","after":"0s","reason":"slow; password=hunter2"}"#,
    )
    .await;
    assert_eq!(st, 202, "{}", String::from_utf8_lossy(&b));
    let r = json(&b);
    assert_eq!(r["state"], "recording");
    let id = r["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("incident-test-node-"));
    let info = wait_ready(&s.app, &id).await;
    assert!(
        info["top_finding"].as_str().unwrap().contains("/hog"),
        "{info}"
    );
    assert!(
        info["ready_after_window_seconds"].as_f64().unwrap() < 3.0,
        "{info}"
    );
    assert!(!info.to_string().contains("hunter2"));
    // The summary and both profiles went to the pipeline for the backends.
    let mut got = Vec::new();
    while let Ok(sig) = rx.try_recv() {
        got.push(sig);
    }
    assert_eq!(got.len(), 3, "{got:?}");
    match &got[0] {
        nodescope_model::Signal::Logs(l) => {
            assert_eq!(l[0].kind, "incident_bundle");
            assert!(l[0].body.contains("/hog"), "{}", l[0].body);
            assert!(!format!("{l:?}").contains("hunter2"));
        }
        other => panic!("{other:?}"),
    }
    for sig in &got[1..] {
        let nodescope_model::Signal::Profile(p) = sig else {
            panic!("{sig:?}")
        };
        assert!(p.labels.iter().any(|(k, v)| k == "incident" && v == &id));
        assert_eq!(&p.pprof_gz[..2], &[0x1f, 0x8b]);
    }
    let (_, _, f) = call(
        &s.app,
        "GET",
        &format!("/api/v1/incidents/{id}/files/findings.json"),
        "",
    )
    .await;
    let f = json(&f);
    assert_eq!(f[0]["kind"], "workload_cpu", "{f}");
    assert_eq!(f[0]["subject"]["workload"], "/hog");
    assert!(f[0]["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e.as_str().unwrap().contains("metrics.om")));
    let (_, _, d) = call(
        &s.app,
        "GET",
        &format!("/api/v1/incidents/{id}/files/data.json"),
        "",
    )
    .await;
    let d = json(&d);
    for k in [
        "manifest",
        "summary_md",
        "findings",
        "events",
        "network",
        "timelines",
        "baseline_timelines",
        "profiles",
        "heatmap",
    ] {
        assert!(!d[k].is_null(), "data.json lacks {k}");
    }
    assert!(d["profiles"]["incident"]
        .as_str()
        .unwrap()
        .contains("hot_fn"));
    let (st, h, tgz) = call(&s.app, "GET", &format!("/api/v1/incidents/{id}"), "").await;
    assert_eq!(st, 200);
    assert_eq!(h["content-type"], "application/gzip");
    assert!(tgz.len() < 10 << 20);

    // Unpack with the system's tar; check every member's checksum and the redaction.
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("b.tar.gz");
    std::fs::write(&file, &tgz).unwrap();
    let st = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&file)
        .arg("-C")
        .arg(out.path())
        .status()
        .unwrap();
    assert!(st.success());
    let root = out.path().join(&id);
    let manifest = json(&std::fs::read(root.join("manifest.json")).unwrap());
    for f in manifest["files"].as_array().unwrap() {
        let b = std::fs::read(root.join(f["name"].as_str().unwrap())).unwrap();
        assert_eq!(
            nodescope_recorder::bundle::sha256_hex(&b),
            f["sha256"].as_str().unwrap(),
            "{f}"
        );
    }
    let mut all = String::new();
    for e in std::fs::read_dir(&root).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "gz") {
            all.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
        }
    }
    for secret in ["hunter2", "abc123", "SECRET=1"] {
        assert!(!all.contains(secret), "{secret} leaked into the bundle");
    }
    let summary = std::fs::read_to_string(root.join("summary.md")).unwrap();
    for q in [
        "1. uptime",
        "2. dmesg",
        "3. vmstat",
        "4. mpstat",
        "5. pidstat",
        "6. iostat",
        "7. free",
        "8. sar -n DEV",
        "9. sar -n TCP",
        "10. top",
    ] {
        assert!(summary.contains(q), "summary lacks {q}");
    }

    if let Some(promtool) =
        nodescope_testsupport::require_tool("bundle_promtool", "promtool", &["--version"])
    {
        let blocks = out.path().join("blocks");
        let o = std::process::Command::new(promtool)
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(root.join("metrics.om"))
            .arg(&blocks)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(std::fs::read_dir(&blocks).unwrap().count() >= 1);
    }
    if let Some(go) = nodescope_testsupport::require_tool("bundle_pprof_diff", "go", &["version"]) {
        let o = std::process::Command::new(go)
            .args([
                "tool",
                "pprof",
                "-top",
                "-sample_index=samples",
                "-diff_base",
            ])
            .arg(root.join("cpu-baseline.pb.gz"))
            .arg(root.join("cpu-incident.pb.gz"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "pprof: {text}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        // hot_fn grew by about 450 samples, steady_fn shrank by about 450.
        let line = |f: &str| {
            text.lines()
                .find(|l| l.trim_end().ends_with(f))
                .unwrap_or_else(|| panic!("{f} not in {text}"))
                .to_string()
        };
        let flat = |f: &str| -> i64 { line(f).split_whitespace().next().unwrap().parse().unwrap() };
        assert!(flat("hot_fn") > 300, "{text}");
        assert!(flat("steady_fn") < -300, "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooldown_is_429_with_the_time_left_and_alertmanager_payloads_are_checked() {
    let s = setup(|c| c.cooldown = Duration::from_secs(120));
    for bad in [
        "",
        "not json",
        "[]",
        r#"{"before":"ten minutes"}"#,
        r#"{"after":"2h"}"#,
        r#"{"reason":5}"#,
    ] {
        let (st, _, b) = call(&s.app, "POST", "/api/v1/incidents", bad).await;
        if bad.is_empty() {
            continue;
        }
        assert_eq!(st, 400, "{bad}: {}", String::from_utf8_lossy(&b));
        assert!(json(&b)["error"].as_str().unwrap().len() > 5);
    }
    let (st, _, _) = call(
        &s.app,
        "POST",
        "/api/v1/incidents",
        r#"{"before":"20s","after":"0s"}"#,
    )
    .await;
    // The empty body above already started one (defaults): this one is in the cooldown.
    assert_eq!(st, 429);
    let (st, h, b) = call(&s.app, "POST", "/api/v1/incidents", "{}").await;
    assert_eq!(st, 429);
    let left: u64 = h["retry-after"].parse().unwrap();
    assert!((100..=120).contains(&left), "{left}");
    let e = json(&b);
    assert_eq!(e["error"], format!("cooldown: {left} s left"));
    assert_eq!(e["retry_after_seconds"], left);

    for bad in [
        "{",
        "{}",
        r#"{"alerts": 3}"#,
        r#"{"version":"3","alerts":[]}"#,
        r#"{"alerts":[{"labels":{}}]}"#,
        r#"{"alerts":[{"status":"firing","labels":"x"}]}"#,
    ] {
        let (st, _, b) = call(&s.app, "POST", "/api/v1/alertmanager", bad).await;
        assert_eq!(st, 400, "{bad}: {}", String::from_utf8_lossy(&b));
        assert!(json(&b)["error"].as_str().unwrap().contains("Alertmanager"));
    }
    let resolved = r#"{"version":"4","status":"resolved","alerts":[{"status":"resolved","labels":{"alertname":"X"}}]}"#;
    let (st, _, _) = call(&s.app, "POST", "/api/v1/alertmanager", resolved).await;
    assert_eq!(st, 200);
    let firing = r#"{"version":"4","status":"firing","groupLabels":{"alertname":"HighLatency"},"alerts":[{"status":"firing","labels":{"alertname":"HighLatency"},"annotations":{"summary":"p99 > 1s"}}]}"#;
    let (st, _, _) = call(&s.app, "POST", "/api/v1/alertmanager", firing).await;
    assert_eq!(st, 429, "Alertmanager shares the manual cooldown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_evicts_the_oldest_bundle() {
    let s = setup(|c| c.spool_max_bundles = 2);
    let mut ids = Vec::new();
    for k in 0..3 {
        let (st, _, b) = call(
            &s.app,
            "POST",
            "/api/v1/incidents",
            &format!(r#"{{"before":"{}s","after":"0s"}}"#, 10 + k),
        )
        .await;
        assert_eq!(st, 202);
        let id = json(&b)["id"].as_str().unwrap().to_string();
        wait_ready(&s.app, &id).await;
        ids.push(id);
    }
    let listed: Vec<String> = s.inc.list().iter().map(|i| i.id.clone()).collect();
    assert_eq!(listed, ids[1..].to_vec());
    let files: Vec<String> = std::fs::read_dir(s.inc.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(!files.iter().any(|f| f.starts_with(&ids[0])), "{files:?}");
    let (st, _, _) = call(&s.app, "GET", &format!("/api/v1/incidents/{}", ids[0]), "").await;
    assert_eq!(st, 404);
    // A restarted agent lists what the spool holds.
    let again = Incidents::new(s.rec.clone(), Services::default(), &SelfMetrics::new());
    assert_eq!(
        again
            .list()
            .iter()
            .map(|i| i.id.clone())
            .collect::<Vec<_>>(),
        ids[1..].to_vec()
    );
}

#[test]
fn memory_stays_under_the_cap_under_a_flood_of_events_peers_and_stacks() {
    let cap = 4u64 << 20;
    let rec = Recorder::new(
        RecorderConfig {
            memory_cap: ByteSize(cap),
            ..Default::default()
        },
        "n".into(),
        &SelfMetrics::new(),
    );
    let now = now_ms() / 1000 * 1000;
    let body = "e".repeat(1500);
    for round in 0..120i64 {
        let ts = now - (120 - round) * 1000;
        // 2000 new peers every round, histograms included.
        let mut conn = MetricFamily::new(
            "nodescope_tcp_connect_duration_seconds",
            "",
            MetricType::Histogram,
        );
        let mut retr =
            MetricFamily::new("nodescope_tcp_retransmits_total", "", MetricType::Counter);
        for p in 0..2000 {
            let addr = format!("10.{}.{}.{}", round % 200, p / 250, p % 250);
            let l = [
                ("workload", "/flood".to_string()),
                ("peer_address", addr),
                ("peer_port", "80".into()),
                ("direction", "outbound".into()),
            ];
            conn.push_histogram(
                l.clone(),
                Histogram::from_bucket_counts(&[0.001, 0.01, 0.1, 1.0], &[1, 2, 3, 4, 5], 0.5),
            );
            retr.push(l, round as f64);
        }
        let mut events = Vec::new();
        for k in 0..300 {
            events.push(LogRecord {
                timestamp: UNIX_EPOCH + Duration::from_millis((ts + k) as u64),
                severity: Severity::Warn,
                kind: "tcp_connect_failed".into(),
                body: body.clone(),
                labels: vec![("workload".into(), format!("/w{k}"))],
                attributes: vec![("peer".into(), format!("10.0.{round}.{k}"))],
            });
        }
        let stacks: Vec<StackRecord> = (0..200)
            .map(|k| stack(&format!("fn_{round}_{k}_{}", "x".repeat(80))))
            .collect();
        let samples = (0..2000)
            .map(|k| TimedSample {
                time: UNIX_EPOCH + Duration::from_millis((ts + k % 1000) as u64),
                pid: 1,
                tid: 1,
                cpu: 0,
                stack: (k % 200) as u32,
                kind: SampleKind::OnCpu,
            })
            .collect();
        rec.ingest(
            ts,
            &[
                batch("network", vec![conn, retr], ts),
                batch("cpu", vec![], ts),
            ],
        );
        EventSink::offer(&*rec, &Arc::new(events));
        SampleSink::offer(
            &*rec,
            SampleBatch {
                hz: 19,
                stacks,
                samples,
            },
        );
        let b = rec.bytes() as u64;
        assert!(b <= cap, "round {round}: {b} bytes > cap {cap}");
    }
    let d = rec.dropped();
    assert!(
        d["network"]["evicted_chunks"].as_u64().unwrap() > 0
            || d["network"]["dropped_series"].as_u64().unwrap() > 0,
        "{d}"
    );
    assert!(d["events"]["evicted"].as_u64().unwrap() > 10_000, "{d}");
    assert!(d["samples"]["evicted_samples"].as_u64().unwrap() > 0, "{d}");
    println!(
        "recorder bytes after the flood: {} of {cap}; {d}",
        rec.bytes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_fires_after_its_hold_then_rests_for_its_cooldown() {
    use nodescope_recorder::config::{RuleConfig, RuleMetric};
    let rule = RuleConfig {
        name: "hog".into(),
        metric: RuleMetric::WorkloadCpu,
        threshold: 0.5,
        hold: Duration::from_secs(2),
        cooldown: Duration::from_secs(3600),
        workload: Some("hog".into()),
        before: Some(Duration::from_secs(20)),
        after: Some(Duration::ZERO),
    };
    let s = setup(|c| c.rules = vec![rule.clone()]);
    let rules = nodescope_recorder::rules::Rules::default();
    let now = s.now;
    // The hog runs at 0.9 cores since 30 s ago: the first evaluation starts the hold.
    rules.evaluate(
        std::slice::from_ref(&rule),
        &s.rec,
        &s.inc,
        now - 3000,
        true,
    );
    assert!(s.inc.list().is_empty(), "held for less than `hold`");
    rules.evaluate(std::slice::from_ref(&rule), &s.rec, &s.inc, now, true);
    let l = s.inc.list();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].trigger.kind, "rule");
    assert_eq!(l[0].trigger.name, "hog");
    assert!(
        l[0].trigger.reason.as_deref().unwrap().contains("/hog"),
        "{:?}",
        l[0].trigger
    );
    // The baseline ends where the condition first held.
    assert!(
        l[0].baseline.to <= (now - 3000) as f64 / 1000.0 + 0.001,
        "{:?}",
        l[0]
    );
    // Still above the threshold: the cooldown keeps it from firing again.
    rules.evaluate(std::slice::from_ref(&rule), &s.rec, &s.inc, now, true);
    rules.evaluate(&[rule], &s.rec, &s.inc, now + 5000, true);
    assert_eq!(s.inc.list().len(), 1);
    wait_ready(&s.app, &l[0].id).await;
}

/// Stands in for the profiler: records what it was asked, answers with fixed bytes or an
/// error.
struct FakeOffCpu {
    asked: parking_lot::Mutex<Vec<u64>>,
    answer: Result<Vec<u8>, String>,
}

#[async_trait::async_trait]
impl OnDemandProfiler for FakeOffCpu {
    async fn offcpu_node(&self, seconds: u64) -> Result<Vec<u8>, String> {
        self.asked.lock().push(seconds);
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        self.answer.clone()
    }
}

async fn offcpu_case(
    answer: Option<Result<Vec<u8>, String>>,
    after: &str,
) -> (Vec<u64>, serde_json::Value, Option<Vec<u8>>, String) {
    let services = Services::default();
    let fake = answer.map(|answer| {
        Arc::new(FakeOffCpu {
            asked: Default::default(),
            answer,
        })
    });
    if let Some(f) = &fake {
        services.provide::<dyn OnDemandProfiler>(f.clone());
    }
    let s = setup_with(services, |_| {});
    let (st, _, b) = call(
        &s.app,
        "POST",
        "/api/v1/incidents",
        &format!(r#"{{"before":"20s","after":"{after}"}}"#),
    )
    .await;
    assert_eq!(st, 202, "{}", String::from_utf8_lossy(&b));
    let id = json(&b)["id"].as_str().unwrap().to_string();
    wait_ready(&s.app, &id).await;
    let file = |name: String| {
        let app = s.app.clone();
        async move {
            let (st, _, b) = call(&app, "GET", &name, "").await;
            (st == 200).then_some(b)
        }
    };
    let manifest = json(
        &file(format!("/api/v1/incidents/{id}/files/manifest.json"))
            .await
            .unwrap(),
    );
    let pb = file(format!(
        "/api/v1/incidents/{id}/files/offcpu-incident.pb.gz"
    ))
    .await;
    let summary = String::from_utf8(
        file(format!("/api/v1/incidents/{id}/files/summary.md"))
            .await
            .unwrap(),
    )
    .unwrap();
    let asked = fake.map(|f| f.asked.lock().clone()).unwrap_or_default();
    (asked, manifest, pb, summary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_after_window_brings_an_offcpu_profile_of_the_node_or_says_why_not() {
    let profile = vec![0x1f, 0x8b, 8, 0, 1, 2, 3];
    // The profiler answers: the file is in the bundle, listed with its checksum.
    let (asked, m, pb, summary) = offcpu_case(Some(Ok(profile.clone())), "2s").await;
    assert_eq!(asked, vec![2], "the profile covers the after window");
    assert_eq!(pb.as_deref(), Some(&profile[..]));
    assert_eq!(m["offcpu"]["file"], "offcpu-incident.pb.gz", "{m}");
    let listed = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "offcpu-incident.pb.gz")
        .unwrap_or_else(|| panic!("not listed: {m}"));
    assert_eq!(listed["bytes"], profile.len());
    assert!(
        summary.contains("go tool pprof offcpu-incident.pb.gz"),
        "{summary}"
    );
    // The profiler refuses: no file, and the manifest and summary say why.
    let (asked, m, pb, summary) =
        offcpu_case(Some(Err("eBPF unavailable: not root".into())), "1s").await;
    assert_eq!(asked, vec![1]);
    assert!(pb.is_none());
    assert_eq!(m["offcpu"]["error"], "eBPF unavailable: not root", "{m}");
    assert!(
        summary.contains("none: eBPF unavailable: not root"),
        "{summary}"
    );
    // No profiler at all.
    let (_, m, pb, _) = offcpu_case(None, "1s").await;
    assert!(pb.is_none());
    assert!(
        m["offcpu"]["error"]
            .as_str()
            .unwrap()
            .contains("profiling is off"),
        "{m}"
    );
    // No after window: nothing asked.
    let (asked, m, pb, _) = offcpu_case(Some(Ok(profile)), "0s").await;
    assert!(asked.is_empty() && pb.is_none());
    assert!(m["offcpu"].is_null(), "{m}");
}
