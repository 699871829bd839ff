//! Go-compatible `/debug/pprof/profile` endpoint (and a small `/debug/pprof/` index).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::output::Format;
use crate::service::{ProfileError, ProfilerService};

/// Routes: `GET /debug/pprof/profile`, `GET /debug/pprof/` (index).
pub fn router(svc: Arc<ProfilerService>) -> Router {
    Router::new()
        .route("/debug/pprof/profile", get(profile))
        .route("/debug/pprof/", get(index))
        .route("/debug/pprof", get(index))
        .with_state(svc)
}

impl ProfileError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProfileError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProfileError::NotFound(_) => StatusCode::NOT_FOUND,
            ProfileError::Busy(_) => StatusCode::CONFLICT,
            ProfileError::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProfileError::Disabled | ProfileError::EbpfUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            // Nobody is listening any more; the status is for logs only.
            ProfileError::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            ProfileError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ProfileError {
    fn into_response(self) -> Response {
        let status = self.status();
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{self}\n"),
        )
            .into_response()
    }
}

async fn profile(
    State(svc): State<Arc<ProfilerService>>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let req = match crate::request::parse(&pairs, svc.limits()) {
        Ok(r) => r,
        Err(e) => return ProfileError::BadRequest(e).into_response(),
    };
    // When the client disconnects, hyper drops this future; the guard then cancels the
    // token and the sampling thread stops, detaches its BPF program and frees the target.
    let cancel = CancellationToken::new();
    let _guard = cancel.clone().drop_guard();
    match svc.profile(req, cancel).await {
        Ok(r) => {
            let (ctype, disposition) = match r.format {
                Format::Pprof => (
                    "application/octet-stream",
                    Some("attachment; filename=\"profile\""),
                ),
                Format::Svg => ("image/svg+xml", None),
                Format::Folded => ("text/plain; charset=utf-8", None),
            };
            let mut resp = (StatusCode::OK, r.body).into_response();
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
            if let Some(d) = disposition {
                h.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static(d));
            }
            h.insert("x-nodescope-sampler", HeaderValue::from_static(r.sampler));
            if let Ok(v) = HeaderValue::from_str(&r.samples.to_string()) {
                h.insert("x-nodescope-samples", v);
            }
            resp
        }
        Err(e) => {
            tracing::info!(error = %e, "profile request failed");
            e.into_response()
        }
    }
}

async fn index(State(svc): State<Arc<ProfilerService>>) -> Response {
    let c = svc.config();
    let ebpf = match svc.ebpf_error() {
        None => "ok (or not tried yet)".to_string(),
        Some(e) => format!("unavailable: {e}"),
    };
    let body = format!(
        "<html><head><title>/debug/pprof/</title></head><body>\n\
<h1>nodescope /debug/pprof/</h1>\n\
<p><a href=\"profile?seconds={s}\">profile</a>: CPU profile of the agent itself ({s} s, gzip pprof).</p>\n\
<p>Parameters: <code>seconds</code> (1..{max}, default {s}), <code>hz</code> (1..{maxhz}, default {hz}), \
<code>format</code>=pprof|svg|folded, and one target: <code>pid</code>=N, <code>container</code>=ID, \
<code>cgroup</code>=/path, <code>all</code>=true; <code>type</code>=cpu (default) | offcpu (time off CPU, by state) | wall (on-CPU plus off-CPU, nanoseconds).</p>\n\
<p>Example: <code>go tool pprof 'http://HOST:9780/debug/pprof/profile?pid=1234&amp;seconds=10'</code></p>\n\
<p>eBPF sampler: {ebpf}</p>\n</body></html>\n",
        s = c.default_seconds,
        max = c.max_seconds,
        maxhz = c.max_hz,
        hz = c.default_hz,
        ebpf = html_escape(&ebpf),
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
