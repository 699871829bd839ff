//! `[profiling]` configuration.

use std::path::PathBuf;
use std::sync::Arc;

use nodescope_model::config::Issues;
use nodescope_model::selfmetrics::SelfMetrics;
use nodescope_model::services::Services;
use nodescope_model::signal::Emitter;
use nodescope_model::status::StatusRegistry;
use nodescope_model::workload::PodLookup;
use serde::Deserialize;

use crate::sampler::UnwindMethod;
use crate::service::ProfilerService;

/// Hard ceiling for any configured frequency (the brief's cap is 499 Hz by default).
pub const HZ_CEILING: u32 = 1000;

/// Upper bound of `debug_info_max_binary_mb` (64 GiB: anything larger is a typo).
pub const MAX_DEBUG_INFO_MB: u64 = 65_536;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfilingConfig {
    /// Serve `/debug/pprof/*` and allow on-demand profiles.
    pub enabled: bool,
    /// Run the node-wide continuous profiler and emit one profile per workload per interval.
    pub continuous: bool,
    /// Sampling frequency of the continuous profiler (Hz).
    pub hz: u32,
    /// Continuous profile interval (seconds).
    pub interval_secs: u64,
    /// Default `hz` of on-demand profiles.
    pub default_hz: u32,
    /// Highest `hz` an on-demand request may ask for.
    pub max_hz: u32,
    /// Longest on-demand profile (`seconds` above this is a 400).
    pub max_seconds: u64,
    /// Default `seconds` of on-demand profiles (Go uses 30).
    pub default_seconds: u64,
    /// On-demand profiles running at once (across targets); further requests get 429.
    pub max_concurrent: usize,
    /// How often the in-kernel aggregation is drained (milliseconds).
    pub drain_interval_ms: u64,
    /// Distinct (pid, tid, stack) keys kept in user space per profile; more are dropped and counted.
    pub max_stacks_per_profile: usize,
    /// Continuous profiles emitted per interval at most (one per workload); more are dropped and counted.
    pub max_workloads_per_interval: usize,
    /// User-stack unwinding: `dwarf` (CFI tables in BPF maps, frame pointers where a
    /// binary has none) or `frame_pointers`.
    pub unwind: UnwindMethod,
    /// How the agent profiles itself: `auto` (eBPF filtered to our pid, SIGPROF when
    /// eBPF is unavailable) or `sigprof` (always pprof-rs).
    pub self_profiler: SelfProfiler,
    /// Symbolizer bounds.
    pub max_binaries: usize,
    pub max_symbols_per_binary: usize,
    pub max_processes: usize,
    pub process_retention_secs: u64,
    /// Also read DWARF and separate debug files (`.gnu_debuglink`, `/usr/lib/debug/.build-id`):
    /// better names and inlined frames, more memory while symbolizing.
    pub debug_info: bool,
    /// With `debug_info`, a binary whose DWARF (uncompressed, in the file plus its separate
    /// debug file) exceeds this many MiB is symbolized from ELF symbol tables only: names
    /// kept, no inlined frames. Bounds the memory blazesym maps for one binary.
    pub debug_info_max_binary_mb: u64,
    /// Off-CPU profiles (`type=offcpu|wall`) follow 1 in this many context switches
    /// (drawn at random per switch-out in BPF) and multiply what they measure by it, so
    /// totals stay right in expectation. 1 follows every switch.
    pub offcpu_sample_ratio: u32,
}

impl Default for ProfilingConfig {
    fn default() -> Self {
        ProfilingConfig {
            enabled: true,
            continuous: true,
            hz: 19,
            interval_secs: 15,
            default_hz: 99,
            max_hz: 499,
            max_seconds: 300,
            default_seconds: 30,
            max_concurrent: 4,
            drain_interval_ms: 1000,
            max_stacks_per_profile: 50_000,
            max_workloads_per_interval: 256,
            unwind: UnwindMethod::Dwarf,
            self_profiler: SelfProfiler::Auto,
            max_binaries: 256,
            max_symbols_per_binary: 65_536,
            max_processes: 4096,
            process_retention_secs: 600,
            debug_info: true,
            debug_info_max_binary_mb: crate::symbolize::DEFAULT_DEBUG_INFO_MAX_MB,
            offcpu_sample_ratio: 1,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelfProfiler {
    #[default]
    Auto,
    Sigprof,
}

/// Everything the profiler needs from the agent.
#[derive(Clone)]
pub struct ProfilerContext {
    pub emitter: Emitter,
    pub status: StatusRegistry,
    pub self_metrics: SelfMetrics,
    pub pods: Option<Arc<dyn PodLookup>>,
    /// `/proc` (or `/host/proc` in a container with the host's /proc mounted).
    pub host_proc: PathBuf,
    /// Late-bound services: the profiler looks up a `dyn SampleSink` (the flight
    /// recorder) at run time and feeds it timestamped samples.
    pub services: Services,
    /// Emit continuous profiles into the pipeline (an exporter takes profiles).
    pub emit_profiles: bool,
}

impl std::fmt::Debug for ProfilerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfilerContext")
            .field("host_proc", &self.host_proc)
            .field("pods", &self.pods.is_some())
            .field("emit_profiles", &self.emit_profiles)
            .finish()
    }
}

impl ProfilingConfig {
    /// Records every problem under `prefix` (e.g. `profiling`).
    pub fn validate(&self, prefix: &str, issues: &mut Issues) {
        let k = |s: &str| format!("{prefix}.{s}");
        issues.check(
            (1..=HZ_CEILING).contains(&self.max_hz),
            k("max_hz"),
            format!("must be between 1 and {HZ_CEILING}, got {}", self.max_hz),
        );
        issues.check(
            self.hz >= 1 && self.hz <= self.max_hz.min(HZ_CEILING),
            k("hz"),
            format!(
                "must be between 1 and max_hz ({}), got {}",
                self.max_hz, self.hz
            ),
        );
        issues.check(
            self.default_hz >= 1 && self.default_hz <= self.max_hz.min(HZ_CEILING),
            k("default_hz"),
            format!(
                "must be between 1 and max_hz ({}), got {}",
                self.max_hz, self.default_hz
            ),
        );
        issues.check(
            (1..=86_400).contains(&self.interval_secs),
            k("interval_secs"),
            format!("must be between 1 and 86400, got {}", self.interval_secs),
        );
        issues.check(
            (1..=86_400).contains(&self.max_seconds),
            k("max_seconds"),
            format!("must be between 1 and 86400, got {}", self.max_seconds),
        );
        issues.check(
            self.default_seconds >= 1 && self.default_seconds <= self.max_seconds,
            k("default_seconds"),
            format!(
                "must be between 1 and max_seconds ({}), got {}",
                self.max_seconds, self.default_seconds
            ),
        );
        issues.check(
            (1..=1_000_000).contains(&self.offcpu_sample_ratio),
            k("offcpu_sample_ratio"),
            format!(
                "must be between 1 and 1000000, got {}",
                self.offcpu_sample_ratio
            ),
        );
        issues.check(
            (1..=64).contains(&self.max_concurrent),
            k("max_concurrent"),
            format!("must be between 1 and 64, got {}", self.max_concurrent),
        );
        issues.check(
            (100..=60_000).contains(&self.drain_interval_ms),
            k("drain_interval_ms"),
            format!(
                "must be between 100 and 60000, got {}",
                self.drain_interval_ms
            ),
        );
        issues.check(
            self.drain_interval_ms <= self.interval_secs.saturating_mul(1000),
            k("drain_interval_ms"),
            format!(
                "must not exceed interval_secs ({} s), got {} ms",
                self.interval_secs, self.drain_interval_ms
            ),
        );
        for (name, v, max) in [
            (
                "max_stacks_per_profile",
                self.max_stacks_per_profile,
                10_000_000,
            ),
            (
                "max_workloads_per_interval",
                self.max_workloads_per_interval,
                100_000,
            ),
            ("max_binaries", self.max_binaries, 100_000),
            (
                "max_symbols_per_binary",
                self.max_symbols_per_binary,
                10_000_000,
            ),
            ("max_processes", self.max_processes, 1_000_000),
        ] {
            issues.check(
                (1..=max).contains(&v),
                k(name),
                format!("must be between 1 and {max}, got {v}"),
            );
        }
        issues.check(
            (1..=MAX_DEBUG_INFO_MB).contains(&self.debug_info_max_binary_mb),
            k("debug_info_max_binary_mb"),
            format!(
                "must be between 1 and {MAX_DEBUG_INFO_MB} (MiB), got {}",
                self.debug_info_max_binary_mb
            ),
        );
        issues.check(
            self.process_retention_secs >= 1,
            k("process_retention_secs"),
            "must be at least 1",
        );
    }

    /// Builds the runtime service. Never fails: when eBPF is unavailable the reason is
    /// reported in status and self-profiling falls back to SIGPROF.
    pub fn build(&self, ctx: ProfilerContext) -> Arc<ProfilerService> {
        ProfilerService::new(self.clone(), ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let mut i = Issues::default();
        ProfilingConfig::default().validate("profiling", &mut i);
        assert!(i.is_empty(), "{:?}", i.list);
    }

    #[test]
    fn every_problem_is_reported() {
        let c = ProfilingConfig {
            hz: 0,
            default_hz: 600,
            max_hz: 499,
            interval_secs: 0,
            max_seconds: 0,
            max_concurrent: 0,
            drain_interval_ms: 5,
            max_binaries: 0,
            debug_info_max_binary_mb: 0,
            ..Default::default()
        };
        let mut i = Issues::default();
        c.validate("profiling", &mut i);
        let keys: Vec<_> = i.list.iter().map(|x| x.key.as_str()).collect();
        for k in [
            "profiling.hz",
            "profiling.default_hz",
            "profiling.interval_secs",
            "profiling.max_seconds",
            "profiling.default_seconds",
            "profiling.max_concurrent",
            "profiling.drain_interval_ms",
            "profiling.max_binaries",
            "profiling.debug_info_max_binary_mb",
        ] {
            assert!(keys.contains(&k), "missing {k} in {keys:?}");
        }
    }

    #[test]
    fn toml_rejects_unknown_keys() {
        let ok: ProfilingConfig = toml::from_str("hz = 49\ncontinuous = false").unwrap();
        assert_eq!(ok.hz, 49);
        assert!(!ok.continuous);
        assert_eq!(ok.interval_secs, 15);
        let c: ProfilingConfig = toml::from_str("debug_info_max_binary_mb = 8").unwrap();
        assert_eq!(c.debug_info_max_binary_mb, 8);
        let mut i = Issues::default();
        c.validate("profiling", &mut i);
        assert!(i.is_empty(), "{:?}", i.list);
        let c = ProfilingConfig {
            debug_info_max_binary_mb: MAX_DEBUG_INFO_MB + 1,
            ..Default::default()
        };
        let mut i = Issues::default();
        c.validate("profiling", &mut i);
        assert!(i
            .list
            .iter()
            .any(|x| x.key == "profiling.debug_info_max_binary_mb" && x.reason.contains("65536")));
        let err = toml::from_str::<ProfilingConfig>("hzz = 3").unwrap_err();
        assert!(err.to_string().contains("hzz"));
        let c: ProfilingConfig = toml::from_str("unwind = \"frame_pointers\"").unwrap();
        assert_eq!(c.unwind, UnwindMethod::FramePointers);
        let err = toml::from_str::<ProfilingConfig>("unwind = \"lbr\"").unwrap_err();
        assert!(err.to_string().contains("lbr"));
    }
}
