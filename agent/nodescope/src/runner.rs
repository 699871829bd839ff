//! Runs collectors: each on a blocking thread, under a timeout, never two runs of the same
//! collector at once. A run that outlives its timeout is abandoned (its thread finishes on
//! its own) and the collector is reported `stuck` until it returns; the scrape goes on
//! with everything else.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nodescope_model::selfmetrics::{Counter, Gauge, SelfMetrics};
use nodescope_model::{
    CollectError, Collector, ComponentKind, ComponentState, MetricBatch, StatusHandle,
    StatusRegistry,
};
use tokio::task::JoinSet;
use tracing::{debug, warn, Instrument};

struct Slot {
    collector: Arc<dyn Collector>,
    running: Arc<AtomicBool>,
    status: StatusHandle,
    success: Gauge,
    duration: Gauge,
    timeouts: Counter,
}

/// The agent's collectors, ready to run.
pub struct CollectorSet {
    slots: Vec<Arc<Slot>>,
    timeout: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RunOutcome {
    Ok,
    Unavailable,
    Failed,
    TimedOut,
    SkippedStuck,
}

impl CollectorSet {
    pub fn new(
        collectors: Vec<Arc<dyn Collector>>,
        timeout: Duration,
        status: &StatusRegistry,
        metrics: &SelfMetrics,
    ) -> Self {
        let slots = collectors
            .into_iter()
            .map(|collector| {
                let name = collector.name();
                Arc::new(Slot {
                    running: Arc::new(AtomicBool::new(false)),
                    status: status.register(name, ComponentKind::Collector),
                    success: metrics.gauge(
                        "nodescope_collector_success",
                        "Whether the collector's last run succeeded (1) or not (0).",
                        &[("collector", name)],
                    ),
                    duration: metrics.gauge(
                        "nodescope_collector_duration_seconds",
                        "Wall-clock duration of the collector's last run.",
                        &[("collector", name)],
                    ),
                    timeouts: metrics.counter(
                        "nodescope_collector_timeouts_total",
                        "Collector runs abandoned because they exceeded the collector timeout.",
                        &[("collector", name)],
                    ),
                    collector,
                })
            })
            .collect();
        CollectorSet { slots, timeout }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Runs every collector concurrently; returns the batches of those that succeeded.
    pub async fn collect_all(&self) -> Vec<MetricBatch> {
        let mut set = JoinSet::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let slot = slot.clone();
            let timeout = self.timeout;
            let span = tracing::debug_span!("collector", collector = slot.collector.name());
            set.spawn(async move { (i, run_one(&slot, timeout).await) }.instrument(span));
        }
        let mut out: Vec<(usize, MetricBatch)> = Vec::with_capacity(self.slots.len());
        while let Some(joined) = set.join_next().await {
            if let Ok((i, (_, Some(batch)))) = joined {
                out.push((i, batch));
            }
        }
        // Stable output order (collector registration order) regardless of finish order.
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, b)| b).collect()
    }
}

async fn run_one(slot: &Slot, timeout: Duration) -> (RunOutcome, Option<MetricBatch>) {
    let name = slot.collector.name();
    if slot.running.swap(true, Ordering::AcqRel) {
        slot.success.set(0.0);
        slot.status.set_state(
            ComponentState::Stuck,
            Some("previous run has not returned; skipped".into()),
        );
        return (RunOutcome::SkippedStuck, None);
    }
    let collector = slot.collector.clone();
    let running = slot.running.clone();
    let started = Instant::now();
    let handle = tokio::task::spawn_blocking(move || {
        let r = collector.collect();
        running.store(false, Ordering::Release);
        r
    });
    let result = tokio::time::timeout(timeout, handle).await;
    let elapsed = started.elapsed();
    slot.duration.set(elapsed.as_secs_f64());
    match result {
        Ok(Ok(Ok(families))) => {
            slot.success.set(1.0);
            slot.status.success(elapsed);
            (
                RunOutcome::Ok,
                Some(MetricBatch {
                    source: name.into(),
                    timestamp: SystemTime::now(),
                    families,
                }),
            )
        }
        Ok(Ok(Err(e))) => {
            slot.success.set(0.0);
            let (state, outcome) = match e {
                CollectError::Unavailable { .. } => {
                    (ComponentState::Unavailable, RunOutcome::Unavailable)
                }
                _ => (ComponentState::Failed, RunOutcome::Failed),
            };
            if outcome == RunOutcome::Failed {
                warn!(collector = name, error = %e, "collector failed");
            } else {
                debug!(collector = name, error = %e, "collector source unavailable");
            }
            slot.status.failure(state, e.to_string(), Some(elapsed));
            (outcome, None)
        }
        Ok(Err(join_err)) => {
            // A panic inside a collector is a bug; keep the agent alive and say so.
            slot.running.store(false, Ordering::Release);
            slot.success.set(0.0);
            warn!(collector = name, error = %join_err, "collector panicked");
            slot.status.failure(
                ComponentState::Failed,
                format!("collector panicked: {join_err}"),
                Some(elapsed),
            );
            (RunOutcome::Failed, None)
        }
        Err(_) => {
            slot.success.set(0.0);
            slot.timeouts.inc();
            warn!(
                collector = name,
                timeout_ms = timeout.as_millis() as u64,
                "collector timed out"
            );
            slot.status.failure(
                ComponentState::Stuck,
                format!("timed out after {timeout:?}; further runs skipped until it returns"),
                Some(elapsed),
            );
            (RunOutcome::TimedOut, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodescope_model::{MetricFamily, MetricType};
    use std::sync::mpsc;

    struct Fixed;
    impl Collector for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }
        fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
            Ok(vec![MetricFamily::single(
                "node_x",
                "x",
                MetricType::Gauge,
                1.0,
            )])
        }
    }

    /// Blocks until the test releases it, like a statfs on a dead NFS server.
    struct Hanging(parking_lot::Mutex<mpsc::Receiver<()>>);
    impl Collector for Hanging {
        fn name(&self) -> &'static str {
            "hanging"
        }
        fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
            let _ = self.0.lock().recv();
            Ok(vec![])
        }
    }

    struct Missing;
    impl Collector for Missing {
        fn name(&self) -> &'static str {
            "pressure"
        }
        fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
            Err(CollectError::Unavailable {
                what: "/proc/pressure".into(),
                reason: "kernel without PSI".into(),
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hung_collector_never_hangs_the_scrape() {
        let (release, rx) = mpsc::channel();
        let status = StatusRegistry::default();
        let metrics = SelfMetrics::new();
        let set = CollectorSet::new(
            vec![
                Arc::new(Fixed),
                Arc::new(Hanging(parking_lot::Mutex::new(rx))),
                Arc::new(Missing),
            ],
            Duration::from_millis(100),
            &status,
            &metrics,
        );
        let t = Instant::now();
        let batches = set.collect_all().await;
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].source, "fixed");

        // Second scrape while the first run is still blocked: skipped, not stacked up.
        let (outcome, _) = run_one(&set.slots[1], Duration::from_millis(100)).await;
        assert_eq!(outcome, RunOutcome::SkippedStuck);
        let snap = status.snapshot();
        let hanging = snap.iter().find(|s| s.name == "hanging").unwrap();
        assert_eq!(hanging.state, ComponentState::Stuck);
        let missing = snap.iter().find(|s| s.name == "pressure").unwrap();
        assert_eq!(missing.state, ComponentState::Unavailable);
        assert!(missing.last_error.as_deref().unwrap().contains("PSI"));

        // Once released, the collector runs again.
        release.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        release.send(()).unwrap();
        let (outcome, _) = run_one(&set.slots[1], Duration::from_secs(2)).await;
        assert_eq!(outcome, RunOutcome::Ok);
        let fams = metrics.collect();
        let success = fams
            .iter()
            .find(|f| f.name == "nodescope_collector_success")
            .unwrap();
        assert_eq!(success.points.len(), 3);
    }
}
