//! `edac`: memory controller error counters from `<sys>/devices/system/edac/mc/mcN`
//! (`node_edac_{correctable,uncorrectable}_errors_total{controller}` and the per-csrow
//! `node_edac_csrow_{correctable,uncorrectable}_errors_total{controller,csrow}`, where the
//! controller's `*_noinfo_count` is csrow `unknown`).

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::{glob_digit, read_uint};
use crate::HostPaths;

pub(crate) struct EdacCollector {
    dir: PathBuf,
}

impl EdacCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        EdacCollector {
            dir: paths.sys.join("devices/system/edac/mc"),
        }
    }
}

/// node_exporter matches `mc(\d+)` / `csrow(\d+)` on the path: the number is the leading
/// digits after the prefix.
fn leading_digits(s: &str) -> String {
    s.chars().take_while(|c| c.is_ascii_digit()).collect()
}

impl Collector for EdacCollector {
    fn name(&self) -> &'static str {
        "edac"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let c = MetricType::Counter;
        let mut ce = MetricFamily::new(
            "node_edac_correctable_errors_total",
            "Total correctable memory errors.",
            c,
        );
        let mut ue = MetricFamily::new(
            "node_edac_uncorrectable_errors_total",
            "Total uncorrectable memory errors.",
            c,
        );
        let mut rce = MetricFamily::new(
            "node_edac_csrow_correctable_errors_total",
            "Total correctable memory errors for this csrow.",
            c,
        );
        let mut rue = MetricFamily::new(
            "node_edac_csrow_uncorrectable_errors_total",
            "Total uncorrectable memory errors for this csrow.",
            c,
        );
        for (mc, rest) in glob_digit(&self.dir, "mc") {
            let n = leading_digits(&rest);
            ce.push(
                [("controller", n.clone())],
                read_uint(&mc.join("ce_count"))? as f64,
            );
            rce.push(
                [("controller", n.clone()), ("csrow", "unknown".into())],
                read_uint(&mc.join("ce_noinfo_count"))? as f64,
            );
            ue.push(
                [("controller", n.clone())],
                read_uint(&mc.join("ue_count"))? as f64,
            );
            rue.push(
                [("controller", n.clone()), ("csrow", "unknown".into())],
                read_uint(&mc.join("ue_noinfo_count"))? as f64,
            );
            for (row, rrest) in glob_digit(&mc, "csrow") {
                let r = leading_digits(&rrest);
                rce.push(
                    [("controller", n.clone()), ("csrow", r.clone())],
                    read_uint(&row.join("ce_count"))? as f64,
                );
                rue.push(
                    [("controller", n.clone()), ("csrow", r)],
                    read_uint(&row.join("ue_count"))? as f64,
                );
            }
        }
        let mut out = vec![ce, ue, rce, rue];
        out.retain(|f| !f.points.is_empty());
        Ok(out)
    }
}
