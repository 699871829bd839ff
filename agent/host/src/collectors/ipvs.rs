//! `ipvs`: IP Virtual Server totals from `<proc>/1/net/ip_vs_stats` and per-backend state
//! from `<proc>/1/net/ip_vs` (host netns), summed over the configured backend labels as
//! node_exporter 1.5 does (`--collector.ipvs.backend-labels`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::Buf;
use crate::HostPaths;

/// Every backend label, in node_exporter's order.
pub const IPVS_BACKEND_LABELS: &[&str] = &[
    "local_address",
    "local_port",
    "remote_address",
    "remote_port",
    "proto",
    "local_mark",
];

/// `[connections, in packets, out packets, in bytes, out bytes]` of `ip_vs_stats`.
pub fn parse_ipvs_stats(text: &str) -> Result<[u64; 5], String> {
    let lines: Vec<&str> = text.splitn(4, '\n').collect();
    if lines.len() != 4 {
        return Err("ip_vs_stats corrupt: too short".into());
    }
    let f: Vec<&str> = lines[2].split_ascii_whitespace().collect();
    if f.len() != 5 {
        return Err("ip_vs_stats corrupt: unexpected number of fields".into());
    }
    let mut out = [0u64; 5];
    for (o, s) in out.iter_mut().zip(f) {
        *o = u64::from_str_radix(s, 16).map_err(|e| format!("{s:?}: {e}"))?;
    }
    Ok(out)
}

/// One `->` line of `/proc/net/ip_vs` with its service.
#[derive(Clone, Debug, PartialEq)]
pub struct IpvsBackend {
    pub local_address: String,
    pub local_port: u16,
    pub local_mark: String,
    pub remote_address: String,
    pub remote_port: u16,
    pub proto: String,
    pub weight: u64,
    pub active: u64,
    pub inactive: u64,
}

fn fmt_ip(ip: IpAddr) -> String {
    match ip {
        // Go prints an IPv4-mapped IPv6 address as dotted IPv4.
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        IpAddr::V4(v4) => v4.to_string(),
    }
}

fn parse_ip_port(s: &str) -> Result<(String, u16), String> {
    let ip = match s.len() {
        13 => {
            let v = u32::from_str_radix(s.get(0..8).ok_or("bad address")?, 16)
                .map_err(|e| format!("{s:?}: {e}"))?;
            fmt_ip(IpAddr::V4(Ipv4Addr::from(v)))
        }
        46 => {
            let a: Ipv6Addr = s
                .get(1..40)
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| format!("invalid IPv6 address: {s}"))?;
            fmt_ip(IpAddr::V6(a))
        }
        _ => return Err(format!("unexpected IP:Port: {s}")),
    };
    let port = s
        .get(s.len() - 4..)
        .and_then(|p| u16::from_str_radix(p, 16).ok())
        .ok_or_else(|| format!("unexpected port in {s}"))?;
    Ok((ip, port))
}

/// Parses `/proc/net/ip_vs` as procfs' `parseIPVSBackendStatus`.
pub fn parse_ipvs_backends(text: &str) -> Result<Vec<IpvsBackend>, String> {
    let mut out = Vec::new();
    let (mut proto, mut mark, mut laddr, mut lport) =
        (String::new(), String::new(), String::new(), 0u16);
    for line in text.lines() {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        if f.is_empty() {
            continue;
        }
        if f[0] == "IP" || f[0] == "Prot" || f.get(1) == Some(&"RemoteAddress:Port") {
            continue;
        }
        match f[0] {
            "TCP" | "UDP" if f.len() >= 2 => {
                proto = f[0].to_string();
                mark.clear();
                (laddr, lport) = parse_ip_port(f[1])?;
            }
            "FWM" if f.len() >= 2 => {
                proto = f[0].to_string();
                mark = f[1].to_string();
                laddr.clear();
                lport = 0;
            }
            "->" if f.len() >= 6 => {
                let (raddr, rport) = parse_ip_port(f[1])?;
                let n = |s: &str| s.parse::<u64>().map_err(|e| format!("{s:?}: {e}"));
                out.push(IpvsBackend {
                    local_address: laddr.clone(),
                    local_port: lport,
                    local_mark: mark.clone(),
                    remote_address: raddr,
                    remote_port: rport,
                    proto: proto.clone(),
                    weight: n(f[3])?,
                    active: n(f[4])?,
                    inactive: n(f[5])?,
                });
            }
            _ => {}
        }
    }
    Ok(out)
}

pub(crate) struct IpvsCollector {
    stats: PathBuf,
    backends: PathBuf,
    labels: Vec<&'static str>,
    buf: Buf,
}

impl IpvsCollector {
    pub(crate) fn new(paths: &HostPaths, labels: Vec<&'static str>) -> Self {
        IpvsCollector {
            stats: paths.proc.join("1/net/ip_vs_stats"),
            backends: paths.proc.join("1/net/ip_vs"),
            labels,
            buf: Buf::new(),
        }
    }
}

impl Collector for IpvsCollector {
    fn name(&self) -> &'static str {
        "ipvs"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let s = self.buf.with_file(&self.stats, |t| {
            parse_ipvs_stats(t).map_err(|r| CollectError::parse(&self.stats, r))
        })?;
        let c = MetricType::Counter;
        let mut out = vec![
            MetricFamily::single(
                "node_ipvs_connections_total",
                "The total number of connections made.",
                c,
                s[0] as f64,
            ),
            MetricFamily::single(
                "node_ipvs_incoming_packets_total",
                "The total number of incoming packets.",
                c,
                s[1] as f64,
            ),
            MetricFamily::single(
                "node_ipvs_outgoing_packets_total",
                "The total number of outgoing packets.",
                c,
                s[2] as f64,
            ),
            MetricFamily::single(
                "node_ipvs_incoming_bytes_total",
                "The total amount of incoming data.",
                c,
                s[3] as f64,
            ),
            MetricFamily::single(
                "node_ipvs_outgoing_bytes_total",
                "The total amount of outgoing data.",
                c,
                s[4] as f64,
            ),
        ];
        let backends = self.buf.with_file(&self.backends, |t| {
            parse_ipvs_backends(t).map_err(|r| CollectError::parse(&self.backends, r))
        })?;
        let mut sums: BTreeMap<Vec<String>, (u64, u64, u64)> = BTreeMap::new();
        for b in backends {
            let kv: Vec<String> = self
                .labels
                .iter()
                .map(|l| match *l {
                    "local_address" => b.local_address.clone(),
                    "local_port" => b.local_port.to_string(),
                    "remote_address" => b.remote_address.clone(),
                    "remote_port" => b.remote_port.to_string(),
                    "proto" => b.proto.clone(),
                    _ => b.local_mark.clone(),
                })
                .collect();
            let e = sums.entry(kv).or_default();
            e.0 += b.active;
            e.1 += b.inactive;
            e.2 += b.weight;
        }
        let g = MetricType::Gauge;
        let mut active = MetricFamily::new(
            "node_ipvs_backend_connections_active",
            "The current active connections by local and remote address.",
            g,
        );
        let mut inactive = MetricFamily::new(
            "node_ipvs_backend_connections_inactive",
            "The current inactive connections by local and remote address.",
            g,
        );
        let mut weight = MetricFamily::new(
            "node_ipvs_backend_weight",
            "The current backend weight by local and remote address.",
            g,
        );
        for (kv, (a, i, w)) in sums {
            let labels: Vec<(&'static str, String)> = self.labels.iter().copied().zip(kv).collect();
            active.push(labels.clone(), a as f64);
            inactive.push(labels.clone(), i as f64);
            weight.push(labels, w as f64);
        }
        out.extend([active, inactive, weight]);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_backends() {
        let t = "IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\nTCP  C0A80016:0CEA wlc\n  -> C0A85216:0CEA      Tunnel  100    248        2\nFWM  10001000 wlc\n  -> C0A8321A:0CEA      Tunnel  20     64         1\nx\n";
        let b = parse_ipvs_backends(t).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].local_address, "192.168.0.22");
        assert_eq!(b[0].local_port, 3306);
        assert_eq!(b[1].local_mark, "10001000");
        assert_eq!(b[1].local_address, "");
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = parse_ipvs_backends(&s);
            let _ = parse_ipvs_stats(&s);
        }
    }
}
