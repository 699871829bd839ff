//! The unit that flows through the pipeline, and the non-blocking handle producers use.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::{LogBatch, LogRecord, MetricBatch, Profile};

#[derive(Clone, Debug)]
pub enum Signal {
    Metrics(Arc<MetricBatch>),
    /// Log records, optionally with an acknowledgement (see [`crate::ack`]).
    Logs(LogBatch),
    Profile(Arc<Profile>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignalKind {
    Metrics,
    Logs,
    Profiles,
}

impl SignalKind {
    /// Every kind, in [`SignalKind::index`] order.
    pub const ALL: [SignalKind; 3] = [SignalKind::Metrics, SignalKind::Logs, SignalKind::Profiles];

    /// Dense index (0, 1, 2) for per-kind arrays.
    pub fn index(self) -> usize {
        match self {
            SignalKind::Metrics => 0,
            SignalKind::Logs => 1,
            SignalKind::Profiles => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SignalKind::Metrics => "metrics",
            SignalKind::Logs => "logs",
            SignalKind::Profiles => "profiles",
        }
    }
}

impl Signal {
    pub fn kind(&self) -> SignalKind {
        match self {
            Signal::Metrics(_) => SignalKind::Metrics,
            Signal::Logs(_) => SignalKind::Logs,
            Signal::Profile(_) => SignalKind::Profiles,
        }
    }

    /// Approximate in-memory size in bytes, used by byte-bounded queues.
    pub fn approx_size(&self) -> usize {
        match self {
            Signal::Metrics(b) => {
                b.families
                    .iter()
                    .map(|f| {
                        64 + f.name.len()
                            + f.points
                                .iter()
                                .map(|p| {
                                    48 + p
                                        .labels
                                        .iter()
                                        .map(|(k, v)| k.len() + v.len() + 16)
                                        .sum::<usize>()
                                        + match &p.value {
                                            crate::Value::Number(_) => 8,
                                            crate::Value::Histogram(h) => 32 + h.buckets.len() * 16,
                                        }
                                })
                                .sum::<usize>()
                    })
                    .sum::<usize>()
                    + 64
            }
            Signal::Logs(l) => l.iter().map(LogRecord::approx_size).sum::<usize>() + 32,
            Signal::Profile(p) => p.pprof_gz.len() + 128,
        }
    }
}

/// A cloneable, never-blocking sender into the pipeline. Producers on hot paths (probe
/// readers, the profiler) call [`Emitter::emit`]; when the pipeline's bounded intake is
/// full the signal is dropped and counted, so a slow exporter can never stall a probe.
#[derive(Clone, Debug)]
pub struct Emitter {
    tx: mpsc::Sender<Signal>,
    dropped: Arc<AtomicU64>,
}

impl Emitter {
    pub fn new(tx: mpsc::Sender<Signal>, dropped: Arc<AtomicU64>) -> Self {
        Emitter { tx, dropped }
    }

    /// Offers a signal to the pipeline. Returns false (and counts a drop) if the
    /// intake is full or closed.
    pub fn emit(&self, signal: Signal) -> bool {
        match self.tx.try_send(signal) {
            Ok(()) => true,
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// An emitter backed by its own bounded channel, for tests of producers.
    pub fn for_test(capacity: usize) -> (Self, mpsc::Receiver<Signal>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Emitter::new(tx, Arc::new(AtomicU64::new(0))), rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn batch() -> Signal {
        Signal::Metrics(Arc::new(MetricBatch {
            source: "t".into(),
            timestamp: SystemTime::now(),
            families: vec![],
        }))
    }

    #[test]
    fn emit_never_blocks_and_counts_drops() {
        let (e, mut rx) = Emitter::for_test(2);
        assert!(e.emit(batch()));
        assert!(e.emit(batch()));
        assert!(!e.emit(batch()));
        assert_eq!(e.dropped(), 1);
        assert!(rx.try_recv().is_ok());
        assert!(e.emit(batch()));
        assert_eq!(e.dropped(), 1);
    }
}
