//! Shared helpers for the profiler's component tests: build the C workloads, serve the
//! router on a loopback port, run `go tool pprof`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use nodescope_model::selfmetrics::SelfMetrics;
use nodescope_model::signal::{Emitter, Signal};
use nodescope_model::status::StatusRegistry;
use nodescope_profiler::{ProfilerContext, ProfilerService, ProfilingConfig};
use tokio::sync::mpsc;

pub const GO_PATHS: &[&str] = &["/usr/lib/go/bin/go", "/usr/bin/go"];

/// Compiles `tests/workloads/<name>.c` with frame pointers into `dir`.
pub fn build_workload(test: &str, name: &str, dir: &Path) -> Option<PathBuf> {
    let cc = nodescope_testsupport::require_tool(test, "cc", &[])?;
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workloads")
        .join(format!("{name}.c"));
    let out = dir.join(name);
    let st = Command::new(cc)
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("running cc");
    assert!(st.success(), "compiling {}", src.display());
    Some(out)
}

/// A child process killed (and reaped) on drop.
pub struct Workload(pub Child);

impl Workload {
    pub fn spawn(bin: &Path) -> Self {
        Workload(
            Command::new(bin)
                .stdout(Stdio::null())
                .spawn()
                .expect("spawning workload"),
        )
    }
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Harness {
    pub svc: Arc<ProfilerService>,
    pub addr: SocketAddr,
    pub rx: mpsc::Receiver<Signal>,
    pub metrics: SelfMetrics,
    pub status: StatusRegistry,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub async fn serve(cfg: ProfilingConfig) -> Harness {
    serve_with(cfg, Default::default(), true).await
}

/// [`serve`] with a services registry (e.g. holding a `dyn SampleSink`) and whether
/// continuous profiles go to the emitter.
pub async fn serve_with(
    cfg: ProfilingConfig,
    services: nodescope_model::services::Services,
    emit_profiles: bool,
) -> Harness {
    let (emitter, rx): (Emitter, _) = Emitter::for_test(64);
    let metrics = SelfMetrics::new();
    let status = StatusRegistry::default();
    let svc = cfg.build(ProfilerContext {
        emitter,
        status: status.clone(),
        self_metrics: metrics.clone(),
        pods: None,
        host_proc: PathBuf::from("/proc"),
        services,
        emit_profiles,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().unwrap();
    let app = nodescope_profiler::router(svc.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Harness {
        svc,
        addr,
        rx,
        metrics,
        status,
        server,
    }
}

pub fn on_demand_only() -> ProfilingConfig {
    ProfilingConfig {
        continuous: false,
        drain_interval_ms: 500,
        ..Default::default()
    }
}

/// `go tool pprof <args> <file>`; panics with its stderr when it fails.
pub fn go_pprof(go: &Path, args: &[&str], file: &Path) -> String {
    let out = Command::new(go)
        .arg("tool")
        .arg("pprof")
        .args(args)
        .arg(file)
        .env("PPROF_TMPDIR", std::env::temp_dir())
        .output()
        .expect("running go tool pprof");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "go tool pprof {args:?} failed: {stderr}\n{stdout}"
    );
    stdout
}

/// The `cum%` column of `go tool pprof -top` for the first row naming `func`.
pub fn cum_percent(top: &str, func: &str) -> Option<f64> {
    top.lines().find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        // flat flat% sum% cum cum% name...
        if cols.len() >= 6 && cols[5..].join(" ").contains(func) {
            cols[4].trim_end_matches('%').parse().ok()
        } else {
            None
        }
    })
}

pub async fn get(url: String) -> reqwest::Response {
    reqwest::Client::new()
        .get(url)
        .send()
        .await
        .expect("GET on loopback")
}
