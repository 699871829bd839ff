//! The agent's HTTP API: `/metrics`, `/healthz`, `/readyz`, `/api/v1/status`, plus the
//! routers that other components contribute (network connections, pprof).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use nodescope_exporter_prometheus::{encode, Format};
use nodescope_model::selfmetrics::{Counter, Gauge, SelfMetrics};
use nodescope_model::{MetricFamily, StatusRegistry};
use serde_json::json;
use tower_http::compression::{CompressionLayer, CompressionLevel};

use crate::runner::CollectorSet;
use crate::selfstats::{ProcessStats, VERSION};

pub struct AppState {
    pub collectors: Arc<CollectorSet>,
    pub self_metrics: SelfMetrics,
    pub process: ProcessStats,
    pub status: StatusRegistry,
    pub ready: AtomicBool,
    pub started: Instant,
    /// Size of the last /metrics body, to allocate the next one at once. (Concurrent
    /// scrapes share each collector's run: see the runner.)
    pub last_body_len: AtomicUsize,
    pub scrapes: Counter,
    pub scrape_duration: Gauge,
}

impl AppState {
    pub fn new(
        collectors: Arc<CollectorSet>,
        self_metrics: &SelfMetrics,
        status: &StatusRegistry,
    ) -> Self {
        AppState {
            collectors,
            process: ProcessStats::register(self_metrics),
            scrapes: self_metrics.counter(
                "nodescope_scrapes_total",
                "Scrapes of /metrics served.",
                &[],
            ),
            scrape_duration: self_metrics.gauge(
                "nodescope_scrape_duration_seconds",
                "Duration of the last /metrics scrape, collection and encoding included.",
                &[],
            ),
            self_metrics: self_metrics.clone(),
            status: status.clone(),
            ready: AtomicBool::new(false),
            started: Instant::now(),
            last_body_len: AtomicUsize::new(64 * 1024),
        }
    }

    /// Everything the agent reports about itself, as families.
    pub fn self_families(&self) -> Vec<MetricFamily> {
        self.process.refresh();
        let mut f = self.self_metrics.collect();
        f.push(self.process.families());
        f
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(metrics).layer(
                // Fastest level: metric text still compresses ~10x, at a fraction of the CPU.
                CompressionLayer::new()
                    .gzip(true)
                    .no_br()
                    .no_deflate()
                    .no_zstd()
                    .quality(CompressionLevel::Fastest),
            ),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/status", get(status))
        .with_state(state)
}

async fn metrics(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let started = Instant::now();
    let (batches, runs) = st.collectors.collect_all_detailed().await;
    let scrape_fams = nodescope_host::node_scrape_families(runs);
    st.scrapes.inc();
    let self_fams = st.self_families();
    let mut body = String::with_capacity(st.last_body_len.load(Ordering::Relaxed) + 4096);
    encode(
        batches
            .iter()
            .flat_map(|b| b.families.iter())
            .chain(scrape_fams.iter())
            .chain(self_fams.iter()),
        format,
        &mut body,
    );
    st.last_body_len.store(body.len(), Ordering::Relaxed);
    st.scrape_duration.set(started.elapsed().as_secs_f64());
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn readyz(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    if st.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn status(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    Json(json!({
        "version": VERSION,
        "ready": st.ready.load(Ordering::Acquire),
        "uptime_seconds": st.started.elapsed().as_secs_f64(),
        "time": now,
        "components": st.status.snapshot(),
    }))
}
