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
//! * Unwind quality: per binary, the share of user stacks of depth <= 2 that do not end
//!   in a known entry point (`_start`, `__libc_start_main`, `clone`, ...).

use std::collections::HashMap;
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
}

impl Default for SymbolizerLimits {
    fn default() -> Self {
        SymbolizerLimits {
            max_binaries: 256,
            max_symbols_per_binary: 65_536,
            max_processes: 4096,
            process_retention: Duration::from_secs(600),
            debug_info: true,
        }
    }
}

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

struct Binary {
    display: String,
    build_id: Option<String>,
    _file: File,
    fd_path: PathBuf,
    cache: Mutex<HashMap<u64, Arc<[Arc<str>]>>>,
    last_used: Mutex<Instant>,
}

impl std::fmt::Debug for Binary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binary")
            .field("display", &self.display)
            .field("build_id", &self.build_id)
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
}

impl ProcSnapshot {
    fn find(&self, addr: u64) -> Option<&SnapMapping> {
        let idx = self.mappings.partition_point(|m| m.line.start <= addr);
        let m = self.mappings.get(idx.checked_sub(1)?)?;
        (addr < m.line.end).then_some(m)
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
}

thread_local! {
    static BLAZE: std::cell::RefCell<Option<BlazeSlot>> = const { std::cell::RefCell::new(None) };
}

const BLAZE_MAX_AGE: Duration = Duration::from_secs(600);
/// The slot keeps the symbol files it parsed mmapped; when the process's file-backed
/// resident memory exceeds this after a `resolve`, the slot is dropped (unmapping them)
/// instead of kept, trading CPU on the next misses for a bounded RSS.
const BLAZE_KEEP_MAX_RSS_FILE_KB: u64 = 48 * 1024;

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
        let b = Arc::new(Binary {
            display,
            build_id,
            _file: file,
            fd_path,
            cache: Mutex::new(HashMap::new()),
            last_used: Mutex::new(Instant::now()),
        });
        cache.by_key.insert(key.clone(), b.clone());
        cache.by_inode.insert(ikey, key);
        Some(b)
    }

    /// blazesym's `Symbolizer` is neither `Send` nor `Sync`: it lives in a per-thread
    /// [`BlazeSlot`] and is created lazily, only when our own per-binary cache misses. It
    /// reads files through `/proc/self/fd/<n>` (descriptors we hold), with auto-reload on
    /// so a reused descriptor number is never confused with the file it had before.
    fn blaze<'a>(
        &self,
        cell: &'a std::cell::OnceCell<blazesym::symbolize::Symbolizer>,
    ) -> &'a blazesym::symbolize::Symbolizer {
        cell.get_or_init(|| {
            blazesym::symbolize::Symbolizer::builder()
                .enable_code_info(false)
                .enable_inlined_fns(true)
                .enable_demangling(true)
                .enable_auto_reload(true)
                .set_debug_dirs(Some(&self.debug_dirs))
                .build()
        })
    }

    fn binary_names(
        &self,
        blaze: &std::cell::OnceCell<blazesym::symbolize::Symbolizer>,
        b: &Binary,
        file_offset: u64,
    ) -> Option<Arc<[Arc<str>]>> {
        *b.last_used.lock() = Instant::now();
        if let Some(n) = b.cache.lock().get(&file_offset) {
            self.metrics.cache_hits.inc();
            return Some(n.clone());
        }
        self.metrics.cache_misses.inc();
        let mut elf = Elf::new(&b.fd_path);
        elf.debug_syms = self.limits.debug_info;
        let src = Source::Elf(elf);
        let names: Option<Arc<[Arc<str>]>> = match self
            .blaze(blaze)
            .symbolize_single(&src, Input::FileOffset(file_offset))
        {
            Ok(Symbolized::Sym(sym)) => {
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
        };
        if let Some(n) = &names {
            let mut c = b.cache.lock();
            if c.len() >= self.limits.max_symbols_per_binary {
                c.clear();
                self.metrics.cache_evictions.inc();
            }
            c.insert(file_offset, n.clone());
        }
        names
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
        let generation = self.generation.load(std::sync::atomic::Ordering::Acquire);
        let blaze = std::cell::OnceCell::new();
        let mut created = Instant::now();
        if let Some(slot) = BLAZE.with(|b| b.borrow_mut().take()) {
            if slot.owner == self.id
                && slot.generation == generation
                && slot.created.elapsed() < BLAZE_MAX_AGE
            {
                created = slot.created;
                let _ = blaze.set(slot.sym);
            }
        }
        let mut frame_intern: HashMap<(u32, u64, bool), Arc<ResolvedFrame>> = HashMap::new();
        let mut quality: HashMap<String, (u64, u64)> = HashMap::new();
        let mut out = Vec::with_capacity(samples.len());
        for s in samples {
            let k = &s.key;
            let mut frames = Vec::with_capacity(k.kernel.len() + k.user.len());
            for &a in k.kernel.iter() {
                let f = frame_intern
                    .entry((0, a, true))
                    .or_insert_with(|| Arc::new(self.kernel_frame(table.as_deref(), &kmap, a)))
                    .clone();
                frames.push(f);
            }
            let snap = if k.user.is_empty() || k.pid == 0 {
                None
            } else {
                self.proc_for(k.pid, &k.user)
            };
            for (i, &a) in k.user.iter().enumerate() {
                // Return addresses point after the call; look up the call instruction.
                let lookup = if i == 0 { a } else { a.saturating_sub(1) };
                let f = frame_intern
                    .entry((k.pid, a, false))
                    .or_insert_with(|| {
                        Arc::new(self.user_frame(&blaze, snap.as_deref(), a, lookup))
                    })
                    .clone();
                frames.push(f);
            }
            if !k.user.is_empty() {
                let leaf_bin = frames
                    .get(k.kernel.len())
                    .and_then(|f| f.mapping.as_ref())
                    .map(|m| binary_label(&m.filename))
                    .unwrap_or_else(|| "[unknown]".to_string());
                let outer = frames.last().map(|f| f.outer_name()).unwrap_or("");
                let truncated = k.user.len() <= 2 && !ENTRY_POINTS.contains(&outer);
                let e = quality.entry(leaf_bin).or_default();
                e.0 += s.count;
                if truncated {
                    e.1 += s.count;
                }
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
            });
        }
        for (bin, (total, trunc)) in quality {
            self.metrics.observe_unwind(&bin, total, trunc);
        }
        drop(frame_intern);
        let keep = rss_file_kb().is_none_or(|kb| kb <= BLAZE_KEEP_MAX_RSS_FILE_KB);
        if let Some(sym) = blaze.into_inner().filter(|_| keep) {
            BLAZE.with(|b| {
                *b.borrow_mut() = Some(BlazeSlot {
                    owner: self.id,
                    generation,
                    created,
                    sym,
                })
            });
        }
        out
    }

    fn user_frame(
        &self,
        blaze: &std::cell::OnceCell<blazesym::symbolize::Symbolizer>,
        snap: Option<&ProcSnapshot>,
        addr: u64,
        lookup: u64,
    ) -> ResolvedFrame {
        let Some(m) = snap.and_then(|s| s.find(lookup)) else {
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
            .and_then(|b| self.binary_names(blaze, b, file_offset))
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

    #[test]
    fn symbolizes_own_function_and_counts_cache() {
        let m = ProfilerMetrics::new(&SelfMetrics::new());
        let s = Symbolizer::new(
            PathBuf::from("/proc"),
            SymbolizerLimits::default(),
            m.clone(),
        );
        let addr = marker_function_for_symbolizer_test() + 1;
        let pid = std::process::id();
        let sample = RawSample {
            key: StackKey {
                pid,
                tid: pid,
                cgroup_id: 0,
                comm: "t".into(),
                kernel: Arc::from(Vec::new()),
                user: vec![addr].into(),
            },
            count: 3,
        };
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
        let m = ProfilerMetrics::new(&SelfMetrics::new());
        let s = Symbolizer::new(PathBuf::from("/proc"), SymbolizerLimits::default(), m);
        s.observe(pid);
        let r = s.resolve(&[RawSample {
            key: StackKey {
                pid,
                tid: pid,
                cgroup_id: 0,
                comm: "d".into(),
                kernel: Arc::from(Vec::new()),
                user: vec![addr + 2].into(),
            },
            count: 1,
        }]);
        child.wait().unwrap();
        assert_eq!(
            r[0].frames[0].outer_name(),
            "debuglinked_fn",
            "{:?}",
            r[0].frames[0]
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
    fn binary_labels() {
        assert_eq!(binary_label("/usr/lib/libc.so.6"), "libc.so.6");
        assert_eq!(binary_label("/tmp/x (deleted)"), "x");
        assert_eq!(binary_label("[vdso]"), "[vdso]");
    }
}
