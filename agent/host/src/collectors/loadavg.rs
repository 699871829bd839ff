//! `loadavg`: node_load1, node_load5, node_load15 from `<proc>/loadavg`.
//!
//! Parsed directly: procfs-core's `LoadAverage` stores the averages as `f32`, which would
//! print `0.41` as `0.4099999964237213`; node_exporter parses them as float64.

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::{num, Buf};
use crate::HostPaths;

/// The 1, 5 and 15 minute load averages, or `None` when the first three fields are not
/// numbers.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut it = text.split_ascii_whitespace();
    let a = num(it.next()?)?;
    let b = num(it.next()?)?;
    let c = num(it.next()?)?;
    Some([a, b, c])
}

pub(crate) struct LoadavgCollector {
    path: PathBuf,
    buf: Buf,
}

impl LoadavgCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        LoadavgCollector {
            path: paths.proc.join("loadavg"),
            buf: Buf::new(),
        }
    }
}

impl Collector for LoadavgCollector {
    fn name(&self) -> &'static str {
        "loadavg"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let [a, b, c] = self.buf.with_file(&self.path, |t| {
            parse_loadavg(t)
                .ok_or_else(|| CollectError::parse(&self.path, "expected three load averages"))
        })?;
        Ok(vec![
            MetricFamily::single("node_load1", "1m load average.", MetricType::Gauge, a),
            MetricFamily::single("node_load5", "5m load average.", MetricType::Gauge, b),
            MetricFamily::single("node_load15", "15m load average.", MetricType::Gauge, c),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses() {
        assert_eq!(
            parse_loadavg("0.41 0.71 1.08 2/180 12345\n"),
            Some([0.41, 0.71, 1.08])
        );
        assert_eq!(parse_loadavg("0.41 0.71"), None);
        assert_eq!(parse_loadavg("a b c"), None);
        let real = include_str!("../../tests/fixtures/proc/loadavg");
        assert!(parse_loadavg(real).is_some());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = parse_loadavg(&s);
        }
    }
}
