//! `nodescope_logs_*` self metrics of one source (`pods`, `files/<name>`, `kmsg`).

use nodescope_model::selfmetrics::{Counter, Gauge, SelfMetrics};

#[derive(Clone, Debug)]
pub struct SourceMetrics {
    pub lines_read: Counter,
    pub bytes_read: Counter,
    pub lines_shipped: Counter,
    pub bytes_shipped: Counter,
    pub lines_truncated: Counter,
    pub lines_unparsed: Counter,
    /// Bytes of files closed (gone, no progress for `rotated_close_after`) before their
    /// lines were read or acknowledged (`nodescope_logs_bytes_dropped_total{reason="file_gone"}`).
    pub dropped_file_gone: Counter,
    /// Ring overruns (`EPIPE`) of `/dev/kmsg`; the lost records are in `kmsg_gaps`.
    pub dropped_kmsg_overrun: Counter,
    /// Batches not acknowledged (an exporter queue was full, a backlog was full, shutdown):
    /// the source rewound to its checkpoint and read them again.
    pub rewinds: Counter,
    pub truncations: Counter,
    pub rotations: Counter,
    pub throttled: Counter,
    pub files_open: Gauge,
    pub files_tracked: Gauge,
    pub files_skipped: Counter,
    pub lag_bytes: Gauge,
    pub lag_max_bytes: Gauge,
    pub inflight_bytes: Gauge,
    pub checkpoint_writes: Counter,
    pub checkpoint_errors: Counter,
    pub checkpoint_seconds: Gauge,
    pub checkpoint_bytes: Gauge,
    pub kmsg_gaps: Counter,
}

impl SourceMetrics {
    pub fn register(m: &SelfMetrics, source: &str) -> Self {
        let l = [("source", source)];
        let dropped = |reason: &'static str| {
            m.counter(
                "nodescope_logs_lines_dropped_total",
                "Kernel log ring overruns (EPIPE); the records lost are counted in nodescope_logs_kmsg_gaps_total.",
                &[("source", source), ("reason", reason)],
            )
        };
        SourceMetrics {
            lines_read: m.counter("nodescope_logs_lines_read_total", "Logical log lines read.", &l),
            bytes_read: m.counter("nodescope_logs_bytes_read_total", "Bytes read from log files and /dev/kmsg.", &l),
            lines_shipped: m.counter(
                "nodescope_logs_lines_shipped_total",
                "Log lines acknowledged by every logs exporter (delivered or in its WAL).",
                &l,
            ),
            bytes_shipped: m.counter(
                "nodescope_logs_bytes_shipped_total",
                "Source bytes whose lines were acknowledged by every logs exporter.",
                &l,
            ),
            lines_truncated: m.counter(
                "nodescope_logs_lines_truncated_total",
                "Log lines cut at logs.max_line_bytes (shipped with truncated=true).",
                &l,
            ),
            lines_unparsed: m.counter(
                "nodescope_logs_lines_unparsed_total",
                "Lines not in the file's format (CRI, docker json), shipped raw.",
                &l,
            ),
            dropped_file_gone: m.counter(
                "nodescope_logs_bytes_dropped_total",
                "Bytes of files that went away (deleted or rotated, then closed after rotated_close_after without progress) before their lines were read or acknowledged.",
                &[("source", source), ("reason", "file_gone")],
            ),
            dropped_kmsg_overrun: dropped("kmsg_overrun"),
            rewinds: m.counter(
                "nodescope_logs_rewinds_total",
                "Batches not acknowledged (queue or backlog full, shutdown): the source re-read them from its checkpoint.",
                &l,
            ),
            truncations: m.counter(
                "nodescope_logs_file_truncations_total",
                "Files found truncated or rewritten in place (copytruncate): read again from the start.",
                &l,
            ),
            rotations: m.counter(
                "nodescope_logs_file_rotations_total",
                "Files renamed or deleted while tailed (read to the end, then closed).",
                &l,
            ),
            throttled: m.counter(
                "nodescope_logs_throttled_total",
                "Reads deferred by logs.rate_limit (lines stay in the file).",
                &l,
            ),
            files_open: m.gauge("nodescope_logs_files_open", "Log files held open.", &l),
            files_tracked: m.gauge("nodescope_logs_files_tracked", "Log files tailed (open or waiting for a turn).", &l),
            files_skipped: m.counter(
                "nodescope_logs_files_skipped_total",
                "Matching files not tailed because logs.max_tracked_files was reached.",
                &l,
            ),
            lag_bytes: m.gauge(
                "nodescope_logs_checkpoint_lag_bytes",
                "Bytes of tailed files after their checkpoints (not yet acknowledged), summed over files.",
                &l,
            ),
            lag_max_bytes: m.gauge(
                "nodescope_logs_checkpoint_lag_max_bytes",
                "The largest checkpoint lag of one file (per-file lags: GET /api/v1/logs/files).",
                &l,
            ),
            inflight_bytes: m.gauge(
                "nodescope_logs_inflight_bytes",
                "Source bytes read and sent but not yet acknowledged (bounded by logs.max_inflight_bytes).",
                &l,
            ),
            checkpoint_writes: m.counter("nodescope_logs_checkpoint_writes_total", "Checkpoint files written (atomically, fsynced).", &l),
            checkpoint_errors: m.counter("nodescope_logs_checkpoint_errors_total", "Checkpoint writes that failed.", &l),
            checkpoint_seconds: m.gauge(
                "nodescope_logs_checkpoint_write_seconds",
                "Cumulative time spent writing checkpoints (atomic write with fsync).",
                &l,
            ),
            checkpoint_bytes: m.gauge("nodescope_logs_checkpoint_bytes", "Size of the last checkpoint written.", &l),
            kmsg_gaps: m.counter(
                "nodescope_logs_kmsg_gaps_total",
                "Kernel log records missed (sequence number gaps, ring overruns).",
                &l,
            ),
        }
    }
}
