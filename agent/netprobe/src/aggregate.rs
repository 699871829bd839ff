//! User-space side of the aggregation: kernel map entries -> labelled rows -> metric
//! families and the top-peers view. Pure functions, unit-tested without a kernel.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use nodescope_ebpf::net::{
    ip_from_bytes, PeerKey, PeerStats, CONNECT_BOUNDS_NS, DIR_INBOUND, DURATION_BOUNDS_NS,
    RTT_BOUNDS_US,
};
use nodescope_model::workload::PodRef;
use nodescope_model::{Histogram, MetricFamily, MetricType};
use serde::Serialize;

use crate::workload::Resolved;

/// Label value for peers beyond the cardinality cap (address and port).
pub const OTHER: &str = "other";

pub const ERROR_NAMES: [&str; 5] = ["refused", "timeout", "reset", "unreachable", "other"];

/// Linux TCP states (include/net/tcp_states.h), the reason of a received reset.
pub const TCP_STATES: [&str; 16] = [
    "unknown",
    "established",
    "syn_sent",
    "syn_recv",
    "fin_wait1",
    "fin_wait2",
    "time_wait",
    "close",
    "close_wait",
    "last_ack",
    "listen",
    "closing",
    "new_syn_recv",
    "bound_inactive",
    "state_14",
    "state_15",
];

pub fn error_name(i: usize) -> &'static str {
    ERROR_NAMES.get(i).copied().unwrap_or("other")
}

/// Reason names for sent resets (`enum sk_rst_reason`) and drops (`enum skb_drop_reason`),
/// read from the running kernel's tracepoint formats; numeric fallback.
#[derive(Clone, Debug, Default)]
pub struct ReasonNames {
    pub reset: HashMap<u32, String>,
    pub drop: HashMap<u32, String>,
}

impl ReasonNames {
    pub fn reset(&self, v: u32) -> String {
        if v as usize >= nodescope_ebpf::net::RST_REASON_SLOTS - 1 {
            return "other".into();
        }
        self.reset
            .get(&v)
            .cloned()
            .unwrap_or_else(|| format!("reason_{v}"))
    }
    pub fn drop(&self, v: u32) -> String {
        if v as usize >= nodescope_ebpf::net::DROP_SLOTS - 1 {
            return "other".into();
        }
        self.drop
            .get(&v)
            .cloned()
            .unwrap_or_else(|| format!("reason_{v}"))
    }

    /// Reads `events/skb/kfree_skb/format` and `events/tcp/tcp_send_reset/format`.
    pub fn from_tracefs(tracefs: &std::path::Path) -> Self {
        let read = |p: &str| std::fs::read_to_string(tracefs.join(p)).unwrap_or_default();
        ReasonNames {
            drop: parse_print_symbolic(&read("events/skb/kfree_skb/format"), "REC->reason"),
            reset: parse_print_symbolic(&read("events/tcp/tcp_send_reset/format"), "REC->reason"),
        }
    }
}

/// Parses `__print_symbolic(<field>, { 2, "NOT_SPECIFIED" }, ...)` from a tracepoint
/// `format` file into lower-case names. Entries whose value is not a number are skipped.
pub fn parse_print_symbolic(format: &str, field: &str) -> HashMap<u32, String> {
    let mut out = HashMap::new();
    let needle = format!("__print_symbolic({field},");
    let Some(start) = format.find(&needle) else {
        return out;
    };
    let mut rest = &format[start + needle.len()..];
    loop {
        let t = rest.trim_start();
        let Some(t) = t.strip_prefix('{') else { break };
        let Some(end) = t.find('}') else { break };
        let item = &t[..end];
        rest = t[end + 1..].trim_start();
        if let Some((num, name)) = item.split_once(',') {
            let name = name.trim().trim_matches('"');
            if let Ok(n) = num.trim().parse::<u32>() {
                if !name.is_empty() && name.len() <= 64 {
                    out.insert(n, name.to_ascii_lowercase());
                }
            }
        }
        match rest.strip_prefix(',') {
            Some(r) => rest = r,
            None => break,
        }
        if out.len() > 4096 {
            break;
        }
    }
    out
}

/// The identity of one exported series group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RowKey {
    pub workload: String,
    /// `(namespace, pod, container)` when a pod lookup is configured (empty strings when
    /// it does not resolve); None when no lookup is configured.
    pub pod: Option<(String, String, String)>,
    /// `(peer_namespace, peer_workload)` when peer naming is on (a pod lookup is
    /// configured or a CIDR table is set): empty strings for a peer with no name.
    pub peer_named: Option<(String, String)>,
    pub peer_address: String,
    pub peer_port: String,
    pub direction: &'static str,
}

pub fn direction_name(d: u8) -> &'static str {
    if d == DIR_INBOUND {
        "inbound"
    } else {
        "outbound"
    }
}

impl RowKey {
    pub fn new(w: &Resolved, pod: Option<Option<PodRef>>, key: &PeerKey, overflow: bool) -> Self {
        let (peer_address, peer_port) = if overflow {
            (OTHER.to_string(), OTHER.to_string())
        } else {
            (ip_from_bytes(&key.addr).to_string(), key.port.to_string())
        };
        RowKey {
            workload: w.id.clone(),
            pod: pod.map(|p| {
                p.map(|p| (p.namespace, p.pod, p.container))
                    .unwrap_or_default()
            }),
            peer_named: None,
            peer_address,
            peer_port,
            direction: direction_name(key.direction),
        }
    }

    /// This row's key folded into its workload's `other` peer.
    pub fn to_other(&self) -> RowKey {
        RowKey {
            workload: self.workload.clone(),
            pod: self.pod.clone(),
            peer_named: self.peer_named.as_ref().map(|_| Default::default()),
            peer_address: OTHER.into(),
            peer_port: OTHER.into(),
            direction: self.direction,
        }
    }

    pub fn is_other(&self) -> bool {
        self.peer_address == OTHER && self.peer_named.as_ref().is_none_or(|(_, w)| w.is_empty())
    }

    fn labels(&self) -> Vec<(&'static str, String)> {
        let mut l = vec![("workload", self.workload.clone())];
        if let Some((ns, pod, c)) = &self.pod {
            l.push(("namespace", ns.clone()));
            l.push(("pod", pod.clone()));
            l.push(("container", c.clone()));
        }
        if let Some((ns, w)) = &self.peer_named {
            l.push(("peer_namespace", ns.clone()));
            l.push(("peer_workload", w.clone()));
        }
        l.push(("peer_address", self.peer_address.clone()));
        l.push(("peer_port", self.peer_port.clone()));
        l
    }
}

pub type Rows = BTreeMap<RowKey, PeerStats>;

/// Labels of a row without its direction.
type BaseLabels = Vec<(&'static str, String)>;

/// Merges `stats` into the row `key`.
pub fn add_row(rows: &mut Rows, key: RowKey, stats: &PeerStats) {
    rows.entry(key).or_default().merge(stats);
}

fn secs_bounds(b: &[u64], per_sec: f64) -> Vec<f64> {
    b.iter().map(|&x| x as f64 / per_sec).collect()
}

pub fn connect_bounds() -> Vec<f64> {
    secs_bounds(&CONNECT_BOUNDS_NS, 1e9)
}
pub fn rtt_bounds() -> Vec<f64> {
    secs_bounds(&RTT_BOUNDS_US, 1e6)
}
pub fn duration_bounds() -> Vec<f64> {
    secs_bounds(&DURATION_BOUNDS_NS, 1e9)
}

/// Prometheus-style `histogram_quantile` over per-slot counts (last slot = overflow):
/// linear interpolation inside the bucket; the overflow bucket yields the last bound.
pub fn quantile(counts: &[u64], bounds: &[f64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * total as f64;
    let mut acc = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        let prev = acc;
        acc += c;
        if (acc as f64) >= rank && c > 0 {
            let Some(&hi) = bounds.get(i) else {
                return bounds.last().copied();
            };
            let lo = if i == 0 { 0.0 } else { bounds[i - 1] };
            return Some(lo + (hi - lo) * ((rank - prev as f64) / c as f64));
        }
    }
    bounds.last().copied()
}

fn hist(counts: &[u64], bounds: &[f64], sum: f64) -> Histogram {
    Histogram::from_bucket_counts(bounds, counts, sum)
}

/// Renders rows into the network metric families (names exactly as in issue 3).
pub fn families(rows: &Rows, names: &ReasonNames) -> Vec<MetricFamily> {
    let cb = connect_bounds();
    let rb = rtt_bounds();
    let db = duration_bounds();
    let mut connect = MetricFamily::new(
        "nodescope_tcp_connect_duration_seconds",
        "TCP connect latency (SYN_SENT to ESTABLISHED), per workload and peer.",
        MetricType::Histogram,
    );
    let mut errors = MetricFamily::new(
        "nodescope_tcp_connect_errors_total",
        "Failed TCP connects (SYN_SENT to CLOSE) by socket error.",
        MetricType::Counter,
    );
    let mut rtt = MetricFamily::new(
        "nodescope_tcp_rtt_seconds",
        "Smoothed TCP RTT samples (tcp_probe, at most one per socket per interval, plus one at close for unsampled sockets).",
        MetricType::Histogram,
    );
    let mut retrans = MetricFamily::new(
        "nodescope_tcp_retransmits_total",
        "TCP segment and SYN-ACK retransmissions.",
        MetricType::Counter,
    );
    let mut duration = MetricFamily::new(
        "nodescope_tcp_connection_duration_seconds",
        "Lifetime of TCP connections from ESTABLISHED to CLOSE.",
        MetricType::Histogram,
    );
    let mut active = MetricFamily::new(
        "nodescope_tcp_connections_active",
        "TCP connections established since the probe started and not yet closed.",
        MetricType::Gauge,
    );
    // Families whose own `direction` label (sent/received) replaces the connection
    // direction: aggregate first so inbound and outbound rows with equal labels merge.
    let mut resets: BTreeMap<(BaseLabels, &'static str, String), u64> = BTreeMap::new();
    let mut bytes: BTreeMap<(BaseLabels, &'static str), u64> = BTreeMap::new();

    for (k, s) in rows {
        let base = k.labels();
        let with_dir = || {
            let mut l = base.clone();
            l.push(("direction", k.direction.to_string()));
            l
        };
        let nconnect: u64 = s.connect_hist.iter().sum();
        if nconnect > 0 {
            connect.push_histogram(
                with_dir(),
                hist(&s.connect_hist, &cb, s.connect_sum_ns as f64 / 1e9),
            );
        }
        for (i, &n) in s.connect_errors.iter().enumerate() {
            if n > 0 {
                let mut l = with_dir();
                l.push(("error", error_name(i).to_string()));
                errors.push(l, n as f64);
            }
        }
        if s.rtt_hist.iter().any(|&n| n > 0) {
            rtt.push_histogram(
                with_dir(),
                hist(&s.rtt_hist, &rb, s.rtt_sum_us as f64 / 1e6),
            );
        }
        if s.retransmits > 0 {
            retrans.push(with_dir(), s.retransmits as f64);
        }
        let nclosed: u64 = s.duration_hist.iter().sum();
        if nclosed > 0 {
            duration.push_histogram(
                with_dir(),
                hist(&s.duration_hist, &db, s.duration_sum_ns as f64 / 1e9),
            );
        }
        if nconnect > 0 || nclosed > 0 || s.active != 0 {
            active.push(with_dir(), s.active.max(0) as f64);
        }
        for (i, &n) in s.resets_sent.iter().enumerate() {
            if n > 0 {
                *resets
                    .entry((base.clone(), "sent", names.reset(i as u32)))
                    .or_default() += n;
            }
        }
        for (i, &n) in s.resets_received.iter().enumerate() {
            if n > 0 {
                let st = TCP_STATES.get(i).copied().unwrap_or("unknown").to_string();
                *resets.entry((base.clone(), "received", st)).or_default() += n;
            }
        }
        if s.bytes_sent > 0 {
            *bytes.entry((base.clone(), "sent")).or_default() += s.bytes_sent;
        }
        if s.bytes_received > 0 {
            *bytes.entry((base.clone(), "received")).or_default() += s.bytes_received;
        }
    }
    let mut resets_f = MetricFamily::new(
        "nodescope_tcp_resets_total",
        "TCP resets sent (reason: kernel sk_rst_reason) and received (reason: socket state).",
        MetricType::Counter,
    );
    for ((mut l, dir, reason), n) in resets {
        l.push(("direction", dir.to_string()));
        l.push(("reason", reason));
        resets_f.push(l, n as f64);
    }
    let mut bytes_f = MetricFamily::new(
        "nodescope_tcp_bytes_total",
        "TCP payload bytes of closed connections (bytes_acked sent, bytes_received received).",
        MetricType::Counter,
    );
    for ((mut l, dir), n) in bytes {
        l.push(("direction", dir.to_string()));
        bytes_f.push(l, n as f64);
    }
    vec![
        connect, errors, rtt, retrans, resets_f, duration, active, bytes_f,
    ]
}

/// Drop reasons (`enum skb_drop_reason`, lower case) that are part of normal operation:
/// not counted unless `[network.drops] benign = true`. Every other reason, including
/// reasons a newer kernel adds, is harmful: counted. The table in docs/network.md says
/// why each one is here.
pub const BENIGN_DROPS: &[&str] = &[
    "socket_close",
    "queue_purge",
    "tcp_close",
    "tcp_reset",
    "tcp_old_data",
    "tcp_ofomerge",
    "tcp_old_ack",
    "tcp_too_old_ack",
    "tcp_old_sequence",
    "tcp_fastopen",
    "unix_disconnect",
    "unix_skip_oob",
    "otherhost",
    "unicast_in_l2_multicast",
    "ipv6_ndisc_ns_otherhost",
    "dup_frag",
];

/// `harmful` or `benign` (the `class` label of `nodescope_packet_drops_total`); a reason
/// without a name (tracefs unreadable) is `unknown`.
pub fn drop_class(name: &str) -> &'static str {
    if BENIGN_DROPS.contains(&name) {
        "benign"
    } else if name.starts_with("reason_") {
        "unknown"
    } else {
        "harmful"
    }
}

/// Drops of one workload and reason.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DropRow {
    pub workload: String,
    pub pod: Option<(String, String, String)>,
    pub reason: String,
}

/// `nodescope_packet_drops_total{workload, [namespace, pod, container,] reason, class}`.
pub fn drops_family(rows: &BTreeMap<DropRow, u64>) -> MetricFamily {
    let mut f = MetricFamily::new(
        "nodescope_packet_drops_total",
        "Packets dropped (kfree_skb), by the workload whose socket sent or was to receive them (\"unattributed\": no socket) and kernel drop reason; class harmful or benign (benign reasons only with network.drops.benign).",
        MetricType::Counter,
    );
    for (r, &n) in rows {
        if n == 0 {
            continue;
        }
        let mut l = vec![("workload", r.workload.clone())];
        if let Some((ns, pod, c)) = &r.pod {
            l.push(("namespace", ns.clone()));
            l.push(("pod", pod.clone()));
            l.push(("container", c.clone()));
        }
        l.push(("reason", r.reason.clone()));
        l.push(("class", drop_class(&r.reason).to_string()));
        f.push(l, n as f64);
    }
    f
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PeerSummary {
    pub workload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_workload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub peer_address: String,
    pub peer_port: String,
    pub direction: &'static str,
    pub connects: u64,
    pub connect_errors: u64,
    pub connect_p99_seconds: Option<f64>,
    pub connect_mean_seconds: Option<f64>,
    pub rtt_samples: u64,
    pub rtt_p99_seconds: Option<f64>,
    pub rtt_mean_seconds: Option<f64>,
    pub retransmits: u64,
    pub active: i64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TopPeers {
    pub by_connect_p99: Vec<PeerSummary>,
    pub by_rtt_p99: Vec<PeerSummary>,
}

pub fn summarize(k: &RowKey, s: &PeerStats) -> PeerSummary {
    let connects: u64 = s.connect_hist.iter().sum();
    let rtt_samples: u64 = s.rtt_hist.iter().sum();
    let (namespace, pod, container) = match &k.pod {
        Some((n, p, c)) => (Some(n.clone()), Some(p.clone()), Some(c.clone())),
        None => (None, None, None),
    };
    PeerSummary {
        workload: k.workload.clone(),
        peer_namespace: k.peer_named.as_ref().map(|(n, _)| n.clone()),
        peer_workload: k.peer_named.as_ref().map(|(_, w)| w.clone()),
        namespace,
        pod,
        container,
        peer_address: k.peer_address.clone(),
        peer_port: k.peer_port.clone(),
        direction: k.direction,
        connects,
        connect_errors: s.connect_errors.iter().sum(),
        connect_p99_seconds: quantile(&s.connect_hist, &connect_bounds(), 0.99),
        connect_mean_seconds: (connects > 0)
            .then(|| s.connect_sum_ns as f64 / 1e9 / connects as f64),
        rtt_samples,
        rtt_p99_seconds: quantile(&s.rtt_hist, &rtt_bounds(), 0.99),
        rtt_mean_seconds: (rtt_samples > 0).then(|| s.rtt_sum_us as f64 / 1e6 / rtt_samples as f64),
        retransmits: s.retransmits,
        active: s.active,
    }
}

/// The `n` peers with the highest p99 connect latency and the highest p99 RTT.
pub fn top_peers(rows: &Rows, n: usize) -> TopPeers {
    let all: Vec<PeerSummary> = rows.iter().map(|(k, s)| summarize(k, s)).collect();
    let pick = |f: fn(&PeerSummary) -> Option<f64>| {
        let mut v: Vec<&PeerSummary> = all.iter().filter(|p| f(p).is_some()).collect();
        v.sort_by(|a, b| f(b).partial_cmp(&f(a)).unwrap_or(std::cmp::Ordering::Equal));
        v.into_iter().take(n).cloned().collect::<Vec<_>>()
    };
    TopPeers {
        by_connect_p99: pick(|p| p.connect_p99_seconds),
        by_rtt_p99: pick(|p| p.rtt_p99_seconds),
    }
}

/// The series a row contributes to [`families`] at most (histogram buckets, `+Inf`, sum
/// and count; one per counter or gauge value, per error class and per reset reason), for
/// the series budget. An upper bound: rows that share labels but not the direction merge
/// their reset and byte series.
pub fn row_series(s: &PeerStats) -> usize {
    let h = |counts: &[u64], bounds: usize| {
        if counts.iter().any(|&n| n > 0) {
            bounds + 3
        } else {
            0
        }
    };
    let nconnect: u64 = s.connect_hist.iter().sum();
    let nclosed: u64 = s.duration_hist.iter().sum();
    let nonzero = |v: &[u64]| v.iter().filter(|&&n| n > 0).count();
    h(&s.connect_hist, CONNECT_BOUNDS_NS.len())
        + h(&s.rtt_hist, RTT_BOUNDS_US.len())
        + h(&s.duration_hist, DURATION_BOUNDS_NS.len())
        + nonzero(&s.connect_errors)
        + usize::from(s.retransmits > 0)
        + usize::from(nconnect > 0 || nclosed > 0 || s.active != 0)
        + nonzero(&s.resets_sent)
        + nonzero(&s.resets_received)
        + usize::from(s.bytes_sent > 0)
        + usize::from(s.bytes_received > 0)
}

/// How much a row has done: connects, failures, closes, RTT samples, retransmits and
/// resets. The series budget folds the least active rows first.
pub fn activity(s: &PeerStats) -> u64 {
    let sum = |v: &[u64]| v.iter().fold(0u64, |a, b| a.saturating_add(*b));
    sum(&s.connect_hist)
        .saturating_add(sum(&s.connect_errors))
        .saturating_add(sum(&s.duration_hist))
        .saturating_add(sum(&s.rtt_hist))
        .saturating_add(s.retransmits)
        .saturating_add(sum(&s.resets_sent))
        .saturating_add(sum(&s.resets_received))
}

/// Label keys used by the families, for docs and tests.
pub fn label_keys(with_pods: bool) -> Vec<Cow<'static, str>> {
    let mut v: Vec<Cow<'static, str>> = vec!["workload".into()];
    if with_pods {
        v.extend(["namespace".into(), "pod".into(), "container".into()]);
    }
    v.extend(["peer_address".into(), "peer_port".into()]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Resolved;
    use nodescope_model::workload::WorkloadKind;
    use nodescope_model::Value;
    use proptest::prelude::*;

    fn w(id: &str) -> Resolved {
        Resolved {
            kind: WorkloadKind::SystemdUnit,
            id: id.into(),
            path: String::new(),
        }
    }

    fn key(addr: [u8; 4], port: u16, dir: u8) -> PeerKey {
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(&addr);
        PeerKey {
            cgroup_id: 7,
            addr: a,
            port,
            direction: dir,
            family: 2,
            _pad: 0,
        }
    }

    #[test]
    fn families_have_exact_names_labels_and_buckets() {
        let mut s = PeerStats::default();
        s.connect_hist[10] = 2; // <= 1 s
        s.connect_sum_ns = 2_020_000_000;
        s.connect_errors[0] = 3;
        s.rtt_hist[7] = 4;
        s.rtt_sum_us = 40_000;
        s.retransmits = 5;
        s.resets_sent[1] = 1;
        s.resets_received[2] = 1;
        s.duration_hist[3] = 2;
        s.bytes_sent = 10;
        s.bytes_received = 20;
        s.active = 1;
        let mut rows = Rows::new();
        add_row(
            &mut rows,
            RowKey::new(&w("a.service"), None, &key([10, 0, 0, 1], 80, 0), false),
            &s,
        );
        let mut names = ReasonNames::default();
        names.reset.insert(1, "no_socket".into());
        let fams = families(&rows, &names);
        let got: Vec<&str> = fams.iter().map(|f| f.name.as_ref()).collect();
        assert_eq!(
            got,
            [
                "nodescope_tcp_connect_duration_seconds",
                "nodescope_tcp_connect_errors_total",
                "nodescope_tcp_rtt_seconds",
                "nodescope_tcp_retransmits_total",
                "nodescope_tcp_resets_total",
                "nodescope_tcp_connection_duration_seconds",
                "nodescope_tcp_connections_active",
                "nodescope_tcp_bytes_total",
            ]
        );
        let c = &fams[0].points[0];
        let Value::Histogram(h) = &c.value else {
            panic!()
        };
        assert_eq!(h.buckets.len(), 14);
        assert_eq!(h.buckets[9].upper_bound, 0.5);
        assert_eq!(h.buckets[9].cumulative_count, 0);
        assert_eq!(h.buckets[10].upper_bound, 1.0);
        assert_eq!(h.buckets[10].cumulative_count, 2);
        assert_eq!(h.count, 2);
        assert!((h.sum - 2.02).abs() < 1e-9);
        let lk: Vec<&str> = c.labels.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(lk, ["workload", "peer_address", "peer_port", "direction"]);
        assert_eq!(c.labels[1].1, "10.0.0.1");
        let e = &fams[1].points[0];
        assert_eq!(
            e.labels.last().unwrap(),
            &("error".into(), "refused".to_string())
        );
        let resets: Vec<(String, String)> = fams[4]
            .points
            .iter()
            .map(|p| {
                let get = |k: &str| p.labels.iter().find(|(a, _)| a == k).unwrap().1.clone();
                (get("direction"), get("reason"))
            })
            .collect();
        assert!(resets.contains(&("sent".into(), "no_socket".into())));
        assert!(resets.contains(&("received".into(), "syn_sent".into())));
        assert_eq!(fams[7].points.len(), 2);
    }

    #[test]
    fn same_labels_from_two_cgroups_merge_and_other_is_labelled() {
        let mut rows = Rows::new();
        let s = PeerStats {
            retransmits: 1,
            ..Default::default()
        };
        let k = key([1, 2, 3, 4], 443, 0);
        add_row(&mut rows, RowKey::new(&w("host"), None, &k, false), &s);
        add_row(&mut rows, RowKey::new(&w("host"), None, &k, false), &s);
        add_row(&mut rows, RowKey::new(&w("host"), None, &k, true), &s);
        assert_eq!(rows.len(), 2);
        let fams = families(&rows, &ReasonNames::default());
        let r = &fams[3];
        assert_eq!(r.points.len(), 2);
        assert!(r
            .points
            .iter()
            .any(|p| p.labels[1].1 == OTHER && p.value == Value::Number(1.0)));
        assert!(r
            .points
            .iter()
            .any(|p| p.labels[1].1 == "1.2.3.4" && p.value == Value::Number(2.0)));
    }

    #[test]
    fn pod_labels_when_lookup_configured() {
        let pod = PodRef {
            namespace: "default".into(),
            pod: "web-1".into(),
            container: "nginx".into(),
            labels: vec![],
        };
        let k = RowKey::new(&w("abc"), Some(Some(pod)), &key([1, 1, 1, 1], 1, 1), false);
        let l: Vec<&str> = k.labels().iter().map(|(a, _)| *a).collect();
        assert_eq!(
            l,
            [
                "workload",
                "namespace",
                "pod",
                "container",
                "peer_address",
                "peer_port"
            ]
        );
        assert_eq!(k.direction, "inbound");
        let none = RowKey::new(&w("abc"), Some(None), &key([1, 1, 1, 1], 1, 1), false);
        assert_eq!(
            none.pod,
            Some((String::new(), String::new(), String::new()))
        );
    }

    #[test]
    fn quantiles_interpolate() {
        let b = [1.0, 2.0, 4.0];
        assert_eq!(quantile(&[0, 0, 0, 0], &b, 0.99), None);
        assert_eq!(quantile(&[0, 10, 0, 0], &b, 0.5), Some(1.5));
        assert_eq!(quantile(&[0, 0, 0, 3], &b, 0.99), Some(4.0));
        let q = quantile(&[100, 0, 0, 0], &b, 0.99).unwrap();
        assert!((q - 0.99).abs() < 1e-9);
    }

    #[test]
    fn top_peers_sorted() {
        let mut rows = Rows::new();
        for (i, slot) in [(1u8, 2usize), (2, 9), (3, 5)] {
            let mut s = PeerStats::default();
            s.connect_hist[slot] = 1;
            s.rtt_hist[slot] = 1;
            add_row(
                &mut rows,
                RowKey::new(&w("x"), None, &key([9, 9, 9, i], 80, 0), false),
                &s,
            );
        }
        let t = top_peers(&rows, 2);
        assert_eq!(t.by_connect_p99.len(), 2);
        assert_eq!(t.by_connect_p99[0].peer_address, "9.9.9.2");
        assert_eq!(t.by_connect_p99[1].peer_address, "9.9.9.3");
        assert_eq!(t.by_rtt_p99[0].peer_address, "9.9.9.2");
        let j = serde_json::to_value(&t).unwrap();
        assert!(j["by_rtt_p99"][0]["rtt_p99_seconds"].as_f64().is_some());
    }

    #[test]
    fn parses_print_symbolic() {
        let f = r#"print fmt: "x=%s", __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" }, { TCP_X, "SKIP" }, { 77, "TCP_CSUM" })"#;
        let m = parse_print_symbolic(f, "REC->reason");
        assert_eq!(m.get(&2).map(String::as_str), Some("not_specified"));
        assert_eq!(m.get(&77).map(String::as_str), Some("tcp_csum"));
        assert_eq!(m.len(), 3);
        let names = ReasonNames {
            reset: HashMap::new(),
            drop: m,
        };
        assert_eq!(names.drop(3), "no_socket");
        assert_eq!(names.drop(5), "reason_5");
        assert_eq!(names.drop(1023), "other");
        let row = |w: &str, r: &str| DropRow {
            workload: w.into(),
            pod: None,
            reason: r.into(),
        };
        let rows: BTreeMap<DropRow, u64> = [
            (row("/a", "netfilter_drop"), 4),
            (row("/a", "queue_purge"), 0),
            (row("unattributed", "reason_5"), 1),
        ]
        .into_iter()
        .collect();
        let d = drops_family(&rows);
        assert_eq!(d.points.len(), 2);
        let l: Vec<(&str, &str)> = d.points[0]
            .labels
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_str()))
            .collect();
        assert_eq!(
            l,
            [
                ("workload", "/a"),
                ("reason", "netfilter_drop"),
                ("class", "harmful")
            ]
        );
        assert_eq!(drop_class("queue_purge"), "benign");
        assert_eq!(drop_class("reason_5"), "unknown");
        assert_eq!(drop_class("a_reason_from_a_newer_kernel"), "harmful");
    }

    proptest! {
        #[test]
        fn print_symbolic_parser_never_panics(s in "\\PC{0,300}") {
            let _ = parse_print_symbolic(&s, "REC->reason");
            let _ = parse_print_symbolic(&format!("__print_symbolic(REC->reason, {s}"), "REC->reason");
        }
        #[test]
        fn quantile_within_bounds(counts in proptest::collection::vec(0u64..1000, 4), q in 0.0f64..=1.0) {
            if let Some(v) = quantile(&counts, &[1.0, 2.0, 4.0], q) {
                prop_assert!((0.0..=4.0).contains(&v));
            }
        }
    }
}
