//! Log records and events (failed connects, resets, collector errors, ...).

use std::borrow::Cow;
use std::time::SystemTime;

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
