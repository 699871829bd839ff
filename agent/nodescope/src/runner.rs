//! Runs collectors under a timeout, never two runs of the same collector at once, and
//! shares one collection between every caller that asks at the same time.
//!
//! A collection hands its collectors to one [`Lane`] (a dedicated thread, one hand-off per
//! collection) that runs them one after another; each collector may take at most the
//! collector timeout *from its own start*. When one overruns, the lane is abandoned (its
//! thread exits once that collector returns), the collector is reported `stuck` and
//! skipped until it returns, and the collectors after it continue on a fresh lane. A hung
//! NFS mount can neither hang a scrape nor pile up threads.
//!
//! Callers (a Prometheus scrape, the push ticker, the flight recorder at 1 s) may overlap.
//! A collector already running for another caller is not started again and not marked
//! stuck: the second caller waits for that run (up to the time left of its timeout) and
//! shares its result.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nodescope_model::lane::{ItemOutcome, Lane};
use nodescope_model::selfmetrics::{Counter, Gauge, SelfMetrics};
use nodescope_model::{
    CollectError, Collector, ComponentKind, ComponentState, MetricBatch, StatusHandle,
    StatusRegistry,
};
use parking_lot::Mutex;
use tokio::sync::watch;
use tracing::{debug, warn};

/// Upper bound on lane threads blocked in collectors that never returned; past it new
/// collections skip the remaining collectors (reported) instead of starting threads.
const MAX_BLOCKED_LANES: usize = 8;

type RunResult = Result<Arc<MetricBatch>, CollectError>;

struct Slot {
    collector: Arc<dyn Collector>,
    /// Claimed by the collection that runs it, until the collector returns.
    running: AtomicBool,
    /// When the current run started on its lane (None while queued).
    started: Mutex<Option<Instant>>,
    /// The last finished run: its batch (None when it failed) and how long it took.
    last: Mutex<(Option<Arc<MetricBatch>>, Duration)>,
    /// Bumped when a run finishes; waiters on a running collector watch it.
    generation: watch::Sender<u64>,
    status: StatusHandle,
    success: Gauge,
    duration: Gauge,
    timeouts: Counter,
}

/// The agent's collectors, ready to run.
pub struct CollectorSet {
    slots: Arc<Vec<Slot>>,
    timeout: Duration,
    lane: Lane,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RunOutcome {
    Ok,
    Unavailable,
    Failed,
    TimedOut,
    SkippedStuck,
    /// Ran for another caller at the same time; its result was shared.
    Shared,
    NotRun,
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
                Slot {
                    running: AtomicBool::new(false),
                    started: Mutex::new(None),
                    last: Mutex::new((None, Duration::ZERO)),
                    generation: watch::channel(0).0,
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
            lane: Lane::new("collect", MAX_BLOCKED_LANES),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Runs the collectors whose name `which` accepts.
    pub async fn collect(&self, which: impl Fn(&str) -> bool) -> Vec<Arc<MetricBatch>> {
        self.collect_with_outcomes(which)
            .await
            .into_iter()
            .filter_map(|(_, b)| b)
            .collect()
    }

    /// Runs every collector; returns the batches and, per collector, `(name, duration,
    /// success)` of the run that served this collection (node_exporter's
    /// `node_scrape_collector_*`).
    pub async fn collect_all_detailed(
        &self,
    ) -> (Vec<Arc<MetricBatch>>, Vec<(&'static str, Duration, bool)>) {
        let outcomes = self.collect_with_outcomes(|_| true).await;
        let mut batches = Vec::with_capacity(outcomes.len());
        let mut runs = Vec::with_capacity(outcomes.len());
        for (slot, (outcome, batch)) in self.slots.iter().zip(outcomes) {
            let took = match outcome {
                RunOutcome::TimedOut | RunOutcome::SkippedStuck => self.timeout,
                RunOutcome::NotRun => Duration::ZERO,
                _ => slot.last.lock().1,
            };
            runs.push((slot.collector.name(), took, batch.is_some()));
            batches.extend(batch);
        }
        (batches, runs)
    }

    async fn collect_with_outcomes(
        &self,
        which: impl Fn(&str) -> bool,
    ) -> Vec<(RunOutcome, Option<Arc<MetricBatch>>)> {
        let chosen: Vec<usize> = (0..self.slots.len())
            .filter(|&i| which(self.slots[i].collector.name()))
            .collect();
        let mut results: Vec<Option<(RunOutcome, Option<Arc<MetricBatch>>)>> =
            (0..chosen.len()).map(|_| None).collect();
        // Claim what is idle; watch what another collection is running.
        let mut mine: Vec<usize> = Vec::new();
        let mut mine_pos: Vec<usize> = Vec::new();
        let mut theirs: Vec<(usize, usize, watch::Receiver<u64>)> = Vec::new();
        for (pos, &i) in chosen.iter().enumerate() {
            let slot = &self.slots[i];
            let rx = slot.generation.subscribe();
            if slot.running.swap(true, Ordering::AcqRel) {
                theirs.push((pos, i, rx));
            } else {
                mine.push(i);
                mine_pos.push(pos);
            }
        }
        if !mine.is_empty() {
            let slots = self.slots.clone();
            let outcomes = self
                .lane
                .run(mine.clone(), self.timeout, move |&i| run_one(&slots[i]))
                .await;
            for ((&i, &pos), outcome) in mine.iter().zip(&mine_pos).zip(outcomes) {
                results[pos] = Some(self.record(i, outcome));
            }
        }
        for (pos, i, mut rx) in theirs {
            results[pos] = Some(self.share(i, &mut rx).await);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or((RunOutcome::NotRun, None)))
            .collect()
    }

    /// Waits for another collection's run of slot `i` (at most until that run's timeout)
    /// and shares its result.
    async fn share(
        &self,
        i: usize,
        rx: &mut watch::Receiver<u64>,
    ) -> (RunOutcome, Option<Arc<MetricBatch>>) {
        let slot = &self.slots[i];
        loop {
            if !slot.running.load(Ordering::Acquire) {
                // Finished between the claim and now.
                return (RunOutcome::Shared, slot.last.lock().0.clone());
            }
            let started = *slot.started.lock();
            let deadline = match started {
                Some(t) => t + self.timeout,
                // Queued on the other lane: give it a full timeout once it starts.
                None => Instant::now() + self.timeout,
            };
            if Instant::now() >= deadline {
                return (skip_stuck(slot), None);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left.min(Duration::from_millis(250)), rx.changed()).await {
                Ok(Ok(())) => return (RunOutcome::Shared, slot.last.lock().0.clone()),
                Ok(Err(_)) => return (RunOutcome::NotRun, None),
                // Re-check: it may have started (new deadline) or be stuck.
                Err(_) => continue,
            }
        }
    }

    fn record(
        &self,
        i: usize,
        outcome: ItemOutcome<(RunResult, Duration)>,
    ) -> (RunOutcome, Option<Arc<MetricBatch>>) {
        let slot = &self.slots[i];
        let name = slot.collector.name();
        match outcome {
            ItemOutcome::Done((r, elapsed)) => {
                slot.duration.set(elapsed.as_secs_f64());
                match r {
                    Ok(batch) => {
                        slot.success.set(1.0);
                        slot.status.success(elapsed);
                        (RunOutcome::Ok, Some(batch))
                    }
                    Err(e) => {
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
                }
            }
            ItemOutcome::Panicked => {
                // A panic inside a collector is a bug; keep the agent alive and say so.
                slot.success.set(0.0);
                warn!(collector = name, "collector panicked");
                slot.status
                    .failure(ComponentState::Failed, "collector panicked".into(), None);
                (RunOutcome::Failed, None)
            }
            ItemOutcome::TimedOut => {
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
                (RunOutcome::TimedOut, None)
            }
            ItemOutcome::NotRun(reason) => {
                // Never claimed by a lane thread: release it for the next collection.
                slot.running.store(false, Ordering::Release);
                slot.success.set(0.0);
                slot.status.set_state(
                    ComponentState::Degraded,
                    Some(format!("not run: {}", reason.as_str())),
                );
                (RunOutcome::NotRun, None)
            }
        }
    }
}

/// Body of one lane item: runs the collector, publishes the result for sharing, releases
/// the claim (even when the caller abandoned the lane long ago).
fn run_one(slot: &Slot) -> (RunResult, Duration) {
    let _span = tracing::debug_span!("collector", collector = slot.collector.name()).entered();
    let started = Instant::now();
    *slot.started.lock() = Some(started);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| slot.collector.collect()));
    let elapsed = started.elapsed();
    let r: RunResult = match r {
        Ok(Ok(families)) => Ok(Arc::new(MetricBatch {
            source: slot.collector.name().into(),
            timestamp: SystemTime::now(),
            families,
        })),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(CollectError::Other("collector panicked".into())),
    };
    *slot.last.lock() = (r.as_ref().ok().cloned(), elapsed);
    *slot.started.lock() = None;
    slot.running.store(false, Ordering::Release);
    slot.generation.send_modify(|g| *g += 1);
    (r, elapsed)
}

/// The collectors as a service for components that collect on their own schedule.
#[async_trait::async_trait]
impl nodescope_model::feeds::MetricsSource for CollectorSet {
    fn collector_names(&self) -> Vec<&'static str> {
        self.slots.iter().map(|s| s.collector.name()).collect()
    }

    async fn collect(&self, names: &[&str]) -> Vec<Arc<MetricBatch>> {
        CollectorSet::collect(self, |n| names.contains(&n)).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use nodescope_model::{MetricFamily, MetricType};
    use std::sync::atomic::AtomicUsize;
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
            // An unwind without the panic hook: printing a debug build's backtrace on a
            // busy machine took longer than the timeout and turned Failed into TimedOut.
            std::panic::resume_unwind(Box::new("bug"))
        }
    }

    /// Takes a while and counts its runs.
    struct Slow(AtomicUsize, Duration);
    impl Collector for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(self.1);
            Ok(vec![MetricFamily::single(
                "node_slow",
                "s",
                MetricType::Gauge,
                2.0,
            )])
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
        let out = set.collect_with_outcomes(|_| true).await;
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
        let out = set.collect_with_outcomes(|_| true).await;
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
        let out = set.collect_with_outcomes(|_| true).await;
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

    /// Issue 16 item 15: a push collection overlapping a scrape must not mark the busy
    /// collector stuck (success 0, series dropped): the second caller shares the run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overlapping_collections_share_one_run() {
        let status = StatusRegistry::default();
        let metrics = SelfMetrics::new();
        let slow = Arc::new(Slow(AtomicUsize::new(0), Duration::from_millis(300)));
        let set = Arc::new(CollectorSet::new(
            vec![slow.clone(), Arc::new(Fixed)],
            Duration::from_secs(2),
            &status,
            &metrics,
        ));
        let a = {
            let set = set.clone();
            tokio::spawn(async move { set.collect_with_outcomes(|_| true).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let b = set.collect_with_outcomes(|_| true).await;
        let a = a.await.unwrap();
        assert_eq!(slow.0.load(Ordering::SeqCst), 1, "one run served both");
        assert_eq!(a[0].0, RunOutcome::Ok);
        assert_eq!(b[0].0, RunOutcome::Shared);
        assert_eq!(
            a[0].1.as_ref().unwrap().families,
            b[0].1.as_ref().unwrap().families
        );
        assert_eq!(status.snapshot()[0].state, ComponentState::Ok);
        // A filtered collection runs only what it asks for.
        let only = set.collect(|n| n == "fixed").await;
        assert_eq!(only.len(), 1);
        assert_eq!(slow.0.load(Ordering::SeqCst), 1);
    }

    /// Issue 16 item 15: with tokio's blocking pool saturated, a collection still finishes
    /// (the lane is a dedicated thread, and the timeout counts from the collector's start).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_blocking_pool_cannot_stall_a_collection() {
        let status = StatusRegistry::default();
        let metrics = SelfMetrics::new();
        let set = CollectorSet::new(
            vec![Arc::new(Fixed)],
            Duration::from_secs(1),
            &status,
            &metrics,
        );
        // Occupy far more blocking threads than a test runtime allows to run at once.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Arc::new(parking_lot::Mutex::new(rx));
        for _ in 0..600 {
            let rx = rx.clone();
            tokio::task::spawn_blocking(move || {
                let _ = rx.lock().recv_timeout(Duration::from_secs(3));
            });
        }
        let t = Instant::now();
        let out = set.collect_with_outcomes(|_| true).await;
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert_eq!(out[0].0, RunOutcome::Ok);
        drop(tx);
    }
}
