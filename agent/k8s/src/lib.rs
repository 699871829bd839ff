//! Kubernetes pod metadata: container id → pod name, namespace, container name and a
//! selected set of pod labels.
//!
//! Source: the API server. The agent lists and then watches the pods *of its own node*
//! (`fieldSelector=spec.nodeName=<node>`), resumes watches from the last
//! `resourceVersion` (bookmarks requested), re-lists on `410 Gone`, on errors (with
//! backoff) and every `resync_interval`. The cache is bounded by `max_pods`;
//! evictions are counted.
//!
//! The HTTP client is `reqwest` (already in the workspace) with a small serde model of
//! the fields we read, not kube-rs + k8s-openapi: those pull in several hundred thousand
//! lines of generated types for the one resource and verb we need, which is a large
//! compile cost on a 2-core build for no behaviour we use.

mod cache;
mod client;
mod component;
mod objects;
mod peers;

use std::path::PathBuf;
use std::time::Duration;

use nodescope_model::config::Issues;
use nodescope_model::selfmetrics::SelfMetrics;
use nodescope_model::status::{ComponentKind, StatusRegistry};
use serde::{Deserialize, Serialize};

pub use cache::{normalize_container_id, CacheMetrics, PodCache};
pub use client::{ApiError, Watchers};
pub use peers::PeerIndex;

/// Default location of the in-cluster service-account credentials.
pub const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// `[kubernetes]` configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// Turn pod metadata on. Off by default (bare hosts).
    pub enabled: bool,
    /// This node's name. Empty → the `NODE_NAME` environment variable (set from the
    /// downward API `spec.nodeName` in the DaemonSet).
    pub node_name: String,
    /// API server base URL. Empty → `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    pub api_server: String,
    /// Bearer token file; re-read on every request (projected tokens rotate). A missing
    /// file sends no token (for `kubectl proxy`-style endpoints).
    pub token_file: PathBuf,
    /// CA bundle for the API server certificate. A missing file uses the system roots.
    pub ca_file: PathBuf,
    /// Pod labels copied onto `PodRef.labels` (exact keys). Everything else is ignored,
    /// which keeps label cardinality bounded by this list.
    pub pod_labels: Vec<String>,
    /// Most pods kept in the cache (the kubelet default is 110 per node).
    pub max_pods: usize,
    /// Full re-list period (e.g. `"10m"`), on top of the watch.
    #[serde(with = "humantime_serde")]
    pub resync_interval: Duration,
    /// Server-side watch timeout (`timeoutSeconds`, whole seconds); the watch is then resumed.
    #[serde(with = "humantime_serde")]
    pub watch_timeout: Duration,
    /// Timeout of one list request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// First retry delay after a failed list or watch; doubles up to `max_backoff`, each
    /// delay jittered by ±20 % so the agents of a cluster do not retry in lockstep.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Name network peers by workload: watch every Service and EndpointSlice (what
    /// kube-proxy watches on every node) and look up the owner of pods seen in traffic.
    /// Off: only this node's pods name peers. See docs/kubernetes.md, "Peer naming".
    pub peers: bool,
    /// Most Services indexed (by ClusterIP).
    pub max_services: usize,
    /// Most pod addresses from EndpointSlices indexed.
    pub max_endpoints: usize,
    /// Most pods behind Services whose owner is cached.
    pub max_peer_pods: usize,
    /// Owner lookups (one GET of a pod from the API server's cache) per second at most.
    pub peer_lookups_per_second: u32,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            node_name: String::new(),
            api_server: String::new(),
            token_file: PathBuf::from(format!("{SA_DIR}/token")),
            ca_file: PathBuf::from(format!("{SA_DIR}/ca.crt")),
            pod_labels: vec![
                "app.kubernetes.io/name".into(),
                "app.kubernetes.io/instance".into(),
                "app".into(),
            ],
            max_pods: 1000,
            resync_interval: Duration::from_secs(600),
            watch_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            peers: true,
            max_services: 20_000,
            max_endpoints: 200_000,
            max_peer_pods: 20_000,
            peer_lookups_per_second: 20,
        }
    }
}

/// Jitter of retry delays and of the re-list period (±20 % / ±10 %).
pub const RETRY_JITTER: f64 = 0.2;
pub const RESYNC_JITTER: f64 = 0.1;

/// Upper bound on `pod_labels` entries.
pub const MAX_POD_LABELS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("kubernetes.node_name is empty and NODE_NAME is not set")]
    NoNodeName,
    #[error("kubernetes.api_server is empty and KUBERNETES_SERVICE_HOST is not set (not running in a pod?)")]
    NoApiServer,
    #[error("kubernetes.api_server {url:?}: {reason}")]
    BadApiServer { url: String, reason: String },
    #[error("reading CA file {path}: {reason}")]
    Ca { path: PathBuf, reason: String },
    #[error("building the HTTP client: {0}")]
    Client(String),
    #[error("invalid kubernetes config: {0}")]
    Invalid(String),
}

impl KubernetesConfig {
    /// Records every problem under `prefix` (e.g. `kubernetes`).
    pub fn validate(&self, prefix: &str, issues: &mut Issues) {
        if !self.enabled {
            return;
        }
        // Only what the file says is checked here, so a DaemonSet's config validates on a
        // laptop too. The environment fallbacks (NODE_NAME from the downward API,
        // KUBERNETES_SERVICE_HOST from the kubelet) are resolved by `build`, which fails
        // with NoNodeName / NoApiServer when they are missing at run time.
        if !self.api_server.is_empty() {
            issues.check(
                self.api_server.starts_with("https://") || self.api_server.starts_with("http://"),
                format!("{prefix}.api_server"),
                format!("{:?} must start with https:// or http://", self.api_server),
            );
        }
        issues.check(
            (1..=100_000).contains(&self.max_pods),
            format!("{prefix}.max_pods"),
            "must be between 1 and 100000",
        );
        issues.check(
            self.pod_labels.len() <= MAX_POD_LABELS,
            format!("{prefix}.pod_labels"),
            format!("at most {MAX_POD_LABELS} labels"),
        );
        for (i, l) in self.pod_labels.iter().enumerate() {
            issues.check(
                !l.is_empty() && l.len() <= 317,
                format!("{prefix}.pod_labels[{i}]"),
                "must be a non-empty label key",
            );
        }
        issues.check(
            self.resync_interval >= Duration::from_secs(1),
            format!("{prefix}.resync_interval"),
            "must be at least 1s",
        );
        issues.check(
            (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.watch_timeout),
            format!("{prefix}.watch_timeout"),
            "must be between 1s and 1h",
        );
        issues.check(
            (Duration::from_secs(1)..=Duration::from_secs(600)).contains(&self.request_timeout),
            format!("{prefix}.request_timeout"),
            "must be between 1s and 10m",
        );
        issues.check(
            (Duration::from_millis(10)..=Duration::from_secs(600)).contains(&self.initial_backoff),
            format!("{prefix}.initial_backoff"),
            "must be between 10ms and 10m",
        );
        issues.check(
            self.max_backoff >= self.initial_backoff
                && self.max_backoff <= Duration::from_secs(3600),
            format!("{prefix}.max_backoff"),
            "must be at least initial_backoff and at most 1h",
        );
        for (v, key, max) in [
            (self.max_services, "max_services", 1_000_000),
            (self.max_endpoints, "max_endpoints", 10_000_000),
            (self.max_peer_pods, "max_peer_pods", 1_000_000),
        ] {
            issues.check(
                (1..=max).contains(&v),
                format!("{prefix}.{key}"),
                format!("must be between 1 and {max}"),
            );
        }
        issues.check(
            (1..=1000).contains(&self.peer_lookups_per_second),
            format!("{prefix}.peer_lookups_per_second"),
            "must be between 1 and 1000",
        );
    }

    /// The retry backoff of the watchers: `initial_backoff` doubling to `max_backoff`,
    /// ±20 % jitter.
    pub fn backoff_policy(&self) -> nodescope_model::backoff::BackoffPolicy {
        nodescope_model::backoff::BackoffPolicy {
            initial: self.initial_backoff,
            max: self.max_backoff,
            multiplier: 2.0,
            jitter: RETRY_JITTER,
            ..Default::default()
        }
    }

    /// `node_name`, else `$NODE_NAME`.
    pub fn resolved_node_name(&self) -> Option<String> {
        if !self.node_name.is_empty() {
            return Some(self.node_name.clone());
        }
        std::env::var("NODE_NAME").ok().filter(|s| !s.is_empty())
    }

    /// `api_server`, else the in-cluster service address from the environment.
    pub fn resolved_api_server(&self) -> Result<String, K8sError> {
        if !self.api_server.is_empty() {
            return Ok(self.api_server.trim_end_matches('/').to_string());
        }
        let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| K8sError::NoApiServer)?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(format!("https://{host}:{port}"))
    }

    /// Builds the caches (hand them to probes and the profiler through
    /// [`PodMetadata::lookup`]) and the watchers (spawn `watcher.run(shutdown)`),
    /// registering self metrics and a `kubernetes` status component.
    pub fn build(
        &self,
        metrics: &SelfMetrics,
        status: &StatusRegistry,
    ) -> Result<PodMetadata, K8sError> {
        let mut issues = Issues::default();
        self.validate("kubernetes", &mut issues);
        if !issues.is_empty() {
            let all: Vec<String> = issues.list.iter().map(|i| i.to_string()).collect();
            return Err(K8sError::Invalid(all.join("; ")));
        }
        let node = self.resolved_node_name().ok_or(K8sError::NoNodeName)?;
        let api = self.resolved_api_server()?;
        let cache = std::sync::Arc::new(PodCache::new(
            self.max_pods,
            self.pod_labels.clone(),
            CacheMetrics::register(metrics),
        ));
        let handle = status.register("kubernetes", ComponentKind::Collector);
        handle.set_detail("node", node.clone());
        handle.set_detail("api_server", api.clone());
        handle.set_detail(
            "peers",
            if self.peers {
                "services + endpointslices (cluster-wide), node pods"
            } else {
                "node pods only"
            },
        );
        let client = std::sync::Arc::new(client::ApiClient::new(client::WatcherSettings {
            api_server: api,
            token_file: self.token_file.clone(),
            ca_file: self.ca_file.clone(),
            resync_interval: self.resync_interval,
            watch_timeout: self.watch_timeout,
            request_timeout: self.request_timeout,
            backoff: self.backoff_policy(),
        })?);
        let mut tasks: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> =
            Vec::new();
        let pods = client::Watcher::new(
            client.clone(),
            std::sync::Arc::new(cache::PodStore {
                cache: cache.clone(),
                node_name: node,
            }),
            metrics,
            handle.clone(),
        );
        tasks.push(Box::pin(async move { pods.run_forever().await }));
        let peers = self.peers.then(|| {
            let ix = std::sync::Arc::new(PeerIndex::new(
                self.max_services,
                self.max_endpoints,
                self.max_peer_pods,
                peers::PeerMetrics::register(metrics),
            ));
            let svc = client::Watcher::new(
                client.clone(),
                std::sync::Arc::new(peers::ServiceStore(ix.clone())),
                metrics,
                handle.clone(),
            );
            let eps = client::Watcher::new(
                client.clone(),
                std::sync::Arc::new(peers::EndpointStore(ix.clone())),
                metrics,
                handle.clone(),
            );
            tasks.push(Box::pin(async move { svc.run_forever().await }));
            tasks.push(Box::pin(async move { eps.run_forever().await }));
            tasks.push(Box::pin(
                ix.clone()
                    .resolve_owners(client.clone(), self.peer_lookups_per_second),
            ));
            ix
        });
        Ok(PodMetadata {
            cache,
            peers,
            watcher: Watchers {
                tasks,
                status: handle,
            },
        })
    }
}

impl KubernetesConfig {
    /// Convenience for the agent: `Ok(None)` when disabled; otherwise builds, spawns the
    /// watcher on the current tokio runtime (it stops when `shutdown` resolves) and returns
    /// the lookup for probes and the profiler. Must be called inside a tokio runtime.
    pub fn start(
        &self,
        metrics: &SelfMetrics,
        status: &StatusRegistry,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<nodescope_model::workload::SharedPodLookup, K8sError> {
        if !self.enabled {
            return Ok(None);
        }
        let md = self.build(metrics, status)?;
        let lookup = md.lookup();
        tokio::spawn(md.watcher.run(shutdown));
        Ok(Some(lookup))
    }
}

/// What [`KubernetesConfig::build`] returns.
pub struct PodMetadata {
    /// This node's pods (container id → pod, pod address → workload).
    pub cache: std::sync::Arc<PodCache>,
    /// Services and pods behind Services (None with `peers = false`).
    pub peers: Option<std::sync::Arc<PeerIndex>>,
    /// Keeps the caches filled; run it on the runtime.
    pub watcher: Watchers,
}

impl PodMetadata {
    /// The caches as the trait object probes and the profiler hold.
    pub fn lookup(&self) -> std::sync::Arc<dyn nodescope_model::workload::PodLookup> {
        std::sync::Arc::new(ClusterLookup {
            pods: self.cache.clone(),
            peers: self.peers.clone(),
        })
    }
}

/// [`nodescope_model::workload::PodLookup`] over this node's pods and the peer index.
pub struct ClusterLookup {
    pods: std::sync::Arc<PodCache>,
    peers: Option<std::sync::Arc<PeerIndex>>,
}

impl nodescope_model::workload::PodLookup for ClusterLookup {
    fn pod_for_container(&self, id: &str) -> Option<nodescope_model::workload::PodRef> {
        self.pods.pod_for_container(id)
    }

    /// A Service's ClusterIP names the Service; a pod address its owner (this node's
    /// pods at once, pods behind Services once their owner was fetched).
    fn peer_for_ip(&self, ip: std::net::IpAddr) -> Option<nodescope_model::workload::PeerRef> {
        let peers = self.peers.as_deref();
        if let Some(s) = peers.and_then(|p| p.service_for_ip(ip)) {
            return Some(s);
        }
        self.pods
            .peer_for_ip(ip)
            .or_else(|| peers.and_then(|p| p.peer_for_ip(ip)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_config_is_always_valid() {
        let mut issues = Issues::default();
        KubernetesConfig {
            max_pods: 0,
            ..Default::default()
        }
        .validate("kubernetes", &mut issues);
        assert!(issues.is_empty());
    }

    #[test]
    fn missing_node_name_is_a_run_time_error_not_a_config_error() {
        // No other test in this binary reads or writes NODE_NAME.
        std::env::remove_var("NODE_NAME");
        let cfg = KubernetesConfig {
            enabled: true,
            api_server: "https://10.0.0.1:6443".into(),
            ..Default::default()
        };
        let mut issues = Issues::default();
        cfg.validate("kubernetes", &mut issues);
        assert!(issues.is_empty(), "{:?}", issues.list);
        let err = cfg
            .build(&SelfMetrics::default(), &StatusRegistry::default())
            .err()
            .expect("build must fail without a node name");
        assert!(matches!(err, K8sError::NoNodeName), "{err}");
    }

    #[test]
    fn validate_reports_every_problem() {
        let cfg = KubernetesConfig {
            enabled: true,
            node_name: "n1".into(),
            api_server: "ftp://x".into(),
            max_pods: 0,
            pod_labels: vec![String::new()],
            resync_interval: Duration::from_millis(500),
            watch_timeout: Duration::ZERO,
            request_timeout: Duration::ZERO,
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::from_secs(7200),
            ..Default::default()
        };
        let mut issues = Issues::default();
        cfg.validate("kubernetes", &mut issues);
        let keys: Vec<_> = issues.list.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "kubernetes.api_server",
                "kubernetes.max_pods",
                "kubernetes.pod_labels[0]",
                "kubernetes.resync_interval",
                "kubernetes.watch_timeout",
                "kubernetes.request_timeout",
                "kubernetes.initial_backoff",
                "kubernetes.max_backoff",
            ]
        );
    }

    #[test]
    fn parses_toml_and_rejects_unknown_keys() {
        let cfg: KubernetesConfig = toml::from_str(
            "enabled = true\nnode_name = \"worker-1\"\npod_labels = [\"app\"]\nmax_pods = 200\nwatch_timeout = \"2m\"\n",
        )
        .unwrap();
        assert!(cfg.enabled);
        assert_eq!(cfg.max_pods, 200);
        assert_eq!(cfg.watch_timeout, Duration::from_secs(120));
        assert_eq!(cfg.resync_interval, Duration::from_secs(600));
        assert!(toml::from_str::<KubernetesConfig>("enable = true").is_err());
    }

    #[test]
    fn start_when_disabled_spawns_nothing() {
        let r = KubernetesConfig::default()
            .start(&SelfMetrics::new(), &StatusRegistry::default(), async {})
            .unwrap();
        assert!(r.is_none());
    }

    #[test]
    fn api_server_trailing_slash_is_trimmed() {
        let cfg = KubernetesConfig {
            api_server: "https://10.0.0.1:6443/".into(),
            ..Default::default()
        };
        assert_eq!(cfg.resolved_api_server().unwrap(), "https://10.0.0.1:6443");
    }
}
