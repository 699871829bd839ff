//! `[network]` as an agent component.

use nodescope_component::{BuildContext, BuildError, Component, Parts, Task, ValidateContext};
use nodescope_model::config::Issues;
use tracing::warn;

use crate::{NetProbeContext, NetworkConfig};

impl Component for NetworkConfig {
    fn key(&self) -> &'static str {
        "network"
    }

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate_when_disabled(&self) -> bool {
        true
    }

    fn validate(&self, _ctx: &ValidateContext, issues: &mut Issues) {
        NetworkConfig::validate(self, "network", issues);
    }

    /// Never fails the agent: a probe that cannot run is reported down with its reason
    /// (status and `nodescope_probe_up`) and the rest carry on.
    fn build(&self, ctx: &BuildContext) -> Result<Parts, BuildError> {
        let net = NetworkConfig::build(
            self,
            NetProbeContext {
                emitter: ctx.emitter.clone(),
                status: ctx.status.clone(),
                self_metrics: ctx.self_metrics.clone(),
                pods: ctx.pods(),
                cgroup_root: ctx.host.cgroup2_root(),
            },
        );
        for h in net.health().iter().filter(|h| h.enabled && !h.up) {
            warn!(
                probe = h.probe,
                reason = h.reason.as_deref().unwrap_or(""),
                "network probe down"
            );
        }
        let mut parts = Parts::default()
            .with_collector(net.collector())
            .with_router(net.router());
        if let Some(events) = net.event_task(ctx.shutdown.clone()) {
            parts = parts.with_task(Task::future("netprobe-events", events));
        }
        Ok(parts)
    }
}
