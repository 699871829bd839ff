//! Wiring: the components of `Config::components()` → their parts → the HTTP server, the
//! pipeline and the tasks; then an orderly shutdown under one deadline.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{Context, Result};
use nodescope_component::{BuildContext, CancellationToken, Parts, RunningTask, Task};
use nodescope_model::feeds::{EventSink, MetricsSource};
use nodescope_model::host::HostPaths;
use nodescope_model::selfmetrics::SelfMetrics;
use nodescope_model::{Services, Signal, SignalKind, StatusRegistry};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::Config;
use crate::http::{self, AppState};
use crate::pipeline::{Intake, Pipeline};
use crate::runner::CollectorSet;

pub async fn run(config: Config) -> Result<()> {
    let agent = config.agent_settings();
    // Bind first: a port in use is the most common start-up failure; say so before
    // anything else starts.
    let listener = TcpListener::bind(agent.listen).await.with_context(|| {
        format!(
            "agent.listen: cannot listen on {} (set [agent].listen or NODESCOPE_LISTEN)",
            agent.listen
        )
    })?;
    let guard = config.http.security.build().context("http.security")?;

    let status = StatusRegistry::default();
    let self_metrics = SelfMetrics::new();
    let resource = crate::resource::detect(&agent.host_root, agent.node_name.clone());
    info!(
        listen = %agent.listen,
        host_root = %agent.host_root.display(),
        host_name = resource.get("host.name").unwrap_or(""),
        "starting nodescope"
    );
    let shutdown = CancellationToken::new();
    let intake = Intake::new(agent.queue_capacity);
    let mut ctx = BuildContext::new(
        agent.clone(),
        HostPaths::from_root(&agent.host_root),
        resource,
        self_metrics.clone(),
        status.clone(),
        intake.emitter(),
        shutdown.clone(),
        Services::default(),
    );

    let mut all = Parts::default();
    for c in config.components().into_iter().filter(|c| c.enabled()) {
        let span = tracing::info_span!("component", component = c.key());
        let parts = span.in_scope(|| c.build(&ctx))?;
        ctx.absorb(&parts);
        all.collectors.extend(parts.collectors);
        all.exporters.extend(parts.exporters);
        all.tasks.extend(parts.tasks);
        if let Some(r) = parts.router {
            all = all.with_router(r);
        }
    }

    let pipeline = Pipeline::start(
        intake,
        all.exporters,
        ctx.services.get::<dyn EventSink>(),
        agent.shutdown_timeout,
        &self_metrics,
        &status,
        shutdown.clone(),
    );
    let collectors = Arc::new(CollectorSet::new(
        all.collectors,
        agent.collector_timeout,
        &status,
        &self_metrics,
    ));
    ctx.services
        .provide::<dyn MetricsSource>(collectors.clone());
    let state = Arc::new(AppState::new(collectors, &self_metrics, &status));
    let mut app = http::router(state.clone());
    if let Some(r) = all.router {
        app = app.merge(r);
    }
    if ctx.wants(SignalKind::Metrics) {
        all.tasks.push(Task::future(
            "push-collection",
            periodic_collection(state.clone(), ctx.clone()),
        ));
    }
    let mut running: Vec<RunningTask> = Vec::new();
    for t in all.tasks {
        let name = t.name().to_string();
        running.push(t.start().with_context(|| format!("starting task {name}"))?);
    }

    // Handlers installed before the agent reports ready: a SIGTERM right after /readyz
    // answers 200 must start the flush, not kill the process (the default action).
    let signalled = shutdown_signal();
    state.ready.store(true, Ordering::Release);
    info!(
        collectors = state.collectors.len(),
        tasks = running.len(),
        "nodescope ready"
    );
    {
        let (shutdown, state) = (shutdown.clone(), state.clone());
        tokio::spawn(async move {
            signalled.await;
            info!("shutdown requested; flushing");
            state.ready.store(false, Ordering::Release);
            shutdown.cancel();
        });
    }

    let app = nodescope_httpguard::harden(app, &guard, agent.listen_is_loopback(), &self_metrics);
    let stop = shutdown.clone();
    let grace = agent.shutdown_timeout;
    let server = nodescope_httpguard::serve(listener, app, &guard, &self_metrics, async move {
        stop.cancelled().await;
        // The same deadline as below: in-flight requests get what is left of it.
        tokio::time::Instant::now() + grace
    });
    tokio::pin!(server);
    let served = tokio::select! {
        // The server returns on its own only on error, or once shutdown began and its
        // connections drained.
        r = &mut server => {
            r.context("HTTP server failed")?;
            true
        }
        _ = shutdown.cancelled() => false,
    };

    // One deadline for everything: the HTTP drain (in-flight profiles end early on the
    // same token), the component tasks and the exporters' flush run side by side.
    shutdown.cancel();
    let deadline = tokio::time::Instant::now() + agent.shutdown_timeout;
    let drain = async {
        if !served
            && tokio::time::timeout_at(deadline, &mut server)
                .await
                .is_err()
        {
            warn!("HTTP connections still open at the shutdown deadline; dropped");
        }
    };
    let tasks = async {
        for t in running {
            let name = t.name().to_string();
            if !t.join_until(deadline).await {
                warn!(task = %name, "task did not stop before the shutdown deadline");
            }
        }
    };
    let flush = pipeline.join(agent.shutdown_timeout);
    tokio::join!(drain, tasks, flush);
    info!("nodescope stopped");
    Ok(())
}

/// Feeds push exporters on a fixed interval. Scrapes do not go through here: they collect
/// on demand so Prometheus sees values as of its own scrape time (a scrape and a push at
/// the same moment share one run of each collector).
async fn periodic_collection(state: Arc<AppState>, ctx: BuildContext) {
    let mut tick = tokio::time::interval(ctx.agent.collect_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let (batches, runs) = state.collectors.collect_all_detailed().await;
        for batch in batches {
            ctx.emitter.emit(Signal::Metrics(batch));
        }
        ctx.emitter
            .emit(Signal::Metrics(Arc::new(nodescope_model::MetricBatch {
                source: "scrape".into(),
                timestamp: std::time::SystemTime::now(),
                families: nodescope_host::node_scrape_families(runs),
            })));
        let self_batch = nodescope_model::MetricBatch {
            source: "nodescope".into(),
            timestamp: std::time::SystemTime::now(),
            families: state.self_families(),
        };
        if !ctx.emitter.emit(Signal::Metrics(Arc::new(self_batch))) {
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
