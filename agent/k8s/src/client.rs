//! List + watch of this node's pods against the Kubernetes API server.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodescope_model::backoff::{jittered, Backoff, BackoffPolicy};
use nodescope_model::selfmetrics::{Counter, SelfMetrics};
use nodescope_model::status::{ComponentState, StatusHandle};
use serde::Deserialize;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::cache::{normalize_container_id, PodCache};
use crate::{K8sError, RESYNC_JITTER};

/// Longest single watch event line accepted (a pod object is a few KiB; 8 MiB leaves
/// room for pods with huge annotations while keeping memory bounded).
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;
/// Page size of list requests.
pub const LIST_PAGE: u32 = 500;

// ---- The parts of the API's JSON we read (unknown fields are ignored: this is external
// input and the API adds fields over time). ----

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ObjectMeta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    #[serde(rename = "resourceVersion")]
    pub resource_version: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ContainerStatus {
    pub name: Option<String>,
    #[serde(rename = "containerID")]
    pub container_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct PodStatus {
    #[serde(rename = "containerStatuses", default)]
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(rename = "initContainerStatuses", default)]
    pub init_container_statuses: Vec<ContainerStatus>,
    #[serde(rename = "ephemeralContainerStatuses", default)]
    pub ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: Option<PodStatus>,
}

impl Pod {
    /// Cache key: the uid, else namespace/name.
    pub fn key(&self) -> Option<String> {
        if let Some(uid) = self.metadata.uid.as_ref().filter(|u| !u.is_empty()) {
            return Some(uid.clone());
        }
        match (&self.metadata.namespace, &self.metadata.name) {
            (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
            _ => None,
        }
    }

    /// (normalized container id, container name) of every started container.
    pub fn container_ids(&self) -> Vec<(String, &str)> {
        let Some(st) = &self.status else {
            return Vec::new();
        };
        st.container_statuses
            .iter()
            .chain(&st.init_container_statuses)
            .chain(&st.ephemeral_container_statuses)
            .filter_map(|c| {
                let id = normalize_container_id(c.container_id.as_deref()?)?;
                Some((id, c.name.as_deref().unwrap_or("")))
            })
            .collect()
    }
}

#[derive(Debug, Default, Deserialize)]
struct ListMeta {
    #[serde(rename = "resourceVersion")]
    resource_version: Option<String>,
    #[serde(rename = "continue")]
    continue_token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PodList {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<Pod>,
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

pub(crate) struct WatcherSettings {
    pub api_server: String,
    pub node_name: String,
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
    pub resync_interval: Duration,
    pub watch_timeout: Duration,
    pub request_timeout: Duration,
    pub backoff: BackoffPolicy,
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
    fn register(m: &SelfMetrics) -> Self {
        Self {
            relist: RELIST_REASONS.map(|r| {
                m.counter(
                    "nodescope_k8s_relists_total",
                    "Full pod lists fetched from the API server, by reason.",
                    &[("reason", r)],
                )
            }),
            events: EVENT_TYPES.map(|t| {
                m.counter(
                    "nodescope_k8s_watch_events_total",
                    "Pod watch events received, by type.",
                    &[("type", t)],
                )
            }),
            api_errors: m.counter(
                "nodescope_k8s_api_errors_total",
                "Failed API server requests (list or watch).",
                &[],
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

/// Keeps a [`PodCache`] in sync with the API server.
pub struct PodWatcher {
    s: WatcherSettings,
    http: reqwest::Client,
    cache: Arc<PodCache>,
    metrics: WatcherMetrics,
    status: StatusHandle,
}

enum WatchEnd {
    /// Server closed the stream normally (timeoutSeconds): resume from the last version.
    Resume,
    /// Time for the periodic full re-list.
    Resync,
}

impl PodWatcher {
    pub(crate) fn new(
        s: WatcherSettings,
        cache: Arc<PodCache>,
        metrics: &SelfMetrics,
        status: StatusHandle,
    ) -> Result<Self, K8sError> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(2)
            .user_agent(concat!("nodescope/", env!("CARGO_PKG_VERSION")));
        if s.api_server.starts_with("https://") && s.ca_file.exists() {
            let pem = std::fs::read(&s.ca_file).map_err(|e| K8sError::Ca {
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
        Ok(Self {
            s,
            http,
            cache,
            metrics: WatcherMetrics::register(metrics),
            status,
        })
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let span = info_span!("k8s_pods", node = %self.s.node_name);
        tokio::select! {
            _ = shutdown => {
                self.status.set_state(ComponentState::Stopped, None);
            }
            _ = self.run_forever().instrument(span) => {}
        }
    }

    async fn run_forever(&self) {
        let mut reason = Relist::Initial;
        let mut backoff = Backoff::new(self.s.backoff);
        // The newest resourceVersion seen (list or watch): a re-list asks the API
        // server's watch cache for a state not older than it. None: "0", any cached state.
        let mut last_rv: Option<String> = None;
        loop {
            self.metrics.relist[reason as usize].inc();
            let t0 = Instant::now();
            let rv = match self.list(last_rv.as_deref()).await {
                Ok((pods, rv)) => {
                    let n = pods.len();
                    self.cache.replace(pods);
                    self.status.success(t0.elapsed());
                    self.status.set_detail("pods", n.to_string());
                    info!(pods = n, resource_version = %rv, reason = ?reason, "listed pods");
                    backoff.reset();
                    rv
                }
                Err(e) => {
                    self.metrics.api_errors.inc();
                    let delay = backoff.next_delay(None);
                    warn!(error = %e, retry_in = ?delay, "listing pods failed");
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
            tokio::time::Instant::now() + jittered(self.s.resync_interval, RESYNC_JITTER);
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
                    warn!(error = %e, "pod watch failed; re-listing");
                    self.status
                        .failure(ComponentState::Degraded, e.to_string(), None);
                    return Relist::Error;
                }
            }
        }
    }

    fn pods_url(&self) -> String {
        format!("{}/api/v1/pods", self.s.api_server)
    }

    fn field_selector(&self) -> String {
        format!("spec.nodeName={}", self.s.node_name)
    }

    async fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match tokio::fs::read_to_string(&self.s.token_file).await {
            Ok(t) if !t.trim().is_empty() => req.bearer_auth(t.trim()),
            _ => req,
        }
    }

    /// Lists the node's pods from the API server's watch cache, not from etcd: with
    /// `resourceVersion=0` (any cached state; the initial list and after errors) or
    /// `resourceVersion=<min_rv>` (a state not older than what we already saw; re-lists
    /// after a resync or `410 Gone`), as client-go's reflector does. The cache ignores
    /// `limit` for `0`; for a version, paging is left off so the cache can answer.
    /// Pages after the first carry only `continue` (the API refuses a version with it).
    async fn list(&self, min_rv: Option<&str>) -> Result<(Vec<Pod>, String), ApiError> {
        let url = self.pods_url();
        let mut all = Vec::new();
        let mut cont: Option<String> = None;
        loop {
            let mut q: Vec<(&str, String)> = vec![("fieldSelector", self.field_selector())];
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
                .authorized(
                    self.http
                        .get(&url)
                        .query(&q)
                        .timeout(self.s.request_timeout),
                )
                .await;
            let resp = req.send().await.map_err(|source| ApiError::Http {
                url: url.clone(),
                source,
            })?;
            let resp = check_status(&url, resp).await?;
            let body = resp.bytes().await.map_err(|source| ApiError::Http {
                url: url.clone(),
                source,
            })?;
            let page: PodList = serde_json::from_slice(&body).map_err(|e| ApiError::Decode {
                what: "pod list",
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
        let url = self.pods_url();
        let q: Vec<(&str, String)> = vec![
            ("fieldSelector", self.field_selector()),
            ("watch", "true".into()),
            ("resourceVersion", rv.clone()),
            ("allowWatchBookmarks", "true".into()),
            ("timeoutSeconds", self.s.watch_timeout.as_secs().to_string()),
        ];
        let req = self
            .authorized(
                self.http
                    .get(&url)
                    .query(&q)
                    .timeout(self.s.watch_timeout + Duration::from_secs(30)),
            )
            .await;
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

    /// Applies one watch event line to the cache and advances `rv`.
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
        let pod: Pod = serde_json::from_value(ev.object).map_err(|e| ApiError::Decode {
            what: "pod in watch event",
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let new_rv = pod.metadata.resource_version.clone();
        match ev.kind.as_str() {
            "ADDED" | "MODIFIED" => self.cache.upsert(pod),
            "DELETED" => {
                if let Some(k) = pod.key() {
                    self.cache.remove(&k);
                }
            }
            "BOOKMARK" => {}
            other => debug!(kind = other, "ignoring unknown watch event type"),
        }
        if let Some(v) = new_rv.filter(|v| !v.is_empty()) {
            *rv = v;
        }
        Ok(())
    }
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
            let _ = serde_json::from_str::<PodList>(&s);
        }
    }
}
