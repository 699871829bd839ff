//! Runs collectors under a timeout, never two runs of the same collector at once.
//!
//! A scrape hands all collectors to one blocking *lane* (a `spawn_blocking` thread) that
//! runs them one after another and reports each result as it finishes. One thread
//! hand-off per scrape instead of one per collector: on a 2-core node the context
//! switches of a fan-out cost more CPU than reading `/proc` itself. Isolation is kept:
//! the async side waits at most `timeout` for each result; when a collector overruns,
//! the lane is abandoned (it exits once that collector returns), the collector is
//! reported `stuck` and skipped by later scrapes until it returns, and the collectors
//! that had not run yet continue on a fresh lane. A hung NFS mount can neither hang a
//! scrape nor pile up threads (at most one blocked thread per stuck collector).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nodescope_model::selfmetrics::{Counter, Gauge, SelfMetrics};
use nodescope_model::{
    CollectError, Collector, ComponentKind, ComponentState, MetricBatch, MetricFamily,
    StatusHandle, StatusRegistry,
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

struct Slot {
    collector: Arc<dyn Collector>,
    running: AtomicBool,
    status: StatusHandle,
    success: Gauge,
    duration: Gauge,
    timeouts: Counter,
}

/// The agent's collectors, ready to run.
pub struct CollectorSet {
    slots: Arc<Vec<Slot>>,
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

type LaneResult = (
    usize,
    std::thread::Result<Result<Vec<MetricFamily>, CollectError>>,
    Duration,
);

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
                Slot {
                    running: AtomicBool::new(false),
                    status: status.register(name, ComponentKind::Collector),
                    success: metrics.gauge(
                        "nodescope_collector_success",
                        "Whether the collector's last run succeeded (1) or not (0).",
                        &[("collector", name)],
                    ),
                    duration: metrics.gauge(
                        "nodescope_collector_duration_seconds",
                        "Duration of the collector's last run.",
                        &[("collector", name)],
                    ),
                    timeouts: metrics.counter(
                        "nodescope_collector_timeouts_total",
                        "Collector runs abandoned because they exceeded the collector timeout.",
                        &[("collector", name)],
                    ),
                    collector,
                }
            })
            .collect();
        CollectorSet {
            slots: Arc::new(slots),
            timeout,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Runs every collector; returns the batches of those that succeeded, in
    /// registration order, with each collector's outcome.
    pub async fn collect_all(&self) -> Vec<MetricBatch> {
        self.collect_with_outcomes()
            .await
            .into_iter()
            .filter_map(|(_, b)| b)
            .collect()
    }

    async fn collect_with_outcomes(&self) -> Vec<(RunOutcome, Option<MetricBatch>)> {
        let mut results: Vec<Option<(RunOutcome, Option<MetricBatch>)>> =
            (0..self.slots.len()).map(|_| None).collect();
        let mut pending: Vec<usize> = Vec::with_capacity(self.slots.len());
        for (i, slot) in self.slots.iter().enumerate() {
            if slot.running.load(Ordering::Acquire) {
                results[i] = Some((skip_stuck(slot), None));
            } else {
                pending.push(i);
            }
        }
        while !pending.is_empty() {
            let (tx, mut rx) = mpsc::channel::<LaneResult>(pending.len());
            let abandoned = Arc::new(AtomicBool::new(false));
            let current = Arc::new(AtomicUsize::new(usize::MAX));
            let lane = {
                let slots = self.slots.clone();
                let order = pending.clone();
                let abandoned = abandoned.clone();
                let current = current.clone();
                move || run_lane(&slots, &order, &abandoned, &current, &tx)
            };
            tokio::task::spawn_blocking(lane);
            loop {
                match tokio::time::timeout(self.timeout, rx.recv()).await {
                    Ok(Some((i, r, elapsed))) => {
                        pending.retain(|&p| p != i);
                        results[i] = Some(self.record(i, r, elapsed));
                    }
                    // The lane finished (or skipped the rest as already running).
                    Ok(None) => {
                        for i in pending.drain(..) {
                            results[i] = Some((skip_stuck(&self.slots[i]), None));
                        }
                        break;
                    }
                    Err(_) => {
                        abandoned.store(true, Ordering::Release);
                        // Results that raced with the timeout still count.
                        while let Ok((i, r, elapsed)) = rx.try_recv() {
                            pending.retain(|&p| p != i);
                            results[i] = Some(self.record(i, r, elapsed));
                        }
                        let i = current.load(Ordering::Acquire);
                        if let Some(pos) = pending.iter().position(|&p| p == i) {
                            pending.remove(pos);
                            results[i] = Some((self.timed_out(i), None));
                        }
                        break;
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or((RunOutcome::SkippedStuck, None)))
            .collect()
    }

    fn timed_out(&self, i: usize) -> RunOutcome {
        let slot = &self.slots[i];
        let name = slot.collector.name();
        slot.success.set(0.0);
        slot.timeouts.inc();
        slot.duration.set(self.timeout.as_secs_f64());
        warn!(
            collector = name,
            timeout_ms = self.timeout.as_millis() as u64,
            "collector timed out"
        );
        slot.status.failure(
            ComponentState::Stuck,
            format!(
                "timed out after {:?}; further runs skipped until it returns",
                self.timeout
            ),
            Some(self.timeout),
        );
        RunOutcome::TimedOut
    }

    fn record(
        &self,
        i: usize,
        r: std::thread::Result<Result<Vec<MetricFamily>, CollectError>>,
        elapsed: Duration,
    ) -> (RunOutcome, Option<MetricBatch>) {
        let slot = &self.slots[i];
        let name = slot.collector.name();
        slot.duration.set(elapsed.as_secs_f64());
        match r {
            Ok(Ok(families)) => {
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
            Ok(Err(e)) => {
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
            Err(_) => {
                // A panic inside a collector is a bug; keep the agent alive and say so.
                slot.success.set(0.0);
                warn!(collector = name, "collector panicked");
                slot.status.failure(
                    ComponentState::Failed,
                    "collector panicked".into(),
                    Some(elapsed),
                );
                (RunOutcome::Failed, None)
            }
        }
    }
}

fn skip_stuck(slot: &Slot) -> RunOutcome {
    slot.success.set(0.0);
    slot.status.set_state(
        ComponentState::Stuck,
        Some("previous run has not returned; skipped".into()),
    );
    RunOutcome::SkippedStuck
}

/// Body of one blocking lane: runs `order` sequentially until done or abandoned.
fn run_lane(
    slots: &[Slot],
    order: &[usize],
    abandoned: &AtomicBool,
    current: &AtomicUsize,
    tx: &mpsc::Sender<LaneResult>,
) {
    for &i in order {
        if abandoned.load(Ordering::Acquire) {
            return;
        }
        let slot = &slots[i];
        if slot.running.swap(true, Ordering::AcqRel) {
            continue;
        }
        current.store(i, Ordering::Release);
        let _span = tracing::debug_span!("collector", collector = slot.collector.name()).entered();
        let started = Instant::now();
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| slot.collector.collect()));
        slot.running.store(false, Ordering::Release);
        if tx.blocking_send((i, r, started.elapsed())).is_err() {
            return;
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

    /// Panics: a collector bug must not take the lane (or the agent) down.
    struct Panicking;
    impl Collector for Panicking {
        fn name(&self) -> &'static str {
            "panicking"
        }
        fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
            panic!("bug")
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hung_collector_never_hangs_the_scrape() {
        let (release, rx) = mpsc::channel();
        let status = StatusRegistry::default();
        let metrics = SelfMetrics::new();
        let set = CollectorSet::new(
            vec![
                Arc::new(Hanging(parking_lot::Mutex::new(rx))),
                Arc::new(Panicking),
                Arc::new(Fixed),
                Arc::new(Missing),
            ],
            // Long enough that printing the panicking collector's backtrace (debug build, busy
            // CI machine) does not itself count as a timeout.
            Duration::from_secs(1),
            &status,
            &metrics,
        );
        let t = Instant::now();
        let out = set.collect_with_outcomes().await;
        assert!(t.elapsed() < Duration::from_secs(5));
        let outcomes: Vec<&RunOutcome> = out.iter().map(|(o, _)| o).collect();
        // The collectors queued behind the hung one still ran, on a fresh lane.
        assert_eq!(
            outcomes,
            [
                &RunOutcome::TimedOut,
                &RunOutcome::Failed,
                &RunOutcome::Ok,
                &RunOutcome::Unavailable
            ]
        );
        assert_eq!(out[2].1.as_ref().unwrap().source, "fixed");

        // Next scrape while the first run is still blocked: skipped, not stacked up.
        let out = set.collect_with_outcomes().await;
        assert_eq!(out[0].0, RunOutcome::SkippedStuck);
        assert_eq!(out[2].0, RunOutcome::Ok);
        let snap = status.snapshot();
        let hanging = snap.iter().find(|s| s.name == "hanging").unwrap();
        assert_eq!(hanging.state, ComponentState::Stuck);
        let missing = snap.iter().find(|s| s.name == "pressure").unwrap();
        assert_eq!(missing.state, ComponentState::Unavailable);
        assert!(missing.last_error.as_deref().unwrap().contains("PSI"));

        // Once released, the collector runs again.
        release.send(()).unwrap();
        for _ in 0..50 {
            if !set.slots[0].running.load(Ordering::Acquire) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        release.send(()).unwrap();
        let out = set.collect_with_outcomes().await;
        assert_eq!(out[0].0, RunOutcome::Ok);
        let fams = metrics.collect();
        let success = fams
            .iter()
            .find(|f| f.name == "nodescope_collector_success")
            .unwrap();
        assert_eq!(success.points.len(), 4);
        let timeouts = fams
            .iter()
            .find(|f| f.name == "nodescope_collector_timeouts_total")
            .unwrap();
        assert_eq!(
            timeouts.points[0].value,
            nodescope_model::Value::Number(1.0)
        );
    }
}
