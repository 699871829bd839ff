//! Profiles. The interchange form is pprof (`profile.proto`, gzip-compressed): every
//! consumer nodescope talks to — `go tool pprof`, Pyroscope's ingest API — reads it, so a
//! profile travels through the pipeline already encoded, with its metadata beside it.

use std::time::{Duration, SystemTime};

use crate::metrics::Labels;

#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub start: SystemTime,
    pub duration: Duration,
    /// Sampling frequency in Hz.
    pub sample_rate_hz: u32,
    /// What was profiled, e.g. `workload`, `pid`, `comm`. Becomes Pyroscope labels.
    pub labels: Labels,
    /// gzip-compressed `perftools.profiles.Profile`.
    pub pprof_gz: Vec<u8>,
}
