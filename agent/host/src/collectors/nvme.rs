//! `nvme`: `node_nvme_info{device,firmware_revision,model,serial,state}` from
//! `<sys>/class/nvme/<device>/{firmware_rev,model,serial,state}`.

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::{dir_names, sys_read};
use crate::HostPaths;

pub(crate) struct NvmeCollector {
    dir: PathBuf,
}

impl NvmeCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        NvmeCollector {
            dir: paths.sys.join("class/nvme"),
        }
    }
}

impl Collector for NvmeCollector {
    fn name(&self) -> &'static str {
        "nvme"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let devices = dir_names(&self.dir).map_err(|e| CollectError::io(&self.dir, e))?;
        let mut info = MetricFamily::new(
            "node_nvme_info",
            "Non-numeric data from /sys/class/nvme/<device>, value is always 1.",
            MetricType::Gauge,
        );
        for d in devices {
            let dir = self.dir.join(&d);
            let mut v = Vec::with_capacity(4);
            for f in ["firmware_rev", "model", "serial", "state"] {
                let p = dir.join(f);
                v.push(sys_read(&p).ok_or_else(|| {
                    CollectError::parse(&p, "failed to read NVMe device attribute")
                })?);
            }
            let [fw, model, serial, state]: [String; 4] = v.try_into().expect("four attributes");
            info.push(
                [
                    ("device", d),
                    ("firmware_revision", fw),
                    ("model", model),
                    ("serial", serial),
                    ("state", state),
                ],
                1.0,
            );
        }
        Ok(vec![info])
    }
}
