//! `netstat`: `<proc>/1/net/{netstat,snmp,snmp6}` (the host's network namespace) as
//! node_exporter exports them: untyped `node_netstat_<Protocol>_<Field>` for the fields
//! matching the field filter. Parsed directly: node_exporter exports these files
//! generically, and procfs-core's `Snmp`/`Snmp6` are fixed structs without `TcpExt`.

use std::collections::HashSet;
use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::filter::NameFilter;
use crate::util::{is_name_part, num, Buf};
use crate::HostPaths;

/// One exported statistic: `Tcp`, `RetransSegs`, value.
#[derive(Clone, Debug, PartialEq)]
pub struct NetStat {
    pub protocol: String,
    pub field: String,
    pub value: f64,
}

/// Parses the header/value line pairs of `/proc/net/netstat` and `/proc/net/snmp`
/// (`TcpExt: SyncookiesSent ...` then `TcpExt: 0 ...`). `keep` gets `Protocol_Field`.
/// A pair whose protocols or field counts differ is skipped.
pub fn parse_netstat(text: &str, keep: &dyn Fn(&str) -> bool) -> Vec<NetStat> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut key = String::with_capacity(64);
    let mut i = 0;
    while i + 1 < lines.len() {
        let (h, v) = (lines[i], lines[i + 1]);
        let (Some((hp, hrest)), Some((vp, vrest))) = (h.split_once(": "), v.split_once(": "))
        else {
            i += 1;
            continue;
        };
        if hp != vp || !is_name_part(hp) {
            i += 1;
            continue;
        }
        i += 2;
        let names: Vec<&str> = hrest.split_ascii_whitespace().collect();
        let values: Vec<&str> = vrest.split_ascii_whitespace().collect();
        if names.len() != values.len() {
            continue;
        }
        for (n, v) in names.iter().zip(values.iter()) {
            if !is_name_part(n) {
                continue;
            }
            key.clear();
            key.push_str(hp);
            key.push('_');
            key.push_str(n);
            if !keep(&key) {
                continue;
            }
            if let Some(value) = num(v) {
                out.push(NetStat {
                    protocol: hp.to_string(),
                    field: (*n).to_string(),
                    value,
                });
            }
        }
    }
    out
}

/// Parses `/proc/net/snmp6` (`Ip6InReceives 123`): the protocol is the name up to and
/// including its first `6`, as in node_exporter.
pub fn parse_snmp6(text: &str, keep: &dyn Fn(&str) -> bool) -> Vec<NetStat> {
    let mut out = Vec::new();
    let mut key = String::with_capacity(64);
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let (Some(name), Some(v)) = (it.next(), it.next()) else {
            continue;
        };
        let Some(six) = name.find('6') else {
            continue;
        };
        let (proto, field) = name.split_at(six + 1);
        if !is_name_part(proto) || !is_name_part(field) {
            continue;
        }
        key.clear();
        key.push_str(proto);
        key.push('_');
        key.push_str(field);
        if !keep(&key) {
            continue;
        }
        if let Some(value) = num(v) {
            out.push(NetStat {
                protocol: proto.to_string(),
                field: field.to_string(),
                value,
            });
        }
    }
    out
}

pub(crate) struct NetstatCollector {
    netstat: PathBuf,
    snmp: PathBuf,
    snmp6: PathBuf,
    buf: Buf,
    fields: NameFilter,
}

impl NetstatCollector {
    pub(crate) fn new(paths: &HostPaths, fields: NameFilter) -> Self {
        let net = paths.proc.join("1/net");
        NetstatCollector {
            netstat: net.join("netstat"),
            snmp: net.join("snmp"),
            snmp6: net.join("snmp6"),
            buf: Buf::new(),
            fields,
        }
    }
}

impl Collector for NetstatCollector {
    fn name(&self) -> &'static str {
        "netstat"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let keep = |k: &str| self.fields.allows(k);
        let mut stats = self
            .buf
            .with_file(&self.netstat, |t| Ok(parse_netstat(t, &keep)))?;
        stats.extend(
            self.buf
                .with_file(&self.snmp, |t| Ok(parse_netstat(t, &keep)))?,
        );
        // No IPv6 (ipv6.disable=1) means no snmp6; node_exporter skips it the same way.
        match self
            .buf
            .with_file(&self.snmp6, |t| Ok(parse_snmp6(t, &keep)))
        {
            Ok(s) => stats.extend(s),
            Err(e) if e.is_unavailable() => {}
            Err(e) => return Err(e),
        }
        let mut seen = HashSet::with_capacity(stats.len());
        let mut out = Vec::with_capacity(stats.len());
        for s in stats {
            let name = format!("node_netstat_{}_{}", s.protocol, s.field);
            if !seen.insert(name.clone()) {
                continue;
            }
            out.push(MetricFamily::single(
                name,
                format!("Statistic {}{}.", s.protocol, s.field),
                MetricType::Untyped,
                s.value,
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_NETSTAT_FIELDS;
    use proptest::prelude::*;

    const NETSTAT: &str = include_str!("../../tests/fixtures/proc/1/net/netstat");
    const SNMP: &str = include_str!("../../tests/fixtures/proc/1/net/snmp");
    const SNMP6: &str = include_str!("../../tests/fixtures/proc/1/net/snmp6");

    fn keys(v: &[NetStat]) -> Vec<String> {
        v.iter()
            .map(|s| format!("{}_{}", s.protocol, s.field))
            .collect()
    }

    #[test]
    fn default_fields_match_node_exporter_here() {
        let f = NameFilter::new("i", DEFAULT_NETSTAT_FIELDS, "e", "").unwrap();
        let keep = |k: &str| f.allows(k);
        let mut got = keys(&parse_netstat(NETSTAT, &keep));
        got.extend(keys(&parse_netstat(SNMP, &keep)));
        got.extend(keys(&parse_snmp6(SNMP6, &keep)));
        for k in [
            "TcpExt_ListenDrops",
            "TcpExt_TCPSynRetrans",
            "TcpExt_SyncookiesSent",
            "IpExt_InOctets",
            "Ip_Forwarding",
            "Tcp_RetransSegs",
            "Tcp_CurrEstab",
            "Udp_RcvbufErrors",
            "Icmp_InMsgs",
            "UdpLite_InErrors",
            "Ip6_InOctets",
            "Icmp6_OutMsgs",
            "Udp6_NoPorts",
            "UdpLite6_InErrors",
        ] {
            assert!(got.contains(&k.to_string()), "{k} missing: {got:?}");
        }
        assert!(!got.contains(&"Tcp_MaxConn".to_string()));
    }

    #[test]
    fn values_and_mismatches() {
        let all = |_: &str| true;
        let got = parse_netstat(
            "Tcp: RtoAlgorithm MaxConn\nTcp: 1 -1\nUdp: A B\nUdp: 1\nIp: X\nIcmp: Y\nIcmp: 7\n",
            &all,
        );
        assert_eq!(
            got,
            vec![
                NetStat {
                    protocol: "Tcp".into(),
                    field: "RtoAlgorithm".into(),
                    value: 1.0
                },
                NetStat {
                    protocol: "Tcp".into(),
                    field: "MaxConn".into(),
                    value: -1.0
                },
                NetStat {
                    protocol: "Icmp".into(),
                    field: "Y".into(),
                    value: 7.0
                },
            ]
        );
        let got = parse_snmp6("Ip6InReceives 12\nnosix 3\nUdp6 4\nIcmp6InMsgs x\n", &all);
        assert_eq!(keys(&got), vec!["Ip6_InReceives".to_string()]);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let all = |_: &str| true;
            let _ = parse_netstat(&s, &all);
            let _ = parse_snmp6(&s, &all);
        }

        #[test]
        fn truncated_never_panics(cut in 0usize..5000) {
            let all = |_: &str| true;
            let _ = parse_netstat(&NETSTAT[..cut.min(NETSTAT.len())], &all);
            let _ = parse_netstat(&SNMP[..cut.min(SNMP.len())], &all);
            let _ = parse_snmp6(&SNMP6[..cut.min(SNMP6.len())], &all);
        }

        #[test]
        fn line_shaped_garbage_never_panics(lines in proptest::collection::vec("(Tcp|Ip6?|Udp): ?[A-Za-z0-9 -]{0,30}", 0..12)) {
            let all = |_: &str| true;
            let _ = parse_netstat(&lines.join("\n"), &all);
        }
    }
}
