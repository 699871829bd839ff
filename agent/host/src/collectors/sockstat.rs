//! `sockstat`: `<proc>/1/net/sockstat` and `sockstat6` (the host's network namespace) as
//! node_exporter names them: `node_sockstat_sockets_used`, `node_sockstat_<PROTO>_<key>`
//! for the keys `inuse orphan tw alloc mem memory`, plus `<PROTO>_mem_bytes` (pages times
//! the page size). Parsed directly; procfs-core has no sockstat parser.

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::{is_name_part, Buf};
use crate::HostPaths;

const KEYS: [&str; 6] = ["inuse", "orphan", "tw", "alloc", "mem", "memory"];

/// `(protocol, key, value)` triples; `sockets: used N` is returned as `("sockets", "used",
/// N)`. Unknown keys and malformed pairs are skipped.
pub fn parse_sockstat(text: &str) -> Vec<(&str, &str, u64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((proto, rest)) = line.split_once(':') else {
            continue;
        };
        if !is_name_part(proto) {
            continue;
        }
        let mut it = rest.split_ascii_whitespace();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            let Ok(v) = v.parse::<u64>() else {
                continue;
            };
            if (proto == "sockets" && k == "used") || KEYS.contains(&k) {
                out.push((proto, k, v));
            }
        }
    }
    out
}

pub(crate) struct SockstatCollector {
    v4: PathBuf,
    v6: PathBuf,
    buf: Buf,
    page_size: f64,
}

impl SockstatCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        SockstatCollector {
            v4: paths.proc.join("1/net/sockstat"),
            v6: paths.proc.join("1/net/sockstat6"),
            buf: Buf::new(),
            page_size: rustix::param::page_size() as f64,
        }
    }

    fn families(&self, text: &str, out: &mut Vec<MetricFamily>) {
        for (proto, key, v) in parse_sockstat(text) {
            if proto == "sockets" {
                out.push(MetricFamily::single(
                    "node_sockstat_sockets_used",
                    "Number of IPv4 sockets in use.",
                    MetricType::Gauge,
                    v as f64,
                ));
                continue;
            }
            out.push(MetricFamily::single(
                format!("node_sockstat_{proto}_{key}"),
                format!("Number of {proto} sockets in state {key}."),
                MetricType::Gauge,
                v as f64,
            ));
            if key == "mem" {
                out.push(MetricFamily::single(
                    format!("node_sockstat_{proto}_mem_bytes"),
                    format!("Number of {proto} sockets in state mem_bytes."),
                    MetricType::Gauge,
                    v as f64 * self.page_size,
                ));
            }
        }
    }
}

impl Collector for SockstatCollector {
    fn name(&self) -> &'static str {
        "sockstat"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let mut out = Vec::with_capacity(24);
        self.buf.with_file(&self.v4, |t| {
            self.families(t, &mut out);
            Ok(())
        })?;
        match self.buf.with_file(&self.v6, |t| {
            self.families(t, &mut out);
            Ok(())
        }) {
            Ok(()) => {}
            Err(e) if e.is_unavailable() => {}
            Err(e) => return Err(e),
        }
        let mut seen = std::collections::HashSet::with_capacity(out.len());
        out.retain(|f| seen.insert(f.name.clone()));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_real_files() {
        let v4 = parse_sockstat(include_str!("../../tests/fixtures/proc/1/net/sockstat"));
        assert!(v4.iter().any(|t| t.0 == "sockets" && t.1 == "used"));
        assert!(v4.iter().any(|t| t.0 == "TCP" && t.1 == "mem"));
        assert!(v4.iter().any(|t| t.0 == "FRAG" && t.1 == "memory"));
        let v6 = parse_sockstat(include_str!("../../tests/fixtures/proc/1/net/sockstat6"));
        assert!(v6.iter().any(|t| t.0 == "TCP6" && t.1 == "inuse"));
    }

    #[test]
    fn skips_unknown_and_bad_pairs() {
        let got = parse_sockstat(
            "TCP: inuse 2 orphan x tw 1 weird 9 mem\nnocolon 1\nbad-proto: inuse 1\n",
        );
        assert_eq!(got, vec![("TCP", "inuse", 2), ("TCP", "tw", 1)]);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = parse_sockstat(&s);
        }

        #[test]
        fn line_shaped_garbage_never_panics(lines in proptest::collection::vec("[A-Z0-9]{0,6}:( [a-z]{0,6} [0-9x]{0,4}){0,6}", 0..12)) {
            let _ = parse_sockstat(&lines.join("\n"));
        }
    }
}
