//! DWARF CFI unwind tables for the BPF unwinder.
//!
//! [`build_table`] turns a binary's `.eh_frame` (or `.debug_frame` when there is none)
//! into a compact table of 8-byte rows (`ebpf::profile::UnwindRow`: pc, CFA rule and
//! offset, where the caller's rbp is saved), sorted by pc, one row per change of rule,
//! with an "invalid" row at each gap between FDEs. Rules the BPF walker cannot follow are
//! kept as invalid rows (it then tries the frame pointer) and counted by reason.
//! [`TableCache`] shares built tables between samplers and processes (key: device, inode,
//! size, mtime of the file), bounded in rows with LRU eviction; [`UnwindMaps`] loads them
//! into one sampler's BPF maps on demand, bounded by the row map, evicting the least
//! recently used table when full.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, LittleEndian, RegisterRule,
    UnwindContext, UnwindSection, X86_64,
};
use nodescope_ebpf::profile as obj;
use object::read::ReadCache;
use object::{Object, ObjectSection};
use parking_lot::Mutex;

use crate::procmaps::MapLine;

pub use obj::UnwindRow;

/// Why no table could be built for a binary (the binary is then unwound with frame
/// pointers, and the reason counted).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TableError {
    #[error("opening {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("parsing the ELF file: {0}")]
    Elf(String),
    #[error("no .eh_frame or .debug_frame section")]
    NoCfi,
    #[error("a Go binary (frame pointers are cheaper)")]
    Go,
    #[error("corrupt CFI: {0}")]
    Corrupt(String),
    #[error("code above 4 GiB ({0:#x}): rows hold 32-bit addresses")]
    TooHigh(u64),
    #[error("{rows} rows, more than the table cap ({max})")]
    TooLarge { rows: usize, max: usize },
}

impl TableError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            TableError::Open { .. } => "open",
            TableError::Elf(_) => "elf",
            TableError::NoCfi => "no_cfi",
            TableError::Go => "go",
            TableError::Corrupt(_) => "corrupt",
            TableError::TooHigh(_) => "too_high",
            TableError::TooLarge { .. } => "too_large",
        }
    }
}

/// Rows that could not be expressed, by reason (the walker falls back to frame pointers there).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    pub fdes: u64,
    pub cfa_expression: u64,
    pub cfa_register: u64,
    pub ra_rule: u64,
    pub rbp_rule: u64,
    pub offset_range: u64,
}

/// A built table: rows sorted by pc, at most one per change of rule.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Table {
    pub rows: Vec<UnwindRow>,
    pub stats: TableStats,
    /// PT_LOAD segments: (file offset, virtual address, file size).
    pub loads: Vec<(u64, u64, u64)>,
}

impl Table {
    /// `pc - bias` is the ELF virtual address for a mapping of this file at `start` from
    /// file offset `offset`.
    pub fn bias(&self, start: u64, offset: u64) -> Option<u64> {
        // Several segments can share the mapping's first page (lld puts .text right after
        // .rodata at a page-shifted address): the one starting last is the mapped one.
        let (o, v, _) = self
            .loads
            .iter()
            .filter(|(o, _, sz)| (o & !0xfff) <= offset && offset < o + sz.max(&1))
            .max_by_key(|(o, _, _)| *o)?;
        let vaddr_at_start = (v + offset).checked_sub(*o)?;
        start.checked_sub(vaddr_at_start).or_else(|| {
            // Mapped below its link address (prelinked/non-PIE at a lower base): wraps.
            Some(start.wrapping_sub(vaddr_at_start))
        })
    }

    /// Bytes the rows take (in user space and in the BPF row map alike).
    pub fn bytes(&self) -> usize {
        self.rows.len() * std::mem::size_of::<UnwindRow>()
    }
}

const RSP: u16 = 7;
const RBP: u16 = 6;

fn invalid(pc: u32) -> UnwindRow {
    UnwindRow {
        pc,
        cfa_off: 0,
        rbp_off: 0,
        kind: obj::UNWIND_CFA_INVALID,
    }
}

/// Decodes the CFA expressions compilers and glibc emit: the PLT rule
/// (`rsp+8 + ((rip&15) >= N) << 3`) and `*(rsp+off) + val`.
fn cfa_expression(e: &[u8]) -> Option<(u8, i16, i8)> {
    // DW_OP_breg7 8; DW_OP_breg16 0; DW_OP_lit15; DW_OP_and; DW_OP_litN; DW_OP_ge;
    // DW_OP_lit3; DW_OP_shl; DW_OP_plus
    if e.len() == 11
        && e[0] == 0x77
        && e[1] == 0x08
        && e[2] == 0x80
        && e[3] == 0x00
        && e[4] == 0x3f
        && e[5] == 0x1a
        && (0x30..=0x4f).contains(&e[6])
        && e[7] == 0x2a
        && e[8] == 0x33
        && e[9] == 0x24
        && e[10] == 0x22
    {
        return Some((obj::UNWIND_CFA_PLT, (e[6] - 0x30) as i16, 0));
    }
    // DW_OP_breg7 sleb; DW_OP_deref; [DW_OP_plus_uconst uleb]
    if e.first() == Some(&0x77) {
        let mut r = gimli::EndianSlice::new(&e[1..], LittleEndian);
        use gimli::Reader;
        let off = r.read_sleb128().ok()?;
        if r.read_u8().ok()? != 0x06 {
            return None;
        }
        let val = if r.is_empty() {
            0
        } else {
            if r.read_u8().ok()? != 0x23 {
                return None;
            }
            r.read_uleb128().ok()?
        };
        if !r.is_empty() {
            return None;
        }
        return Some((
            obj::UNWIND_CFA_DEREF_RSP,
            i16::try_from(off).ok()?,
            i8::try_from(val).ok()?,
        ));
    }
    None
}

fn rows_of<R: gimli::Reader<Offset = usize>, S: UnwindSection<R>>(
    section: &S,
    bases: &BaseAddresses,
    out: &mut Vec<UnwindRow>,
    stats: &mut TableStats,
    max_rows: usize,
) -> Result<(), TableError>
where
    S::Offset: gimli::UnwindOffset<usize>,
{
    let corrupt = |e: gimli::Error| TableError::Corrupt(e.to_string());
    let mut ctx = Box::new(UnwindContext::new());
    let mut entries = section.entries(bases);
    while let Some(entry) = entries.next().map_err(corrupt)? {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let fde = partial
            .parse(|s, b, o| s.cie_from_offset(b, o))
            .map_err(corrupt)?;
        stats.fdes += 1;
        let signal = fde.is_signal_trampoline();
        let end = fde.end_address();
        let mut table = fde.rows(section, bases, &mut ctx).map_err(corrupt)?;
        while let Some(row) = table.next_row().map_err(corrupt)? {
            let start = row.start_address();
            let pc = u32::try_from(start).map_err(|_| TableError::TooHigh(start))?;
            let mut r = invalid(pc);
            if signal {
                r.kind = obj::UNWIND_CFA_SIGNAL;
            } else if matches!(row.register(X86_64::RA), Some(RegisterRule::Undefined)) {
                r.kind = obj::UNWIND_CFA_END;
            } else {
                let ra_ok = matches!(row.register(X86_64::RA), Some(RegisterRule::Offset(-8)));
                match row.cfa() {
                    CfaRule::RegisterAndOffset { register, offset } => {
                        match i16::try_from(*offset) {
                            Ok(off) if register.0 == RSP || register.0 == RBP => {
                                r.kind = if register.0 == RSP {
                                    obj::UNWIND_CFA_RSP
                                } else {
                                    obj::UNWIND_CFA_RBP
                                };
                                r.cfa_off = off;
                            }
                            Ok(_) => stats.cfa_register += 1,
                            Err(_) => stats.offset_range += 1,
                        }
                    }
                    CfaRule::Expression(e) => {
                        let bytes = e
                            .get(section)
                            .map_err(corrupt)?
                            .0
                            .to_slice()
                            .map_err(corrupt)?
                            .into_owned();
                        match cfa_expression(&bytes) {
                            Some((kind, off, val)) => {
                                r.kind = kind;
                                r.cfa_off = off;
                                r.rbp_off = val;
                            }
                            None => stats.cfa_expression += 1,
                        }
                    }
                }
                if !ra_ok && r.kind != obj::UNWIND_CFA_INVALID {
                    stats.ra_rule += 1;
                    r = invalid(pc);
                }
                if matches!(r.kind, obj::UNWIND_CFA_RSP | obj::UNWIND_CFA_RBP) {
                    match row.register(X86_64::RBP) {
                        None | Some(RegisterRule::SameValue) => {}
                        Some(RegisterRule::Offset(o)) => match i8::try_from(o) {
                            Ok(o) => {
                                r.kind |= obj::UNWIND_RBP_CFA << 4;
                                r.rbp_off = o;
                            }
                            Err(_) => {
                                stats.offset_range += 1;
                                r = invalid(pc);
                            }
                        },
                        Some(_) => {
                            stats.rbp_rule += 1;
                            r = invalid(pc);
                        }
                    }
                }
            }
            out.push(r);
            if out.len() > max_rows {
                return Err(TableError::TooLarge {
                    rows: out.len(),
                    max: max_rows,
                });
            }
        }
        // The gap after this FDE (dropped below if another FDE starts there).
        let end32 = u32::try_from(end).map_err(|_| TableError::TooHigh(end))?;
        out.push(UnwindRow {
            pc: end32,
            cfa_off: -1,
            rbp_off: 0,
            kind: obj::UNWIND_CFA_INVALID,
        });
    }
    Ok(())
}

/// `.eh_frame` bytes per table row at least (an FDE with its instructions takes ~20-30
/// bytes and yields ~2-4 rows): a section larger than cap × this is refused unparsed.
const EH_FRAME_BYTES_PER_ROW: usize = 24;

/// Builds the unwind table of an ELF image held in `data`.
pub fn build_table<'a, D: object::ReadRef<'a>>(
    data: D,
    max_rows: usize,
) -> Result<Table, TableError> {
    let elf = object::File::parse(data).map_err(|e| TableError::Elf(e.to_string()))?;
    if elf.section_by_name(".gopclntab").is_some() {
        return Err(TableError::Go);
    }
    use object::ObjectSegment;
    let loads: Vec<(u64, u64, u64)> = elf
        .segments()
        .map(|sg| {
            let (o, sz) = sg.file_range();
            (o, sg.address(), sz)
        })
        .collect();
    let addr_of = |n: &str| elf.section_by_name(n).map(|s| s.address()).unwrap_or(0);
    let bases = BaseAddresses::default()
        .set_eh_frame_hdr(addr_of(".eh_frame_hdr"))
        .set_eh_frame(addr_of(".eh_frame"))
        .set_text(addr_of(".text"))
        .set_got(addr_of(".got"));
    let mut rows = Vec::new();
    let mut stats = TableStats::default();
    let eh = elf
        .section_by_name(".eh_frame")
        .and_then(|s| s.data().ok())
        .filter(|d| !d.is_empty());
    if let Some(d) = eh.filter(|d| d.len() > max_rows.saturating_mul(EH_FRAME_BYTES_PER_ROW)) {
        // Far more CFI than the cap allows: refuse before parsing it.
        return Err(TableError::TooLarge {
            rows: d.len() / EH_FRAME_BYTES_PER_ROW,
            max: max_rows,
        });
    }
    if let Some(d) = eh {
        let mut s = EhFrame::new(d, LittleEndian);
        s.set_address_size(8);
        rows_of(&s, &bases, &mut rows, &mut stats, max_rows)?;
    } else if let Some(d) = elf
        .section_by_name(".debug_frame")
        .and_then(|s| s.data().ok())
        .filter(|d| !d.is_empty())
    {
        let mut s = DebugFrame::new(d, LittleEndian);
        s.set_address_size(8);
        rows_of(&s, &bases, &mut rows, &mut stats, max_rows)?;
    } else {
        return Err(TableError::NoCfi);
    }
    Ok(Table {
        rows: compact(rows),
        stats,
        loads,
    })
}

/// Sorts by pc; at equal pc a real row wins over a gap marker; drops rows that repeat
/// the previous rule.
fn compact(mut rows: Vec<UnwindRow>) -> Vec<UnwindRow> {
    // Gap markers carry cfa_off -1 so that, at equal pc, they sort first and are replaced.
    rows.sort_by_key(|r| (r.pc, r.kind != obj::UNWIND_CFA_INVALID || r.cfa_off != -1));
    let mut by_pc: Vec<UnwindRow> = Vec::with_capacity(rows.len());
    for mut r in rows {
        if r.kind == obj::UNWIND_CFA_INVALID {
            r.cfa_off = 0;
        }
        match by_pc.last_mut() {
            Some(last) if last.pc == r.pc => *last = r,
            _ => by_pc.push(r),
        }
    }
    let mut out: Vec<UnwindRow> = Vec::with_capacity(by_pc.len());
    for r in by_pc {
        if let Some(last) = out.last() {
            if (last.kind, last.cfa_off, last.rbp_off) == (r.kind, r.cfa_off, r.rbp_off) {
                continue;
            }
        }
        out.push(r);
    }
    out
}

/// Largest table of one binary (rows). Larger binaries are unwound with frame pointers
/// (counted as `too_large`): building and loading their tables would stall sampling.
pub const MAX_TABLE_ROWS: usize = 500_000;

/// Identity of a binary's contents: (device, inode, size, mtime).
pub type TableKey = (u64, u64, u64, i64);

/// Opens a mapped file: through `/proc/<pid>/map_files/` (works for deleted files and
/// other mount namespaces), else through `/proc/<pid>/root`.
pub fn open_mapped(proc_root: &Path, pid: u32, m: &MapLine) -> Result<(File, PathBuf), TableError> {
    let mf = proc_root
        .join(pid.to_string())
        .join("map_files")
        .join(format!("{:x}-{:x}", m.start, m.end));
    match File::open(&mf) {
        Ok(f) => Ok((f, mf)),
        Err(_) => {
            let p = proc_root.join(pid.to_string()).join("root").join(
                m.path
                    .trim_end_matches(" (deleted)")
                    .trim_start_matches('/'),
            );
            File::open(&p)
                .map(|f| (f, p.clone()))
                .map_err(|e| TableError::Open {
                    path: p.display().to_string(),
                    reason: e.to_string(),
                })
        }
    }
}

/// Built tables shared by every sampler, bounded in total rows (LRU eviction).
#[derive(Debug)]
pub struct TableCache {
    inner: Mutex<CacheInner>,
    max_rows: usize,
}

#[derive(Debug, Default)]
struct CacheInner {
    tables: HashMap<TableKey, (Result<Arc<Table>, TableError>, Instant)>,
    rows: usize,
    evictions: u64,
}

impl TableCache {
    pub fn new(max_rows: usize) -> Self {
        TableCache {
            inner: Mutex::new(CacheInner::default()),
            max_rows: max_rows.max(1),
        }
    }

    /// The table for the file of mapping `m` of `pid`, built on first use. Failures are
    /// cached too (a binary is not re-parsed every drain).
    pub fn get(
        &self,
        proc_root: &Path,
        pid: u32,
        m: &MapLine,
    ) -> (TableKey, Result<Arc<Table>, TableError>) {
        let opened = open_mapped(proc_root, pid, m);
        let (file, key) = match opened {
            Ok((f, _)) => {
                use std::os::unix::fs::MetadataExt;
                match f.metadata() {
                    Ok(md) => {
                        let key = (md.dev(), md.ino(), md.size(), md.mtime());
                        (f, key)
                    }
                    Err(e) => {
                        let err = TableError::Open {
                            path: m.path.clone(),
                            reason: e.to_string(),
                        };
                        return ((0, m.inode, 0, 0), Err(err));
                    }
                }
            }
            Err(e) => return ((0, m.inode, 0, 0), Err(e)),
        };
        {
            let mut g = self.inner.lock();
            if let Some((t, used)) = g.tables.get_mut(&key) {
                *used = Instant::now();
                return (key, t.clone());
            }
        }
        let cache = ReadCache::new(&file);
        let built = build_table(&cache, MAX_TABLE_ROWS.min(self.max_rows)).map(Arc::new);
        let mut g = self.inner.lock();
        let n = built.as_ref().map(|t| t.rows.len()).unwrap_or(0);
        while g.rows + n > self.max_rows && !g.tables.is_empty() {
            let oldest = g
                .tables
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k);
            let Some(k) = oldest else { break };
            if let Some((Ok(t), _)) = g.tables.remove(&k) {
                g.rows -= t.rows.len();
            }
            g.evictions += 1;
        }
        g.rows += n;
        g.tables.insert(key, (built.clone(), Instant::now()));
        (key, built)
    }

    /// (tables, rows held, evictions so far).
    pub fn stats(&self) -> (usize, usize, u64) {
        let g = self.inner.lock();
        (g.tables.len(), g.rows, g.evictions)
    }
}

/// The BPF row map (`BPF_F_MMAPABLE` array), written through a shared mapping: loading
/// a table is one memcpy, not one syscall per row.
pub struct RowMap {
    _map: aya::maps::MapData,
    ptr: *mut UnwindRow,
    len: usize,
}

// SAFETY: the mapping is owned by this value and only written through `&mut self`.
unsafe impl Send for RowMap {}

impl RowMap {
    /// Maps the row map of a loaded object.
    pub fn new(map: aya::maps::Map) -> Result<Self, String> {
        use std::os::fd::{AsFd, AsRawFd};
        let aya::maps::Map::Array(data) = map else {
            return Err("unwind_rows is not an array map".into());
        };
        let len = obj::UNWIND_MAX_ROWS as usize;
        let bytes = len * std::mem::size_of::<UnwindRow>();
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: mmap of a BPF array map created with BPF_F_MMAPABLE, exactly its size;
        // the result is checked before use and unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "mmap of unwind_rows: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(RowMap {
            _map: data,
            ptr: p as *mut UnwindRow,
            len,
        })
    }

    fn write(&mut self, first: u32, rows: &[UnwindRow]) {
        let first = first as usize;
        let n = rows.len().min(self.len.saturating_sub(first));
        // SAFETY: [first, first + n) is inside the mapping (checked above); UnwindRow is POD.
        unsafe {
            std::ptr::copy_nonoverlapping(rows.as_ptr(), self.ptr.add(first), n);
        }
    }
}

impl Drop for RowMap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe {
            libc::munmap(
                self.ptr as *mut libc::c_void,
                self.len * std::mem::size_of::<UnwindRow>(),
            );
        }
    }
}

/// Registers processes on a worker thread so that building and loading tables never
/// delays a drain: the sampler hands over pids it sees ([`Registrar::offer`], never
/// blocks; a full queue drops the pid and it is offered again on a later drain).
pub struct Registrar {
    maps: Arc<Mutex<UnwindMaps>>,
    tx: Option<std::sync::mpsc::SyncSender<u32>>,
    sent: std::collections::HashSet<u32>,
    /// Pids offered once: a pid is queued the second time it is offered (seen in two
    /// drains, or with two samples in one), so short-lived processes cost no tables.
    seen_once: std::collections::HashSet<u32>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Pids waiting for registration at most.
pub const REGISTER_QUEUE: usize = 1024;
/// The registration worker sleeps this many times the time it worked (duty cycle 1/20).
pub const WORKER_IDLE_FACTOR: u32 = 19;

impl std::fmt::Debug for Registrar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registrar").finish_non_exhaustive()
    }
}

impl Registrar {
    pub fn start(maps: UnwindMaps) -> Self {
        let maps = Arc::new(Mutex::new(maps));
        let (tx, rx) = std::sync::mpsc::sync_channel::<u32>(REGISTER_QUEUE);
        let m = maps.clone();
        let thread = std::thread::Builder::new()
            .name("ns-unwind".into())
            .spawn(move || {
                // Ends when the sender is dropped (the sampler went away).
                loop {
                    match rx.recv_timeout(std::time::Duration::from_secs(5)) {
                        Ok(pid) => {
                            let t = Instant::now();
                            m.lock()
                                .register_new([pid], std::time::Duration::from_secs(60));
                            // CPU budget: sleep 19x the time spent, so that registering a
                            // stream of new binaries costs at most ~5 % of one core.
                            std::thread::sleep(t.elapsed() * WORKER_IDLE_FACTOR);
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                            m.lock().register_new([], std::time::Duration::ZERO);
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            })
            .ok();
        Registrar {
            maps,
            tx: Some(tx),
            sent: std::collections::HashSet::new(),
            seen_once: std::collections::HashSet::new(),
            thread,
        }
    }

    /// Queues pids offered before and not queued yet (never blocks).
    pub fn offer(&mut self, pids: impl IntoIterator<Item = u32>) {
        if self.sent.len() > 65_536 {
            self.sent.clear();
        }
        if self.seen_once.len() > 65_536 {
            self.seen_once.clear();
        }
        let Some(tx) = &self.tx else { return };
        for pid in pids {
            if pid == 0 || self.sent.contains(&pid) {
                continue;
            }
            if self.seen_once.insert(pid) {
                continue;
            }
            if tx.try_send(pid).is_ok() {
                self.sent.insert(pid);
            }
        }
    }

    /// Registers pids now, on the caller's thread (on-demand profiles of known pids).
    pub fn register_now(&mut self, pids: &[u32], budget: std::time::Duration) {
        self.maps.lock().register_new(pids.iter().copied(), budget);
        self.sent.extend(pids.iter().copied());
    }

    pub fn maps(&self) -> &Arc<Mutex<UnwindMaps>> {
        &self.maps
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        // The worker ends after the pid it is registering (not joined: a large table
        // must not delay the end of a profile); it owns the last reference to the maps.
        self.tx = None;
        self.thread.take();
    }
}

/// The agent's own `[vdso]` image (identical in every process of this kernel).
fn own_vdso() -> Option<Vec<u8>> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let line = maps.lines().find(|l| l.ends_with("[vdso]"))?;
    let m = crate::procmaps::parse_line(line)?;
    let len = (m.end - m.start) as usize;
    if len == 0 || len > (1 << 20) {
        return None;
    }
    // SAFETY: [vdso] is mapped readable in our process for its whole lifetime, at exactly
    // this range (from our own maps file).
    let bytes = unsafe { std::slice::from_raw_parts(m.start as *const u8, len) };
    Some(bytes.to_vec())
}

/// Cumulative counters of one sampler's unwind maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnwindCounters {
    pub procs_registered: u64,
    pub procs_failed: u64,
    pub mappings_cfi: u64,
    /// Mappings unwound with frame pointers, by reason (`anonymous`, `go`, `no_cfi`, ...).
    pub mappings_fp: HashMap<&'static str, u64>,
    pub tables_loaded: u64,
    pub table_evictions: u64,
    pub rows_loaded: u64,
}

struct Loaded {
    id: u32,
    first: u32,
    n: u32,
    used: Instant,
}

/// One sampler's unwind maps: which processes have tables, which tables are loaded where.
pub struct UnwindMaps {
    procs: aya::maps::HashMap<aya::maps::MapData, u32, obj::UnwindProc>,
    tables: aya::maps::Array<aya::maps::MapData, obj::UnwindTableInfo>,
    rows: RowMap,
    cache: Arc<TableCache>,
    proc_root: PathBuf,
    loaded: HashMap<TableKey, Loaded>,
    free_ids: Vec<u32>,
    /// Free row extents (first, len), sorted by first.
    free_rows: Vec<(u32, u32)>,
    /// Registered pids and the table keys their entry uses.
    pids: HashMap<u32, Vec<TableKey>>,
    /// Pids that could not be registered (not retried).
    failed: HashMap<u32, Instant>,
    last_forget: Instant,
    metrics: Option<crate::metrics::ProfilerMetrics>,
    pub counters: UnwindCounters,
}

impl std::fmt::Debug for UnwindMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnwindMaps")
            .field("pids", &self.pids.len())
            .field("tables", &self.loaded.len())
            .finish()
    }
}

/// Why a process could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("reading {path}: {reason}")]
    Maps { path: String, reason: String },
    #[error("the process table map is full ({0} processes)")]
    ProcsFull(u32),
    #[error("map {map}: {reason}")]
    Map { map: &'static str, reason: String },
}

const VDSO_KEY: TableKey = (0, 0, 0, -1);

impl UnwindMaps {
    pub fn new(
        procs: aya::maps::HashMap<aya::maps::MapData, u32, obj::UnwindProc>,
        tables: aya::maps::Array<aya::maps::MapData, obj::UnwindTableInfo>,
        rows: RowMap,
        cache: Arc<TableCache>,
        proc_root: PathBuf,
    ) -> Self {
        UnwindMaps {
            procs,
            tables,
            rows,
            cache,
            proc_root,
            loaded: HashMap::new(),
            free_ids: (0..obj::UNWIND_MAX_TABLES).rev().collect(),
            free_rows: vec![(0, obj::UNWIND_MAX_ROWS)],
            pids: HashMap::new(),
            failed: HashMap::new(),
            last_forget: Instant::now(),
            metrics: None,
            counters: UnwindCounters::default(),
        }
    }

    /// Also count into the agent's self metrics.
    pub fn with_metrics(mut self, m: crate::metrics::ProfilerMetrics) -> Self {
        self.metrics = Some(m);
        self
    }

    /// Registers the pids not seen before, within `budget` (the rest wait for the next
    /// call), and every 30 s forgets processes that exited. Returns how many were
    /// registered.
    pub fn register_new(
        &mut self,
        pids: impl IntoIterator<Item = u32>,
        budget: std::time::Duration,
    ) -> usize {
        if self.last_forget.elapsed() >= std::time::Duration::from_secs(30) {
            self.forget_exited();
            self.last_forget = Instant::now();
        }
        let t = Instant::now();
        let mut n = 0;
        for pid in pids {
            if pid == 0 || self.is_known(pid) {
                continue;
            }
            if t.elapsed() >= budget {
                break;
            }
            match self.register(pid) {
                Ok(()) => n += 1,
                Err(e) => tracing::debug!(pid, error = %e, "no unwind tables for process"),
            }
        }
        if let Some(m) = &self.metrics {
            m.unwind_rows.set(self.rows_in_use() as f64);
            m.unwind_processes.set(self.pids.len() as f64);
        }
        n
    }

    pub fn is_known(&self, pid: u32) -> bool {
        self.pids.contains_key(&pid) || self.failed.contains_key(&pid)
    }

    pub fn process_count(&self) -> usize {
        self.pids.len()
    }

    /// Rows loaded in the BPF row map now.
    pub fn rows_in_use(&self) -> u64 {
        self.loaded.values().map(|l| l.n as u64).sum()
    }

    fn alloc_rows(&mut self, n: u32) -> Option<u32> {
        let i = self.free_rows.iter().position(|&(_, len)| len >= n)?;
        let (first, len) = self.free_rows[i];
        if len == n {
            self.free_rows.remove(i);
        } else {
            self.free_rows[i] = (first + n, len - n);
        }
        Some(first)
    }

    fn free_extent(&mut self, first: u32, n: u32) {
        let i = self.free_rows.partition_point(|&(f, _)| f < first);
        self.free_rows.insert(i, (first, n));
        // Merge neighbours.
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(self.free_rows.len());
        for &(f, l) in &self.free_rows {
            match merged.last_mut() {
                Some((mf, ml)) if *mf + *ml == f => *ml += l,
                _ => merged.push((f, l)),
            }
        }
        self.free_rows = merged;
    }

    /// Evicts the least recently used table not in `keep`; processes using it are
    /// re-registered without it (frame pointers for that mapping).
    fn evict_one(&mut self, keep: &[TableKey]) -> bool {
        let Some((&key, _)) = self
            .loaded
            .iter()
            .filter(|(k, _)| !keep.contains(k))
            .min_by_key(|(_, l)| l.used)
        else {
            return false;
        };
        let l = self.loaded.remove(&key).expect("present");
        let _ = self.tables.set(l.id, obj::UnwindTableInfo::default(), 0);
        self.free_ids.push(l.id);
        self.free_extent(l.first, l.n);
        self.counters.table_evictions += 1;
        if let Some(m) = &self.metrics {
            m.unwind_table_evictions.inc();
        }
        let users: Vec<u32> = self
            .pids
            .iter()
            .filter(|(_, ks)| ks.contains(&key))
            .map(|(p, _)| *p)
            .collect();
        for pid in users {
            if let Some(ks) = self.pids.get_mut(&pid) {
                ks.retain(|k| *k != key);
            }
            // Point the mappings of that table at frame pointers.
            if let Ok(mut e) = self.procs.get(&pid, 0) {
                let n = (e.n as usize).min(obj::UNWIND_MAX_MAPPINGS);
                for m in e.maps[..n].iter_mut() {
                    if m.kind == obj::UNWIND_MAPPING_CFI && m.table == l.id {
                        m.kind = obj::UNWIND_MAPPING_FP;
                    }
                }
                let _ = self.procs.insert(pid, e, 0);
            }
        }
        true
    }

    /// Loads `t` (if not loaded) and returns its table id.
    fn load(&mut self, key: TableKey, t: &Table, keep: &[TableKey]) -> Option<u32> {
        if let Some(l) = self.loaded.get_mut(&key) {
            l.used = Instant::now();
            return Some(l.id);
        }
        let n = u32::try_from(t.rows.len()).ok()?;
        if n == 0 || n > obj::UNWIND_MAX_ROWS {
            return None;
        }
        let first = loop {
            if self.free_ids.is_empty() && !self.evict_one(keep) {
                return None;
            }
            if let Some(f) = self.alloc_rows(n) {
                break f;
            }
            if !self.evict_one(keep) {
                return None;
            }
        };
        let Some(id) = self.free_ids.pop() else {
            self.free_extent(first, n);
            return None;
        };
        self.rows.write(first, &t.rows);
        if self
            .tables
            .set(
                id,
                obj::UnwindTableInfo {
                    first_row: first,
                    nrows: n,
                },
                0,
            )
            .is_err()
        {
            self.free_extent(first, n);
            self.free_ids.push(id);
            return None;
        }
        self.counters.tables_loaded += 1;
        self.counters.rows_loaded += n as u64;
        if let Some(m) = &self.metrics {
            m.unwind_tables_loaded.inc();
        }
        self.loaded.insert(
            key,
            Loaded {
                id,
                first,
                n,
                used: Instant::now(),
            },
        );
        Some(id)
    }

    fn fp(&mut self, reason: &'static str) {
        *self.counters.mappings_fp.entry(reason).or_default() += 1;
        if let Some(m) = &self.metrics {
            m.observe_fp_mapping(reason);
        }
    }

    /// Builds (or reuses) the tables of every executable mapping of `pid` and writes its
    /// entry, so that its next samples are unwound with DWARF CFI.
    pub fn register(&mut self, pid: u32) -> Result<(), RegisterError> {
        let r = self.register_inner(pid);
        match &r {
            Ok(()) => self.counters.procs_registered += 1,
            Err(_) => {
                self.counters.procs_failed += 1;
                if let Some(m) = &self.metrics {
                    m.unwind_procs_failed.inc();
                }
                if self.failed.len() >= 65_536 {
                    self.failed.clear();
                }
                self.failed.insert(pid, Instant::now());
            }
        }
        r
    }

    fn register_inner(&mut self, pid: u32) -> Result<(), RegisterError> {
        let path = self.proc_root.join(pid.to_string()).join("maps");
        let content = std::fs::read_to_string(&path).map_err(|e| RegisterError::Maps {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        if !self.pids.contains_key(&pid) && self.pids.len() >= obj::UNWIND_MAX_PROCS as usize {
            return Err(RegisterError::ProcsFull(obj::UNWIND_MAX_PROCS));
        }
        let (maps, _) = crate::procmaps::executable_mappings(&content);
        let mut entry = obj::UnwindProc::default();
        let mut keys: Vec<TableKey> = Vec::new();
        let mut n = 0usize;
        for m in maps.iter() {
            if n >= obj::UNWIND_MAX_MAPPINGS {
                self.fp("too_many_mappings");
                break;
            }
            let mut e = obj::UnwindMapping {
                start: m.start,
                end: m.end,
                bias: 0,
                table: 0,
                kind: obj::UNWIND_MAPPING_FP,
            };
            let got = if m.path == "[vdso]" {
                Some(self.vdso_table())
            } else if m.is_file() {
                Some(self.cache.get(&self.proc_root, pid, m))
            } else {
                self.fp("anonymous");
                None
            };
            match got {
                Some((key, Ok(t))) => {
                    let offset = if key == VDSO_KEY { 0 } else { m.offset };
                    match t.bias(m.start, offset) {
                        Some(bias) => match self.load(key, &t, &keys) {
                            Some(id) => {
                                e.bias = bias;
                                e.table = id;
                                e.kind = obj::UNWIND_MAPPING_CFI;
                                keys.push(key);
                                self.counters.mappings_cfi += 1;
                            }
                            None => self.fp("table_map_full"),
                        },
                        None => self.fp("no_segment"),
                    }
                }
                Some((_, Err(err))) => self.fp(err.reason()),
                None => {}
            }
            entry.maps[n] = e;
            n += 1;
        }
        entry.n = n as u32;
        self.procs
            .insert(pid, entry, 0)
            .map_err(|e| RegisterError::Map {
                map: obj::MAP_UNWIND_PROCS,
                reason: e.to_string(),
            })?;
        self.pids.insert(pid, keys);
        Ok(())
    }

    fn vdso_table(&self) -> (TableKey, Result<Arc<Table>, TableError>) {
        static VDSO: std::sync::OnceLock<Result<Arc<Table>, TableError>> =
            std::sync::OnceLock::new();
        let t = VDSO.get_or_init(|| match own_vdso() {
            Some(b) => build_table(&b[..], obj::UNWIND_MAX_ROWS as usize).map(Arc::new),
            None => Err(TableError::NoCfi),
        });
        (VDSO_KEY, t.clone())
    }

    /// Forgets processes that exited (their entry and their claim on tables).
    pub fn forget_exited(&mut self) {
        let gone: Vec<u32> = self
            .pids
            .keys()
            .copied()
            .filter(|p| !self.proc_root.join(p.to_string()).exists())
            .collect();
        for p in gone {
            let _ = self.procs.remove(&p);
            self.pids.remove(&p);
        }
        let old = Instant::now() - std::time::Duration::from_secs(60);
        self.failed.retain(|_, t| *t > old);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn own_exe() -> Vec<u8> {
        std::fs::read("/proc/self/exe").unwrap()
    }

    #[test]
    fn builds_a_table_for_our_own_binary() {
        let data = own_exe();
        let t = build_table(&data[..], 10_000_000).unwrap();
        assert!(t.stats.fdes > 1000, "{:?}", t.stats);
        assert!(t.rows.len() > 1000);
        assert!(t.rows.windows(2).all(|w| w[0].pc < w[1].pc));
        let rsp = t
            .rows
            .iter()
            .filter(|r| r.kind & 15 == obj::UNWIND_CFA_RSP)
            .count();
        assert!(rsp * 2 > t.rows.len(), "{rsp} rsp rows of {}", t.rows.len());
        assert_eq!(t.bytes(), t.rows.len() * 8);
    }

    #[test]
    fn bias_picks_the_segment_that_starts_last_in_the_page() {
        // lld layout: .rodata segment at offset 0, .text segment at 0x128e0 mapped at
        // vaddr 0x138e0; the executable mapping starts at file offset 0x12000.
        let t = Table {
            loads: vec![(0, 0, 0x128e0), (0x128e0, 0x138e0, 0x1000)],
            ..Default::default()
        };
        let start = 0x5555_5556_6000;
        let bias = t.bias(start, 0x12000).unwrap();
        assert_eq!(start + 0x8e0 - bias, 0x138e0);
    }

    #[test]
    fn plt_and_deref_expressions() {
        let plt = [
            0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22,
        ];
        assert_eq!(cfa_expression(&plt), Some((obj::UNWIND_CFA_PLT, 11, 0)));
        assert_eq!(
            cfa_expression(&[0x77, 0x10, 0x06, 0x23, 0x08]),
            Some((obj::UNWIND_CFA_DEREF_RSP, 16, 8))
        );
        assert_eq!(
            cfa_expression(&[0x77, 0x10, 0x06]),
            Some((obj::UNWIND_CFA_DEREF_RSP, 16, 0))
        );
        assert_eq!(cfa_expression(&[0x77, 0x10, 0x07]), None);
        assert_eq!(cfa_expression(&[]), None);
    }

    #[test]
    fn compact_merges_and_replaces_gaps() {
        let r = |pc, kind, off| UnwindRow {
            pc,
            cfa_off: off,
            rbp_off: 0,
            kind,
        };
        let rows = vec![
            r(10, obj::UNWIND_CFA_RSP, 8),
            r(12, obj::UNWIND_CFA_RSP, 8),
            r(20, obj::UNWIND_CFA_INVALID, -1),
            r(20, obj::UNWIND_CFA_RSP, 8),
            r(30, obj::UNWIND_CFA_INVALID, -1),
        ];
        let c = compact(rows);
        assert_eq!(
            c,
            vec![
                r(10, obj::UNWIND_CFA_RSP, 8),
                r(30, obj::UNWIND_CFA_INVALID, 0)
            ]
        );
    }

    /// Truncated and corrupted `.eh_frame`: an error or a table, never a panic.
    #[test]
    fn corrupt_and_truncated_cfi_is_an_error_not_a_panic() {
        let data = own_exe();
        let elf = object::File::parse(&data[..]).unwrap();
        let s = elf.section_by_name(".eh_frame").unwrap();
        let (off, len) = s.file_range().unwrap();
        let (off, len) = (off as usize, len as usize);
        // Truncate the file in the middle of .eh_frame.
        let r = build_table(&data[..off + len / 2], 10_000_000);
        assert!(r.is_err() || r.is_ok());
        // Overwrite part of it with garbage.
        let mut bad = data.clone();
        for (i, b) in bad[off + 64..off + 4096.min(len)].iter_mut().enumerate() {
            *b = (i * 37 % 251) as u8;
        }
        match build_table(&bad[..], 10_000_000) {
            Err(TableError::Corrupt(_)) | Ok(_) => {}
            Err(e) => panic!("unexpected {e}"),
        }
        assert_eq!(
            build_table(&data[..], 10).unwrap_err().reason(),
            "too_large"
        );
        assert_eq!(
            build_table(&b"not an elf"[..], 10).unwrap_err().reason(),
            "elf"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn random_eh_frame_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let s = EhFrame::new(&bytes, LittleEndian);
            let mut rows = Vec::new();
            let mut st = TableStats::default();
            let _ = rows_of(&s, &BaseAddresses::default(), &mut rows, &mut st, 1000);
        }
    }
}
