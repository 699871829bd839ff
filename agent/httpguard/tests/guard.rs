//! HTTP hardening tests: the middleware through `tower::ServiceExt::oneshot`, and the real
//! server (`serve`) on loopback for slow requests and mTLS.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use nodescope_httpguard::{harden, serve, Refusal, RefusalCounters, SecurityConfig, TlsConfig};
use nodescope_model::selfmetrics::SelfMetrics;
use nodescope_model::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

const TOKEN: &str = "correct-horse-battery-staple";

fn app() -> Router {
    Router::new()
        .route("/metrics", get(|| async { "node_load1 0\n" }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/api/v1/status", get(|| async { "{}" }))
        .route("/debug/pprof/profile", get(|| async { "profile" }))
        .route("/api/v1/echo", post(|body: String| async move { body }))
}

fn settings(cfg: SecurityConfig) -> nodescope_httpguard::GuardSettings {
    cfg.build().expect("valid config").with_token(TOKEN)
}

fn refused(metrics: &SelfMetrics, reason: &str) -> f64 {
    metrics
        .collect()
        .into_iter()
        .find(|f| f.name == "nodescope_http_refused_total")
        .and_then(|f| {
            f.points
                .into_iter()
                .find(|p| p.labels.iter().any(|(k, v)| k == "reason" && v == reason))
        })
        .map(|p| match p.value {
            Value::Number(n) => n,
            other => panic!("unexpected value {other:?}"),
        })
        .unwrap_or_else(|| panic!("no series for reason {reason}"))
}

async fn call(router: &Router, req: Request<Body>) -> axum::response::Response {
    router.clone().oneshot(req).await.expect("infallible")
}

fn get_req(path: &str, token: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn loopback_default_needs_no_token() {
    let m = SelfMetrics::new();
    let r = harden(app(), &settings(SecurityConfig::default()), true, &m);
    for p in [
        "/api/v1/status",
        "/debug/pprof/profile",
        "/metrics",
        "/healthz",
    ] {
        assert_eq!(
            call(&r, get_req(p, None)).await.status(),
            StatusCode::OK,
            "{p}"
        );
    }
    assert_eq!(refused(&m, "unauthenticated"), 0.0);
}

#[tokio::test]
async fn non_loopback_requires_token_for_api_and_debug() {
    let m = SelfMetrics::new();
    let r = harden(app(), &settings(SecurityConfig::default()), false, &m);

    let resp = call(&r, get_req("/api/v1/status", None)).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().get(header::WWW_AUTHENTICATE).is_some());
    assert_eq!(
        call(&r, get_req("/debug/pprof/profile", None))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    // A non-bearer scheme is no credential.
    let basic = Request::get("/api/v1/status")
        .header(header::AUTHORIZATION, "Basic dXNlcjpwYXNz")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&r, basic).await.status(), StatusCode::UNAUTHORIZED);

    assert_eq!(
        call(&r, get_req("/api/v1/status", Some("wrong")))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    // A prefix of the right token is still wrong.
    assert_eq!(
        call(&r, get_req("/api/v1/status", Some(&TOKEN[..10])))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&r, get_req("/api/v1/status", Some(TOKEN)))
            .await
            .status(),
        StatusCode::OK
    );
    // Open paths.
    assert_eq!(
        call(&r, get_req("/metrics", None)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        call(&r, get_req("/healthz", None)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        call(&r, get_req("/readyz", None)).await.status(),
        StatusCode::OK
    );

    assert_eq!(refused(&m, "unauthenticated"), 3.0);
    assert_eq!(refused(&m, "forbidden"), 2.0);
}

#[tokio::test]
async fn protect_metrics_closes_metrics_but_not_health() {
    let m = SelfMetrics::new();
    let cfg = SecurityConfig {
        protect_metrics: true,
        ..Default::default()
    };
    let r = harden(app(), &settings(cfg), false, &m);
    assert_eq!(
        call(&r, get_req("/metrics", None)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&r, get_req("/metrics", Some(TOKEN))).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        call(&r, get_req("/healthz", None)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn no_token_configured_refuses_every_credential() {
    let m = SelfMetrics::new();
    let s = SecurityConfig::default().build().unwrap();
    assert!(!s.has_token());
    let r = harden(app(), &s, false, &m);
    assert_eq!(
        call(&r, get_req("/api/v1/status", Some("anything")))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&r, get_req("/api/v1/status", None)).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn profile_requests_are_rate_limited_with_retry_after() {
    let m = SelfMetrics::new();
    let cfg = SecurityConfig {
        profile_requests_per_minute: 2,
        profile_burst: 2,
        ..Default::default()
    };
    let r = harden(app(), &settings(cfg), false, &m);
    // Refused (401) requests do not use up the budget.
    for _ in 0..5 {
        assert_eq!(
            call(&r, get_req("/debug/pprof/profile", None))
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    for _ in 0..2 {
        assert_eq!(
            call(&r, get_req("/debug/pprof/profile", Some(TOKEN)))
                .await
                .status(),
            StatusCode::OK
        );
    }
    let resp = call(&r, get_req("/debug/pprof/profile", Some(TOKEN))).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp
        .headers()
        .get(header::RETRY_AFTER)
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "retry-after {retry}");
    // Other paths are not rate limited.
    assert_eq!(
        call(&r, get_req("/api/v1/status", Some(TOKEN)))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(refused(&m, "rate_limited"), 1.0);
}

#[tokio::test]
async fn loopback_clients_profile_freely_and_refused_requests_give_tokens_back() {
    let m = SelfMetrics::new();
    let cfg = SecurityConfig {
        profile_requests_per_minute: 1,
        profile_burst: 2,
        ..Default::default()
    };
    let app = app().route(
        "/debug/pprof/bad",
        get(|| async { (StatusCode::BAD_REQUEST, "seconds: must be 1..=300") }),
    );
    // A person at the node (the listener on loopback): never limited.
    let r = harden(app.clone(), &settings(cfg.clone()), true, &m);
    for _ in 0..10 {
        assert_eq!(
            call(&r, get_req("/debug/pprof/profile", None))
                .await
                .status(),
            StatusCode::OK
        );
    }
    // A loopback client of a non-loopback listener: not limited either.
    let local = |path: &str, peer: &str| {
        let mut req = get_req(path, Some(TOKEN));
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo::<SocketAddr>(
                peer.parse().unwrap(),
            ));
        req
    };
    let r = harden(app, &settings(cfg), false, &m);
    for _ in 0..10 {
        assert_eq!(
            call(&r, local("/debug/pprof/profile", "127.0.0.1:5555"))
                .await
                .status(),
            StatusCode::OK
        );
    }
    // Remote: bad requests (400) and unauthenticated ones (401) do not use up the burst.
    for _ in 0..5 {
        assert_eq!(
            call(&r, local("/debug/pprof/bad", "10.1.2.3:5555"))
                .await
                .status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            call(&r, get_req("/debug/pprof/profile", None))
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    for _ in 0..2 {
        assert_eq!(
            call(&r, local("/debug/pprof/profile", "10.1.2.3:5555"))
                .await
                .status(),
            StatusCode::OK
        );
    }
    let resp = call(&r, local("/debug/pprof/profile", "10.1.2.3:5555")).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
    assert!(String::from_utf8_lossy(&body).contains("profile_requests_per_minute"));
    assert_eq!(refused(&m, "rate_limited"), 1.0);
}

#[tokio::test]
async fn oversized_body_and_headers_are_refused() {
    let m = SelfMetrics::new();
    let cfg = SecurityConfig {
        max_body_bytes: 1024,
        max_header_bytes: 2048,
        ..Default::default()
    };
    let r = harden(app(), &settings(cfg), true, &m);

    let ok = Request::post("/api/v1/echo")
        .body(Body::from("hello"))
        .unwrap();
    let resp = call(&r, ok).await;
    assert_eq!(resp.status(), StatusCode::OK);

    // Declared too large.
    let big = Request::post("/api/v1/echo")
        .header(header::CONTENT_LENGTH, "4096")
        .body(Body::from(vec![b'x'; 4096]))
        .unwrap();
    assert_eq!(call(&r, big).await.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Streamed without a length (chunked): caught while reading.
    let stream = futures_stream(vec![vec![b'y'; 700], vec![b'y'; 700]]);
    let chunked = Request::post("/api/v1/echo").body(stream).unwrap();
    assert_eq!(
        call(&r, chunked).await.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );

    let huge = Request::get("/metrics")
        .header("x-filler", "z".repeat(4000))
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        call(&r, huge).await.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    assert_eq!(refused(&m, "body_too_large"), 2.0);
    assert_eq!(refused(&m, "headers_too_large"), 1.0);
}

fn futures_stream(chunks: Vec<Vec<u8>>) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        for c in chunks {
            if tx.send(Ok(bytes::Bytes::from(c))).await.is_err() {
                return;
            }
        }
    });
    Body::from_stream(ReceiverStream(rx))
}

struct ReceiverStream(tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>);

impl futures_core::Stream for ReceiverStream {
    type Item = Result<bytes::Bytes, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

struct Server {
    addr: SocketAddr,
    metrics: SelfMetrics,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(cfg: SecurityConfig, loopback_mode: bool) -> Self {
        let s = settings(cfg);
        let metrics = SelfMetrics::new();
        let router = harden(app(), &s, loopback_mode, &metrics);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let m2 = metrics.clone();
        let task = tokio::spawn(async move {
            serve(listener, router, &s, &m2, async {
                let _ = rx.await;
                tokio::time::Instant::now() + Duration::from_secs(5)
            })
            .await
        });
        Self {
            addr,
            metrics,
            stop: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .expect("join")
            .expect("serve ok");
    }
}

async fn read_all(stream: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn real_server_slow_body_gets_408_and_slow_headers_are_cut() {
    let cfg = SecurityConfig {
        request_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let srv = Server::start(cfg, true).await;

    // Normal request through the real server.
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let resp = read_all(&mut s).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    // Slow body: headers promise 100 bytes, only 10 arrive.
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(
        b"POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nConnection: close\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let t0 = std::time::Instant::now();
    let resp = read_all(&mut s).await;
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(t0.elapsed() < Duration::from_secs(3));

    // Slow headers (slowloris): the header never ends; the server cuts the connection.
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let resp = read_all(&mut s).await;
    let waited = t0.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "connection held for {waited:?}"
    );
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains("request_timeout"), "{resp}");
    // Counted once the connection task has finished.
    let mut counted = 0.0;
    for _ in 0..50 {
        counted = refused(&srv.metrics, "header_timeout");
        if counted >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counted, 1.0);
    assert_eq!(refused(&srv.metrics, "timeout"), 1.0);

    // Headers over hyper's buffer bound (2 x max_header_bytes) are answered 431.
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let filler = "a".repeat(64 * 1024);
    let req = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: {filler}\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let resp = read_all(&mut s).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp:.200}");
    assert!(resp.contains("max_header_bytes"), "{resp:.400}");
    srv.stop().await;
}

/// Sends `raw` on a fresh connection and returns everything the server answers.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    out
}

fn body_of(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[tokio::test]
async fn every_refusal_says_why() {
    let cfg = SecurityConfig {
        request_timeout: Duration::from_millis(400),
        ..Default::default()
    };
    let srv = Server::start(cfg, true).await;
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();

    let r = text(
        exchange(
            srv.addr,
            b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await,
    );
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    assert_eq!(body_of(&r), "no such path: /nope\n", "{r}");

    let r = text(
        exchange(
            srv.addr,
            b"DELETE /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await,
    );
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    assert!(body_of(&r).contains("DELETE"), "{r}");

    // Not HTTP: hyper's own 400, with a body.
    let r = text(exchange(srv.addr, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n").await);
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(body_of(&r).contains("could not be parsed"), "{r}");

    // Headers that never finish: 408 with the setting named.
    let r = text(exchange(srv.addr, b"GET /healthz HTTP/1.1\r\n").await);
    assert!(r.starts_with("HTTP/1.1 408"), "{r}");
    assert!(body_of(&r).contains("http.security.request_timeout"), "{r}");

    // An idle keep-alive connection is closed quietly after the timeout: no 408 after the
    // answer, and not counted as a refusal.
    let before = refused(&srv.metrics, "header_timeout");
    let r = text(exchange(srv.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(!r.contains("408"), "{r}");
    assert_eq!(refused(&srv.metrics, "header_timeout"), before);

    // HTTP/2 with prior knowledge: SETTINGS then GOAWAY(HTTP_1_1_REQUIRED) with a reason.
    let r = exchange(
        srv.addr,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    )
    .await;
    assert!(r.len() > 18, "{r:?}");
    assert_eq!(r[3], 0x4, "SETTINGS first: {r:?}");
    assert_eq!(r[12], 0x7, "then GOAWAY: {r:?}");
    assert_eq!(&r[22..26], &[0, 0, 0, 0x0d], "HTTP_1_1_REQUIRED: {r:?}");
    assert!(String::from_utf8_lossy(&r[26..]).contains("HTTP/1.1 only"));

    // A client that does speak HTTP/2 reports the reason (curl with nghttp2).
    if nodescope_testsupport::require_tool("every_refusal_says_why", "curl", &[]).is_some() {
        let url = format!("http://{}/healthz", srv.addr);
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args(["-sSv", "-m", "5", "--http2-prior-knowledge", &url])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        // curl 7.88: "recveived GOAWAY, error=13" (13 = HTTP_1_1_REQUIRED).
        assert!(
            err.contains("GOAWAY, error=13") || err.contains("HTTP_1_1_REQUIRED"),
            "{err}"
        );
    }
    for _ in 0..50 {
        if refused(&srv.metrics, "http2") >= 1.0 && refused(&srv.metrics, "malformed") >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused(&srv.metrics, "http2") >= 1.0);
    assert_eq!(refused(&srv.metrics, "malformed"), 1.0);
    srv.stop().await;
}

#[tokio::test]
async fn connections_over_the_cap_get_503_and_stalled_writes_are_cut() {
    let cfg = SecurityConfig {
        max_connections: 4,
        write_timeout: Duration::from_millis(500),
        max_response_buffer_bytes: 256 * 1024 * 1024,
        ..Default::default()
    };
    let s = settings(cfg);
    let metrics = SelfMetrics::new();
    let big = Router::new().route("/big", get(|| async { vec![b'x'; 32 * 1024 * 1024] }));
    let router = harden(big, &s, true, &metrics);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let m2 = metrics.clone();
    let task = tokio::spawn(async move {
        serve(listener, router, &s, &m2, async {
            let _ = rx.await;
            tokio::time::Instant::now() + Duration::from_secs(2)
        })
        .await
    });
    // Four clients that ask for 32 MiB and never read.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        stalled.push(c);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = String::from_utf8_lossy(&exchange(addr, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").await)
        .into_owned();
    assert!(r.starts_with("HTTP/1.1 503"), "{r:.300}");
    assert!(body_of(&r).contains("max_connections = 4"), "{r}");
    // The stalled writes are cut after write_timeout, which frees the slots.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(refused(&metrics, "write_timeout"), 4.0);
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).await.unwrap();
    assert!(out.starts_with(b"HTTP/1.1 200"));
    assert!(out.len() > 32 * 1024 * 1024);
    assert_eq!(refused(&metrics, "too_many_connections"), 1.0);
    drop(stalled);
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn real_server_token_over_tcp() {
    let srv = Server::start(SecurityConfig::default(), false).await;
    let client = reqwest::Client::new();
    let base = format!("http://{}", srv.addr);
    let r = client
        .get(format!("{base}/api/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::UNAUTHORIZED);
    let r = client
        .get(format!("{base}/api/v1/status"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::FORBIDDEN);
    let r = client
        .get(format!("{base}/api/v1/status"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let counters = RefusalCounters::register(&srv.metrics);
    assert_eq!(counters.get(Refusal::Unauthenticated), 1);
    assert_eq!(counters.get(Refusal::Forbidden), 1);
    srv.stop().await;
}

struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    client_pem: String,
}

fn make_pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let server_key = KeyPair::generate().unwrap();
    let mut sp = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = sp.signed_by(&server_key, &ca).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut cp = CertificateParams::new(vec!["client".to_string()]).unwrap();
    cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = cp.signed_by(&client_key, &ca).unwrap();

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.path().join("server.pem"), server_cert.pem()).unwrap();
    std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
    Pki {
        ca_pem: ca.pem(),
        client_pem: format!("{}{}", client_cert.pem(), client_key.serialize_pem()),
        dir,
    }
}

#[tokio::test]
async fn mtls_client_certificate_authenticates() {
    let pki = make_pki();
    let cfg = SecurityConfig {
        tls: Some(TlsConfig {
            cert_file: pki.dir.path().join("server.pem"),
            key_file: pki.dir.path().join("server.key"),
            client_ca_file: Some(pki.dir.path().join("ca.pem")),
        }),
        ..Default::default()
    };
    let srv = Server::start(cfg, false).await;
    let ca = reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap();
    let base = format!("https://localhost:{}", srv.addr.port());

    let with_cert = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(ca.clone())
        .identity(reqwest::Identity::from_pem(pki.client_pem.as_bytes()).unwrap())
        .resolve("localhost", srv.addr)
        .build()
        .unwrap();
    let r = with_cert
        .get(format!("{base}/api/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        reqwest::StatusCode::OK,
        "verified client cert, no token"
    );

    let no_cert = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(ca)
        .resolve("localhost", srv.addr)
        .build()
        .unwrap();
    let r = no_cert
        .get(format!("{base}/api/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::UNAUTHORIZED);
    let r = no_cert.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let r = no_cert
        .get(format!("{base}/api/v1/status"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        reqwest::StatusCode::OK,
        "token still works over TLS"
    );

    // A plain-HTTP client against the TLS port fails the handshake and is counted.
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let _ = read_all(&mut s).await;
    let counters = RefusalCounters::register(&srv.metrics);
    for _ in 0..50 {
        if counters.get(Refusal::TlsHandshake) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counters.get(Refusal::TlsHandshake), 1);
    srv.stop().await;
}

#[test]
fn tls_build_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.pem"), "not a pem").unwrap();
    let cfg = SecurityConfig {
        tls: Some(TlsConfig {
            cert_file: dir.path().join("bad.pem"),
            key_file: dir.path().join("none.key"),
            client_ca_file: None,
        }),
        ..Default::default()
    };
    let e = cfg.build().unwrap_err().to_string();
    assert!(e.contains("bad.pem"), "{e}");
}

#[tokio::test]
async fn large_responses_share_one_budget() {
    let m = SelfMetrics::new();
    let cfg = SecurityConfig {
        max_response_buffer_bytes: 4 * 1024 * 1024,
        ..Default::default()
    };
    let big = Router::new().route("/big", get(|| async { vec![b'x'; 3 * 1024 * 1024] }));
    let r = harden(big, &settings(cfg), true, &m);
    let first = call(&r, get_req("/big", None)).await;
    assert_eq!(first.status(), StatusCode::OK);
    // The first body is not sent yet: a second does not fit.
    let second = call(&r, get_req("/big", None)).await;
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused(&m, "response_buffer_full"), 1.0);
    drop(first);
    assert_eq!(
        call(&r, get_req("/big", None)).await.status(),
        StatusCode::OK
    );
}
