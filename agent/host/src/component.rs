//! `[host]` as an agent component.

use nodescope_component::{BuildContext, BuildError, Component, Parts, ValidateContext};
use nodescope_model::config::Issues;
use nodescope_model::host::HostPaths;

use crate::{check_host_root, HostMetricsConfig};

impl Component for HostMetricsConfig {
    fn key(&self) -> &'static str {
        "host"
    }

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate_when_disabled(&self) -> bool {
        true
    }

    /// The table, and (when enabled) that the host root really holds the host's /proc,
    /// /sys and /: `run` refuses to start otherwise, so `validate` says so too.
    fn validate(&self, ctx: &ValidateContext, issues: &mut Issues) {
        HostMetricsConfig::validate(self, "host", issues);
        if ctx.environment && self.enabled && ctx.agent.host_root.is_absolute() {
            if let Err(e) = check_host_root(&HostPaths::from_root(&ctx.agent.host_root)) {
                issues.push(ctx.host_root_key, e.to_string());
            }
        }
    }

    fn build(&self, ctx: &BuildContext) -> Result<Parts, BuildError> {
        let collectors = self
            .build_with_pods(&ctx.host, ctx.pods())
            .map_err(|e| BuildError::new("host", e))?;
        Ok(Parts {
            collectors,
            ..Parts::default()
        })
    }
}
