//! `conntrack`: node_nf_conntrack_entries, _entries_limit and the node_nf_conntrack_stat_*
//! counters node_exporter 1.5 exports. Missing conntrack (module not loaded) makes the
//! collector report `Unavailable`.
//!
//! The per-CPU statistics and the entry count come from `<proc>/1/net/stat/nf_conntrack`
//! (the host's network namespace, hex, one row per CPU, columns named by the header so a
//! kernel that adds or removes columns is handled); the limit, and the count when that file
//! is absent, from `<proc>/sys/net/netfilter/nf_conntrack_{count,max}`.

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::{num, read_small, Buf};
use crate::HostPaths;

/// Column name -> value: `entries` as found in the first row (it is the same in every
/// row), every other column summed over the CPU rows. Rows with a bad hex field are
/// skipped.
pub fn parse_conntrack_stat(text: &str) -> Vec<(String, u64)> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let names: Vec<&str> = header.split_ascii_whitespace().collect();
    let mut sums = vec![0u64; names.len()];
    let mut rows = 0usize;
    'rows: for line in lines {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        if fields.len() != names.len() {
            continue;
        }
        let mut vals = Vec::with_capacity(fields.len());
        for f in &fields {
            match u64::from_str_radix(f, 16) {
                Ok(v) => vals.push(v),
                Err(_) => continue 'rows,
            }
        }
        for (i, v) in vals.into_iter().enumerate() {
            if names[i] == "entries" {
                if rows == 0 {
                    sums[i] = v;
                }
            } else {
                sums[i] = sums[i].saturating_add(v);
            }
        }
        rows += 1;
    }
    if rows == 0 {
        return Vec::new();
    }
    names.into_iter().map(str::to_string).zip(sums).collect()
}

const STATS: [(&str, &str); 8] = [
    ("found", "Number of searched entries which were successful."),
    ("invalid", "Number of packets seen which can not be tracked."),
    ("ignore", "Number of packets seen which are already connected to a conntrack entry."),
    ("insert", "Number of entries inserted into the list."),
    ("insert_failed", "Number of entries for which list insertion was attempted but failed."),
    ("drop", "Number of packets dropped due to conntrack failure."),
    ("early_drop", "Number of dropped conntrack entries to make room for new ones, if maximum table size was reached."),
    ("search_restart", "Number of conntrack table lookups which had to be restarted due to hashtable resizes."),
];

pub(crate) struct ConntrackCollector {
    count: PathBuf,
    max: PathBuf,
    stat: PathBuf,
    buf: Buf,
}

impl ConntrackCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        ConntrackCollector {
            count: paths.proc.join("sys/net/netfilter/nf_conntrack_count"),
            max: paths.proc.join("sys/net/netfilter/nf_conntrack_max"),
            stat: paths.proc.join("1/net/stat/nf_conntrack"),
            buf: Buf::new(),
        }
    }

    fn read_num(path: &PathBuf) -> Result<f64, CollectError> {
        let t = read_small(path)?;
        num(t.trim()).ok_or_else(|| CollectError::parse(path, "expected a number"))
    }
}

impl Collector for ConntrackCollector {
    fn name(&self) -> &'static str {
        "conntrack"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let limit = Self::read_num(&self.max)?;
        let stats = match self
            .buf
            .with_file(&self.stat, |t| Ok(parse_conntrack_stat(t)))
        {
            Ok(s) => s,
            Err(e) if e.is_unavailable() => Vec::new(),
            Err(e) => return Err(e),
        };
        let entries = match stats.iter().find(|(k, _)| k == "entries") {
            Some((_, v)) => *v as f64,
            None => Self::read_num(&self.count)?,
        };
        let mut out = vec![
            MetricFamily::single(
                "node_nf_conntrack_entries",
                "Number of currently allocated flow entries for connection tracking.",
                MetricType::Gauge,
                entries,
            ),
            MetricFamily::single(
                "node_nf_conntrack_entries_limit",
                "Maximum size of connection tracking table.",
                MetricType::Gauge,
                limit,
            ),
        ];
        for (k, help) in STATS {
            if let Some((_, v)) = stats.iter().find(|(n, _)| n == k) {
                out.push(MetricFamily::single(
                    format!("node_nf_conntrack_stat_{k}"),
                    help,
                    MetricType::Gauge,
                    *v as f64,
                ));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sums_cpus_by_header_name() {
        let t = "entries  clashres found drop\n0000000a  00000001 00000002 00000010\n0000000a  00000000 00000003 00000001\n";
        let s = parse_conntrack_stat(t);
        let get = |k: &str| s.iter().find(|(n, _)| n == k).unwrap().1;
        assert_eq!(get("entries"), 10);
        assert_eq!(get("found"), 5);
        assert_eq!(get("drop"), 17);
        let real = parse_conntrack_stat(include_str!("../../tests/fixtures/nf_conntrack_stat"));
        for k in [
            "entries",
            "found",
            "invalid",
            "ignore",
            "insert",
            "insert_failed",
            "drop",
            "early_drop",
            "search_restart",
        ] {
            assert!(real.iter().any(|(n, _)| n == k), "{k}");
        }
    }

    #[test]
    fn bad_rows_are_skipped() {
        assert!(parse_conntrack_stat("entries drop\nzz 1\n").is_empty());
        assert!(parse_conntrack_stat("").is_empty());
        let s = parse_conntrack_stat("entries drop\n1 2 3\n1 2\n");
        assert_eq!(s, vec![("entries".to_string(), 1), ("drop".to_string(), 2)]);
    }

    #[test]
    fn missing_conntrack_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let c = ConntrackCollector::new(&HostPaths::from_root(dir.path()));
        assert!(c.collect().unwrap_err().is_unavailable());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = parse_conntrack_stat(&s);
        }

        #[test]
        fn hex_shaped_garbage_never_panics(lines in proptest::collection::vec("([0-9a-fA-Fx]{0,17} ?){0,5}", 0..8)) {
            let _ = parse_conntrack_stat(&format!("entries a b c d\n{}", lines.join("\n")));
        }
    }
}
