//! `[kubernetes]` as an agent component: provides the pod lookup to the components after
//! it and runs the watcher as a task.

use nodescope_component::{BuildContext, BuildError, Component, Parts, Task, ValidateContext};
use nodescope_model::config::Issues;

use crate::KubernetesConfig;

impl Component for KubernetesConfig {
    fn key(&self) -> &'static str {
        "kubernetes"
    }

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate_when_disabled(&self) -> bool {
        true
    }

    fn validate(&self, _ctx: &ValidateContext, issues: &mut Issues) {
        KubernetesConfig::validate(self, "kubernetes", issues);
    }

    fn build(&self, ctx: &BuildContext) -> Result<Parts, BuildError> {
        let md = KubernetesConfig::build(self, &ctx.self_metrics, &ctx.status)
            .map_err(|e| BuildError::new("kubernetes", e))?;
        let lookup = md.lookup();
        let token = ctx.shutdown.clone();
        Ok(Parts {
            pods: Some(lookup),
            ..Parts::default()
        }
        .with_task(Task::future(
            "k8s-watcher",
            md.watcher.run(async move { token.cancelled().await }),
        )))
    }
}
