//! `[profiling]` as an agent component.

use nodescope_component::{BuildContext, BuildError, Component, Parts, Task, ValidateContext};
use nodescope_model::config::Issues;
use nodescope_model::feeds::{OnDemandProfiler, ProfilerControl, SampleSink};
use nodescope_model::SignalKind;
use tracing::info;

use crate::{ProfilerContext, ProfilingConfig};

impl Component for ProfilingConfig {
    fn key(&self) -> &'static str {
        "profiling"
    }

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate_when_disabled(&self) -> bool {
        true
    }

    fn validate(&self, _ctx: &ValidateContext, issues: &mut Issues) {
        ProfilingConfig::validate(self, "profiling", issues);
    }

    /// On-demand `/debug/pprof/*` for any pid, container or the whole node, and
    /// continuous profiling when an exporter takes profiles (per-workload profiles into
    /// the pipeline) or a `dyn SampleSink` (the flight recorder, built before us) takes
    /// timestamped samples. Provides `dyn ProfilerControl` and `dyn OnDemandProfiler`. Never fails the agent:
    /// without eBPF it still profiles itself.
    fn build(&self, ctx: &BuildContext) -> Result<Parts, BuildError> {
        let mut cfg = self.clone();
        let emit_profiles = ctx.wants(SignalKind::Profiles);
        let sink = ctx.services.get::<dyn SampleSink>().is_some();
        if cfg.continuous && !emit_profiles && !sink {
            info!("continuous profiling off: neither an exporter takes profiles (enable [exporters.pyroscope]) nor the flight recorder takes samples; on-demand profiles still served");
            cfg.continuous = false;
        }
        let svc = ProfilingConfig::build(
            &cfg,
            ProfilerContext {
                emitter: ctx.emitter.clone(),
                status: ctx.status.clone(),
                self_metrics: ctx.self_metrics.clone(),
                pods: ctx.pods(),
                host_proc: ctx.host.proc.clone(),
                services: ctx.services.clone(),
                emit_profiles,
            },
        );
        svc.wrap_up_on(ctx.shutdown.clone());
        ctx.services.provide::<dyn ProfilerControl>(svc.control());
        ctx.services
            .provide::<dyn OnDemandProfiler>(std::sync::Arc::new(crate::feed::OnDemand(
                svc.clone(),
            )));
        let mut parts = Parts::default()
            .with_collector(svc.collector())
            .with_router(crate::router(svc.clone()));
        if let Some((name, job)) = svc.background(ctx.shutdown.clone()) {
            parts = parts.with_task(Task::thread(name, job));
        }
        Ok(parts)
    }
}
