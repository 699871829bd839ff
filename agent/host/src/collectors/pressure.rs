//! `pressure`: PSI totals from `<proc>/pressure/{cpu,io,memory}` as node_exporter 1.5
//! names them. Each line is parsed with procfs-core's `parse_pressure_record`; a missing
//! PSI interface (kernel without CONFIG_PSI, or booted with `psi=0`) makes the collector
//! report `Unavailable`.

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::Buf;
use crate::HostPaths;

/// The `total=` values (microseconds) of the `some` and `full` lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PsiTotals {
    pub some: Option<u64>,
    pub full: Option<u64>,
}

/// Parses one PSI file. Lines that procfs-core cannot parse are skipped.
pub fn parse_pressure(text: &str) -> PsiTotals {
    let mut out = PsiTotals::default();
    for line in text.lines() {
        // procfs-core slices `line[5..]` after checking only the prefix: make sure byte 4
        // is the ASCII space so that slice is in bounds and on a char boundary.
        if line.len() <= 5 || line.as_bytes()[4] != b' ' {
            continue;
        }
        let Ok(rec) = procfs_core::parse_pressure_record(line) else {
            continue;
        };
        if line.starts_with("some") {
            out.some = Some(rec.total);
        } else {
            out.full = Some(rec.total);
        }
    }
    out
}

pub(crate) struct PressureCollector {
    dir: PathBuf,
    buf: Buf,
}

impl PressureCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        PressureCollector {
            dir: paths.proc.join("pressure"),
            buf: Buf::new(),
        }
    }
}

impl Collector for PressureCollector {
    fn name(&self) -> &'static str {
        "pressure"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let mut out = Vec::with_capacity(5);
        for res in ["cpu", "io", "memory"] {
            let path = self.dir.join(res);
            let t = self.buf.with_file(&path, |t| Ok(parse_pressure(t)))?;
            let Some(some) = t.some else {
                return Err(CollectError::parse(&path, "no `some` line"));
            };
            let secs = |us: u64| us as f64 / 1e6;
            match res {
                "cpu" => out.push(MetricFamily::single(
                    "node_pressure_cpu_waiting_seconds_total",
                    "Total time in seconds that processes have waited for CPU time",
                    MetricType::Counter,
                    secs(some),
                )),
                "io" => {
                    out.push(MetricFamily::single(
                        "node_pressure_io_waiting_seconds_total",
                        "Total time in seconds that processes have waited due to IO congestion",
                        MetricType::Counter,
                        secs(some),
                    ));
                    if let Some(full) = t.full {
                        out.push(MetricFamily::single(
                            "node_pressure_io_stalled_seconds_total",
                            "Total time in seconds no process could make progress due to IO congestion",
                            MetricType::Counter,
                            secs(full),
                        ));
                    }
                }
                _ => {
                    out.push(MetricFamily::single(
                        "node_pressure_memory_waiting_seconds_total",
                        "Total time in seconds that processes have waited for memory",
                        MetricType::Counter,
                        secs(some),
                    ));
                    if let Some(full) = t.full {
                        out.push(MetricFamily::single(
                            "node_pressure_memory_stalled_seconds_total",
                            "Total time in seconds no process could make progress due to memory congestion",
                            MetricType::Counter,
                            secs(full),
                        ));
                    }
                }
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
    fn parses_real_files() {
        let t = parse_pressure(include_str!("../../tests/fixtures/proc/pressure/io"));
        assert!(t.some.is_some() && t.full.is_some());
        let t = parse_pressure(
            "some avg10=0.41 avg60=0.71 avg300=1.08 total=6923935\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=12\n",
        );
        assert_eq!(
            t,
            PsiTotals {
                some: Some(6923935),
                full: Some(12)
            }
        );
        // Older kernels have no `full` line for cpu.
        let t = parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n");
        assert_eq!(
            t,
            PsiTotals {
                some: Some(5),
                full: None
            }
        );
    }

    #[test]
    fn truncated_lines_that_would_panic_procfs_core_are_skipped() {
        assert_eq!(parse_pressure("some"), PsiTotals::default());
        assert_eq!(parse_pressure("some\u{e9}xx"), PsiTotals::default());
        assert_eq!(parse_pressure("full avg10=1"), PsiTotals::default());
    }

    #[test]
    fn missing_psi_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let c = PressureCollector::new(&HostPaths::from_root(dir.path()));
        assert!(c.collect().unwrap_err().is_unavailable());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = parse_pressure(&s);
        }

        #[test]
        fn prefixed_garbage_never_panics(s in "(some|full)\\PC{0,40}") {
            let _ = parse_pressure(&s);
        }
    }
}
