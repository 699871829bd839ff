//! `softnet`: `node_softnet_{processed,dropped,times_squeezed}_total{cpu}` from
//! `<proc>/1/net/softnet_stat` (host netns). As in node_exporter 1.5, `cpu` is the line
//! index.

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::Buf;
use crate::HostPaths;

/// `[processed, dropped, time_squeezed]` per line. Like procfs, a line with fewer than 9
/// columns or a non-hex value makes the file invalid.
pub fn parse_softnet(text: &str) -> Result<Vec<[u32; 3]>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split_ascii_whitespace().collect();
        if cols.len() < 9 {
            return Err(format!(
                "{} columns were detected, but at least 9 were expected",
                cols.len()
            ));
        }
        let mut v = [0u32; 3];
        for (slot, c) in v.iter_mut().zip(&cols[..3]) {
            *slot = u32::from_str_radix(c, 16).map_err(|e| format!("{c:?}: {e}"))?;
        }
        out.push(v);
    }
    Ok(out)
}

pub(crate) struct SoftnetCollector {
    path: PathBuf,
    buf: Buf,
}

impl SoftnetCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        SoftnetCollector {
            path: paths.proc.join("1/net/softnet_stat"),
            buf: Buf::new(),
        }
    }
}

impl Collector for SoftnetCollector {
    fn name(&self) -> &'static str {
        "softnet"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let rows = self.buf.with_file(&self.path, |t| {
            parse_softnet(t).map_err(|r| CollectError::parse(&self.path, r))
        })?;
        let mut fams = [
            MetricFamily::new(
                "node_softnet_processed_total",
                "Number of processed packets",
                MetricType::Counter,
            ),
            MetricFamily::new(
                "node_softnet_dropped_total",
                "Number of dropped packets",
                MetricType::Counter,
            ),
            MetricFamily::new(
                "node_softnet_times_squeezed_total",
                "Number of times processing packets ran out of quota",
                MetricType::Counter,
            ),
        ];
        for (cpu, row) in rows.iter().enumerate() {
            for (f, v) in fams.iter_mut().zip(row) {
                f.push([("cpu", cpu.to_string())], f64::from(*v));
            }
        }
        Ok(fams.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_rows() {
        let t = "00049279 00000000 00000001 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000\n\
                 000dfb82 00000029 0000000a 00000000 00000000 00000000 00000000 00000000 00000000\n";
        assert_eq!(
            parse_softnet(t).unwrap(),
            vec![[0x49279, 0, 1], [0xdfb82, 0x29, 0xa]]
        );
        assert!(parse_softnet("1 2 3\n").is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = parse_softnet(&s);
        }
    }
}
