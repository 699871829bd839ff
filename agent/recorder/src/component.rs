//! `[recorder]` as an agent component: provides the event and sample sinks, serves the
//! API, and runs the sampling loop (host collectors every second, workloads and peers
//! every 10 s, rules after each collection).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nodescope_component::{BuildContext, BuildError, Component, Parts, Task, ValidateContext};
use nodescope_model::config::Issues;
use nodescope_model::feeds::{EventSink, MetricsSource, SampleSink};
use nodescope_model::{ComponentKind, ComponentState};
use tracing::info;

use crate::config::RecorderConfig;
use crate::http::{router, ApiState};
use crate::incidents::Incidents;
use crate::recorder::{Recorder, CGROUP_COLLECTOR, NETWORK_COLLECTOR};
use crate::rules::Rules;
use crate::samples::unix_ms;

impl Component for RecorderConfig {
    fn key(&self) -> &'static str {
        "recorder"
    }

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate(&self, ctx: &ValidateContext, issues: &mut Issues) {
        RecorderConfig::validate(self, "recorder", issues);
        if ctx.environment && self.spool_dir.is_absolute() {
            if let Err(e) = nodescope_component::creatable_dir(&self.spool_dir) {
                issues.push("recorder.spool_dir", e);
            }
        }
    }

    fn build(&self, ctx: &BuildContext) -> Result<Parts, BuildError> {
        let node = ctx
            .resource
            .get("host.name")
            .map(str::to_string)
            .or_else(|| ctx.agent.node_name.clone())
            .unwrap_or_else(|| "node".into());
        let rec = Recorder::new(self.clone(), node, &ctx.self_metrics);
        ctx.services.provide::<dyn EventSink>(rec.clone());
        ctx.services.provide::<dyn SampleSink>(rec.clone());
        let incidents = Incidents::new(rec.clone(), ctx.services.clone(), &ctx.self_metrics);
        incidents.set_emitter(ctx.emitter.clone());
        let status = ctx.status.register("recorder", ComponentKind::Collector);
        status.set_detail("memory_cap_bytes", self.memory_cap.0.to_string());
        status.set_detail("spool_dir", self.spool_dir.display().to_string());
        status.set_state(ComponentState::Starting, None);
        info!(memory_cap = self.memory_cap.0, spool = %self.spool_dir.display(), rules = self.rules.len(), "flight recorder on");
        let api = Arc::new(ApiState {
            rec: rec.clone(),
            incidents: incidents.clone(),
        });
        let services = ctx.services.clone();
        let shutdown = ctx.shutdown.clone();
        let cfg = self.clone();
        let task = async move {
            let rules = Rules::default();
            let host: Vec<String> = cfg.host_collectors.clone();
            let slow_ms = (cfg.workload_interval.as_millis() as i64).max(1000);
            loop {
                let now = unix_ms(SystemTime::now());
                let next = (now / 1000 + 1) * 1000;
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis((next - now) as u64)) => {}
                }
                let coarse = next % slow_ms == 0;
                let Some(src) = services.get::<dyn MetricsSource>() else {
                    continue;
                };
                let mut names: Vec<&str> = host.iter().map(String::as_str).collect();
                if coarse {
                    names.push(CGROUP_COLLECTOR);
                    names.push(NETWORK_COLLECTOR);
                }
                let started = std::time::Instant::now();
                let batches = src.collect(&names).await;
                rec.ingest(next, &batches);
                rec.timed(|| rules.evaluate(&cfg.rules, &rec, &incidents, next, coarse));
                if coarse {
                    status.success(started.elapsed());
                    status.set_detail("memory_bytes", rec.bytes().to_string());
                    status.set_detail("cpu_seconds", format!("{:.3}", rec.cpu_ns() as f64 / 1e9));
                }
            }
        };
        Ok(Parts::default()
            .with_router(router(api))
            .with_task(Task::future("recorder", task)))
    }
}
