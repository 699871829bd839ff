//! The profiler's self metrics (`nodescope_profiler_*`, `nodescope_symbolizer_*`).

use std::collections::HashMap;

use nodescope_model::selfmetrics::{Counter, Gauge, SelfMetrics};
use parking_lot::Mutex;

/// Upper bound on distinct `binary` label values of the unwind-quality gauge; further
/// binaries are folded into `binary="other"` (and counted).
pub const MAX_QUALITY_BINARIES: usize = 64;

#[derive(Clone, Debug)]
pub struct ProfilerMetrics {
    registry: SelfMetrics,
    pub samples: Counter,
    pub lost_samples: Counter,
    pub stack_errors: Counter,
    pub bad_records: Counter,
    pub sink_samples: Counter,
    pub filtered: Counter,
    pub aggregation_dropped: Counter,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_evictions: Counter,
    pub process_evictions: Counter,
    pub profiles_emitted: Counter,
    pub profiles_dropped: Counter,
    pub quality_labels_folded: Counter,
    pub debuginfo_skipped: Counter,
    pub symbolizer_unmaps: Counter,
    quality: std::sync::Arc<Mutex<QualityState>>,
}

#[derive(Debug, Default)]
struct QualityState {
    per_binary: HashMap<String, (u64, u64, Gauge)>,
}

impl ProfilerMetrics {
    pub fn new(m: &SelfMetrics) -> Self {
        ProfilerMetrics {
            registry: m.clone(),
            samples: m.counter(
                "nodescope_profiler_samples_total",
                "CPU samples collected by the profiler (eBPF or SIGPROF fallback).",
                &[],
            ),
            lost_samples: m.counter(
                "nodescope_profiler_lost_samples_total",
                "CPU samples lost because the BPF ring buffer of sample records was full.",
                &[],
            ),
            stack_errors: m.counter(
                "nodescope_profiler_stack_errors_total",
                "Kernel or user stack walks that failed (other than \"no such stack\").",
                &[],
            ),
            bad_records: m.counter(
                "nodescope_profiler_bad_records_total",
                "Ring-buffer sample records that could not be decoded (dropped).",
                &[],
            ),
            sink_samples: m.counter(
                "nodescope_profiler_sink_samples_total",
                "Timestamped samples offered to the flight recorder (SampleSink).",
                &[],
            ),
            filtered: m.counter(
                "nodescope_profiler_filtered_total",
                "Perf events discarded in BPF by the pid/cgroup filter before any stack walk.",
                &[],
            ),
            aggregation_dropped: m.counter(
                "nodescope_profiler_aggregation_dropped_samples_total",
                "Samples dropped in user space because the per-profile distinct-stack bound was reached.",
                &[],
            ),
            cache_hits: m.counter(
                "nodescope_symbolizer_cache_hits_total",
                "User-space frame lookups answered from the per-binary symbol cache.",
                &[],
            ),
            cache_misses: m.counter(
                "nodescope_symbolizer_cache_misses_total",
                "User-space frame lookups that had to read the ELF/DWARF symbols.",
                &[],
            ),
            cache_evictions: m.counter(
                "nodescope_symbolizer_cache_evictions_total",
                "Binaries or symbol-cache generations evicted to keep the symbolizer bounded.",
                &[],
            ),
            process_evictions: m.counter(
                "nodescope_symbolizer_process_evictions_total",
                "Process memory-map snapshots evicted (bound reached or retention expired).",
                &[],
            ),
            profiles_emitted: m.counter(
                "nodescope_profiler_profiles_emitted_total",
                "Continuous profiles handed to the pipeline.",
                &[],
            ),
            profiles_dropped: m.counter(
                "nodescope_profiler_profiles_dropped_total",
                "Continuous profiles refused by the full pipeline intake or over the per-interval workload bound.",
                &[],
            ),
            quality_labels_folded: m.counter(
                "nodescope_profiler_quality_binaries_folded_total",
                "Unwind-quality observations folded into binary=\"other\" because the label bound was reached.",
                &[],
            ),
            debuginfo_skipped: m.counter(
                "nodescope_profiler_debuginfo_skipped_total",
                "Binaries opened for symbolization whose DWARF (with their separate debug file) exceeded profiling.debug_info_max_binary_mb; they are symbolized from ELF symbol tables only (names kept, no inlined frames).",
                &[],
            ),
            symbolizer_unmaps: m.counter(
                "nodescope_symbolizer_unmaps_total",
                "Times the blazesym symbolizer was dropped inside a symbolization pass (unmapping the files it parsed) because the agent's file-backed RSS, plus what the next binary is expected to map, exceeded 48 MiB.",
                &[],
            ),
            quality: Default::default(),
        }
    }

    /// Records `total` user stacks of `binary`, `truncated` of which look truncated, and
    /// updates `nodescope_profiler_truncated_stacks_ratio{binary}` (cumulative ratio).
    pub fn observe_unwind(&self, binary: &str, total: u64, truncated: u64) {
        if total == 0 {
            return;
        }
        let mut q = self.quality.lock();
        // One slot stays reserved for "other".
        let named = q.per_binary.keys().filter(|k| *k != "other").count();
        let key = if q.per_binary.contains_key(binary) || named < MAX_QUALITY_BINARIES - 1 {
            binary
        } else {
            self.quality_labels_folded.add(total);
            "other"
        };
        let entry = match q.per_binary.get_mut(key) {
            Some(e) => e,
            None => {
                let g = self.registry.gauge(
                    "nodescope_profiler_truncated_stacks_ratio",
                    "Share of sampled user stacks per binary that look truncated (depth <= 2 without reaching a known entry point): a sign of missing frame pointers.",
                    &[("binary", key)],
                );
                q.per_binary.entry(key.to_string()).or_insert((0, 0, g))
            }
        };
        entry.0 = entry.0.saturating_add(total);
        entry.1 = entry.1.saturating_add(truncated);
        entry.2.set(entry.1 as f64 / entry.0 as f64);
    }

    /// Current (total, truncated) for a binary label, for tests and status.
    pub fn unwind_counts(&self, binary: &str) -> Option<(u64, u64)> {
        self.quality
            .lock()
            .per_binary
            .get(binary)
            .map(|(t, tr, _)| (*t, *tr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodescope_model::Value;

    #[test]
    fn quality_gauge_is_bounded() {
        let m = SelfMetrics::new();
        let p = ProfilerMetrics::new(&m);
        for i in 0..(MAX_QUALITY_BINARIES + 10) {
            p.observe_unwind(&format!("bin{i}"), 4, 1);
        }
        p.observe_unwind("bin0", 4, 3);
        assert_eq!(p.unwind_counts("bin0"), Some((8, 4)));
        let (other_total, _) = p.unwind_counts("other").expect("other slot");
        assert_eq!(other_total, 11 * 4);
        let fams = m.collect();
        let f = fams
            .iter()
            .find(|f| f.name == "nodescope_profiler_truncated_stacks_ratio")
            .unwrap();
        assert!(f.points.len() <= MAX_QUALITY_BINARIES);
        let p0 = f
            .points
            .iter()
            .find(|p| p.labels.iter().any(|(_, v)| v == "bin0"))
            .unwrap();
        assert_eq!(p0.value, Value::Number(0.5));
        assert_eq!(p.quality_labels_folded.get(), 11 * 4);
    }
}
