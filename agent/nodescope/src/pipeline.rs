//! The pipeline: producers → one bounded intake → fan-out → one bounded queue per exporter.
//!
//! When-full policy, everywhere: **drop the newest and count it**. Producers (collectors on
//! their interval, probe readers, the profiler) hold an [`Emitter`] whose `emit` never
//! waits, so a slow or dead backend can never stall a probe; the exporter's own delivery
//! machinery (memory bound, WAL) decides what happens to data it already holds.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use nodescope_model::feeds::EventSink;
use nodescope_model::selfmetrics::{Counter, Gauge, SelfMetrics};
use nodescope_model::{
    ComponentKind, ComponentState, Emitter, Exporter, ExporterQueue, Signal, SignalKind,
    StatusHandle, StatusRegistry,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

struct Route {
    accepts: [bool; 3],
    tx: mpsc::Sender<Signal>,
    depth: Gauge,
    dropped: Counter,
    status: StatusHandle,
}

/// The pipeline's bounded intake, created before any component so producers can hold an
/// [`Emitter`] while they are built; [`Pipeline::start`] then routes it to the exporters.
pub struct Intake {
    emitter: Emitter,
    rx: mpsc::Receiver<Signal>,
    dropped: Arc<AtomicU64>,
    capacity: usize,
}

impl Intake {
    pub fn new(capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Signal>(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        Intake {
            emitter: Emitter::new(tx, dropped.clone()),
            rx,
            dropped,
            capacity,
        }
    }

    pub fn emitter(&self) -> Emitter {
        self.emitter.clone()
    }
}

pub struct Pipeline {
    emitter: Emitter,
    fanout: JoinHandle<()>,
    exporters: Vec<(String, JoinHandle<()>)>,
}

impl Pipeline {
    /// Starts the fan-out and one task per exporter. Each exporter queue holds as many
    /// signals as the intake.
    pub fn start(
        intake: Intake,
        exporters: Vec<Box<dyn Exporter>>,
        events: Option<Arc<dyn EventSink>>,
        flush_timeout: Duration,
        metrics: &SelfMetrics,
        status: &StatusRegistry,
        shutdown: CancellationToken,
    ) -> Pipeline {
        let Intake {
            emitter,
            rx: intake_rx,
            dropped: intake_dropped,
            capacity,
        } = intake;
        let intake_status = status.register("intake", ComponentKind::Pipeline);
        intake_status.set_state(ComponentState::Ok, None);

        let mut routes = Vec::new();
        let mut tasks = Vec::new();
        for exporter in exporters {
            let name = exporter.name().to_string();
            let accepts = SignalKind::ALL.map(|k| exporter.accepts(k));
            let (tx, rx) = mpsc::channel(capacity);
            routes.push(Route {
                depth: metrics.gauge(
                    "nodescope_pipeline_queue_depth",
                    "Signals waiting in a pipeline queue.",
                    &[("queue", &name)],
                ),
                dropped: metrics.counter(
                    "nodescope_pipeline_dropped_total",
                    "Signals dropped because a pipeline queue was full (drop-newest policy).",
                    &[("queue", &name)],
                ),
                status: status.register(format!("queue/{name}"), ComponentKind::Pipeline),
                accepts,
                tx,
            });
            metrics
                .gauge(
                    "nodescope_pipeline_queue_capacity",
                    "Capacity of a pipeline queue, in signals.",
                    &[("queue", &name)],
                )
                .set(capacity as f64);
            let span = tracing::info_span!("exporter", exporter = %name);
            let queue = ExporterQueue { rx, flush_timeout };
            tasks.push((name, tokio::spawn(exporter.run(queue).instrument(span))));
        }
        let unrouted = SignalKind::ALL.map(|k| {
            metrics.counter(
                "nodescope_pipeline_unrouted_total",
                "Signals no configured exporter takes (e.g. events with no Loki/OTLP exporter); discarded.",
                &[("signal", k.as_str())],
            )
        });

        let intake_depth = metrics.gauge(
            "nodescope_pipeline_queue_depth",
            "Signals waiting in a pipeline queue.",
            &[("queue", "intake")],
        );
        metrics
            .gauge(
                "nodescope_pipeline_queue_capacity",
                "Capacity of a pipeline queue, in signals.",
                &[("queue", "intake")],
            )
            .set(capacity as f64);
        let intake_dropped_metric = metrics.counter(
            "nodescope_pipeline_dropped_total",
            "Signals dropped because a pipeline queue was full (drop-newest policy).",
            &[("queue", "intake")],
        );
        let fanout = tokio::spawn(
            fan_out(
                intake_rx,
                routes,
                events,
                unrouted,
                shutdown,
                intake_depth,
                intake_dropped,
                intake_dropped_metric,
                intake_status,
            )
            .instrument(tracing::info_span!("pipeline")),
        );
        Pipeline {
            emitter,
            fanout,
            exporters: tasks,
        }
    }

    /// Waits for the fan-out to drain (it stops when `shutdown` fires) and for every
    /// exporter to flush, up to `deadline`; exporters still running then are aborted.
    pub async fn join(self, deadline: Duration) {
        drop(self.emitter);
        let started = tokio::time::Instant::now();
        let _ = tokio::time::timeout(deadline, self.fanout).await;
        for (name, task) in self.exporters {
            let left = deadline.saturating_sub(started.elapsed());
            let abort = task.abort_handle();
            match tokio::time::timeout(left, task).await {
                Ok(_) => info!(exporter = %name, "exporter flushed and stopped"),
                Err(_) => {
                    warn!(exporter = %name, "exporter did not flush before the shutdown deadline; aborted");
                    abort.abort();
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn fan_out(
    mut intake: mpsc::Receiver<Signal>,
    routes: Vec<Route>,
    events: Option<Arc<dyn EventSink>>,
    unrouted: [Counter; 3],
    shutdown: CancellationToken,
    intake_depth: Gauge,
    intake_dropped: Arc<AtomicU64>,
    intake_dropped_metric: Counter,
    intake_status: StatusHandle,
) {
    let route = |mut s: Signal| {
        // The flight recorder sees every event, whether or not an exporter takes logs.
        if let (Some(sink), Signal::Logs(batch)) = (&events, &s) {
            sink.offer(&batch.records);
        }
        // A log batch's acknowledgement gets one holder per route; the pipeline's own
        // holder completes once they are handed over (a full queue drops its holder:
        // the batch is not acknowledged).
        let ack = match &mut s {
            Signal::Logs(l) => l.ack.take(),
            _ => None,
        };
        let k = s.kind().index();
        if !routes.iter().any(|r| r.accepts[k]) {
            unrouted[k].inc();
            if let Some(a) = ack {
                a.complete();
            }
            return;
        }
        for r in &routes {
            if !r.accepts[k] {
                continue;
            }
            let mut copy = s.clone();
            if let (Some(a), Signal::Logs(l)) = (&ack, &mut copy) {
                l.ack = Some(a.clone());
            }
            if r.tx.try_send(copy).is_err() {
                r.dropped.inc();
                r.status.set_dropped(r.dropped.get());
                r.status.set_state(
                    ComponentState::Degraded,
                    Some("queue full: dropping newest".into()),
                );
            }
            let depth = (r.tx.max_capacity() - r.tx.capacity()) as u64;
            r.depth.set(depth as f64);
            r.status.set_queue_depth(depth);
        }
        if let Some(a) = ack {
            a.complete();
        }
    };
    for r in &routes {
        r.status.set_state(ComponentState::Ok, None);
    }
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            s = intake.recv() => match s {
                Some(s) => {
                    route(s);
                    let depth = intake.len();
                    intake_depth.set(depth as f64);
                    intake_status.set_queue_depth(depth as u64);
                    let dropped = intake_dropped.load(std::sync::atomic::Ordering::Relaxed);
                    intake_dropped_metric.set(dropped);
                    intake_status.set_dropped(dropped);
                }
                None => break,
            }
        }
    }
    // Drain what producers already handed over, then close every exporter queue.
    while let Ok(s) = intake.try_recv() {
        route(s);
    }
    for r in &routes {
        r.depth.set(0.0);
    }
    intake_status.set_state(ComponentState::Stopped, None);
    for r in &routes {
        r.status.set_state(ComponentState::Stopped, None);
    }
    info!(
        queues = routes.len(),
        "pipeline drained; exporter queues closed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodescope_model::MetricBatch;
    use std::sync::atomic::Ordering;
    use std::time::SystemTime;

    /// Counts what it receives; optionally never reads (a dead backend).
    struct Sink {
        got: Arc<AtomicU64>,
        stalled: bool,
    }

    #[async_trait::async_trait]
    impl Exporter for Sink {
        fn name(&self) -> &str {
            if self.stalled {
                "stalled"
            } else {
                "sink"
            }
        }
        fn accepts(&self, kind: SignalKind) -> bool {
            kind == SignalKind::Metrics
        }
        async fn run(self: Box<Self>, mut queue: ExporterQueue) {
            if self.stalled {
                // Holds the queue without reading until shutdown closes it.
                while !queue.rx.is_closed() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            while queue.recv().await.is_some() {
                self.got.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn batch() -> Signal {
        Signal::Metrics(Arc::new(MetricBatch {
            source: "t".into(),
            timestamp: SystemTime::now(),
            families: vec![],
        }))
    }

    #[tokio::test]
    async fn slow_exporter_drops_newest_and_never_blocks_producers() {
        let got = Arc::new(AtomicU64::new(0));
        let stalled_got = Arc::new(AtomicU64::new(0));
        let metrics = SelfMetrics::new();
        let status = StatusRegistry::default();
        let shutdown = CancellationToken::new();
        let intake = Intake::new(16);
        let e = intake.emitter();
        let p = Pipeline::start(
            intake,
            vec![
                Box::new(Sink {
                    got: got.clone(),
                    stalled: false,
                }),
                Box::new(Sink {
                    got: stalled_got.clone(),
                    stalled: true,
                }),
            ],
            None,
            Duration::from_secs(1),
            &metrics,
            &status,
            shutdown.clone(),
        );
        let mut sent = 0;
        for _ in 0..200 {
            if e.emit(batch()) {
                sent += 1;
            }
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        shutdown.cancel();
        p.join(Duration::from_secs(2)).await;
        let fams = metrics.collect();
        let dropped = fams
            .iter()
            .find(|f| f.name == "nodescope_pipeline_dropped_total")
            .unwrap();
        let stalled_drops = dropped
            .points
            .iter()
            .find(|p| p.labels.iter().any(|(_, v)| v == "stalled"))
            .unwrap();
        let nodescope_model::Value::Number(n) = stalled_drops.value else {
            panic!()
        };
        // Everything that entered went to the healthy sink; the stalled queue kept at most
        // its capacity and counted the rest.
        assert_eq!(got.load(Ordering::Relaxed), sent);
        assert_eq!(stalled_got.load(Ordering::Relaxed) + n as u64, sent);
        assert!(stalled_got.load(Ordering::Relaxed) <= 16);
        assert!(n > 0.0);
    }

    /// Takes logs; completes every acknowledgement it receives, or (`holds`) keeps them
    /// until it ends, then drops them (a backend that never answered).
    struct LogSink {
        name: &'static str,
        holds: bool,
    }

    #[async_trait::async_trait]
    impl Exporter for LogSink {
        fn name(&self) -> &str {
            self.name
        }
        fn accepts(&self, kind: SignalKind) -> bool {
            kind == SignalKind::Logs
        }
        async fn run(self: Box<Self>, mut queue: ExporterQueue) {
            let mut held = Vec::new();
            while let Some(s) = queue.recv().await {
                if let Signal::Logs(mut b) = s {
                    if let Some(a) = b.ack.take() {
                        if self.holds {
                            held.push(a);
                        } else {
                            a.complete();
                        }
                    }
                }
            }
        }
    }

    fn acked_batch() -> (Signal, Arc<std::sync::atomic::AtomicU8>) {
        let st = Arc::new(std::sync::atomic::AtomicU8::new(0));
        let st2 = st.clone();
        let ack = nodescope_model::Ack::new(move |ok| {
            st2.store(if ok { 1 } else { 2 }, Ordering::SeqCst)
        });
        (
            Signal::Logs(nodescope_model::LogBatch::with_ack(vec![], ack)),
            st,
        )
    }

    async fn settle(st: &std::sync::atomic::AtomicU8) -> u8 {
        for _ in 0..200 {
            let v = st.load(Ordering::SeqCst);
            if v != 0 {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        0
    }

    #[tokio::test]
    async fn a_log_batch_is_acknowledged_only_when_every_logs_exporter_has_it() {
        for (exporters, want) in [
            // Both complete: acknowledged.
            (vec![("a", false), ("b", false)], 1u8),
            // One never completes and drops its holder at shutdown: not acknowledged.
            (vec![("a", false), ("b", true)], 2u8),
            // No logs exporter: nothing to wait for.
            (vec![], 1u8),
        ] {
            let metrics = SelfMetrics::new();
            let status = StatusRegistry::default();
            let shutdown = CancellationToken::new();
            let intake = Intake::new(16);
            let e = intake.emitter();
            let ex: Vec<Box<dyn Exporter>> = exporters
                .iter()
                .map(|&(name, holds)| Box::new(LogSink { name, holds }) as Box<dyn Exporter>)
                .collect();
            let p = Pipeline::start(
                intake,
                ex,
                None,
                Duration::from_secs(1),
                &metrics,
                &status,
                shutdown.clone(),
            );
            let (sig, st) = acked_batch();
            assert!(e.emit(sig));
            if want == 1 {
                assert_eq!(settle(&st).await, 1);
            } else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert_eq!(
                    st.load(Ordering::SeqCst),
                    0,
                    "pending while one exporter holds it"
                );
            }
            shutdown.cancel();
            p.join(Duration::from_secs(2)).await;
            assert_eq!(settle(&st).await, want);
        }
    }
}
