//! Wiring: config → runtime components → HTTP server and pipeline, and orderly shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use nodescope_delivery::ExporterContext;
use nodescope_host::HostPaths;
use nodescope_model::selfmetrics::SelfMetrics;
use nodescope_model::{Collector, Exporter, Signal, SignalKind, StatusRegistry};
use nodescope_netprobe::NetProbeContext;
use nodescope_profiler::ProfilerContext;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, ENV_NODE_NAME};
use crate::http::{self, AppState};
use crate::pipeline::Pipeline;
use crate::runner::CollectorSet;
use crate::selfstats::ProcessStats;

pub async fn run(config: Config) -> Result<()> {
    let listen = config.listen_addr();
    // Bind first: a port in use is the most common start-up failure; say so before
    // anything else starts.
    let listener = TcpListener::bind(listen).await.with_context(|| {
        format!("cannot listen on {listen} (set [agent].listen or NODESCOPE_LISTEN)")
    })?;

    let guard = config
        .http
        .security
        .build()
        .context("loading [http.security] (token file, TLS certificates)")?;

    let paths = HostPaths::from_root(&config.agent.host_root);
    if config.host.enabled {
        nodescope_host::check_host_root(&paths).with_context(|| {
            format!(
                "host root {} is not usable (set [agent].host_root or NODESCOPE_HOST_ROOT)",
                config.agent.host_root.display()
            )
        })?;
    }

    let status = StatusRegistry::default();
    let self_metrics = SelfMetrics::new();
    let node_name = config
        .agent
        .node_name
        .clone()
        .or_else(|| std::env::var(ENV_NODE_NAME).ok().filter(|s| !s.is_empty()));
    let resource = crate::resource::detect(&config.agent.host_root, node_name);
    info!(
        listen = %listen,
        host_root = %config.agent.host_root.display(),
        host_name = resource.get("host.name").unwrap_or(""),
        "starting nodescope"
    );

    let mut collectors: Vec<Arc<dyn Collector>> = Vec::new();
    if config.host.enabled {
        collectors.extend(
            config
                .host
                .build(&paths)
                .context("building host collectors")?,
        );
    }

    let shutdown = CancellationToken::new();
    let exporters = build_exporters(&config, &resource, &self_metrics, &status)?;
    let pipeline = Pipeline::start(
        exporters,
        config.agent.queue_capacity,
        config.agent.shutdown_timeout,
        &self_metrics,
        &status,
        shutdown.clone(),
    );

    // Pod metadata (container id -> pod) for probe and profile labels, when enabled.
    let pods = {
        let token = shutdown.clone();
        config
            .kubernetes
            .start(
                &self_metrics,
                &status,
                async move { token.cancelled().await },
            )
            .context("starting the Kubernetes pod metadata cache")?
    };

    // eBPF network probes: never fail the agent; a probe that cannot run is reported
    // down with its reason (status + nodescope_probe_up) and the rest carry on.
    let network = config.network.enabled.then(|| {
        let _span = tracing::info_span!("netprobe").entered();
        config.network.build(NetProbeContext {
            emitter: pipeline.emitter(),
            status: status.clone(),
            self_metrics: self_metrics.clone(),
            pods: pods.clone(),
            cgroup_root: cgroup2_root(&paths),
        })
    });
    if let Some(net) = &network {
        collectors.push(net.collector());
        for h in net.health().iter().filter(|h| h.enabled && !h.up) {
            warn!(
                probe = h.probe,
                reason = h.reason.as_deref().unwrap_or(""),
                "network probe down"
            );
        }
    }

    // CPU profiler: on-demand /debug/pprof/* (any pid, container or the whole node) and,
    // when configured, continuous per-workload profiles into the pipeline. Never fails
    // the agent: without eBPF it still profiles itself.
    let mut profiling = config.profiling.clone();
    if profiling.enabled && profiling.continuous && !pipeline.wants(SignalKind::Profiles) {
        info!("continuous profiling off: no exporter takes profiles (enable [exporters.pyroscope]); on-demand profiles still served");
        profiling.continuous = false;
    }
    let profiler = profiling.enabled.then(|| {
        let _span = tracing::info_span!("profiler").entered();
        profiling.build(ProfilerContext {
            emitter: pipeline.emitter(),
            status: status.clone(),
            self_metrics: self_metrics.clone(),
            pods: pods.clone(),
            host_proc: paths.proc.clone(),
        })
    });
    if let Some(p) = &profiler {
        collectors.push(p.collector());
    }

    let state = Arc::new(AppState {
        collectors: Arc::new(CollectorSet::new(
            collectors,
            config.agent.collector_timeout,
            &status,
            &self_metrics,
        )),
        process: ProcessStats::register(&self_metrics),
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
        scrape_lock: tokio::sync::Mutex::new(64 * 1024),
    });

    let mut background = Vec::new();
    let mut app = http::router(state.clone());
    if let Some(net) = &network {
        if let Some(task) = net.spawn(shutdown.clone()) {
            background.push(task);
        }
        app = app.merge(net.router());
    }
    if let Some(p) = &profiler {
        p.spawn(shutdown.clone());
        app = app.merge(nodescope_profiler::router(p.clone()));
    }
    if pipeline.wants(SignalKind::Metrics) {
        background.push(tokio::spawn(periodic_collection(
            state.clone(),
            pipeline.emitter(),
            config.agent.collect_interval,
            shutdown.clone(),
        )));
    }

    // Handlers installed before the agent reports ready: a SIGTERM right after /readyz
    // answers 200 must start the flush, not kill the process (the default action).
    let signalled = shutdown_signal();
    state.ready.store(true, Ordering::Release);
    info!(collectors = state.collectors.len(), "nodescope ready");

    let server_shutdown = shutdown.clone();
    let signal_state = state.clone();
    tokio::spawn(async move {
        signalled.await;
        info!("shutdown requested; flushing");
        signal_state.ready.store(false, Ordering::Release);
        server_shutdown.cancel();
    });

    let serve_token = shutdown.clone();
    let app = nodescope_httpguard::harden(
        app,
        &guard,
        nodescope_httpguard::is_loopback(&listen),
        &self_metrics,
    );
    nodescope_httpguard::serve(listener, app, &guard, &self_metrics, async move {
        serve_token.cancelled().await
    })
    .await
    .context("HTTP server failed")?;

    shutdown.cancel();
    for task in background {
        let _ = task.await;
    }
    let deadline = config.agent.shutdown_timeout;
    pipeline.join(deadline).await;
    info!("nodescope stopped");
    Ok(())
}

/// Builds every enabled push exporter. A configured exporter that cannot be built (bad
/// TLS files, ...) stops start-up with its reason: silently running without it would lose
/// data.
fn build_exporters(
    config: &Config,
    resource: &nodescope_model::Resource,
    self_metrics: &SelfMetrics,
    status: &StatusRegistry,
) -> Result<Vec<Box<dyn Exporter>>> {
    let ctx = ExporterContext {
        resource: resource.clone(),
        self_metrics: self_metrics.clone(),
        status: status.clone(),
    };
    let e = &config.exporters;
    let mut out: Vec<Box<dyn Exporter>> = Vec::new();
    if e.otlp.enabled {
        out.push(e.otlp.build(&ctx).context("building the OTLP exporter")?);
    }
    if e.loki.enabled {
        out.push(e.loki.build(&ctx).context("building the Loki exporter")?);
    }
    if e.remote_write.enabled {
        out.push(
            e.remote_write
                .build(&ctx)
                .context("building the remote_write exporter")?,
        );
    }
    if e.pyroscope.enabled {
        out.push(
            e.pyroscope
                .build(&ctx)
                .context("building the Pyroscope exporter")?,
        );
    }
    for x in &out {
        info!(exporter = x.name(), "exporter enabled");
    }
    Ok(out)
}

/// The cgroup2 mount the probes resolve cgroup ids in. On a bare host, empty: the probe
/// finds it in /proc/self/mounts. Through a host root, under the host's /sys (hybrid hosts
/// mount cgroup2 at `fs/cgroup/unified`).
fn cgroup2_root(paths: &HostPaths) -> std::path::PathBuf {
    if paths.sys == std::path::Path::new("/sys") {
        return std::path::PathBuf::new();
    }
    let unified = paths.sys.join("fs/cgroup/unified");
    if unified.is_dir() {
        unified
    } else {
        paths.sys.join("fs/cgroup")
    }
}

/// Feeds push exporters on a fixed interval. Scrapes do not go through here: they collect
/// on demand so Prometheus sees values as of its own scrape time.
async fn periodic_collection(
    state: Arc<AppState>,
    emitter: nodescope_model::Emitter,
    every: std::time::Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        for batch in state.collectors.collect_all().await {
            emitter.emit(Signal::Metrics(Arc::new(batch)));
        }
        let self_batch = nodescope_model::MetricBatch {
            source: "nodescope".into(),
            timestamp: std::time::SystemTime::now(),
            families: state.self_families(),
        };
        if !emitter.emit(Signal::Metrics(Arc::new(self_batch))) {
            warn!("pipeline intake full; self-metrics batch dropped");
        }
    }
}

/// Installs the SIGTERM and SIGINT handlers now and returns a future that completes on the
/// first of those signals. (tokio's `ctrl_c()` would install its handler only when first
/// polled.)
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let install = |kind: SignalKind, name: &'static str| {
        signal(kind)
            .map_err(|e| warn!(error = %e, signal = name, "cannot install a signal handler"))
            .ok()
    };
    let term = install(SignalKind::terminate(), "SIGTERM");
    let int = install(SignalKind::interrupt(), "SIGINT");
    async move {
        async fn recv(s: Option<tokio::signal::unix::Signal>) {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = recv(term) => {}
            _ = recv(int) => {}
        }
    }
}
