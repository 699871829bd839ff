//! Config rules: a metric above its threshold for `hold` fires an incident, then the
//! rule rests for its `cooldown` (so a flapping rule cannot fill the spool).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tracing::{debug, warn};

use crate::bundle::Trigger;
use crate::config::{RuleConfig, RuleMetric};
use crate::incidents::{Incidents, Request, TriggerError};
use crate::query::{self, Window};
use crate::recorder::Recorder;

#[derive(Default)]
pub struct Rules {
    /// (rule, subject) → since when the condition holds.
    since: Mutex<HashMap<(usize, String), i64>>,
}

/// The current values of a rule's metric: (subject, value); the subject is a workload or
/// `node`.
fn values(rec: &Recorder, m: RuleMetric, now_ms: i64) -> Vec<(String, f64)> {
    let last = |g: &str, s: &str| -> Option<f64> {
        let t = query::timeline(
            rec,
            g,
            Window {
                from_ms: now_ms - 3000,
                to_ms: now_ms,
            },
        )?;
        t.series
            .iter()
            .find(|x| x.name == s)?
            .values
            .iter()
            .rev()
            .flatten()
            .next()
            .copied()
    };
    let slow = rec.cfg.workload_interval.as_millis() as i64;
    let w10 = Window {
        from_ms: now_ms - slow,
        to_ms: now_ms,
    };
    match m {
        RuleMetric::Cpu => last("cpu", "idle")
            .map(|i| vec![("node".into(), 1.0 - i)])
            .unwrap_or_default(),
        RuleMetric::PsiCpu => last("psi", "cpu_some")
            .map(|v| vec![("node".into(), v)])
            .unwrap_or_default(),
        RuleMetric::PsiMemory => last("psi", "memory_some")
            .map(|v| vec![("node".into(), v)])
            .unwrap_or_default(),
        RuleMetric::PsiIo => last("psi", "io_some")
            .map(|v| vec![("node".into(), v)])
            .unwrap_or_default(),
        RuleMetric::WorkloadCpu => query::workloads(rec, w10)
            .into_iter()
            .map(|(w, a)| (w, a.cpu_cores))
            .collect(),
        RuleMetric::OomKill => query::workloads(rec, w10)
            .into_iter()
            .map(|(w, a)| (w, a.oom_kills))
            .collect(),
        RuleMetric::RetransmitRate | RuleMetric::ConnectP99 => {
            let doc = query::network(rec, w10, usize::MAX);
            let mut by: HashMap<String, f64> = HashMap::new();
            for r in &doc.rows {
                let v = if m == RuleMetric::RetransmitRate {
                    r.total_retransmits() as f64 / (slow as f64 / 1000.0)
                } else {
                    r.p99(&doc.connect_buckets, false).unwrap_or(0.0)
                };
                let e = by.entry(r.workload.clone()).or_insert(0.0);
                if m == RuleMetric::RetransmitRate {
                    *e += v
                } else {
                    *e = e.max(v)
                }
            }
            by.into_iter().collect()
        }
    }
}

impl Rules {
    /// Evaluates every rule (per-workload ones only when `coarse`, every 10 s).
    pub fn evaluate(
        &self,
        rules: &[RuleConfig],
        rec: &Recorder,
        incidents: &Arc<Incidents>,
        now_ms: i64,
        coarse: bool,
    ) {
        let mut since = self.since.lock();
        for (i, r) in rules.iter().enumerate() {
            if r.metric.per_workload() && !coarse {
                continue;
            }
            let vals = values(rec, r.metric, now_ms);
            let mut active = std::collections::HashSet::new();
            for (subject, v) in vals {
                if let Some(f) = &r.workload {
                    if !subject.contains(f.as_str()) {
                        continue;
                    }
                }
                if v <= r.threshold {
                    continue;
                }
                active.insert(subject.clone());
                let start = *since.entry((i, subject.clone())).or_insert(now_ms);
                if now_ms - start < r.hold.as_millis() as i64 {
                    continue;
                }
                let req = Request {
                    trigger: Trigger {
                        kind: "rule".into(),
                        name: r.name.clone(),
                        reason: Some(format!(
                            "{} of {subject} = {v:.4} > {} for {}",
                            r.metric.as_str(),
                            r.threshold,
                            humantime::format_duration(r.hold)
                        )),
                    },
                    before: r.before.unwrap_or(rec.cfg.default_before),
                    after: r.after.unwrap_or(rec.cfg.default_after),
                    anomaly_ms: Some(start),
                    rule: Some((r.name.clone(), r.cooldown)),
                };
                match incidents.trigger(req) {
                    Ok(info) => debug!(rule = %r.name, id = %info.id, "rule fired"),
                    Err(TriggerError::Cooldown { .. }) => {}
                    Err(e) => warn!(rule = %r.name, error = %e, "rule could not start an incident"),
                }
                since.insert(
                    (i, subject),
                    now_ms + Duration::from_secs(0).as_millis() as i64,
                );
            }
            since.retain(|(ri, s), _| *ri != i || active.contains(s));
        }
    }
}
