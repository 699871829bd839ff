//! `arp`: `node_arp_entries{device}` counted from `<proc>/1/net/arp` (host netns), as
//! node_exporter 1.5's file-based arp collector does.

use std::collections::BTreeMap;
use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::filter::NameFilter;
use crate::util::Buf;
use crate::HostPaths;

/// Entries per device. Like node_exporter, a line with fewer than six columns makes the
/// whole table invalid (`None`); the header line (`IP address ...`) is skipped.
pub fn parse_arp(text: &str) -> Option<BTreeMap<&str, u64>> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split_ascii_whitespace().collect();
        if cols.len() < 6 {
            return None;
        }
        if cols[0] != "IP" {
            *out.entry(cols[cols.len() - 1]).or_insert(0) += 1;
        }
    }
    Some(out)
}

pub(crate) struct ArpCollector {
    path: PathBuf,
    buf: Buf,
    devices: NameFilter,
}

impl ArpCollector {
    pub(crate) fn new(paths: &HostPaths, devices: NameFilter) -> Self {
        ArpCollector {
            path: paths.proc.join("1/net/arp"),
            buf: Buf::new(),
            devices,
        }
    }
}

impl Collector for ArpCollector {
    fn name(&self) -> &'static str {
        "arp"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        self.buf.with_file(&self.path, |t| {
            let entries = parse_arp(t)
                .ok_or_else(|| CollectError::parse(&self.path, "unexpected ARP table format"))?;
            let mut f = MetricFamily::new(
                "node_arp_entries",
                "ARP entries by device",
                MetricType::Gauge,
            );
            for (dev, n) in entries {
                if self.devices.allows(dev) {
                    f.push([("device", dev.to_string())], n as f64);
                }
            }
            Ok(vec![f])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_per_device() {
        let t = "IP address       HW type     Flags       HW address            Mask     Device\n\
                 192.168.1.1      0x1         0x2         cc:aa:dd:ee:aa:bb     *        eth0\n\
                 192.168.1.2      0x1         0x2         cc:aa:dd:ee:aa:bb     *        eth0\n\
                 10.0.0.1         0x1         0x2         cc:aa:dd:ee:aa:bb     *        eth1\n";
        let m = parse_arp(t).unwrap();
        assert_eq!(m["eth0"], 2);
        assert_eq!(m["eth1"], 1);
        assert!(parse_arp("IP address HW\n").is_none());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = parse_arp(&s);
        }
    }
}
