//! `netdev`: node_network_{receive,transmit}_*_total{device} from `<proc>/1/net/dev` (the
//! host's network namespace when reading through a host root), parsed with procfs-core's
//! `InterfaceDeviceStatus`. `receive_nohandler` is not in `/proc/net/dev`; it is read from
//! `<sys>/class/net/<device>/statistics/rx_nohandler` when that exists.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};
use procfs_core::net::{DeviceStatus, InterfaceDeviceStatus};
use procfs_core::FromBufRead;

use crate::filter::NameFilter;
use crate::util::{num, Buf};
use crate::HostPaths;

/// Parses `/proc/net/dev` with procfs-core, devices sorted by name. procfs-core rejects the
/// whole file when one line is malformed; then each line is parsed on its own and the bad
/// ones are skipped. `Err` only when no device line parses at all.
pub fn parse_net_dev(text: &str) -> Result<Vec<DeviceStatus>, String> {
    let mut v: Vec<DeviceStatus> = match InterfaceDeviceStatus::from_buf_read(text.as_bytes()) {
        Ok(map) => map.0.into_values().collect(),
        Err(whole) => {
            let mut v = Vec::new();
            let mut one = String::with_capacity(256);
            for line in text.lines().skip(2) {
                one.clear();
                one.push_str("\n\n");
                one.push_str(line);
                if let Ok(map) = InterfaceDeviceStatus::from_buf_read(one.as_bytes()) {
                    v.extend(map.0.into_values());
                }
            }
            if v.is_empty() {
                return Err(crate::util::proc_error_text(&whole));
            }
            v
        }
    };
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v.dedup_by(|a, b| a.name == b.name);
    Ok(v)
}

type Getter = fn(&DeviceStatus) -> u64;

const FIELDS: [(&str, &str, Getter); 16] = [
    (
        "node_network_receive_bytes_total",
        "Network device statistic receive_bytes.",
        |d| d.recv_bytes,
    ),
    (
        "node_network_receive_packets_total",
        "Network device statistic receive_packets.",
        |d| d.recv_packets,
    ),
    (
        "node_network_receive_errs_total",
        "Network device statistic receive_errs.",
        |d| d.recv_errs,
    ),
    (
        "node_network_receive_drop_total",
        "Network device statistic receive_drop.",
        |d| d.recv_drop,
    ),
    (
        "node_network_receive_fifo_total",
        "Network device statistic receive_fifo.",
        |d| d.recv_fifo,
    ),
    (
        "node_network_receive_frame_total",
        "Network device statistic receive_frame.",
        |d| d.recv_frame,
    ),
    (
        "node_network_receive_compressed_total",
        "Network device statistic receive_compressed.",
        |d| d.recv_compressed,
    ),
    (
        "node_network_receive_multicast_total",
        "Network device statistic receive_multicast.",
        |d| d.recv_multicast,
    ),
    (
        "node_network_transmit_bytes_total",
        "Network device statistic transmit_bytes.",
        |d| d.sent_bytes,
    ),
    (
        "node_network_transmit_packets_total",
        "Network device statistic transmit_packets.",
        |d| d.sent_packets,
    ),
    (
        "node_network_transmit_errs_total",
        "Network device statistic transmit_errs.",
        |d| d.sent_errs,
    ),
    (
        "node_network_transmit_drop_total",
        "Network device statistic transmit_drop.",
        |d| d.sent_drop,
    ),
    (
        "node_network_transmit_fifo_total",
        "Network device statistic transmit_fifo.",
        |d| d.sent_fifo,
    ),
    (
        "node_network_transmit_colls_total",
        "Network device statistic transmit_colls.",
        |d| d.sent_colls,
    ),
    (
        "node_network_transmit_carrier_total",
        "Network device statistic transmit_carrier.",
        |d| d.sent_carrier,
    ),
    (
        "node_network_transmit_compressed_total",
        "Network device statistic transmit_compressed.",
        |d| d.sent_compressed,
    ),
];

pub(crate) struct NetdevCollector {
    path: PathBuf,
    class_net: PathBuf,
    buf: Buf,
    small: Buf,
    devices: NameFilter,
    max_devices: usize,
    dropped: AtomicU64,
}

impl NetdevCollector {
    pub(crate) fn new(paths: &HostPaths, devices: NameFilter, max_devices: usize) -> Self {
        NetdevCollector {
            path: paths.proc.join("1/net/dev"),
            class_net: paths.sys.join("class/net"),
            buf: Buf::new(),
            small: Buf::new(),
            devices,
            max_devices,
            dropped: AtomicU64::new(0),
        }
    }

    fn nohandler(&self, dev: &str) -> Option<f64> {
        if dev.is_empty() || dev == "." || dev == ".." || dev.contains('/') {
            return None;
        }
        let p = self.class_net.join(dev).join("statistics/rx_nohandler");
        self.small
            .with_file(&p, |t| Ok(num(t.trim())))
            .ok()
            .flatten()
    }
}

impl Collector for NetdevCollector {
    fn name(&self) -> &'static str {
        "netdev"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let devs = self.buf.with_file(&self.path, |t| {
            parse_net_dev(t).map_err(|e| CollectError::parse(&self.path, e))
        })?;
        let mut fams: Vec<MetricFamily> = FIELDS
            .iter()
            .map(|(n, h, _)| MetricFamily::new(*n, *h, MetricType::Counter))
            .collect();
        let mut nohandler = MetricFamily::new(
            "node_network_receive_nohandler_total",
            "Network device statistic receive_nohandler.",
            MetricType::Counter,
        );
        let mut kept = 0usize;
        for d in &devs {
            if !self.devices.allows(&d.name) {
                continue;
            }
            if kept >= self.max_devices {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            kept += 1;
            for (fam, (_, _, get)) in fams.iter_mut().zip(FIELDS.iter()) {
                fam.push([("device", d.name.clone())], get(d) as f64);
            }
            if let Some(v) = self.nohandler(&d.name) {
                nohandler.push([("device", d.name.clone())], v);
            }
        }
        if !nohandler.points.is_empty() {
            fams.insert(6, nohandler);
        }
        fams.retain(|f| !f.points.is_empty());
        fams.push(MetricFamily::single(
            "nodescope_host_netdev_devices_dropped_total",
            "Network devices left out because more than host.netdev.max_devices passed the filters.",
            MetricType::Counter,
            self.dropped.load(Ordering::Relaxed) as f64,
        ));
        Ok(fams)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FIXTURE: &str = include_str!("../../tests/fixtures/proc/1/net/dev");

    #[test]
    fn parses_real_file() {
        let d = parse_net_dev(FIXTURE).unwrap();
        assert!(d.iter().any(|d| d.name == "lo"));
        let eth0 = d.iter().find(|d| d.name == "eth0").unwrap();
        assert!(eth0.recv_bytes > 0 && eth0.sent_packets > 0);
    }

    #[test]
    fn malformed_line_is_skipped_and_nothing_usable_is_an_error() {
        let bad = format!("{FIXTURE}  eth9: 1 2 3\n");
        let d = parse_net_dev(&bad).unwrap();
        assert!(d.iter().any(|d| d.name == "eth0"));
        assert!(!d.iter().any(|d| d.name == "eth9"));
        let e = parse_net_dev("h\nh\n eth9: 1 2 3\n").unwrap_err();
        // The message is about the file, not procfs-core's source on the build machine.
        assert!(
            !e.contains(".rs:") && !e.contains("registry") && !e.contains("procfs bug"),
            "{e}"
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = parse_net_dev(&s);
        }

        #[test]
        fn truncated_never_panics(cut in 0usize..1200) {
            let _ = parse_net_dev(&FIXTURE[..cut.min(FIXTURE.len())]);
        }

        #[test]
        fn line_shaped_garbage_never_panics(lines in proptest::collection::vec(" *[a-z0-9]{0,6}:?( +[0-9x-]{0,21}){0,18}", 0..8)) {
            let _ = parse_net_dev(&format!("h\nh\n{}", lines.join("\n")));
        }
    }
}
