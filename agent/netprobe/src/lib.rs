//! eBPF network latency probes (raw tracepoints only): per-workload, per-peer TCP connect
//! latency, RTT, retransmits, resets, connection duration, bytes, and drops by reason.
//!
//! ```text
//! NetworkConfig::build(NetProbeContext) -> NetProbe
//!   .collector()  -> Arc<dyn Collector>  reads the kernel maps on each collection
//!   .spawn(token) -> ring buffer reader  notable events -> LogRecords via the Emitter
//!   .router()     -> GET /api/v1/network/connections
//! ```
//!
//! See docs/network.md for hooks, map bounds, labels and degradation.

pub mod aggregate;
pub mod budget;
mod component;
pub mod config;
pub mod dns;
pub mod events;
pub mod probe;
mod slots;
pub mod workload;

pub use config::{DnsConfig, NetworkConfig, ProbesConfig};
pub use probe::{NetProbe, NetProbeContext, ProbeHealth};
