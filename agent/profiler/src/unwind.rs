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
}

impl Table {
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

/// Builds the unwind table of an ELF image held in `data`.
pub fn build_table<'a, D: object::ReadRef<'a>>(
    data: D,
    max_rows: usize,
) -> Result<Table, TableError> {
    let elf = object::File::parse(data).map_err(|e| TableError::Elf(e.to_string()))?;
    if elf.section_by_name(".gopclntab").is_some() {
        return Err(TableError::Go);
    }
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
        let built = build_table(&cache, self.max_rows).map(Arc::new);
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
