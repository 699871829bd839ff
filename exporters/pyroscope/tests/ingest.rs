//! The Pyroscope exporter against a local /ingest sink: query string, multipart body,
//! tenant header, retries on 503 with the WAL on.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Multipart, Query, State};
use axum::http::{HeaderMap, StatusCode};
use nodescope_delivery::ExporterContext;
use nodescope_exporter_pyroscope::PyroscopeConfig;
use nodescope_model::{ExporterQueue, Profile, Resource, Signal};
use parking_lot::Mutex;

#[derive(Clone, Debug)]
struct Got {
    query: BTreeMap<String, String>,
    headers: HeaderMap,
    field: String,
    file_name: Option<String>,
    profile: Vec<u8>,
    status: u16,
}

#[derive(Clone, Default)]
struct St {
    got: Arc<Mutex<Vec<Got>>>,
    fail_first: Arc<Mutex<u32>>,
}

async fn ingest(
    State(s): State<St>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    mut mp: Multipart,
) -> StatusCode {
    let mut field = String::new();
    let mut file_name = None;
    let mut profile = vec![];
    while let Ok(Some(f)) = mp.next_field().await {
        field = f.name().unwrap_or_default().to_string();
        file_name = f.file_name().map(String::from);
        profile = f.bytes().await.unwrap().to_vec();
    }
    let status = {
        let mut n = s.fail_first.lock();
        if *n > 0 {
            *n -= 1;
            503
        } else {
            200
        }
    };
    s.got.lock().push(Got {
        query,
        headers,
        field,
        file_name,
        profile,
        status,
    });
    StatusCode::from_u16(status).unwrap()
}

async fn sink(fail_first: u32) -> (u16, St) {
    let st = St::default();
    *st.fail_first.lock() = fail_first;
    let app = axum::Router::new()
        .route("/ingest", axum::routing::post(ingest))
        .with_state(st.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (port, st)
}

fn profile(raw: &[u8]) -> Profile {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(raw).unwrap();
    Profile {
        start: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        duration: Duration::from_secs(15),
        sample_rate_hz: 19,
        labels: vec![
            ("workload".into(), "nginx.service".into()),
            ("workload_kind".into(), "systemd_unit".into()),
        ],
        pprof_gz: gz.finish().unwrap(),
    }
}

async fn run(cfg: &PyroscopeConfig, ctx: &ExporterContext, profiles: Vec<Profile>) {
    let e = cfg.build(ctx).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    for p in profiles {
        tx.send(Signal::Profile(Arc::new(p))).await.unwrap();
    }
    drop(tx);
    tokio::time::timeout(
        Duration::from_secs(30),
        e.run(ExporterQueue {
            rx,
            flush_timeout: Duration::from_secs(10),
        }),
    )
    .await
    .expect("exporter finished");
}

fn ctx() -> ExporterContext {
    let mut r = Resource::default();
    r.set("host.name", "node-a");
    ExporterContext {
        resource: r,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_request_has_query_multipart_and_tenant() {
    let (port, st) = sink(0).await;
    let mut cfg = PyroscopeConfig {
        enabled: true,
        endpoint: format!("http://127.0.0.1:{port}"),
        tenant_id: Some("team-a".into()),
        ..Default::default()
    };
    cfg.labels.insert("cluster".into(), "c1".into());
    cfg.batch.timeout = Duration::from_millis(50);
    let mut issues = nodescope_model::config::Issues::default();
    cfg.validate("exporters.pyroscope", &mut issues);
    assert!(issues.is_empty(), "{:?}", issues.list);
    let raw = b"\x0a\x04test-pprof-bytes".to_vec();
    let p = profile(&raw);
    let ctx = ctx();
    run(&cfg, &ctx, vec![p.clone()]).await;
    let got = st.got.lock().clone();
    assert_eq!(got.len(), 1);
    let g = &got[0];
    assert_eq!(
        g.query["name"],
        "nodescope{cluster=c1,node=node-a,workload=nginx.service,workload_kind=systemd_unit}"
    );
    assert_eq!(g.query["from"], "1700000000");
    assert_eq!(g.query["until"], "1700000015");
    assert_eq!(g.query["format"], "pprof");
    assert_eq!(g.query["sampleRate"], "19");
    assert_eq!(g.headers["x-scope-orgid"], "team-a");
    assert!(g.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("multipart/form-data; boundary="));
    assert_eq!(g.field, "profile");
    assert_eq!(g.file_name.as_deref(), Some("profile.pprof"));
    assert_eq!(
        g.profile, p.pprof_gz,
        "the gzip pprof goes out byte for byte"
    );
    let mut dec = vec![];
    flate2::read::GzDecoder::new(g.profile.as_slice())
        .read_to_end(&mut dec)
        .unwrap();
    assert_eq!(dec, raw);
    let _ = SystemTime::now();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_503_and_keeps_profiles_in_the_wal() {
    let (port, st) = sink(2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = PyroscopeConfig {
        enabled: true,
        endpoint: format!("http://127.0.0.1:{port}/"),
        ..Default::default()
    };
    cfg.batch.timeout = Duration::from_millis(50);
    cfg.retry.initial_backoff = Duration::from_millis(100);
    cfg.wal.enabled = true;
    cfg.wal.dir = dir.path().to_path_buf();
    let ctx = ctx();
    run(&cfg, &ctx, vec![profile(b"one"), profile(b"two")]).await;
    let got = st.got.lock().clone();
    let statuses: Vec<u16> = got.iter().map(|g| g.status).collect();
    assert_eq!(statuses, vec![503, 503, 200, 200]);
    let ok: Vec<_> = got.iter().filter(|g| g.status == 200).collect();
    assert_eq!(ok[0].profile, profile(b"one").pprof_gz);
    assert_eq!(ok[1].profile, profile(b"two").pprof_gz);
    assert!(
        dir.path().join("pyroscope").is_dir(),
        "WAL lives under <dir>/pyroscope"
    );
    let m = ctx.self_metrics.collect();
    let v = |n: &str| {
        m.iter()
            .find(|f| f.name == n)
            .map(|f| f.points[0].value.clone())
            .unwrap()
    };
    assert_eq!(
        v("nodescope_exporter_sent_total"),
        nodescope_model::Value::Number(2.0)
    );
    assert_eq!(
        v("nodescope_exporter_retries_total"),
        nodescope_model::Value::Number(2.0)
    );
}
