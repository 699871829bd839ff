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
use nodescope_component::accepts_gzip;
use nodescope_exporter_prometheus::{encode, Format};
use nodescope_model::selfmetrics::{Counter, Gauge, SelfMetrics};
use nodescope_model::{MetricFamily, StatusRegistry};
use serde_json::json;

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
    /// Compressors kept between scrapes (see [`GzipPool`]).
    gzip: GzipPool,
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
            gzip: GzipPool::default(),
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
        .route("/metrics", get(metrics))
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
    // Compressed here, in one buffer, rather than by a streaming layer: the response is
    // then one body of known size that httpguard counts against
    // `max_response_buffer_bytes` until the client has read it, and the text is freed
    // before the answer starts.
    let gzip = accepts_gzip(&headers);
    let body = if gzip {
        match st.gzip.compress(body.as_bytes()) {
            Ok(gz) => Some(gz),
            Err(e) => {
                tracing::warn!(error = %e, "gzip of /metrics failed; answering uncompressed");
                None
            }
        }
        .map_or_else(|| axum::body::Bytes::from(body), axum::body::Bytes::from)
    } else {
        axum::body::Bytes::from(body)
    };
    st.scrape_duration.set(started.elapsed().as_secs_f64());
    let mut resp = ([(header::CONTENT_TYPE, format.content_type())], body).into_response();
    resp.headers_mut().insert(
        header::VARY,
        axum::http::HeaderValue::from_static("accept-encoding"),
    );
    if gzip {
        resp.headers_mut().insert(
            header::CONTENT_ENCODING,
            axum::http::HeaderValue::from_static("gzip"),
        );
    }
    resp
}

/// gzip at the fastest level: metric text still compresses ~10x at a fraction of the CPU.
///
/// A deflate state is ~300 KB that the allocator hands out as fresh pages: building one
/// per scrape cost more than the compression itself (page faults and the memset of its
/// tables, 6 % of a host-only agent's CPU under scrape load). The pool keeps at most
/// [`GzipPool::KEEP`] of them and resets one per scrape; concurrent scrapes beyond that
/// build their own, which is dropped afterwards.
#[derive(Default)]
struct GzipPool {
    spare: parking_lot::Mutex<Vec<flate2::Compress>>,
}

impl GzipPool {
    const KEEP: usize = 2;

    fn compress(&self, text: &[u8]) -> Result<Vec<u8>, flate2::CompressError> {
        use flate2::{Compress, Compression, FlushCompress, Status};
        let mut c = match self.spare.lock().pop() {
            Some(mut c) => {
                c.reset();
                c
            }
            None => Compress::new_gzip(Compression::fast(), 15),
        };
        let mut out = Vec::with_capacity(text.len() / 8 + 64);
        let mut consumed = 0usize;
        let result = loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(4096));
            }
            let before = c.total_in();
            match c.compress_vec(&text[consumed..], &mut out, FlushCompress::Finish) {
                Ok(Status::StreamEnd) => break Ok(out),
                Ok(Status::Ok | Status::BufError) => {
                    consumed += (c.total_in() - before) as usize;
                }
                Err(e) => break Err(e),
            }
        };
        let mut spare = self.spare.lock();
        if spare.len() < Self::KEEP {
            spare.push(c);
        }
        result
    }
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

#[cfg(test)]
mod gzip_tests {
    use super::*;

    #[test]
    fn accept_encoding_negotiation() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, v.parse().unwrap());
            accepts_gzip(&m)
        };
        assert!(h("gzip"));
        assert!(h("br, GZIP;q=0.5"));
        assert!(h("*"));
        assert!(!h("gzip;q=0"));
        assert!(!h("identity"));
        assert!(!h("deflate, br"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read;
        let text = "node_load1 0.5\n".repeat(1000);
        let pool = GzipPool::default();
        // Twice through the same pooled compressor (reset between), then a text larger
        // than the first output buffer guess, which needs the buffer to grow.
        let big: String = (0..20_000)
            .map(|i| format!("m{{i=\"{i}\"}} {}\n", i * 7919 % 1000))
            .collect();
        for text in [text.clone(), text, String::new(), big] {
            let gz = pool.compress(text.as_bytes()).unwrap();
            assert!(
                gz.len() < text.len() / 3 + 32,
                "{} -> {}",
                text.len(),
                gz.len()
            );
            let mut back = String::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_string(&mut back)
                .unwrap();
            assert_eq!(back, text);
        }
        assert_eq!(pool.spare.lock().len(), 1);
    }
}
