//! The runtime profiler: on-demand profiles (any target), the continuous profiler, and
//! the bookkeeping between them (one profile per target, a global concurrency bound,
//! eBPF availability, self metrics, status).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nodescope_model::collector::{CollectError, Collector};
use nodescope_model::feeds::SampleSink;
use nodescope_model::metrics::{MetricFamily, MetricType};
use nodescope_model::services::Services;
use nodescope_model::signal::{Emitter, Signal};
use nodescope_model::status::{ComponentKind, ComponentState, StatusHandle};
use nodescope_model::workload::{PodLookup, WorkloadKind};
use nodescope_model::Profile;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::config::{ProfilerContext, ProfilingConfig, SelfProfiler};
use crate::feed::RateControl;
use crate::metrics::ProfilerMetrics;
use crate::output::{self, Format, ProfileMeta};
use crate::request::{ProfileKind, ProfileRequest, RequestLimits, Target};
use crate::sampler::{
    Drained, EbpfSampler, Filter, OffCpuInterval, SamplerCounters, SamplerError, SamplerOptions,
    StackSource,
};
use crate::samples::{Aggregator, RawSample};
use crate::symbolize::{ResolvedSample, Symbolizer, SymbolizerLimits};

/// Why a profile could not be produced; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{0}")]
    BadRequest(#[from] crate::request::RequestError),
    #[error("{0}")]
    NotFound(String),
    #[error("a profile of {0} is already running; try again when it finishes")]
    Busy(String),
    #[error("{running} profiles are already running (profiling.max_concurrent); try again later")]
    TooMany { running: usize },
    #[error("profiling is disabled ([profiling] enabled = false)")]
    Disabled,
    #[error("the eBPF profiler is unavailable: {0}")]
    EbpfUnavailable(String),
    #[error("the profile was cancelled")]
    Cancelled,
    #[error("internal error: {0}")]
    Internal(String),
}

/// The profiler's background loop, run on its own thread (see [`ProfilerService::background`]).
pub type BackgroundJob = Box<dyn FnOnce() + Send + 'static>;

/// A finished on-demand profile.
#[derive(Debug)]
pub struct Rendered {
    pub format: Format,
    pub body: Vec<u8>,
    /// `ebpf` or `sigprof`.
    pub sampler: &'static str,
    pub samples: u64,
}

pub struct ProfilerService {
    cfg: ProfilingConfig,
    emitter: Emitter,
    status: StatusHandle,
    pub(crate) metrics: ProfilerMetrics,
    pods: Option<Arc<dyn PodLookup>>,
    host_proc: PathBuf,
    symbolizer: Arc<Symbolizer>,
    active: Mutex<HashSet<String>>,
    running: AtomicUsize,
    ebpf_error: Mutex<Option<String>>,
    continuous_up: AtomicBool,
    sigprof_busy: AtomicBool,
    /// Cancelled when the agent shuts down: on-demand profiles stop sampling and answer
    /// with what they have.
    wrap_up: std::sync::OnceLock<CancellationToken>,
    services: Services,
    /// DWARF unwind tables built so far, shared by every sampler.
    tables: Arc<crate::unwind::TableCache>,
    /// Emit continuous profiles into the pipeline (an exporter takes profiles).
    emit_profiles: bool,
    control: Arc<RateControl>,
}

impl std::fmt::Debug for ProfilerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfilerService")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// Releases a target slot (and the global count) when dropped, wherever the profile ends.
struct Slot {
    svc: Arc<ProfilerService>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.svc.active.lock().remove(&self.key);
        self.svc.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Adds the growth of a sampler's cumulative counters to the global self metrics.
struct CounterTracker {
    last: SamplerCounters,
}

impl CounterTracker {
    fn new() -> Self {
        CounterTracker {
            last: SamplerCounters::default(),
        }
    }
    fn update(&mut self, m: &ProfilerMetrics, now: SamplerCounters) {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        m.samples.add(d(now.samples, self.last.samples));
        m.lost_samples
            .add(d(now.lost_ringbuf, self.last.lost_ringbuf));
        m.stack_errors.add(
            d(now.kstack_errors, self.last.kstack_errors)
                + d(now.ustack_errors, self.last.ustack_errors),
        );
        m.filtered.add(d(now.filtered, self.last.filtered));
        m.offcpu_lost.add(d(now.offcpu_lost, self.last.offcpu_lost));
        m.offcpu_skipped
            .add(d(now.offcpu_skipped, self.last.offcpu_skipped));
        m.offcpu_dropped
            .add(d(now.offcpu_map_full, self.last.offcpu_map_full));
        self.last = now;
    }
}

/// Sleeps up to `d`, waking early on cancellation (checked every `step`). Returns true if
/// cancelled.
fn sleep_or_cancel_step(d: Duration, step: Duration, cancel: &CancellationToken) -> bool {
    let end = Instant::now() + d;
    loop {
        if cancel.is_cancelled() {
            return true;
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(left.min(step));
    }
}

/// Sleeps up to `d` in 50 ms steps (on-demand profiles notice a client that went away
/// within 50 ms), waking early when `stop` says so. Returns true if woken.
fn sleep_until(d: Duration, stop: impl Fn() -> bool) -> bool {
    let end = Instant::now() + d;
    loop {
        if stop() {
            return true;
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

impl ProfilerService {
    pub(crate) fn new(cfg: ProfilingConfig, ctx: ProfilerContext) -> Arc<Self> {
        let metrics = ProfilerMetrics::new(&ctx.self_metrics);
        let status = ctx.status.register("profiler", ComponentKind::Profiler);
        let limits = SymbolizerLimits {
            max_binaries: cfg.max_binaries,
            max_symbols_per_binary: cfg.max_symbols_per_binary,
            max_processes: cfg.max_processes,
            process_retention: Duration::from_secs(cfg.process_retention_secs),
            debug_info: cfg.debug_info,
            debug_info_max_bytes: cfg.debug_info_max_binary_mb << 20,
        };
        let symbolizer = Arc::new(Symbolizer::new(
            ctx.host_proc.clone(),
            limits,
            metrics.clone(),
        ));
        if !cfg.enabled {
            status.set_state(ComponentState::Disabled, None);
        }
        let control = Arc::new(RateControl::new(
            cfg.hz,
            cfg.max_hz,
            cfg.enabled && cfg.continuous,
        ));
        Arc::new(ProfilerService {
            cfg,
            emitter: ctx.emitter,
            status,
            metrics,
            pods: ctx.pods,
            host_proc: ctx.host_proc,
            symbolizer,
            active: Mutex::new(HashSet::new()),
            running: AtomicUsize::new(0),
            ebpf_error: Mutex::new(None),
            continuous_up: AtomicBool::new(false),
            sigprof_busy: AtomicBool::new(false),
            wrap_up: std::sync::OnceLock::new(),
            services: ctx.services,
            tables: Arc::new(crate::unwind::TableCache::new(
                nodescope_ebpf::profile::UNWIND_MAX_ROWS as usize,
            )),
            emit_profiles: ctx.emit_profiles,
            control,
        })
    }

    pub fn config(&self) -> &ProfilingConfig {
        &self.cfg
    }

    pub fn metrics(&self) -> &ProfilerMetrics {
        &self.metrics
    }

    /// The continuous profiler's rate control (provided as `dyn ProfilerControl`).
    pub fn control(&self) -> Arc<RateControl> {
        self.control.clone()
    }

    pub fn limits(&self) -> RequestLimits {
        RequestLimits {
            default_seconds: self.cfg.default_seconds,
            max_seconds: self.cfg.max_seconds,
            default_hz: self.cfg.default_hz,
            max_hz: self.cfg.max_hz,
        }
    }

    /// The last reason eBPF sampling failed, if it did.
    pub fn ebpf_error(&self) -> Option<String> {
        self.ebpf_error.lock().clone()
    }

    /// Starts a sampler; with `unwind = "dwarf"` it gets unwind maps, and the pids of a
    /// pid filter are registered at once (others as they show up in samples).
    fn start_sampler(&self, hz: u32, filter: &Filter) -> Result<EbpfSampler, SamplerError> {
        self.start_sampler_with(
            SamplerOptions {
                hz: Some(hz),
                offcpu_ratio: None,
            },
            filter,
        )
    }

    fn start_sampler_with(
        &self,
        opts: SamplerOptions,
        filter: &Filter,
    ) -> Result<EbpfSampler, SamplerError> {
        let mut s = EbpfSampler::start_with(opts, filter)?;
        if self.cfg.unwind == crate::sampler::UnwindMethod::Dwarf {
            match s.enable_dwarf(
                self.tables.clone(),
                self.host_proc.clone(),
                Some(self.metrics.clone()),
            ) {
                Ok(()) => {
                    if let (Filter::Pids(pids), Some(u)) = (filter, s.unwind()) {
                        u.register_now(pids, Duration::from_secs(2));
                        // Samples taken while the tables were built were walked with
                        // frame pointers: the profile starts now.
                        let _ = s.drain();
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "DWARF unwinding unavailable; frame pointers only")
                }
            }
        }
        Ok(s)
    }

    fn note_ebpf(&self, r: &Result<EbpfSampler, SamplerError>) {
        match r {
            Ok(_) => {
                if self.ebpf_error.lock().take().is_some() {
                    self.status.set_state(ComponentState::Ok, None);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                self.status.set_detail("ebpf", "down");
                self.status.set_detail("ebpf_error", msg.clone());
                // Self-profiling may still work (SIGPROF); node-wide profiles do not.
                self.status.set_state(
                    ComponentState::Degraded,
                    Some(format!("eBPF sampler unavailable: {msg}")),
                );
                *self.ebpf_error.lock() = Some(msg);
            }
        }
    }

    /// The profiler's background work, to run on a dedicated thread until `shutdown` is
    /// cancelled: the continuous profiler (emitting what it has when it stops) or, with
    /// continuous profiling off, a one-off start-up check of eBPF sampling so that the
    /// status is true before the first node-wide request. `None` when profiling is off.
    pub fn background(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> Option<(&'static str, BackgroundJob)> {
        if !self.cfg.enabled {
            return None;
        }
        let svc = self.clone();
        if !self.cfg.continuous {
            self.status.set_detail("continuous", "disabled");
            // Load the sampler once with a filter that matches no process (1 Hz, dropped at
            // once). Off the caller's thread: loading takes tens of ms.
            return Some((
                "profiler-check",
                Box::new(move || {
                    let span = tracing::info_span!("profiler", mode = "startup_check");
                    let _e = span.enter();
                    let r = EbpfSampler::start(1, &Filter::Pids(Vec::new()));
                    svc.note_ebpf(&r);
                    match r {
                        Ok(_) => {
                            svc.status.set_detail("ebpf", "up");
                            svc.status.set_state(ComponentState::Ok, None)
                        }
                        Err(e) => tracing::warn!(
                            error = %e,
                            "eBPF profiling unavailable: node-wide profiles will answer 503; \
                             self-profiling falls back to SIGPROF"
                        ),
                    }
                }),
            ));
        }
        Some((
            "profiler",
            Box::new(move || {
                let span = tracing::info_span!("profiler", mode = "continuous");
                let _e = span.enter();
                svc.continuous_loop(&shutdown);
            }),
        ))
    }

    /// Starts [`ProfilerService::background`] on its own thread (tests and embedders; the
    /// agent runs it as a component task and joins it at shutdown).
    pub fn spawn(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> Option<std::thread::JoinHandle<()>> {
        let (name, job) = self.background(shutdown)?;
        match std::thread::Builder::new()
            .name(format!("ns-{name}"))
            .spawn(job)
        {
            Ok(h) => Some(h),
            Err(e) => {
                self.status.failure(
                    ComponentState::Failed,
                    format!("spawning the profiler thread: {e}"),
                    None,
                );
                None
            }
        }
    }

    /// Self-observability gauges (sizes of the symbolizer caches, eBPF state, profiles running).
    pub fn collector(&self) -> Arc<dyn Collector> {
        Arc::new(ProfilerCollector {
            symbolizer: self.symbolizer.clone(),
            status: self.status.clone(),
        })
    }

    fn unwind_description(&self) -> String {
        match self.cfg.unwind {
            crate::sampler::UnwindMethod::Dwarf => {
                "DWARF CFI unwinding in BPF (frame pointers where a binary has no table)".into()
            }
            crate::sampler::UnwindMethod::FramePointers => "frame-pointer unwinding".into(),
        }
    }

    /// Unwind quality per binary and the unwind tables held, into the status details.
    fn publish_quality(&self) {
        self.status
            .set_detail("unwind_quality", self.metrics.quality_summary(8));
        let (tables, rows, evictions) = self.tables.stats();
        self.status.set_detail(
            "unwind_tables",
            format!(
                "{tables} binaries, {rows} rows ({:.1} MiB at 8 bytes/row), {evictions} evicted",
                rows as f64 * 8.0 / (1 << 20) as f64
            ),
        );
    }

    fn publish_running(&self) {
        self.status.set_detail(
            "active_profiles",
            self.running.load(Ordering::Acquire).to_string(),
        );
    }

    fn acquire(self: &Arc<Self>, key: String) -> Result<Slot, ProfileError> {
        let mut active = self.active.lock();
        if active.contains(&key) {
            return Err(ProfileError::Busy(key));
        }
        let running = self.running.load(Ordering::Acquire);
        if running >= self.cfg.max_concurrent {
            return Err(ProfileError::TooMany { running });
        }
        active.insert(key.clone());
        self.running.fetch_add(1, Ordering::AcqRel);
        drop(active);
        Ok(Slot {
            svc: self.clone(),
            key,
        })
    }

    /// Resolves a target to an in-BPF filter.
    fn filter_for(&self, target: &Target) -> Result<Filter, ProfileError> {
        match target {
            Target::Agent => Ok(Filter::Pids(vec![std::process::id()])),
            Target::All => Ok(Filter::All),
            Target::Pid(p) => {
                if !self.host_proc.join(p.to_string()).join("stat").exists() {
                    return Err(ProfileError::NotFound(format!(
                        "pid {p} does not exist (looked in {})",
                        self.host_proc.display()
                    )));
                }
                Ok(Filter::Pids(vec![*p]))
            }
            Target::Container(id) => {
                let ids = cgroup_ids_matching(&cgroup2_roots(), |name| name.contains(id.as_str()))
                    .map_err(ProfileError::Internal)?;
                if ids.is_empty() {
                    return Err(ProfileError::NotFound(format!(
                        "no cgroup v2 directory of container {id} found"
                    )));
                }
                Ok(Filter::Cgroups(ids))
            }
            Target::Cgroup(path) => {
                let mut ids = Vec::new();
                for root in cgroup2_roots() {
                    let dir = root.join(path.trim_start_matches('/'));
                    if dir.is_dir() {
                        collect_cgroup_ids(&dir, &mut ids, 0).map_err(ProfileError::Internal)?;
                    }
                }
                if ids.is_empty() {
                    return Err(ProfileError::NotFound(format!(
                        "cgroup {path} does not exist in any cgroup2 mount"
                    )));
                }
                Ok(Filter::Cgroups(ids))
            }
        }
    }

    /// On-demand profiles in flight when `shutdown` is cancelled stop sampling at once and
    /// answer with the samples they have (so the agent's shutdown deadline holds and the
    /// client still gets a profile).
    pub fn wrap_up_on(&self, shutdown: CancellationToken) {
        let _ = self.wrap_up.set(shutdown);
    }

    fn wrapping_up(&self) -> bool {
        self.wrap_up.get().is_some_and(|t| t.is_cancelled())
    }

    /// Runs one on-demand profile. Cancelling `cancel` (the HTTP client went away) stops
    /// sampling within ~50 ms and releases the target and the BPF program.
    pub async fn profile(
        self: &Arc<Self>,
        req: ProfileRequest,
        cancel: CancellationToken,
    ) -> Result<Rendered, ProfileError> {
        if !self.cfg.enabled {
            return Err(ProfileError::Disabled);
        }
        let filter = self.filter_for(&req.target)?;
        let slot = self.acquire(req.key())?;
        self.publish_running();
        let svc = self.clone();
        let span = tracing::info_span!("profile", target = %req.target.key(), r#type = req.kind.as_str(), seconds = req.seconds, hz = req.hz);
        let res = tokio::task::spawn_blocking(move || {
            let _e = span.enter();
            let r = svc.profile_blocking(&req, filter, &cancel);
            drop(slot);
            svc.publish_running();
            r
        })
        .await
        .map_err(|e| ProfileError::Internal(format!("profile task: {e}")))?;
        res
    }

    fn profile_blocking(
        &self,
        req: &ProfileRequest,
        filter: Filter,
        cancel: &CancellationToken,
    ) -> Result<Rendered, ProfileError> {
        if req.kind != ProfileKind::Cpu {
            return self.profile_time(req, filter, cancel);
        }
        let start = SystemTime::now();
        let t0 = Instant::now();
        let duration = Duration::from_secs(req.seconds);
        let sigprof_only =
            req.target == Target::Agent && self.cfg.self_profiler == SelfProfiler::Sigprof;
        let started = if sigprof_only {
            None
        } else {
            let r = self.start_sampler(req.hz, &filter);
            self.note_ebpf(&r);
            Some(r)
        };
        // The sampling window (start, length), excluding load and symbolization time.
        let window: (SystemTime, Duration);
        let (raw, sampler_name, mut comments) = match started {
            Some(Ok(mut s)) => {
                let (ws, wt) = (SystemTime::now(), Instant::now());
                let raw = self.collect_ebpf(&mut s, duration, cancel)?;
                window = (ws, wt.elapsed());
                (
                    raw,
                    "ebpf",
                    vec![format!(
                        "nodescope eBPF sampler, cpu-clock at {} Hz, {}",
                        req.hz,
                        self.unwind_description()
                    )],
                )
            }
            Some(Err(e)) if req.target == Target::Agent => {
                // eBPF is down: the agent can still profile itself with SIGPROF.
                let raw = self.run_sigprof(req.hz, duration, cancel)?;
                window = (start, t0.elapsed());
                (
                    raw,
                    "sigprof",
                    vec![format!(
                        "pprof-rs SIGPROF fallback at {} Hz (eBPF unavailable: {e})",
                        req.hz
                    )],
                )
            }
            None => {
                let raw = self.run_sigprof(req.hz, duration, cancel)?;
                window = (start, t0.elapsed());
                (raw, "sigprof", vec![format!("pprof-rs SIGPROF self-profiler at {} Hz (profiling.self_profiler = \"sigprof\")", req.hz)])
            }
            Some(Err(e)) => return Err(ProfileError::EbpfUnavailable(e.to_string())),
        };
        if cancel.is_cancelled() {
            return Err(ProfileError::Cancelled);
        }
        if self.wrapping_up() {
            comments.push(format!(
                "ended early after {:.1} s of {} s: the agent is shutting down",
                window.1.as_secs_f64(),
                req.seconds
            ));
        }
        let samples: u64 = raw.iter().map(|s| s.count).sum();
        let resolved = self.symbolizer.resolve(&raw);
        comments.push(format!("target {}", req.target.key()));
        comments.extend(quality_comments(&resolved));
        self.publish_quality();
        let meta = ProfileMeta {
            start: window.0,
            duration: window.1,
            hz: req.hz,
            comments,
        };
        let body = render(&resolved, &meta, req.format, &req.target.key())
            .map_err(|e| ProfileError::Internal(e.to_string()))?;
        Ok(Rendered {
            format: req.format,
            body,
            sampler: sampler_name,
            samples,
        })
    }

    /// An off-CPU (`type=offcpu`) or wall-clock (`type=wall`: on-CPU samples plus
    /// off-CPU time) profile. Needs eBPF (no SIGPROF fallback): the off-CPU program is
    /// loaded and attached for this profile only, and detached at its end.
    fn profile_time(
        &self,
        req: &ProfileRequest,
        filter: Filter,
        cancel: &CancellationToken,
    ) -> Result<Rendered, ProfileError> {
        let ratio = self.cfg.offcpu_sample_ratio.max(1);
        let wall = req.kind == ProfileKind::Wall;
        let opts = SamplerOptions {
            hz: wall.then_some(req.hz),
            offcpu_ratio: Some(ratio),
        };
        let started = self.start_sampler_with(opts, &filter);
        self.note_ebpf(&started);
        let mut s = started.map_err(|e| ProfileError::EbpfUnavailable(e.to_string()))?;
        let (ws, wt) = (SystemTime::now(), Instant::now());
        s.begin_offcpu_window();
        let end = wt + Duration::from_secs(req.seconds);
        let tick = Duration::from_millis(self.cfg.drain_interval_ms);
        let mut agg = Aggregator::new(self.cfg.max_stacks_per_profile);
        let mut off = crate::offcpu::OffCpuAggregator::new(self.cfg.max_stacks_per_profile);
        let mut tracker = CounterTracker::new();
        let mut intervals = 0u64;
        let mut add_off = |off: &mut crate::offcpu::OffCpuAggregator, v: Vec<OffCpuInterval>| {
            intervals += v.len() as u64;
            for i in v {
                self.symbolizer.observe(i.key.pid);
                off.add(i);
            }
        };
        loop {
            let left = end.saturating_duration_since(Instant::now());
            sleep_until(left.min(tick), || {
                cancel.is_cancelled() || self.wrapping_up()
            });
            if cancel.is_cancelled() {
                return Err(ProfileError::Cancelled);
            }
            let d = self.drain_into(&mut s, &mut agg, &mut tracker);
            add_off(&mut off, d.offcpu);
            if Instant::now() >= end || self.wrapping_up() {
                break;
            }
        }
        let (d, pairing) = s
            .finish_offcpu()
            .map_err(|e| ProfileError::Internal(e.to_string()))?;
        let window = (ws, wt.elapsed());
        self.metrics.bad_records.add(d.bad_records);
        for smp in d.samples {
            self.symbolizer.observe(smp.key.pid);
            agg.add(smp);
        }
        add_off(&mut off, d.offcpu);
        tracker.update(&self.metrics, s.counters());
        drop(s);
        let m = &self.metrics;
        m.offcpu_intervals.add(intervals);
        m.offcpu_dropped.add(
            pairing.pending_dropped + pairing.unmatched_ends + pairing.evicted + off.dropped(),
        );
        m.aggregation_dropped.add(agg.dropped_samples());

        let period = 1_000_000_000u64 / req.hz.max(1) as u64;
        let (raw, vals) = crate::offcpu::time_rows(
            if wall { agg.take() } else { Vec::new() },
            period,
            off.take_rescaled(ratio),
        );
        let mut resolved = self.symbolizer.resolve(&raw);
        for (r, v) in resolved.iter_mut().zip(&vals) {
            if v.off_state.is_some() {
                crate::offcpu::strip_tracing_frames(r);
            }
        }
        self.publish_quality();
        let c = tracker.last;
        let mut comments = vec![format!(
            "nodescope {} profile: off-CPU time from tp_btf/sched_switch (stack at switch-out, time charged at switch-in or at the end of the profile, split at tp_btf/sched_wakeup), 1 in {ratio} context switches followed and every value multiplied by {ratio}; label state=blocked (until woken) | wakeup (woken, waiting for a CPU) | preempted (runnable, waiting for a CPU) | on-cpu, task_state=S|D|R|...",
            req.kind.as_str()
        )];
        if wall {
            comments.push(format!(
                "on-CPU: eBPF sampler, cpu-clock at {} Hz, {} ns per sample, {}",
                req.hz,
                period,
                self.unwind_description()
            ));
        }
        comments.push(format!(
            "off-CPU intervals: {intervals} measured ({} still off CPU at the end, charged up to it); dropped: {} ring buffer, {} task map full, {} evicted, {} unmatched, {} over the stack bound; {} switches skipped by sampling",
            pairing.open_at_end,
            c.offcpu_lost,
            c.offcpu_map_full,
            pairing.evicted,
            pairing.unmatched_ends + pairing.pending_dropped,
            off.dropped(),
            c.offcpu_skipped,
        ));
        comments.push(
            "off-CPU time before the window is not charged; tasks already off CPU when the off-CPU programs were attached are seen only from their next switch-out"
                .into(),
        );
        comments.push(format!("target {}", req.target.key()));
        comments.extend(quality_comments(&resolved));
        if cancel.is_cancelled() {
            return Err(ProfileError::Cancelled);
        }
        let meta = ProfileMeta {
            start: window.0,
            duration: window.1,
            hz: req.hz,
            comments,
        };
        let body = match req.format {
            Format::Pprof => output::gzip_pprof(&crate::offcpu::build_time_pprof(
                req.kind, &resolved, &vals, &meta,
            )),
            Format::Folded => {
                crate::offcpu::set_nanos_as_count(&mut resolved, &vals);
                Ok(output::folded(&resolved).into_bytes())
            }
            Format::Svg => {
                crate::offcpu::set_nanos_as_count(&mut resolved, &vals);
                output::svg(
                    &resolved,
                    &format!(
                        "nodescope {} profile (nanoseconds): {}",
                        req.kind.as_str(),
                        req.target.key()
                    ),
                )
            }
        }
        .map_err(|e| ProfileError::Internal(e.to_string()))?;
        Ok(Rendered {
            format: req.format,
            body,
            sampler: "ebpf",
            samples: raw.iter().map(|r| r.count).sum(),
        })
    }

    /// pprof-rs is a process-wide SIGPROF singleton: one at a time.
    fn run_sigprof(
        &self,
        hz: u32,
        duration: Duration,
        cancel: &CancellationToken,
    ) -> Result<Vec<RawSample>, ProfileError> {
        if self.sigprof_busy.swap(true, Ordering::AcqRel) {
            return Err(ProfileError::Busy("self (SIGPROF profiler)".into()));
        }
        let flag = AtomicBool::new(false);
        let r = std::thread::scope(|sc| {
            let h = sc.spawn(|| crate::selfprof::run(hz, duration, &flag));
            while !h.is_finished() {
                if cancel.is_cancelled() || self.wrapping_up() {
                    flag.store(true, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            h.join()
        });
        self.sigprof_busy.store(false, Ordering::Release);
        let raw = r
            .map_err(|_| ProfileError::Internal("SIGPROF profiler thread panicked".into()))?
            .map_err(|e| ProfileError::Internal(e.to_string()))?;
        let n: u64 = raw.iter().map(|s| s.count).sum();
        self.metrics.samples.add(n);
        Ok(raw)
    }

    fn collect_ebpf(
        &self,
        s: &mut EbpfSampler,
        duration: Duration,
        cancel: &CancellationToken,
    ) -> Result<Vec<RawSample>, ProfileError> {
        let end = Instant::now() + duration;
        let tick = Duration::from_millis(self.cfg.drain_interval_ms);
        let mut agg = Aggregator::new(self.cfg.max_stacks_per_profile);
        let mut tracker = CounterTracker::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            sleep_until(left.min(tick), || {
                cancel.is_cancelled() || self.wrapping_up()
            });
            if cancel.is_cancelled() {
                return Err(ProfileError::Cancelled);
            }
            self.drain_into(s, &mut agg, &mut tracker);
            if Instant::now() >= end || self.wrapping_up() {
                break;
            }
        }
        self.metrics.aggregation_dropped.add(agg.dropped_samples());
        Ok(agg.take())
    }

    /// Drains the sampler into `agg`; returns the drain (its timed samples point into
    /// its `samples`, which were also added to `agg`).
    fn drain_into(
        &self,
        s: &mut EbpfSampler,
        agg: &mut Aggregator,
        tracker: &mut CounterTracker,
    ) -> Drained {
        let d = match s.drain() {
            Ok(d) => {
                self.metrics.bad_records.add(d.bad_records);
                for smp in &d.samples {
                    self.symbolizer.observe(smp.key.pid);
                    agg.add(smp.clone());
                }
                d
            }
            Err(e) => {
                tracing::warn!(error = %e, "draining the eBPF sampler");
                Drained::default()
            }
        };
        tracker.update(&self.metrics, s.counters());
        // New processes get unwind tables for their next samples (bounded per drain).
        if let Some(u) = s.unwind() {
            // Each pid once per sample (up to twice): see `Registrar::offer`.
            let mut seen: std::collections::HashMap<u32, u8> = std::collections::HashMap::new();
            let mut pids: Vec<u32> = Vec::new();
            let off = d.offcpu.iter().map(|i| i.key.pid);
            for pid in d
                .timed
                .iter()
                .map(|t| d.samples[t.sample as usize].key.pid)
                .chain(off)
            {
                let c = seen.entry(pid).or_default();
                if *c < 2 {
                    *c += 1;
                    pids.push(pid);
                }
            }
            u.offer(pids);
        }
        d
    }

    /// Symbolizes a drain's samples and offers them to the flight recorder, if one is
    /// provided (looked up now: late-bound). Never blocks: the sink bounds itself.
    fn offer_to_sink(&self, hz: u32, d: &Drained) {
        if d.timed.is_empty() {
            return;
        }
        let Some(sink) = self.services.get::<dyn SampleSink>() else {
            return;
        };
        let resolved = self.symbolizer.resolve(&d.samples);
        let batch = crate::feed::build_batch(hz, &resolved, &d.timed);
        self.metrics.sink_samples.add(batch.samples.len() as u64);
        sink.offer(batch);
    }

    fn continuous_loop(self: &Arc<Self>, shutdown: &CancellationToken) {
        let mut hz = self.control.desired(SystemTime::now());
        let started = self.start_sampler(hz, &Filter::All);
        self.note_ebpf(&started);
        let mut sampler = match started {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "continuous profiling unavailable (eBPF); on-demand self-profiling still works");
                self.control.set_down(e.to_string());
                self.status.failure(
                    ComponentState::Unavailable,
                    format!("continuous profiling needs eBPF: {e}"),
                    None,
                );
                self.status.set_detail("ebpf", "down");
                return;
            }
        };
        self.continuous_up.store(true, Ordering::Release);
        self.control.set_running(hz);
        self.status.set_state(ComponentState::Ok, None);
        self.status.set_detail("ebpf", "up");
        self.status.set_detail("continuous_hz", hz.to_string());
        tracing::info!(
            hz,
            interval_secs = self.cfg.interval_secs,
            emit_profiles = self.emit_profiles,
            "continuous profiling started"
        );
        let interval = Duration::from_secs(self.cfg.interval_secs);
        let tick = Duration::from_millis(self.cfg.drain_interval_ms);
        let mut agg = Aggregator::new(self.cfg.max_stacks_per_profile);
        let mut tracker = CounterTracker::new();
        let mut window_start = SystemTime::now();
        let mut window_t0 = Instant::now();
        let mut dropped_before = 0;
        loop {
            // Shutdown is checked every 250 ms: fewer wake-ups on the always-on path.
            let stop = sleep_or_cancel_step(tick, Duration::from_millis(250), shutdown);
            let d = self.drain_into(&mut sampler, &mut agg, &mut tracker);
            self.offer_to_sink(hz, &d);
            drop(d);
            let want = self.control.desired(SystemTime::now());
            let rate_change = want != hz && !stop;
            if stop || rate_change || window_t0.elapsed() >= interval {
                let t = Instant::now();
                let raw = agg.take();
                let dropped = agg.dropped_samples();
                self.metrics
                    .aggregation_dropped
                    .add(dropped - dropped_before);
                dropped_before = dropped;
                let n = if self.emit_profiles {
                    self.emit_window(&raw, window_start, window_t0.elapsed(), hz)
                } else {
                    0
                };
                self.status.success(t.elapsed());
                self.publish_quality();
                tracing::debug!(
                    profiles = n,
                    stacks = raw.len(),
                    "continuous window emitted"
                );
                window_start = SystemTime::now();
                window_t0 = Instant::now();
                self.symbolizer.expire();
            }
            if rate_change {
                // A boost began or ended: a new sampler at the new rate (the window was
                // closed above, so no profile mixes two rates).
                match self.start_sampler(want, &Filter::All) {
                    Ok(s) => {
                        let d = self.drain_into(&mut sampler, &mut agg, &mut tracker);
                        self.offer_to_sink(hz, &d);
                        sampler = s;
                        tracker = CounterTracker::new();
                        tracing::info!(from = hz, to = want, "continuous profiling rate changed");
                        hz = want;
                        self.control.set_running(hz);
                        self.status.set_detail("continuous_hz", hz.to_string());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, hz = want, "restarting the sampler at a new rate; keeping the old rate");
                    }
                }
            }
            if stop {
                break;
            }
        }
        self.continuous_up.store(false, Ordering::Release);
        self.control.set_stopped();
        self.status.set_state(ComponentState::Stopped, None);
        tracing::info!("continuous profiling stopped");
    }

    /// Builds one profile per workload from a window of samples and emits them. Returns
    /// the number emitted.
    pub(crate) fn emit_window(
        &self,
        raw: &[RawSample],
        start: SystemTime,
        duration: Duration,
        hz: u32,
    ) -> usize {
        if raw.is_empty() {
            return 0;
        }
        let resolved = self.symbolizer.resolve(raw);
        let mut groups: BTreeMap<String, Vec<ResolvedSample>> = BTreeMap::new();
        for s in resolved {
            let key = s.workload.label.clone();
            let n = groups.len();
            match groups.get_mut(&key) {
                Some(g) => g.push(s),
                None if n < self.cfg.max_workloads_per_interval => {
                    groups.insert(key, vec![s]);
                }
                None => self.metrics.profiles_dropped.inc(),
            }
        }
        let mut emitted = 0;
        for (label, samples) in groups {
            let w = &samples[0].workload;
            let meta = ProfileMeta {
                start,
                duration,
                hz,
                comments: {
                    let mut c = vec![
                        format!("nodescope continuous profile of {label}"),
                        self.unwind_description(),
                    ];
                    c.extend(quality_comments(&samples));
                    c
                },
            };
            let p = output::build_pprof(&samples, &meta);
            let gz = match output::gzip_pprof(&p) {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(error = %e, workload = %label, "encoding profile");
                    self.metrics.profiles_dropped.inc();
                    continue;
                }
            };
            let mut labels: nodescope_model::Labels = vec![
                ("workload".into(), label.clone()),
                ("workload_kind".into(), w.workload.kind.as_str().to_string()),
            ];
            if w.workload.kind == WorkloadKind::Container {
                labels.push(("container_id".into(), w.workload.id.clone()));
                if let Some(pod) = self
                    .pods
                    .as_ref()
                    .and_then(|p| p.pod_for_container(&w.workload.id))
                {
                    labels.push(("namespace".into(), pod.namespace));
                    labels.push(("pod".into(), pod.pod));
                    labels.push(("container".into(), pod.container));
                }
            }
            let profile = Profile {
                start,
                duration,
                sample_rate_hz: hz,
                labels,
                pprof_gz: gz,
            };
            if self.emitter.emit(Signal::Profile(Arc::new(profile))) {
                self.metrics.profiles_emitted.inc();
                emitted += 1;
            } else {
                self.metrics.profiles_dropped.inc();
            }
        }
        emitted
    }
}

/// Per-binary unwind quality of a set of samples, as pprof comments: the share reaching
/// a process root and how DWARF walks ended.
pub fn quality_comments(samples: &[ResolvedSample]) -> Vec<String> {
    let mut per: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut ends: BTreeMap<&'static str, u64> = BTreeMap::new();
    for s in samples {
        if s.pid == 0 || (s.frames.iter().all(|f| f.kernel)) {
            continue;
        }
        let e = per.entry(&s.leaf_binary).or_default();
        e.0 += s.count;
        if s.reached_root {
            e.1 += s.count;
        }
        if s.unwind as u32 & nodescope_ebpf::profile::UNWIND_FLAG_DWARF != 0 {
            *ends
                .entry(crate::metrics::unwind_end_name(s.unwind as u32 & 0xff))
                .or_default() += s.count;
        }
    }
    let mut out: Vec<String> = per
        .iter()
        .map(|(b, (t, r))| {
            format!(
                "unwind {b}: {:.1}% of {t} stacks reach a process root",
                *r as f64 * 100.0 / (*t).max(1) as f64
            )
        })
        .collect();
    if !ends.is_empty() {
        out.push(format!(
            "DWARF walks ended: {}",
            ends.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    out
}

/// Renders symbolized samples in the requested format.
pub fn render(
    samples: &[ResolvedSample],
    meta: &ProfileMeta,
    format: Format,
    title: &str,
) -> Result<Vec<u8>, output::OutputError> {
    match format {
        Format::Pprof => output::gzip_pprof(&output::build_pprof(samples, meta)),
        Format::Folded => Ok(output::folded(samples).into_bytes()),
        Format::Svg => output::svg(samples, &format!("nodescope CPU profile: {title}")),
    }
}

/// Mount points of cgroup2 filesystems visible to us.
fn cgroup2_roots() -> Vec<PathBuf> {
    nodescope_ebpf::loader::mounts_of_type("cgroup2")
}

const MAX_CGROUP_DEPTH: usize = 32;

fn push_id(dir: &Path, out: &mut Vec<u64>) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    if out.len() >= nodescope_ebpf::profile::FILTER_MAX_ENTRIES as usize {
        return Err(format!(
            "more than {} cgroups match; narrow the target",
            nodescope_ebpf::profile::FILTER_MAX_ENTRIES
        ));
    }
    let m = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    out.push(m.ino());
    Ok(())
}

/// Adds `dir` and every cgroup below it (their inode numbers are the cgroup v2 ids that
/// `bpf_get_current_cgroup_id` returns).
fn collect_cgroup_ids(dir: &Path, out: &mut Vec<u64>, depth: usize) -> Result<(), String> {
    push_id(dir, out)?;
    if depth >= MAX_CGROUP_DEPTH {
        return Ok(());
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect_cgroup_ids(&e.path(), out, depth + 1)?;
        }
    }
    Ok(())
}

/// Walks the cgroup2 trees for directories whose name satisfies `pred`, adding each match
/// and its descendants.
fn cgroup_ids_matching(roots: &[PathBuf], pred: impl Fn(&str) -> bool) -> Result<Vec<u64>, String> {
    fn walk(
        dir: &Path,
        pred: &dyn Fn(&str) -> bool,
        out: &mut Vec<u64>,
        depth: usize,
    ) -> Result<(), String> {
        if depth >= MAX_CGROUP_DEPTH {
            return Ok(());
        }
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        for e in rd.flatten() {
            if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let p = e.path();
            if e.file_name().to_str().is_some_and(pred) {
                collect_cgroup_ids(&p, out, depth + 1)?;
            } else {
                walk(&p, pred, out, depth + 1)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for r in roots {
        walk(r, &pred, &mut out, 0)?;
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Reads the service's numbers through its status handle and symbolizer, so it does not
/// keep the service itself alive.
struct ProfilerCollector {
    symbolizer: Arc<Symbolizer>,
    status: StatusHandle,
}

impl Collector for ProfilerCollector {
    fn name(&self) -> &'static str {
        "profiler"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let st = self.status.snapshot();
        let active: f64 = st
            .details
            .get("active_profiles")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let up = st.details.get("ebpf").is_some_and(|v| v == "up");
        Ok(vec![
            MetricFamily::single(
                "nodescope_profiler_ebpf_up",
                "1 when eBPF sampling works: the continuous sampler is attached or, with continuous profiling off, the start-up check loaded it.",
                MetricType::Gauge,
                if up { 1.0 } else { 0.0 },
            ),
            MetricFamily::single(
                "nodescope_profiler_active_profiles",
                "On-demand profiles running now.",
                MetricType::Gauge,
                active,
            ),
            MetricFamily::single(
                "nodescope_symbolizer_processes",
                "Process memory-map snapshots held by the symbolizer.",
                MetricType::Gauge,
                self.symbolizer.process_count() as f64,
            ),
            MetricFamily::single(
                "nodescope_symbolizer_binaries",
                "Binaries (open descriptors and symbol tables) held by the symbolizer.",
                MetricType::Gauge,
                self.symbolizer.binary_count() as f64,
            ),
        ])
    }
}
