//! nodescope's flight recorder (`[recorder]`, docs/incidents.md).
//!
//! Always on, inside a hard memory cap: host metrics at 1 s for 15 minutes and at 10 s for
//! 2 hours, per-workload CPU/memory/PSI and per workload → peer TCP histograms and
//! counters at 10 s, timed CPU samples (the profiler's, through
//! [`nodescope_model::feeds::SampleSink`]) and an events ring (every log record of the
//! pipeline, through [`nodescope_model::feeds::EventSink`]). Each ring is a sequence of
//! compact varint-encoded chunks with a byte budget (a share of `memory_cap`); what does
//! not fit is evicted oldest first and counted (`nodescope_recorder_*`).
//!
//! Triggers (by hand, `nodescope incident`, `POST /api/v1/incidents`, Alertmanager's
//! webhook, config rules with hold and cooldown) freeze the window before, keep recording
//! for the after window with the profiler boosted, pick a baseline of the same length
//! before the anomaly and write `incident-<node>-<time>.tar.gz` into a bounded spool.

pub mod bundle;
pub mod cli;
pub mod codec;
mod component;
pub mod config;
pub mod events;
pub mod findings;
pub mod http;
pub mod incidents;
pub mod query;
pub mod recorder;
pub mod redact;
pub mod rules;
pub mod samples;
pub mod series;

pub use cli::{run_incident_cli, IncidentArgs, IncidentCliError};
pub use config::RecorderConfig;
pub use recorder::Recorder;
