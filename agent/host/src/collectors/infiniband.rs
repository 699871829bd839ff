//! `infiniband`: `<sys>/class/infiniband/<device>/ports/<port>/{state,phys_state,rate,
//! counters/*,counters_ext/*}` as node_exporter 1.5 exports them
//! (`node_infiniband_*{device,port}`, `node_infiniband_info{device,board_id,
//! firmware_version,hca_type}`). Data counters are in 4-byte words and scaled to bytes.

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::{dir_names, go_int, sys_read};
use crate::HostPaths;

/// Metric suffix → help (node_exporter 1.5's table).
const HELP: &[(&str, &str)] = &[
    ("legacy_multicast_packets_received_total", "Number of multicast packets received"),
    ("legacy_multicast_packets_transmitted_total", "Number of multicast packets transmitted"),
    ("legacy_data_received_bytes_total", "Number of data octets received on all links"),
    ("legacy_packets_received_total", "Number of data packets received on all links"),
    ("legacy_unicast_packets_received_total", "Number of unicast packets received"),
    ("legacy_unicast_packets_transmitted_total", "Number of unicast packets transmitted"),
    ("legacy_data_transmitted_bytes_total", "Number of data octets transmitted on all links"),
    ("legacy_packets_transmitted_total", "Number of data packets received on all links"),
    ("excessive_buffer_overrun_errors_total", "Number of times that OverrunErrors consecutive flow control update periods occurred, each having at least one overrun error."),
    ("link_downed_total", "Number of times the link failed to recover from an error state and went down"),
    ("link_error_recovery_total", "Number of times the link successfully recovered from an error state"),
    ("local_link_integrity_errors_total", "Number of times that the count of local physical errors exceeded the threshold specified by LocalPhyErrors."),
    ("multicast_packets_received_total", "Number of multicast packets received (including errors)"),
    ("multicast_packets_transmitted_total", "Number of multicast packets transmitted (including errors)"),
    ("physical_state_id", "Physical state of the InfiniBand port (0: no change, 1: sleep, 2: polling, 3: disable, 4: shift, 5: link up, 6: link error recover, 7: phytest)"),
    ("port_constraint_errors_received_total", "Number of packets received on the switch physical port that are discarded"),
    ("port_constraint_errors_transmitted_total", "Number of packets not transmitted from the switch physical port"),
    ("port_data_received_bytes_total", "Number of data octets received on all links"),
    ("port_data_transmitted_bytes_total", "Number of data octets transmitted on all links"),
    ("port_discards_received_total", "Number of inbound packets discarded by the port because the port is down or congested"),
    ("port_discards_transmitted_total", "Number of outbound packets discarded by the port because the port is down or congested"),
    ("port_errors_received_total", "Number of packets containing an error that were received on this port"),
    ("port_packets_received_total", "Number of packets received on all VLs by this port (including errors)"),
    ("port_packets_transmitted_total", "Number of packets transmitted on all VLs from this port (including errors)"),
    ("port_transmit_wait_total", "Number of ticks during which the port had data to transmit but no data was sent during the entire tick"),
    ("rate_bytes_per_second", "Maximum signal transfer rate"),
    ("state_id", "State of the InfiniBand port (0: no change, 1: down, 2: init, 3: armed, 4: active, 5: act defer)"),
    ("unicast_packets_received_total", "Number of unicast packets received (including errors)"),
    ("unicast_packets_transmitted_total", "Number of unicast packets transmitted (including errors)"),
    ("port_receive_remote_physical_errors_total", "Number of packets marked with the EBP (End of Bad Packet) delimiter received on the port."),
    ("port_receive_switch_relay_errors_total", "Number of packets that could not be forwarded by the switch."),
    ("symbol_error_total", "Number of minor link errors detected on one or more physical lanes."),
    ("vl15_dropped_total", "Number of incoming VL15 packets dropped due to resource limitations."),
];

/// (directory, file, metric suffix, ×4 words→bytes).
const COUNTERS: &[(&str, &str, &str, bool)] = &[
    (
        "counters_ext",
        "port_multicast_rcv_packets",
        "legacy_multicast_packets_received_total",
        false,
    ),
    (
        "counters_ext",
        "port_multicast_xmit_packets",
        "legacy_multicast_packets_transmitted_total",
        false,
    ),
    (
        "counters_ext",
        "port_rcv_data_64",
        "legacy_data_received_bytes_total",
        true,
    ),
    (
        "counters_ext",
        "port_rcv_packets_64",
        "legacy_packets_received_total",
        false,
    ),
    (
        "counters_ext",
        "port_unicast_rcv_packets",
        "legacy_unicast_packets_received_total",
        false,
    ),
    (
        "counters_ext",
        "port_unicast_xmit_packets",
        "legacy_unicast_packets_transmitted_total",
        false,
    ),
    (
        "counters_ext",
        "port_xmit_data_64",
        "legacy_data_transmitted_bytes_total",
        true,
    ),
    (
        "counters_ext",
        "port_xmit_packets_64",
        "legacy_packets_transmitted_total",
        false,
    ),
    (
        "counters",
        "excessive_buffer_overrun_errors",
        "excessive_buffer_overrun_errors_total",
        false,
    ),
    ("counters", "link_downed", "link_downed_total", false),
    (
        "counters",
        "link_error_recovery",
        "link_error_recovery_total",
        false,
    ),
    (
        "counters",
        "local_link_integrity_errors",
        "local_link_integrity_errors_total",
        false,
    ),
    (
        "counters",
        "multicast_rcv_packets",
        "multicast_packets_received_total",
        false,
    ),
    (
        "counters",
        "multicast_xmit_packets",
        "multicast_packets_transmitted_total",
        false,
    ),
    (
        "counters",
        "port_rcv_constraint_errors",
        "port_constraint_errors_received_total",
        false,
    ),
    (
        "counters",
        "port_xmit_constraint_errors",
        "port_constraint_errors_transmitted_total",
        false,
    ),
    (
        "counters",
        "port_rcv_data",
        "port_data_received_bytes_total",
        true,
    ),
    (
        "counters",
        "port_xmit_data",
        "port_data_transmitted_bytes_total",
        true,
    ),
    (
        "counters",
        "port_rcv_discards",
        "port_discards_received_total",
        false,
    ),
    (
        "counters",
        "port_xmit_discards",
        "port_discards_transmitted_total",
        false,
    ),
    (
        "counters",
        "port_rcv_errors",
        "port_errors_received_total",
        false,
    ),
    (
        "counters",
        "port_rcv_packets",
        "port_packets_received_total",
        false,
    ),
    (
        "counters",
        "port_xmit_packets",
        "port_packets_transmitted_total",
        false,
    ),
    (
        "counters",
        "port_xmit_wait",
        "port_transmit_wait_total",
        false,
    ),
    (
        "counters",
        "unicast_rcv_packets",
        "unicast_packets_received_total",
        false,
    ),
    (
        "counters",
        "unicast_xmit_packets",
        "unicast_packets_transmitted_total",
        false,
    ),
    (
        "counters",
        "port_rcv_remote_physical_errors",
        "port_receive_remote_physical_errors_total",
        false,
    ),
    (
        "counters",
        "port_rcv_switch_relay_errors",
        "port_receive_switch_relay_errors_total",
        false,
    ),
    ("counters", "symbol_error", "symbol_error_total", false),
    ("counters", "VL15_dropped", "vl15_dropped_total", false),
];

/// `"4: ACTIVE"` → 4, as procfs' `parseState`.
pub fn parse_ib_state(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 2 {
        return None;
    }
    let v: u64 = parts[0].trim().parse().ok()?;
    u32::try_from(v).ok().map(u64::from)
}

/// `"40 Gb/sec (4X QDR)"` → bytes per second, as procfs' `parseRate` (a float32 parse).
pub fn parse_ib_rate(s: &str) -> Option<u64> {
    let (num, _) = s.split_once(' ')?;
    let v: f32 = num.trim().parse().ok()?;
    if !v.is_finite() {
        return None;
    }
    Some((f64::from(v) * 125_000_000.0) as u64)
}

fn help(suffix: &str) -> &'static str {
    HELP.iter()
        .find(|(n, _)| *n == suffix)
        .map(|(_, h)| *h)
        .unwrap_or("")
}

pub(crate) struct InfinibandCollector {
    dir: PathBuf,
}

impl InfinibandCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        InfinibandCollector {
            dir: paths.sys.join("class/infiniband"),
        }
    }
}

struct Fams(Vec<MetricFamily>);

impl Fams {
    fn push(&mut self, suffix: &str, kind: MetricType, dev: &str, port: &str, v: f64) {
        let name = format!("node_infiniband_{suffix}");
        let labels = [("device", dev.to_string()), ("port", port.to_string())];
        match self.0.iter_mut().find(|f| f.name == name) {
            Some(f) => {
                f.push(labels, v);
            }
            None => {
                let mut f = MetricFamily::new(name, help(suffix), kind);
                f.push(labels, v);
                self.0.push(f);
            }
        }
    }
}

fn err(path: &std::path::Path, what: &str) -> CollectError {
    CollectError::parse(path, what.to_string())
}

impl Collector for InfinibandCollector {
    fn name(&self) -> &'static str {
        "infiniband"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let devices = dir_names(&self.dir).map_err(|e| CollectError::io(&self.dir, e))?;
        let mut info = MetricFamily::new(
            "node_infiniband_info",
            "Non-numeric data from /sys/class/infiniband/<device>, value is always 1.",
            MetricType::Gauge,
        );
        let mut fams = Fams(Vec::new());
        for dev in devices {
            let dir = self.dir.join(&dev);
            let board = sys_read(&dir.join("board_id"))
                .ok_or_else(|| err(&dir.join("board_id"), "failed to read"))?;
            let fw = sys_read(&dir.join("fw_ver"))
                .ok_or_else(|| err(&dir.join("fw_ver"), "failed to read"))?;
            let hca = sys_read(&dir.join("hca_type")).unwrap_or_default();
            info.push(
                [
                    ("device", dev.clone()),
                    ("board_id", board),
                    ("firmware_version", fw),
                    ("hca_type", hca),
                ],
                1.0,
            );
            let ports_dir = dir.join("ports");
            let mut ports: Vec<(u32, String)> = Vec::new();
            for p in dir_names(&ports_dir).map_err(|e| CollectError::io(&ports_dir, e))? {
                let n: u32 = p
                    .parse()
                    .map_err(|_| err(&ports_dir.join(&p), "port is not a number"))?;
                ports.push((n, p));
            }
            ports.sort();
            for (n, p) in ports {
                let pd = ports_dir.join(&p);
                let port = n.to_string();
                let state = std::fs::read_to_string(pd.join("state"))
                    .map_err(|e| CollectError::io(pd.join("state"), e))?;
                let state = parse_ib_state(&state)
                    .ok_or_else(|| err(&pd.join("state"), "could not parse state"))?;
                let phys = std::fs::read_to_string(pd.join("phys_state"))
                    .map_err(|e| CollectError::io(pd.join("phys_state"), e))?;
                let phys = parse_ib_state(&phys)
                    .ok_or_else(|| err(&pd.join("phys_state"), "could not parse phys_state"))?;
                let rate = std::fs::read_to_string(pd.join("rate"))
                    .map_err(|e| CollectError::io(pd.join("rate"), e))?;
                let rate = parse_ib_rate(&rate)
                    .ok_or_else(|| err(&pd.join("rate"), "could not parse rate"))?;
                let g = MetricType::Gauge;
                fams.push("state_id", g, &dev, &port, state as f64);
                fams.push("physical_state_id", g, &dev, &port, phys as f64);
                fams.push("rate_bytes_per_second", g, &dev, &port, rate as f64);
                for (sub, file, suffix, words) in COUNTERS {
                    let path = pd.join(sub).join(file);
                    if !path.is_file() {
                        continue;
                    }
                    let Some(text) = sys_read(&path) else {
                        continue;
                    };
                    let v = match go_int(&text)
                        .and_then(|v| u64::try_from(v).ok())
                        .or_else(|| {
                            u64::from_str_radix(
                                text.trim_start_matches("0x"),
                                if text.starts_with("0x") { 16 } else { 10 },
                            )
                            .ok()
                        }) {
                        Some(v) => v,
                        None if text.contains("N/A (no PMA)") => continue,
                        None => return Err(err(&path, "not a counter")),
                    };
                    let v = if *words { v.wrapping_mul(4) } else { v };
                    fams.push(suffix, MetricType::Counter, &dev, &port, v as f64);
                }
            }
        }
        let mut out = vec![info];
        out.extend(fams.0);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn state_and_rate() {
        assert_eq!(parse_ib_state("4: ACTIVE\n"), Some(4));
        assert_eq!(parse_ib_state("ACTIVE"), None);
        assert_eq!(parse_ib_rate("40 Gb/sec (4X QDR)\n"), Some(5_000_000_000));
        assert_eq!(parse_ib_rate("x Gb/sec"), None);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = parse_ib_state(&s);
            let _ = parse_ib_rate(&s);
        }
    }
}
