//! The DNS probe's user-space side: loads `dns.bpf.o` and attaches its two cgroup_skb
//! programs to the cgroup2 root, reads the aggregates, sweeps queries that were never
//! answered (timeouts), and turns aggregates into metric families and ring-buffer
//! events into log records.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::mem::size_of;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::{Btf, Ebpf};
use nodescope_ebpf::dns::{
    self as bpf, decode_name, qtype_class, qtype_name, rcode_name, transport_name, DnsEvent,
    DnsKey, DnsStats, LookupStats, Query, QueryKey,
};
use nodescope_ebpf::loader::{self, CgroupSkbDirection, LoadError, LoadOptions};
use nodescope_ebpf::net::{comm_str, ip_from_bytes};
use nodescope_model::selfmetrics::{Counter, SelfMetrics};
use nodescope_model::workload::PodRef;
use nodescope_model::{Histogram, Labels, LogRecord, MetricFamily, MetricType, Severity};
use parking_lot::Mutex;

use crate::config::{DnsConfig, NetworkConfig};
use crate::slots::Mapping;
use crate::workload::Resolved;

/// `nodescope_dns_request_duration_seconds` bounds, seconds.
pub fn bounds() -> Vec<f64> {
    bpf::BOUNDS_NS.iter().map(|&b| b as f64 / 1e9).collect()
}

struct Maps {
    /// The in-flight table (`dns_tags`, writable: the sweep takes slots back with a
    /// compare-and-swap; `dns_slots`), memory-mapped.
    tags: Mapping,
    slots: Mapping,
    sets: usize,
    stats: BpfHashMap<MapData, DnsKey, DnsStats>,
    other: BpfHashMap<MapData, DnsKey, DnsStats>,
    lookups: PerCpuHashMap<MapData, u64, LookupStats>,
    counters: PerCpuArray<MapData, u64>,
    /// Keeps the mapped maps' descriptors.
    _mapped: (aya::maps::Map, aya::maps::Map),
}

struct SelfCounters {
    queries: Counter,
    answers: Counter,
    unmatched: Counter,
    inflight_full: Counter,
    retransmits: Counter,
    overflow: Counter,
    other_full: Counter,
    rate_limited: Counter,
    ringbuf_full: Counter,
    events_sent: Counter,
    lookups_full: Counter,
    malformed: Counter,
    late: Counter,
    swept: Counter,
    swept_rate_limited: Counter,
    swept_store_full: Counter,
}

impl SelfCounters {
    fn new(m: &SelfMetrics) -> Self {
        const D: &str = "nodescope_netprobe_dropped_total";
        const DH: &str = "Network probe updates or events dropped, by reason.";
        SelfCounters {
            queries: m.counter(
                "nodescope_netprobe_dns_queries_seen_total",
                "DNS queries the probe saw leave a client socket (retransmissions included).",
                &[],
            ),
            answers: m.counter(
                "nodescope_netprobe_dns_answers_matched_total",
                "DNS answers matched to their query by 5-tuple and transaction id.",
                &[],
            ),
            unmatched: m.counter(
                "nodescope_netprobe_dns_answers_unmatched_total",
                "DNS answers that matched no query in flight (sent before the probe started, after a timeout sweep, or a continued TCP segment).",
                &[],
            ),
            retransmits: m.counter(
                "nodescope_netprobe_dns_retransmits_total",
                "DNS queries re-sent over UDP with the same 5-tuple and id (the earlier attempt is a timeout).",
                &[],
            ),
            malformed: m.counter(
                "nodescope_netprobe_dns_malformed_total",
                "Packets to or from a DNS port whose payload is not a DNS message the probe parses.",
                &[],
            ),
            late: m.counter(
                "nodescope_netprobe_dns_answers_late_total",
                "DNS answers that arrived as the sweep took their query as a timeout (counted as the timeout only).",
                &[],
            ),
            inflight_full: m.counter(D, DH, &[("reason", "dns_inflight_full")]),
            overflow: m.counter(
                "nodescope_netprobe_dns_overflow_total",
                "DNS updates counted under server=\"other\" because network.dns.stats_cap was reached.",
                &[],
            ),
            other_full: m.counter(D, DH, &[("reason", "dns_other_map_full")]),
            rate_limited: m.counter(D, DH, &[("reason", "dns_event_rate_limited")]),
            ringbuf_full: m.counter(D, DH, &[("reason", "dns_ring_buffer_full")]),
            events_sent: m.counter(
                "nodescope_netprobe_dns_events_submitted_total",
                "DNS events the kernel side wrote to its ring buffer.",
                &[],
            ),
            lookups_full: m.counter(D, DH, &[("reason", "dns_lookups_map_full")]),
            swept: m.counter(
                "nodescope_netprobe_dns_timeouts_swept_total",
                "Unanswered DNS queries removed from the in-flight map after network.dns.timeout_seconds.",
                &[],
            ),
            swept_rate_limited: m.counter(D, DH, &[("reason", "dns_timeout_event_rate_limited")]),
            swept_store_full: m.counter(D, DH, &[("reason", "dns_timeout_store_full")]),
        }
    }
}

/// A fixed one-second window, for the events user space creates itself (swept timeouts).
struct Window {
    start: Instant,
    count: u32,
    limit: u32,
}

impl Window {
    fn allow(&mut self) -> bool {
        if self.start.elapsed() >= Duration::from_secs(1) {
            self.start = Instant::now();
            self.count = 0;
        }
        if self.count >= self.limit {
            return false;
        }
        self.count += 1;
        true
    }
}

/// The loaded DNS probe.
pub(crate) struct DnsProbe {
    cfg: DnsConfig,
    maps: Mutex<Maps>,
    /// Timeouts found by the sweep, per aggregate key (bounded by `stats_cap`; beyond it
    /// folded into server "other"), so the counters stay monotonic.
    swept: Mutex<HashMap<DnsKey, DnsStats>>,
    window: Mutex<Window>,
    selfc: SelfCounters,
    /// Keeps the programs and their cgroup links alive; dropping it detaches them.
    _ebpf: Mutex<Ebpf>,
}

/// What one read of the DNS maps gives.
#[derive(Default)]
pub(crate) struct Snapshot {
    pub stats: Vec<(DnsKey, DnsStats)>,
    pub lookups: Vec<(u64, LookupStats)>,
}

impl DnsProbe {
    /// Loads the object and attaches both programs to `cgroup_root`.
    pub(crate) fn load(
        cfg: &NetworkConfig,
        btf: &Btf,
        cgroup_root: &Path,
        metrics: &SelfMetrics,
    ) -> Result<(DnsProbe, RingBuf<MapData>, Vec<String>), LoadError> {
        let obj = bpf::DNS_OBJ_NAME;
        let d = &cfg.dns;
        let sets = (d.inflight_cap / bpf::WAYS as u32).max(1);
        let max_entries = [
            (bpf::MAP_TAGS, sets),
            (bpf::MAP_SLOTS, sets * bpf::WAYS as u32),
            (bpf::MAP_STATS, d.stats_cap),
            (bpf::MAP_STATS_OTHER, d.other_cap),
            (bpf::MAP_LOOKUP_STATE, d.inflight_cap.saturating_mul(2)),
            (
                bpf::MAP_LOOKUPS,
                cfg.workload_cache_size.min(1_000_000) as u32,
            ),
        ];
        let port = |i: usize| u64::from(*d.ports.get(i).unwrap_or(&d.ports[0]));
        let ns = |s: f64| (s * 1e9) as u64;
        let globals = [
            (bpf::CFG_PORTS[0], port(0)),
            (bpf::CFG_PORTS[1], port(1)),
            (bpf::CFG_PORTS[2], port(2)),
            (bpf::CFG_PORTS[3], port(3)),
            (bpf::CFG_SLOW_NS, ns(d.slow_threshold_seconds)),
            (bpf::CFG_EVENTS_PER_SEC, u64::from(cfg.events_per_second)),
            (bpf::CFG_LOOKUP_GAP_NS, ns(d.lookup_gap_seconds)),
            (bpf::CFG_TIMEOUT_NS, ns(d.timeout_seconds)),
            (bpf::CFG_NXDOMAIN_EVENTS, u64::from(d.nxdomain_events)),
            (bpf::CFG_SETS, u64::from(sets)),
        ];
        let mut ebpf = loader::load_with_btf(
            obj,
            bpf::DNS_OBJ,
            &LoadOptions {
                max_entries: &max_entries,
                globals_u64: &globals,
            },
            btf,
        )?;
        let map_err = |map: &str, e: aya::maps::MapError| LoadError::Map {
            object: obj.into(),
            map: map.into(),
            reason: e.to_string(),
        };
        let take = |ebpf: &mut Ebpf, name: &str| loader::take_map(ebpf, obj, name);
        let tags_map = take(&mut ebpf, bpf::MAP_TAGS)?;
        let slots_map = take(&mut ebpf, bpf::MAP_SLOTS)?;
        let mapped = |m: &aya::maps::Map, n: usize, size: usize, w: bool, name: &str| {
            let aya::maps::Map::Array(data) = m else {
                return Err(LoadError::Map {
                    object: obj.into(),
                    map: name.into(),
                    reason: "not an array map".into(),
                });
            };
            Mapping::new(data, n, size, w).map_err(|e| LoadError::Map {
                object: obj.into(),
                map: name.into(),
                reason: format!("mmap: {e}"),
            })
        };
        let sets = sets as usize;
        let tags = mapped(&tags_map, sets, size_of::<bpf::Tags>(), true, bpf::MAP_TAGS)?;
        let slots = mapped(
            &slots_map,
            sets * bpf::WAYS,
            size_of::<bpf::Slot>(),
            false,
            bpf::MAP_SLOTS,
        )?;
        let stats = BpfHashMap::try_from(take(&mut ebpf, bpf::MAP_STATS)?)
            .map_err(|e| map_err(bpf::MAP_STATS, e))?;
        let other = BpfHashMap::try_from(take(&mut ebpf, bpf::MAP_STATS_OTHER)?)
            .map_err(|e| map_err(bpf::MAP_STATS_OTHER, e))?;
        let lookups = PerCpuHashMap::try_from(take(&mut ebpf, bpf::MAP_LOOKUPS)?)
            .map_err(|e| map_err(bpf::MAP_LOOKUPS, e))?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, bpf::MAP_COUNTERS)?)
            .map_err(|e| map_err(bpf::MAP_COUNTERS, e))?;
        let ringbuf = RingBuf::try_from(take(&mut ebpf, bpf::MAP_EVENTS)?)
            .map_err(|e| map_err(bpf::MAP_EVENTS, e))?;
        let mut hooks = Vec::new();
        for (prog, dir, name) in [
            (bpf::PROG_EGRESS, CgroupSkbDirection::Egress, "egress"),
            (bpf::PROG_INGRESS, CgroupSkbDirection::Ingress, "ingress"),
        ] {
            loader::load_cgroup_skb(&mut ebpf, obj, prog, cgroup_root, dir)?;
            hooks.push(format!(
                "{prog} -> cgroup_skb/{name} on {}",
                cgroup_root.display()
            ));
        }
        let probe = DnsProbe {
            cfg: d.clone(),
            maps: Mutex::new(Maps {
                tags,
                slots,
                sets,
                stats,
                other,
                lookups,
                counters,
                _mapped: (tags_map, slots_map),
            }),
            swept: Mutex::new(HashMap::new()),
            window: Mutex::new(Window {
                start: Instant::now(),
                count: 0,
                limit: cfg.events_per_second,
            }),
            selfc: SelfCounters::new(metrics),
            _ebpf: Mutex::new(ebpf),
        };
        Ok((probe, ringbuf, hooks))
    }

    /// Removes queries unanswered for `timeout_seconds` (`now_ns`: CLOCK_MONOTONIC),
    /// counts each as `rcode="timeout"` and returns the events to emit for them (within
    /// the events-per-second budget).
    pub(crate) fn sweep(&self, now_ns: u64) -> Vec<DnsEvent> {
        let timeout = (self.cfg.timeout_seconds * 1e9) as u64;
        let maps = self.maps.lock();
        let mut stale: Vec<(QueryKey, Query)> = Vec::new();
        for set in 0..maps.sets {
            let Some(t) = maps.tags.get::<bpf::Tags>(set) else {
                break;
            };
            for (way, &tag) in t.tag.iter().enumerate() {
                if tag == 0 {
                    continue;
                }
                let Some(sl) = maps.slots.get::<bpf::Slot>(set * bpf::WAYS + way) else {
                    continue;
                };
                // start_ns is 0 while the kernel fills or gives back the slot.
                if sl.q.start_ns == 0 || now_ns.saturating_sub(sl.q.start_ns) < timeout {
                    continue;
                }
                // Take the slot back unless the answer (or a new query) got there first.
                let off = set * size_of::<bpf::Tags>() + way * 8;
                if maps.tags.compare_exchange_u64(off, tag, 0) {
                    stale.push((sl.key, sl.q));
                }
            }
        }
        drop(maps);
        let mut events = Vec::new();
        if stale.is_empty() {
            return events;
        }
        let mut swept = self.swept.lock();
        let cap = self.cfg.stats_cap as usize;
        let mut window = self.window.lock();
        for (k, q) in stale {
            self.selfc.swept.inc();
            let mut key = DnsKey {
                cgroup_id: q.cgroup_id,
                server: k.server,
                qtype: qtype_class(q.qtype),
                rcode: bpf::RCODE_TIMEOUT,
                transport: k.transport,
                family: q.family,
                _pad: [0; 3],
            };
            if !swept.contains_key(&key) && swept.len() >= cap {
                key.server = [0; 16];
                key.family = 0;
                self.selfc.swept_store_full.inc();
            }
            let s = swept.entry(key).or_default();
            s.requests += 1;
            s.last_seen_ns = now_ns;
            if window.allow() {
                events.push(DnsEvent::from_query(
                    &q,
                    &k,
                    bpf::EV_TIMEOUT,
                    bpf::RCODE_TIMEOUT,
                    now_ns,
                ));
            } else {
                self.selfc.swept_rate_limited.inc();
            }
        }
        events
    }

    fn sum(arr: &PerCpuArray<MapData, u64>, idx: u32) -> u64 {
        arr.get(&idx, 0)
            .map(|v| v.iter().fold(0u64, |a, b| a.saturating_add(*b)))
            .unwrap_or(0)
    }

    /// Reads every aggregate (kernel maps and swept timeouts) and the kernel counters.
    pub(crate) fn read(&self) -> (Snapshot, u64) {
        let maps = self.maps.lock();
        let mut snap = Snapshot::default();
        let mut errors = 0u64;
        for r in maps.stats.iter().chain(maps.other.iter()) {
            match r {
                Ok(kv) => snap.stats.push(kv),
                Err(_) => errors += 1,
            }
        }
        for r in maps.lookups.iter() {
            match r {
                Ok((cg, per_cpu)) => {
                    let mut sum = LookupStats::default();
                    for v in per_cpu.iter() {
                        sum.lookups = sum.lookups.saturating_add(v.lookups);
                        sum.queries = sum.queries.saturating_add(v.queries);
                    }
                    snap.lookups.push((cg, sum));
                }
                Err(_) => errors += 1,
            }
        }
        let c = &maps.counters;
        let s = &self.selfc;
        for (counter, idx) in [
            (&s.queries, bpf::CNT_QUERIES),
            (&s.answers, bpf::CNT_ANSWERS),
            (&s.unmatched, bpf::CNT_UNMATCHED),
            (&s.inflight_full, bpf::CNT_INFLIGHT_FULL),
            (&s.retransmits, bpf::CNT_RETRANSMITS),
            (&s.overflow, bpf::CNT_STATS_OVERFLOW),
            (&s.other_full, bpf::CNT_OTHER_FULL),
            (&s.rate_limited, bpf::CNT_EVENTS_RATE_LIMITED),
            (&s.ringbuf_full, bpf::CNT_EVENTS_LOST),
            (&s.events_sent, bpf::CNT_EVENTS_SENT),
            (&s.lookups_full, bpf::CNT_LOOKUPS_FULL),
            (&s.malformed, bpf::CNT_MALFORMED),
            (&s.late, bpf::CNT_LATE),
        ] {
            counter.set(Self::sum(c, idx));
        }
        drop(maps);
        snap.stats
            .extend(self.swept.lock().iter().map(|(k, v)| (*k, *v)));
        (snap, errors)
    }
}

/// The identity of one exported DNS series group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DnsRowKey {
    pub workload: String,
    /// `(namespace, pod, container)` when a pod lookup is configured.
    pub pod: Option<(String, String, String)>,
    /// The server address, or `other` past the aggregate cap.
    pub server: String,
    pub qtype: &'static str,
    pub rcode: &'static str,
    pub transport: &'static str,
}

impl DnsRowKey {
    pub fn new(w: &Resolved, pod: Option<Option<PodRef>>, k: &DnsKey) -> Self {
        let server = if k.family == 0 {
            crate::aggregate::OTHER.to_string()
        } else {
            ip_from_bytes(&k.server).to_string()
        };
        DnsRowKey {
            workload: w.id.clone(),
            pod: pod.map(|p| {
                p.map(|p| (p.namespace, p.pod, p.container))
                    .unwrap_or_default()
            }),
            server,
            qtype: qtype_name(k.qtype),
            rcode: rcode_name(k.rcode),
            transport: transport_name(k.transport),
        }
    }

    fn workload_labels(&self) -> Vec<(&'static str, String)> {
        workload_labels(&self.workload, &self.pod)
    }
}

fn workload_labels(
    workload: &str,
    pod: &Option<(String, String, String)>,
) -> Vec<(&'static str, String)> {
    let mut l = vec![("workload", workload.to_string())];
    if let Some((ns, p, c)) = pod {
        l.push(("namespace", ns.clone()));
        l.push(("pod", p.clone()));
        l.push(("container", c.clone()));
    }
    l
}

/// Lookups of one workload.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LookupRowKey {
    pub workload: String,
    pub pod: Option<(String, String, String)>,
}

pub type DnsRows = BTreeMap<DnsRowKey, DnsStats>;
pub type LookupRows = BTreeMap<LookupRowKey, LookupStats>;

/// The DNS metric families (names exactly as in issue 15).
pub fn families(rows: &DnsRows, lookups: &LookupRows) -> Vec<MetricFamily> {
    let b = bounds();
    let mut dur = MetricFamily::new(
        "nodescope_dns_request_duration_seconds",
        "DNS request latency, query sent to answer received, measured in the kernel; per workload, server, qtype, rcode (truncated: a UDP answer with TC set) and transport.",
        MetricType::Histogram,
    );
    let mut req = MetricFamily::new(
        "nodescope_dns_requests_total",
        "DNS requests by answer code: NOERROR, NXDOMAIN, SERVFAIL, REFUSED, ..., truncated (UDP answer with TC set), timeout (no answer).",
        MetricType::Counter,
    );
    for (k, s) in rows {
        let mut l = k.workload_labels();
        l.push(("server", k.server.clone()));
        l.push(("qtype", k.qtype.to_string()));
        l.push(("rcode", k.rcode.to_string()));
        l.push(("transport", k.transport.to_string()));
        let answered: u64 = s.hist.iter().sum();
        if answered > 0 {
            dur.push_histogram(
                l.clone(),
                Histogram::from_bucket_counts(&b, &s.hist, s.sum_ns as f64 / 1e9),
            );
        }
        if s.requests > 0 {
            req.push(l, s.requests as f64);
        }
    }
    let mut lk = MetricFamily::new(
        "nodescope_dns_lookups_total",
        "DNS lookups: what one thread asked about one name, search-path expansions, A/AAAA pairs, retries and TCP retries included.",
        MetricType::Counter,
    );
    let mut lq = MetricFamily::new(
        "nodescope_dns_lookup_queries_total",
        "DNS queries sent by lookups; divided by nodescope_dns_lookups_total it is the search-path fan-out.",
        MetricType::Counter,
    );
    for (k, s) in lookups {
        let l = workload_labels(&k.workload, &k.pod);
        if s.lookups > 0 || s.queries > 0 {
            lk.push(l.clone(), s.lookups as f64);
            lq.push(l, s.queries as f64);
        }
    }
    vec![dur, req, lk, lq]
}

/// The series one DNS row costs in the exposition (histogram buckets, +Inf, sum, count,
/// and the counter), for the series budget.
pub fn row_series(s: &DnsStats) -> usize {
    let answered: u64 = s.hist.iter().sum();
    let hist = if answered > 0 {
        bpf::BOUNDS_NS.len() + 3
    } else {
        0
    };
    hist + usize::from(s.requests > 0)
}

fn s(k: &'static str, v: impl Into<String>) -> (Cow<'static, str>, String) {
    (Cow::Borrowed(k), v.into())
}

/// The event class (`LogRecord::kind`).
pub fn kind_name(kind: u8) -> &'static str {
    match kind {
        bpf::EV_SLOW => "dns_slow",
        bpf::EV_FAILED => "dns_failed",
        _ => "dns_timeout",
    }
}

/// Builds the log record of one DNS event. The query name is an attribute (structured
/// metadata), never a label.
pub fn to_log(e: &DnsEvent, w: &Resolved, pod: Option<PodRef>, timestamp: SystemTime) -> LogRecord {
    let (name, cut) = decode_name(&e.name, e.name_len as usize);
    let server = ip_from_bytes(&e.server);
    let client = ip_from_bytes(&e.client);
    let comm = comm_str(&e.comm);
    let latency = e.latency_ns as f64 / 1e9;
    let qtype = if e.qtype == 0 {
        "unknown".to_string()
    } else if qtype_class(e.qtype) == 0 {
        format!("TYPE{}", e.qtype)
    } else {
        qtype_name(e.qtype).to_string()
    };
    let rcode = rcode_name(e.rcode);
    let transport = transport_name(e.transport);
    let mut labels: Labels = vec![s("workload", w.id.clone())];
    if let Some(p) = &pod {
        labels.push(s("namespace", p.namespace.clone()));
        labels.push(s("pod", p.pod.clone()));
        labels.push(s("container", p.container.clone()));
    }
    labels.push(s("rcode", rcode));
    let mut attrs: Labels = vec![
        s("query_name", name.clone()),
        s("qtype", qtype.clone()),
        s("server", server.to_string()),
        s("server_port", e.server_port.to_string()),
        s("client_address", client.to_string()),
        s("client_port", e.client_port.to_string()),
        s("transport", transport),
        s("id", e.id.to_string()),
        s("latency_seconds", format!("{latency:.6}")),
    ];
    if cut {
        attrs.push(s("query_name_truncated", "true"));
    }
    if e.pid != 0 {
        attrs.push(s("pid", e.pid.to_string()));
    }
    if !comm.is_empty() {
        attrs.push(s("process", comm.clone()));
    }
    if !w.path.is_empty() {
        attrs.push(s("cgroup", w.path.clone()));
    }
    let who = if comm.is_empty() {
        String::new()
    } else {
        format!(" (process {comm}, pid {})", e.pid)
    };
    let (severity, body) = match e.kind {
        bpf::EV_SLOW => (
            Severity::Info,
            format!("slow DNS answer from {server} for {name} {qtype} over {transport}: {rcode} after {latency:.6} s{who}"),
        ),
        bpf::EV_FAILED => (
            Severity::Warn,
            format!("DNS query {name} {qtype} to {server} over {transport} failed: {rcode} after {latency:.6} s{who}"),
        ),
        _ => (
            Severity::Warn,
            format!("DNS query {name} {qtype} to {server} over {transport} timed out: no answer after {latency:.6} s{who}"),
        ),
    };
    LogRecord {
        timestamp,
        severity,
        kind: Cow::Borrowed(kind_name(e.kind)),
        body,
        labels,
        attributes: attrs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodescope_model::workload::WorkloadKind;
    use nodescope_model::Value;

    fn w(id: &str) -> Resolved {
        Resolved {
            kind: WorkloadKind::Cgroup,
            id: id.into(),
            path: id.into(),
        }
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut x = [0u8; 16];
        x[10] = 0xff;
        x[11] = 0xff;
        x[12..].copy_from_slice(&a);
        x
    }

    #[test]
    fn families_have_exact_names_labels_and_buckets() {
        let k = DnsKey {
            cgroup_id: 5,
            server: v4([10, 96, 0, 10]),
            qtype: 28,
            rcode: 3,
            transport: bpf::UDP,
            family: 2,
            _pad: [0; 3],
        };
        let mut st = DnsStats::default();
        st.hist[5] = 2; // (10 ms, 25 ms]
        st.sum_ns = 40_000_000;
        st.requests = 2;
        let t = DnsKey {
            rcode: bpf::RCODE_TIMEOUT,
            ..k
        };
        let ts = DnsStats {
            requests: 3,
            ..Default::default()
        };
        let mut rows = DnsRows::new();
        rows.insert(DnsRowKey::new(&w("/app"), None, &k), st);
        rows.insert(DnsRowKey::new(&w("/app"), None, &t), ts);
        let mut lookups = LookupRows::new();
        lookups.insert(
            LookupRowKey {
                workload: "/app".into(),
                pod: None,
            },
            LookupStats {
                lookups: 2,
                queries: 12,
            },
        );
        let fams = families(&rows, &lookups);
        let names: Vec<&str> = fams.iter().map(|f| f.name.as_ref()).collect();
        assert_eq!(
            names,
            [
                "nodescope_dns_request_duration_seconds",
                "nodescope_dns_requests_total",
                "nodescope_dns_lookups_total",
                "nodescope_dns_lookup_queries_total"
            ]
        );
        assert_eq!(fams[0].points.len(), 1, "timeouts have no latency");
        let p = &fams[0].points[0];
        let keys: Vec<&str> = p.labels.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["workload", "server", "qtype", "rcode", "transport"]);
        let vals: Vec<&str> = p.labels.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(vals, ["/app", "10.96.0.10", "AAAA", "NXDOMAIN", "udp"]);
        let Value::Histogram(h) = &p.value else {
            panic!()
        };
        assert_eq!(h.count, 2);
        assert_eq!(h.buckets[5].upper_bound, 0.025);
        assert_eq!(h.buckets[4].cumulative_count, 0);
        assert_eq!(h.buckets[5].cumulative_count, 2);
        let req: Vec<(String, f64)> = fams[1]
            .points
            .iter()
            .map(|p| {
                let Value::Number(n) = p.value else { panic!() };
                (p.labels[3].1.clone(), n)
            })
            .collect();
        assert!(req.contains(&("NXDOMAIN".into(), 2.0)));
        assert!(req.contains(&("timeout".into(), 3.0)));
        assert_eq!(fams[2].points[0].value, Value::Number(2.0));
        assert_eq!(fams[3].points[0].value, Value::Number(12.0));
        assert_eq!(row_series(&st), 18);
        assert_eq!(row_series(&ts), 1);
    }

    #[test]
    fn other_server_and_event_record() {
        let k = DnsKey {
            family: 0,
            ..Default::default()
        };
        assert_eq!(DnsRowKey::new(&w("x"), None, &k).server, "other");

        let mut e = DnsEvent {
            kind: bpf::EV_TIMEOUT,
            rcode: bpf::RCODE_TIMEOUT,
            qtype: 1,
            server: v4([10, 0, 0, 53]),
            client: v4([10, 0, 0, 2]),
            server_port: 53,
            client_port: 40000,
            pid: 42,
            latency_ns: 5_000_000_000,
            ..Default::default()
        };
        let wire = b"\x07example\x03com\x00";
        e.name[..wire.len()].copy_from_slice(wire);
        e.name_len = wire.len() as u16;
        e.comm[..3].copy_from_slice(b"dig");
        let r = to_log(&e, &w("/app"), None, SystemTime::UNIX_EPOCH);
        assert_eq!(r.kind, "dns_timeout");
        assert!(r.body.contains("example.com A to 10.0.0.53"), "{}", r.body);
        assert!(r
            .attributes
            .contains(&(Cow::Borrowed("query_name"), "example.com".into())));
        assert!(
            !r.labels.iter().any(|(k, _)| k == "query_name"),
            "the name is never a label"
        );
        assert!(r
            .labels
            .contains(&(Cow::Borrowed("rcode"), "timeout".into())));
        e.qtype = 999;
        let r = to_log(&e, &w("/app"), None, SystemTime::UNIX_EPOCH);
        assert!(r
            .attributes
            .contains(&(Cow::Borrowed("qtype"), "TYPE999".into())));
    }
}
