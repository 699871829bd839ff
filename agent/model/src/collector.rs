//! The contract every metric source implements.

use std::path::PathBuf;

use crate::MetricFamily;

/// A source of metric families, read on demand (a scrape or a push interval).
///
/// `collect` is synchronous and may block (it reads `/proc`, `/sys`, eBPF maps); the
/// agent always calls it on a blocking thread under a timeout, and never starts a second
/// run of a collector whose previous run has not returned. Implementations must not
/// panic on malformed input: they return [`CollectError`] or skip the bad line.
pub trait Collector: Send + Sync + 'static {
    /// Stable, low-cardinality name (`cpu`, `meminfo`, `net_tcp`), used as the
    /// `collector` label of `nodescope_collector_success` / `_duration_seconds`.
    fn name(&self) -> &'static str;

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError>;
}

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The source does not exist on this host (no PSI, no conntrack module, ...).
    /// The collector is reported as unavailable; the rest of the agent carries on.
    #[error("{what} is not available: {reason}")]
    Unavailable { what: String, reason: String },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{0}")]
    Other(String),
}

impl CollectError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            return CollectError::Unavailable {
                what: path.display().to_string(),
                reason: "file not found".into(),
            };
        }
        CollectError::Io { path, source }
    }

    pub fn parse(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        CollectError::Parse {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub fn is_unavailable(&self) -> bool {
        matches!(self, CollectError::Unavailable { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_unavailable_not_failure() {
        let e = CollectError::io(
            "/proc/pressure/cpu",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert!(e.is_unavailable());
        assert!(e.to_string().contains("/proc/pressure/cpu"));
        let e = CollectError::io(
            "/proc/stat",
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert!(!e.is_unavailable());
    }
}
