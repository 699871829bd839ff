//! `[ui]` as an agent component.

use std::sync::Arc;

use nodescope_component::{BuildContext, BuildError, Component, Parts, ValidateContext};
use nodescope_model::config::Issues;
use nodescope_model::feeds::BundleRenderer;
use nodescope_model::ComponentKind;
use tracing::info;

use crate::{OfflineRenderer, UiConfig, UiState};

impl Component for UiConfig {
    fn key(&self) -> &'static str {
        "ui"
    }

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate(&self, _ctx: &ValidateContext, issues: &mut Issues) {
        UiConfig::validate(self, "ui", issues);
    }

    /// Contributes `/` (redirect) and `/ui/...`, and provides the offline bundle renderer.
    fn build(&self, ctx: &BuildContext) -> Result<Parts, BuildError> {
        ctx.services
            .provide::<dyn BundleRenderer>(Arc::new(OfflineRenderer));
        let node = ctx
            .resource
            .get("host.name")
            .map(str::to_string)
            .or_else(|| ctx.agent.node_name.clone())
            .unwrap_or_default();
        let state = UiState::new(
            self.refresh_interval,
            node,
            ctx.services.clone(),
            &ctx.self_metrics,
        );
        let (raw, gz) = crate::assets::js_css_sizes();
        let status = ctx.status.register("ui", ComponentKind::Server);
        status.set_detail("path", "/ui/");
        status.set_detail("js_css_bytes", raw.to_string());
        status.set_detail("js_css_gzip_bytes", gz.to_string());
        status.set_state(nodescope_model::ComponentState::Ok, None);
        info!(
            listen = %ctx.agent.listen,
            js_css_gzip_bytes = gz,
            "web UI at /ui/"
        );
        Ok(Parts::default().with_router(crate::router(Arc::new(state))))
    }
}
