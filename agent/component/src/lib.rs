//! The one interface every part of the agent implements.
//!
//! A *component* is a configuration table (`[host]`, `[network]`, `[exporters.loki]`,
//! `[logs]`, ...) that knows whether it is enabled, how to validate itself (every problem,
//! each with its dotted key, including the environment checks `run` would otherwise fail
//! on: files readable, directories creatable), and how to build itself from a
//! [`BuildContext`] into [`Parts`]: collectors, exporters, HTTP routes, tasks and, for the
//! Kubernetes component, the pod lookup. The agent (`agent/nodescope/src/app.rs`) builds
//! the components of one ordered list, merges their parts, runs them, and joins every task
//! at shutdown; `Config::validate` loops over the same list. Adding a capability is adding
//! one entry to that list.
//!
//! Components meet only through this crate and `nodescope-model`: the emitter into the
//! pipeline, the status registry, self metrics, the pod lookup and the late-bound
//! [`Services`] registry (e.g. the flight recorder's sample sink, which the profiler feeds).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use nodescope_model::config::Issues;
use nodescope_model::host::HostPaths;
use nodescope_model::selfmetrics::SelfMetrics;
use nodescope_model::workload::{PodLookup, SharedPodLookup};
use nodescope_model::{
    Collector, Emitter, Exporter, Resource, Services, SignalKind, StatusRegistry,
};
pub use tokio_util::sync::CancellationToken;

/// Agent-wide settings every component may read (from `[agent]`, after the environment
/// overrides).
#[derive(Clone, Debug)]
pub struct AgentSettings {
    pub listen: SocketAddr,
    pub host_root: PathBuf,
    pub collect_interval: Duration,
    pub collector_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub queue_capacity: usize,
    /// `[agent].node_name`, else `$NODE_NAME`, else the host name.
    pub node_name: Option<String>,
}

impl AgentSettings {
    pub fn listen_is_loopback(&self) -> bool {
        self.listen.ip().is_loopback()
    }
}

/// What validation may look at besides the component's own table.
#[derive(Clone, Debug)]
pub struct ValidateContext {
    pub agent: AgentSettings,
    /// How to name the host root in an error: `agent.host_root`, or `NODESCOPE_HOST_ROOT`
    /// when the environment set it.
    pub host_root_key: &'static str,
    /// Also check what `build` will depend on (files, directories, the host root); off for
    /// `nodescope validate --offline`.
    pub environment: bool,
}

/// What a component is built from. Built components may keep clones of any of it.
#[derive(Clone)]
pub struct BuildContext {
    pub agent: AgentSettings,
    pub host: HostPaths,
    pub resource: Resource,
    pub self_metrics: SelfMetrics,
    pub status: StatusRegistry,
    /// Never-blocking sender into the pipeline.
    pub emitter: Emitter,
    /// Cancelled when the agent shuts down: tasks and threads must return soon after.
    pub shutdown: CancellationToken,
    /// Late-bound services shared between components (look them up at run time).
    pub services: Services,
    pods: SharedPodLookup,
    wanted: [bool; 3],
}

impl std::fmt::Debug for BuildContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildContext")
            .field("agent", &self.agent)
            .field("host", &self.host)
            .field("wanted", &self.wanted)
            .field("pods", &self.pods.is_some())
            .finish_non_exhaustive()
    }
}

impl BuildContext {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        agent: AgentSettings,
        host: HostPaths,
        resource: Resource,
        self_metrics: SelfMetrics,
        status: StatusRegistry,
        emitter: Emitter,
        shutdown: CancellationToken,
        services: Services,
    ) -> Self {
        BuildContext {
            agent,
            host,
            resource,
            self_metrics,
            status,
            emitter,
            shutdown,
            services,
            pods: None,
            wanted: [false; 3],
        }
    }

    /// The pod metadata lookup, once the Kubernetes component (earlier in the list) has
    /// provided one.
    pub fn pods(&self) -> SharedPodLookup {
        self.pods.clone()
    }

    /// Whether an exporter built so far takes `kind` (exporters come first in the list, so
    /// producers see the final answer): with no profile exporter, continuous profiling is
    /// pointless; with no metrics exporter, nothing needs periodic collection.
    pub fn wants(&self, kind: SignalKind) -> bool {
        self.wanted[kind.index()]
    }

    /// Takes in what a built component contributes to the context of the ones after it.
    pub fn absorb(&mut self, parts: &Parts) {
        if let Some(p) = &parts.pods {
            self.pods = Some(p.clone());
        }
        for e in &parts.exporters {
            for k in SignalKind::ALL {
                self.wanted[k.index()] |= e.accepts(k);
            }
        }
    }
}

/// Why a component could not be built. Says which component and why; the agent stops
/// start-up with it (a configured component that silently did not run would lose data).
#[derive(Debug, thiserror::Error)]
#[error("[{key}]: {reason}")]
pub struct BuildError {
    pub key: String,
    pub reason: String,
}

impl BuildError {
    pub fn new(key: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        BuildError {
            key: key.into(),
            reason: reason.to_string(),
        }
    }
}

/// One component of the agent. Implemented by each capability's `*Config`.
pub trait Component: Send + Sync {
    /// The dotted config key of its table (`host`, `exporters.loki`): the prefix of its
    /// validation errors and the name of its span.
    fn key(&self) -> &'static str;

    /// Whether `build` should run.
    fn enabled(&self) -> bool;

    /// Records every problem under [`Component::key`], and, when `ctx.environment`, the
    /// environment checks that `build` depends on, so that what `nodescope validate`
    /// accepts, `run` starts. Called for disabled components only when
    /// [`Component::validate_when_disabled`] says so.
    fn validate(&self, ctx: &ValidateContext, issues: &mut Issues);

    /// Builds the runtime parts. Runs inside the agent's tokio runtime; must not block for
    /// long (no network I/O: start that in a task).
    fn build(&self, ctx: &BuildContext) -> Result<Parts, BuildError>;

    /// Most components validate only when enabled (a disabled exporter's table may be a
    /// half-written template). Components whose keys apply either way return true.
    fn validate_when_disabled(&self) -> bool {
        false
    }
}

/// What a built component contributes to the agent.
#[derive(Default)]
pub struct Parts {
    /// Run on scrapes and on the push interval, each under the collector timeout.
    pub collectors: Vec<Arc<dyn Collector>>,
    /// Consume signals from the pipeline.
    pub exporters: Vec<Box<dyn Exporter>>,
    /// HTTP routes, merged into the agent's router (behind the same auth and limits).
    pub router: Option<Router>,
    /// Long-running work, started once every component is built and joined at shutdown.
    pub tasks: Vec<Task>,
    /// Pod metadata for the components after this one.
    pub pods: Option<Arc<dyn PodLookup>>,
}

impl Parts {
    pub fn with_collector(mut self, c: Arc<dyn Collector>) -> Self {
        self.collectors.push(c);
        self
    }
    pub fn with_exporter(mut self, e: Box<dyn Exporter>) -> Self {
        self.exporters.push(e);
        self
    }
    pub fn with_router(mut self, r: Router) -> Self {
        self.router = Some(match self.router.take() {
            Some(prev) => prev.merge(r),
            None => r,
        });
        self
    }
    pub fn with_task(mut self, t: Task) -> Self {
        self.tasks.push(t);
        self
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

enum TaskBody {
    Future(BoxFuture),
    Thread(Box<dyn FnOnce() + Send + 'static>),
}

/// Long-running work of a component: a future on the runtime or a dedicated OS thread
/// (for blocking loops such as the continuous profiler). Either must return soon after
/// the context's shutdown token is cancelled.
pub struct Task {
    name: String,
    body: TaskBody,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task").field("name", &self.name).finish()
    }
}

impl Task {
    pub fn future(name: impl Into<String>, fut: impl Future<Output = ()> + Send + 'static) -> Self {
        Task {
            name: name.into(),
            body: TaskBody::Future(Box::pin(fut)),
        }
    }

    pub fn thread(name: impl Into<String>, f: impl FnOnce() + Send + 'static) -> Self {
        Task {
            name: name.into(),
            body: TaskBody::Thread(Box::new(f)),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts the task (on the current runtime, or on a new thread named `ns-<name>`).
    pub fn start(self) -> Result<RunningTask, std::io::Error> {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        match self.body {
            TaskBody::Future(fut) => {
                tokio::spawn(async move {
                    fut.await;
                    let _ = done_tx.send(());
                });
            }
            TaskBody::Thread(f) => {
                let short: String = self.name.chars().take(12).collect();
                std::thread::Builder::new()
                    .name(format!("ns-{short}"))
                    .spawn(move || {
                        f();
                        let _ = done_tx.send(());
                    })?;
            }
        }
        Ok(RunningTask {
            name: self.name,
            done: done_rx,
        })
    }
}

/// A started task, to be joined at shutdown.
pub struct RunningTask {
    name: String,
    done: tokio::sync::oneshot::Receiver<()>,
}

impl RunningTask {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until the task returns or `deadline` passes; true if it returned. (A task that
    /// panicked counts as returned: its sender is dropped.)
    pub async fn join_until(self, deadline: tokio::time::Instant) -> bool {
        tokio::time::timeout_at(deadline, self.done).await.is_ok()
    }
}

/// True when `Accept-Encoding` lists gzip (or `*`) with a non-zero quality.
pub fn accepts_gzip(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let q_zero = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !q_zero
        })
}

/// For the environment part of `validate` (a WAL directory, the recorder's spool): `dir`
/// exists as a directory the agent may write to, or could be created as one (its nearest
/// existing ancestor is a writable directory). Nothing is created. A file in the way or a
/// read-only filesystem is caught here rather than when the component first writes.
pub fn creatable_dir(dir: &std::path::Path) -> Result<(), String> {
    // The spool would be created under an ancestor `a` that cannot hold it.
    let blocked = |a: &std::path::Path, why: &str| {
        format!("{} cannot be created: {} {why}", dir.display(), a.display())
    };
    let mut p = dir;
    loop {
        match std::fs::metadata(p) {
            Ok(m) if !m.is_dir() => {
                return Err(if p == dir {
                    format!("{} exists and is not a directory", p.display())
                } else {
                    blocked(p, "is not a directory")
                })
            }
            Ok(_) => break,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                match p.parent() {
                    Some(parent) => p = parent,
                    None => return Err(format!("{}: no existing ancestor", dir.display())),
                }
            }
            Err(e) => return Err(format!("{}: {e}", p.display())),
        }
    }
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{}: contains a NUL byte", dir.display()))?;
    // SAFETY: `c` is a valid NUL-terminated path; access(2) only reads it.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(if p == dir {
            format!("{} is not writable: {e}", dir.display())
        } else {
            blocked(p, &format!("is not writable: {e}"))
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tasks_of_both_kinds_are_joined_after_shutdown() {
        let shutdown = CancellationToken::new();
        let stopped = Arc::new(AtomicBool::new(false));
        let (s1, st1) = (shutdown.clone(), stopped.clone());
        let thread = Task::thread("loop", move || {
            while !s1.is_cancelled() {
                std::thread::sleep(Duration::from_millis(5));
            }
            st1.store(true, Ordering::Release);
        })
        .start()
        .unwrap();
        let s2 = shutdown.clone();
        let fut = Task::future("watch", async move { s2.cancelled().await })
            .start()
            .unwrap();
        let never = Task::future("stuck", std::future::pending())
            .start()
            .unwrap();
        shutdown.cancel();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        assert!(thread.join_until(deadline).await);
        assert!(stopped.load(Ordering::Acquire));
        assert!(fut.join_until(deadline).await);
        let short = tokio::time::Instant::now() + Duration::from_millis(50);
        assert!(
            !never.join_until(short).await,
            "a task that ignores shutdown is reported"
        );
    }

    #[test]
    fn creatable_dir_names_what_is_in_the_way() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(creatable_dir(d.path()), Ok(()));
        // Not there yet, but creatable.
        assert_eq!(creatable_dir(&d.path().join("a/b")), Ok(()));
        let f = d.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        let e = creatable_dir(&f).unwrap_err();
        assert!(e.ends_with("exists and is not a directory"), "{e}");
        let e = creatable_dir(&f.join("spool")).unwrap_err();
        assert!(
            e.contains("cannot be created") && e.contains("is not a directory"),
            "{e}"
        );
        // A read-only filesystem refuses even root.
        if std::path::Path::new("/proc/sys").exists() {
            let e = creatable_dir(std::path::Path::new("/proc/sys/nodescope-spool")).unwrap_err();
            assert!(
                e.contains("not writable") || e.contains("cannot be created"),
                "{e}"
            );
        }
    }
}
