//! `meminfo`: every line of `<proc>/meminfo` as `node_memory_<Key>[_bytes]`, named exactly
//! as node_exporter names them (`Active(anon)` becomes `Active_anon`; a `kB` unit is
//! multiplied by 1024 and adds `_bytes`). Parsed directly because node_exporter exports the
//! file generically; procfs-core's `Meminfo` is a fixed struct that would drop keys a newer
//! kernel adds.

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::{is_name_part, num, Buf};
use crate::HostPaths;

#[derive(Clone, Debug, PartialEq)]
pub struct MeminfoField {
    /// The node_exporter key, e.g. `Active_anon_bytes`, `HugePages_Total`.
    pub key: String,
    pub value: f64,
}

/// node_exporter's `\((.*)\)` -> `_$1` rewrite, without a regex.
fn sanitize(key: &str) -> String {
    if let (Some(open), Some(close)) = (key.find('('), key.rfind(')')) {
        if open < close {
            let mut s = String::with_capacity(key.len());
            s.push_str(&key[..open]);
            s.push('_');
            s.push_str(&key[open + 1..close]);
            s.push_str(&key[close + 1..]);
            return s;
        }
    }
    key.to_string()
}

/// Parses `/proc/meminfo`. Lines that are not `Key: value [kB]` or whose key would not make
/// a valid metric name are skipped.
pub fn parse_meminfo(text: &str) -> Vec<MeminfoField> {
    let mut out = Vec::with_capacity(64);
    for line in text.lines() {
        let mut parts = line.split_ascii_whitespace();
        let (Some(k), Some(v)) = (parts.next(), parts.next()) else {
            continue;
        };
        let unit = parts.next();
        if parts.next().is_some() {
            continue;
        }
        let Some(k) = k.strip_suffix(':') else {
            continue;
        };
        let Some(mut value) = num(v) else {
            continue;
        };
        let mut key = sanitize(k);
        if unit.is_some() {
            value *= 1024.0;
            key.push_str("_bytes");
        }
        if !is_name_part(&key) {
            continue;
        }
        out.push(MeminfoField { key, value });
    }
    out
}

pub(crate) struct MeminfoCollector {
    path: PathBuf,
    buf: Buf,
}

impl MeminfoCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        MeminfoCollector {
            path: paths.proc.join("meminfo"),
            buf: Buf::new(),
        }
    }
}

impl Collector for MeminfoCollector {
    fn name(&self) -> &'static str {
        "meminfo"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let fields = self.buf.with_file(&self.path, |t| Ok(parse_meminfo(t)))?;
        if fields.is_empty() {
            return Err(CollectError::parse(&self.path, "no `Key: value` lines"));
        }
        let mut seen = std::collections::HashSet::with_capacity(fields.len());
        let mut out = Vec::with_capacity(fields.len());
        for f in fields {
            if !seen.insert(f.key.clone()) {
                continue;
            }
            out.push(MetricFamily::single(
                format!("node_memory_{}", f.key),
                format!("Memory information field {}.", f.key),
                MetricType::Gauge,
                f.value,
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FIXTURE: &str = include_str!("../../tests/fixtures/proc/meminfo");

    #[test]
    fn names_like_node_exporter() {
        let f = parse_meminfo(FIXTURE);
        let get = |k: &str| f.iter().find(|x| x.key == k).map(|x| x.value);
        assert!(get("MemTotal_bytes").unwrap() > 0.0);
        assert!(get("Active_anon_bytes").is_some());
        assert!(get("Inactive_file_bytes").is_some());
        assert!(get("HugePages_Total").is_some());
        assert!(get("Hugepagesize_bytes").is_some());
        let memtotal_kb: f64 = FIXTURE
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(get("MemTotal_bytes").unwrap(), memtotal_kb * 1024.0);
    }

    #[test]
    fn skips_bad_lines() {
        let f = parse_meminfo(
            "MemTotal: 10 kB\nBad line here now\nNoColon 5\nX(y: 1\nWeird-Key: 3\n\nNr: abc kB\n",
        );
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].key, "MemTotal_bytes");
        assert_eq!(f[0].value, 10240.0);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            for f in parse_meminfo(&s) {
                prop_assert!(is_name_part(&f.key));
            }
        }

        #[test]
        fn truncated_never_panics(cut in 0usize..2000) {
            let cut = cut.min(FIXTURE.len());
            if FIXTURE.is_char_boundary(cut) {
                let _ = parse_meminfo(&FIXTURE[..cut]);
            }
        }

        #[test]
        fn line_shaped_garbage_never_panics(lines in proptest::collection::vec("[A-Za-z()_ ]{0,12}:? {0,3}[0-9.a-z-]{0,8}( kB)?", 0..30)) {
            let _ = parse_meminfo(&lines.join("\n"));
        }
    }
}
