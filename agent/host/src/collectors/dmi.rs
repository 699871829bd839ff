//! `dmi`: `node_dmi_info{...}` from `<sys>/class/dmi/id/*`, one label per attribute the
//! firmware provides (node_exporter 1.5's label set and help).

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::sys_read;
use crate::HostPaths;

/// sysfs file → label.
const ATTRS: &[(&str, &str)] = &[
    ("bios_date", "bios_date"),
    ("bios_release", "bios_release"),
    ("bios_vendor", "bios_vendor"),
    ("bios_version", "bios_version"),
    ("board_asset_tag", "board_asset_tag"),
    ("board_name", "board_name"),
    ("board_serial", "board_serial"),
    ("board_vendor", "board_vendor"),
    ("board_version", "board_version"),
    ("chassis_asset_tag", "chassis_asset_tag"),
    ("chassis_serial", "chassis_serial"),
    ("chassis_vendor", "chassis_vendor"),
    ("chassis_version", "chassis_version"),
    ("product_family", "product_family"),
    ("product_name", "product_name"),
    ("product_serial", "product_serial"),
    ("product_sku", "product_sku"),
    ("product_uuid", "product_uuid"),
    ("product_version", "product_version"),
    ("sys_vendor", "system_vendor"),
];

pub(crate) struct DmiCollector {
    dir: PathBuf,
}

impl DmiCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        DmiCollector {
            dir: paths.sys.join("class/dmi/id"),
        }
    }
}

impl Collector for DmiCollector {
    fn name(&self) -> &'static str {
        "dmi"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let mut labels: Vec<(&'static str, String)> = Vec::new();
        for (file, label) in ATTRS {
            let p = self.dir.join(file);
            // Unreadable (root-only serials) and missing attributes are left out.
            if std::fs::symlink_metadata(&p)
                .map(|m| m.is_file())
                .unwrap_or(false)
            {
                if let Some(v) = sys_read(&p) {
                    labels.push((label, v));
                }
            }
        }
        if labels.is_empty() {
            return Err(CollectError::Unavailable {
                what: self.dir.display().to_string(),
                reason: "no Desktop Management Interface (DMI) information".into(),
            });
        }
        let mut f = MetricFamily::new(
            "node_dmi_info",
            "A metric with a constant '1' value labeled by bios_date, bios_release, bios_vendor, bios_version, board_asset_tag, board_name, board_serial, board_vendor, board_version, chassis_asset_tag, chassis_serial, chassis_vendor, chassis_version, product_family, product_name, product_serial, product_sku, product_uuid, product_version, system_vendor if provided by DMI.",
            MetricType::Gauge,
        );
        f.push(labels, 1.0);
        Ok(vec![f])
    }
}
