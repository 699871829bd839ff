//! `[network]` configuration.

use std::collections::BTreeMap;

use nodescope_model::config::Issues;
use serde::Deserialize;

/// Probe names: the `probe` label of `nodescope_probe_up` and the keys of `[network.probes]`.
pub const PROBE_CONNECT: &str = "tcp_connect";
pub const PROBE_RTT: &str = "tcp_rtt";
pub const PROBE_RETRANSMITS: &str = "tcp_retransmits";
pub const PROBE_RESETS: &str = "tcp_resets";
pub const PROBE_DROPS: &str = "packet_drops";
/// The DNS probe (`ebpf/c/dns.bpf.c`, two cgroup_skb programs on the cgroup2 root).
pub const PROBE_DNS: &str = "dns";

/// Default raw tracepoints, per BPF program: `(probe, program, hook)`.
pub const PROGRAMS: [(&str, &str, &str); 7] = [
    (PROBE_CONNECT, "ns_set_state", "inet_sock_set_state"),
    (PROBE_RTT, "ns_tcp_probe", "tcp_probe"),
    (PROBE_RETRANSMITS, "ns_retransmit", "tcp_retransmit_skb"),
    (
        PROBE_RETRANSMITS,
        "ns_retransmit_synack",
        "tcp_retransmit_synack",
    ),
    (PROBE_RESETS, "ns_send_reset", "tcp_send_reset"),
    (PROBE_RESETS, "ns_receive_reset", "tcp_receive_reset"),
    (PROBE_DROPS, "ns_kfree_skb", "kfree_skb"),
];

/// Which probes to attach.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ProbesConfig {
    /// `inet_sock_set_state`: connect latency and errors, accepted connections, duration,
    /// active connections, bytes, close-time RTT.
    pub tcp_connect: bool,
    /// `tcp_probe`: live smoothed RTT, throttled per socket.
    pub tcp_rtt: bool,
    /// `tcp_retransmit_skb` + `tcp_retransmit_synack`.
    pub tcp_retransmits: bool,
    /// `tcp_send_reset` + `tcp_receive_reset`.
    pub tcp_resets: bool,
    /// `kfree_skb`: drops by reason (node-wide).
    pub packet_drops: bool,
    /// cgroup_skb egress + ingress on the cgroup2 root: DNS latency, answer codes,
    /// lookups. Settings in `[network.dns]`.
    pub dns: bool,
}

impl Default for ProbesConfig {
    fn default() -> Self {
        ProbesConfig {
            tcp_connect: true,
            tcp_rtt: true,
            tcp_retransmits: true,
            tcp_resets: true,
            packet_drops: true,
            dns: true,
        }
    }
}

impl ProbesConfig {
    pub fn enabled(&self, probe: &str) -> bool {
        match probe {
            PROBE_CONNECT => self.tcp_connect,
            PROBE_RTT => self.tcp_rtt,
            PROBE_RETRANSMITS => self.tcp_retransmits,
            PROBE_RESETS => self.tcp_resets,
            PROBE_DROPS => self.packet_drops,
            PROBE_DNS => self.dns,
            _ => false,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    pub enabled: bool,
    /// Maximum distinct (workload, peer, port, direction) series kept in the kernel.
    /// Beyond it, updates land in `peer_address="other"` and are counted.
    pub peer_cap: u32,
    /// Maximum (workload, direction) entries of the "other" overflow map.
    pub other_cap: u32,
    /// Maximum sockets tracked at once (connecting or established since start).
    pub socket_cap: u32,
    /// A successful connect at least this slow is reported as an event.
    pub slow_connect_threshold_seconds: f64,
    /// Node-wide limit on notable events (failed / slow connects, resets) per second.
    pub events_per_second: u32,
    /// At most one RTT sample per socket per this interval.
    pub rtt_sample_interval_seconds: f64,
    /// A peer with no open connection and no update for this long is folded into
    /// `peer_address="other"` (its counts are kept there), freeing its slot. 0 = never.
    pub peer_idle_timeout_seconds: u64,
    /// Bound of the cgroup id -> workload cache.
    pub workload_cache_size: usize,
    /// Entries returned by `/api/v1/network/connections` per list (max 1000).
    pub top_peers: usize,
    pub probes: ProbesConfig,
    /// The DNS probe (`probes.dns`).
    pub dns: DnsConfig,
    /// Packet drops by workload and reason (`probes.packet_drops`).
    pub drops: DropsConfig,
    /// Most series all network families together produce in one scrape or push. Beyond
    /// it the least active peers fold into `peer_address="other"` (then the least active
    /// workloads into `workload="other"`), and stay folded; the folds are counted.
    pub series_budget: usize,
    /// Off-cluster peers aggregated by address range: the longest matching prefix names
    /// the peer (`peer_address=<name>`, the port kept). Peers named by Kubernetes first.
    pub peer_cidrs: Vec<PeerCidr>,
    /// Overrides of the raw tracepoint each program attaches to, keyed by the default
    /// hook name (e.g. `tcp_probe = "tcp_probe"`), for kernels that renamed one.
    pub hooks: BTreeMap<String, String>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            enabled: true,
            peer_cap: 4096,
            other_cap: 1024,
            socket_cap: 16384,
            slow_connect_threshold_seconds: 0.5,
            events_per_second: 100,
            rtt_sample_interval_seconds: 1.0,
            peer_idle_timeout_seconds: 600,
            workload_cache_size: 4096,
            top_peers: 20,
            probes: ProbesConfig::default(),
            dns: DnsConfig::default(),
            drops: DropsConfig::default(),
            series_budget: 10_000,
            peer_cidrs: Vec::new(),
            hooks: BTreeMap::new(),
        }
    }
}

/// Most entries of `peer_cidrs`.
pub const MAX_PEER_CIDRS: usize = 1024;

/// One `[[network.peer_cidrs]]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerCidr {
    /// `10.0.0.0/8`, `2001:db8::/32`.
    pub cidr: String,
    /// The `peer_address` value for peers in the range; empty: the range itself.
    #[serde(default)]
    pub name: String,
}

impl PeerCidr {
    pub fn net(&self) -> Option<ipnet::IpNet> {
        self.cidr
            .trim()
            .parse::<ipnet::IpNet>()
            .ok()
            .map(|n| n.trunc())
    }

    pub fn label(&self) -> String {
        if self.name.is_empty() {
            self.net().map(|n| n.to_string()).unwrap_or_default()
        } else {
            self.name.clone()
        }
    }
}

/// `[network.drops]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DropsConfig {
    /// Count the benign reasons too (docs/network.md, "Drop reasons": e.g. `queue_purge`,
    /// one per closed connection). Off: they cost one array load per drop and no series.
    pub benign: bool,
    /// Distinct workload x reason counters in the kernel; beyond it, workload "other".
    pub cap: u32,
}

impl Default for DropsConfig {
    fn default() -> Self {
        DropsConfig {
            benign: false,
            cap: 1024,
        }
    }
}

/// `[network.dns]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Server ports recognised as DNS, over UDP and TCP (1 to 4 ports).
    pub ports: Vec<u16>,
    /// A query unanswered this long is a timeout (`rcode="timeout"`, and an event).
    pub timeout_seconds: f64,
    /// An answer at least this slow is an event.
    pub slow_threshold_seconds: f64,
    /// A thread's query for a name (first label) continues its lookup when sent within
    /// this time of the lookup's previous answer (see docs/network.md, "DNS lookups").
    pub lookup_gap_seconds: f64,
    /// Queries in flight tracked at once, node-wide.
    pub inflight_cap: u32,
    /// Distinct workload x server x qtype x rcode x transport aggregates in the kernel;
    /// beyond it, server "other".
    pub stats_cap: u32,
    /// Entries of the server "other" overflow map.
    pub other_cap: u32,
    /// NXDOMAIN answers are events too (off: search-path expansions make them routine).
    pub nxdomain_events: bool,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            ports: vec![53],
            timeout_seconds: 5.0,
            slow_threshold_seconds: 0.25,
            lookup_gap_seconds: 0.1,
            inflight_cap: 4096,
            stats_cap: 4096,
            other_cap: 1024,
            nxdomain_events: false,
        }
    }
}

impl DnsConfig {
    pub fn validate(&self, prefix: &str, issues: &mut Issues) {
        let k = |f: &str| format!("{prefix}.{f}");
        issues.check(
            (1..=nodescope_ebpf::dns::PORTS).contains(&self.ports.len())
                && self.ports.iter().all(|&p| p != 0),
            k("ports"),
            format!(
                "must list 1 to {} non-zero ports",
                nodescope_ebpf::dns::PORTS
            ),
        );
        let secs = |v: f64, lo: f64, hi: f64| v.is_finite() && v >= lo && v <= hi;
        issues.check(
            secs(self.timeout_seconds, 0.1, 60.0),
            k("timeout_seconds"),
            "must be a number of seconds in [0.1, 60]",
        );
        issues.check(
            secs(self.slow_threshold_seconds, 0.0001, 60.0),
            k("slow_threshold_seconds"),
            "must be a number of seconds in [0.0001, 60]",
        );
        issues.check(
            secs(self.lookup_gap_seconds, 0.001, 10.0),
            k("lookup_gap_seconds"),
            "must be a number of seconds in [0.001, 10]",
        );
        issues.check(
            (64..=1_000_000).contains(&self.inflight_cap),
            k("inflight_cap"),
            "must be between 64 and 1000000",
        );
        issues.check(
            (16..=1_000_000).contains(&self.stats_cap),
            k("stats_cap"),
            "must be between 16 and 1000000",
        );
        issues.check(
            (16..=100_000).contains(&self.other_cap),
            k("other_cap"),
            "must be between 16 and 100000",
        );
    }
}

fn valid_hook_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl NetworkConfig {
    /// Records every problem under `prefix` (normally `network`).
    pub fn validate(&self, prefix: &str, issues: &mut Issues) {
        let k = |f: &str| format!("{prefix}.{f}");
        issues.check(
            (16..=1_000_000).contains(&self.peer_cap),
            k("peer_cap"),
            "must be between 16 and 1000000",
        );
        issues.check(
            (16..=100_000).contains(&self.other_cap),
            k("other_cap"),
            "must be between 16 and 100000",
        );
        issues.check(
            (256..=4_194_304).contains(&self.socket_cap),
            k("socket_cap"),
            "must be between 256 and 4194304",
        );
        issues.check(
            self.slow_connect_threshold_seconds.is_finite()
                && self.slow_connect_threshold_seconds > 0.0
                && self.slow_connect_threshold_seconds <= 3600.0,
            k("slow_connect_threshold_seconds"),
            "must be a number of seconds in (0, 3600]",
        );
        issues.check(
            self.events_per_second <= 100_000,
            k("events_per_second"),
            "must be at most 100000 (0 disables events)",
        );
        issues.check(
            self.rtt_sample_interval_seconds.is_finite()
                && self.rtt_sample_interval_seconds >= 0.001
                && self.rtt_sample_interval_seconds <= 3600.0,
            k("rtt_sample_interval_seconds"),
            "must be a number of seconds in [0.001, 3600]",
        );
        issues.check(
            (16..=1_000_000).contains(&self.workload_cache_size),
            k("workload_cache_size"),
            "must be between 16 and 1000000",
        );
        issues.check(
            (1..=1000).contains(&self.top_peers),
            k("top_peers"),
            "must be between 1 and 1000",
        );
        self.dns.validate(&k("dns"), issues);
        issues.check(
            (16..=100_000).contains(&self.drops.cap),
            k("drops.cap"),
            "must be between 16 and 100000",
        );
        issues.check(
            (200..=10_000_000).contains(&self.series_budget),
            k("series_budget"),
            "must be between 200 and 10000000",
        );
        issues.check(
            self.peer_cidrs.len() <= MAX_PEER_CIDRS,
            k("peer_cidrs"),
            format!("at most {MAX_PEER_CIDRS} entries"),
        );
        for (i, c) in self.peer_cidrs.iter().enumerate() {
            if c.net().is_none() {
                issues.push(
                    format!("{prefix}.peer_cidrs[{i}].cidr"),
                    format!("{:?} is not an address range like 10.0.0.0/8", c.cidr),
                );
            }
            let ok = c.name.len() <= 63
                && c.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-:/".contains(&b))
                && c.name != crate::aggregate::OTHER;
            issues.check(
                ok,
                format!("{prefix}.peer_cidrs[{i}].name"),
                "must be at most 63 characters [A-Za-z0-9._-:/], and not \"other\"",
            );
        }
        for (from, to) in &self.hooks {
            if !PROGRAMS.iter().any(|(_, _, h)| h == from) {
                let known: Vec<&str> = PROGRAMS.iter().map(|(_, _, h)| *h).collect();
                issues.push(
                    format!("{prefix}.hooks.{from}"),
                    format!("unknown hook; known hooks: {}", known.join(", ")),
                );
            }
            if !valid_hook_name(to) {
                issues.push(
                    format!("{prefix}.hooks.{from}"),
                    "must be a tracepoint name of 1-64 characters [A-Za-z0-9_]",
                );
            }
        }
    }

    /// The hook `program` attaches to, after overrides.
    pub fn hook_for<'a>(&'a self, default_hook: &'a str) -> &'a str {
        self.hooks
            .get(default_hook)
            .map(String::as_str)
            .unwrap_or(default_hook)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_parse_from_empty() {
        let c: NetworkConfig = toml::from_str("").unwrap();
        assert_eq!(c, NetworkConfig::default());
        let mut i = Issues::default();
        c.validate("network", &mut i);
        assert!(i.is_empty(), "{:?}", i.list);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let c: NetworkConfig = toml::from_str(
            r#"
            peer_cap = 1
            other_cap = 0
            socket_cap = 1
            slow_connect_threshold_seconds = -1.0
            events_per_second = 1000000
            rtt_sample_interval_seconds = 0.0
            workload_cache_size = 0
            top_peers = 0
            series_budget = 5
            [drops]
            cap = 1
            [dns]
            ports = []
            timeout_seconds = 0.0
            slow_threshold_seconds = 100.0
            lookup_gap_seconds = -1.0
            inflight_cap = 1
            stats_cap = 1
            other_cap = 1
            [[peer_cidrs]]
            cidr = "10.0.0.0/33"
            name = "bad name"
            [hooks]
            tcp_probe = "bad name"
            nope = "x"
            "#,
        )
        .unwrap();
        let mut i = Issues::default();
        c.validate("network", &mut i);
        let keys: Vec<&str> = i.list.iter().map(|x| x.key.as_str()).collect();
        for k in [
            "network.peer_cap",
            "network.other_cap",
            "network.socket_cap",
            "network.slow_connect_threshold_seconds",
            "network.events_per_second",
            "network.rtt_sample_interval_seconds",
            "network.workload_cache_size",
            "network.top_peers",
            "network.dns.ports",
            "network.dns.timeout_seconds",
            "network.dns.slow_threshold_seconds",
            "network.dns.lookup_gap_seconds",
            "network.dns.inflight_cap",
            "network.dns.stats_cap",
            "network.dns.other_cap",
            "network.series_budget",
            "network.drops.cap",
            "network.peer_cidrs[0].cidr",
            "network.peer_cidrs[0].name",
            "network.hooks.tcp_probe",
            "network.hooks.nope",
        ] {
            assert!(keys.contains(&k), "missing {k} in {keys:?}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(toml::from_str::<NetworkConfig>("peercap = 3").is_err());
        assert!(toml::from_str::<NetworkConfig>("[probes]\ntcp_rt = false").is_err());
        assert!(toml::from_str::<NetworkConfig>("[dns]\nport = 53").is_err());
        let c: NetworkConfig = toml::from_str("[dns]\nports = [53, 5353]").unwrap();
        assert_eq!(c.dns.ports, vec![53, 5353]);
    }

    #[test]
    fn hook_override() {
        let mut c = NetworkConfig::default();
        c.hooks.insert("tcp_probe".into(), "tcp_probe2".into());
        assert_eq!(c.hook_for("tcp_probe"), "tcp_probe2");
        assert_eq!(c.hook_for("kfree_skb"), "kfree_skb");
    }
}
