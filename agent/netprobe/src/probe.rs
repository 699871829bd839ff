//! The runtime: loads `net.bpf.o`, attaches each probe on its own (degrading one by one),
//! reads the maps on collect, reads the ring buffer into log records, serves the top
//! peers.

use std::collections::{BTreeMap, HashMap as StdHashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::Ebpf;
use nodescope_ebpf::loader::{self, LoadError, LoadOptions};
use nodescope_ebpf::net::{self as bpf, Event, PeerKey, PeerStats};
use nodescope_model::selfmetrics::{Counter, Gauge, SelfMetrics};
use nodescope_model::workload::PodLookup;
use nodescope_model::{
    CollectError, Collector, ComponentKind, ComponentState, Emitter, LogRecord, MetricFamily,
    MetricType, Signal, StatusHandle, StatusRegistry,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::aggregate::{self, add_row, ReasonNames, RowKey, Rows};
use crate::budget::{Budget, BudgetMetrics, DnsEntry, LookupEntry, Namer, TcpEntry};
use crate::config::{NetworkConfig, PROBE_DNS, PROGRAMS};
use crate::dns::{self, DnsProbe, DnsRowKey, DnsRows, LookupRowKey, LookupRows};
use crate::events;
use crate::workload::{default_cgroup_root, Resolved, WorkloadResolver};

/// Status component name in `/api/v1/status`.
pub const COMPONENT: &str = "network";
/// Collector name (`collector` label of the agent's collector metrics).
pub const COLLECTOR: &str = "network";
/// Pseudo cgroup id under which user space keeps counts of evicted idle peers once the
/// retired map is full (workload "other").
const RETIRED_OVERFLOW_CGROUP: u64 = u64::MAX;
/// Maximum records per log batch sent to the pipeline.
const EVENT_BATCH: usize = 256;

/// What the lead passes in.
pub struct NetProbeContext {
    pub emitter: Emitter,
    pub status: StatusRegistry,
    pub self_metrics: SelfMetrics,
    pub pods: Option<Arc<dyn PodLookup>>,
    /// The cgroup2 mount as seen by the agent (e.g. `/sys/fs/cgroup/unified` on hybrid
    /// hosts, `/host/sys/fs/cgroup` in a container). Empty = find it in /proc/self/mounts.
    pub cgroup_root: PathBuf,
}

/// The state of one probe (`nodescope_probe_up{probe}`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ProbeHealth {
    pub probe: &'static str,
    pub enabled: bool,
    pub up: bool,
    /// Why it is down (including the verifier log when the kernel refused it).
    pub reason: Option<String>,
    /// `program -> hook` attached.
    pub hooks: Vec<String>,
}

struct Maps {
    peers: BpfHashMap<MapData, PeerKey, PeerStats>,
    other: BpfHashMap<MapData, PeerKey, PeerStats>,
    counters: PerCpuArray<MapData, u64>,
    drops: BpfHashMap<MapData, bpf::DropKey, u64>,
    drops_other: PerCpuArray<MapData, u64>,
    /// The socket table, mapped: active connections per peer.
    socks: crate::slots::SockTable,
    /// Keeps the mapped maps' descriptors (the mappings outlive them anyway).
    _sock_maps: (aya::maps::Map, aya::maps::Map),
}

struct SelfCounters {
    sock_map_full: Counter,
    other_map_full: Counter,
    rate_limited: Counter,
    ringbuf_full: Counter,
    decode_errors: Counter,
    peer_overflow: Counter,
    evictions: Counter,
    rtt_samples: Counter,
    events_read: Counter,
    events_sent_kernel: Counter,
    workload_evictions: Counter,
    unresolved: Counter,
    retired_overflow: Counter,
    map_read_errors: Counter,
    peers: Gauge,
}

impl SelfCounters {
    fn new(m: &SelfMetrics) -> Self {
        const D: &str = "nodescope_netprobe_dropped_total";
        const DH: &str = "Network probe updates or events dropped, by reason.";
        SelfCounters {
            sock_map_full: m.counter(D, DH, &[("reason", "socket_map_full")]),
            other_map_full: m.counter(D, DH, &[("reason", "other_map_full")]),
            rate_limited: m.counter(D, DH, &[("reason", "event_rate_limited")]),
            ringbuf_full: m.counter(D, DH, &[("reason", "ring_buffer_full")]),
            decode_errors: m.counter(D, DH, &[("reason", "event_decode_error")]),
            retired_overflow: m.counter(D, DH, &[("reason", "retired_map_full")]),
            peer_overflow: m.counter(
                "nodescope_netprobe_peer_overflow_total",
                "Updates counted under peer_address=\"other\" because the peer cap was reached.",
                &[],
            ),
            evictions: m.counter(
                "nodescope_netprobe_peer_evictions_total",
                "Idle peers folded into peer_address=\"other\" to free their slot.",
                &[],
            ),
            rtt_samples: m.counter(
                "nodescope_netprobe_rtt_samples_total",
                "RTT samples taken by the throttled tcp_probe hook.",
                &[],
            ),
            events_read: m.counter(
                "nodescope_netprobe_events_total",
                "Notable network events read from the ring buffer and offered to the pipeline.",
                &[],
            ),
            events_sent_kernel: m.counter(
                "nodescope_netprobe_events_submitted_total",
                "Notable network events the kernel side wrote to the ring buffer.",
                &[],
            ),
            workload_evictions: m.counter(
                "nodescope_netprobe_workload_cache_evictions_total",
                "cgroup id to workload cache entries evicted (cache full).",
                &[],
            ),
            unresolved: m.counter(
                "nodescope_netprobe_unresolved_cgroups_total",
                "cgroup ids that could not be mapped to a cgroup path (workload=\"unknown\").",
                &[],
            ),
            map_read_errors: m.counter(
                "nodescope_netprobe_map_read_errors_total",
                "Errors reading eBPF map entries.",
                &[],
            ),
            peers: m.gauge(
                "nodescope_netprobe_peers",
                "Entries in the kernel peer map (bounded by network.peer_cap).",
                &[],
            ),
        }
    }
}

struct Inner {
    cfg: NetworkConfig,
    status: StatusHandle,
    emitter: Emitter,
    health: Vec<ProbeHealth>,
    maps: Option<Mutex<Maps>>,
    ringbuf: Mutex<Option<RingBuf<MapData>>>,
    /// Keeps programs and their links alive; dropping it detaches everything.
    _ebpf: Mutex<Option<Ebpf>>,
    /// The DNS probe (its own object, programs and ring buffer), when up.
    dns: Option<DnsProbe>,
    dns_ringbuf: Mutex<Option<RingBuf<MapData>>>,
    resolver: WorkloadResolver,
    names: ReasonNames,
    retired: Mutex<StdHashMap<(u64, u8), PeerStats>>,
    selfc: SelfCounters,
    /// Peer naming (Kubernetes, CIDR table) and the series budget of what is exposed.
    namer: Namer,
    budget: Mutex<Budget>,
}

/// The network probe. Cheap to clone handles come from [`NetProbe::collector`] and
/// [`NetProbe::router`].
#[derive(Clone)]
pub struct NetProbe {
    inner: Arc<Inner>,
}

impl NetworkConfig {
    /// Loads and attaches the probes. Never fails: a probe that cannot run is reported
    /// down (status + `nodescope_probe_up{probe}=0`) and the others carry on.
    pub fn build(&self, ctx: NetProbeContext) -> NetProbe {
        NetProbe::start(self.clone(), ctx)
    }
}

fn err_text(e: &LoadError) -> String {
    e.to_string()
}

impl NetProbe {
    fn start(cfg: NetworkConfig, ctx: NetProbeContext) -> NetProbe {
        let _span = tracing::info_span!("netprobe").entered();
        let status = ctx.status.register(COMPONENT, ComponentKind::Probe);
        let cgroup_root = if ctx.cgroup_root.as_os_str().is_empty() {
            default_cgroup_root()
        } else {
            ctx.cgroup_root.clone()
        };
        status.set_detail("cgroup_root", cgroup_root.display().to_string());
        let resolver = WorkloadResolver::new(
            cgroup_root.clone(),
            cfg.workload_cache_size,
            ctx.pods.clone(),
        );
        let selfc = SelfCounters::new(&ctx.self_metrics);
        let mut health: Vec<ProbeHealth> = Vec::new();
        for probe in PROGRAMS.iter().map(|(p, _, _)| *p).chain([PROBE_DNS]) {
            if !health.iter().any(|h| h.probe == probe) {
                health.push(ProbeHealth {
                    probe,
                    enabled: cfg.enabled && cfg.probes.enabled(probe),
                    up: false,
                    reason: None,
                    hooks: Vec::new(),
                });
            }
        }
        let mut inner = Inner {
            cfg: cfg.clone(),
            status: status.clone(),
            emitter: ctx.emitter,
            health,
            maps: None,
            ringbuf: Mutex::new(None),
            _ebpf: Mutex::new(None),
            dns: None,
            dns_ringbuf: Mutex::new(None),
            resolver,
            names: ReasonNames::default(),
            retired: Mutex::new(StdHashMap::new()),
            selfc,
            namer: Namer::new(ctx.pods.clone(), &cfg.peer_cidrs),
            budget: Mutex::new(Budget::new(
                cfg.series_budget,
                BudgetMetrics::new(&ctx.self_metrics),
            )),
        };
        if !cfg.enabled {
            status.set_state(ComponentState::Disabled, None);
            for h in &mut inner.health {
                h.reason = Some("disabled by configuration".into());
            }
            return NetProbe {
                inner: Arc::new(inner),
            };
        }
        // Reason names come from tracefs formats; without tracefs they stay numeric.
        match loader::ensure_tracefs() {
            Ok(p) => inner.names = ReasonNames::from_tracefs(&p),
            Err(e) => {
                status.set_detail(
                    "reason_names",
                    format!("numeric (tracefs unavailable: {e})"),
                );
            }
        }
        // Parsed once: CO-RE relocation of both objects and every tp_btf attach target.
        match loader::kernel_btf() {
            Err(e) => Self::all_down(&mut inner, |_| true, &e),
            Ok(btf) => {
                let tcp = |p: &str| p != PROBE_DNS;
                if inner.health.iter().any(|h| h.enabled && tcp(h.probe)) {
                    if let Err(e) = Self::load(&cfg, &mut inner, &btf) {
                        Self::all_down(&mut inner, tcp, &e);
                    }
                }
                if inner
                    .health
                    .iter()
                    .any(|h| h.enabled && h.probe == PROBE_DNS)
                {
                    match DnsProbe::load(&cfg, &btf, &cgroup_root, &ctx.self_metrics) {
                        Ok((probe, rb, hooks)) => {
                            inner.dns = Some(probe);
                            *inner.dns_ringbuf.lock() = Some(rb);
                            if let Some(h) = inner.health.iter_mut().find(|h| h.probe == PROBE_DNS)
                            {
                                h.up = true;
                                h.hooks = hooks;
                            }
                        }
                        Err(e) => Self::all_down(&mut inner, |p| p == PROBE_DNS, &e),
                    }
                }
            }
        }
        let (any_up, any_down) = inner
            .health
            .iter()
            .filter(|h| h.enabled)
            .fold((false, false), |(u, d), h| (u || h.up, d || !h.up));
        let state = match (any_up, any_down) {
            (true, false) => ComponentState::Ok,
            (true, true) => ComponentState::Degraded,
            (false, true) => ComponentState::Unavailable,
            (false, false) => ComponentState::Disabled,
        };
        let err = any_down.then(|| {
            inner
                .health
                .iter()
                .filter(|h| h.enabled && !h.up)
                .filter_map(|h| h.reason.as_ref().map(|r| format!("{}: {r}", h.probe)))
                .collect::<Vec<_>>()
                .join("; ")
        });
        status.set_state(state, err);
        for h in &inner.health {
            let v = match (h.enabled, h.up, &h.reason) {
                (false, _, _) => "disabled".to_string(),
                (true, true, _) => format!("up: {}", h.hooks.join(", ")),
                (true, false, r) => format!("down: {}", r.as_deref().unwrap_or("unknown")),
            };
            status.set_detail(format!("probe.{}", h.probe), v);
        }
        NetProbe {
            inner: Arc::new(inner),
        }
    }

    /// Marks the enabled probes selected by `which` down with `e` as the reason.
    fn all_down(inner: &mut Inner, which: impl Fn(&str) -> bool, e: &LoadError) {
        let text = err_text(e);
        let names: Vec<&str> = inner
            .health
            .iter()
            .filter(|h| h.enabled && which(h.probe))
            .map(|h| h.probe)
            .collect();
        tracing::warn!(error = %text, probes = ?names, "network probes unavailable");
        for h in inner
            .health
            .iter_mut()
            .filter(|h| h.enabled && which(h.probe))
        {
            h.up = false;
            h.reason = Some(text.clone());
        }
        if let Some(log) = e.verifier_log() {
            let key = if names == [PROBE_DNS] {
                "verifier_log.dns"
            } else {
                "verifier_log"
            };
            inner.status.set_detail(key, log.to_string());
        }
    }

    /// Loads net.bpf.o and attaches the TCP probes' programs one by one.
    fn load(cfg: &NetworkConfig, inner: &mut Inner, btf: &aya::Btf) -> Result<(), LoadError> {
        let obj = bpf::NET_OBJ_NAME;
        let sock_sets = (cfg.socket_cap / bpf::SOCK_WAYS).max(1);
        let max_entries = [
            (bpf::MAP_PEERS, cfg.peer_cap),
            (bpf::MAP_PEERS_OTHER, cfg.other_cap),
            // Set-associative: a whole number of sets (socket_cap >= 256 is validated).
            (bpf::MAP_SOCKS, sock_sets * bpf::SOCK_WAYS),
            (bpf::MAP_SOCK_TAGS, sock_sets),
            (bpf::MAP_RTT_LAST, (cfg.socket_cap / 2).max(128)),
            (bpf::MAP_DROPS, cfg.drops.cap),
        ];
        let globals = [
            (
                bpf::CFG_SLOW_CONNECT_NS,
                (cfg.slow_connect_threshold_seconds * 1e9) as u64,
            ),
            (
                bpf::CFG_RTT_INTERVAL_NS,
                (cfg.rtt_sample_interval_seconds * 1e9) as u64,
            ),
            (bpf::CFG_EVENTS_PER_SEC, cfg.events_per_second as u64),
            (bpf::CFG_SOCK_SETS, u64::from(sock_sets)),
        ];
        let mut ebpf = loader::load_with_btf(
            obj,
            bpf::NET_OBJ,
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
        let peers = BpfHashMap::try_from(loader::take_map(&mut ebpf, obj, bpf::MAP_PEERS)?)
            .map_err(|e| map_err(bpf::MAP_PEERS, e))?;
        let other = BpfHashMap::try_from(loader::take_map(&mut ebpf, obj, bpf::MAP_PEERS_OTHER)?)
            .map_err(|e| map_err(bpf::MAP_PEERS_OTHER, e))?;
        let counters = PerCpuArray::try_from(loader::take_map(&mut ebpf, obj, bpf::MAP_COUNTERS)?)
            .map_err(|e| map_err(bpf::MAP_COUNTERS, e))?;
        let drops = BpfHashMap::try_from(loader::take_map(&mut ebpf, obj, bpf::MAP_DROPS)?)
            .map_err(|e| map_err(bpf::MAP_DROPS, e))?;
        let drops_other =
            PerCpuArray::try_from(loader::take_map(&mut ebpf, obj, bpf::MAP_DROPS_OTHER)?)
                .map_err(|e| map_err(bpf::MAP_DROPS_OTHER, e))?;
        // Which reasons count, before the program that reads it is attached.
        let mut filter: aya::maps::Array<MapData, u32> =
            aya::maps::Array::try_from(loader::take_map(&mut ebpf, obj, bpf::MAP_DROP_FILTER)?)
                .map_err(|e| map_err(bpf::MAP_DROP_FILTER, e))?;
        let mut benign_off = 0u32;
        for r in 0..bpf::DROP_SLOTS as u32 {
            let name = inner.names.drop(r);
            let on = cfg.drops.benign || aggregate::drop_class(&name) != "benign";
            benign_off += u32::from(!on);
            filter
                .set(r, u32::from(on), 0)
                .map_err(|e| map_err(bpf::MAP_DROP_FILTER, e))?;
        }
        inner.status.set_detail(
            "drop_reasons",
            if cfg.drops.benign {
                "all reasons counted".to_string()
            } else {
                format!("{benign_off} benign reasons not counted (network.drops.benign = false)")
            },
        );
        let ringbuf = RingBuf::try_from(loader::take_map(&mut ebpf, obj, bpf::MAP_EVENTS)?)
            .map_err(|e| map_err(bpf::MAP_EVENTS, e))?;
        let socks_map = loader::take_map(&mut ebpf, obj, bpf::MAP_SOCKS)?;
        let tags_map = loader::take_map(&mut ebpf, obj, bpf::MAP_SOCK_TAGS)?;
        fn data(m: &aya::maps::Map) -> Option<&MapData> {
            match m {
                aya::maps::Map::Array(d) => Some(d),
                _ => None,
            }
        }
        let socks = match (data(&socks_map), data(&tags_map)) {
            (Some(s), Some(t)) => {
                crate::slots::SockTable::new(s, t, sock_sets as usize).map_err(|e| {
                    map_err(
                        bpf::MAP_SOCKS,
                        aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                            call: "mmap",
                            io_error: e,
                        }),
                    )
                })?
            }
            _ => {
                return Err(LoadError::Map {
                    object: obj.into(),
                    map: bpf::MAP_SOCKS.into(),
                    reason: "not an array map".into(),
                })
            }
        };

        for h in inner.health.iter_mut() {
            if !h.enabled || h.probe == PROBE_DNS {
                continue;
            }
            let mut reasons = Vec::new();
            for (probe, program, default_hook) in PROGRAMS {
                if probe != h.probe {
                    continue;
                }
                let hook = cfg.hook_for(default_hook);
                match loader::load_btf_tracepoint(&mut ebpf, obj, program, hook, btf) {
                    Ok(()) => h.hooks.push(format!("{program} -> tp_btf/{hook}")),
                    Err(e) => {
                        tracing::warn!(probe = h.probe, program, hook, error = %e, "probe program not attached");
                        if let Some(log) = e.verifier_log() {
                            inner
                                .status
                                .set_detail(format!("verifier_log.{program}"), log.to_string());
                        }
                        reasons.push(err_text(&e));
                    }
                }
            }
            if reasons.is_empty() {
                h.up = true;
            } else {
                h.up = false;
                h.reason = Some(reasons.join("; "));
            }
        }
        inner.maps = Some(Mutex::new(Maps {
            peers,
            other,
            counters,
            drops,
            drops_other,
            socks,
            _sock_maps: (socks_map, tags_map),
        }));
        *inner.ringbuf.lock() = Some(ringbuf);
        *inner._ebpf.lock() = Some(ebpf);
        Ok(())
    }

    /// Health of every probe.
    pub fn health(&self) -> Vec<ProbeHealth> {
        self.inner.health.clone()
    }

    /// The collector that reads the kernel maps on each collection.
    pub fn collector(&self) -> Arc<dyn Collector> {
        Arc::new(NetCollector {
            inner: self.inner.clone(),
        })
    }

    /// The ring-buffer reader (events -> log records through the emitter), to run on the
    /// runtime until `shutdown`. Call once inside a tokio runtime (the ring buffer is
    /// registered with it); later calls (or no probes loaded) return None.
    pub fn event_task(
        &self,
        shutdown: CancellationToken,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        if tokio::runtime::Handle::try_current().is_err() {
            self.inner.status.set_detail(
                "events",
                "event_task() called outside a tokio runtime; events not read",
            );
            return None;
        }
        let inner = self.inner.clone();
        let register = |rb: RingBuf<MapData>, what: &str| {
            // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until the
            // AsyncFd (which owns the RingBuf) is dropped.
            match unsafe { AsyncFd::register_with_interest(rb, tokio::io::Interest::READABLE) } {
                Ok(a) => Some(a),
                Err(e) => {
                    inner
                        .status
                        .set_detail(what, format!("ring buffer not pollable: {e}"));
                    None
                }
            }
        };
        let net = self
            .inner
            .ringbuf
            .lock()
            .take()
            .and_then(|rb| register(rb, "events"));
        let dns = self
            .inner
            .dns_ringbuf
            .lock()
            .take()
            .and_then(|rb| register(rb, "dns_events"));
        if net.is_none() && dns.is_none() {
            return None;
        }
        Some(
            event_loop(inner, net, dns, shutdown)
                .instrument(tracing::info_span!("netprobe_events")),
        )
    }

    /// Spawns [`NetProbe::event_task`] on the current runtime (tests and embedders; the
    /// agent runs it as a component task and joins it at shutdown).
    pub fn spawn(&self, shutdown: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
        self.event_task(shutdown).map(tokio::spawn)
    }

    /// `GET /api/v1/network/connections[?limit=N]`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/api/v1/network/connections", get(connections))
            .with_state(self.inner.clone())
    }

    /// One collection, as the collector makes it, with what the series budget did.
    pub fn exposition(&self) -> Result<Exposition, CollectError> {
        self.inner.exposition()
    }

    /// Reads the maps and returns the current labelled rows (for tests and the API).
    pub fn snapshot(&self) -> Result<Rows, CollectError> {
        self.inner.read_rows()
    }

    /// The DNS aggregates and lookups as labelled rows (None: DNS probe not up).
    pub fn dns_snapshot(&self) -> Option<(DnsRows, LookupRows)> {
        self.inner.read_dns_rows()
    }

    /// Runs the sweep of unanswered DNS queries now (normally once a second in the
    /// event task) and returns the timeout events it produced (they are also emitted).
    pub fn sweep_dns_now(&self) -> usize {
        let evs = self.inner.sweep_dns();
        let n = evs.len();
        if n > 0 {
            self.inner.emit_dns_events(&evs);
        }
        n
    }
}

/// Records decoded per wake-up at most; the rest is read on the next one.
const MAX_RECORDS_PER_WAKE: usize = 4096;

/// Waits until `afd` is readable; never when there is no ring buffer.
async fn readable(
    afd: &mut Option<AsyncFd<RingBuf<MapData>>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, RingBuf<MapData>>> {
    match afd {
        Some(a) => a.readable_mut().await,
        None => std::future::pending().await,
    }
}

/// Drains up to [`MAX_RECORDS_PER_WAKE`] records, decoding each with `decode`; clears the
/// readiness only when the ring buffer was emptied.
fn drain<T, E: std::fmt::Display>(
    mut guard: tokio::io::unix::AsyncFdReadyMutGuard<'_, RingBuf<MapData>>,
    decode: impl Fn(&[u8]) -> Result<T, E>,
    errors: &Counter,
) -> Vec<T> {
    let rb = guard.get_inner_mut();
    let mut decoded = Vec::new();
    let mut drained = true;
    while let Some(item) = rb.next() {
        match decode(&item) {
            Ok(e) => decoded.push(e),
            Err(err) => {
                errors.inc();
                tracing::debug!(error = %err, "bad ring buffer record");
            }
        }
        if decoded.len() >= MAX_RECORDS_PER_WAKE {
            drained = false;
            break;
        }
    }
    if drained {
        guard.clear_ready();
    }
    decoded
}

/// Reads both ring buffers and, once a second, sweeps unanswered DNS queries.
async fn event_loop(
    inner: Arc<Inner>,
    mut net: Option<AsyncFd<RingBuf<MapData>>>,
    mut dns: Option<AsyncFd<RingBuf<MapData>>>,
    shutdown: CancellationToken,
) {
    let mut sweep = tokio::time::interval(std::time::Duration::from_secs(1));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            g = readable(&mut net) => match g {
                Ok(g) => {
                    let evs = drain(g, Event::decode, &inner.selfc.decode_errors);
                    if !evs.is_empty() {
                        inner.emit_events(&evs);
                    }
                }
                Err(e) => {
                    inner.status.set_detail("events", format!("ring buffer poll failed: {e}"));
                    net = None;
                }
            },
            g = readable(&mut dns) => match g {
                Ok(g) => {
                    let evs = drain(g, nodescope_ebpf::dns::DnsEvent::decode, &inner.selfc.decode_errors);
                    if !evs.is_empty() {
                        inner.emit_dns_events(&evs);
                    }
                }
                Err(e) => {
                    inner.status.set_detail("dns_events", format!("ring buffer poll failed: {e}"));
                    dns = None;
                }
            },
            _ = sweep.tick(), if inner.dns.is_some() => {
                let i2 = inner.clone();
                // Map iteration is a few syscalls per entry: off the runtime's workers.
                match tokio::task::spawn_blocking(move || i2.sweep_dns()).await {
                    Ok(evs) if !evs.is_empty() => inner.emit_dns_events(&evs),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "DNS sweep task failed"),
                }
            },
        }
        if net.is_none() && dns.is_none() && inner.dns.is_none() {
            break;
        }
    }
}

impl Inner {
    fn sweep_dns(&self) -> Vec<nodescope_ebpf::dns::DnsEvent> {
        match &self.dns {
            Some(d) => d.sweep(events::monotonic_ns()),
            None => Vec::new(),
        }
    }

    fn emit_dns_events(&self, evs: &[nodescope_ebpf::dns::DnsEvent]) {
        let resolved = self.resolver.resolve_all(evs.iter().map(|e| e.cgroup_id));
        let now_mono = events::monotonic_ns();
        let now_wall = SystemTime::now();
        let mut batch: Vec<LogRecord> = Vec::with_capacity(evs.len().min(EVENT_BATCH));
        for e in evs {
            let w = resolved
                .get(&e.cgroup_id)
                .cloned()
                .unwrap_or_else(|| Arc::new(unknown()));
            let pod = self.resolver.pod_for(&w);
            batch.push(dns::to_log(
                e,
                &w,
                pod,
                events::wall_time(e.ts_ns, now_mono, now_wall),
            ));
            self.selfc.events_read.inc();
            if batch.len() >= EVENT_BATCH {
                self.emitter
                    .emit(Signal::Logs(nodescope_model::LogBatch::from(
                        std::mem::take(&mut batch),
                    )));
            }
        }
        if !batch.is_empty() {
            self.emitter
                .emit(Signal::Logs(nodescope_model::LogBatch::from(batch)));
        }
    }

    /// Reads the DNS aggregates and resolves their workloads.
    fn read_dns_entries(&self) -> Option<(Vec<DnsEntry>, Vec<LookupEntry>)> {
        let d = self.dns.as_ref()?;
        let (snap, errors) = d.read();
        self.selfc.map_read_errors.add(errors);
        let ids = snap
            .stats
            .iter()
            .map(|(k, _)| k.cgroup_id)
            .chain(snap.lookups.iter().map(|(cg, _)| *cg));
        let resolved = self.resolver.resolve_all(ids);
        let with_pods = self.resolver.has_pod_lookup();
        let get = |cg: u64| {
            resolved
                .get(&cg)
                .cloned()
                .unwrap_or_else(|| Arc::new(unknown()))
        };
        let stats = snap
            .stats
            .into_iter()
            .map(|(key, stats)| {
                let w = get(key.cgroup_id);
                let pod = with_pods.then(|| self.resolver.pod_for(&w));
                DnsEntry {
                    key,
                    stats,
                    workload: w,
                    pod,
                }
            })
            .collect();
        let lookups = snap
            .lookups
            .into_iter()
            .map(|(cg, stats)| {
                let w = get(cg);
                let pod = with_pods.then(|| self.resolver.pod_for(&w));
                LookupEntry {
                    cgroup_id: cg,
                    stats,
                    workload: w,
                    pod,
                }
            })
            .collect();
        Some((stats, lookups))
    }

    /// The DNS aggregates as labelled rows (raw: no budget).
    fn read_dns_rows(&self) -> Option<(DnsRows, LookupRows)> {
        let (stats, lookups) = self.read_dns_entries()?;
        let mut rows = DnsRows::new();
        for e in &stats {
            rows.entry(DnsRowKey::new(&e.workload, e.pod.clone(), &e.key))
                .or_default()
                .merge(&e.stats);
        }
        let mut lrows = LookupRows::new();
        for e in &lookups {
            let pod = e.pod.as_ref().map(|p| {
                p.as_ref()
                    .map(|p| (p.namespace.clone(), p.pod.clone(), p.container.clone()))
                    .unwrap_or_default()
            });
            let r = lrows
                .entry(LookupRowKey {
                    workload: e.workload.id.clone(),
                    pod,
                })
                .or_default();
            r.lookups = r.lookups.saturating_add(e.stats.lookups);
            r.queries = r.queries.saturating_add(e.stats.queries);
        }
        Some((rows, lrows))
    }

    fn emit_events(&self, evs: &[Event]) {
        let ids: Vec<u64> = evs.iter().map(|e| e.cgroup_id).collect();
        let resolved = self.resolver.resolve_all(ids);
        let now_mono = events::monotonic_ns();
        let now_wall = SystemTime::now();
        let mut batch: Vec<LogRecord> = Vec::with_capacity(evs.len().min(EVENT_BATCH));
        for e in evs {
            let w = resolved
                .get(&e.cgroup_id)
                .cloned()
                .unwrap_or_else(|| Arc::new(unknown()));
            let pod = self.resolver.pod_for(&w);
            batch.push(events::to_log(
                e,
                &w,
                pod,
                &self.names,
                events::wall_time(e.ts_ns, now_mono, now_wall),
            ));
            self.selfc.events_read.inc();
            if batch.len() >= EVENT_BATCH {
                self.emitter
                    .emit(Signal::Logs(nodescope_model::LogBatch::from(
                        std::mem::take(&mut batch),
                    )));
            }
        }
        if !batch.is_empty() {
            self.emitter
                .emit(Signal::Logs(nodescope_model::LogBatch::from(batch)));
        }
    }

    fn sum_counter(arr: &PerCpuArray<MapData, u64>, idx: u32) -> u64 {
        arr.get(&idx, 0)
            .map(|v| v.iter().fold(0u64, |a, b| a.saturating_add(*b)))
            .unwrap_or(0)
    }

    /// Reads the peer maps and returns labelled rows, one per kernel entry's labels (raw
    /// addresses, no budget: the tests' view).
    fn read_rows(&self) -> Result<Rows, CollectError> {
        let mut rows = Rows::new();
        for e in self.read_entries()? {
            add_row(
                &mut rows,
                RowKey::new(&e.workload, e.pod.clone(), &e.key, e.overflow),
                &e.stats,
            );
        }
        Ok(rows)
    }

    /// Raw rows (one per address) with the peer's workload added when it is named: the
    /// per-address detail of `/api/v1/network/connections`.
    fn read_named_rows(&self) -> Result<Rows, CollectError> {
        let mut rows = Rows::new();
        for e in self.read_entries()? {
            let mut k = RowKey::new(&e.workload, e.pod.clone(), &e.key, e.overflow);
            if !e.overflow && self.namer.enabled() {
                let (named, _) = self
                    .namer
                    .name(nodescope_ebpf::net::ip_from_bytes(&e.key.addr));
                k.peer_named = named.filter(|(_, w)| !w.is_empty());
            }
            add_row(&mut rows, k, &e.stats);
        }
        Ok(rows)
    }

    /// Reads the peer maps (evicting idle peers into "other") and resolves workloads.
    fn read_entries(&self) -> Result<Vec<TcpEntry>, CollectError> {
        let Some(maps) = &self.maps else {
            return Ok(Vec::new());
        };
        let mut maps = maps.lock();
        let mut entries: Vec<(PeerKey, PeerStats, bool)> = Vec::new();
        let mut errors = 0u64;
        for r in maps.peers.iter() {
            match r {
                Ok((k, v)) => entries.push((k, v, false)),
                Err(_) => errors += 1,
            }
        }
        let npeers = entries.len();
        for r in maps.other.iter() {
            match r {
                Ok((k, v)) => entries.push((k, v, true)),
                Err(_) => errors += 1,
            }
        }
        self.selfc.map_read_errors.add(errors);
        self.selfc.peers.set(npeers as f64);
        // Active connections, counted in the socket table: onto their peer's entry; a
        // peer without one yet (an accepted connection still open) gets one while the
        // peer cap allows, else its workload's "other".
        let mut active = maps.socks.active();
        for (k, v, overflow) in entries.iter_mut() {
            if !*overflow {
                v.active = active.remove(k).unwrap_or(0);
            }
        }
        let mut room = (self.cfg.peer_cap as usize).saturating_sub(npeers);
        let mut rest: Vec<(PeerKey, i64)> = active.into_iter().collect();
        rest.sort_by_key(|(k, _)| (k.cgroup_id, k.addr, k.port, k.direction));
        for (k, n) in rest {
            let stats = PeerStats {
                active: n,
                ..PeerStats::default()
            };
            if room > 0 {
                room -= 1;
                entries.push((k, stats, false));
            } else {
                let o = PeerKey {
                    cgroup_id: k.cgroup_id,
                    direction: k.direction,
                    ..PeerKey::default()
                };
                entries.push((o, stats, true));
            }
        }

        // Idle eviction: peers with no open connection and no update for the timeout
        // are removed from the kernel map; their counts move to the retired "other".
        let timeout_ns = self
            .cfg
            .peer_idle_timeout_seconds
            .saturating_mul(1_000_000_000);
        if timeout_ns > 0 {
            let now = events::monotonic_ns();
            let mut retired = self.retired.lock();
            let cap = self.cfg.other_cap as usize;
            for (k, v, overflow) in entries.iter_mut() {
                if *overflow || v.active > 0 || now.saturating_sub(v.last_seen_ns) < timeout_ns {
                    continue;
                }
                if maps.peers.remove(k).is_ok() {
                    self.selfc.evictions.inc();
                    let mut rk = (k.cgroup_id, k.direction);
                    if !retired.contains_key(&rk) && retired.len() >= cap {
                        rk = (RETIRED_OVERFLOW_CGROUP, k.direction);
                        self.selfc.retired_overflow.inc();
                    }
                    retired.entry(rk).or_default().merge(v);
                    // Already merged into `retired` (pushed below); skip this entry.
                    *overflow = true;
                    *v = PeerStats::default();
                }
            }
            for ((cg, dir), s) in retired.iter() {
                let key = PeerKey {
                    cgroup_id: *cg,
                    direction: *dir,
                    ..PeerKey::default()
                };
                entries.push((key, *s, true));
            }
        }

        let c = &maps.counters;
        self.selfc
            .sock_map_full
            .set(Self::sum_counter(c, bpf::CNT_SOCK_MAP_FULL));
        self.selfc
            .peer_overflow
            .set(Self::sum_counter(c, bpf::CNT_PEER_OVERFLOW));
        self.selfc
            .other_map_full
            .set(Self::sum_counter(c, bpf::CNT_OTHER_MAP_FULL));
        self.selfc
            .rate_limited
            .set(Self::sum_counter(c, bpf::CNT_EVENTS_RATE_LIMITED));
        self.selfc
            .ringbuf_full
            .set(Self::sum_counter(c, bpf::CNT_EVENTS_LOST));
        self.selfc
            .rtt_samples
            .set(Self::sum_counter(c, bpf::CNT_RTT_SAMPLES));
        self.selfc
            .events_sent_kernel
            .set(Self::sum_counter(c, bpf::CNT_EVENTS_SENT));
        drop(maps);

        let ids: Vec<u64> = entries
            .iter()
            .map(|(k, _, _)| k.cgroup_id)
            .filter(|&id| id != RETIRED_OVERFLOW_CGROUP)
            .collect();
        let resolved = self.resolver.resolve_all(ids);
        self.selfc
            .workload_evictions
            .set(self.resolver.evictions.get());
        self.selfc.unresolved.set(self.resolver.unresolved.get());
        let other_w = Arc::new(Resolved {
            kind: nodescope_model::workload::WorkloadKind::Cgroup,
            id: aggregate::OTHER.into(),
            path: String::new(),
        });
        let with_pods = self.resolver.has_pod_lookup();
        let mut out = Vec::with_capacity(entries.len());
        for (k, v, overflow) in entries {
            if overflow && is_zero(&v) {
                continue;
            }
            let w = if k.cgroup_id == RETIRED_OVERFLOW_CGROUP {
                other_w.clone()
            } else {
                resolved
                    .get(&k.cgroup_id)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(unknown()))
            };
            let pod = with_pods.then(|| self.resolver.pod_for(&w));
            out.push(TcpEntry {
                key: k,
                stats: v,
                overflow,
                workload: w,
                pod,
            });
        }
        Ok(out)
    }

    /// Drops by workload and reason (cgroup 0, no socket: `unattributed`; past the map's
    /// bound: `other`).
    fn read_drops(&self) -> BTreeMap<aggregate::DropRow, u64> {
        let mut rows = BTreeMap::new();
        let Some(maps) = &self.maps else {
            return rows;
        };
        let (entries, other) = {
            let maps = maps.lock();
            let entries: Vec<(bpf::DropKey, u64)> =
                maps.drops.iter().filter_map(Result::ok).collect();
            let other: Vec<(u32, u64)> = (0..bpf::DROP_SLOTS as u32)
                .filter_map(|i| {
                    let n = Self::sum_counter(&maps.drops_other, i);
                    (n > 0).then_some((i, n))
                })
                .collect();
            (entries, other)
        };
        let resolved = self
            .resolver
            .resolve_all(entries.iter().map(|(k, _)| k.cgroup_id).filter(|&c| c != 0));
        let with_pods = self.resolver.has_pod_lookup();
        let empty_pod = || with_pods.then(Default::default);
        for (k, n) in entries {
            let (workload, pod) = if k.cgroup_id == 0 {
                ("unattributed".to_string(), empty_pod())
            } else {
                let w = resolved
                    .get(&k.cgroup_id)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(unknown()));
                let pod = with_pods.then(|| {
                    self.resolver
                        .pod_for(&w)
                        .map(|p| (p.namespace, p.pod, p.container))
                        .unwrap_or_default()
                });
                (w.id.clone(), pod)
            };
            *rows
                .entry(aggregate::DropRow {
                    workload,
                    pod,
                    reason: self.names.drop(k.reason),
                })
                .or_default() += n;
        }
        for (r, n) in other {
            *rows
                .entry(aggregate::DropRow {
                    workload: aggregate::OTHER.into(),
                    pod: empty_pod(),
                    reason: self.names.drop(r),
                })
                .or_default() += n;
        }
        rows
    }

    fn probe_up_family(&self) -> MetricFamily {
        let mut f = MetricFamily::new(
            "nodescope_probe_up",
            "1 when the eBPF probe is attached and running; the reason is in /api/v1/status.",
            MetricType::Gauge,
        );
        for h in self.health.iter().filter(|h| h.enabled) {
            f.push([("probe", h.probe)], if h.up { 1.0 } else { 0.0 });
        }
        f
    }
}

fn is_zero(s: &PeerStats) -> bool {
    *s == PeerStats::default()
}

fn unknown() -> Resolved {
    Resolved {
        kind: nodescope_model::workload::WorkloadKind::Cgroup,
        id: crate::workload::UNKNOWN.into(),
        path: String::new(),
    }
}

struct NetCollector {
    inner: Arc<Inner>,
}

impl Collector for NetCollector {
    fn name(&self) -> &'static str {
        COLLECTOR
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        Ok(self.inner.exposition()?.families)
    }
}

/// One collection of the network families, with what the series budget did to it.
pub struct Exposition {
    pub families: Vec<MetricFamily>,
    /// Series of `families` (histograms count their buckets, `+Inf`, sum and count).
    pub series: usize,
    /// Distinct peer and DNS rows before the budget (`other` excluded).
    pub rows_before: usize,
    /// Rows this collection folded into `other`.
    pub folded: usize,
    /// Rows exposed under their own peer (`other` excluded).
    pub exposed_rows: usize,
}

impl Inner {
    fn exposition(&self) -> Result<Exposition, CollectError> {
        let start = Instant::now();
        let inner = self;
        let mut out = vec![inner.probe_up_family()];
        if inner.maps.is_none() && inner.dns.is_none() {
            let series = out.iter().map(|f| f.points.len()).sum();
            return Ok(Exposition {
                families: out,
                series,
                rows_before: 0,
                folded: 0,
                exposed_rows: 0,
            });
        }
        if inner
            .health
            .iter()
            .any(|h| h.probe == crate::config::PROBE_DROPS && h.up)
        {
            out.push(aggregate::drops_family(&inner.read_drops()));
        }
        let tcp = inner.read_entries()?;
        let (dns_e, lookups_e) = inner.read_dns_entries().unwrap_or_default();
        // Outside the budget's reach: probe health and drops by reason.
        let fixed: usize = out.iter().map(|f| f.points.len()).sum();
        let x = inner
            .budget
            .lock()
            .apply(&inner.namer, tcp, dns_e, lookups_e, fixed);
        out.extend(aggregate::families(&x.rows, &inner.names));
        if inner.dns.is_some() {
            out.extend(dns::families(&x.dns, &x.lookups));
        }
        inner.status.set_detail(
            "last_collect_seconds",
            format!("{:.6}", start.elapsed().as_secs_f64()),
        );
        Ok(Exposition {
            families: out,
            series: x.series,
            rows_before: x.rows_before,
            folded: x.folded,
            exposed_rows: x.exposed_rows,
        })
    }
}

#[derive(Deserialize)]
struct ConnQuery {
    limit: Option<usize>,
}

#[derive(Serialize)]
struct ConnResponse {
    probes: Vec<ProbeHealth>,
    #[serde(flatten)]
    top: aggregate::TopPeers,
}

async fn connections(State(inner): State<Arc<Inner>>, Query(q): Query<ConnQuery>) -> Response {
    let limit = q.limit.unwrap_or(inner.cfg.top_peers).clamp(1, 1000);
    let i2 = inner.clone();
    let res = tokio::task::spawn_blocking(move || i2.read_named_rows()).await;
    match res {
        Ok(Ok(rows)) => Json(ConnResponse {
            probes: inner.health.clone(),
            top: aggregate::top_peers(&rows, limit),
        })
        .into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reader task failed: {e}"),
        )
            .into_response(),
    }
}

/// Helper for tests and docs: the label sets of one family as maps.
pub fn points_of<'a>(
    fams: &'a [MetricFamily],
    name: &str,
) -> Vec<(BTreeMap<String, String>, &'a nodescope_model::Value)> {
    fams.iter()
        .filter(|f| f.name == name)
        .flat_map(|f| f.points.iter())
        .map(|p| {
            (
                p.labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
                &p.value,
            )
        })
        .collect()
}
