//! The eBPF CPU sampler: loads `profile.bpf.o`, attaches it to one software cpu-clock
//! perf event per online CPU in frequency mode, configures the in-BPF pid/cgroup filter
//! and drains the ring buffer of timestamped sample records, aggregating them per stack
//! while keeping each sample's time and CPU (for the flight recorder).
//!
//! Each sampler instance owns its own maps and perf events, so the continuous profiler
//! (19 Hz, everything) and an on-demand profile (e.g. 99 Hz, one pid) run side by side
//! without disturbing each other. Dropping the sampler detaches and frees everything.

use std::collections::HashMap as StdHashMap;
use std::sync::Arc;

use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::perf_event::{PerfEventScope, PerfTypeId, SamplePolicy};
use aya::programs::PerfEvent;
use aya::Ebpf;
use nodescope_ebpf::loader::{self, LoadError};
use nodescope_ebpf::profile as obj;

use std::time::{Duration, SystemTime};

use crate::samples::{RawSample, StackKey};

/// `PERF_COUNT_SW_CPU_CLOCK` from `linux/perf_event.h`.
const PERF_COUNT_SW_CPU_CLOCK: u64 = 0;

/// How user stacks are unwound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnwindMethod {
    /// DWARF CFI tables (`.eh_frame`, `.debug_frame`) in BPF maps for every process the
    /// sampler sees, frame pointers where a binary has no usable table (Go, JIT code).
    #[default]
    Dwarf,
    /// The kernel's frame-pointer walk (`bpf_get_stack`) only.
    FramePointers,
}

/// Something that yields aggregated raw stacks (the eBPF sampler; a DWARF unwinder later).
pub trait StackSource: Send {
    /// Moves everything aggregated since the last drain out of the source.
    fn drain(&mut self) -> Result<Drained, SamplerError>;
    /// Cumulative counters of the source.
    fn counters(&self) -> SamplerCounters;
}

/// What to sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    All,
    Pids(Vec<u32>),
    Cgroups(Vec<u64>),
}

#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("listing online CPUs from {path}: {source}")]
    Cpus {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} filter has {n} entries, more than the BPF map holds ({max})")]
    FilterTooLarge {
        what: &'static str,
        n: usize,
        max: u32,
    },
    #[error("map {map}: {reason}")]
    Map { map: &'static str, reason: String },
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> SamplerError {
    move |e| SamplerError::Map {
        map,
        reason: e.to_string(),
    }
}

/// Cumulative counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SamplerCounters {
    pub samples: u64,
    pub lost_ringbuf: u64,
    pub kstack_errors: u64,
    pub ustack_errors: u64,
    pub filtered: u64,
    pub dwarf: u64,
    pub offcpu_starts: u64,
    pub offcpu_ends: u64,
    pub offcpu_lost: u64,
    pub offcpu_skipped: u64,
    pub offcpu_map_full: u64,
}

/// One sample with its time: `sample` indexes [`Drained::samples`] (pid, tid and stacks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimedRaw {
    pub time: SystemTime,
    pub cpu: u32,
    pub sample: u32,
}

/// One drain's worth of samples.
#[derive(Debug, Default)]
pub struct Drained {
    /// Aggregated per distinct (pid, tid, cgroup, comm, stacks).
    pub samples: Vec<RawSample>,
    /// Every sample, in ring-buffer order, pointing into `samples`.
    pub timed: Vec<TimedRaw>,
    /// Ring-buffer records that could not be decoded.
    pub bad_records: u64,
    /// Off-CPU intervals closed in this drain (not rescaled), when off-CPU is on.
    pub offcpu: Vec<OffCpuInterval>,
}

/// One off-CPU interval (or part of one): the stack the task left the CPU with, how it
/// left (the task state at switch-out, `OFFCPU_STATE_PREEMPTED` when it stayed runnable,
/// [`OFFCPU_STATE_WAKEUP`] for the part after a blocked task's wake-up) and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffCpuInterval {
    pub key: StackKey,
    pub state: u32,
    pub nanos: u64,
    /// Switch-outs this stands for: 1, or 0 for the wake-up part of an interval.
    pub switches: u64,
}

/// User-space state bit: the part of a blocked interval after the task was woken, while
/// it waited for a CPU (from `sched_wakeup` to switch-in).
pub const OFFCPU_STATE_WAKEUP: u32 = 0x200;

/// Whether an off-CPU state means "preempted" (still runnable) rather than "blocked".
pub fn offcpu_preempted(state: u32) -> bool {
    state & obj::OFFCPU_STATE_PREEMPTED != 0
}

/// Splits one interval at its wake-up (blocked until `wake`, waiting for a CPU after),
/// clipped to the window that starts at `from` (boot-clock ns): the part before it is not
/// charged, an interval that ended before it not at all.
fn push_interval(
    out: &mut Vec<OffCpuInterval>,
    key: StackKey,
    state: u32,
    from: u64,
    (start, wake, end): (u64, u64, u64),
) {
    // Also nothing when the switch-out is later than `end`: a task that went off CPU
    // after the clock read that closes the window (the window's end is read before the
    // last records are drained) has no time in it.
    if end <= from || end <= start {
        return;
    }
    let start = start.max(from);
    let mut switches = 1;
    if !offcpu_preempted(state) && wake != 0 && wake < end {
        let wake = wake.max(start);
        if wake > start {
            out.push(OffCpuInterval {
                key: key.clone(),
                state,
                nanos: wake - start,
                switches,
            });
            switches = 0;
        }
        out.push(OffCpuInterval {
            key,
            state: state | OFFCPU_STATE_WAKEUP,
            nanos: end - wake,
            switches,
        });
    } else {
        out.push(OffCpuInterval {
            key,
            state,
            nanos: end - start,
            switches,
        });
    }
}

/// Off-CPU counters kept in user space (pairing of switch-out and switch-in records).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffCpuPairing {
    /// Switch-out records dropped: more tasks pending than the bound.
    pub pending_dropped: u64,
    /// Switch-in records without their switch-out record.
    pub unmatched_ends: u64,
    /// Tasks still off CPU at the end of the window whose entry had left the LRU map
    /// (evicted): their interval is unknown and left out.
    pub evicted: u64,
    /// Tasks still off CPU at the end of the window: charged up to the end.
    pub open_at_end: u64,
}

/// Switch-out records waiting for their switch-in, by tid (bounded).
#[derive(Debug, Default)]
pub(crate) struct OffCpuPending {
    map: StdHashMap<u32, (u64, StackKey)>,
    pub(crate) stats: OffCpuPairing,
    /// Start of the profile's window (boot-clock ns): time before it is not charged.
    window_start: u64,
}

impl OffCpuPending {
    const MAX: usize = 2 * obj::OFFCPU_MAX_TASKS as usize;
}

/// Offset from CLOCK_BOOTTIME (the BPF timestamps) to the wall clock, now.
fn boot_to_wall() -> (SystemTime, Duration) {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    let boot = if rc == 0 {
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    } else {
        Duration::ZERO
    };
    (SystemTime::now(), boot)
}

/// CLOCK_BOOTTIME now, in nanoseconds (the clock of the BPF timestamps).
fn boot_now_ns() -> u64 {
    let (_, boot) = boot_to_wall();
    boot.as_nanos().min(u64::MAX as u128) as u64
}

/// Aggregates decoded records into a [`Drained`].
#[derive(Default)]
pub(crate) struct DrainBuilder {
    out: Drained,
    index: StdHashMap<StackKey, u32>,
    comms: StdHashMap<[u8; obj::COMM_LEN], Arc<str>>,
    stacks: StdHashMap<Vec<u64>, Arc<[u64]>>,
    clock: Option<(SystemTime, Duration)>,
}

impl DrainBuilder {
    fn intern(&mut self, v: Vec<u64>) -> Arc<[u64]> {
        if let Some(a) = self.stacks.get(&v) {
            return a.clone();
        }
        let a: Arc<[u64]> = Arc::from(v.clone());
        if self.stacks.len() < 65_536 {
            self.stacks.insert(v, a.clone());
        }
        a
    }

    /// Adds one ring-buffer record: a CPU sample, or (with `pending`) an off-CPU
    /// switch-out or switch-in record.
    pub(crate) fn add_record(&mut self, b: &[u8], pending: Option<&mut OffCpuPending>) {
        if b.len() == obj::OFFCPU_END_BYTES {
            match (obj::OffCpuEnd::parse(b), pending) {
                (Some(e), Some(p)) => match p.map.remove(&e.tid) {
                    Some((start, key)) if start == e.start_ns => {
                        push_interval(
                            &mut self.out.offcpu,
                            key,
                            e.state,
                            p.window_start,
                            (start, e.wake_ns, e.end_ns),
                        );
                    }
                    other => {
                        if let Some(v) = other {
                            p.map.insert(e.tid, v);
                        }
                        p.stats.unmatched_ends += 1;
                    }
                },
                (Some(_), None) => {}
                (None, _) => self.out.bad_records += 1,
            }
            return;
        }
        match obj::SampleRecord::parse(b) {
            Ok(r) if r.header.flags & obj::OFFCPU_FLAG_START != 0 => {
                let Some(p) = pending else { return };
                let (tid, start) = (r.header.tid, r.header.time_ns);
                let key = self.key_of(r);
                if p.map.len() >= OffCpuPending::MAX && !p.map.contains_key(&tid) {
                    p.stats.pending_dropped += 1;
                    return;
                }
                // A newer switch-out of the same task replaces an older one whose
                // switch-in was lost.
                p.map.insert(tid, (start, key));
            }
            Ok(r) => self.add(r),
            Err(e) => {
                self.out.bad_records += 1;
                tracing::debug!(error = %e, "undecodable profiler sample record");
            }
        }
    }

    fn key_of(&mut self, r: obj::SampleRecord) -> StackKey {
        let h = r.header;
        let comm = self
            .comms
            .entry(h.comm)
            .or_insert_with(|| Arc::from(h.comm()))
            .clone();
        StackKey {
            pid: h.pid,
            tid: h.tid,
            cgroup_id: h.cgroup_id,
            comm,
            kernel: self.intern(r.kernel),
            user: self.intern(r.user),
            unwind: (h.flags & 0xffff) as u16,
        }
    }

    pub(crate) fn add(&mut self, r: obj::SampleRecord) {
        let h = r.header;
        let key = self.key_of(r);
        let idx = match self.index.get(&key) {
            Some(&i) => {
                let c = &mut self.out.samples[i as usize].count;
                *c = c.saturating_add(1);
                i
            }
            None => {
                let i = self.out.samples.len() as u32;
                self.out.samples.push(RawSample {
                    key: key.clone(),
                    count: 1,
                });
                self.index.insert(key, i);
                i
            }
        };
        let (wall, boot) = *self.clock.get_or_insert_with(boot_to_wall);
        let t = Duration::from_nanos(h.time_ns);
        let time = if t <= boot {
            wall.checked_sub(boot - t).unwrap_or(wall)
        } else {
            wall + (t - boot)
        };
        self.out.timed.push(TimedRaw {
            time,
            cpu: h.cpu,
            sample: idx,
        });
    }

    pub(crate) fn finish(self) -> Drained {
        self.out
    }
}

/// The filter maps stay open for the sampler's lifetime (room for live filter updates).
enum FilterMap {
    Pids(#[allow(dead_code)] HashMap<MapData, u32, u8>),
    Cgroups(#[allow(dead_code)] HashMap<MapData, u64, u8>),
}

/// What a sampler collects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SamplerOptions {
    /// CPU samples at this frequency (`None`: no perf events, off-CPU only).
    pub hz: Option<u32>,
    /// Off-CPU intervals, following 1 in this many switch-outs (`None`: off).
    pub offcpu_ratio: Option<u32>,
}

/// The off-CPU half of a sampler: its program link, task map and pairing state.
struct OffCpuRun {
    tasks: HashMap<MapData, u32, obj::OffCpuTask>,
    pending: OffCpuPending,
    attached: bool,
    ratio: u32,
}

pub struct EbpfSampler {
    // Field order = drop order: maps before the object (which detaches the links).
    offcpu: Option<OffCpuRun>,
    _config: Array<MapData, obj::ProfileConfig>,
    _filter_maps: Vec<FilterMap>,
    _ebpf: Ebpf,
    ring: RingBuf<MapData>,
    unwind: Option<crate::unwind::Registrar>,
    counters: PerCpuArray<MapData, u64>,
    hz: u32,
    cpus: usize,
}

impl std::fmt::Debug for EbpfSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfSampler")
            .field("hz", &self.hz)
            .field("cpus", &self.cpus)
            .finish()
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut PerfEvent, SamplerError> {
    Ok(loader::program_as(ebpf, obj::OBJECT_NAME, obj::PROGRAM)?)
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, SamplerError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let m = loader::take_map(ebpf, obj::OBJECT_NAME, name)?;
    T::try_from(m).map_err(map_err(name))
}

impl EbpfSampler {
    /// Loads the object, sets the filter, and starts sampling at `hz` on every online CPU.
    pub fn start(hz: u32, filter: &Filter) -> Result<Self, SamplerError> {
        Self::start_with(
            SamplerOptions {
                hz: Some(hz),
                offcpu_ratio: None,
            },
            filter,
        )
    }

    /// Loads the object, sets the filter, and starts what `opts` asks for: CPU sampling
    /// (perf events on every online CPU) and/or off-CPU tracing (`tp_btf/sched_switch`,
    /// loaded and attached only here, so samplers without it pay nothing for it).
    pub fn start_with(opts: SamplerOptions, filter: &Filter) -> Result<Self, SamplerError> {
        let btf = loader::kernel_btf()?;
        // The LRU task map is preallocated: give it room only when off-CPU is on.
        let tasks = if opts.offcpu_ratio.is_some() {
            obj::OFFCPU_MAX_TASKS
        } else {
            256
        };
        let mut ebpf = loader::load_with_btf(
            obj::OBJECT_NAME,
            obj::PROFILE_OBJ,
            &loader::LoadOptions {
                max_entries: &[(obj::MAP_OFFCPU_TASKS, tasks)],
                globals_u64: &[],
            },
            &btf,
        )?;
        let hz = opts.hz.unwrap_or(0);
        // Verify and load the program while every map is still owned by `ebpf` (a map
        // taken out and dropped would close the fd the program refers to). Nothing runs
        // until the perf events are attached below, after the filter is configured.
        {
            let prog = program(&mut ebpf)?;
            prog.load()
                .map_err(|e| loader::program_error(obj::PROGRAM, e))?;
        }

        // Filter maps first, then the mode: the program reads the mode (FILTER_NONE until
        // set) before anything else, so it never samples unfiltered by accident.
        let mut config: Array<MapData, obj::ProfileConfig> = take(&mut ebpf, obj::MAP_CONFIG)?;
        let mut filter_maps: Vec<FilterMap> = Vec::new();
        let mode = match filter {
            Filter::All => obj::FILTER_ALL,
            Filter::Pids(pids) => {
                if pids.len() > obj::FILTER_MAX_ENTRIES as usize {
                    return Err(SamplerError::FilterTooLarge {
                        what: "pid",
                        n: pids.len(),
                        max: obj::FILTER_MAX_ENTRIES,
                    });
                }
                let mut m: HashMap<MapData, u32, u8> = take(&mut ebpf, obj::MAP_FILTER_PIDS)?;
                for p in pids {
                    m.insert(p, 1, 0).map_err(map_err(obj::MAP_FILTER_PIDS))?;
                }
                filter_maps.push(FilterMap::Pids(m));
                obj::FILTER_PIDS
            }
            Filter::Cgroups(ids) => {
                if ids.len() > obj::FILTER_MAX_ENTRIES as usize {
                    return Err(SamplerError::FilterTooLarge {
                        what: "cgroup",
                        n: ids.len(),
                        max: obj::FILTER_MAX_ENTRIES,
                    });
                }
                let mut m: HashMap<MapData, u64, u8> = take(&mut ebpf, obj::MAP_FILTER_CGROUPS)?;
                for c in ids {
                    m.insert(c, 1, 0)
                        .map_err(map_err(obj::MAP_FILTER_CGROUPS))?;
                }
                filter_maps.push(FilterMap::Cgroups(m));
                obj::FILTER_CGROUPS
            }
        };
        let ratio = opts.offcpu_ratio.map(|r| r.max(1));
        config
            .set(
                0,
                obj::ProfileConfig {
                    filter_mode: mode,
                    include_idle: 0,
                    offcpu_sample_ratio: ratio.unwrap_or(1),
                    _pad: 0,
                },
                0,
            )
            .map_err(map_err(obj::MAP_CONFIG))?;

        let ring = take(&mut ebpf, obj::MAP_SAMPLES)?;
        let counters = take(&mut ebpf, obj::MAP_COUNTERS)?;

        let cpus = aya::util::online_cpus().map_err(|(path, source)| SamplerError::Cpus {
            path: path.to_string(),
            source,
        })?;
        let prog: &mut PerfEvent = program(&mut ebpf)?;
        for &cpu in cpus.iter().filter(|_| opts.hz.is_some()) {
            prog.attach(
                PerfTypeId::Software,
                PERF_COUNT_SW_CPU_CLOCK,
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Frequency(hz as u64),
                false,
            )
            .map_err(|e| {
                let reason = e.to_string();
                if reason.contains("Operation not permitted") || reason.contains("os error 1)") {
                    LoadError::NotPermitted {
                        what: format!("perf_event_open(cpu-clock, cpu {cpu})"),
                        reason,
                    }
                } else {
                    LoadError::Attach {
                        program: obj::PROGRAM.into(),
                        hook: format!("perf_event cpu-clock cpu {cpu}"),
                        reason,
                    }
                }
            })?;
        }
        let offcpu = match ratio {
            None => None,
            Some(ratio) => {
                let tasks = take(&mut ebpf, obj::MAP_OFFCPU_TASKS)?;
                // The wake-up stamp first: from the first switch-out on, wake-ups are seen.
                for (prog, hook) in [
                    (obj::PROGRAM_OFFCPU_WAKEUP, obj::OFFCPU_WAKEUP_HOOK),
                    (obj::PROGRAM_OFFCPU, obj::OFFCPU_HOOK),
                ] {
                    loader::load_btf_tracepoint(&mut ebpf, obj::OBJECT_NAME, prog, hook, &btf)?;
                }
                Some(OffCpuRun {
                    tasks,
                    pending: OffCpuPending::default(),
                    attached: true,
                    ratio,
                })
            }
        };
        tracing::debug!(hz, cpus = cpus.len(), ?filter, offcpu = ?ratio, "eBPF sampler attached");
        Ok(EbpfSampler {
            offcpu,
            _ebpf: ebpf,
            _config: config,
            _filter_maps: filter_maps,
            ring,
            unwind: None,
            counters,
            hz,
            cpus: cpus.len(),
        })
    }

    pub fn hz(&self) -> u32 {
        self.hz
    }

    /// Turns on DWARF CFI unwinding: from now on, [`EbpfSampler::register`]ed processes
    /// are unwound with tables from `cache`.
    pub fn enable_dwarf(
        &mut self,
        cache: Arc<crate::unwind::TableCache>,
        proc_root: std::path::PathBuf,
        metrics: Option<crate::metrics::ProfilerMetrics>,
    ) -> Result<(), SamplerError> {
        let procs = take(&mut self._ebpf, obj::MAP_UNWIND_PROCS)?;
        let tables = take(&mut self._ebpf, obj::MAP_UNWIND_TABLES)?;
        let rows = crate::unwind::RowMap::new(loader::take_map(
            &mut self._ebpf,
            obj::OBJECT_NAME,
            obj::MAP_UNWIND_ROWS,
        )?)
        .map_err(|reason| SamplerError::Map {
            map: obj::MAP_UNWIND_ROWS,
            reason,
        })?;
        let mut u = crate::unwind::UnwindMaps::new(procs, tables, rows, cache, proc_root);
        if let Some(m) = metrics {
            u = u.with_metrics(m);
        }
        self.unwind = Some(crate::unwind::Registrar::start(u));
        Ok(())
    }

    /// The off-CPU sampling ratio (1 in N switch-outs), when off-CPU tracing is on.
    pub fn offcpu_ratio(&self) -> Option<u32> {
        self.offcpu.as_ref().map(|o| o.ratio)
    }

    /// Starts the off-CPU window now: time off CPU before this instant is not charged
    /// (tasks switched out earlier are charged from now on).
    pub fn begin_offcpu_window(&mut self) {
        if let Some(o) = self.offcpu.as_mut() {
            o.pending.window_start = boot_now_ns();
        }
    }

    /// Ends off-CPU tracing: detaches the program, drains what is left, and closes the
    /// intervals of tasks still off CPU at the end (charged up to now). Tasks whose entry
    /// left the LRU map meanwhile are counted as evicted and left out. Returns the last
    /// drain (its `offcpu` holds the closed intervals) and the pairing counters.
    pub fn finish_offcpu(&mut self) -> Result<(Drained, OffCpuPairing), SamplerError> {
        let now = boot_now_ns();
        if let Some(o) = self.offcpu.as_mut() {
            if o.attached {
                o.attached = false;
                for name in [obj::PROGRAM_OFFCPU, obj::PROGRAM_OFFCPU_WAKEUP] {
                    let prog: &mut aya::programs::BtfTracePoint =
                        loader::program_as(&mut self._ebpf, obj::OBJECT_NAME, name)?;
                    if let Err(e) = prog.unload() {
                        tracing::warn!(error = %e, program = name, "detaching an off-CPU program");
                    }
                }
            }
        }
        let mut d = self.drain()?;
        let Some(o) = self.offcpu.as_mut() else {
            return Ok((d, OffCpuPairing::default()));
        };
        for (tid, (start, key)) in o.pending.map.drain() {
            match o.tasks.get(&tid, 0) {
                Ok(t) if t.start_ns == start => {
                    o.pending.stats.open_at_end += 1;
                    let from = o.pending.window_start;
                    push_interval(&mut d.offcpu, key, t.state, from, (start, t.wake_ns, now));
                }
                _ => o.pending.stats.evicted += 1,
            }
        }
        Ok((d, o.pending.stats))
    }

    /// The unwind maps, when DWARF unwinding is on.
    pub fn unwind(&mut self) -> Option<&mut crate::unwind::Registrar> {
        self.unwind.as_mut()
    }
}

impl StackSource for EbpfSampler {
    fn drain(&mut self) -> Result<Drained, SamplerError> {
        let mut b = DrainBuilder::default();
        // Bounded: at most what the ring buffer held plus what arrives meanwhile.
        let max = obj::RINGBUF_BYTES as usize / obj::OFFCPU_END_BYTES;
        let mut pending = self.offcpu.as_mut().map(|o| &mut o.pending);
        for _ in 0..max {
            let Some(item) = self.ring.next() else { break };
            b.add_record(&item, pending.as_deref_mut());
        }
        Ok(b.finish())
    }

    fn counters(&self) -> SamplerCounters {
        let get = |i: u32| -> u64 {
            self.counters
                .get(&i, 0)
                .map(|v| v.iter().copied().fold(0u64, u64::saturating_add))
                .unwrap_or(0)
        };
        SamplerCounters {
            samples: get(obj::CTR_SAMPLES),
            lost_ringbuf: get(obj::CTR_LOST_RINGBUF),
            kstack_errors: get(obj::CTR_KSTACK_ERROR),
            ustack_errors: get(obj::CTR_USTACK_ERROR),
            filtered: get(obj::CTR_FILTERED),
            dwarf: get(obj::CTR_DWARF),
            offcpu_starts: get(obj::CTR_OFFCPU_STARTS),
            offcpu_ends: get(obj::CTR_OFFCPU_ENDS),
            offcpu_lost: get(obj::CTR_OFFCPU_LOST),
            offcpu_skipped: get(obj::CTR_OFFCPU_SKIPPED),
            offcpu_map_full: get(obj::CTR_OFFCPU_MAP_FULL),
        }
    }
}

#[cfg(test)]
mod offcpu_tests {
    use super::*;

    fn key() -> StackKey {
        StackKey {
            pid: 1,
            tid: 2,
            cgroup_id: 0,
            comm: "c".into(),
            kernel: Arc::from(vec![1u64]),
            user: Arc::from(vec![2u64]),
            unwind: 0,
        }
    }

    fn start_record(tid: u32, ts: u64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&ts.to_ne_bytes());
        b.extend_from_slice(&0u64.to_ne_bytes());
        for v in [1u32, tid, 0] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.extend_from_slice(&1u16.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&obj::OFFCPU_FLAG_START.to_ne_bytes());
        b.extend_from_slice(&[b'x'; obj::COMM_LEN]);
        b.extend_from_slice(&1u32.to_ne_bytes());
        b.extend_from_slice(&0xffff_ffff_8100_0000u64.to_ne_bytes());
        b
    }

    fn end_record(tid: u32, start: u64, wake: u64, end: u64, state: u32) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [start, wake, end] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        for v in [1u32, tid, state, obj::OFFCPU_END_MAGIC] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b
    }

    #[test]
    fn splits_a_blocked_interval_at_its_wakeup() {
        let mut out = Vec::new();
        push_interval(&mut out, key(), 1, 0, (100, 160, 200));
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].state, out[0].nanos, out[0].switches), (1, 60, 1));
        assert_eq!(
            (out[1].state, out[1].nanos, out[1].switches),
            (1 | OFFCPU_STATE_WAKEUP, 40, 0)
        );
        out.clear();
        push_interval(
            &mut out,
            key(),
            obj::OFFCPU_STATE_PREEMPTED,
            0,
            (100, 0, 200),
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].nanos, 100);
        out.clear();
        push_interval(&mut out, key(), 1, 0, (100, 0, 200));
        assert_eq!((out.len(), out[0].nanos), (1, 100), "no wake-up seen");
        // Clipped to the window: from 150 on only.
        out.clear();
        push_interval(&mut out, key(), 1, 150, (100, 160, 200));
        assert_eq!((out[0].nanos, out[1].nanos), (10, 40));
        out.clear();
        push_interval(&mut out, key(), 1, 170, (100, 160, 200));
        assert_eq!(
            out.len(),
            1,
            "woken before the window: waiting for a CPU in it"
        );
        assert_eq!((out[0].state, out[0].nanos), (1 | OFFCPU_STATE_WAKEUP, 30));
        assert_eq!(out[0].switches, 1);
        out.clear();
        push_interval(&mut out, key(), 1, 250, (100, 160, 200));
        assert!(out.is_empty(), "ended before the window");
        // Switched out after the clock read that ends the window (open at the end, with or
        // without a wake-up): no time in the window, and no underflow.
        push_interval(&mut out, key(), 1, 0, (210, 0, 200));
        push_interval(&mut out, key(), 1, 0, (210, 205, 200));
        assert!(out.is_empty(), "went off CPU after the window");
    }

    #[test]
    fn pairs_switch_out_and_switch_in_records() {
        let mut p = OffCpuPending::default();
        let mut b = DrainBuilder::default();
        b.add_record(&start_record(5, 1_000), Some(&mut p));
        b.add_record(&start_record(6, 1_500), Some(&mut p));
        // An end whose start time does not match is not charged (and keeps the pending one).
        b.add_record(&end_record(6, 999, 0, 2_000, 1), Some(&mut p));
        b.add_record(&end_record(5, 1_000, 1_200, 1_300, 1), Some(&mut p));
        b.add_record(&end_record(7, 1, 0, 2, 1), Some(&mut p));
        let d = b.finish();
        assert!(d.samples.is_empty(), "off-CPU records are not CPU samples");
        let total: u64 = d.offcpu.iter().map(|i| i.nanos).sum();
        assert_eq!(total, 300);
        assert_eq!(d.offcpu[0].key.tid, 5);
        assert_eq!(d.offcpu[0].key.kernel.len(), 1);
        assert_eq!(p.stats.unmatched_ends, 2);
        assert_eq!(p.map.len(), 1, "tid 6 still pending");
        // Without off-CPU on, such records are ignored; garbage of the end size is bad.
        let mut b = DrainBuilder::default();
        b.add_record(&start_record(5, 1_000), None);
        b.add_record(&[0u8; obj::OFFCPU_END_BYTES], None);
        let d = b.finish();
        assert!(d.samples.is_empty() && d.offcpu.is_empty());
        assert_eq!(d.bad_records, 1);
    }
}
