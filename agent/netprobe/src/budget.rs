//! What the network families expose: peers named by workload (Kubernetes) or address
//! range (CIDR table), and a **series budget** that keeps every scrape and push bounded
//! whatever the traffic.
//!
//! The kernel maps hold one entry per workload x peer (bounded by `peer_cap`); each entry
//! becomes a row, each row a few dozen series. When the rows of one collection would
//! produce more than `series_budget` series, the least active rows (fewest connects,
//! failures, closes, RTT samples, retransmits, resets; DNS: fewest requests) are folded
//! into their workload's `other` peer, one at a time, until the total fits; if the
//! `other` rows of too many workloads still do not fit, the least active workloads fold
//! into `workload="other"`. Folds are sticky: a folded kernel entry stays folded until it
//! leaves the kernel map (idle eviction moves its counts into `other` anyway), so every
//! exposed counter stays monotonic. Each fold is counted
//! (`nodescope_netprobe_series_folded_total{kind}`); the raw per-address rows stay
//! available in `/api/v1/network/connections`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use nodescope_ebpf::dns::{DnsKey, DnsStats, LookupStats};
use nodescope_ebpf::net::{ip_from_bytes, PeerKey, PeerStats};
use nodescope_model::selfmetrics::{Counter, Gauge, SelfMetrics};
use nodescope_model::workload::{PodLookup, PodRef};

use crate::aggregate::{self, RowKey, Rows, OTHER};
use crate::dns::{self as dnsrows, DnsRowKey, DnsRows, LookupRowKey, LookupRows};
use crate::workload::Resolved;

/// Names peer addresses: by the Kubernetes lookup first, then by the CIDR table.
pub struct Namer {
    pods: Option<Arc<dyn PodLookup>>,
    /// (range, label), longest prefix first.
    cidrs: Vec<(ipnet::IpNet, String)>,
}

/// A named peer: `(peer_namespace, peer_workload)` and the `peer_address` label.
pub type Named = (Option<(String, String)>, String);

impl Namer {
    pub fn new(pods: Option<Arc<dyn PodLookup>>, cidrs: &[crate::config::PeerCidr]) -> Self {
        let mut cidrs: Vec<(ipnet::IpNet, String)> = cidrs
            .iter()
            .filter_map(|c| Some((c.net()?, c.label())))
            .collect();
        cidrs.sort_by_key(|c| std::cmp::Reverse(c.0.prefix_len()));
        Namer { pods, cidrs }
    }

    /// Peer naming is on: rows carry `peer_namespace` / `peer_workload`.
    pub fn enabled(&self) -> bool {
        self.pods.is_some() || !self.cidrs.is_empty()
    }

    /// The names of `ip`. A workload drops the address (it changes with every pod
    /// restart); a range replaces it by the range's name; otherwise it stays.
    pub fn name(&self, ip: IpAddr) -> Named {
        let on = self.enabled();
        if let Some(p) = self.pods.as_ref().and_then(|l| l.peer_for_ip(ip)) {
            return (Some((p.namespace, p.workload)), String::new());
        }
        let empty = || on.then(|| (String::new(), String::new()));
        for (net, label) in &self.cidrs {
            if net.contains(&ip) {
                return (empty(), label.clone());
            }
        }
        (empty(), ip.to_string())
    }
}

/// One kernel peer entry with its workload.
pub struct TcpEntry {
    pub key: PeerKey,
    pub stats: PeerStats,
    /// Already in `other` (the kernel's overflow map, or retired idle peers).
    pub overflow: bool,
    pub workload: Arc<Resolved>,
    pub pod: Option<Option<PodRef>>,
}

pub struct DnsEntry {
    pub key: DnsKey,
    pub stats: DnsStats,
    pub workload: Arc<Resolved>,
    pub pod: Option<Option<PodRef>>,
}

pub struct LookupEntry {
    pub cgroup_id: u64,
    pub stats: LookupStats,
    pub workload: Arc<Resolved>,
    pub pod: Option<Option<PodRef>>,
}

/// What one collection exposes.
#[derive(Default)]
pub struct Exposed {
    pub rows: Rows,
    pub dns: DnsRows,
    pub lookups: LookupRows,
    /// Series of all of the above plus the fixed families.
    pub series: usize,
    /// Distinct rows (peers) before folding, `other` rows excluded: TCP and DNS.
    pub rows_before: usize,
    /// Rows this collection folded (first folds; sticky folds are not counted again).
    pub folded: usize,
    /// Rows exposed under their own peer (`other` excluded): TCP and DNS.
    pub exposed_rows: usize,
}

pub struct BudgetMetrics {
    folded_peers: Counter,
    folded_dns: Counter,
    folded_workloads: Counter,
    series: Gauge,
    limit: Gauge,
    folded_now: Gauge,
}

impl BudgetMetrics {
    pub fn new(m: &SelfMetrics) -> Self {
        const F: &str = "nodescope_netprobe_series_folded_total";
        const FH: &str = "Rows folded into peer or workload \"other\" to keep the network series within network.series_budget (each row once, when it first folds).";
        BudgetMetrics {
            folded_peers: m.counter(F, FH, &[("kind", "peer")]),
            folded_dns: m.counter(F, FH, &[("kind", "dns")]),
            folded_workloads: m.counter(F, FH, &[("kind", "workload")]),
            series: m.gauge(
                "nodescope_netprobe_series",
                "Series the network families produced in the last collection, after the budget.",
                &[],
            ),
            limit: m.gauge(
                "nodescope_netprobe_series_budget",
                "network.series_budget: the most series the network families produce.",
                &[],
            ),
            folded_now: m.gauge(
                "nodescope_netprobe_series_folded_rows",
                "Kernel entries currently folded by the series budget.",
                &[],
            ),
        }
    }
}

/// The sticky fold state.
pub struct Budget {
    limit: usize,
    folded_peers: HashSet<PeerKey>,
    folded_dns: HashSet<DnsKey>,
    folded_workloads: HashSet<u64>,
    pub metrics: BudgetMetrics,
}

#[derive(Default)]
struct Acc<S> {
    stats: S,
    members: Vec<u64>,
    activity: u64,
    last_seen: u64,
}

fn other_workload(
    pod: &Option<(String, String, String)>,
) -> (String, Option<(String, String, String)>) {
    (OTHER.to_string(), pod.as_ref().map(|_| Default::default()))
}

impl Budget {
    pub fn new(limit: usize, metrics: BudgetMetrics) -> Self {
        metrics.limit.set(limit as f64);
        Budget {
            limit,
            folded_peers: HashSet::new(),
            folded_dns: HashSet::new(),
            folded_workloads: HashSet::new(),
            metrics,
        }
    }

    /// Names and folds one collection's entries into the rows to expose, within the
    /// budget (`fixed`: series of the families outside the budget's reach).
    pub fn apply(
        &mut self,
        namer: &Namer,
        tcp: Vec<TcpEntry>,
        dns: Vec<DnsEntry>,
        lookups: Vec<LookupEntry>,
        fixed: usize,
    ) -> Exposed {
        // Forget folds of entries that left the kernel maps (bounded by the maps).
        let live_peers: HashSet<PeerKey> = tcp.iter().map(|e| e.key).collect();
        self.folded_peers.retain(|k| live_peers.contains(k));
        let live_dns: HashSet<DnsKey> = dns.iter().map(|e| e.key).collect();
        self.folded_dns.retain(|k| live_dns.contains(k));
        let live_cg: HashSet<u64> = tcp
            .iter()
            .map(|e| e.key.cgroup_id)
            .chain(dns.iter().map(|e| e.key.cgroup_id))
            .chain(lookups.iter().map(|e| e.cgroup_id))
            .collect();
        self.folded_workloads.retain(|c| live_cg.contains(c));

        let pod_of = |p: &Option<Option<PodRef>>| {
            p.as_ref().map(|p| {
                p.as_ref()
                    .map(|p| (p.namespace.clone(), p.pod.clone(), p.container.clone()))
                    .unwrap_or_default()
            })
        };

        // TCP rows: (row key) -> stats, with the kernel entries behind each row.
        let mut tcp_keys: Vec<PeerKey> = Vec::with_capacity(tcp.len());
        let mut rows: BTreeMap<RowKey, Acc<PeerStats>> = BTreeMap::new();
        let mut distinct_tcp: HashSet<RowKey> = HashSet::new();
        for e in &tcp {
            let idx = tcp_keys.len() as u64;
            tcp_keys.push(e.key);
            let mut k = RowKey::new(&e.workload, e.pod.clone(), &e.key, e.overflow);
            if !e.overflow {
                let (named, addr) = namer.name(ip_from_bytes(&e.key.addr));
                k.peer_named = named;
                k.peer_address = addr;
            } else if namer.enabled() {
                k.peer_named = Some(Default::default());
            }
            if !e.overflow && !distinct_tcp.contains(&k) {
                distinct_tcp.insert(k.clone());
            }
            if self.folded_workloads.contains(&e.key.cgroup_id) {
                let (w, p) = other_workload(&k.pod);
                k = RowKey {
                    workload: w,
                    pod: p,
                    ..k
                }
                .to_other();
            } else if self.folded_peers.contains(&e.key) {
                k = k.to_other();
            }
            let a = rows.entry(k).or_default();
            a.stats.merge(&e.stats);
            a.members.push(idx);
            a.activity = a.activity.saturating_add(aggregate::activity(&e.stats));
            a.last_seen = a.last_seen.max(e.stats.last_seen_ns);
        }

        let mut dns_keys: Vec<DnsKey> = Vec::with_capacity(dns.len());
        let mut drows: BTreeMap<DnsRowKey, Acc<DnsStats>> = BTreeMap::new();
        let mut distinct_dns: HashSet<DnsRowKey> = HashSet::new();
        for e in &dns {
            let idx = dns_keys.len() as u64;
            dns_keys.push(e.key);
            let mut k = DnsRowKey::new(&e.workload, e.pod.clone(), &e.key);
            if k.server != OTHER {
                distinct_dns.insert(k.clone());
            }
            if self.folded_workloads.contains(&e.key.cgroup_id) {
                let (w, p) = other_workload(&k.pod);
                k.workload = w;
                k.pod = p;
                k.server = OTHER.into();
            } else if self.folded_dns.contains(&e.key) {
                k.server = OTHER.into();
            }
            let a = drows.entry(k).or_default();
            a.stats.merge(&e.stats);
            a.members.push(idx);
            a.activity = a.activity.saturating_add(e.stats.requests);
            a.last_seen = a.last_seen.max(e.stats.last_seen_ns);
        }

        let mut lrows: BTreeMap<LookupRowKey, (LookupStats, Vec<u64>)> = BTreeMap::new();
        for e in &lookups {
            let mut k = LookupRowKey {
                workload: e.workload.id.clone(),
                pod: pod_of(&e.pod),
            };
            if self.folded_workloads.contains(&e.cgroup_id) {
                let (w, p) = other_workload(&k.pod);
                k = LookupRowKey {
                    workload: w,
                    pod: p,
                };
            }
            let a = lrows.entry(k).or_default();
            a.0.lookups = a.0.lookups.saturating_add(e.stats.lookups);
            a.0.queries = a.0.queries.saturating_add(e.stats.queries);
            a.1.push(e.cgroup_id);
        }

        let rows_before = distinct_tcp.len() + distinct_dns.len();
        let mut folded = 0usize;
        let tcp_cost = |s: &PeerStats| aggregate::row_series(s);
        let dns_cost = |s: &DnsStats| dnsrows::row_series(s);
        let mut total = fixed
            + rows.values().map(|a| tcp_cost(&a.stats)).sum::<usize>()
            + drows.values().map(|a| dns_cost(&a.stats)).sum::<usize>()
            + 2 * lrows.len();

        if total > self.limit {
            // Peers first: the least active rows of any workload.
            enum Cand {
                Tcp(RowKey),
                Dns(DnsRowKey),
            }
            let mut cands: Vec<(u64, u64, Cand)> = rows
                .iter()
                .filter(|(k, _)| !k.is_other())
                .map(|(k, a)| (a.activity, a.last_seen, Cand::Tcp(k.clone())))
                .chain(
                    drows
                        .iter()
                        .filter(|(k, _)| k.server != OTHER)
                        .map(|(k, a)| (a.activity, a.last_seen, Cand::Dns(k.clone()))),
                )
                .collect();
            cands.sort_by_key(|c| (c.0, c.1));
            for (_, _, c) in cands {
                if total <= self.limit {
                    break;
                }
                match c {
                    Cand::Tcp(k) => {
                        let Some(a) = rows.remove(&k) else { continue };
                        total -= tcp_cost(&a.stats);
                        let o = rows.entry(k.to_other()).or_default();
                        total -= tcp_cost(&o.stats);
                        o.stats.merge(&a.stats);
                        o.activity = o.activity.saturating_add(a.activity);
                        o.last_seen = o.last_seen.max(a.last_seen);
                        total += tcp_cost(&o.stats);
                        for m in &a.members {
                            self.folded_peers.insert(tcp_keys[*m as usize]);
                        }
                        o.members.extend(a.members);
                        self.metrics.folded_peers.inc();
                        folded += 1;
                    }
                    Cand::Dns(k) => {
                        let Some(a) = drows.remove(&k) else { continue };
                        total -= dns_cost(&a.stats);
                        let mut ok = k.clone();
                        ok.server = OTHER.into();
                        let o = drows.entry(ok).or_default();
                        total -= dns_cost(&o.stats);
                        o.stats.merge(&a.stats);
                        o.activity = o.activity.saturating_add(a.activity);
                        total += dns_cost(&o.stats);
                        for m in &a.members {
                            self.folded_dns.insert(dns_keys[*m as usize]);
                        }
                        o.members.extend(a.members);
                        self.metrics.folded_dns.inc();
                        folded += 1;
                    }
                }
            }
        }

        if total > self.limit {
            // Then whole workloads, least active first.
            let mut by_w: HashMap<String, (u64, HashSet<u64>)> = HashMap::new();
            for a in rows.iter().filter(|(k, _)| k.workload != OTHER) {
                let e = by_w.entry(a.0.workload.clone()).or_default();
                e.0 = e.0.saturating_add(a.1.activity);
                e.1.extend(a.1.members.iter().map(|m| tcp_keys[*m as usize].cgroup_id));
            }
            for a in drows.iter().filter(|(k, _)| k.workload != OTHER) {
                let e = by_w.entry(a.0.workload.clone()).or_default();
                e.0 = e.0.saturating_add(a.1.activity);
                e.1.extend(a.1.members.iter().map(|m| dns_keys[*m as usize].cgroup_id));
            }
            for (k, (_, cgs)) in lrows.iter().filter(|(k, _)| k.workload != OTHER) {
                by_w.entry(k.workload.clone())
                    .or_default()
                    .1
                    .extend(cgs.iter().copied());
            }
            let mut ws: Vec<(u64, String, HashSet<u64>)> =
                by_w.into_iter().map(|(w, (a, c))| (a, w, c)).collect();
            ws.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            for (_, w, cgs) in ws {
                if total <= self.limit {
                    break;
                }
                let keys: Vec<RowKey> = rows.keys().filter(|k| k.workload == w).cloned().collect();
                for k in keys {
                    let a = rows.remove(&k).unwrap_or_default();
                    total -= tcp_cost(&a.stats);
                    let (ow, op) = other_workload(&k.pod);
                    let o = rows
                        .entry(
                            RowKey {
                                workload: ow,
                                pod: op,
                                ..k
                            }
                            .to_other(),
                        )
                        .or_default();
                    total -= tcp_cost(&o.stats);
                    o.stats.merge(&a.stats);
                    o.activity = o.activity.saturating_add(a.activity);
                    total += tcp_cost(&o.stats);
                }
                let keys: Vec<DnsRowKey> =
                    drows.keys().filter(|k| k.workload == w).cloned().collect();
                for k in keys {
                    let a = drows.remove(&k).unwrap_or_default();
                    total -= dns_cost(&a.stats);
                    let (ow, op) = other_workload(&k.pod);
                    let ok = DnsRowKey {
                        workload: ow,
                        pod: op,
                        server: OTHER.into(),
                        ..k
                    };
                    let o = drows.entry(ok).or_default();
                    total -= dns_cost(&o.stats);
                    o.stats.merge(&a.stats);
                    total += dns_cost(&o.stats);
                }
                let keys: Vec<LookupRowKey> =
                    lrows.keys().filter(|k| k.workload == w).cloned().collect();
                for k in keys {
                    let (s, c) = lrows.remove(&k).unwrap_or_default();
                    total -= 2;
                    let (ow, op) = other_workload(&k.pod);
                    let key = LookupRowKey {
                        workload: ow,
                        pod: op,
                    };
                    if !lrows.contains_key(&key) {
                        total += 2;
                    }
                    let o = lrows.entry(key).or_default();
                    o.0.lookups = o.0.lookups.saturating_add(s.lookups);
                    o.0.queries = o.0.queries.saturating_add(s.queries);
                    o.1.extend(c);
                }
                self.folded_workloads.extend(cgs);
                self.metrics.folded_workloads.inc();
            }
        }

        self.metrics.series.set(total as f64);
        self.metrics
            .folded_now
            .set((self.folded_peers.len() + self.folded_dns.len()) as f64);
        let exposed_rows = rows.keys().filter(|k| !k.is_other()).count()
            + drows.keys().filter(|k| k.server != OTHER).count();
        Exposed {
            exposed_rows,
            rows: rows.into_iter().map(|(k, a)| (k, a.stats)).collect(),
            dns: drows.into_iter().map(|(k, a)| (k, a.stats)).collect(),
            lookups: lrows.into_iter().map(|(k, a)| (k, a.0)).collect(),
            series: total,
            rows_before,
            folded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{families, ReasonNames};
    use nodescope_model::workload::{PeerRef, WorkloadKind};
    use nodescope_model::{MetricFamily, Value};

    fn w(id: &str) -> Arc<Resolved> {
        Arc::new(Resolved {
            kind: WorkloadKind::Cgroup,
            id: id.into(),
            path: id.into(),
        })
    }

    fn peer(cg: u64, ip: [u8; 4], port: u16) -> PeerKey {
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(&ip);
        PeerKey {
            cgroup_id: cg,
            addr: a,
            port,
            direction: 0,
            family: 2,
            _pad: 0,
        }
    }

    fn refused(n: u64, seen: u64) -> PeerStats {
        let mut s = PeerStats::default();
        s.connect_errors[0] = n;
        s.resets_received[2] = n;
        s.last_seen_ns = seen;
        s
    }

    fn series(f: &[MetricFamily]) -> usize {
        f.iter()
            .flat_map(|f| &f.points)
            .map(|p| match &p.value {
                Value::Histogram(h) => h.buckets.len() + 3,
                Value::Number(_) => 1,
            })
            .sum()
    }

    fn budget(limit: usize) -> Budget {
        Budget::new(limit, BudgetMetrics::new(&SelfMetrics::new()))
    }

    #[test]
    fn within_budget_nothing_folds_and_costs_match_the_families() {
        let namer = Namer::new(None, &[]);
        let mut b = budget(10_000);
        let mut s = refused(1, 5);
        s.connect_hist[3] = 2;
        s.rtt_hist[1] = 1;
        s.duration_hist[2] = 1;
        s.bytes_sent = 3;
        let e = vec![TcpEntry {
            key: peer(1, [10, 0, 0, 1], 80),
            stats: s,
            overflow: false,
            workload: w("/a"),
            pod: None,
        }];
        let x = b.apply(&namer, e, vec![], vec![], 0);
        assert_eq!(x.rows.len(), 1);
        let fams = families(&x.rows, &ReasonNames::default());
        assert_eq!(series(&fams), x.series);
        assert_eq!(b.metrics.folded_peers.get(), 0);
    }

    #[test]
    fn least_active_peers_fold_into_other_exactly_and_stay_folded() {
        let namer = Namer::new(None, &[]);
        let mut b = budget(300);
        let mk = |n: u32, hot: u32| -> Vec<TcpEntry> {
            (0..n)
                .map(|i| TcpEntry {
                    key: peer(1, [10, 0, (i >> 8) as u8, i as u8], 80),
                    // The last `hot` peers are much more active.
                    stats: refused(if i >= n - hot { 100 } else { 1 }, u64::from(i)),
                    overflow: false,
                    workload: w("/a"),
                    pod: None,
                })
                .collect()
        };
        let x = b.apply(&namer, mk(1000, 10), vec![], vec![], 6);
        assert!(x.series <= 300, "{}", x.series);
        let fams = families(&x.rows, &ReasonNames::default());
        assert!(series(&fams) + 6 <= 300);
        let kept = x.rows.keys().filter(|k| !k.is_other()).count() as u64;
        assert_eq!(
            kept + b.metrics.folded_peers.get(),
            1000,
            "every peer kept or folded once"
        );
        assert_eq!((x.rows_before, x.folded as u64), (1000, 1000 - kept));
        // The hot ones survive.
        for i in 990..1000u32 {
            let a = format!("10.0.{}.{}", i >> 8, i & 0xff);
            assert!(x.rows.keys().any(|k| k.peer_address == a), "{a} folded");
        }
        // Counts are conserved.
        let errs: u64 = x.rows.values().map(|s| s.connect_errors[0]).sum();
        assert_eq!(errs, 990 + 10 * 100);
        // Next collection: same entries, a bit more traffic on a folded one: still
        // folded (sticky), no new folds, `other` grows.
        let other_before = x
            .rows
            .iter()
            .find(|(k, _)| k.is_other())
            .unwrap()
            .1
            .connect_errors[0];
        let mut e = mk(1000, 10);
        e[0].stats.connect_errors[0] += 5;
        let folded = b.metrics.folded_peers.get();
        let y = b.apply(&namer, e, vec![], vec![], 6);
        assert_eq!(b.metrics.folded_peers.get(), folded);
        let other_after = y
            .rows
            .iter()
            .find(|(k, _)| k.is_other())
            .unwrap()
            .1
            .connect_errors[0];
        assert_eq!(other_after, other_before + 5);
    }

    #[test]
    fn too_many_workloads_fold_whole_workloads() {
        let namer = Namer::new(None, &[]);
        let mut b = budget(200);
        let e: Vec<TcpEntry> = (0..300u64)
            .map(|i| TcpEntry {
                key: peer(i + 10, [10, 1, 0, 1], 80),
                stats: refused(1 + i, i),
                overflow: false,
                workload: w(&format!("/w{i}")),
                pod: None,
            })
            .collect();
        let x = b.apply(&namer, e, vec![], vec![], 0);
        assert!(x.series <= 200, "{}", x.series);
        assert!(b.metrics.folded_workloads.get() > 0);
        assert!(x.rows.keys().any(|k| k.workload == OTHER));
        let errs: u64 = x.rows.values().map(|s| s.connect_errors[0]).sum();
        assert_eq!(errs, (1..=300).sum::<u64>());
    }

    struct Cluster;
    impl PodLookup for Cluster {
        fn pod_for_container(&self, _: &str) -> Option<PodRef> {
            None
        }
        fn peer_for_ip(&self, ip: IpAddr) -> Option<PeerRef> {
            let o = match ip.to_string().as_str() {
                "10.244.1.5" | "10.244.2.6" => "api",
                "10.96.0.10" => "kube-dns",
                _ => return None,
            };
            Some(PeerRef {
                namespace: "shop".into(),
                workload: o.into(),
                kind: "Deployment".into(),
            })
        }
    }

    #[test]
    fn peers_named_by_workload_then_by_range() {
        let namer = Namer::new(
            Some(Arc::new(Cluster)),
            &[
                crate::config::PeerCidr {
                    cidr: "192.168.0.0/16".into(),
                    name: "office".into(),
                },
                crate::config::PeerCidr {
                    cidr: "192.168.7.0/24".into(),
                    name: String::new(),
                },
            ],
        );
        let mut b = budget(10_000);
        let e = vec![
            (peer(1, [10, 244, 1, 5], 8080), 1),
            (peer(1, [10, 244, 2, 6], 8080), 2),
            (peer(1, [192, 168, 3, 3], 443), 4),
            (peer(1, [192, 168, 7, 9], 443), 8),
            (peer(1, [8, 8, 8, 8], 53), 16),
        ]
        .into_iter()
        .map(|(k, n)| TcpEntry {
            key: k,
            stats: refused(n, 1),
            overflow: false,
            workload: w("/a"),
            pod: None,
        })
        .collect();
        let x = b.apply(&namer, e, vec![], vec![], 0);
        let got: Vec<(String, String, String, u64)> = x
            .rows
            .iter()
            .map(|(k, s)| {
                let (ns, wl) = k.peer_named.clone().unwrap();
                (ns, wl, k.peer_address.clone(), s.connect_errors[0])
            })
            .collect();
        assert!(
            got.contains(&("shop".into(), "api".into(), String::new(), 3)),
            "two pods of api merge: {got:?}"
        );
        assert!(got.contains(&(String::new(), String::new(), "office".into(), 4)));
        assert!(
            got.contains(&(String::new(), String::new(), "192.168.7.0/24".into(), 8)),
            "longest prefix"
        );
        assert!(got.contains(&(String::new(), String::new(), "8.8.8.8".into(), 16)));
        let fams = families(&x.rows, &ReasonNames::default());
        let keys: Vec<&str> = fams[1].points[0]
            .labels
            .iter()
            .map(|(k, _)| k.as_ref())
            .collect();
        assert_eq!(
            keys,
            [
                "workload",
                "peer_namespace",
                "peer_workload",
                "peer_address",
                "peer_port",
                "direction",
                "error"
            ]
        );
    }
}
