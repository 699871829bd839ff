//! Log records and events (failed connects, resets, collector errors, ...).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use crate::Ack;

use crate::metrics::Labels;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Debug,
    Info,
    Warn,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Debug => "debug",
            Severity::Info => "info",
            Severity::Warn => "warn",
            Severity::Error => "error",
        }
    }
    /// OpenTelemetry SeverityNumber.
    pub fn otel_number(self) -> i32 {
        match self {
            Severity::Debug => 5,
            Severity::Info => 9,
            Severity::Warn => 13,
            Severity::Error => 17,
        }
    }
}

/// One event. `labels` are low-cardinality (they become Loki stream labels);
/// `attributes` carry identifiers (pid, comm, peer address) and become structured
/// metadata / OTLP attributes.
#[derive(Clone, Debug, PartialEq)]
pub struct LogRecord {
    pub timestamp: SystemTime,
    pub severity: Severity,
    /// Event class, e.g. `tcp_connect_failed`. Stable, low-cardinality.
    pub kind: Cow<'static, str>,
    pub body: String,
    pub labels: Labels,
    pub attributes: Labels,
}

impl LogRecord {
    /// Approximate heap + inline size, for byte-bounded queues.
    pub fn approx_size(&self) -> usize {
        let l: usize = self
            .labels
            .iter()
            .chain(self.attributes.iter())
            .map(|(k, v)| k.len() + v.len() + 16)
            .sum();
        std::mem::size_of::<Self>() + self.body.len() + self.kind.len() + l
    }
}

/// The records of one `Signal::Logs`, with an optional acknowledgement that travels with
/// them to every logs exporter (see [`crate::ack`]). Dereferences to the records.
#[derive(Clone, Debug)]
pub struct LogBatch {
    pub records: Arc<Vec<LogRecord>>,
    /// Completed when every logs exporter delivered or durably stored the records;
    /// dropped (= not acknowledged) when they are dropped anywhere on the way.
    pub ack: Option<Ack>,
}

impl LogBatch {
    pub fn new(records: Vec<LogRecord>) -> Self {
        LogBatch {
            records: Arc::new(records),
            ack: None,
        }
    }

    pub fn with_ack(records: Vec<LogRecord>, ack: Ack) -> Self {
        LogBatch {
            records: Arc::new(records),
            ack: Some(ack),
        }
    }
}

impl std::ops::Deref for LogBatch {
    type Target = Vec<LogRecord>;
    fn deref(&self) -> &Vec<LogRecord> {
        &self.records
    }
}

impl From<Vec<LogRecord>> for LogBatch {
    fn from(v: Vec<LogRecord>) -> Self {
        LogBatch::new(v)
    }
}

impl From<Arc<Vec<LogRecord>>> for LogBatch {
    fn from(records: Arc<Vec<LogRecord>>) -> Self {
        LogBatch { records, ack: None }
    }
}
