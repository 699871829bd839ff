//! Self metrics shared by every push exporter (label `exporter`).

use nodescope_model::selfmetrics::{Counter, Gauge, SelfMetrics};

/// Why items were dropped (`nodescope_exporter_dropped_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The backend refused them for good (HTTP 400, invalid argument, partial success).
    Rejected,
    /// The in-memory backlog exceeded `batch.memory_limit_bytes` (oldest dropped).
    MemoryLimit,
    /// The WAL exceeded `wal.max_bytes` (oldest segment deleted).
    WalFull,
    /// `retry.max_elapsed` passed without a successful send.
    RetriesExhausted,
    /// The agent stopped before they could be sent (no WAL to keep them).
    Shutdown,
    /// They could not be encoded or written to the WAL.
    Encode,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        DropReason::Rejected,
        DropReason::MemoryLimit,
        DropReason::WalFull,
        DropReason::RetriesExhausted,
        DropReason::Shutdown,
        DropReason::Encode,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Rejected => "rejected",
            DropReason::MemoryLimit => "memory_limit",
            DropReason::WalFull => "wal_full",
            DropReason::RetriesExhausted => "retries_exhausted",
            DropReason::Shutdown => "shutdown",
            DropReason::Encode => "encode",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ExporterMetrics {
    /// Items (metric points, log lines, profiles) the backend accepted.
    pub sent: Counter,
    /// Send attempts that failed (each retry that fails counts once).
    pub failed: Counter,
    /// Retries scheduled.
    pub retries: Counter,
    dropped: [Counter; 6],
    /// Corrupt WAL regions skipped.
    pub wal_corrupt: Counter,
    /// Encoded bytes waiting in memory (including the payload in flight).
    pub queue_bytes: Gauge,
    /// Bytes of the WAL on disk.
    pub wal_bytes: Gauge,
    /// Acknowledged log batches refused because the backlog was full (their producer
    /// keeps the lines and offers them again).
    pub refused: Counter,
}

impl ExporterMetrics {
    pub fn register(m: &SelfMetrics, exporter: &str) -> Self {
        let l = [("exporter", exporter)];
        let dropped = DropReason::ALL.map(|r| {
            m.counter(
                "nodescope_exporter_dropped_total",
                "Items (points, log lines, profiles) an exporter dropped, by reason.",
                &[("exporter", exporter), ("reason", r.as_str())],
            )
        });
        ExporterMetrics {
            sent: m.counter(
                "nodescope_exporter_sent_total",
                "Items (points, log lines, profiles) the backend accepted.",
                &l,
            ),
            failed: m.counter(
                "nodescope_exporter_failed_total",
                "Send attempts that failed (retried or not).",
                &l,
            ),
            retries: m.counter(
                "nodescope_exporter_retries_total",
                "Retries scheduled after a retryable failure.",
                &l,
            ),
            dropped,
            wal_corrupt: m.counter(
                "nodescope_exporter_wal_corrupt_total",
                "Corrupt or truncated WAL regions skipped.",
                &l,
            ),
            queue_bytes: m.gauge(
                "nodescope_exporter_queue_bytes",
                "Encoded bytes an exporter holds in memory (waiting and in flight).",
                &l,
            ),
            wal_bytes: m.gauge(
                "nodescope_exporter_wal_bytes",
                "Bytes of an exporter's write-ahead log on disk.",
                &l,
            ),
            refused: m.counter(
                "nodescope_exporter_refused_batches_total",
                "Acknowledged log batches refused because the memory backlog or the WAL was full; their producer keeps the lines and offers them again.",
                &l,
            ),
        }
    }

    pub fn dropped(&self, reason: DropReason) -> &Counter {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        &self.dropped[i]
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(Counter::get).sum()
    }
}
