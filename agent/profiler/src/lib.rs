//! CPU profiling for nodescope: a node-wide eBPF sampler (software cpu-clock, frame-pointer
//! stacks, in-kernel aggregation and pid/cgroup filtering), symbolization on the node
//! (kallsyms, ELF/DWARF via blazesym, debug links, demangling), pprof/folded/SVG output,
//! a Go-compatible `/debug/pprof/profile` endpoint for any process, the `nodescope
//! profile` CLI, and continuous per-workload profiles for the pipeline.
//!
//! See docs/profiling.md.

pub mod cli;
mod component;
pub mod config;
pub mod debugsize;
pub mod feed;
pub mod http;
pub mod kallsyms;
pub mod metrics;
pub mod offcpu;
pub mod output;
pub mod perfmap;
pub mod procmaps;
pub mod request;
pub mod sampler;
pub mod samples;
pub mod selfprof;
pub mod service;
pub mod symbolize;
pub mod unwind;

pub use cli::{run_profile_cli, ProfileArgs, ProfileCliError};
pub use config::{ProfilerContext, ProfilingConfig};
pub use http::router;
pub use nodescope_pprof::proto;
pub use output::Format;
pub use service::{ProfileError, ProfilerService, Rendered};
