//! `[profiling]` as an agent component.

use nodescope_component::{BuildContext, BuildError, Component, Parts, Task, ValidateContext};
use nodescope_model::config::Issues;
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

    /// On-demand `/debug/pprof/*` for any pid, container or the whole node, and, when an
    /// exporter takes profiles, continuous per-workload profiles. Never fails the agent:
    /// without eBPF it still profiles itself.
    fn build(&self, ctx: &BuildContext) -> Result<Parts, BuildError> {
        let mut cfg = self.clone();
        if cfg.continuous && !ctx.wants(SignalKind::Profiles) {
            info!("continuous profiling off: no exporter takes profiles (enable [exporters.pyroscope]); on-demand profiles still served");
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
            },
        );
        svc.wrap_up_on(ctx.shutdown.clone());
        let mut parts = Parts::default()
            .with_collector(svc.collector())
            .with_router(crate::router(svc.clone()));
        if let Some((name, job)) = svc.background(ctx.shutdown.clone()) {
            parts = parts.with_task(Task::thread(name, job));
        }
        Ok(parts)
    }
}
