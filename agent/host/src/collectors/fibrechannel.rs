//! `fibrechannel`: `<sys>/class/fc_host/<host>/` attributes and `statistics/*` counters as
//! node_exporter 1.5 exports them (`node_fibrechannel_info{fc_host,...}` and
//! `node_fibrechannel_*_total{fc_host}`; a counter reading all ones is left out).

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::{dir_names, go_int, sys_read};
use crate::HostPaths;

const ATTRS: &[&str] = &[
    "speed",
    "port_state",
    "port_type",
    "node_name",
    "port_id",
    "port_name",
    "fabric_name",
    "dev_loss_tmo",
    "symbolic_name",
    "supported_classes",
    "supported_speeds",
];

/// statistics file → (metric suffix, help).
const COUNTERS: &[(&str, &str, &str)] = &[
    (
        "dumped_frames",
        "dumped_frames_total",
        "Number of dumped frames",
    ),
    (
        "error_frames",
        "error_frames_total",
        "Number of errors in frames",
    ),
    (
        "invalid_crc_count",
        "invalid_crc_total",
        "Invalid Cyclic Redundancy Check count",
    ),
    ("rx_frames", "rx_frames_total", "Number of frames received"),
    (
        "rx_words",
        "rx_words_total",
        "Number of words received by host port",
    ),
    (
        "tx_frames",
        "tx_frames_total",
        "Number of frames transmitted by host port",
    ),
    (
        "tx_words",
        "tx_words_total",
        "Number of words transmitted by host port",
    ),
    (
        "seconds_since_last_reset",
        "seconds_since_last_reset_total",
        "Number of seconds since last host port reset",
    ),
    (
        "invalid_tx_word_count",
        "invalid_tx_words_total",
        "Number of invalid words transmitted by host port",
    ),
    (
        "link_failure_count",
        "link_failure_total",
        "Number of times the host port link has failed",
    ),
    (
        "loss_of_sync_count",
        "loss_of_sync_total",
        "Number of failures on either bit or transmission word boundaries",
    ),
    (
        "loss_of_signal_count",
        "loss_of_signal_total",
        "Number of times signal has been lost",
    ),
    (
        "nos_count",
        "nos_total",
        "Number Not_Operational Primitive Sequence received by host port",
    ),
    (
        "fcp_packet_aborts",
        "fcp_packet_aborts_total",
        "Number of aborted packets",
    ),
];

/// procfs' `PUInt64` (Go `ParseUint(s, 0, 64)`).
fn go_uint(s: &str) -> Option<u64> {
    if let Some(h) = s.strip_prefix("0x").or(s.strip_prefix("0X")) {
        return u64::from_str_radix(h, 16).ok();
    }
    if s.starts_with('-') {
        return None;
    }
    s.parse::<u64>()
        .ok()
        .or_else(|| go_int(s).and_then(|v| u64::try_from(v).ok()))
}

pub(crate) struct FibrechannelCollector {
    dir: PathBuf,
}

impl FibrechannelCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        FibrechannelCollector {
            dir: paths.sys.join("class/fc_host"),
        }
    }
}

impl Collector for FibrechannelCollector {
    fn name(&self) -> &'static str {
        "fibrechannel"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let hosts = dir_names(&self.dir).map_err(|e| CollectError::io(&self.dir, e))?;
        let mut info = MetricFamily::new(
            "node_fibrechannel_info",
            "Non-numeric data from /sys/class/fc_host/<host>, value is always 1.",
            MetricType::Gauge,
        );
        let mut fams: Vec<MetricFamily> = COUNTERS
            .iter()
            .map(|(_, n, h)| {
                MetricFamily::new(format!("node_fibrechannel_{n}"), *h, MetricType::Counter)
            })
            .collect();
        for host in hosts {
            let dir = self.dir.join(&host);
            let mut attrs = Vec::with_capacity(ATTRS.len());
            for a in ATTRS {
                let p = dir.join(a);
                let mut v = sys_read(&p)
                    .ok_or_else(|| CollectError::parse(&p, "failed to read fc_host attribute"))?;
                if matches!(*a, "node_name" | "port_id" | "port_name" | "fabric_name")
                    && v.len() > 2
                {
                    v = v.get(2..).unwrap_or("").to_string();
                }
                attrs.push(v);
            }
            let stats = dir.join("statistics");
            let mut values = [0u64; 14];
            for f in dir_names(&stats).map_err(|e| CollectError::io(&stats, e))? {
                let Some(i) = COUNTERS.iter().position(|(n, ..)| *n == f) else {
                    continue;
                };
                let p = stats.join(&f);
                if !p.is_file() {
                    continue;
                }
                let Some(text) = sys_read(&p) else {
                    continue;
                };
                values[i] = go_uint(&text)
                    .ok_or_else(|| CollectError::parse(&p, format!("not a counter: {text:?}")))?;
            }
            let get = |n: &str| attrs[ATTRS.iter().position(|a| *a == n).expect("listed")].clone();
            info.push(
                [
                    ("fc_host", host.clone()),
                    ("speed", get("speed")),
                    ("port_state", get("port_state")),
                    ("port_type", get("port_type")),
                    ("port_id", get("port_id")),
                    ("port_name", get("port_name")),
                    ("fabric_name", get("fabric_name")),
                    ("symbolic_name", get("symbolic_name")),
                    ("supported_classes", get("supported_classes")),
                    ("supported_speeds", get("supported_speeds")),
                    ("dev_loss_tmo", get("dev_loss_tmo")),
                ],
                1.0,
            );
            for (f, v) in fams.iter_mut().zip(values) {
                if v != u64::MAX {
                    f.push([("fc_host", host.clone())], v as f64);
                }
            }
        }
        let mut out = vec![info];
        out.extend(fams.into_iter().filter(|f| !f.points.is_empty()));
        Ok(out)
    }
}
