//! `GET /` (redirect), `GET /ui/...` (embedded assets) and `GET /ui/env.json`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use nodescope_component::accepts_gzip;
use nodescope_model::selfmetrics::{Counter, SelfMetrics};
use nodescope_model::Services;
use serde_json::json;

use crate::assets::{self, ASSETS};

/// The policy of every `/ui/` response: scripts and styles only from the agent's own
/// files (no inline script, no `eval`), requests only to the agent, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; base-uri 'none'; \
form-action 'none'; frame-ancestors 'none'";

/// Shared state of the UI routes.
pub struct UiState {
    pub refresh_interval: Duration,
    pub node: String,
    /// Looked up per request: whether the flight recorder runs (it provides the event
    /// sink), so the pages call `/api/v1/recorder/*` only when it exists.
    pub services: Services,
    served: Vec<Counter>,
    not_found: Counter,
    not_modified: Counter,
}

impl UiState {
    pub fn new(
        refresh_interval: Duration,
        node: String,
        services: Services,
        metrics: &SelfMetrics,
    ) -> Self {
        let help = "Files of the web UI served (200), by file.";
        UiState {
            refresh_interval,
            node,
            services,
            served: ASSETS
                .iter()
                .map(|a| metrics.counter("nodescope_ui_requests_total", help, &[("file", a.path)]))
                .collect(),
            not_found: metrics.counter(
                "nodescope_ui_requests_total",
                help,
                &[("file", "not_found")],
            ),
            not_modified: metrics.counter(
                "nodescope_ui_not_modified_total",
                "Requests for UI files answered 304 Not Modified (the browser's copy is current).",
                &[],
            ),
        }
    }

    fn recorder_present(&self) -> bool {
        self.services
            .get::<dyn nodescope_model::feeds::EventSink>()
            .is_some()
    }
}

/// `/` → `/ui/`, `/ui` → `/ui/`, `/ui/` (the page), `/ui/env.json`, `/ui/<file>`.
pub fn router(state: Arc<UiState>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui/", get(index))
        .route("/ui/env.json", get(env))
        .route("/ui/{*path}", get(file))
        .with_state(state)
}

fn security_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
}

async fn index(State(st): State<Arc<UiState>>, headers: HeaderMap) -> Response {
    serve("index.html", &st, &headers)
}

async fn file(
    State(st): State<Arc<UiState>>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    serve(&path, &st, &headers)
}

fn serve(path: &str, st: &UiState, headers: &HeaderMap) -> Response {
    let Some((i, asset)) = assets::find(path) else {
        st.not_found.inc();
        let mut r = (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!(
                "no such UI file: /ui/{}\n",
                path.chars().take(200).collect::<String>()
            ),
        )
            .into_response();
        security_headers(r.headers_mut());
        return r;
    };
    let prep = assets::prepared(i);
    let etag = HeaderValue::from_str(&prep.etag).unwrap_or(HeaderValue::from_static("\"\""));
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == prep.etag || t.trim() == "*");
    let mut r = if fresh {
        st.not_modified.inc();
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        st.served[i].inc();
        match (&prep.gzip, accepts_gzip(headers)) {
            (Some(z), true) => {
                let mut r = z.clone().into_response();
                r.headers_mut()
                    .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                r
            }
            _ => asset.bytes.into_response(),
        }
    };
    let h = r.headers_mut();
    if !fresh {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
    }
    h.insert(header::ETAG, etag);
    // Revalidate every time (a 304 costs a few bytes): a new agent version serves new files
    // at the same URLs.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    security_headers(h);
    r
}

/// What the page needs to know about this agent before it calls anything else.
async fn env(State(st): State<Arc<UiState>>) -> Response {
    let mut r = Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "node": st.node,
        "refresh_seconds": st.refresh_interval.as_secs_f64(),
        "recorder": st.recorder_present(),
    }))
    .into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    security_headers(h);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn app() -> (Router, SelfMetrics) {
        let m = SelfMetrics::new();
        let st = UiState::new(Duration::from_secs(5), "n1".into(), Services::default(), &m);
        (router(Arc::new(st)), m)
    }

    async fn get(app: &Router, uri: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = Request::get(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        app.clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn body(r: Response) -> Vec<u8> {
        r.into_body().collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn root_and_bare_ui_redirect_to_the_page() {
        let (app, _) = app();
        for uri in ["/", "/ui"] {
            let r = get(&app, uri, &[]).await;
            assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT, "{uri}");
            assert_eq!(r.headers()[header::LOCATION], "/ui/");
        }
    }

    #[tokio::test]
    async fn page_and_files_carry_the_policy_type_and_etag() {
        let (app, m) = app();
        let r = get(&app, "/ui/", &[]).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        assert!(r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let etag = r.headers()[header::ETAG].to_str().unwrap().to_string();
        let html = String::from_utf8(body(r).await).unwrap();
        assert!(html.contains("<script src=\"js/core.js\""), "{html}");

        let r = get(&app, "/ui/", &[("if-none-match", &etag)]).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert!(body(r).await.is_empty());

        let r = get(&app, "/ui/js/flame.js", &[("accept-encoding", "br, gzip")]).await;
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
        assert!(r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript"));
        let z = body(r).await;
        let mut d = flate2::read::GzDecoder::new(&z[..]);
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut d, &mut out).unwrap();
        assert_eq!(out, assets::find("js/flame.js").unwrap().1.bytes);

        let r = get(&app, "/ui/js/flame.js", &[("accept-encoding", "gzip;q=0")]).await;
        assert!(r.headers().get(header::CONTENT_ENCODING).is_none());

        let r = get(&app, "/ui/../Cargo.toml", &[]).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = get(&app, "/ui/nope.js", &[]).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(String::from_utf8(body(r).await)
            .unwrap()
            .contains("/ui/nope.js"));
        let count = |name, labels: &[(&'static str, &str)]| m.counter(name, "", labels).get();
        assert_eq!(
            count("nodescope_ui_requests_total", &[("file", "not_found")]),
            2
        );
        assert_eq!(count("nodescope_ui_not_modified_total", &[]), 1);
        assert_eq!(
            count("nodescope_ui_requests_total", &[("file", "js/flame.js")]),
            2
        );
    }

    #[tokio::test]
    async fn env_says_whether_the_recorder_runs() {
        let (app, _) = app();
        let r = get(&app, "/ui/env.json", &[]).await;
        let v: serde_json::Value = serde_json::from_slice(&body(r).await).unwrap();
        assert_eq!(v["recorder"], false);
        assert_eq!(v["node"], "n1");
        assert_eq!(v["refresh_seconds"], 5.0);
    }

    #[test]
    fn gzip_negotiation() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            accepts_gzip(&m)
        };
        assert!(h("gzip"));
        assert!(h("deflate, GZIP;q=0.5"));
        assert!(h("*"));
        assert!(!h("br"));
        assert!(!h("gzip;q=0"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
