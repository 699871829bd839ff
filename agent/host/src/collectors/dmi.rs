//! `dmi`: `node_dmi_info{...}` from `<sys>/class/dmi/id/*`, one label per attribute the
//! firmware provides (node_exporter 1.5's label set and help). Firmware data does not
//! change while the machine runs: like node_exporter, it is read once (at the first
//! collect here) and the same family is served afterwards.

use std::path::PathBuf;
use std::sync::OnceLock;

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
    /// What the first collect read: the family, or None when the firmware gave nothing.
    read: OnceLock<Option<MetricFamily>>,
}

impl DmiCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        DmiCollector {
            dir: paths.sys.join("class/dmi/id"),
            read: OnceLock::new(),
        }
    }
}

impl Collector for DmiCollector {
    fn name(&self) -> &'static str {
        "dmi"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        match self.read.get_or_init(|| self.read_dmi()) {
            Some(f) => Ok(vec![f.clone()]),
            None => Err(CollectError::Unavailable {
                what: self.dir.display().to_string(),
                reason: "no Desktop Management Interface (DMI) information".into(),
            }),
        }
    }
}

impl DmiCollector {
    fn read_dmi(&self) -> Option<MetricFamily> {
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
            return None;
        }
        let mut f = MetricFamily::new(
            "node_dmi_info",
            "A metric with a constant '1' value labeled by bios_date, bios_release, bios_vendor, bios_version, board_asset_tag, board_name, board_serial, board_vendor, board_version, chassis_asset_tag, chassis_serial, chassis_vendor, chassis_version, product_family, product_name, product_serial, product_sku, product_uuid, product_version, system_vendor if provided by DMI.",
            MetricType::Gauge,
        );
        f.push(labels, 1.0);
        Some(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_of(fams: &[MetricFamily], label: &str) -> Option<String> {
        fams[0].points[0]
            .labels
            .iter()
            .find(|(k, _)| k.as_ref() == label)
            .map(|(_, v)| v.to_string())
    }

    #[test]
    fn read_once_like_node_exporter() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("sys/class/dmi/id");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("bios_vendor"), "SeaBIOS\n").unwrap();
        std::fs::write(dir.join("sys_vendor"), "QEMU\n").unwrap();
        let c = DmiCollector::new(&HostPaths::from_root(root.path()));
        let first = c.collect().unwrap();
        assert_eq!(value_of(&first, "bios_vendor").as_deref(), Some("SeaBIOS"));
        assert_eq!(value_of(&first, "system_vendor").as_deref(), Some("QEMU"));
        // Firmware data is read at the first collect only.
        std::fs::write(dir.join("bios_vendor"), "changed\n").unwrap();
        assert_eq!(c.collect().unwrap(), first);
    }

    #[test]
    fn no_dmi_is_unavailable_every_time() {
        let root = tempfile::tempdir().unwrap();
        let c = DmiCollector::new(&HostPaths::from_root(root.path()));
        for _ in 0..2 {
            assert!(matches!(c.collect(), Err(CollectError::Unavailable { .. })));
        }
    }
}
