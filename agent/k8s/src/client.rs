//! List + watch against the Kubernetes API server: one generic loop ([`Watcher`]) over
//! a [`Store`] per resource (this node's pods; with peer naming, every Service and
//! EndpointSlice), and the API client they share.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodescope_model::backoff::{jittered, Backoff, BackoffPolicy};
use nodescope_model::selfmetrics::{Counter, SelfMetrics};
use nodescope_model::status::{ComponentState, StatusHandle};
use serde::Deserialize;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::objects::Object;
use crate::{K8sError, RESYNC_JITTER};

/// Longest single watch event line accepted (a pod object is a few KiB; 8 MiB leaves
/// room for pods with huge annotations while keeping memory bounded).
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;
/// Page size of list requests.
pub const LIST_PAGE: u32 = 500;

#[derive(Debug, Default, Deserialize)]
struct ListMeta {
    #[serde(rename = "resourceVersion")]
    resource_version: Option<String>,
    #[serde(rename = "continue")]
    continue_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(bound = "T: serde::de::DeserializeOwned")]
struct List<T> {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default = "Vec::new")]
    items: Vec<T>,
}

#[derive(Debug, Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

/// `metav1.Status`, sent as the object of an ERROR event and as the body of failed
/// requests.
#[derive(Debug, Default, Deserialize)]
struct ApiStatus {
    code: Option<u16>,
    reason: Option<String>,
    message: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("request to {url} failed: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{url} answered {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("decoding {what} from {url}: {reason}")]
    Decode {
        what: &'static str,
        url: String,
        reason: String,
    },
    #[error("resource version too old (410 Gone): {0}")]
    Gone(String),
    #[error("watch event line over {MAX_EVENT_BYTES} bytes")]
    EventTooLarge,
    #[error("watch ERROR event: {0}")]
    WatchError(String),
}

#[derive(Clone)]
pub(crate) struct WatcherSettings {
    pub api_server: String,
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
    pub resync_interval: Duration,
    pub watch_timeout: Duration,
    pub request_timeout: Duration,
    pub backoff: BackoffPolicy,
}

/// The HTTP client, base URL and credentials every request uses.
pub(crate) struct ApiClient {
    pub s: WatcherSettings,
    http: reqwest::Client,
}

impl ApiClient {
    pub(crate) fn new(s: WatcherSettings) -> Result<Self, K8sError> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(4)
            .user_agent(concat!("nodescope/", env!("CARGO_PKG_VERSION")));
        if s.api_server.starts_with("https://") && s.ca_file.exists() {
            let pem = nodescope_model::files::read_capped(
                &s.ca_file,
                nodescope_model::files::MAX_SECRET_BYTES,
                "CA file",
            )
            .map_err(|e| K8sError::Ca {
                path: s.ca_file.clone(),
                reason: e.to_string(),
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| K8sError::Ca {
                path: s.ca_file.clone(),
                reason: e.to_string(),
            })?;
            if certs.is_empty() {
                return Err(K8sError::Ca {
                    path: s.ca_file.clone(),
                    reason: "no certificate in file".into(),
                });
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let http = b.build().map_err(|e| K8sError::Client(e.to_string()))?;
        reqwest::Url::parse(&s.api_server).map_err(|e| K8sError::BadApiServer {
            url: s.api_server.clone(),
            reason: e.to_string(),
        })?;
        Ok(ApiClient { s, http })
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.s.api_server)
    }

    /// A GET of `url` with the bearer token (re-read per request: projected tokens
    /// rotate; a missing file sends none).
    pub(crate) async fn get(&self, url: &str) -> reqwest::RequestBuilder {
        let req = self.http.get(url);
        // Small and usually cached by the kernel: read in place, capped, never blocking on
        // a FIFO.
        match nodescope_model::files::read_capped_text(
            &self.s.token_file,
            nodescope_model::files::MAX_SECRET_BYTES,
            "token file",
        ) {
            Ok(t) if !t.trim().is_empty() => req.bearer_auth(t.trim()),
            _ => req,
        }
    }

    /// GETs one object (`resourceVersion=0`: from the watch cache). Ok(None): 404.
    pub(crate) async fn get_object<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, ApiError> {
        let url = self.url(path);
        let resp = self
            .get(&url)
            .await
            .query(&[("resourceVersion", "0")])
            .timeout(self.s.request_timeout)
            .send()
            .await
            .map_err(|source| ApiError::Http {
                url: url.clone(),
                source,
            })?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = check_status(&url, resp).await?;
        let body = resp.bytes().await.map_err(|source| ApiError::Http {
            url: url.clone(),
            source,
        })?;
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| ApiError::Decode {
                what: "object",
                url,
                reason: e.to_string(),
            })
    }
}

/// Where one resource's objects go: replaced by a list, updated by watch events.
pub(crate) trait Store: Send + Sync + 'static {
    type Item: Object;
    /// `pods`, `services`, `endpointslices`: the `resource` label of the watcher's self
    /// metrics and its status detail.
    fn resource(&self) -> &'static str;
    /// The collection's API path, e.g. `/api/v1/pods`.
    fn path(&self) -> &'static str;
    fn field_selector(&self) -> Option<String>;
    /// Replaces everything with a fresh list; returns how many objects were kept.
    fn replace(&self, items: Vec<Self::Item>) -> usize;
    fn upsert(&self, item: Self::Item);
    fn remove(&self, item: &Self::Item);
}

#[derive(Clone)]
struct WatcherMetrics {
    relist: [Counter; 4],
    events: [Counter; 6],
    api_errors: Counter,
}

const RELIST_REASONS: [&str; 4] = ["initial", "resync", "gone", "error"];
const EVENT_TYPES: [&str; 6] = ["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR", "other"];

impl WatcherMetrics {
    fn register(m: &SelfMetrics, resource: &'static str) -> Self {
        Self {
            relist: RELIST_REASONS.map(|r| {
                m.counter(
                    "nodescope_k8s_relists_total",
                    "Full lists fetched from the API server, by resource and reason.",
                    &[("resource", resource), ("reason", r)],
                )
            }),
            events: EVENT_TYPES.map(|t| {
                m.counter(
                    "nodescope_k8s_watch_events_total",
                    "Watch events received, by resource and type.",
                    &[("resource", resource), ("type", t)],
                )
            }),
            api_errors: m.counter(
                "nodescope_k8s_api_errors_total",
                "Failed API server requests (list or watch), by resource.",
                &[("resource", resource)],
            ),
        }
    }
    fn event(&self, kind: &str) {
        let i = EVENT_TYPES
            .iter()
            .position(|t| *t == kind)
            .unwrap_or(EVENT_TYPES.len() - 1);
        self.events[i].inc();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Relist {
    Initial = 0,
    Resync = 1,
    Gone = 2,
    Error = 3,
}

enum WatchEnd {
    /// Server closed the stream normally (timeoutSeconds): resume from the last version.
    Resume,
    /// Time for the periodic full re-list.
    Resync,
}

/// Keeps one [`Store`] in sync with the API server.
pub(crate) struct Watcher<S: Store> {
    api: Arc<ApiClient>,
    store: Arc<S>,
    metrics: WatcherMetrics,
    status: StatusHandle,
}

impl<S: Store> Watcher<S> {
    pub(crate) fn new(
        api: Arc<ApiClient>,
        store: Arc<S>,
        metrics: &SelfMetrics,
        status: StatusHandle,
    ) -> Self {
        let metrics = WatcherMetrics::register(metrics, store.resource());
        Watcher {
            api,
            store,
            metrics,
            status,
        }
    }

    /// Lists, then watches, forever (until the future is dropped).
    pub(crate) async fn run_forever(&self) {
        let span = info_span!("k8s_watch", resource = self.store.resource());
        self.run_inner().instrument(span).await
    }

    async fn run_inner(&self) {
        let mut reason = Relist::Initial;
        let mut backoff = Backoff::new(self.api.s.backoff);
        // The newest resourceVersion seen (list or watch): a re-list asks the API
        // server's watch cache for a state not older than it. None: "0", any cached state.
        let mut last_rv: Option<String> = None;
        let what = self.store.resource();
        loop {
            self.metrics.relist[reason as usize].inc();
            let t0 = Instant::now();
            let rv = match self.list(last_rv.as_deref()).await {
                Ok((items, rv)) => {
                    let n = self.store.replace(items);
                    self.status.success(t0.elapsed());
                    self.status.set_detail(what, n.to_string());
                    info!(resource = what, objects = n, resource_version = %rv, reason = ?reason, "listed");
                    backoff.reset();
                    rv
                }
                Err(e) => {
                    self.metrics.api_errors.inc();
                    let delay = backoff.next_delay(None);
                    warn!(resource = what, error = %e, retry_in = ?delay, "list failed");
                    self.status.failure(
                        ComponentState::Degraded,
                        e.to_string(),
                        Some(t0.elapsed()),
                    );
                    // The cache may lag behind the version we asked for: take any state.
                    last_rv = None;
                    tokio::time::sleep(delay).await;
                    reason = Relist::Error;
                    continue;
                }
            };
            let mut rv = rv;
            reason = self.watch_until_relist(&mut rv).await;
            last_rv = Some(rv).filter(|v| !v.is_empty());
            if reason == Relist::Error {
                tokio::time::sleep(backoff.next_delay(None)).await;
            }
        }
    }

    /// Watches from `rv`, resuming after normal stream ends, until a re-list is needed.
    /// `rv` is left at the newest resourceVersion seen.
    async fn watch_until_relist(&self, rv: &mut String) -> Relist {
        // Jittered, so the agents of a cluster started together do not re-list together.
        let resync_at =
            tokio::time::Instant::now() + jittered(self.api.s.resync_interval, RESYNC_JITTER);
        loop {
            let res = tokio::select! {
                r = self.watch_once(rv) => r,
                _ = tokio::time::sleep_until(resync_at) => Ok(WatchEnd::Resync),
            };
            match res {
                Ok(WatchEnd::Resume) => {
                    debug!(resource_version = %rv, "watch ended; resuming");
                }
                Ok(WatchEnd::Resync) => return Relist::Resync,
                Err(ApiError::Gone(msg)) => {
                    info!(%msg, "watch resource version expired (410); re-listing");
                    return Relist::Gone;
                }
                Err(e) => {
                    self.metrics.api_errors.inc();
                    warn!(error = %e, "watch failed; re-listing");
                    self.status
                        .failure(ComponentState::Degraded, e.to_string(), None);
                    return Relist::Error;
                }
            }
        }
    }

    fn base_query(&self) -> Vec<(&'static str, String)> {
        self.store
            .field_selector()
            .map(|f| vec![("fieldSelector", f)])
            .unwrap_or_default()
    }

    /// Lists from the API server's watch cache, not from etcd: with
    /// `resourceVersion=0` (any cached state; the initial list and after errors) or
    /// `resourceVersion=<min_rv>` (a state not older than what we already saw; re-lists
    /// after a resync or `410 Gone`), as client-go's reflector does. The cache ignores
    /// `limit` for `0`; for a version, paging is left off so the cache can answer.
    /// Pages after the first carry only `continue` (the API refuses a version with it).
    async fn list(&self, min_rv: Option<&str>) -> Result<(Vec<S::Item>, String), ApiError> {
        let url = self.api.url(self.store.path());
        let mut all = Vec::new();
        let mut cont: Option<String> = None;
        loop {
            let mut q = self.base_query();
            match (&cont, min_rv) {
                (Some(c), _) => {
                    q.push(("limit", LIST_PAGE.to_string()));
                    q.push(("continue", c.clone()));
                }
                (None, None) => {
                    q.push(("resourceVersion", "0".into()));
                    q.push(("limit", LIST_PAGE.to_string()));
                }
                (None, Some(rv)) => q.push(("resourceVersion", rv.to_string())),
            }
            let req = self
                .api
                .get(&url)
                .await
                .query(&q)
                .timeout(self.api.s.request_timeout);
            let resp = req.send().await.map_err(|source| ApiError::Http {
                url: url.clone(),
                source,
            })?;
            let resp = check_status(&url, resp).await?;
            let body = resp.bytes().await.map_err(|source| ApiError::Http {
                url: url.clone(),
                source,
            })?;
            let page: List<S::Item> =
                serde_json::from_slice(&body).map_err(|e| ApiError::Decode {
                    what: "list",
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
            all.extend(page.items);
            match page.metadata.continue_token.filter(|c| !c.is_empty()) {
                Some(c) => cont = Some(c),
                None => {
                    let rv = page.metadata.resource_version.unwrap_or_default();
                    return Ok((all, rv));
                }
            }
        }
    }

    async fn watch_once(&self, rv: &mut String) -> Result<WatchEnd, ApiError> {
        let url = self.api.url(self.store.path());
        let mut q = self.base_query();
        q.extend([
            ("watch", "true".into()),
            ("resourceVersion", rv.clone()),
            ("allowWatchBookmarks", "true".into()),
            (
                "timeoutSeconds",
                self.api.s.watch_timeout.as_secs().to_string(),
            ),
        ]);
        let req = self
            .api
            .get(&url)
            .await
            .query(&q)
            .timeout(self.api.s.watch_timeout + Duration::from_secs(30));
        let resp = req.send().await.map_err(|source| ApiError::Http {
            url: url.clone(),
            source,
        })?;
        let mut resp = check_status(&url, resp).await?;
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let chunk = resp.chunk().await.map_err(|source| ApiError::Http {
                url: url.clone(),
                source,
            })?;
            let Some(chunk) = chunk else {
                // A trailing event without a newline still counts.
                if !buf.iter().all(u8::is_ascii_whitespace) {
                    let line = std::mem::take(&mut buf);
                    self.apply_line(&url, &line, rv)?;
                }
                return Ok(WatchEnd::Resume);
            };
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                self.apply_line(&url, &line, rv)?;
            }
            if buf.len() > MAX_EVENT_BYTES {
                return Err(ApiError::EventTooLarge);
            }
        }
    }

    /// Applies one watch event line to the store and advances `rv`.
    fn apply_line(&self, url: &str, line: &[u8], rv: &mut String) -> Result<(), ApiError> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let ev: WatchEvent = serde_json::from_slice(line).map_err(|e| ApiError::Decode {
            what: "watch event",
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        self.metrics.event(&ev.kind);
        if ev.kind == "ERROR" {
            let st: ApiStatus = serde_json::from_value(ev.object).unwrap_or_default();
            let msg = format!(
                "{} {}: {}",
                st.code.unwrap_or(0),
                st.reason.unwrap_or_default(),
                st.message.unwrap_or_default()
            );
            return Err(if st.code == Some(410) {
                ApiError::Gone(msg)
            } else {
                ApiError::WatchError(msg)
            });
        }
        let obj: S::Item = serde_json::from_value(ev.object).map_err(|e| ApiError::Decode {
            what: "object in watch event",
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let new_rv = obj.meta().resource_version.clone();
        match ev.kind.as_str() {
            "ADDED" | "MODIFIED" => self.store.upsert(obj),
            "DELETED" => self.store.remove(&obj),
            "BOOKMARK" => {}
            other => debug!(kind = other, "ignoring unknown watch event type"),
        }
        if let Some(v) = new_rv.filter(|v| !v.is_empty()) {
            *rv = v;
        }
        Ok(())
    }
}

/// Every watcher of the `[kubernetes]` component; run them with [`Watchers::run`].
pub struct Watchers {
    pub(crate) tasks: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
    pub(crate) status: StatusHandle,
}

impl Watchers {
    /// Runs every watcher (and the peer owner resolver) until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let all = futures_join_all(self.tasks);
        tokio::select! {
            _ = shutdown => {
                self.status.set_state(ComponentState::Stopped, None);
            }
            _ = all => {}
        }
    }
}

/// Polls every future to completion (they run forever here).
async fn futures_join_all(mut v: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>) {
    std::future::poll_fn(move |cx| {
        v.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if v.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

async fn check_status(url: &str, resp: reqwest::Response) -> Result<reqwest::Response, ApiError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.bytes().await.unwrap_or_default();
    let st: ApiStatus = serde_json::from_slice(&body).unwrap_or_default();
    let message = st
        .message
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned());
    if status.as_u16() == 410 {
        return Err(ApiError::Gone(message));
    }
    Err(ApiError::Status {
        url: url.to_string(),
        status: status.as_u16(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::objects::Pod;

    #[test]
    fn pod_without_status_or_ids_has_no_containers() {
        let p: Pod = serde_json::from_str(
            r#"{"metadata":{"name":"p","namespace":"n","uid":"u"},"status":{"containerStatuses":[{"name":"c","ready":false}]}}"#,
        )
        .unwrap();
        assert!(p.container_ids().is_empty());
        let p: Pod = serde_json::from_str(r#"{"metadata":{"name":"p","namespace":"n"}}"#).unwrap();
        assert_eq!(p.key().as_deref(), Some("n/p"));
        assert!(p.container_ids().is_empty());
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_json_never_panics(s in ".{0,400}") {
            let _ = serde_json::from_str::<Pod>(&s).map(|p| p.container_ids().len());
            let _ = serde_json::from_str::<WatchEvent>(&s);
            let _ = serde_json::from_str::<List<Pod>>(&s);
        }
    }
}
