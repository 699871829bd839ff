//! The contract every exporter implements. Exporters depend on this crate only — never
//! on collectors, probes or aya.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::{Signal, SignalKind};

/// The receiving end of an exporter's bounded queue. The pipeline owns the sending end
/// (its when-full policy is drop-newest-and-count, so producers never block). When the
/// agent shuts down the queue is closed; `recv` then drains what is left and returns
/// `None`, and the exporter has `flush_timeout` to deliver or persist it before its task
/// is aborted.
pub struct ExporterQueue {
    pub rx: mpsc::Receiver<Signal>,
    pub flush_timeout: Duration,
}

impl ExporterQueue {
    pub async fn recv(&mut self) -> Option<Signal> {
        self.rx.recv().await
    }
}

#[async_trait::async_trait]
pub trait Exporter: Send + 'static {
    /// Stable name, used as the `exporter` label of self metrics and in status.
    fn name(&self) -> &str;

    /// Which signals this exporter wants; the pipeline routes only these to it.
    fn accepts(&self, kind: SignalKind) -> bool;

    /// Runs until the queue is closed and drained, then flushes and returns.
    async fn run(self: Box<Self>, queue: ExporterQueue);
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The backend refused the data for good (HTTP 400, invalid argument): never retried.
    #[error("{backend} rejected the batch: {reason}")]
    Rejected { backend: String, reason: String },
    /// A transient failure (connection refused, 429, 5xx): retried with backoff.
    #[error("{backend} is unavailable: {reason}")]
    Retryable {
        backend: String,
        reason: String,
        retry_after: Option<Duration>,
    },
    #[error("encoding for {backend}: {reason}")]
    Encode { backend: String, reason: String },
}
