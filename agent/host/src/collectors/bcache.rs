//! `bcache`: `<sys>/fs/bcache/<uuid>/` statistics (procfs' bcache package), as
//! node_exporter 1.5 exports them: cache-set gauges `{uuid}`, per backing device
//! `{uuid,backing_device}` and per cache device `{uuid,cache_device}`; priority stats only
//! with `bcache.priority_stats` (`--collector.bcache.priorityStats`).

use std::path::{Path, PathBuf};

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::{dir_names, glob_digit};
use crate::HostPaths;

/// procfs' `parsePseudoFloat`: `"1.5"` → 1 + 5/10.24 (bcache prints binary fractions).
fn pseudo_float(s: &str) -> Option<f64> {
    let parts: Vec<&str> = s.split('.').collect();
    let int: f64 = parts[0].parse().ok()?;
    if parts.len() == 1 {
        return Some(int);
    }
    let frac: f64 = parts[1].parse().ok()?;
    Some(int + frac / 10.24)
}

/// procfs' `dehumanize`: `"1.2M"` → bytes; an unknown suffix multiplies by 0, as there.
pub fn dehumanize(s: &str) -> Option<u64> {
    let last = *s.as_bytes().last()?;
    if last > b'9' {
        let mul: f64 = match last {
            b'k' => 1024.0,
            b'M' => 1024f64.powi(2),
            b'G' => 1024f64.powi(3),
            b'T' => 1024f64.powi(4),
            b'P' => 1024f64.powi(5),
            b'E' => 1024f64.powi(6),
            b'Z' => 1024f64.powi(7),
            b'Y' => 1024f64.powi(8),
            _ => 0.0,
        };
        let mant = pseudo_float(s.get(..s.len() - 1)?)?;
        Some((mant * mul) as u64)
    } else {
        let v: f64 = s.parse().ok()?;
        Some(v as u64)
    }
}

fn dehumanize_signed(s: &str) -> Option<i64> {
    let v = dehumanize(s.strip_prefix('-').unwrap_or(s))? as i64;
    Some(if s.starts_with('-') {
        v.wrapping_neg()
    } else {
        v
    })
}

struct P {
    err: Option<CollectError>,
}

impl P {
    fn value(&mut self, p: &Path) -> u64 {
        if self.err.is_some() {
            return 0;
        }
        match std::fs::read(p) {
            Ok(mut b) => {
                b.pop();
                match dehumanize(&String::from_utf8_lossy(&b)) {
                    Some(v) => v,
                    None => {
                        self.err = Some(CollectError::parse(p, "not a bcache value"));
                        0
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                self.err = Some(CollectError::io(p, e));
                0
            }
        }
    }

    fn lines(&mut self, p: &Path) -> Vec<String> {
        if self.err.is_some() {
            return Vec::new();
        }
        match std::fs::read_to_string(p) {
            Ok(t) => t.lines().map(str::to_string).collect(),
            Err(e) => {
                self.err = Some(CollectError::io(p, e));
                Vec::new()
            }
        }
    }
}

fn last_field(line: &str) -> &str {
    line.split_ascii_whitespace().last().unwrap_or("")
}

/// `(rate, target, proportional, integral, change)` of `writeback_rate_debug`.
pub fn parse_writeback_rate_debug(lines: &[String]) -> Option<(u64, u64, i64, i64, i64)> {
    let (mut rate, mut target, mut prop, mut int, mut change) = (0, 0, 0, 0, 0);
    for l in lines {
        let v = last_field(l);
        if l.starts_with("rate:") {
            rate = dehumanize(v.trim_end_matches("/sec"))?;
        } else if l.starts_with("dirty:") {
            dehumanize(v)?;
        } else if l.starts_with("target:") {
            target = dehumanize(v)?;
        } else if l.starts_with("proportional:") {
            prop = dehumanize_signed(v)?;
        } else if l.starts_with("integral:") {
            int = dehumanize_signed(v)?;
        } else if l.starts_with("change:") {
            change = dehumanize_signed(v.trim_end_matches("/sec"))?;
        } else if l.starts_with("next io:") {
            v.trim_end_matches("ms").parse::<i64>().ok()?;
        }
    }
    Some((rate, target, prop, int, change))
}

const PERIOD: &[(&str, &str, &str)] = &[
    (
        "bypassed",
        "bypassed_bytes_total",
        "Amount of IO (both reads and writes) that has bypassed the cache.",
    ),
    (
        "cache_hits",
        "cache_hits_total",
        "Hits counted per individual IO as bcache sees them.",
    ),
    (
        "cache_misses",
        "cache_misses_total",
        "Misses counted per individual IO as bcache sees them.",
    ),
    (
        "cache_bypass_hits",
        "cache_bypass_hits_total",
        "Hits for IO intended to skip the cache.",
    ),
    (
        "cache_bypass_misses",
        "cache_bypass_misses_total",
        "Misses for IO intended to skip the cache.",
    ),
    (
        "cache_miss_collisions",
        "cache_miss_collisions_total",
        "Instances where data insertion from cache miss raced with write (data already present).",
    ),
    (
        "cache_readaheads",
        "cache_readaheads_total",
        "Count of times readahead occurred.",
    ),
];

#[derive(Default)]
struct Out(Vec<MetricFamily>);

impl Out {
    fn push(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        labels: Vec<(&'static str, String)>,
        v: f64,
    ) {
        let name = format!("node_bcache_{name}");
        match self.0.iter_mut().find(|f| f.name == name) {
            Some(f) => {
                f.push(labels, v);
            }
            None => {
                let mut f = MetricFamily::new(name, help.to_string(), kind);
                f.push(labels, v);
                self.0.push(f);
            }
        }
    }
}

pub(crate) struct BcacheCollector {
    dir: PathBuf,
    priority_stats: bool,
}

impl BcacheCollector {
    pub(crate) fn new(paths: &HostPaths, priority_stats: bool) -> Self {
        BcacheCollector {
            dir: paths.sys.join("fs/bcache"),
            priority_stats,
        }
    }
}

impl Collector for BcacheCollector {
    fn name(&self) -> &'static str {
        "bcache"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let g = MetricType::Gauge;
        let c = MetricType::Counter;
        let mut out = Out::default();
        for set in dir_names(&self.dir).unwrap_or_default() {
            if !set.contains('-') {
                continue;
            }
            let d = self.dir.join(&set);
            let mut p = P { err: None };
            let top = [
                ("average_key_size", "average_key_size_sectors", "Average data per key in the btree (sectors).", 1.0),
                ("btree_cache_size", "btree_cache_size_bytes", "Amount of memory currently used by the btree cache.", 1.0),
                ("cache_available_percent", "cache_available_percent", "Percentage of cache device without dirty data, usable for writeback (may contain clean cached data).", 1.0),
                ("congested", "congested", "Congestion.", 1.0),
                ("root_usage_percent", "root_usage_percent", "Percentage of the root btree node in use (tree depth increases if too high).", 1.0),
                ("tree_depth", "tree_depth", "Depth of the btree.", 1.0),
            ];
            let top_v: Vec<u64> = top.iter().map(|(f, ..)| p.value(&d.join(f))).collect();
            let int = d.join("internal");
            let aje = p.value(&int.join("active_journal_entries"));
            let nodes = p.value(&int.join("btree_nodes"));
            let read_avg = p.value(&int.join("btree_read_average_duration_us"));
            let races = p.value(&int.join("cache_read_races"));
            for sub in ["stats_five_minute", "stats_total"] {
                for (f, ..) in PERIOD {
                    p.value(&d.join(sub).join(f));
                }
            }
            if let Some(e) = p.err.take() {
                return Err(e);
            }
            let uuid = || vec![("uuid", set.clone())];
            for ((_, n, h, _), v) in top.iter().zip(top_v) {
                out.push(n, h, g, uuid(), v as f64);
            }
            out.push(
                "active_journal_entries",
                "Number of journal entries that are newer than the index.",
                g,
                uuid(),
                aje as f64,
            );
            out.push(
                "btree_nodes",
                "Total nodes in the btree.",
                g,
                uuid(),
                nodes as f64,
            );
            // node_exporter multiplies the microsecond value by 1e-9 (kept for parity).
            out.push(
                "btree_read_average_duration_seconds",
                "Average btree read duration.",
                g,
                uuid(),
                read_avg as f64 * 1e-9,
            );
            out.push("cache_read_races_total", "Counts instances where while data was being read from the cache, the bucket was reused and invalidated - i.e. where the pointer was stale after the read completed.", c, uuid(), races as f64);
            for (bdev_dir, _) in glob_digit(&d, "bdev") {
                let name = bdev_dir
                    .file_name()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default();
                let dirty = p.value(&bdev_dir.join("dirty_data"));
                let wrd_lines = p.lines(&bdev_dir.join("writeback_rate_debug"));
                if let Some(e) = p.err.take() {
                    return Err(e);
                }
                let (rate, target, prop, integ, change) = parse_writeback_rate_debug(&wrd_lines)
                    .ok_or_else(|| {
                        CollectError::parse(
                            bdev_dir.join("writeback_rate_debug"),
                            "malformed value",
                        )
                    })?;
                for (f, ..) in PERIOD {
                    p.value(&bdev_dir.join("stats_five_minute").join(f));
                }
                let totals: Vec<u64> = PERIOD
                    .iter()
                    .map(|(f, ..)| p.value(&bdev_dir.join("stats_total").join(f)))
                    .collect();
                if let Some(e) = p.err.take() {
                    return Err(e);
                }
                let l = || vec![("uuid", set.clone()), ("backing_device", name.clone())];
                out.push(
                    "dirty_data_bytes",
                    "Amount of dirty data for this backing device in the cache.",
                    g,
                    l(),
                    dirty as f64,
                );
                out.push(
                    "dirty_target_bytes",
                    "Current dirty data target threshold for this backing device in bytes.",
                    g,
                    l(),
                    target as f64,
                );
                out.push(
                    "writeback_rate",
                    "Current writeback rate for this backing device in bytes.",
                    g,
                    l(),
                    rate as f64,
                );
                out.push(
                    "writeback_rate_proportional_term",
                    "Current result of proportional controller, part of writeback rate",
                    g,
                    l(),
                    prop as f64,
                );
                out.push(
                    "writeback_rate_integral_term",
                    "Current result of integral controller, part of writeback rate",
                    g,
                    l(),
                    integ as f64,
                );
                out.push(
                    "writeback_change",
                    "Last writeback rate change step for this backing device.",
                    g,
                    l(),
                    change as f64,
                );
                for ((_, n, h), v) in PERIOD.iter().zip(totals) {
                    out.push(n, h, c, l(), v as f64);
                }
            }
            for (cache_dir, _) in glob_digit(&d, "cache") {
                let name = cache_dir
                    .file_name()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default();
                let io_errors = p.value(&cache_dir.join("io_errors"));
                let meta = p.value(&cache_dir.join("metadata_written"));
                let written = p.value(&cache_dir.join("written"));
                let mut prio = (0u64, 0u64);
                if self.priority_stats {
                    for line in p.lines(&cache_dir.join("priority_stats")) {
                        let v = last_field(&line).trim_end_matches('%');
                        if line.starts_with("Unused:") {
                            prio.0 = v.parse().map_err(|_| {
                                CollectError::parse(cache_dir.join("priority_stats"), "bad Unused")
                            })?;
                        } else if line.starts_with("Metadata:") {
                            prio.1 = v.parse().map_err(|_| {
                                CollectError::parse(
                                    cache_dir.join("priority_stats"),
                                    "bad Metadata",
                                )
                            })?;
                        }
                    }
                }
                if let Some(e) = p.err.take() {
                    return Err(e);
                }
                let l = || vec![("uuid", set.clone()), ("cache_device", name.clone())];
                out.push(
                    "io_errors",
                    "Number of errors that have occurred, decayed by io_error_halflife.",
                    g,
                    l(),
                    io_errors as f64,
                );
                out.push(
                    "metadata_written_bytes_total",
                    "Sum of all non data writes (btree writes and all other metadata).",
                    c,
                    l(),
                    meta as f64,
                );
                out.push(
                    "written_bytes_total",
                    "Sum of all data that has been written to the cache.",
                    c,
                    l(),
                    written as f64,
                );
                if self.priority_stats {
                    out.push(
                        "priority_stats_unused_percent",
                        "The percentage of the cache that doesn't contain any data.",
                        g,
                        l(),
                        prio.0 as f64,
                    );
                    out.push(
                        "priority_stats_metadata_percent",
                        "Bcache's metadata overhead.",
                        g,
                        l(),
                        prio.1 as f64,
                    );
                }
            }
        }
        Ok(out.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dehumanizes_like_procfs() {
        assert_eq!(dehumanize("542k"), Some(555008));
        assert_eq!(
            dehumanize("1.5M"),
            Some(((1.0 + 5.0 / 10.24) * 1048576.0) as u64)
        );
        assert_eq!(dehumanize("12"), Some(12));
        assert_eq!(dehumanize(""), None);
        assert_eq!(dehumanize("3x"), Some(0));
        assert_eq!(dehumanize_signed("-2k"), Some(-2048));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = dehumanize(&s);
            let _ = dehumanize_signed(&s);
            let _ = parse_writeback_rate_debug(std::slice::from_ref(&s));
        }
    }
}
