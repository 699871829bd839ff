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

    pub(crate) fn add_bytes(&mut self, b: &[u8]) {
        match obj::SampleRecord::parse(b) {
            Ok(r) => self.add(r),
            Err(e) => {
                self.out.bad_records += 1;
                tracing::debug!(error = %e, "undecodable profiler sample record");
            }
        }
    }

    pub(crate) fn add(&mut self, r: obj::SampleRecord) {
        let h = r.header;
        let comm = self
            .comms
            .entry(h.comm)
            .or_insert_with(|| Arc::from(h.comm()))
            .clone();
        let key = StackKey {
            pid: h.pid,
            tid: h.tid,
            cgroup_id: h.cgroup_id,
            comm,
            kernel: self.intern(r.kernel),
            user: self.intern(r.user),
            unwind: (h.flags & 0xffff) as u16,
        };
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

pub struct EbpfSampler {
    // Field order = drop order: maps before the object (which detaches the links).
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
        let mut ebpf = loader::load(obj::OBJECT_NAME, obj::PROFILE_OBJ)?;
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
        config
            .set(
                0,
                obj::ProfileConfig {
                    filter_mode: mode,
                    include_idle: 0,
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
        for &cpu in &cpus {
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
        tracing::debug!(hz, cpus = cpus.len(), ?filter, "eBPF sampler attached");
        Ok(EbpfSampler {
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

    /// The unwind maps, when DWARF unwinding is on.
    pub fn unwind(&mut self) -> Option<&mut crate::unwind::Registrar> {
        self.unwind.as_mut()
    }
}

impl StackSource for EbpfSampler {
    fn drain(&mut self) -> Result<Drained, SamplerError> {
        let mut b = DrainBuilder::default();
        // Bounded: at most what the ring buffer held plus what arrives meanwhile.
        let max = obj::RINGBUF_BYTES as usize / obj::SAMPLE_HDR_BYTES;
        for _ in 0..max {
            let Some(item) = self.ring.next() else { break };
            b.add_bytes(&item);
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
        }
    }
}
