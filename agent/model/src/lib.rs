//! nodescope's telemetry data model.
//!
//! Collectors produce these types; exporters consume them. Neither side depends on the
//! other: both depend only on this crate. The model is deliberately *pre-aggregated*
//! (cumulative counters, cumulative histograms, gauges) because every nodescope source —
//! `/proc` counters, eBPF maps — is already aggregated when it is read.

pub mod ack;
pub mod backoff;
pub mod collector;
pub mod config;
pub mod exporter;
pub mod feeds;
pub mod files;
pub mod host;
pub mod lane;
pub mod logs;
pub mod metrics;
pub mod profile;
pub mod resource;
pub mod selfmetrics;
pub mod services;
pub mod signal;
pub mod status;
pub mod workload;

pub use ack::Ack;
pub use collector::{CollectError, Collector};
pub use exporter::{ExportError, Exporter, ExporterQueue};
pub use logs::{LogBatch, LogRecord, Severity};
pub use metrics::{Bucket, Histogram, Labels, MetricBatch, MetricFamily, MetricType, Point, Value};
pub use profile::Profile;
pub use resource::Resource;
pub use services::Services;
pub use signal::{Emitter, Signal, SignalKind};
pub use status::{ComponentKind, ComponentState, StatusHandle, StatusRegistry};
