//! `cgroup`: per-workload resource metrics from the host's cgroup filesystem
//! (`<sys>/fs/cgroup`), cgroup v2 (unified) or v1 (per-controller hierarchies, including the
//! hybrid layout where cgroup2 holds no resource controllers).
//!
//! Each cgroup directory is classified with `nodescope_model::workload::classify_cgroup_path`
//! (the function the network probes and the profiler use, so the `workload` label joins
//! across signals). A workload is reported once, from its shallowest cgroup (cgroup counters
//! include descendants, so deeper cgroups of the same workload would double count); plain
//! cgroups (`workload_kind="cgroup"`) are reported when they are leaves. With a
//! [`PodLookup`](nodescope_model::workload::PodLookup), containers also get `namespace`,
//! `pod` and `container`.
//!
//! Bounded: at most `max_cgroups` directories are walked and `max_workloads` workloads
//! exported per collect; the rest are counted (`nodescope_host_cgroup_*_dropped`). One pass,
//! reused buffers, the block-device name map cached (bounded).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nodescope_model::workload::{classify_cgroup_path, SharedPodLookup, WorkloadKind};
use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};
use parking_lot::Mutex;

use crate::util::text;
use crate::HostPaths;

/// Most block devices whose `major:minor` → name mapping is remembered.
const DEV_CACHE_CAP: usize = 4096;
/// Deepest cgroup nesting walked.
const MAX_DEPTH: usize = 32;

/// Where the controllers are.
#[derive(Clone, Debug, PartialEq)]
enum Layout {
    V2(PathBuf),
    V1 {
        cpu: Option<PathBuf>,
        cpuacct: Option<PathBuf>,
        memory: Option<PathBuf>,
        blkio: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
}

fn detect(root: &Path) -> Option<Layout> {
    if root.join("cgroup.controllers").is_file() {
        return Some(Layout::V2(root.to_path_buf()));
    }
    let dir = |c: &str| {
        let p = root.join(c);
        p.is_dir().then_some(p)
    };
    let l = Layout::V1 {
        cpu: dir("cpu"),
        cpuacct: dir("cpuacct"),
        memory: dir("memory"),
        blkio: dir("blkio"),
        pids: dir("pids"),
    };
    match &l {
        Layout::V1 {
            cpu: None,
            cpuacct: None,
            memory: None,
            ..
        } => None,
        _ => Some(l),
    }
}

/// `key value` lines (cpu.stat, memory.stat, memory.events): the value of `key`.
pub fn flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// `some avg10=.. total=N` / `full ...` of a PSI file: the `total` (µs) of `kind`.
pub fn psi_total(text: &str, kind: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(kind)?.strip_prefix(' ')?;
        rest.split_ascii_whitespace()
            .find_map(|f| f.strip_prefix("total="))
            .and_then(|v| v.parse().ok())
    })
}

/// Per-device I/O of v2 `io.stat`: `(major:minor, rbytes, wbytes, rios, wios)`.
pub fn parse_io_stat(text: &str) -> Vec<(&str, [u64; 4])> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let Some(dev) = it.next() else { continue };
        if !dev.contains(':') {
            continue;
        }
        let mut v = [0u64; 4];
        for kv in it {
            let Some((k, n)) = kv.split_once('=') else {
                continue;
            };
            let i = match k {
                "rbytes" => 0,
                "wbytes" => 1,
                "rios" => 2,
                "wios" => 3,
                _ => continue,
            };
            if let Ok(n) = n.parse() {
                v[i] = n;
            }
        }
        out.push((dev, v));
    }
    out
}

/// v1 `blkio.throttle.io_service_bytes` / `io_serviced`: `(major:minor, read, write)`.
pub fn parse_blkio(text: &str) -> Vec<(&str, u64, u64)> {
    let mut out: Vec<(&str, u64, u64)> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        if f.len() != 3 || !f[0].contains(':') {
            continue;
        }
        let Ok(n) = f[2].parse::<u64>() else { continue };
        let idx = match out.iter().position(|(d, ..)| *d == f[0]) {
            Some(i) => i,
            None => {
                out.push((f[0], 0, 0));
                out.len() - 1
            }
        };
        match f[1] {
            "Read" => out[idx].1 = n,
            "Write" => out[idx].2 = n,
            _ => {}
        }
    }
    out
}

/// One workload's readings (absent files stay `None` and produce no series).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CgroupStats {
    pub cpu_usage_seconds: Option<f64>,
    pub cpu_user_seconds: Option<f64>,
    pub cpu_system_seconds: Option<f64>,
    pub cpu_periods: Option<u64>,
    pub cpu_throttled_periods: Option<u64>,
    pub cpu_throttled_seconds: Option<f64>,
    pub cpu_limit_cores: Option<f64>,
    pub memory_usage: Option<u64>,
    pub memory_peak: Option<u64>,
    pub memory_working_set: Option<u64>,
    pub memory_anon: Option<u64>,
    pub memory_file: Option<u64>,
    pub memory_limit: Option<u64>,
    /// `(event, count)`: low, high, max, oom, oom_kill (v2); oom_kill, max (v1 failcnt).
    pub memory_events: Vec<(&'static str, u64)>,
    /// `(major:minor, rbytes, wbytes, rios, wios)`.
    pub io: Vec<(String, [u64; 4])>,
    /// `(resource, some µs, full µs)`.
    pub pressure: Vec<(&'static str, Option<u64>, Option<u64>)>,
    pub processes: Option<u64>,
    pub threads: Option<u64>,
}

/// Open cgroup files kept across collects (`None`: the file did not exist at the last
/// walk), each tagged with the collect that last used it.
type FileCache = HashMap<PathBuf, (Option<std::fs::File>, u64)>;

/// Reads whole files with `pread` from offset 0 into `buf`, keeping the descriptors open
/// between collects: re-reading an open cgroupfs file costs about a sixth of
/// open+read+close (measured on this machine, docs/bench/host.md). At most `cap` files are
/// kept open; past that files are read the plain way and counted.
struct Reader<'a> {
    buf: &'a mut Vec<u8>,
    files: &'a mut FileCache,
    cap: usize,
    gen: u64,
    uncached: u64,
    vanished: bool,
    single_hierarchy: bool,
}

impl Reader<'_> {
    /// Fills the buffer with the file; false when it does not exist or cannot be read (a
    /// cgroup that vanished since the walk, a controller not enabled for it).
    fn fill(&mut self, p: &Path) -> bool {
        if let Some((f, g)) = self.files.get_mut(p) {
            *g = self.gen;
            match f {
                None => return false,
                Some(file) => {
                    if crate::util::pread_all(file, self.buf).is_ok() {
                        return true;
                    }
                    // ENODEV: the cgroup was removed (perhaps recreated): reopen below.
                    self.files.remove(p);
                }
            }
        }
        match std::fs::File::open(p) {
            Ok(file) => {
                let ok = crate::util::pread_all(&file, self.buf).is_ok();
                if self.files.len() < self.cap {
                    self.files.insert(p.to_path_buf(), (Some(file), self.gen));
                } else {
                    self.uncached += 1;
                }
                ok
            }
            Err(e) => {
                if e.kind() == std::io::ErrorKind::NotFound {
                    // On cgroup v2 a missing directory means the cgroup is gone; on v1 a
                    // cgroup is often absent from some hierarchies, which is normal.
                    if self.single_hierarchy && !p.parent().is_some_and(|d| d.exists()) {
                        self.vanished = true;
                    } else if self.files.len() < self.cap {
                        // Remembered as absent until the next walk.
                        self.files.insert(p.to_path_buf(), (None, self.gen));
                    }
                }
                false
            }
        }
    }

    fn read(&mut self, p: &Path) -> Option<String> {
        self.fill(p).then(|| text(self.buf).into_owned())
    }

    fn num(&mut self, p: &Path) -> Option<u64> {
        if !self.fill(p) {
            return None;
        }
        std::str::from_utf8(self.buf).ok()?.trim().parse().ok()
    }

    fn lines(&mut self, p: &Path) -> Option<u64> {
        self.fill(p)
            .then(|| self.buf.iter().filter(|&&b| b == b'\n').count() as u64)
    }
}

fn read_v2(r: &mut Reader, d: &Path) -> CgroupStats {
    let mut s = CgroupStats::default();
    if let Some(t) = r.read(&d.join("cpu.stat")) {
        let us = |k| flat_keyed(&t, k).map(|v| v as f64 / 1e6);
        s.cpu_usage_seconds = us("usage_usec");
        s.cpu_user_seconds = us("user_usec");
        s.cpu_system_seconds = us("system_usec");
        s.cpu_periods = flat_keyed(&t, "nr_periods");
        s.cpu_throttled_periods = flat_keyed(&t, "nr_throttled");
        s.cpu_throttled_seconds = us("throttled_usec");
    }
    if let Some(t) = r.read(&d.join("cpu.max")) {
        let mut it = t.split_ascii_whitespace();
        if let (Some(q), Some(p)) = (it.next(), it.next()) {
            if let (Ok(q), Ok(p)) = (q.parse::<f64>(), p.parse::<f64>()) {
                if p > 0.0 {
                    s.cpu_limit_cores = Some(q / p);
                }
            }
        }
    }
    s.memory_usage = r.num(&d.join("memory.current"));
    s.memory_peak = r.num(&d.join("memory.peak"));
    s.memory_limit = r.num(&d.join("memory.max"));
    if let Some(t) = r.read(&d.join("memory.stat")) {
        s.memory_anon = flat_keyed(&t, "anon");
        s.memory_file = flat_keyed(&t, "file");
        if let (Some(u), Some(i)) = (s.memory_usage, flat_keyed(&t, "inactive_file")) {
            s.memory_working_set = Some(u.saturating_sub(i));
        }
    }
    if let Some(t) = r.read(&d.join("memory.events")) {
        for e in ["low", "high", "max", "oom", "oom_kill"] {
            if let Some(v) = flat_keyed(&t, e) {
                s.memory_events.push((e, v));
            }
        }
    }
    if let Some(t) = r.read(&d.join("io.stat")) {
        s.io = parse_io_stat(&t)
            .into_iter()
            .map(|(d, v)| (d.to_string(), v))
            .collect();
    }
    for (res, file) in [
        ("cpu", "cpu.pressure"),
        ("memory", "memory.pressure"),
        ("io", "io.pressure"),
    ] {
        if let Some(t) = r.read(&d.join(file)) {
            s.pressure
                .push((res, psi_total(&t, "some"), psi_total(&t, "full")));
        }
    }
    s.processes = r.num(&d.join("pids.current"));
    s.threads = r.lines(&d.join("cgroup.threads"));
    s
}

#[allow(clippy::too_many_arguments)]
fn read_v1(
    r: &mut Reader,
    rel: &str,
    cpu: Option<&Path>,
    cpuacct: Option<&Path>,
    memory: Option<&Path>,
    blkio: Option<&Path>,
    pids: Option<&Path>,
    user_hz: f64,
) -> CgroupStats {
    let mut s = CgroupStats::default();
    let at = |base: Option<&Path>| base.map(|b| b.join(rel.trim_start_matches('/')));
    if let Some(d) = at(cpuacct) {
        s.cpu_usage_seconds = r.num(&d.join("cpuacct.usage")).map(|v| v as f64 / 1e9);
        if let Some(t) = r.read(&d.join("cpuacct.stat")) {
            s.cpu_user_seconds = flat_keyed(&t, "user").map(|v| v as f64 / user_hz);
            s.cpu_system_seconds = flat_keyed(&t, "system").map(|v| v as f64 / user_hz);
        }
    }
    if let Some(d) = at(cpu) {
        if let Some(t) = r.read(&d.join("cpu.stat")) {
            s.cpu_periods = flat_keyed(&t, "nr_periods");
            s.cpu_throttled_periods = flat_keyed(&t, "nr_throttled");
            s.cpu_throttled_seconds = flat_keyed(&t, "throttled_time").map(|v| v as f64 / 1e9);
        }
        let q = r
            .read(&d.join("cpu.cfs_quota_us"))
            .and_then(|t| t.trim().parse::<i64>().ok());
        if let Some(q) = q.filter(|q| *q > 0) {
            if let Some(p) = r.num(&d.join("cpu.cfs_period_us")).filter(|p| *p > 0) {
                s.cpu_limit_cores = Some(q as f64 / p as f64);
            }
        }
    }
    if let Some(d) = at(memory) {
        s.memory_usage = r.num(&d.join("memory.usage_in_bytes"));
        s.memory_peak = r.num(&d.join("memory.max_usage_in_bytes"));
        // The kernel's "unlimited" is PAGE_COUNTER_MAX pages, about 2^63 bytes.
        s.memory_limit = r
            .num(&d.join("memory.limit_in_bytes"))
            .filter(|v| *v < (1u64 << 62));
        if let Some(t) = r.read(&d.join("memory.stat")) {
            s.memory_anon = flat_keyed(&t, "total_rss");
            s.memory_file = flat_keyed(&t, "total_cache");
            if let (Some(u), Some(i)) = (s.memory_usage, flat_keyed(&t, "total_inactive_file")) {
                s.memory_working_set = Some(u.saturating_sub(i));
            }
        }
        if let Some(t) = r.read(&d.join("memory.oom_control")) {
            if let Some(v) = flat_keyed(&t, "oom_kill") {
                s.memory_events.push(("oom_kill", v));
            }
        }
        if let Some(v) = r.num(&d.join("memory.failcnt")) {
            s.memory_events.push(("max", v));
        }
    }
    if let Some(d) = at(blkio) {
        let bytes = r.read(&d.join("blkio.throttle.io_service_bytes"));
        let ios = r.read(&d.join("blkio.throttle.io_serviced"));
        let mut io: Vec<(String, [u64; 4])> = Vec::new();
        if let Some(t) = &bytes {
            for (dev, rd, wr) in parse_blkio(t) {
                io.push((dev.to_string(), [rd, wr, 0, 0]));
            }
        }
        if let Some(t) = &ios {
            for (dev, rd, wr) in parse_blkio(t) {
                match io.iter_mut().find(|(d, _)| d == dev) {
                    Some((_, v)) => {
                        v[2] = rd;
                        v[3] = wr;
                    }
                    None => io.push((dev.to_string(), [0, 0, rd, wr])),
                }
            }
        }
        s.io = io;
    }
    if let Some(d) = at(pids) {
        s.processes = r.num(&d.join("pids.current"));
        s.threads = r.lines(&d.join("tasks"));
    } else if let Some(d) = at(cpu) {
        s.threads = r.lines(&d.join("tasks"));
    }
    s
}

/// The families, in one place so v1 and v2 export the same names.
struct Fams {
    f: Vec<MetricFamily>,
}

const F_USAGE: usize = 0;
const F_USER: usize = 1;
const F_SYSTEM: usize = 2;
const F_PERIODS: usize = 3;
const F_THROTTLED: usize = 4;
const F_THROTTLED_S: usize = 5;
const F_CPU_LIMIT: usize = 6;
const F_MEM: usize = 7;
const F_PEAK: usize = 8;
const F_WSS: usize = 9;
const F_ANON: usize = 10;
const F_FILE: usize = 11;
const F_MEM_LIMIT: usize = 12;
const F_EVENTS: usize = 13;
const F_IO_RB: usize = 14;
const F_IO_WB: usize = 15;
const F_IO_R: usize = 16;
const F_IO_W: usize = 17;
const F_PSI_WAIT: usize = 18;
const F_PSI_STALL: usize = 19;
const F_PROCS: usize = 20;
const F_THREADS: usize = 21;

/// `(name, help, type)` of every workload family, indexed by the `F_*` constants.
pub const WORKLOAD_FAMILIES: &[(&str, &str, MetricType)] = &[
    ("nodescope_workload_cpu_usage_seconds_total", "CPU time consumed by the workload's cgroup (cgroup v2 cpu.stat usage_usec, v1 cpuacct.usage).", MetricType::Counter),
    ("nodescope_workload_cpu_user_seconds_total", "User-mode CPU time of the workload's cgroup.", MetricType::Counter),
    ("nodescope_workload_cpu_system_seconds_total", "Kernel-mode CPU time of the workload's cgroup.", MetricType::Counter),
    ("nodescope_workload_cpu_periods_total", "CFS enforcement periods that elapsed while the workload was runnable under a CPU limit (cpu.stat nr_periods).", MetricType::Counter),
    ("nodescope_workload_cpu_throttled_periods_total", "CFS periods in which the workload was throttled by its CPU limit (cpu.stat nr_throttled).", MetricType::Counter),
    ("nodescope_workload_cpu_throttled_seconds_total", "Time the workload's threads were throttled by its CPU limit (cpu.stat throttled_usec / throttled_time).", MetricType::Counter),
    ("nodescope_workload_cpu_limit_cores", "CPU limit of the workload's cgroup in cores (quota / period); absent when unlimited.", MetricType::Gauge),
    ("nodescope_workload_memory_usage_bytes", "Memory charged to the workload's cgroup (v2 memory.current, v1 memory.usage_in_bytes).", MetricType::Gauge),
    ("nodescope_workload_memory_peak_bytes", "Highest memory usage of the cgroup since it was created or reset (v2 memory.peak, v1 memory.max_usage_in_bytes).", MetricType::Gauge),
    ("nodescope_workload_memory_working_set_bytes", "Memory usage minus inactive file cache (what the kubelet and cAdvisor call the working set).", MetricType::Gauge),
    ("nodescope_workload_memory_anon_bytes", "Anonymous memory of the cgroup (v2 memory.stat anon, v1 total_rss).", MetricType::Gauge),
    ("nodescope_workload_memory_file_bytes", "File-backed (page cache) memory of the cgroup (v2 memory.stat file, v1 total_cache).", MetricType::Gauge),
    ("nodescope_workload_memory_limit_bytes", "Memory limit of the cgroup (v2 memory.max, v1 memory.limit_in_bytes); absent when unlimited.", MetricType::Gauge),
    ("nodescope_workload_memory_events_total", "Memory events of the cgroup by event (v2 memory.events: low, high, max, oom, oom_kill; v1: oom_kill from memory.oom_control, max from memory.failcnt).", MetricType::Counter),
    ("nodescope_workload_io_read_bytes_total", "Bytes read by the cgroup per block device (v2 io.stat rbytes, v1 blkio.throttle.io_service_bytes Read).", MetricType::Counter),
    ("nodescope_workload_io_written_bytes_total", "Bytes written by the cgroup per block device (v2 io.stat wbytes, v1 blkio.throttle.io_service_bytes Write).", MetricType::Counter),
    ("nodescope_workload_io_reads_total", "Read operations of the cgroup per block device (v2 io.stat rios, v1 blkio.throttle.io_serviced Read).", MetricType::Counter),
    ("nodescope_workload_io_writes_total", "Write operations of the cgroup per block device (v2 io.stat wios, v1 blkio.throttle.io_serviced Write).", MetricType::Counter),
    ("nodescope_workload_pressure_waiting_seconds_total", "Time some of the cgroup's tasks were stalled on the resource (PSI some total; cgroup v2 only).", MetricType::Counter),
    ("nodescope_workload_pressure_stalled_seconds_total", "Time all of the cgroup's non-idle tasks were stalled on the resource (PSI full total; cgroup v2 only).", MetricType::Counter),
    ("nodescope_workload_processes", "Processes in the cgroup and its descendants (pids.current).", MetricType::Gauge),
    ("nodescope_workload_threads", "Threads directly in the workload's cgroup (v2 cgroup.threads, v1 tasks).", MetricType::Gauge),
];

impl Fams {
    fn new() -> Self {
        Fams {
            f: WORKLOAD_FAMILIES
                .iter()
                .map(|(n, h, k)| MetricFamily::new(*n, *h, *k))
                .collect(),
        }
    }

    fn push(
        &mut self,
        i: usize,
        labels: &[(&'static str, String)],
        extra: &[(&'static str, String)],
        v: f64,
    ) {
        let l: Vec<(&'static str, String)> = labels.iter().chain(extra).cloned().collect();
        self.f[i].push(l, v);
    }
}

/// `[host.cgroup]` limits, as the collector uses them.
#[derive(Clone, Debug)]
pub(crate) struct CgroupLimits {
    pub max_cgroups: usize,
    pub max_workloads: usize,
    /// Most cgroup files kept open between collects.
    pub max_open_files: usize,
    /// The cgroup tree is re-walked at least this often (and on cgroup v2 whenever the
    /// root's descendant count changes, or a cgroup vanished).
    pub rescan_interval: std::time::Duration,
}

/// What the last walk found, and the files kept open.
#[derive(Default)]
struct State {
    layout: Option<Layout>,
    cgroups: Vec<(String, bool)>,
    /// Directories with children (v1), and their link count at the walk.
    watch: Vec<(PathBuf, u64)>,
    dropped_cgroups: u64,
    walked_at: Option<std::time::Instant>,
    descendants: Option<u64>,
    files: FileCache,
    gen: u64,
    buf: Vec<u8>,
    uncached_total: u64,
    walks_total: u64,
}

/// `nr_descendants + nr_dying_descendants` of a v2 `cgroup.stat`.
fn descendants(root: &Path) -> Option<u64> {
    let t = std::fs::read_to_string(root.join("cgroup.stat")).ok()?;
    Some(flat_keyed(&t, "nr_descendants")? + flat_keyed(&t, "nr_dying_descendants").unwrap_or(0))
}

pub(crate) struct CgroupCollector {
    root: PathBuf,
    sys: PathBuf,
    pods: SharedPodLookup,
    limits: CgroupLimits,
    user_hz: f64,
    devices: Mutex<HashMap<String, String>>,
    dropped_workloads: AtomicU64,
    state: Mutex<State>,
}

impl CgroupCollector {
    pub(crate) fn new(paths: &HostPaths, pods: SharedPodLookup, limits: CgroupLimits) -> Self {
        CgroupCollector {
            root: paths.sys.join("fs/cgroup"),
            sys: paths.sys.clone(),
            pods,
            limits,
            user_hz: rustix::param::clock_ticks_per_second() as f64,
            devices: Mutex::new(HashMap::new()),
            dropped_workloads: AtomicU64::new(0),
            state: Mutex::new(State::default()),
        }
    }

    /// `major:minor` → block device name via `<sys>/dev/block/<maj:min>` (cached).
    fn device_name(&self, majmin: &str) -> String {
        let mut cache = self.devices.lock();
        if let Some(n) = cache.get(majmin) {
            return n.clone();
        }
        let name = std::fs::read_link(self.sys.join("dev/block").join(majmin))
            .ok()
            .and_then(|t| t.file_name().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| majmin.to_string());
        if cache.len() < DEV_CACHE_CAP {
            cache.insert(majmin.to_string(), name.clone());
        }
        name
    }

    /// Every cgroup of the layout as `(path relative to the hierarchy root, is a leaf)`,
    /// parents before children, and how many were not walked (cap).
    #[allow(clippy::type_complexity)]
    fn walk_layout(&self, layout: &Layout) -> (Vec<(String, bool)>, Vec<(PathBuf, u64)>, u64) {
        let mut cgroups: Vec<(String, bool)> = Vec::new();
        let mut watch = Vec::new();
        let mut seen = HashMap::new();
        let mut count = 0usize;
        let mut dropped = 0u64;
        match layout {
            Layout::V2(root) => self.walk(
                root,
                &mut seen,
                &mut cgroups,
                &mut watch,
                &mut count,
                &mut dropped,
            ),
            Layout::V1 {
                cpu,
                cpuacct,
                memory,
                ..
            } => {
                // cpu and cpuacct are often the same hierarchy (symlinks); walk it once.
                let mut bases: Vec<&PathBuf> = Vec::new();
                for b in [cpuacct, cpu, memory].into_iter().flatten() {
                    let canon = std::fs::canonicalize(b).ok();
                    if !bases.iter().any(|x| std::fs::canonicalize(x).ok() == canon) {
                        bases.push(b);
                    }
                }
                for b in bases {
                    self.walk(
                        b,
                        &mut seen,
                        &mut cgroups,
                        &mut watch,
                        &mut count,
                        &mut dropped,
                    );
                }
                // Pre-order over the union: parents before children.
                cgroups.sort_by(|a, b| a.0.cmp(&b.0));
            }
        }
        if matches!(layout, Layout::V2(_)) {
            // cgroup v2: the root's cgroup.stat descendant count is the cheaper check.
            watch.clear();
        }
        (cgroups, watch, dropped)
    }

    /// Walks `base` in pre-order; `count` bounds the walk.
    fn walk(
        &self,
        base: &Path,
        seen: &mut HashMap<String, usize>,
        out: &mut Vec<(String, bool)>,
        watch: &mut Vec<(PathBuf, u64)>,
        count: &mut usize,
        dropped: &mut u64,
    ) {
        let mut stack: Vec<(PathBuf, String, usize)> = vec![(base.to_path_buf(), String::new(), 0)];
        while let Some((dir, rel, depth)) = stack.pop() {
            let mut children: Vec<(String, PathBuf)> = Vec::new();
            if depth < MAX_DEPTH {
                if let Ok(rd) = std::fs::read_dir(&dir) {
                    for e in rd.flatten() {
                        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                            if let Some(n) = e.file_name().to_str() {
                                children.push((n.to_string(), e.path()));
                            }
                        }
                    }
                }
            }
            // kernfs keeps a directory's link count at 2 + its subdirectories: a changed
            // count on a directory with children means cgroups appeared or vanished.
            if rel.is_empty() || !children.is_empty() {
                use std::os::unix::fs::MetadataExt;
                if let Ok(m) = std::fs::metadata(&dir) {
                    watch.push((dir.clone(), m.nlink()));
                }
            }
            if !rel.is_empty() {
                match seen.get(&rel) {
                    None => {
                        if *count >= self.limits.max_cgroups {
                            *dropped += 1;
                            continue;
                        }
                        *count += 1;
                        seen.insert(rel.clone(), out.len());
                        out.push((rel.clone(), children.is_empty()));
                    }
                    // Seen in another hierarchy: not a leaf if it has children here.
                    Some(&i) => {
                        if !children.is_empty() {
                            out[i].1 = false;
                        }
                    }
                }
            }
            children.sort_by(|a, b| b.0.cmp(&a.0));
            for (name, path) in children {
                stack.push((path, format!("{rel}/{name}"), depth + 1));
            }
        }
    }
}

impl Collector for CgroupCollector {
    fn name(&self) -> &'static str {
        "cgroup"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let mut st = self.state.lock();
        let st = &mut *st;
        let now = std::time::Instant::now();
        let desc = match &st.layout {
            Some(Layout::V2(root)) => descendants(root),
            _ => None,
        };
        let stale = st.layout.is_none()
            || st
                .walked_at
                .is_none_or(|t| now.duration_since(t) >= self.limits.rescan_interval)
            || desc != st.descendants
            || st.watch.iter().any(|(d, n)| {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata(d).map(|m| m.nlink()).ok() != Some(*n)
            });
        if stale {
            let layout = detect(&self.root).ok_or_else(|| CollectError::Unavailable {
                what: self.root.display().to_string(),
                reason: "no cgroup v2 mount and no cpu/cpuacct/memory cgroup v1 hierarchy".into(),
            })?;
            let (cgroups, watch, dropped) = self.walk_layout(&layout);
            st.watch = watch;
            st.descendants = match &layout {
                Layout::V2(root) => descendants(root),
                _ => None,
            };
            st.layout = Some(layout);
            st.cgroups = cgroups;
            st.dropped_cgroups = dropped;
            st.walked_at = Some(now);
            st.walks_total += 1;
            // Files that did not exist may exist now (a controller enabled since).
            st.files.retain(|_, (f, _)| f.is_some());
        }
        let layout = st.layout.clone().expect("set above");
        let dropped_cg = st.dropped_cgroups;
        st.gen += 1;
        let mut buf = std::mem::take(&mut st.buf);
        let mut r = Reader {
            buf: &mut buf,
            files: &mut st.files,
            cap: self.limits.max_open_files,
            gen: st.gen,
            uncached: 0,
            vanished: false,
            single_hierarchy: matches!(layout, Layout::V2(_)),
        };
        let cgroups = &st.cgroups;
        let mut reported: HashSet<(WorkloadKind, String)> = HashSet::new();
        let mut fams = Fams::new();
        let mut dropped_wl = 0u64;
        let mut exported = 0usize;
        for (rel, leaf) in cgroups {
            let w = classify_cgroup_path(rel);
            match w.kind {
                WorkloadKind::Host => continue,
                WorkloadKind::Cgroup if !leaf => continue,
                _ => {}
            }
            if !reported.insert((w.kind, w.id.clone())) {
                continue;
            }
            if exported >= self.limits.max_workloads {
                dropped_wl += 1;
                continue;
            }
            exported += 1;
            let s = match &layout {
                Layout::V2(root) => read_v2(&mut r, &root.join(rel.trim_start_matches('/'))),
                Layout::V1 {
                    cpu,
                    cpuacct,
                    memory,
                    blkio,
                    pids,
                } => read_v1(
                    &mut r,
                    rel,
                    cpu.as_deref(),
                    cpuacct.as_deref(),
                    memory.as_deref(),
                    blkio.as_deref(),
                    pids.as_deref(),
                    self.user_hz,
                ),
            };
            let mut labels: Vec<(&'static str, String)> = vec![
                ("workload", w.id.clone()),
                ("workload_kind", w.kind.as_str().to_string()),
            ];
            if w.kind == WorkloadKind::Container {
                if let Some(p) = self.pods.as_ref().and_then(|p| p.pod_for_container(&w.id)) {
                    labels.push(("namespace", p.namespace));
                    labels.push(("pod", p.pod));
                    labels.push(("container", p.container));
                }
            }
            let l = &labels;
            for (i, v) in [
                (F_USAGE, s.cpu_usage_seconds),
                (F_USER, s.cpu_user_seconds),
                (F_SYSTEM, s.cpu_system_seconds),
                (F_PERIODS, s.cpu_periods.map(|v| v as f64)),
                (F_THROTTLED, s.cpu_throttled_periods.map(|v| v as f64)),
                (F_THROTTLED_S, s.cpu_throttled_seconds),
                (F_CPU_LIMIT, s.cpu_limit_cores),
                (F_MEM, s.memory_usage.map(|v| v as f64)),
                (F_PEAK, s.memory_peak.map(|v| v as f64)),
                (F_WSS, s.memory_working_set.map(|v| v as f64)),
                (F_ANON, s.memory_anon.map(|v| v as f64)),
                (F_FILE, s.memory_file.map(|v| v as f64)),
                (F_MEM_LIMIT, s.memory_limit.map(|v| v as f64)),
                (F_PROCS, s.processes.map(|v| v as f64)),
                (F_THREADS, s.threads.map(|v| v as f64)),
            ] {
                if let Some(v) = v {
                    fams.push(i, l, &[], v);
                }
            }
            for (e, v) in &s.memory_events {
                fams.push(F_EVENTS, l, &[("event", e.to_string())], *v as f64);
            }
            for (dev, v) in &s.io {
                let d = [("device", self.device_name(dev))];
                fams.push(F_IO_RB, l, &d, v[0] as f64);
                fams.push(F_IO_WB, l, &d, v[1] as f64);
                fams.push(F_IO_R, l, &d, v[2] as f64);
                fams.push(F_IO_W, l, &d, v[3] as f64);
            }
            for (res, some, full) in &s.pressure {
                let d = [("resource", res.to_string())];
                if let Some(v) = some {
                    fams.push(F_PSI_WAIT, l, &d, *v as f64 / 1e6);
                }
                if let Some(v) = full {
                    fams.push(F_PSI_STALL, l, &d, *v as f64 / 1e6);
                }
            }
        }
        let (uncached, vanished, gen) = (r.uncached, r.vanished, r.gen);
        st.buf = buf;
        st.uncached_total += uncached;
        // Close the files of cgroups that were not read this time (gone, or no longer a
        // reported workload).
        st.files.retain(|_, (_, g)| *g == gen);
        if vanished {
            // A cgroup disappeared since the walk: walk again next time.
            st.walked_at = None;
        }
        self.dropped_workloads.store(dropped_wl, Ordering::Relaxed);
        let mut out = fams.f;
        out.retain(|f| !f.points.is_empty());
        out.push(MetricFamily::single(
            "nodescope_host_cgroup_workloads",
            "Workloads exported by the last cgroup collect.",
            MetricType::Gauge,
            exported as f64,
        ));
        out.push(MetricFamily::single(
            "nodescope_host_cgroup_workloads_dropped",
            "Workloads beyond host.cgroup.max_workloads left out of the last collect.",
            MetricType::Gauge,
            dropped_wl as f64,
        ));
        out.push(MetricFamily::single(
            "nodescope_host_cgroup_open_files",
            "Cgroup files kept open between collects (bounded by host.cgroup.max_open_files).",
            MetricType::Gauge,
            st.files.len() as f64,
        ));
        out.push(MetricFamily::single(
            "nodescope_host_cgroup_uncached_reads_total",
            "Cgroup file reads that could not keep their file open because host.cgroup.max_open_files was reached.",
            MetricType::Counter,
            st.uncached_total as f64,
        ));
        out.push(MetricFamily::single(
            "nodescope_host_cgroup_walks_total",
            "Walks of the cgroup tree (at start, every host.cgroup.rescan_interval_ms, and when cgroups appear or vanish).",
            MetricType::Counter,
            st.walks_total as f64,
        ));
        out.push(MetricFamily::single(
            "nodescope_host_cgroup_cgroups_dropped",
            "Cgroup directories beyond host.cgroup.max_cgroups not walked in the last collect.",
            MetricType::Gauge,
            dropped_cg as f64,
        ));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil::value;
    use proptest::prelude::*;

    fn write(p: &Path, content: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn v2_tree_is_classified_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let paths = HostPaths::from_root(dir.path());
        let cg = paths.sys.join("fs/cgroup");
        write(&cg.join("cgroup.controllers"), "cpu io memory pids\n");
        let svc = cg.join("system.slice/nginx.service");
        write(&svc.join("cpu.stat"), "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 10\nnr_throttled 4\nthrottled_usec 300000\n");
        write(&svc.join("cpu.max"), "50000 100000\n");
        write(&svc.join("memory.current"), "1000\n");
        write(&svc.join("memory.max"), "max\n");
        write(
            &svc.join("memory.stat"),
            "anon 600\nfile 400\ninactive_file 300\n",
        );
        write(
            &svc.join("memory.events"),
            "low 0\nhigh 1\nmax 2\noom 3\noom_kill 1\n",
        );
        write(
            &svc.join("io.stat"),
            "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
        );
        write(&svc.join("cpu.pressure"), "some avg10=0.00 avg60=0.00 avg300=0.00 total=1500000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=500000\n");
        write(&svc.join("pids.current"), "3\n");
        write(&svc.join("cgroup.threads"), "1\n2\n3\n4\n");
        // A sub-cgroup of the same unit: not reported again.
        write(&svc.join("sub/cpu.stat"), "usage_usec 1\n");
        let ctr = cg.join(format!(
            "kubepods.slice/kubepods-pod1.slice/cri-containerd-{CID}.scope"
        ));
        write(&ctr.join("memory.current"), "77\n");
        write(&cg.join("leafy/memory.current"), "5\n");
        std::os::unix::fs::symlink("../../devices/virtual/block/vda", {
            let p = paths.sys.join("dev/block/8:0");
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            p
        })
        .unwrap();
        let c = CgroupCollector::new(
            &paths,
            None,
            CgroupLimits {
                max_cgroups: 100,
                max_workloads: 100,
                max_open_files: 1000,
                rescan_interval: std::time::Duration::from_secs(10),
            },
        );
        let f = c.collect().unwrap();
        let w = [
            ("workload", "nginx.service"),
            ("workload_kind", "systemd_unit"),
        ];
        assert_eq!(
            value(&f, "nodescope_workload_cpu_usage_seconds_total", &w),
            2.5
        );
        assert_eq!(
            value(&f, "nodescope_workload_cpu_throttled_periods_total", &w),
            4.0
        );
        assert_eq!(
            value(&f, "nodescope_workload_cpu_throttled_seconds_total", &w),
            0.3
        );
        assert_eq!(value(&f, "nodescope_workload_cpu_limit_cores", &w), 0.5);
        assert_eq!(
            value(&f, "nodescope_workload_memory_working_set_bytes", &w),
            700.0
        );
        assert_eq!(
            value(
                &f,
                "nodescope_workload_memory_events_total",
                &[w[0], ("event", "oom_kill")]
            ),
            1.0
        );
        assert_eq!(
            value(
                &f,
                "nodescope_workload_io_written_bytes_total",
                &[w[0], ("device", "vda")]
            ),
            8192.0
        );
        assert_eq!(
            value(
                &f,
                "nodescope_workload_pressure_stalled_seconds_total",
                &[w[0], ("resource", "cpu")]
            ),
            0.5
        );
        assert_eq!(value(&f, "nodescope_workload_threads", &w), 4.0);
        assert!(!f
            .iter()
            .any(|f| f.name == "nodescope_workload_memory_limit_bytes"));
        assert_eq!(
            value(
                &f,
                "nodescope_workload_memory_usage_bytes",
                &[("workload", CID), ("workload_kind", "container")]
            ),
            77.0
        );
        assert_eq!(
            value(
                &f,
                "nodescope_workload_memory_usage_bytes",
                &[("workload", "/leafy")]
            ),
            5.0
        );
        let usage = f
            .iter()
            .find(|f| f.name == "nodescope_workload_cpu_usage_seconds_total")
            .unwrap();
        assert_eq!(
            usage.points.len(),
            1,
            "sub-cgroup of nginx.service reported twice"
        );
        // Slices with children are not workloads of their own.
        assert!(!f.iter().any(|f| f
            .points
            .iter()
            .any(|p| p.labels.iter().any(|(_, v)| v == "/kubepods.slice"))));
    }

    #[test]
    fn v1_hierarchies_are_joined_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        let paths = HostPaths::from_root(dir.path());
        let cg = paths.sys.join("fs/cgroup");
        for i in 0..5 {
            write(
                &cg.join(format!("cpuacct/job{i}/cpuacct.usage")),
                "2000000000\n",
            );
            write(
                &cg.join(format!("cpu/job{i}/cpu.stat")),
                "nr_periods 3\nnr_throttled 1\nthrottled_time 5000000\n",
            );
            write(
                &cg.join(format!("memory/job{i}/memory.usage_in_bytes")),
                "4096\n",
            );
            write(
                &cg.join(format!("memory/job{i}/memory.limit_in_bytes")),
                "9223372036854771712\n",
            );
            write(
                &cg.join(format!("memory/job{i}/memory.oom_control")),
                "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
            );
        }
        let c = CgroupCollector::new(
            &paths,
            None,
            CgroupLimits {
                max_cgroups: 100,
                max_workloads: 3,
                max_open_files: 1000,
                rescan_interval: std::time::Duration::from_secs(10),
            },
        );
        let f = c.collect().unwrap();
        let w = [("workload", "/job0")];
        assert_eq!(
            value(&f, "nodescope_workload_cpu_usage_seconds_total", &w),
            2.0
        );
        assert_eq!(
            value(&f, "nodescope_workload_cpu_throttled_seconds_total", &w),
            0.005
        );
        assert_eq!(
            value(&f, "nodescope_workload_memory_usage_bytes", &w),
            4096.0
        );
        assert_eq!(
            value(
                &f,
                "nodescope_workload_memory_events_total",
                &[w[0], ("event", "oom_kill")]
            ),
            2.0
        );
        assert!(!f
            .iter()
            .any(|f| f.name == "nodescope_workload_memory_limit_bytes"));
        assert_eq!(value(&f, "nodescope_host_cgroup_workloads", &[]), 3.0);
        assert_eq!(
            value(&f, "nodescope_host_cgroup_workloads_dropped", &[]),
            2.0
        );
    }

    #[test]
    fn new_and_removed_cgroups_are_seen_without_waiting_for_the_rescan() {
        let dir = tempfile::tempdir().unwrap();
        let paths = HostPaths::from_root(dir.path());
        let cg = paths.sys.join("fs/cgroup");
        write(&cg.join("memory/a/memory.usage_in_bytes"), "1\n");
        write(&cg.join("memory/k/x/memory.usage_in_bytes"), "2\n");
        let c = CgroupCollector::new(
            &paths,
            None,
            CgroupLimits {
                max_cgroups: 100,
                max_workloads: 100,
                max_open_files: 100,
                rescan_interval: std::time::Duration::from_secs(3600),
            },
        );
        let n = |f: &[MetricFamily]| value(f, "nodescope_host_cgroup_workloads", &[]);
        assert_eq!(n(&c.collect().unwrap()), 2.0);
        assert_eq!(n(&c.collect().unwrap()), 2.0);
        write(&cg.join("memory/k/y/memory.usage_in_bytes"), "3\n");
        let f = c.collect().unwrap();
        assert_eq!(n(&f), 3.0);
        assert_eq!(
            value(
                &f,
                "nodescope_workload_memory_usage_bytes",
                &[("workload", "/k/y")]
            ),
            3.0
        );
        std::fs::remove_dir_all(cg.join("memory/k/x")).unwrap();
        assert_eq!(n(&c.collect().unwrap()), 2.0);
        assert_eq!(
            value(
                &c.collect().unwrap(),
                "nodescope_host_cgroup_walks_total",
                &[]
            ),
            3.0
        );
    }

    #[test]
    fn no_cgroupfs_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let paths = HostPaths::from_root(dir.path());
        let c = CgroupCollector::new(
            &paths,
            None,
            CgroupLimits {
                max_cgroups: 10,
                max_workloads: 10,
                max_open_files: 10,
                rescan_interval: std::time::Duration::from_secs(10),
            },
        );
        assert!(c.collect().unwrap_err().is_unavailable());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = flat_keyed(&s, "usage_usec");
            let _ = psi_total(&s, "some");
            let _ = parse_io_stat(&s);
            let _ = parse_blkio(&s);
        }
    }
}
