//! `[logs]` as an agent component: one thread per source (pod logs, each `[[logs.files]]`,
//! the kernel log), and `GET /api/v1/logs/files` (per-file offsets and checkpoint lag).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use nodescope_component::{BuildContext, BuildError, Component, Parts, Task, ValidateContext};
use nodescope_model::config::Issues;
use nodescope_model::workload::SharedPodLookup;
use nodescope_model::{ComponentKind, ComponentState, SignalKind};
use parking_lot::Mutex;
use tracing::info;

use crate::config::{FilesConfig, LogsConfig};
use crate::glob::Glob;
use crate::kmsgsource::{KmsgSource, KmsgSpec};
use crate::meta::{parse_pod_path, service_name, FileMeta};
use crate::metrics::SourceMetrics;
use crate::tailer::{MetaFn, MultilineRule, StatusBoard, Tailer, TailerSpec};

/// Joins an absolute path under the host root.
fn under(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

impl LogsConfig {
    fn spec(&self, name: &str, checkpoint_dir: &Path, meta: MetaFn) -> TailerSpec {
        TailerSpec {
            name: name.to_string(),
            include: Vec::new(),
            exclude: Vec::new(),
            follow_links: false,
            format: crate::format::Format::Auto,
            multiline: None,
            meta,
            start_at: self.start_at,
            max_open_files: self.max_open_files,
            max_tracked_files: self.max_tracked_files,
            max_line_bytes: self.max_line_bytes,
            read_chunk_bytes: self.read_chunk_bytes,
            max_inflight_bytes: self.max_inflight_bytes,
            batch_lines: self.batch_lines,
            poll_interval: self.poll_interval,
            discover_interval: self.discover_interval,
            rotated_close_after: self.rotated_close_after,
            file_bytes_per_sec: self.rate_limit.file_bytes_per_sec,
            source_bytes_per_sec: self.rate_limit.source_bytes_per_sec,
            node_bucket: None,
            checkpoint_dir: checkpoint_dir.to_path_buf(),
        }
    }

    /// The pod-logs tailer: `<host_root>/<pods.path>/*/*/*.log`.
    pub fn pods_spec(
        &self,
        host_root: &Path,
        node: Option<String>,
        pods: SharedPodLookup,
    ) -> Result<TailerSpec, crate::glob::GlobError> {
        let dir = under(host_root, &self.pods.path);
        let containers = under(host_root, Path::new("/var/log/containers"));
        let meta: MetaFn = Arc::new(move |p: &Path| match parse_pod_path(p) {
            Some(pp) => {
                let service = pods
                    .as_ref()
                    .and_then(|l| {
                        container_id_for(&containers, p).and_then(|id| l.pod_for_container(&id))
                    })
                    .and_then(|r| service_name(&r.labels).map(str::to_string));
                FileMeta::for_pod(&pp, p, node.as_deref(), service.as_deref())
            }
            None => FileMeta::for_file(p, "pods", node.as_deref()),
        });
        let mut s = self.spec("pods", &self.state_dir, meta);
        s.include = vec![Glob::new(&format!("{}/*/*/*.log", dir.display()))?];
        s.exclude = self
            .pods
            .exclude
            .iter()
            .map(|g| Glob::new(g).and_then(|g| g.under(host_root)))
            .collect::<Result<_, _>>()?;
        s.format = self.pods.format;
        Ok(s)
    }

    pub fn files_spec(
        &self,
        f: &FilesConfig,
        host_root: &Path,
        node: Option<String>,
    ) -> Result<TailerSpec, BuildError> {
        let key = "logs.files";
        let job = f.name.clone();
        let meta: MetaFn = Arc::new(move |p: &Path| FileMeta::for_file(p, &job, node.as_deref()));
        let mut s = self.spec(&format!("files-{}", f.name), &self.state_dir, meta);
        let glob = |g: &String| {
            Glob::new(g)
                .and_then(|g| g.under(host_root))
                .map_err(|e| BuildError::new(key, e))
        };
        s.include = f.include.iter().map(glob).collect::<Result<_, _>>()?;
        s.exclude = f.exclude.iter().map(glob).collect::<Result<_, _>>()?;
        s.follow_links = f.follow_links;
        s.format = f.format;
        if let Some(m) = &f.multiline {
            s.multiline = Some(MultilineRule {
                start: regex::Regex::new(&m.start).map_err(|e| BuildError::new(key, e))?,
                max_lines: m.max_lines,
                max_bytes: m.max_bytes,
                timeout: m.timeout,
            });
        }
        Ok(s)
    }
}

/// The container id of a pod log file, from the `/var/log/containers` symlink that
/// points at it (`<pod>_<namespace>_<container>-<id>.log`).
fn container_id_for(containers: &Path, target: &Path) -> Option<String> {
    let pp = parse_pod_path(target)?;
    let prefix = format!("{}_{}_{}-", pp.pod, pp.namespace, pp.container);
    std::fs::read_dir(containers)
        .ok()?
        .flatten()
        .take(20_000)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix) && n.ends_with(".log"))
        .find(|n| {
            std::fs::read_link(containers.join(n)).is_ok_and(|l| {
                // The link names the host's path; `target` may be under the host root.
                let l = l.strip_prefix("/").unwrap_or(&l).to_path_buf();
                target.ends_with(&l)
            })
        })
        .map(|n| n[prefix.len()..n.len() - 4].to_string())
}

impl Component for LogsConfig {
    fn key(&self) -> &'static str {
        "logs"
    }

    fn enabled(&self) -> bool {
        self.enabled
    }

    /// No environment check of `state_dir` here: whether the sources run depends on the
    /// exporters, which validation of this table cannot see; `build` creates the directory
    /// and stops start-up with the reason when it cannot.
    fn validate(&self, _ctx: &ValidateContext, issues: &mut Issues) {
        LogsConfig::validate(self, "logs", issues);
    }

    fn build(&self, ctx: &BuildContext) -> Result<Parts, BuildError> {
        if !ctx.wants(SignalKind::Logs) {
            info!("logs: no exporter takes logs ([exporters.loki] or [exporters.otlp]); log sources off");
            return Ok(Parts::default());
        }
        std::fs::create_dir_all(&self.state_dir).map_err(|e| {
            BuildError::new(
                "logs.state_dir",
                format!("{}: {e}", self.state_dir.display()),
            )
        })?;
        let node = ctx
            .agent
            .node_name
            .clone()
            .or_else(|| ctx.resource.get("host.name").map(str::to_string));
        let board: StatusBoard = Arc::new(Mutex::new(HashMap::new()));
        let mut parts = Parts::default();
        let mut specs = Vec::new();
        if self.pods.enabled {
            let s = self
                .pods_spec(&ctx.host.root, node.clone(), ctx.pods())
                .map_err(|e| BuildError::new("logs.pods", e))?;
            specs.push(s);
        }
        for f in &self.files {
            specs.push(self.files_spec(f, &ctx.host.root, node.clone())?);
        }
        let node_bucket = crate::tailer::ByteBucket::new(self.rate_limit.node_bytes_per_sec);
        for mut spec in specs {
            spec.node_bucket = node_bucket.clone();
            let name = spec.name.clone();
            let metrics = SourceMetrics::register(&ctx.self_metrics, &name);
            let status = ctx
                .status
                .register(format!("logs/{name}"), ComponentKind::Collector);
            status.set_detail(
                "include",
                spec.include
                    .iter()
                    .map(|g| g.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            );
            status.set_state(ComponentState::Ok, None);
            let tailer = Tailer::new(spec, ctx.emitter.clone(), metrics).with_board(board.clone());
            let stop = ctx.shutdown.clone();
            let drain = ctx.agent.shutdown_timeout / 2;
            parts = parts.with_task(Task::thread(format!("logs-{name}"), move || {
                tailer.run(|| stop.is_cancelled(), drain);
                status.set_state(ComponentState::Stopped, None);
            }));
            info!(source = %name, "log source started");
        }
        if self.kmsg.enabled {
            let metrics = SourceMetrics::register(&ctx.self_metrics, "kmsg");
            let status = ctx.status.register("logs/kmsg", ComponentKind::Collector);
            match crate::kmsgsource::check_readable(&self.kmsg.path) {
                Ok(()) => {
                    status.set_state(ComponentState::Ok, None);
                    let src = KmsgSource::new(
                        KmsgSpec {
                            path: self.kmsg.path.clone(),
                            boot_id_path: ctx.host.proc.join("sys/kernel/random/boot_id"),
                            checkpoint_dir: self.state_dir.clone(),
                            node_name: node.clone(),
                            batch_lines: self.batch_lines,
                            max_inflight_batches: 64,
                        },
                        ctx.emitter.clone(),
                        metrics,
                    );
                    let stop = ctx.shutdown.clone();
                    parts = parts.with_task(Task::thread("logs-kmsg", move || {
                        src.run(|| stop.is_cancelled());
                        status.set_state(ComponentState::Stopped, None);
                    }));
                    info!(path = %self.kmsg.path.display(), "kernel log source started");
                }
                Err(e) => {
                    // Like a probe without privileges: down with the reason, the rest runs.
                    tracing::warn!(error = %e, "kernel log unavailable");
                    status.set_state(ComponentState::Unavailable, Some(e.to_string()));
                }
            }
        }
        let b = board.clone();
        let router = Router::new().route(
            "/api/v1/logs/files",
            get(move || {
                let b = b.clone();
                async move {
                    let mut all: Vec<_> = b.lock().values().flatten().cloned().collect();
                    all.sort_by(|x, y| x.path.cmp(&y.path));
                    Json(all)
                }
            }),
        );
        Ok(parts.with_router(router))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_id_from_the_var_log_containers_symlink() {
        let root = tempfile::tempdir().unwrap();
        let pod_dir = root.path().join("var/log/pods/shop_cart-1_u1/cart");
        std::fs::create_dir_all(&pod_dir).unwrap();
        let file = pod_dir.join("0.log");
        std::fs::write(&file, b"").unwrap();
        let containers = root.path().join("var/log/containers");
        std::fs::create_dir_all(&containers).unwrap();
        let id = "ab".repeat(32);
        // The kubelet's link names the host path, not the path under our host root.
        std::os::unix::fs::symlink(
            "/var/log/pods/shop_cart-1_u1/cart/0.log",
            containers.join(format!("cart-1_shop_cart-{id}.log")),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "/var/log/pods/shop_cart-1_u1/other/0.log",
            containers.join(format!("cart-1_shop_other-{}.log", "cd".repeat(32))),
        )
        .unwrap();
        assert_eq!(container_id_for(&containers, &file), Some(id));
        assert_eq!(
            container_id_for(&containers, &pod_dir.join("1.log")),
            None,
            "restart 1 has its own link"
        );
    }

    struct Pods;
    impl nodescope_model::workload::PodLookup for Pods {
        fn pod_for_container(&self, id: &str) -> Option<nodescope_model::workload::PodRef> {
            (id == "ab".repeat(32)).then(|| nodescope_model::workload::PodRef {
                namespace: "shop".into(),
                pod: "cart-1".into(),
                container: "cart".into(),
                labels: vec![("app".into(), "cart-svc".into())],
            })
        }
    }

    #[test]
    fn pod_labels_from_the_path_and_service_name_from_the_pod_cache() {
        let root = tempfile::tempdir().unwrap();
        let pod_dir = root.path().join("var/log/pods/shop_cart-1_u1/cart");
        std::fs::create_dir_all(&pod_dir).unwrap();
        let containers = root.path().join("var/log/containers");
        std::fs::create_dir_all(&containers).unwrap();
        std::os::unix::fs::symlink(
            "/var/log/pods/shop_cart-1_u1/cart/0.log",
            containers.join(format!("cart-1_shop_cart-{}.log", "ab".repeat(32))),
        )
        .unwrap();
        let cfg = LogsConfig::default();
        let spec = cfg
            .pods_spec(root.path(), Some("n1".into()), Some(Arc::new(Pods)))
            .unwrap();
        let m = (spec.meta)(&pod_dir.join("0.log"));
        let get = |k: &str| {
            m.labels
                .iter()
                .find(|(a, _)| a == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("namespace"), Some("shop"));
        assert_eq!(get("pod"), Some("cart-1"));
        assert_eq!(get("container"), Some("cart"));
        assert_eq!(get("job"), Some("shop/cart"));
        assert_eq!(get("node_name"), Some("n1"));
        assert_eq!(get("service_name"), Some("cart-svc"));
        // Without the pod cache (or once the pod is gone): the path still names it.
        let spec = cfg.pods_spec(root.path(), None, None).unwrap();
        let m = (spec.meta)(&pod_dir.join("0.log"));
        assert!(m.labels.iter().any(|(k, v)| k == "pod" && v == "cart-1"));
        assert!(!m.labels.iter().any(|(k, _)| k == "service_name"));
        assert!(spec.include[0].matches(&pod_dir.join("0.log")));
    }
}
