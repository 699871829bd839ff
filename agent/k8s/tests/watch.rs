//! The pod watcher against a loopback HTTP server that replays API responses in the
//! Kubernetes API's JSON shape (tests/fixtures): paginated list, watch ADDED / MODIFIED /
//! DELETED / BOOKMARK, ERROR 410 → re-list, resume from the last resourceVersion.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use nodescope_k8s::KubernetesConfig;
use nodescope_model::selfmetrics::SelfMetrics;
use nodescope_model::status::StatusRegistry;
use nodescope_model::workload::classify_cgroup_path;
use nodescope_model::Value;
use parking_lot::Mutex;
use tokio::sync::mpsc;

const WEB_NGINX: &str = "3f9a1c0d5b7e4a2f8c6d1e0b9a8f7e6d5c4b3a29180716f5e4d3c2b1a0f9e8d7";
const WEB_NGINX2: &str = "dadf5d1aca357f514cd558b11140786e46e729f25ddc7f847382fdff127a44b8";
const WEB_PROXY: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const WEB_INIT: &str = "0c1d2e3f405162738495a6b7c8d9e0f1021324354657687980a1b2c3d4e5f607";
const REDIS: &str = "757c70c48a431c72d2facb2a3fa91c662922687eb9264195379fde9544f38dee";
const API: &str = "6b7e45e136716ed030ebdb79bcc5674204b1abd6cee0add02ea4c2e891e65183";
const WORKER: &str = "b427307b7f428bcf6a50bb40ebef194ba358f77dbdb3e7025f46be02b922f5af";
const UNKNOWN: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

fn fixture(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

type Chunk = Result<axum::body::Bytes, std::io::Error>;

#[derive(Debug, Clone)]
struct Seen {
    query: HashMap<String, String>,
    auth: Option<String>,
    at: std::time::Instant,
}

#[derive(Default)]
struct Api {
    seen: Vec<Seen>,
    /// Full list responses, served in order (page 2 is served for `continue=`).
    lists: VecDeque<String>,
    /// Each watch request hands the test a sender for its event stream.
    watch_tx: Option<mpsc::Sender<mpsc::Sender<Chunk>>>,
    /// Answer the next this many lists with 500.
    fail_lists: usize,
}

struct ReceiverStream(mpsc::Receiver<Chunk>);
impl futures_core::Stream for ReceiverStream {
    type Item = Chunk;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Chunk>> {
        self.0.poll_recv(cx)
    }
}

async fn pods(
    State(api): State<Arc<Mutex<Api>>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut a = api.lock();
    a.seen.push(Seen {
        query: q.clone(),
        auth,
        at: std::time::Instant::now(),
    });
    if q.get("watch").map(String::as_str) == Some("true") {
        let (tx, rx) = mpsc::channel::<Chunk>(16);
        let Some(wtx) = a.watch_tx.clone() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        drop(a);
        let _ = wtx.try_send(tx);
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(ReceiverStream(rx)))
            .unwrap();
    }
    if a.fail_lists > 0 {
        a.fail_lists -= 1;
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"etcdserver: leader changed","code":500}"#,
        )
            .into_response();
    }
    if q.contains_key("continue") {
        return (
            [("content-type", "application/json")],
            fixture("pod-list-page2.json"),
        )
            .into_response();
    }
    match a.lists.pop_front() {
        Some(body) => ([("content-type", "application/json")], body).into_response(),
        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..250 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn counter(m: &SelfMetrics, name: &str, label: (&str, &str)) -> f64 {
    m.collect()
        .into_iter()
        .find(|f| f.name == name)
        .and_then(|f| {
            f.points
                .into_iter()
                .find(|p| p.labels.iter().any(|(k, v)| k == label.0 && v == label.1))
        })
        .map(|p| match p.value {
            Value::Number(n) => n,
            other => panic!("{other:?}"),
        })
        .unwrap_or_else(|| panic!("no {name}{{{}={}}}", label.0, label.1))
}

async fn send_line(tx: &mpsc::Sender<Chunk>, fixture_name: &str) {
    tx.send(Ok(fixture(fixture_name).into()))
        .await
        .expect("watch stream open");
}

#[tokio::test]
async fn list_watch_relist_against_recorded_api_responses() {
    let api = Arc::new(Mutex::new(Api::default()));
    let (wtx, mut wrx) = mpsc::channel(4);
    {
        let mut a = api.lock();
        a.watch_tx = Some(wtx);
        a.lists.push_back(fixture("pod-list-page1.json"));
        a.lists.push_back(fixture("pod-list-relist.json"));
        a.fail_lists = 1; // first list fails: backoff, then retried
    }
    let app = Router::new()
        .route("/api/v1/pods", get(pods))
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "test-token\n").unwrap();
    let cfg = KubernetesConfig {
        enabled: true,
        node_name: "node-a".into(),
        api_server: format!("http://{addr}"),
        token_file: token.clone(),
        ca_file: dir.path().join("absent-ca.crt"),
        watch_timeout: Duration::from_secs(60),
        initial_backoff: Duration::from_millis(200),
        // This test is about the pod watch; peers have their own (tests/peers.rs).
        peers: false,
        ..Default::default()
    };
    let metrics = SelfMetrics::new();
    let status = StatusRegistry::default();
    let md = cfg.build(&metrics, &status).expect("build");
    let lookup = md.lookup();
    let cache = md.cache.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(md.watcher.run(async {
        let _ = stop_rx.await;
    }));

    // Initial list (after one 500 and a ~200 ms backoff), two pages.
    wait_for("initial list", || cache.len() == 3).await;
    let nginx = lookup
        .pod_for_container(WEB_NGINX)
        .expect("nginx container");
    assert_eq!(nginx.namespace, "shop");
    assert_eq!(nginx.pod, "web-7d4b9c8f6-x2x9q");
    assert_eq!(nginx.container, "nginx");
    assert_eq!(
        nginx.labels,
        vec![
            ("app.kubernetes.io/name".to_string(), "web".to_string()),
            (
                "app.kubernetes.io/instance".to_string(),
                "shop-web".to_string()
            ),
        ],
        "only allow-listed labels, in allow-list order; pod-template-hash dropped"
    );
    assert_eq!(
        lookup.pod_for_container(WEB_PROXY).unwrap().container,
        "istio-proxy"
    );
    assert_eq!(
        lookup.pod_for_container(WEB_INIT).unwrap().container,
        "istio-init"
    );
    let redis = lookup.pod_for_container(REDIS).unwrap();
    assert_eq!(
        (redis.namespace.as_str(), redis.pod.as_str()),
        ("cache", "redis-0")
    );
    assert_eq!(redis.labels, vec![("app".to_string(), "redis".to_string())]);
    // The runtime prefix form resolves too.
    assert!(lookup
        .pod_for_container(&format!("containerd://{REDIS}"))
        .is_some());
    // A container id that matches no pod.
    assert!(lookup.pod_for_container(UNKNOWN).is_none());
    // Ids as the probes get them: from a cgroup path.
    let w = classify_cgroup_path(&format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f3c1a9e_5b2d_4c8e_9a71_2d6e4f8b1c30.slice/cri-containerd-{WEB_NGINX}.scope"
    ));
    assert_eq!(
        lookup.pod_for_container(&w.id).unwrap().pod,
        "web-7d4b9c8f6-x2x9q"
    );

    // Watch: resumes from the list's resourceVersion with bookmarks, on our node only.
    let stream1 = tokio::time::timeout(Duration::from_secs(5), wrx.recv())
        .await
        .expect("watch request")
        .unwrap();
    {
        let a = api.lock();
        let lists: Vec<&Seen> = a
            .seen
            .iter()
            .filter(|s| !s.query.contains_key("watch"))
            .collect();
        assert_eq!(lists.len(), 3, "failed list, page 1, page 2");
        assert!(lists[2]
            .query
            .get("continue")
            .is_some_and(|c| !c.is_empty()));
        // Served by the API server's watch cache, not etcd: resourceVersion=0 on the
        // first page (also after the failure); the continued page carries no version
        // (the API refuses one with `continue`).
        for l in &lists[..2] {
            let q = &l.query;
            assert_eq!(q.get("resourceVersion").map(String::as_str), Some("0"));
            assert_eq!(q.get("limit").map(String::as_str), Some("500"));
        }
        assert!(!lists[2].query.contains_key("resourceVersion"));
        let w = a.seen.last().unwrap();
        assert_eq!(
            w.query.get("resourceVersion").map(String::as_str),
            Some("1000")
        );
        assert_eq!(
            w.query.get("allowWatchBookmarks").map(String::as_str),
            Some("true")
        );
        assert_eq!(
            w.query.get("timeoutSeconds").map(String::as_str),
            Some("60")
        );
        for s in &a.seen {
            assert_eq!(
                s.query.get("fieldSelector").map(String::as_str),
                Some("spec.nodeName=node-a")
            );
            assert_eq!(s.auth.as_deref(), Some("Bearer test-token"));
        }
    }

    send_line(&stream1, "watch-added.json").await;
    wait_for("ADDED api pod", || lookup.pod_for_container(API).is_some()).await;
    assert_eq!(
        lookup.pod_for_container(API).unwrap().pod,
        "api-5f6c8d9b7-k8m2p"
    );

    send_line(&stream1, "watch-modified.json").await;
    wait_for("MODIFIED: restarted nginx has a new id", || {
        lookup.pod_for_container(WEB_NGINX2).is_some()
    })
    .await;
    assert!(
        lookup.pod_for_container(WEB_NGINX).is_none(),
        "old container id forgotten"
    );
    assert_eq!(
        lookup.pod_for_container(WEB_NGINX2).unwrap().labels[1].1,
        "shop-web-canary",
        "label change applied"
    );

    send_line(&stream1, "watch-deleted.json").await;
    wait_for("DELETED redis", || {
        lookup.pod_for_container(REDIS).is_none()
    })
    .await;
    assert_eq!(cache.len(), 3);

    send_line(&stream1, "watch-bookmark.json").await;
    // End the stream like the server's timeoutSeconds would: the watcher resumes from
    // the bookmark's resourceVersion without re-listing.
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(stream1);
    let stream2 = tokio::time::timeout(Duration::from_secs(5), wrx.recv())
        .await
        .expect("resumed watch")
        .unwrap();
    {
        let a = api.lock();
        let w = a.seen.last().unwrap();
        assert_eq!(
            w.query.get("resourceVersion").map(String::as_str),
            Some("1010")
        );
        assert_eq!(
            a.seen
                .iter()
                .filter(|s| !s.query.contains_key("watch"))
                .count(),
            3
        );
    }

    // 410 Gone → full re-list, cache replaced, watch from the new version.
    send_line(&stream2, "watch-error-410.json").await;
    let stream3 = tokio::time::timeout(Duration::from_secs(5), wrx.recv())
        .await
        .expect("watch after relist")
        .unwrap();
    assert!(
        lookup.pod_for_container(WORKER).is_some(),
        "pod from the re-list"
    );
    assert!(lookup.pod_for_container(WEB_NGINX2).is_some());
    assert!(lookup.pod_for_container(REDIS).is_none());
    assert_eq!(cache.len(), 3);
    {
        let a = api.lock();
        assert_eq!(
            a.seen
                .last()
                .unwrap()
                .query
                .get("resourceVersion")
                .map(String::as_str),
            Some("2000")
        );
        // The re-list after 410 asks the watch cache for a state not older than the
        // newest version seen (the bookmark's), unpaged so the cache can serve it.
        let relist = a
            .seen
            .iter()
            .rfind(|s| !s.query.contains_key("watch"))
            .unwrap();
        assert_eq!(
            relist.query.get("resourceVersion").map(String::as_str),
            Some("1010")
        );
        assert!(!relist.query.contains_key("limit"), "{:?}", relist.query);
    }

    assert_eq!(
        counter(
            &metrics,
            "nodescope_k8s_relists_total",
            ("reason", "initial")
        ),
        1.0
    );
    assert_eq!(
        counter(&metrics, "nodescope_k8s_relists_total", ("reason", "error")),
        1.0
    );
    assert_eq!(
        counter(&metrics, "nodescope_k8s_relists_total", ("reason", "gone")),
        1.0
    );
    for (t, n) in [
        ("ADDED", 1.0),
        ("MODIFIED", 1.0),
        ("DELETED", 1.0),
        ("BOOKMARK", 1.0),
        ("ERROR", 1.0),
    ] {
        assert_eq!(
            counter(&metrics, "nodescope_k8s_watch_events_total", ("type", t)),
            n,
            "{t}"
        );
    }
    let api_errors = metrics
        .collect()
        .into_iter()
        .find(|f| f.name == "nodescope_k8s_api_errors_total")
        .map(|f| f.points[0].value.clone());
    assert_eq!(api_errors, Some(Value::Number(1.0)), "the one failed list");
    assert!(counter(&metrics, "nodescope_k8s_lookups_total", ("result", "miss")) >= 1.0);
    let st = status.snapshot();
    let k = st.iter().find(|c| c.name == "kubernetes").unwrap();
    assert_eq!(k.details.get("pods").map(String::as_str), Some("3"));

    drop(stream3);
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("watcher stops on shutdown")
        .unwrap();
}

#[tokio::test]
async fn cache_bound_applies_to_lists() {
    let api = Arc::new(Mutex::new(Api::default()));
    let (wtx, mut wrx) = mpsc::channel(4);
    {
        let mut a = api.lock();
        a.watch_tx = Some(wtx);
        a.lists.push_back(fixture("pod-list-relist.json"));
    }
    let app = Router::new()
        .route("/api/v1/pods", get(pods))
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let cfg = KubernetesConfig {
        enabled: true,
        node_name: "node-a".into(),
        api_server: format!("http://{addr}"),
        token_file: "/nonexistent/token".into(),
        max_pods: 2,
        // This test is about the pod watch; peers have their own (tests/peers.rs).
        peers: false,
        ..Default::default()
    };
    let metrics = SelfMetrics::new();
    // The agent's entry point: build + spawn, returns the lookup.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let lookup = cfg
        .start(&metrics, &StatusRegistry::default(), async {
            let _ = stop_rx.await;
        })
        .unwrap()
        .expect("enabled");
    let _stream = tokio::time::timeout(Duration::from_secs(5), wrx.recv())
        .await
        .expect("watch")
        .unwrap();
    // The list holds web, api, worker in that order; with room for 2 the first is evicted.
    assert!(lookup.pod_for_container(WEB_NGINX2).is_none());
    assert!(lookup.pod_for_container(API).is_some());
    assert!(lookup.pod_for_container(WORKER).is_some());
    assert_eq!(
        counter(
            &metrics,
            "nodescope_k8s_cache_evictions_total",
            ("reason", "capacity")
        ),
        1.0
    );
    // No token file → no Authorization header.
    assert!(api.lock().seen.iter().all(|s| s.auth.is_none()));
    let _ = stop_tx.send(());
}

#[tokio::test]
async fn periodic_resync_relists_while_the_watch_is_open() {
    let api = Arc::new(Mutex::new(Api::default()));
    let (wtx, mut wrx) = mpsc::channel(4);
    {
        let mut a = api.lock();
        a.watch_tx = Some(wtx);
        a.lists.push_back(fixture("pod-list-relist.json"));
        a.lists.push_back(fixture("pod-list-relist.json"));
    }
    let app = Router::new()
        .route("/api/v1/pods", get(pods))
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let cfg = KubernetesConfig {
        enabled: true,
        node_name: "node-a".into(),
        api_server: format!("http://{addr}"),
        token_file: "/nonexistent/token".into(),
        resync_interval: Duration::from_secs(1),
        // This test is about the pod watch; peers have their own (tests/peers.rs).
        peers: false,
        ..Default::default()
    };
    let metrics = SelfMetrics::new();
    let md = cfg.build(&metrics, &StatusRegistry::default()).unwrap();
    let task = tokio::spawn(md.watcher.run(std::future::pending()));
    // First watch stays open (its sender is held); the resync timer must still re-list.
    let _first = tokio::time::timeout(Duration::from_secs(5), wrx.recv())
        .await
        .expect("first watch")
        .unwrap();
    let _second = tokio::time::timeout(Duration::from_secs(5), wrx.recv())
        .await
        .expect("watch after the resync re-list")
        .unwrap();
    assert_eq!(
        counter(
            &metrics,
            "nodescope_k8s_relists_total",
            ("reason", "resync")
        ),
        1.0
    );
    assert_eq!(
        api.lock()
            .seen
            .iter()
            .filter(|s| !s.query.contains_key("watch"))
            .count(),
        2
    );
    task.abort();
}

/// Failed lists are retried with the shared exponential backoff, jittered: the delays
/// grow 100, 200, 400, 800 ms each within ±20 % (plus scheduling slack), and they are not
/// the exact doublings every agent of a cluster would otherwise share.
#[tokio::test]
async fn failed_lists_back_off_exponentially_with_jitter() {
    let api = Arc::new(Mutex::new(Api::default()));
    let (wtx, mut wrx) = mpsc::channel(4);
    {
        let mut a = api.lock();
        a.watch_tx = Some(wtx);
        a.fail_lists = 4;
        a.lists.push_back(fixture("pod-list-relist.json"));
    }
    let app = Router::new()
        .route("/api/v1/pods", get(pods))
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let cfg = KubernetesConfig {
        enabled: true,
        node_name: "node-a".into(),
        api_server: format!("http://{addr}"),
        token_file: "/nonexistent/token".into(),
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(10),
        // This test is about the pod watch; peers have their own (tests/peers.rs).
        peers: false,
        ..Default::default()
    };
    let metrics = SelfMetrics::new();
    let md = cfg.build(&metrics, &StatusRegistry::default()).unwrap();
    let task = tokio::spawn(md.watcher.run(std::future::pending()));
    let _watch = tokio::time::timeout(Duration::from_secs(10), wrx.recv())
        .await
        .expect("watch after the retried lists")
        .unwrap();
    task.abort();
    let a = api.lock();
    let times: Vec<std::time::Instant> = a
        .seen
        .iter()
        .filter(|s| !s.query.contains_key("watch"))
        .map(|s| s.at)
        .collect();
    assert_eq!(times.len(), 5, "4 failures then the list");
    let mut ratios = Vec::new();
    for (i, w) in times.windows(2).enumerate() {
        let gap = (w[1] - w[0]).as_secs_f64();
        let nominal = 0.1 * f64::from(1u32 << i);
        let r = gap / nominal;
        eprintln!("retry {i}: {gap:.3} s (nominal {nominal:.1} s, x{r:.3})");
        assert!(
            (0.79..=1.2 + 0.05 / nominal).contains(&r),
            "retry {i} after {gap} s, nominal {nominal} s"
        );
        ratios.push(r);
    }
    let spread = ratios.iter().cloned().fold(f64::MIN, f64::max)
        - ratios.iter().cloned().fold(f64::MAX, f64::min);
    assert!(spread > 0.01, "no jitter: {ratios:?}");
    assert_eq!(
        counter(&metrics, "nodescope_k8s_relists_total", ("reason", "error")),
        4.0
    );
}
