//! nodescope's log shipper: pod and container logs (CRI, docker json-file), host files by
//! glob, and the kernel log, with checkpoints that advance only when every logs exporter
//! acknowledged the lines. See docs/logs.md.

pub mod checkpoint;
pub mod component;
pub mod config;
pub mod format;
pub mod glob;
pub mod kmsg;
pub mod kmsgsource;
pub mod meta;
pub mod metrics;
pub mod multiline;
pub mod tailer;
pub mod time;

pub use config::LogsConfig;
