//! `netclass`: `/sys/class/net/<iface>/*` attributes as node_exporter 1.5's netclass
//! collector exports them (sysfs mode, its default): `node_network_up`, `node_network_info`
//! and one gauge (or counter) per numeric attribute.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::filter::NameFilter;
use parking_lot::Mutex;

use crate::util::{dir_names, go_int, text, OpenFiles};

/// Attribute files kept open between collects (22 per interface).
const MAX_OPEN_FILES: usize = 2048;
use crate::HostPaths;

/// One interface's attributes, as procfs' `NetClassIface` (only what is exported).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetClassIface {
    pub name: String,
    pub address: String,
    pub broadcast: String,
    pub duplex: String,
    pub operstate: String,
    pub ifalias: String,
    /// Numeric attributes by node_exporter metric suffix.
    pub numbers: BTreeMap<&'static str, i64>,
    pub speed: Option<i64>,
}

/// sysfs file → node_exporter metric suffix, with the counter flag.
const NUMERIC: &[(&str, &str, bool)] = &[
    ("addr_assign_type", "address_assign_type", false),
    ("carrier", "carrier", false),
    ("carrier_changes", "carrier_changes_total", true),
    ("carrier_up_count", "carrier_up_changes_total", true),
    ("carrier_down_count", "carrier_down_changes_total", true),
    ("dev_id", "device_id", false),
    ("dormant", "dormant", false),
    ("flags", "flags", false),
    ("ifindex", "iface_id", false),
    ("iflink", "iface_link", false),
    ("link_mode", "iface_link_mode", false),
    ("mtu", "mtu_bytes", false),
    ("name_assign_type", "name_assign_type", false),
    ("netdev_group", "net_dev_group", false),
    ("tx_queue_len", "transmit_queue_length", false),
    ("type", "protocol_type", false),
];

/// Applies one attribute file's content (already trimmed) to `iface`.
pub fn apply_netclass_attr(iface: &mut NetClassIface, file: &str, value: &str) {
    match file {
        "address" => iface.address = value.to_string(),
        "broadcast" => iface.broadcast = value.to_string(),
        "duplex" => iface.duplex = value.to_string(),
        "operstate" => iface.operstate = value.to_string(),
        "ifalias" => iface.ifalias = value.to_string(),
        "speed" => iface.speed = go_int(value),
        _ => {
            if let Some((_, suffix, _)) = NUMERIC.iter().find(|(f, _, _)| *f == file) {
                if let Some(v) = go_int(value) {
                    iface.numbers.insert(suffix, v);
                }
            }
        }
    }
}

/// The attribute files node_exporter's netclass collector uses.
const FILES: &[&str] = &[
    "address",
    "broadcast",
    "duplex",
    "operstate",
    "ifalias",
    "speed",
    "addr_assign_type",
    "carrier",
    "carrier_changes",
    "carrier_up_count",
    "carrier_down_count",
    "dev_id",
    "dormant",
    "flags",
    "ifindex",
    "iflink",
    "link_mode",
    "mtu",
    "name_assign_type",
    "netdev_group",
    "tx_queue_len",
    "type",
];

fn read_iface(dir: &Path, name: &str, files: &mut OpenFiles, buf: &mut Vec<u8>) -> NetClassIface {
    let mut iface = NetClassIface {
        name: name.to_string(),
        ..Default::default()
    };
    for file in FILES {
        // Unreadable attributes (missing, EINVAL for speed on a down link, EOPNOTSUPP)
        // are skipped, as procfs skips them.
        if files.read(&dir.join(file), buf).is_ok() {
            let v = text(buf);
            apply_netclass_attr(&mut iface, file, v.trim());
        }
    }
    iface
}

pub(crate) struct NetclassCollector {
    dir: PathBuf,
    files: Mutex<(OpenFiles, Vec<u8>)>,
    devices: NameFilter,
    ignore_invalid_speed: bool,
    max_devices: usize,
}

impl NetclassCollector {
    pub(crate) fn new(
        paths: &HostPaths,
        devices: NameFilter,
        ignore_invalid_speed: bool,
        max_devices: usize,
    ) -> Self {
        NetclassCollector {
            dir: paths.sys.join("class/net"),
            files: Mutex::new((OpenFiles::new(MAX_OPEN_FILES), Vec::with_capacity(256))),
            devices,
            ignore_invalid_speed,
            max_devices,
        }
    }
}

impl Collector for NetclassCollector {
    fn name(&self) -> &'static str {
        "netclass"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let names = dir_names(&self.dir).map_err(|e| CollectError::io(&self.dir, e))?;
        let mut up = MetricFamily::new(
            "node_network_up",
            "Value is 1 if operstate is 'up', 0 otherwise.",
            MetricType::Gauge,
        );
        let mut info = MetricFamily::new(
            "node_network_info",
            "Non-numeric data from /sys/class/net/<iface>, value is always 1.",
            MetricType::Gauge,
        );
        let mut numeric: Vec<MetricFamily> = NUMERIC
            .iter()
            .map(|(_, suffix, counter)| {
                MetricFamily::new(
                    format!("node_network_{suffix}"),
                    format!("Network device property: {suffix}"),
                    if *counter {
                        MetricType::Counter
                    } else {
                        MetricType::Gauge
                    },
                )
            })
            .collect();
        let mut speed = MetricFamily::new(
            "node_network_speed_bytes",
            "Network device property: speed_bytes",
            MetricType::Gauge,
        );
        let mut dropped = 0u64;
        let mut seen = 0usize;
        let mut guard = self.files.lock();
        let (files, buf) = &mut *guard;
        files.begin();
        for name in names {
            let dir = self.dir.join(&name);
            // procfs skips regular files in /sys/class/net (bonding_masters).
            if std::fs::metadata(&dir).map(|m| !m.is_dir()).unwrap_or(true) {
                continue;
            }
            if !self.devices.allows(&name) {
                continue;
            }
            if seen >= self.max_devices {
                dropped += 1;
                continue;
            }
            seen += 1;
            let iface = read_iface(&dir, &name, files, buf);
            let dev = [("device", name.clone())];
            up.push(dev.clone(), f64::from(u8::from(iface.operstate == "up")));
            info.push(
                [
                    ("device", name.clone()),
                    ("address", iface.address.clone()),
                    ("broadcast", iface.broadcast.clone()),
                    ("duplex", iface.duplex.clone()),
                    ("operstate", iface.operstate.clone()),
                    ("ifalias", iface.ifalias.clone()),
                ],
                1.0,
            );
            for (fam, (_, suffix, _)) in numeric.iter_mut().zip(NUMERIC) {
                if let Some(v) = iface.numbers.get(suffix) {
                    fam.push(dev.clone(), *v as f64);
                }
            }
            if let Some(s) = iface.speed {
                if s >= 0 || !self.ignore_invalid_speed {
                    // node_exporter: int64(speed * 1000 * 1000 / 8).
                    speed.push(dev.clone(), (s.wrapping_mul(1_000_000) / 8) as f64);
                }
            }
        }
        files.end();
        drop(guard);
        let mut out = vec![up, info];
        out.append(&mut numeric);
        out.push(speed);
        out.retain(|f| !f.points.is_empty());
        out.push(MetricFamily::single(
            "nodescope_host_netclass_devices_dropped",
            "Interfaces beyond host.netclass.max_devices left out of the last collect.",
            MetricType::Gauge,
            dropped as f64,
        ));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil::value;
    use proptest::prelude::*;

    #[test]
    fn reads_an_interface_directory() {
        let dir = tempfile::tempdir().unwrap();
        let paths = HostPaths {
            proc: dir.path().join("proc"),
            sys: dir.path().join("sys"),
            root: dir.path().to_path_buf(),
        };
        let eth = paths.sys.join("class/net/eth0");
        std::fs::create_dir_all(&eth).unwrap();
        for (f, v) in [
            ("operstate", "up\n"),
            ("address", "01:02:03:04:05:06\n"),
            ("flags", "0x1003\n"),
            ("mtu", "1500\n"),
            ("speed", "1000\n"),
            ("carrier_changes", "3\n"),
            ("duplex", "full\n"),
        ] {
            std::fs::write(eth.join(f), v).unwrap();
        }
        std::fs::write(paths.sys.join("class/net/bonding_masters"), "bond0\n").unwrap();
        let c = NetclassCollector::new(&paths, NameFilter::accept_all(), false, 10);
        let fams = c.collect().unwrap();
        assert_eq!(value(&fams, "node_network_up", &[("device", "eth0")]), 1.0);
        assert_eq!(
            value(&fams, "node_network_flags", &[("device", "eth0")]),
            4099.0
        );
        assert_eq!(
            value(&fams, "node_network_speed_bytes", &[("device", "eth0")]),
            125_000_000.0
        );
        assert_eq!(
            value(
                &fams,
                "node_network_carrier_changes_total",
                &[("device", "eth0")]
            ),
            3.0
        );
        assert!(!fams.iter().any(|f| f.name == "node_network_dormant"));
    }

    proptest! {
        #[test]
        fn garbage_attributes_never_panic(file in "[a-z_]{1,20}", v in "\\PC*") {
            let mut i = NetClassIface::default();
            apply_netclass_attr(&mut i, &file, &v);
        }
    }
}
