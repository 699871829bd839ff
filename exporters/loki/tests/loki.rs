//! Loki exporter against a receiver that decodes with Loki's official push.proto (vendored
//! in tests/proto), plus fault injection: outage and recovery, 429 + Retry-After, 400, a
//! slow backend, and kill -9 with the WAL.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use common::{Mode, Sink};
use nodescope_delivery::{ExporterContext, FsyncPolicy};
use nodescope_exporter_loki::LokiConfig;
use nodescope_model::{Exporter, ExporterQueue, LogRecord, Resource, Severity, Signal, Value};
use tokio::sync::mpsc;

fn ctx() -> ExporterContext {
    let mut resource = Resource::default();
    resource.set("host.name", "node-a");
    ExporterContext {
        resource,
        ..Default::default()
    }
}

fn cfg(url: &str) -> LokiConfig {
    let mut c = LokiConfig {
        enabled: true,
        endpoint: url.into(),
        ..Default::default()
    };
    c.batch.timeout = Duration::from_millis(100);
    c.retry.initial_backoff = Duration::from_millis(100);
    c.retry.max_backoff = Duration::from_secs(2);
    c.retry.request_timeout = Duration::from_secs(5);
    c
}

fn rec(seq: u64, kind: &'static str, workload_kind: &str) -> LogRecord {
    LogRecord {
        timestamp: SystemTime::now(),
        severity: Severity::Warn,
        kind: kind.into(),
        body: format!("seq={seq} connect to 10.0.0.9:443 failed: ECONNREFUSED"),
        labels: vec![("workload_kind".into(), workload_kind.into())],
        attributes: vec![
            ("pid".into(), (1000 + seq).to_string()),
            ("comm".into(), "curl".into()),
            ("peer".into(), "10.0.0.9:443".into()),
        ],
    }
}

fn seq_of(line: &str) -> u64 {
    line.strip_prefix("seq=")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no seq in {line:?}"))
}

fn metric(ctx: &ExporterContext, name: &str, reason: Option<&str>) -> f64 {
    ctx.self_metrics
        .collect()
        .into_iter()
        .find(|f| f.name == name)
        .and_then(|f| {
            f.points.into_iter().find(|p| {
                reason.is_none_or(|r| p.labels.iter().any(|(k, v)| k == "reason" && v == r))
            })
        })
        .map(|p| match p.value {
            Value::Number(v) => v,
            _ => f64::NAN,
        })
        .unwrap_or(f64::NAN)
}

fn start(
    exporter: Box<dyn Exporter>,
    flush: Duration,
) -> (mpsc::Sender<Signal>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(1024);
    let h = tokio::spawn(exporter.run(ExporterQueue {
        rx,
        flush_timeout: flush,
    }));
    (tx, h)
}

async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The receiver itself: it must accept what the upstream schema allows and refuse field
/// numbers it does not define, and the client-forbidden `EntryAdapter.parsed`.
#[test]
fn receiver_accepts_upstream_fields_and_refuses_others() {
    let snappy = |raw: &[u8]| snap::raw::Encoder::new().compress_vec(raw).unwrap();
    // PushRequest{streams: [StreamAdapter{entries: [EntryAdapter{line: "x"}]}]}
    let ok = [0x0a, 0x05, 0x12, 0x03, 0x12, 0x01, b'x'];
    let streams = common::decode_push(&snappy(&ok)).expect("valid push");
    assert_eq!(streams.len(), 1);
    assert_eq!(streams[0].entries[0].line, "x");
    // The same plus PushRequest field 9 (varint 1), which upstream does not define.
    let unknown = [0x0a, 0x05, 0x12, 0x03, 0x12, 0x01, b'x', 0x48, 0x01];
    let err = common::decode_push(&snappy(&unknown)).unwrap_err();
    assert!(err.contains("field number 9"), "{err}");
    // EntryAdapter.parsed (field 4) = [LabelPairAdapter{name: "a"}]
    let parsed = [0x0a, 0x07, 0x12, 0x05, 0x22, 0x03, 0x0a, 0x01, b'a'];
    let err = common::decode_push(&snappy(&parsed)).unwrap_err();
    assert!(err.contains("parsed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_decodes_streams_labels_metadata_and_order() {
    let sink = Sink::start().await;
    let mut c = cfg(&sink.url());
    c.tenant_id = Some("tenant-7".into());
    c.auth.username = Some("u".into());
    c.auth.password = Some("p".into());
    let ctx = ctx();
    let (tx, h) = start(c.build(&ctx).unwrap(), Duration::from_secs(5));
    // Two streams interleaved over several signals.
    for chunk in 0..10u64 {
        let v: Vec<_> = (0..10)
            .map(|i| {
                let seq = chunk * 10 + i;
                if seq % 3 == 0 {
                    rec(seq, "tcp_reset", "container")
                } else {
                    rec(seq, "tcp_connect_failed", "systemd_unit")
                }
            })
            .collect();
        tx.send(Signal::Logs(nodescope_model::LogBatch::from(v)))
            .await
            .unwrap();
    }
    drop(tx);
    h.await.unwrap();

    let reqs = sink.requests();
    assert!(!reqs.is_empty());
    let r0 = &reqs[0];
    assert_eq!(r0.headers["x-scope-orgid"], "tenant-7");
    assert_eq!(r0.headers["content-type"], "application/x-protobuf");
    assert_eq!(r0.headers["authorization"], "Basic dTpw");
    let entries = sink.accepted_entries();
    assert_eq!(entries.len(), 100);
    let mut by_stream: BTreeMap<String, Vec<common::Entry>> = BTreeMap::new();
    for (l, e) in entries {
        by_stream.entry(l).or_default().push(e);
    }
    let keys: Vec<_> = by_stream.keys().cloned().collect();
    assert_eq!(
        keys,
        vec![
            r#"{job="nodescope", kind="tcp_connect_failed", node="node-a", workload_kind="systemd_unit"}"#,
            r#"{job="nodescope", kind="tcp_reset", node="node-a", workload_kind="container"}"#,
        ]
    );
    for (labels, es) in &by_stream {
        // identifiers are structured metadata, never labels
        assert!(!labels.contains("pid"));
        let seqs: Vec<u64> = es.iter().map(|e| seq_of(&e.line)).collect();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, sorted, "stream {labels} out of order");
        let ts: Vec<i128> = es.iter().map(|e| e.ts_nanos).collect();
        assert!(
            ts.windows(2).all(|w| w[0] <= w[1]),
            "timestamps out of order"
        );
        let md: HashMap<_, _> = es[0].metadata.iter().cloned().collect();
        assert_eq!(md["level"], "warn");
        assert_eq!(md["comm"], "curl");
        assert_eq!(md["peer"], "10.0.0.9:443");
        assert_eq!(md["pid"], (1000 + seqs[0]).to_string());
    }
    assert_eq!(metric(&ctx, "nodescope_exporter_sent_total", None), 100.0);
}

/// Backend down (connection refused) for `NODESCOPE_TEST_OUTAGE_SECS` (default 60) while
/// events keep coming; then back: every sequence number arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_then_recovery_delivers_every_event() {
    let outage = Duration::from_secs(
        std::env::var("NODESCOPE_TEST_OUTAGE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
    let mut sink = Sink::start().await;
    let ctx = ctx();
    let mut c = cfg(&sink.url());
    c.retry.max_backoff = Duration::from_secs(3);
    let (tx, h) = start(c.build(&ctx).unwrap(), Duration::from_secs(10));
    let mut seq = 0u64;
    let emit = |seq: &mut u64| {
        let v: Vec<_> = (0..5)
            .map(|_| {
                *seq += 1;
                rec(*seq, "tcp_reset", "container")
            })
            .collect();
        Signal::Logs(nodescope_model::LogBatch::from(v))
    };
    tx.send(emit(&mut seq)).await.unwrap();
    wait_for("first delivery", Duration::from_secs(10), || {
        sink.accepted_entries().len() == 5
    })
    .await;
    sink.down().await;
    let t0 = Instant::now();
    while t0.elapsed() < outage {
        tx.send(emit(&mut seq)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(&ctx, "nodescope_exporter_retries_total", None) >= 3.0);
    sink.up().await;
    let total = seq;
    wait_for("backlog after the outage", Duration::from_secs(30), || {
        sink.accepted_entries().len() as u64 >= total
    })
    .await;
    drop(tx);
    h.await.unwrap();
    let got: Vec<u64> = sink
        .accepted_entries()
        .iter()
        .map(|(_, e)| seq_of(&e.line))
        .collect();
    assert_eq!(
        got,
        (1..=total).collect::<Vec<_>>(),
        "every event, once, in order"
    );
    assert_eq!(
        metric(
            &ctx,
            "nodescope_exporter_dropped_total",
            Some("memory_limit")
        ),
        0.0
    );
    eprintln!(
        "outage {outage:?}: {total} events, {} retries",
        metric(&ctx, "nodescope_exporter_retries_total", None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_429_is_honoured() {
    let sink = Sink::start().await;
    sink.set_mode(Mode::Fail {
        status: 429,
        retry_after: Some("2".into()),
        remaining: Some(1),
    });
    let ctx = ctx();
    let (tx, h) = start(
        cfg(&sink.url()).build(&ctx).unwrap(),
        Duration::from_secs(10),
    );
    tx.send(Signal::Logs(nodescope_model::LogBatch::from(vec![rec(
        1, "x", "host",
    )])))
    .await
    .unwrap();
    wait_for("the retried request", Duration::from_secs(10), || {
        sink.requests().len() >= 2
    })
    .await;
    drop(tx);
    h.await.unwrap();
    let r = sink.requests();
    assert_eq!(r.len(), 2);
    assert_eq!((r[0].status, r[1].status), (429, 200));
    let waited = r[1].at - r[0].at;
    assert!(
        waited >= Duration::from_millis(1950),
        "waited only {waited:?} despite Retry-After: 2 (initial backoff is 100ms)"
    );
    assert_eq!(metric(&ctx, "nodescope_exporter_retries_total", None), 1.0);
    assert_eq!(metric(&ctx, "nodescope_exporter_sent_total", None), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_request_is_not_retried_and_is_counted() {
    let sink = Sink::start().await;
    sink.set_mode(Mode::Fail {
        status: 400,
        retry_after: None,
        remaining: None,
    });
    let ctx = ctx();
    let mut c = cfg(&sink.url());
    c.batch.max_items = 4;
    let (tx, h) = start(c.build(&ctx).unwrap(), Duration::from_secs(5));
    let v: Vec<_> = (0..12).map(|i| rec(i, "tcp_reset", "host")).collect();
    tx.send(Signal::Logs(nodescope_model::LogBatch::from(v)))
        .await
        .unwrap();
    // Then the backend recovers: later data flows, rejected data is not re-sent.
    tokio::time::sleep(Duration::from_secs(1)).await;
    sink.set_mode(Mode::Accept);
    tx.send(Signal::Logs(nodescope_model::LogBatch::from(vec![rec(
        99,
        "tcp_reset",
        "host",
    )])))
    .await
    .unwrap();
    drop(tx);
    h.await.unwrap();
    let r = sink.requests();
    let statuses: Vec<u16> = r.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        vec![400, 400, 400, 200],
        "each rejected batch sent exactly once"
    );
    assert_eq!(
        metric(&ctx, "nodescope_exporter_dropped_total", Some("rejected")),
        12.0
    );
    assert_eq!(metric(&ctx, "nodescope_exporter_retries_total", None), 0.0);
    assert_eq!(metric(&ctx, "nodescope_exporter_sent_total", None), 1.0);
    let st = ctx.status.snapshot();
    assert!(st[0].last_error.as_deref().unwrap_or("").contains("400"));
    assert_eq!(st[0].dropped, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_keeps_memory_under_the_bound() {
    let sink = Sink::start().await;
    sink.set_mode(Mode::Delay(Duration::from_millis(500)));
    let ctx = ctx();
    let mut c = cfg(&sink.url());
    let limit = 1 << 20;
    c.batch.memory_limit_bytes = limit;
    c.batch.max_bytes = 256 << 10;
    c.batch.max_items = 2000;
    let (tx, h) = start(c.build(&ctx).unwrap(), Duration::from_secs(2));
    let mut peak = 0f64;
    let mut seq = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        let v: Vec<_> = (0..2000)
            .map(|_| {
                seq += 1;
                let mut r = rec(seq, "tcp_reset", "host");
                r.body.push_str(&"x".repeat(200 + (seq % 97) as usize));
                r
            })
            .collect();
        tx.send(Signal::Logs(nodescope_model::LogBatch::from(v)))
            .await
            .unwrap();
        peak = peak.max(metric(&ctx, "nodescope_exporter_queue_bytes", None));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(tx);
    h.await.unwrap();
    let dropped = metric(
        &ctx,
        "nodescope_exporter_dropped_total",
        Some("memory_limit"),
    );
    let sent = metric(&ctx, "nodescope_exporter_sent_total", None);
    let shutdown = metric(&ctx, "nodescope_exporter_dropped_total", Some("shutdown"));
    eprintln!("slow backend: produced {seq}, sent {sent}, dropped(memory_limit) {dropped}, dropped(shutdown) {shutdown}, peak queue bytes {peak}");
    assert!(
        peak > 0.0 && peak <= limit as f64,
        "peak {peak} over the {limit} bound"
    );
    assert!(
        dropped > 0.0,
        "the bound was never reached: the test proves nothing"
    );
    assert_eq!(
        sent + dropped + shutdown,
        seq as f64,
        "every item accounted for"
    );
}

const CHILD_ENV: &str = "NODESCOPE_LOKI_WAL_CHILD";

/// Runs inside the child process started by `wal_kill_9_then_restart_delivers_backlog`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of wal_kill_9_then_restart_delivers_backlog"]
async fn wal_child_entry() {
    let spec = std::env::var(CHILD_ENV).expect("started by the kill -9 test");
    let mut parts = spec.split(',');
    let (url, dir, emit): (String, String, u64) = (
        parts.next().unwrap().into(),
        parts.next().unwrap().into(),
        parts.next().unwrap().parse().unwrap(),
    );
    let mut c = cfg(&url);
    c.wal.enabled = true;
    c.wal.dir = dir.into();
    c.wal.fsync = FsyncPolicy::Never;
    c.batch.max_items = 50;
    let ctx = ctx();
    let (tx, _h) = start(c.build(&ctx).unwrap(), Duration::from_secs(5));
    for i in 0..emit {
        tx.send(Signal::Logs(nodescope_model::LogBatch::from(vec![rec(
            i + 1,
            "tcp_reset",
            "host",
        )])))
        .await
        .unwrap();
    }
    // Let the batches reach the WAL, then say so and keep running until killed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    println!(
        "READY wal_bytes={}",
        metric(&ctx, "nodescope_exporter_wal_bytes", None)
    );
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_kill_9_then_restart_delivers_backlog() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut sink = Sink::start().await;
    sink.set_mode(Mode::Fail {
        status: 503,
        retry_after: None,
        remaining: None,
    });
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let url = sink.url();
    let spawn = |emit: u64| {
        Command::new(&exe)
            .args([
                "--exact",
                "wal_child_entry",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{url},{},{emit}", dir.path().display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning the child")
    };
    const N: u64 = 500;
    let mut child = spawn(N);
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("READY"))
    })
    .await
    .unwrap()
    .expect("child reported READY");
    eprintln!("child: {line}");
    // kill -9 mid-outage
    let pid = child.id() as i32;
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc_kill(pid, 9) }, 0);
    let _ = child.wait();
    assert!(
        sink.accepted_entries().is_empty(),
        "nothing got through the outage"
    );
    assert!(
        !sink.requests().is_empty(),
        "the child was sending (and failing)"
    );
    // backend back; restart the agent without new data: the backlog must arrive
    sink.down().await;
    sink.set_mode(Mode::Accept);
    sink.up().await;
    let mut child = spawn(0);
    wait_for("the WAL backlog", Duration::from_secs(30), || {
        sink.accepted_entries().len() as u64 >= N
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let mut got: Vec<u64> = sink
        .accepted_entries()
        .iter()
        .map(|(_, e)| seq_of(&e.line))
        .collect();
    let delivered = got.len();
    got.sort_unstable();
    got.dedup();
    assert_eq!(
        got,
        (1..=N).collect::<Vec<_>>(),
        "every event after kill -9 + restart"
    );
    assert!(
        delivered as u64 - N <= 50,
        "duplicates bounded to one batch: {delivered}"
    );
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
