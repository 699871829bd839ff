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
    pub unwind_tables_loaded: Counter,
    pub unwind_table_evictions: Counter,
    pub unwind_procs_failed: Counter,
    pub unwind_rows: Gauge,
    pub unwind_processes: Gauge,

    pub filtered: Counter,
    pub offcpu_intervals: Counter,
    pub offcpu_lost: Counter,
    pub offcpu_skipped: Counter,
    pub offcpu_dropped: Counter,
    pub aggregation_dropped: Counter,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_evictions: Counter,
    pub process_evictions: Counter,
    pub profiles_emitted: Counter,
    pub profiles_dropped: Counter,
    pub quality_labels_folded: Counter,
    pub debuginfo_skipped: Counter,
    pub debuginfo_dropped: Counter,
    pub symbolizer_unmaps: Counter,
    quality: std::sync::Arc<Mutex<QualityState>>,
}

/// Per binary: samples, truncated, reached root, and their two gauges.
type Quality = (u64, u64, u64, Gauge, Gauge);

#[derive(Debug, Default)]
struct QualityState {
    per_binary: HashMap<String, Quality>,
    ends: HashMap<u32, Counter>,
    fp_reasons: HashMap<&'static str, Counter>,
}

/// Names of the DWARF walk's end reasons (`UNWIND_END_*`).
pub fn unwind_end_name(end: u32) -> &'static str {
    use nodescope_ebpf::profile as o;
    match end {
        o::UNWIND_END_ROOT => "root",
        o::UNWIND_END_NO_MAPPING => "no_mapping",
        o::UNWIND_END_READ => "read_error",
        o::UNWIND_END_DEPTH => "depth",
        o::UNWIND_END_BAD_FRAME => "bad_frame",
        o::UNWIND_END_NO_PROC => "no_process",
        _ => "other",
    }
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
            offcpu_intervals: m.counter(
                "nodescope_profiler_offcpu_intervals_total",
                "Off-CPU intervals measured (switch-out to switch-in, or to the end of the profile), before rescaling.",
                &[],
            ),
            offcpu_lost: m.counter(
                "nodescope_profiler_offcpu_lost_total",
                "Off-CPU records lost because the BPF ring buffer was full.",
                &[],
            ),
            offcpu_skipped: m.counter(
                "nodescope_profiler_offcpu_skipped_switches_total",
                "Context switches not followed by the off-CPU profiler (1 in offcpu_sample_ratio is followed; the rest are rescaled for).",
                &[],
            ),
            offcpu_dropped: m.counter(
                "nodescope_profiler_offcpu_dropped_total",
                "Off-CPU intervals dropped: task map full or evicted (LRU), pending switch-outs over the bound, or switch-ins without their switch-out.",
                &[],
            ),
            unwind_tables_loaded: m.counter(
                "nodescope_profiler_unwind_tables_loaded_total",
                "DWARF unwind tables loaded into a sampler's BPF row map.",
                &[],
            ),
            unwind_table_evictions: m.counter(
                "nodescope_profiler_unwind_table_evictions_total",
                "Unwind tables evicted (least recently used) because the BPF row map or table map was full; their mappings fall back to frame pointers.",
                &[],
            ),
            unwind_procs_failed: m.counter(
                "nodescope_profiler_unwind_process_errors_total",
                "Processes whose unwind entry could not be written (maps unreadable, process map full); they are unwound with frame pointers.",
                &[],
            ),
            unwind_rows: m.gauge(
                "nodescope_profiler_unwind_rows",
                "Unwind-table rows (8 bytes each) loaded in the continuous sampler's BPF row map.",
                &[],
            ),
            unwind_processes: m.gauge(
                "nodescope_profiler_unwind_processes",
                "Processes with an unwind entry in the continuous sampler.",
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
            debuginfo_dropped: m.counter(
                "nodescope_profiler_debuginfo_dropped_total",
                "Binaries whose DWARF was parsed three times within a minute (it did not fit the symbolizer's file-backed memory bound alongside the other binaries in use, so every pass parsed it again); they are symbolized from symbol tables from then on (names kept, no inlined frames).",
                &[],
            ),
            symbolizer_unmaps: m.counter(
                "nodescope_symbolizer_unmaps_total",
                "Times the blazesym symbolizer was dropped inside a symbolization pass (unmapping the files it parsed) because the agent's file-backed RSS, plus what the next binary is expected to map, exceeded the bound (32 MiB, or 16 MiB above the file-backed RSS after the last drop).",
                &[],
            ),
            quality: Default::default(),
        }
    }

    /// Records `total` user stacks of `binary`, `truncated` of which look truncated, and
    /// updates `nodescope_profiler_truncated_stacks_ratio{binary}` (cumulative ratio).
    /// Counts an executable mapping unwound with frame pointers, by reason.
    pub fn observe_fp_mapping(&self, reason: &'static str) {
        let mut q = self.quality.lock();
        q.fp_reasons
            .entry(reason)
            .or_insert_with(|| {
                self.registry.counter(
                    "nodescope_profiler_unwind_fp_mappings_total",
                    "Executable mappings unwound with frame pointers instead of DWARF tables, by reason (anonymous = JIT or anonymous code, go, no_cfi, corrupt, open, elf, too_high, too_large, table_map_full, no_segment, too_many_mappings).",
                    &[("reason", reason)],
                )
            })
            .inc();
    }

    /// Counts DWARF walks that ended with `end` (`UNWIND_END_*`).
    pub fn observe_unwind_end(&self, end: u32, n: u64) {
        let name = unwind_end_name(end);
        let mut q = self.quality.lock();
        q.ends
            .entry(end.min(7))
            .or_insert_with(|| {
                self.registry.counter(
                    "nodescope_profiler_unwind_ends_total",
                    "Samples whose user stack was walked with DWARF CFI, by how the walk ended (root = a frame with an undefined return address).",
                    &[("end", name)],
                )
            })
            .add(n);
    }

    pub fn observe_unwind(&self, binary: &str, total: u64, truncated: u64, root: u64) {
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
                let r = self.registry.gauge(
                    "nodescope_profiler_root_reached_ratio",
                    "Share of sampled user stacks per binary (of the leaf frame) that reach a process root (_start, clone, start_thread... or a frame with an undefined return address).",
                    &[("binary", key)],
                );
                q.per_binary
                    .entry(key.to_string())
                    .or_insert((0, 0, 0, g, r))
            }
        };
        entry.0 = entry.0.saturating_add(total);
        entry.1 = entry.1.saturating_add(truncated);
        entry.2 = entry.2.saturating_add(root);
        entry.3.set(entry.1 as f64 / entry.0 as f64);
        entry.4.set(entry.2 as f64 / entry.0 as f64);
    }

    /// Current (total, truncated) for a binary label, for tests and status.
    pub fn unwind_counts(&self, binary: &str) -> Option<(u64, u64)> {
        self.quality
            .lock()
            .per_binary
            .get(binary)
            .map(|(t, tr, _, _, _)| (*t, *tr))
    }

    /// `binary=root%/truncated% (samples)` for the binaries with the most samples, for
    /// the status page.
    pub fn quality_summary(&self, max: usize) -> String {
        let q = self.quality.lock();
        let mut v: Vec<(&String, &Quality)> = q.per_binary.iter().collect();
        v.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(b.0)));
        v.iter()
            .take(max)
            .map(|(b, (t, tr, r, _, _))| {
                format!(
                    "{b}: {:.1}% reach root, {:.1}% truncated ({t} samples)",
                    *r as f64 * 100.0 / (*t).max(1) as f64,
                    *tr as f64 * 100.0 / (*t).max(1) as f64
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
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
            p.observe_unwind(&format!("bin{i}"), 4, 1, 2);
        }
        p.observe_unwind("bin0", 4, 3, 4);
        let sum = p.quality_summary(2);
        assert!(
            sum.starts_with(
                "other: 50.0% reach root, 25.0% truncated (44 samples); \
                 bin0: 75.0% reach root, 50.0% truncated (8 samples)"
            ),
            "{sum}"
        );
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
