//! A loopback stand-in for the Kubernetes API server that answers GETs with recorded
//! responses (tests/fixtures, the API's JSON shape): lists and single objects by path, 404
//! (a `metav1.Status`) for anything else, and watches that stay open without events.
//! Every request is recorded. Shared by the k8s peer tests and the network probe's
//! peer-naming test (included there by path).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

type Chunk = Result<axum::body::Bytes, std::io::Error>;

struct Hold(tokio::sync::mpsc::Receiver<Chunk>);
impl futures_core::Stream for Hold {
    type Item = Chunk;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Chunk>> {
        self.0.poll_recv(cx)
    }
}

#[derive(Default)]
struct Inner {
    objects: HashMap<String, String>,
    seen: Vec<(String, HashMap<String, String>)>,
    watches: Vec<tokio::sync::mpsc::Sender<Chunk>>,
}

#[derive(Clone)]
pub struct FakeApi {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let path = uri.path().to_string();
    let mut i = inner.lock().unwrap();
    i.seen.push((path.clone(), q.clone()));
    if q.get("watch").map(String::as_str) == Some("true") {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        i.watches.push(tx);
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(Hold(rx)))
            .unwrap();
    }
    match i.objects.get(&path) {
        Some(body) => ([("content-type", "application/json")], body.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [("content-type", "application/json")],
            format!(r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"{path} not found","reason":"NotFound","code":404}}"#),
        )
            .into_response(),
    }
}

impl FakeApi {
    /// Serves `objects` (path → JSON body) on a loopback port. Call inside a runtime.
    pub async fn start(objects: HashMap<String, String>) -> FakeApi {
        let inner = Arc::new(Mutex::new(Inner {
            objects,
            ..Default::default()
        }));
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeApi { addr, inner }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// (path, query) of every request so far.
    pub fn seen(&self) -> Vec<(String, HashMap<String, String>)> {
        self.inner.lock().unwrap().seen.clone()
    }

    pub fn requests_to(&self, path: &str) -> Vec<HashMap<String, String>> {
        self.seen()
            .into_iter()
            .filter(|(p, _)| p == path)
            .map(|(_, q)| q)
            .collect()
    }
}

/// A fixture with `${NAME}` placeholders replaced.
pub fn fixture(dir: &std::path::Path, name: &str, vars: &[(&str, &str)]) -> String {
    let p = dir.join(name);
    let mut s = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    for (k, v) in vars {
        s = s.replace(&format!("${{{k}}}"), v);
    }
    s
}
