//! Symbolization on the node.
//!
//! * Kernel frames: `/proc/kallsyms` ([`crate::kallsyms`]), reloaded every few minutes so
//!   modules loaded later resolve.
//! * User frames: each process's executable mappings are snapshotted from
//!   `<host_proc>/<pid>/maps` the first time the pid shows up in a sample. Every mapped
//!   file is opened right then through `<host_proc>/<pid>/map_files/<range>` (works for
//!   files inside containers and for deleted files) or `<host_proc>/<pid>/root/<path>`,
//!   and the open descriptor is kept in a bounded per-binary cache keyed by GNU build id
//!   (or device+inode when there is none). Symbols are read through `/proc/self/fd/<n>`
//!   with blazesym (ELF symtab/dynsym, DWARF, `.gnu_debuglink` and `.build-id` debug
//!   files, Rust and C++ demangling), so a process that exits before its profile is
//!   built still symbolizes.
//! * Memory bound: a binary whose DWARF (in the file plus its separate debug file) exceeds
//!   [`SymbolizerLimits::debug_info_max_bytes`] is symbolized from ELF symbol tables only
//!   ([`crate::debugsize`]); misses are resolved in one blazesym batch per binary, and the
//!   blazesym symbolizer is dropped (unmapping what it parsed) right after any binary that
//!   leaves the agent's file-backed RSS above 32 MiB, so the peak of a pass is bounded by
//!   about that plus one binary, not the sum of every binary in the pass.
//! * Unwind quality: per binary, the share of user stacks of depth <= 2 that do not end
//!   in a known entry point (`_start`, `__libc_start_main`, `clone`, ...).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blazesym::symbolize::source::{Elf, Source};
use blazesym::symbolize::{Input, Symbolized};
use nodescope_model::workload::{cgroup_path_from_proc, classify_cgroup_path, Workload};
use parking_lot::Mutex;

use crate::debugsize::{self, DebugFootprint, DwarfDecision};
use crate::kallsyms::KernelSymbols;
use crate::metrics::ProfilerMetrics;
use crate::procmaps::{executable_mappings, MapLine};
use crate::samples::RawSample;

/// Bounds of the symbolizer's caches.
#[derive(Clone, Debug)]
pub struct SymbolizerLimits {
    /// Distinct binaries (open descriptors + parsed symbol tables) kept.
    pub max_binaries: usize,
    /// Symbolized addresses cached per binary; the binary's cache is cleared when full.
    pub max_symbols_per_binary: usize,
    /// Process map snapshots kept.
    pub max_processes: usize,
    /// A snapshot of a pid not seen in a sample for this long is dropped.
    pub process_retention: Duration,
    /// Consult DWARF and separate debug files (debug links, `.build-id`), not only the
    /// ELF symbol tables.
    pub debug_info: bool,
    /// A binary whose DWARF (uncompressed, in the file plus its separate debug file) is
    /// larger than this is symbolized from ELF symbol tables only (and counted).
    pub debug_info_max_bytes: u64,
}

impl Default for SymbolizerLimits {
    fn default() -> Self {
        SymbolizerLimits {
            max_binaries: 256,
            max_symbols_per_binary: 65_536,
            max_processes: 4096,
            process_retention: Duration::from_secs(600),
            debug_info: true,
            debug_info_max_bytes: DEFAULT_DEBUG_INFO_MAX_MB << 20,
        }
    }
}

/// Default of `profiling.debug_info_max_binary_mb` (see docs/bench/profiling.md for the
/// measurements behind it).
pub const DEFAULT_DEBUG_INFO_MAX_MB: u64 = 16;

/// Names of user-space functions where a complete stack normally ends.
pub const ENTRY_POINTS: &[&str] = &[
    "_start",
    "__libc_start_main",
    "__libc_start_call_main",
    "__libc_start_main_impl",
    "clone",
    "clone3",
    "__clone",
    "__clone3",
    "__GI___clone3",
    "start_thread",
    "thread_start",
    "_dl_start_user",
    "runtime.goexit",
    "runtime.goexit.abi0",
    "runtime.mstart",
    "runtime.rt0_go",
];

/// A mapping as it goes into the pprof `Mapping` table.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct MappingInfo {
    /// 0 for the kernel.
    pub pid: u32,
    pub start: u64,
    pub limit: u64,
    pub file_offset: u64,
    pub filename: String,
    pub build_id: Option<String>,
    pub has_functions: bool,
}

/// One resolved frame.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ResolvedFrame {
    pub address: u64,
    pub mapping: Option<Arc<MappingInfo>>,
    /// Function names, innermost inlined function first, the outer function last.
    /// Never empty: unresolved frames get `[unknown] <module>+0x<offset>`-style names.
    pub names: Arc<[Arc<str>]>,
    pub kernel: bool,
}

impl ResolvedFrame {
    pub fn outer_name(&self) -> &str {
        self.names.last().map(|s| &**s).unwrap_or("[unknown]")
    }
}

/// A symbolized sample, frames leaf first (kernel frames, then user frames).
#[derive(Debug)]
pub struct ResolvedSample {
    pub pid: u32,
    pub tid: u32,
    pub comm: Arc<str>,
    pub workload: Arc<WorkloadInfo>,
    pub frames: Vec<Arc<ResolvedFrame>>,
    pub count: u64,
    /// The user stack's unwind flags (`StackKey::unwind`).
    pub unwind: u16,
    /// The user stack reaches a process root: its outermost frame is an entry point
    /// (`_start`, `clone3`, `start_thread`...) or the DWARF walk ended at a frame whose
    /// return address is undefined.
    pub reached_root: bool,
    /// Name of the binary of the leaf user frame (`[unknown]` if none), the key of the
    /// unwind-quality numbers.
    pub leaf_binary: Arc<str>,
}

/// What a process belongs to.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct WorkloadInfo {
    pub workload: Workload,
    /// `container:<id>`, `systemd_unit:<unit>`, `cgroup:<path>` or `host`.
    pub label: String,
}

impl WorkloadInfo {
    pub fn host() -> Self {
        WorkloadInfo {
            workload: classify_cgroup_path("/"),
            label: "host".into(),
        }
    }
    pub fn from_workload(workload: Workload) -> Self {
        let label = match workload.kind {
            nodescope_model::workload::WorkloadKind::Host => "host".to_string(),
            k => format!("{}:{}", k.as_str(), workload.id),
        };
        WorkloadInfo { workload, label }
    }
}

/// How a binary's addresses are symbolized (decided once, when it is opened).
enum SymPlan {
    /// blazesym with DWARF and separate debug files.
    Dwarf,
    /// ELF symbol tables of the binary only.
    Symtab,
    /// The binary is stripped and its debug data too large for DWARF: the `.symtab` of its
    /// separate debug file, looked up by virtual address (from the binary's `PT_LOAD`s).
    DebugFileSymtab {
        _file: File,
        fd_path: PathBuf,
        binary: DebugFootprint,
    },
}

impl SymPlan {
    fn name(&self) -> &'static str {
        match self {
            SymPlan::Dwarf => "dwarf",
            SymPlan::Symtab => "symtab",
            SymPlan::DebugFileSymtab { .. } => "debug_file_symtab",
        }
    }
}

type Names = Arc<[Arc<str>]>;

struct Binary {
    display: String,
    build_id: Option<String>,
    _file: File,
    fd_path: PathBuf,
    plan: SymPlan,
    /// What symbolizing it is expected to map (bytes): symbol tables, plus DWARF when
    /// `plan` is [`SymPlan::Dwarf`]; 0 when unknown.
    est_bytes: u64,
    /// For a [`SymPlan::Dwarf`] binary, how it is symbolized once its DWARF proved too
    /// costly to keep (`dwarf_off`): its own symbol tables, or its debug file's `.symtab`.
    fallback: Option<(SymPlan, u64)>,
    /// Set when the binary's DWARF had to be parsed [`DWARF_MAX_PARSES`] times within
    /// [`DWARF_REPARSE_WINDOW`]: it does not fit the symbolizer's memory bound alongside the
    /// other binaries in use, and parsing it every pass costs more than its inlined frames
    /// are worth. From then on it is symbolized from `fallback`.
    dwarf_off: std::sync::atomic::AtomicBool,
    /// Start of the current [`DWARF_REPARSE_WINDOW`] and the parses in it.
    dwarf_parses: Mutex<Option<(Instant, u32)>>,
    cache: Mutex<HashMap<u64, Arc<[Arc<str>]>>>,
    last_used: Mutex<Instant>,
}

impl Binary {
    /// The plan in force and what it is expected to map.
    fn active(&self) -> (&SymPlan, u64) {
        match &self.fallback {
            Some((p, est)) if self.dwarf_off.load(std::sync::atomic::Ordering::Relaxed) => {
                (p, *est)
            }
            _ => (&self.plan, self.est_bytes),
        }
    }
}

/// A DWARF binary parsed [`DWARF_MAX_PARSES`] times within this window falls back to
/// symbol tables (see [`Binary::dwarf_off`]). Three, not two: an on-demand profile's
/// thread has its own blazesym symbolizer and may parse a binary the continuous
/// profiler's thread parsed a moment before.
const DWARF_REPARSE_WINDOW: Duration = Duration::from_secs(60);
const DWARF_MAX_PARSES: u32 = 3;

impl std::fmt::Debug for Binary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binary")
            .field("display", &self.display)
            .field("build_id", &self.build_id)
            .field("plan", &self.plan.name())
            .finish()
    }
}

#[derive(Debug)]
struct SnapMapping {
    line: MapLine,
    info: Arc<MappingInfo>,
    binary: Option<Arc<Binary>>,
}

/// A process's executable mappings at the time it was first seen.
#[derive(Debug)]
pub struct ProcSnapshot {
    pub pid: u32,
    mappings: Vec<SnapMapping>,
    pub workload: Arc<WorkloadInfo>,
    taken: Instant,
    last_used: Mutex<Instant>,
    /// JIT symbols (`/tmp/perf-<pid>.map` in the process's mount namespace), read when a
    /// frame falls outside every file mapping.
    perf_map_path: PathBuf,
    perf_map: Mutex<crate::perfmap::PerfMap>,
}

impl ProcSnapshot {
    /// The perf-map name of `addr` (refreshing the map when it grew).
    fn jit_name(&self, addr: u64) -> Option<Arc<str>> {
        let mut m = self.perf_map.lock();
        m.refresh(&self.perf_map_path);
        m.lookup(addr)
    }
}

impl ProcSnapshot {
    fn find(&self, addr: u64) -> Option<&SnapMapping> {
        let idx = self.mappings.partition_point(|m| m.line.start <= addr);
        let m = self.mappings.get(idx.checked_sub(1)?)?;
        (addr < m.line.end).then_some(m)
    }

    /// The binary mapped at `addr` and the file offset `addr` corresponds to.
    fn binary_offset(&self, addr: u64) -> Option<(&Arc<Binary>, u64)> {
        let m = self.find(addr)?;
        Some((m.binary.as_ref()?, addr - m.line.start + m.line.offset))
    }
}

#[derive(Default)]
struct KernelState {
    table: Option<Arc<KernelSymbols>>,
    loaded: Option<Instant>,
    error: Option<String>,
}

type BinaryKey = String;

#[derive(Default)]
struct BinaryCache {
    by_key: HashMap<BinaryKey, Arc<Binary>>,
    /// (dev, inode, size, mtime) -> key, to skip re-reading the build id.
    by_inode: HashMap<(u64, u64, u64, i64), BinaryKey>,
}

/// A blazesym symbolizer kept per thread between [`Symbolizer::resolve`] calls (it is
/// neither `Send` nor `Sync`), so parsed symbol tables are reused instead of re-read
/// every interval. It is dropped when its owner evicted a binary (its descriptors may be
/// reused), when another `Symbolizer` uses the thread, or after [`BLAZE_MAX_AGE`].
struct BlazeSlot {
    owner: u64,
    generation: u64,
    created: Instant,
    sym: blazesym::symbolize::Symbolizer,
    /// Binaries (`Arc<Binary>` addresses; stable while `generation` is unchanged) this
    /// symbolizer has parsed: their pages are already counted in the RSS.
    parsed: HashSet<usize>,
}

thread_local! {
    static BLAZE: std::cell::RefCell<Option<BlazeSlot>> = const { std::cell::RefCell::new(None) };
}

const BLAZE_MAX_AGE: Duration = Duration::from_secs(600);
/// The slot keeps the symbol files it parsed mmapped; when the process's file-backed
/// resident memory exceeds this after a `resolve`, the slot is dropped (unmapping them)
/// instead of kept, trading CPU on the next misses for a bounded RSS.
/// 32 MiB: the agent's own binary is ~12 MB of it; the container memory benchmark
/// (docs/benchmarks.md) holds steady RSS under 64 MB with this.
const BLAZE_KEEP_MAX_RSS_FILE_KB: u64 = 32 * 1024;
/// Room always left for parsed symbol files above the floor (the `RssFile` measured right
/// after the last unmap: the agent's own pages, without blazesym's). Without it, an agent
/// whose own file pages alone exceed the bound (a binary with debug info, many touched
/// code paths) would unmap after every binary and parse the same DWARF again on each pass:
/// measured 178 unmaps in 40 s and 1.8 % of a core, mostly zlib and gimli.
const BLAZE_HEADROOM_KB: u64 = 16 * 1024;
/// `RssFile` after the last unmap (0: none yet).
static BLAZE_FLOOR_KB: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The file-backed RSS above which the blazesym symbolizer is dropped:
/// max([`BLAZE_KEEP_MAX_RSS_FILE_KB`], floor + [`BLAZE_HEADROOM_KB`]).
fn blaze_keep_bound_kb() -> u64 {
    keep_bound(BLAZE_FLOOR_KB.load(std::sync::atomic::Ordering::Relaxed))
}

fn keep_bound(floor_kb: u64) -> u64 {
    BLAZE_KEEP_MAX_RSS_FILE_KB.max(floor_kb.saturating_add(BLAZE_HEADROOM_KB))
}

fn rss_file_kb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("RssFile:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
static NEXT_SYMBOLIZER_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub struct Symbolizer {
    id: u64,
    generation: std::sync::atomic::AtomicU64,
    host_proc: PathBuf,
    limits: SymbolizerLimits,
    metrics: ProfilerMetrics,
    debug_dirs: Vec<PathBuf>,
    kernel: Mutex<KernelState>,
    procs: Mutex<HashMap<u32, Arc<ProcSnapshot>>>,
    binaries: Mutex<BinaryCache>,
}

const KALLSYMS_RELOAD: Duration = Duration::from_secs(300);
const RESNAPSHOT_AFTER: Duration = Duration::from_secs(10);

impl Symbolizer {
    pub fn new(host_proc: PathBuf, limits: SymbolizerLimits, metrics: ProfilerMetrics) -> Self {
        let mut debug_dirs = vec![PathBuf::from("/usr/lib/debug"), PathBuf::from("/lib/debug")];
        // The host's debug files when the agent runs in a container with host /proc.
        let host_debug = host_proc.join("1/root/usr/lib/debug");
        if host_proc != Path::new("/proc") {
            debug_dirs.push(host_debug);
        }
        Symbolizer {
            id: NEXT_SYMBOLIZER_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            generation: std::sync::atomic::AtomicU64::new(0),
            host_proc,
            limits,
            metrics,
            debug_dirs,
            kernel: Mutex::new(KernelState::default()),
            procs: Mutex::new(HashMap::new()),
            binaries: Mutex::new(BinaryCache::default()),
        }
    }

    pub fn host_proc(&self) -> &Path {
        &self.host_proc
    }

    /// The last kallsyms problem (kptr_restrict, unreadable), for status.
    pub fn kernel_error(&self) -> Option<String> {
        self.kernel.lock().error.clone()
    }

    fn kernel_table(&self) -> Option<Arc<KernelSymbols>> {
        let mut k = self.kernel.lock();
        let stale = k.loaded.is_none_or(|t| t.elapsed() > KALLSYMS_RELOAD);
        if stale {
            let path = self.host_proc.join("kallsyms");
            match KernelSymbols::load(&path) {
                Ok(t) => {
                    k.table = Some(Arc::new(t));
                    k.error = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "kernel symbols unavailable");
                    k.error = Some(e.to_string());
                }
            }
            k.loaded = Some(Instant::now());
        }
        k.table.clone()
    }

    /// Snapshots `pid`'s mappings if it has none yet (call when a pid first shows up in a
    /// drained sample, so short-lived processes are captured while they live).
    pub fn observe(&self, pid: u32) {
        if pid == 0 {
            return;
        }
        let known = {
            let procs = self.procs.lock();
            procs.get(&pid).map(|s| {
                *s.last_used.lock() = Instant::now();
            })
        };
        if known.is_none() {
            self.snapshot(pid);
        }
    }

    /// Drops snapshots not used within the retention period.
    pub fn expire(&self) {
        let retention = self.limits.process_retention;
        let mut procs = self.procs.lock();
        let before = procs.len();
        procs.retain(|_, s| s.last_used.lock().elapsed() < retention);
        let gone = before - procs.len();
        if gone > 0 {
            self.metrics.process_evictions.add(gone as u64);
        }
    }

    pub fn process_count(&self) -> usize {
        self.procs.lock().len()
    }

    pub fn binary_count(&self) -> usize {
        self.binaries.lock().by_key.len()
    }

    /// The workload of `pid` (snapshotting it if needed).
    pub fn workload_of(&self, pid: u32) -> Arc<WorkloadInfo> {
        if pid == 0 {
            return Arc::new(WorkloadInfo::host());
        }
        self.observe(pid);
        self.procs
            .lock()
            .get(&pid)
            .map(|s| s.workload.clone())
            .unwrap_or_else(|| Arc::new(WorkloadInfo::host()))
    }

    fn snapshot(&self, pid: u32) -> Option<Arc<ProcSnapshot>> {
        let dir = self.host_proc.join(pid.to_string());
        let maps = std::fs::read_to_string(dir.join("maps")).ok()?;
        let workload = std::fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|c| cgroup_path_from_proc(&c).map(classify_cgroup_path))
            .map(WorkloadInfo::from_workload)
            .unwrap_or_else(WorkloadInfo::host);
        let (lines, _bad) = executable_mappings(&maps);
        let mut mappings = Vec::with_capacity(lines.len());
        for line in lines {
            let binary = if line.is_file() {
                self.open_binary(&dir, &line)
            } else {
                None
            };
            let info = Arc::new(MappingInfo {
                pid,
                start: line.start,
                limit: line.end,
                file_offset: line.offset,
                filename: line.path.clone(),
                build_id: binary.as_ref().and_then(|b| b.build_id.clone()),
                has_functions: binary.is_some(),
            });
            mappings.push(SnapMapping { line, info, binary });
        }
        let snap = Arc::new(ProcSnapshot {
            pid,
            mappings,
            workload: Arc::new(workload),
            taken: Instant::now(),
            last_used: Mutex::new(Instant::now()),
            perf_map_path: crate::perfmap::path_for(&self.host_proc, pid),
            perf_map: Mutex::new(crate::perfmap::PerfMap::default()),
        });
        let mut procs = self.procs.lock();
        if procs.len() >= self.limits.max_processes && !procs.contains_key(&pid) {
            // Evict the least recently used snapshot.
            if let Some(victim) = procs
                .iter()
                .min_by_key(|(_, s)| *s.last_used.lock())
                .map(|(p, _)| *p)
            {
                procs.remove(&victim);
                self.metrics.process_evictions.inc();
            }
        }
        procs.insert(pid, snap.clone());
        Some(snap)
    }

    fn open_binary(&self, proc_dir: &Path, line: &MapLine) -> Option<Arc<Binary>> {
        let via_map_files = proc_dir
            .join("map_files")
            .join(format!("{:x}-{:x}", line.start, line.end));
        let path = line.path.trim_end_matches(" (deleted)");
        let via_root = proc_dir.join("root").join(path.trim_start_matches('/'));
        let file = File::open(&via_map_files)
            .or_else(|_| File::open(&via_root))
            .ok()?;
        let meta = file.metadata().ok()?;
        let ikey = (meta.dev(), meta.ino(), meta.size(), meta.mtime());
        let mut cache = self.binaries.lock();
        if let Some(k) = cache.by_inode.get(&ikey) {
            if let Some(b) = cache.by_key.get(k) {
                *b.last_used.lock() = Instant::now();
                return Some(b.clone());
            }
        }
        let fd_path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let build_id = blazesym::helper::read_elf_build_id(&fd_path)
            .ok()
            .flatten()
            .map(|b| b.iter().map(|x| format!("{x:02x}")).collect::<String>());
        let key = match &build_id {
            Some(b) => format!("build_id:{b}"),
            None => format!("inode:{}:{}:{}:{}", ikey.0, ikey.1, ikey.2, ikey.3),
        };
        if let Some(b) = cache.by_key.get(&key).cloned() {
            // Same build id reached through another inode (another container's copy).
            cache.by_inode.insert(ikey, key);
            *b.last_used.lock() = Instant::now();
            return Some(b);
        }
        if cache.by_key.len() >= self.limits.max_binaries {
            if let Some(victim) = cache
                .by_key
                .iter()
                .min_by_key(|(_, b)| *b.last_used.lock())
                .map(|(k, _)| k.clone())
            {
                cache.by_key.remove(&victim);
                cache.by_inode.retain(|_, k| *k != victim);
                self.metrics.cache_evictions.inc();
                self.generation
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
        }
        let display = path.to_string();
        let (plan, est_bytes, fallback) =
            self.plan_for(&file, &fd_path, build_id.as_deref(), &display);
        let b = Arc::new(Binary {
            display,
            build_id,
            _file: file,
            fd_path,
            plan,
            est_bytes,
            fallback,
            dwarf_off: Default::default(),
            dwarf_parses: Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
            last_used: Mutex::new(Instant::now()),
        });
        cache.by_key.insert(key.clone(), b.clone());
        cache.by_inode.insert(ikey, key);
        Some(b)
    }

    /// Decides how `file` (just opened, reachable as `fd_path`) will be symbolized: with
    /// DWARF unless `debug_info` is off or its debug data exceeds the limit. Only headers
    /// are read ([`debugsize::footprint`]); a file whose headers cannot be read gets the
    /// symbol tables only (blazesym would fail on it anyway, and nothing large is mapped).
    fn plan_for(
        &self,
        file: &File,
        fd_path: &Path,
        build_id: Option<&str>,
        label: &str,
    ) -> (SymPlan, u64, Option<(SymPlan, u64)>) {
        let fp = match debugsize::footprint(file) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(binary = label, error = %e, "ELF headers unreadable; symbol tables only");
                return (SymPlan::Symtab, 0, None);
            }
        };
        if !self.limits.debug_info {
            return (SymPlan::Symtab, fp.symtab_bytes, None);
        }
        // The separate debug file blazesym would follow (the first candidate that opens).
        let linker = std::fs::read_link(fd_path).unwrap_or_else(|_| PathBuf::from(label));
        let separate = fp.debuglink.as_ref().and_then(|link| {
            debugsize::debug_file_candidates(&self.debug_dirs, build_id, link, &linker)
                .into_iter()
                .find_map(|p| File::open(&p).ok())
        });
        let separate_fp = separate.as_ref().map(|f| {
            debugsize::footprint(f).unwrap_or_else(|_| DebugFootprint {
                // Unreadable headers: count the whole file.
                dwarf_bytes: f.metadata().map(|m| m.size()).unwrap_or(u64::MAX),
                ..Default::default()
            })
        });
        let total = fp
            .dwarf_bytes
            .saturating_add(separate_fp.as_ref().map_or(0, |s| s.dwarf_bytes));
        // Symbol tables only: the binary's own, or its debug file's when it has none.
        let symtab = match (fp.has_symtab, separate, separate_fp) {
            (false, Some(f), Some(sfp)) if sfp.has_symtab => (
                SymPlan::DebugFileSymtab {
                    fd_path: PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd())),
                    _file: f,
                    binary: fp.clone(),
                },
                sfp.symtab_bytes,
            ),
            _ => (SymPlan::Symtab, fp.symtab_bytes),
        };
        match debugsize::decide(true, total, self.limits.debug_info_max_bytes) {
            DwarfDecision::Use => (
                SymPlan::Dwarf,
                fp.symtab_bytes.saturating_add(total),
                Some(symtab),
            ),
            DwarfDecision::Disabled => (SymPlan::Symtab, fp.symtab_bytes, None),
            DwarfDecision::TooLarge => {
                self.metrics.debuginfo_skipped.inc();
                tracing::info!(
                    binary = label,
                    debug_mb = total >> 20,
                    limit_mb = self.limits.debug_info_max_bytes >> 20,
                    "debug info over the limit; symbolizing from ELF symbol tables only"
                );
                (symtab.0, symtab.1, None)
            }
        }
    }

    /// blazesym's `Symbolizer` is neither `Send` nor `Sync`: it lives in a per-thread
    /// [`BlazeSlot`] and is created lazily, only when our own per-binary cache misses. It
    /// reads files through `/proc/self/fd/<n>` (descriptors we hold), with auto-reload on
    /// so a reused descriptor number is never confused with the file it had before.
    fn new_blaze(&self) -> blazesym::symbolize::Symbolizer {
        blazesym::symbolize::Symbolizer::builder()
            .enable_code_info(false)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .enable_auto_reload(true)
            .set_debug_dirs(Some(&self.debug_dirs))
            .build()
    }

    /// Symbolizes the file offsets `offs` of `b` in one blazesym call, following the
    /// binary's [`SymPlan`]. One result per offset, in order.
    /// Called before a binary is parsed by the current blazesym symbolizer: a DWARF
    /// binary parsed [`DWARF_MAX_PARSES`] times within [`DWARF_REPARSE_WINDOW`] switches
    /// to its fallback.
    fn note_parse(&self, b: &Binary) {
        use std::sync::atomic::Ordering;
        if b.fallback.is_none() || b.dwarf_off.load(Ordering::Relaxed) {
            return;
        }
        let mut w = b.dwarf_parses.lock();
        let n = match &mut *w {
            Some((start, n)) if start.elapsed() < DWARF_REPARSE_WINDOW => {
                *n += 1;
                *n
            }
            window => {
                *window = Some((Instant::now(), 1));
                1
            }
        };
        // Exactly at the limit: a parse racing past the early return above counts once.
        if n == DWARF_MAX_PARSES {
            b.dwarf_off.store(true, Ordering::Relaxed);
            self.metrics.debuginfo_dropped.inc();
            tracing::info!(
                binary = %b.display,
                debug_mb = b.est_bytes >> 20,
                "DWARF parsed three times within a minute (it does not fit the symbolizer's memory bound with the other binaries in use); symbolizing it from symbol tables from now on"
            );
        }
    }

    /// Drops the blazesym symbolizer (unmapping everything it parsed), counted.
    fn unmap(
        &self,
        blaze: &mut Option<blazesym::symbolize::Symbolizer>,
        parsed: &mut HashSet<usize>,
        created: &mut Instant,
    ) {
        *blaze = None;
        parsed.clear();
        *created = Instant::now();
        self.metrics.symbolizer_unmaps.inc();
        if let Some(kb) = rss_file_kb() {
            BLAZE_FLOOR_KB.store(kb, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn symbolize_batch(
        &self,
        blaze: &mut Option<blazesym::symbolize::Symbolizer>,
        b: &Binary,
        offs: &[u64],
    ) -> Vec<Option<Names>> {
        let sym = blaze.get_or_insert_with(|| self.new_blaze());
        let (plan, _) = b.active();
        let result = match plan {
            SymPlan::Dwarf | SymPlan::Symtab => {
                let mut elf = Elf::new(&b.fd_path);
                elf.debug_syms = matches!(plan, SymPlan::Dwarf);
                sym.symbolize(&Source::Elf(elf), Input::FileOffset(offs))
            }
            SymPlan::DebugFileSymtab {
                fd_path, binary, ..
            } => {
                let vaddrs: Vec<Option<u64>> = offs
                    .iter()
                    .map(|&o| binary.file_offset_to_vaddr(o))
                    .collect();
                let known: Vec<u64> = vaddrs.iter().flatten().copied().collect();
                let mut elf = Elf::new(fd_path);
                elf.debug_syms = false;
                sym.symbolize(&Source::Elf(elf), Input::VirtOffset(&known))
                    .map(|r| {
                        let mut r = r.into_iter();
                        vaddrs
                            .iter()
                            .map(|v| match v {
                                Some(_) => r.next().unwrap_or(Symbolized::Unknown(
                                    blazesym::symbolize::Reason::Unsupported,
                                )),
                                None => Symbolized::Unknown(
                                    blazesym::symbolize::Reason::InvalidFileOffset,
                                ),
                            })
                            .collect()
                    })
            }
        };
        match result {
            Ok(v) => v.iter().map(names_of).collect(),
            Err(e) => {
                tracing::debug!(binary = %b.display, error = %e, "symbolization failed");
                vec![None; offs.len()]
            }
        }
    }

    /// Stores `names` in `b`'s bounded cache (cleared and counted when full).
    fn cache_names(&self, b: &Binary, file_offset: u64, names: &Names) {
        let mut c = b.cache.lock();
        if c.len() >= self.limits.max_symbols_per_binary {
            c.clear();
            self.metrics.cache_evictions.inc();
        }
        c.insert(file_offset, names.clone());
    }

    fn proc_for(&self, pid: u32, addrs: &[u64]) -> Option<Arc<ProcSnapshot>> {
        let snap = self.procs.lock().get(&pid).cloned();
        let snap = match snap {
            Some(s) => s,
            None => self.snapshot(pid)?,
        };
        *snap.last_used.lock() = Instant::now();
        // A library loaded after the snapshot (dlopen) or a reused pid: refresh, rate-limited.
        let uncovered = addrs.iter().any(|&a| snap.find(a).is_none());
        if uncovered && snap.taken.elapsed() > RESNAPSHOT_AFTER {
            if let Some(fresh) = self.snapshot(pid) {
                return Some(fresh);
            }
        }
        Some(snap)
    }

    fn kernel_frame(
        &self,
        table: Option<&KernelSymbols>,
        kmap: &Arc<MappingInfo>,
        addr: u64,
    ) -> ResolvedFrame {
        let names: Arc<[Arc<str>]> = match table.and_then(|t| t.lookup(addr)) {
            Some((name, None)) => vec![Arc::from(name)].into(),
            Some((name, Some(m))) => vec![Arc::from(format!("{name} [{m}]"))].into(),
            None => vec![Arc::from(format!("[kernel] {addr:#x}"))].into(),
        };
        ResolvedFrame {
            address: addr,
            mapping: Some(kmap.clone()),
            names,
            kernel: true,
        }
    }

    /// Symbolizes samples. Frames are deduplicated (one `Arc` per distinct frame) so the
    /// pprof builder can intern them cheaply.
    pub fn resolve(&self, samples: &[RawSample]) -> Vec<ResolvedSample> {
        let need_kernel = samples.iter().any(|s| !s.key.kernel.is_empty());
        let table = if need_kernel {
            self.kernel_table()
        } else {
            None
        };
        let kmap = Arc::new(MappingInfo {
            pid: 0,
            start: 0xffff_8000_0000_0000,
            limit: u64::MAX,
            file_offset: 0,
            filename: "[kernel.kallsyms]".into(),
            build_id: None,
            has_functions: table.is_some(),
        });
        let snaps: Vec<Option<Arc<ProcSnapshot>>> = samples
            .iter()
            .map(|s| {
                if s.key.user.is_empty() || s.key.pid == 0 {
                    None
                } else {
                    self.proc_for(s.key.pid, &s.key.user)
                }
            })
            .collect();
        let names = self.user_names(samples, &snaps);
        let mut frame_intern: HashMap<(u32, u64, bool), Arc<ResolvedFrame>> = HashMap::new();
        let mut quality: HashMap<String, (u64, u64, u64)> = HashMap::new();
        let mut out = Vec::with_capacity(samples.len());
        for (s, snap) in samples.iter().zip(snaps) {
            let k = &s.key;
            let mut frames = Vec::with_capacity(k.kernel.len() + k.user.len());
            for &a in k.kernel.iter() {
                let f = frame_intern
                    .entry((0, a, true))
                    .or_insert_with(|| Arc::new(self.kernel_frame(table.as_deref(), &kmap, a)))
                    .clone();
                frames.push(f);
            }
            for (i, &a) in k.user.iter().enumerate() {
                let f = frame_intern
                    .entry((k.pid, a, false))
                    .or_insert_with(|| {
                        Arc::new(user_frame(snap.as_deref(), a, user_lookup(i, a), &names))
                    })
                    .clone();
                frames.push(f);
            }
            let mut reached_root = false;
            let mut leaf: Arc<str> = Arc::from("[unknown]");
            if !k.user.is_empty() {
                let leaf_bin = frames
                    .get(k.kernel.len())
                    .and_then(|f| f.mapping.as_ref())
                    .map(|m| binary_label(&m.filename))
                    .unwrap_or_else(|| "[unknown]".to_string());
                let outer = frames.last().map(|f| f.outer_name()).unwrap_or("");
                let truncated = k.user.len() <= 2 && !ENTRY_POINTS.contains(&outer);
                reached_root = ENTRY_POINTS.contains(&outer)
                    || (k.unwind as u32 & 0xff) == nodescope_ebpf::profile::UNWIND_END_ROOT;
                let e = quality.entry(leaf_bin.clone()).or_default();
                e.0 += s.count;
                if truncated {
                    e.1 += s.count;
                }
                if reached_root {
                    e.2 += s.count;
                }
                if k.unwind as u32 & nodescope_ebpf::profile::UNWIND_FLAG_DWARF != 0 {
                    self.metrics
                        .observe_unwind_end(k.unwind as u32 & 0xff, s.count);
                }
                leaf = Arc::from(leaf_bin.as_str());
            }
            let workload = snap
                .as_ref()
                .map(|s| s.workload.clone())
                .unwrap_or_else(|| self.workload_of(k.pid));
            out.push(ResolvedSample {
                pid: k.pid,
                tid: k.tid,
                comm: k.comm.clone(),
                workload,
                frames,
                count: s.count,
                unwind: k.unwind,
                reached_root,
                leaf_binary: leaf,
            });
        }
        for (bin, (total, trunc, root)) in quality {
            self.metrics.observe_unwind(&bin, total, trunc, root);
        }
        out
    }

    /// Names of every distinct user frame of the pass, keyed by (binary, file offset).
    /// Cache hits are taken first; the misses are grouped per binary and each binary is
    /// symbolized in one blazesym batch. Before each binary, if the agent's file-backed
    /// RSS plus what that binary is expected to map exceeds [`blaze_keep_bound_kb`],
    /// and after it, if the RSS alone does, the blazesym symbolizer is dropped, which
    /// unmaps every file it parsed: the file-backed peak of a pass is about
    /// max(that bound, base + one binary), not the sum over the binaries of the pass.
    fn user_names(
        &self,
        samples: &[RawSample],
        snaps: &[Option<Arc<ProcSnapshot>>],
    ) -> HashMap<(usize, u64), Option<Names>> {
        let mut names: HashMap<(usize, u64), Option<Names>> = HashMap::new();
        let mut pending: HashMap<usize, (Arc<Binary>, Vec<u64>)> = HashMap::new();
        let mut seen: HashSet<(u32, u64)> = HashSet::new();
        for (s, snap) in samples.iter().zip(snaps) {
            let Some(snap) = snap else { continue };
            for (i, &a) in s.key.user.iter().enumerate() {
                if !seen.insert((s.key.pid, a)) {
                    continue;
                }
                let Some((b, off)) = snap.binary_offset(user_lookup(i, a)) else {
                    continue;
                };
                *b.last_used.lock() = Instant::now();
                let key = (Arc::as_ptr(b) as usize, off);
                if names.contains_key(&key) {
                    // Same binary and offset through another pid (or already pending).
                    self.metrics.cache_hits.inc();
                    continue;
                }
                let cached = b.cache.lock().get(&off).cloned();
                if let Some(n) = cached {
                    self.metrics.cache_hits.inc();
                    names.insert(key, Some(n));
                } else {
                    self.metrics.cache_misses.inc();
                    names.insert(key, None);
                    pending
                        .entry(key.0)
                        .or_insert_with(|| (b.clone(), Vec::new()))
                        .1
                        .push(off);
                }
            }
        }
        if pending.is_empty() {
            return names;
        }
        let generation = self.generation.load(std::sync::atomic::Ordering::Acquire);
        let mut blaze = None;
        let mut created = Instant::now();
        let mut parsed = HashSet::new();
        if let Some(slot) = BLAZE.with(|b| b.borrow_mut().take()) {
            if slot.owner == self.id
                && slot.generation == generation
                && slot.created.elapsed() < BLAZE_MAX_AGE
            {
                created = slot.created;
                blaze = Some(slot.sym);
                parsed = slot.parsed;
            }
        }
        let mut over = false;
        // The agent's RssFile as last read; nothing maps files between the reading after
        // one binary and the check before the next, so that check reuses it.
        let mut rss_kb: Option<Option<u64>> = None;
        for (ptr, (b, offs)) in pending {
            // Unmap what earlier binaries left mapped when this one would take the agent's
            // file-backed RSS over the bound.
            let unmap_first = blaze.is_some()
                && !parsed.contains(&ptr)
                && rss_kb.get_or_insert_with(rss_file_kb).is_some_and(|kb| {
                    kb.saturating_add(b.active().1 >> 10) > blaze_keep_bound_kb()
                });
            if unmap_first {
                tracing::debug!(next = %b.display, estimate_kb = b.active().1 >> 10, rss_file_kb = ?rss_kb, bound_kb = blaze_keep_bound_kb(), "symbolizer dropped before a binary");
                self.unmap(&mut blaze, &mut parsed, &mut created);
            }
            if !parsed.contains(&ptr) {
                self.note_parse(&b);
            }
            let resolved = self.symbolize_batch(&mut blaze, &b, &offs);
            parsed.insert(ptr);
            for (off, n) in offs.into_iter().zip(resolved) {
                if let Some(n) = &n {
                    self.cache_names(&b, off, n);
                }
                names.insert((ptr, off), n);
            }
            let kb = rss_file_kb();
            rss_kb = Some(kb);
            over = kb.is_some_and(|kb| kb > blaze_keep_bound_kb());
            if over {
                tracing::debug!(after = %b.display, estimate_kb = b.active().1 >> 10, rss_file_kb = ?kb, bound_kb = blaze_keep_bound_kb(), "symbolizer dropped after a binary");
                self.unmap(&mut blaze, &mut parsed, &mut created);
            }
        }
        if let Some(sym) = blaze.filter(|_| !over) {
            BLAZE.with(|b| {
                *b.borrow_mut() = Some(BlazeSlot {
                    owner: self.id,
                    generation,
                    created,
                    sym,
                    parsed,
                })
            });
        }
        names
    }
}

/// Return addresses point after the call; look up the call instruction (not for the leaf).
fn user_lookup(i: usize, a: u64) -> u64 {
    if i == 0 {
        a
    } else {
        a.saturating_sub(1)
    }
}

fn names_of(s: &Symbolized) -> Option<Names> {
    match s {
        Symbolized::Sym(sym) => {
            let mut v: Vec<Arc<str>> = sym
                .inlined
                .iter()
                .rev()
                .map(|f| Arc::from(f.name.as_ref()))
                .collect();
            v.push(Arc::from(sym.name.as_ref()));
            Some(v.into())
        }
        _ => None,
    }
}

fn user_frame(
    snap: Option<&ProcSnapshot>,
    addr: u64,
    lookup: u64,
    names: &HashMap<(usize, u64), Option<Names>>,
) -> ResolvedFrame {
    let m = snap.and_then(|s| s.find(lookup));
    // JIT code (anonymous executable memory, or none we saw): the perf map names it.
    if m.is_none_or(|m| m.binary.is_none()) {
        if let Some(name) = snap.and_then(|s| s.jit_name(lookup)) {
            return ResolvedFrame {
                address: addr,
                mapping: m.map(|m| m.info.clone()),
                names: vec![name].into(),
                kernel: false,
            };
        }
    }
    let Some(m) = m else {
        return ResolvedFrame {
            address: addr,
            mapping: None,
            names: vec![Arc::from(format!("[unknown] {addr:#x}"))].into(),
            kernel: false,
        };
    };
    let file_offset = lookup - m.line.start + m.line.offset;
    let names = m
        .binary
        .as_ref()
        .and_then(|b| {
            names
                .get(&(Arc::as_ptr(b) as usize, file_offset))
                .cloned()
                .flatten()
        })
        .unwrap_or_else(|| {
            vec![Arc::from(format!(
                "[unknown] {}+{file_offset:#x}",
                binary_label(&m.line.path)
            ))]
            .into()
        });
    ResolvedFrame {
        address: addr,
        mapping: Some(m.info.clone()),
        names,
        kernel: false,
    }
}

#[cfg(test)]
impl Symbolizer {
    /// The plan of the first cached binary whose path ends with `suffix`.
    fn plan_of(&self, suffix: &str) -> Option<&'static str> {
        self.binaries
            .lock()
            .by_key
            .values()
            .find(|b| b.display.ends_with(suffix))
            .map(|b| b.active().0.name())
    }
}

/// The label used for a binary: its file name (bounded by the metric's label cap).
pub fn binary_label(path: &str) -> String {
    let p = path.trim_end_matches(" (deleted)");
    p.rsplit('/').next().unwrap_or(p).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::StackKey;
    use nodescope_model::selfmetrics::SelfMetrics;

    #[inline(never)]
    fn marker_function_for_symbolizer_test() -> u64 {
        // Return our own address so the test can symbolize it.
        marker_function_for_symbolizer_test as *const () as usize as u64
    }

    /// A sample of this process whose only user frame is inside
    /// `marker_function_for_symbolizer_test`.
    fn own_sample(count: u64) -> RawSample {
        let pid = std::process::id();
        RawSample {
            key: StackKey {
                unwind: 0,
                pid,
                tid: pid,
                cgroup_id: 0,
                comm: "t".into(),
                kernel: Arc::from(Vec::new()),
                user: vec![marker_function_for_symbolizer_test() + 1].into(),
            },
            count,
        }
    }

    #[test]
    fn symbolizes_own_function_and_counts_cache() {
        let m = ProfilerMetrics::new(&SelfMetrics::new());
        let s = Symbolizer::new(
            PathBuf::from("/proc"),
            SymbolizerLimits::default(),
            m.clone(),
        );
        let sample = own_sample(3);
        let r = s.resolve(std::slice::from_ref(&sample));
        assert_eq!(r.len(), 1);
        let f = &r[0].frames[0];
        assert!(
            f.outer_name()
                .contains("marker_function_for_symbolizer_test"),
            "got {:?}",
            f.names
        );
        let map = f.mapping.as_ref().unwrap();
        assert!(
            map.build_id.is_some(),
            "rust test binaries carry a build id"
        );
        assert_eq!(m.cache_misses.get(), 1);
        let _ = s.resolve(std::slice::from_ref(&sample));
        assert_eq!(m.cache_hits.get(), 1);
        // One user frame, not an entry point: truncated.
        let bin = binary_label(&map.filename);
        assert_eq!(m.unwind_counts(&bin), Some((6, 6)));
    }

    #[test]
    fn exited_process_still_symbolizes() {
        let Some(cc) = nodescope_testsupport::require_tool(
            "symbolize::exited_process_still_symbolizes",
            "cc",
            &[],
        ) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("w.c");
        std::fs::write(
            &src,
            "#include <stdio.h>\n#include <unistd.h>\n__attribute__((noinline)) void exiting_worker_fn(void){ printf(\"%p\\n\", (void*)exiting_worker_fn); fflush(stdout); sleep(1); }\nint main(void){ exiting_worker_fn(); return 0; }\n",
        )
        .unwrap();
        let bin = dir.path().join("w");
        assert!(std::process::Command::new(cc)
            .args(["-O1", "-fno-omit-frame-pointer", "-o"])
            .arg(&bin)
            .arg(&src)
            .status()
            .unwrap()
            .success());
        let mut child = std::process::Command::new(&bin)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = u64::from_str_radix(line.trim().trim_start_matches("0x"), 16).unwrap();
        let pid = child.id();
        let m = ProfilerMetrics::new(&SelfMetrics::new());
        let s = Symbolizer::new(PathBuf::from("/proc"), SymbolizerLimits::default(), m);
        s.observe(pid);
        child.wait().unwrap();
        // Also delete the binary: the open descriptor keeps it readable.
        std::fs::remove_file(&bin).unwrap();
        let r = s.resolve(&[RawSample {
            key: StackKey {
                unwind: 0,
                pid,
                tid: pid,
                cgroup_id: 0,
                comm: "w".into(),
                kernel: Arc::from(Vec::new()),
                user: vec![addr + 4].into(),
            },
            count: 1,
        }]);
        assert_eq!(r[0].frames[0].outer_name(), "exiting_worker_fn");
    }

    /// A stripped binary with a `.gnu_debuglink` to a separate debug file next to it still
    /// symbolizes (through the debug file), while the process runs and after it exited.
    #[test]
    fn debug_link_is_followed() {
        const T: &str = "symbolize::debug_link_is_followed";
        let Some(cc) = nodescope_testsupport::require_tool(T, "cc", &[]) else {
            return;
        };
        let Some(objcopy) = nodescope_testsupport::require_tool(T, "objcopy", &[]) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("d.c");
        std::fs::write(
            &src,
            "#include <stdio.h>\n#include <unistd.h>\n__attribute__((noinline)) void debuglinked_fn(void){ printf(\"%p\\n\", (void*)debuglinked_fn); fflush(stdout); sleep(1); }\nint main(void){ debuglinked_fn(); return 0; }\n",
        )
        .unwrap();
        let bin = dir.path().join("d");
        let dbg = dir.path().join("d.debug");
        let run = |c: &mut std::process::Command| assert!(c.status().unwrap().success(), "{c:?}");
        run(std::process::Command::new(&cc)
            .args(["-g", "-O1", "-fno-omit-frame-pointer", "-o"])
            .arg(&bin)
            .arg(&src));
        run(std::process::Command::new(&objcopy)
            .arg("--only-keep-debug")
            .arg(&bin)
            .arg(&dbg));
        run(std::process::Command::new(&objcopy)
            .arg("--strip-all")
            .arg(&bin));
        run(std::process::Command::new(&objcopy)
            .current_dir(dir.path())
            .arg("--add-gnu-debuglink=d.debug")
            .arg("d"));
        // Really stripped: no symbol table left in the binary.
        let nm = std::process::Command::new("nm").arg(&bin).output();
        if let Ok(o) = nm {
            assert!(!String::from_utf8_lossy(&o.stdout).contains("debuglinked_fn"));
        }
        let mut child = std::process::Command::new(&bin)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = u64::from_str_radix(line.trim().trim_start_matches("0x"), 16).unwrap();
        let pid = child.id();
        // With DWARF (limit not reached) and with the debug data over the limit: then the
        // stripped binary is symbolized from its debug file's `.symtab`, and still named.
        let runs: Vec<_> = [(u64::MAX, "dwarf", 0), (0, "debug_file_symtab", 1)]
            .into_iter()
            .map(|(max, plan, skipped)| {
                let m = ProfilerMetrics::new(&SelfMetrics::new());
                let limits = SymbolizerLimits {
                    debug_info_max_bytes: max,
                    ..Default::default()
                };
                let s = Symbolizer::new(PathBuf::from("/proc"), limits, m.clone());
                s.observe(pid);
                (s, m, plan, skipped)
            })
            .collect();
        child.wait().unwrap();
        for (s, m, plan, skipped) in runs {
            let r = s.resolve(&[RawSample {
                key: StackKey {
                    unwind: 0,
                    pid,
                    tid: pid,
                    cgroup_id: 0,
                    comm: "d".into(),
                    kernel: Arc::from(Vec::new()),
                    user: vec![addr + 2].into(),
                },
                count: 1,
            }]);
            assert_eq!(
                r[0].frames[0].outer_name(),
                "debuglinked_fn",
                "{plan}: {:?}",
                r[0].frames[0]
            );
            assert_eq!(s.plan_of("/d"), Some(plan));
            // Every binary of the snapshot is planned (libc & co. may carry some DWARF).
            let n = m.debuginfo_skipped.get();
            assert!((skipped..=skipped * 10).contains(&n), "{plan}: {n}");
        }
    }

    /// Our own test binary (debug profile, full DWARF): symbolized with DWARF when the
    /// limit allows, from `.symtab` otherwise (counted), and named the same either way;
    /// `debug_info = false` is not counted as skipped.
    #[test]
    fn debug_info_limit_keeps_names() {
        let sample = own_sample(1);
        for (debug_info, max, plan, skipped) in [
            (true, u64::MAX, "dwarf", 0),
            (true, 1 << 20, "symtab", 1),
            (false, 0, "symtab", 0),
        ] {
            let m = ProfilerMetrics::new(&SelfMetrics::new());
            let limits = SymbolizerLimits {
                debug_info,
                debug_info_max_bytes: max,
                ..Default::default()
            };
            let s = Symbolizer::new(PathBuf::from("/proc"), limits, m.clone());
            let r = s.resolve(std::slice::from_ref(&sample));
            let f = &r[0].frames[0];
            assert!(
                f.outer_name()
                    .contains("marker_function_for_symbolizer_test"),
                "{plan}: {:?}",
                f.names
            );
            let exe = std::fs::read_link("/proc/self/exe").unwrap();
            let exe = exe.to_string_lossy();
            let name = exe.rsplit('/').next().unwrap();
            assert_eq!(s.plan_of(&format!("/{name}")), Some(plan));
            // Every binary of the snapshot is planned (libc & co. may carry some DWARF).
            let n = m.debuginfo_skipped.get();
            assert!((skipped..=skipped * 10).contains(&n), "{plan}: {n}");
        }
    }

    #[test]
    fn dwarf_parsed_three_times_in_a_minute_falls_back_to_symbol_tables() {
        let sample = own_sample(1);
        let m = ProfilerMetrics::new(&SelfMetrics::new());
        let limits = SymbolizerLimits {
            debug_info_max_bytes: u64::MAX,
            ..Default::default()
        };
        let s = Symbolizer::new(PathBuf::from("/proc"), limits, m.clone());
        s.resolve(std::slice::from_ref(&sample));
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let suffix = format!("/{}", exe.to_string_lossy().rsplit('/').next().unwrap());
        assert_eq!(s.plan_of(&suffix), Some("dwarf"));
        let b = s
            .binaries
            .lock()
            .by_key
            .values()
            .find(|b| b.display.ends_with(&suffix))
            .cloned()
            .unwrap();
        // The resolve above parsed it once; a second parse keeps DWARF, the third drops it.
        s.note_parse(&b);
        assert_eq!(s.plan_of(&suffix), Some("dwarf"));
        assert_eq!(m.debuginfo_dropped.get(), 0);
        s.note_parse(&b);
        assert_eq!(s.plan_of(&suffix), Some("symtab"));
        assert_eq!(m.debuginfo_dropped.get(), 1);
        s.note_parse(&b);
        assert_eq!(m.debuginfo_dropped.get(), 1, "counted once");
        // Names still come out, from the symbol tables (a new address: no cache hit).
        let mut other = own_sample(1);
        other.key.user = vec![marker_function_for_symbolizer_test() + 2].into();
        let r = s.resolve(std::slice::from_ref(&other));
        assert!(
            r[0].frames[0]
                .outer_name()
                .contains("marker_function_for_symbolizer_test"),
            "{:?}",
            r[0].frames[0].names
        );
    }

    #[test]
    fn process_cache_is_bounded() {
        let m = ProfilerMetrics::new(&SelfMetrics::new());
        let limits = SymbolizerLimits {
            max_processes: 1,
            ..Default::default()
        };
        let s = Symbolizer::new(PathBuf::from("/proc"), limits, m.clone());
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        s.observe(std::process::id());
        s.observe(child.id());
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(s.process_count(), 1);
        assert_eq!(m.process_evictions.get(), 1);
    }

    #[test]
    fn keep_bound_leaves_headroom_above_the_agents_own_pages() {
        // A small agent keeps the absolute bound.
        assert_eq!(keep_bound(0), 32 * 1024);
        assert_eq!(keep_bound(10 * 1024), 32 * 1024);
        // An agent whose own file pages exceed it still keeps 16 MiB for symbol files, so
        // a pass does not unmap (and parse again) after every binary.
        assert_eq!(keep_bound(43 * 1024), 59 * 1024);
        assert_eq!(keep_bound(u64::MAX), u64::MAX);
    }

    #[test]
    fn binary_labels() {
        assert_eq!(binary_label("/usr/lib/libc.so.6"), "libc.so.6");
        assert_eq!(binary_label("/tmp/x (deleted)"), "x");
        assert_eq!(binary_label("[vdso]"), "[vdso]");
    }
}
