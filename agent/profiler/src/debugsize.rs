//! How much debug data symbolizing a binary with DWARF would pull into memory, and the
//! decision that follows from it (see `profiling.debug_info_max_binary_mb` in
//! docs/profiling.md).
//!
//! blazesym memory-maps a binary and, when DWARF is enabled, its separate debug file; the
//! DWARF sections it walks become resident file-backed pages (compressed sections are
//! inflated into private memory instead). For a debug build of a large Rust program that
//! is ~100 MB per binary, so a binary whose debug data exceeds the limit is symbolized
//! from ELF symbol tables only: function names are kept (from `.symtab`, or from the
//! separate debug file's `.symtab` when the binary itself is stripped), inlined frames are
//! not.
//!
//! Only ELF headers, section headers, the section-name table and compression headers are
//! read (a few KB through `object::ReadCache`), never the sections themselves.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use object::elf::{PT_LOAD, SHT_NOBITS};
use object::read::elf::{CompressionHeader, FileHeader, ProgramHeader, SectionHeader};
use object::read::ReadCache;
use object::{Endianness, FileKind};

/// What the section headers of one ELF file say about its debug data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DebugFootprint {
    /// Uncompressed size of its `.debug_*` / `.zdebug_*` sections (bytes).
    pub dwarf_bytes: u64,
    /// File name from `.gnu_debuglink`, if any.
    pub debuglink: Option<OsString>,
    /// Whether it has a `.symtab` (a stripped binary has only `.dynsym`).
    pub has_symtab: bool,
    /// Size of its symbol and string tables (`.symtab`, `.strtab`, `.dynsym`, `.dynstr`):
    /// what symbolizing from symbol tables maps.
    pub symtab_bytes: u64,
    /// `PT_LOAD` segments as (file offset, virtual address, file size).
    pub loads: Vec<(u64, u64, u64)>,
}

impl DebugFootprint {
    /// The virtual address (as in the ELF file, before relocation) of a file offset,
    /// from the `PT_LOAD` segments; what blazesym does for `Input::FileOffset`.
    pub fn file_offset_to_vaddr(&self, off: u64) -> Option<u64> {
        self.loads
            .iter()
            .find_map(|&(o, v, sz)| (off >= o && off - o < sz).then(|| v.wrapping_add(off - o)))
    }
}

/// Why a file's footprint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FootprintError {
    #[error("not an ELF file")]
    NotElf,
    #[error("malformed ELF headers: {0}")]
    Elf(#[from] object::read::Error),
}

/// Reads the footprint of the ELF file `file`. Not an ELF file (or a malformed one) is an
/// error naming the reason.
pub fn footprint(file: &File) -> Result<DebugFootprint, FootprintError> {
    let cache = ReadCache::new(file);
    match FileKind::parse(&cache)? {
        FileKind::Elf32 => Ok(scan::<object::elf::FileHeader32<Endianness>>(&cache)?),
        FileKind::Elf64 => Ok(scan::<object::elf::FileHeader64<Endianness>>(&cache)?),
        _ => Err(FootprintError::NotElf),
    }
}

fn scan<Elf: FileHeader<Endian = Endianness>>(
    data: &ReadCache<&File>,
) -> Result<DebugFootprint, object::read::Error> {
    let header = Elf::parse(data)?;
    let e = header.endian()?;
    let mut out = DebugFootprint::default();
    for ph in header.program_headers(e, data)? {
        if ph.p_type(e) == PT_LOAD {
            out.loads.push((
                ph.p_offset(e).into(),
                ph.p_vaddr(e).into(),
                ph.p_filesz(e).into(),
            ));
        }
    }
    let sections = header.sections(e, data)?;
    for s in sections.iter() {
        let name = sections.section_name(e, s)?;
        if matches!(name, b".symtab" | b".strtab" | b".dynsym" | b".dynstr")
            && s.sh_type(e) != SHT_NOBITS
        {
            out.symtab_bytes = out.symtab_bytes.saturating_add(s.sh_size(e).into());
            out.has_symtab |= name == b".symtab";
        } else if name == b".gnu_debuglink" && s.sh_type(e) != SHT_NOBITS {
            let d = s.data(e, data)?;
            let n = d.iter().position(|&b| b == 0).unwrap_or(d.len());
            if n > 0 {
                out.debuglink = Some(OsString::from_vec(d[..n].to_vec()));
            }
        } else if (name.starts_with(b".debug_") || name.starts_with(b".zdebug_"))
            && s.sh_type(e) != SHT_NOBITS
        {
            let size = match s.compression(e, data)? {
                Some((ch, _, _)) => ch.ch_size(e).into(),
                None if name.starts_with(b".zdebug_") => {
                    // GNU-style: "ZLIB" + big-endian u64 uncompressed size.
                    let d = s.data(e, data)?;
                    match d.get(..12) {
                        Some(h) if &h[..4] == b"ZLIB" => {
                            let mut b = [0u8; 8];
                            b.copy_from_slice(&h[4..12]);
                            u64::from_be_bytes(b)
                        }
                        _ => s.sh_size(e).into(),
                    }
                }
                None => s.sh_size(e).into(),
            };
            out.dwarf_bytes = out.dwarf_bytes.saturating_add(size);
        }
    }
    Ok(out)
}

/// Where blazesym looks for the separate debug file of a binary with a `.gnu_debuglink`
/// name `L` (the usual places of its search; the first that exists is the one it uses):
/// `<debug_dir>/.build-id/xx/rest.debug` for each debug directory, then `<debug_dir>/L`,
/// `<bin dir>/L`, `<bin dir>/.debug/L` and `<debug_dir>/<bin dir>/L`. (blazesym follows
/// no separate file for a binary without a debug link.)
pub fn debug_file_candidates(
    debug_dirs: &[PathBuf],
    build_id_hex: Option<&str>,
    link: &OsString,
    binary_path: &Path,
) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(id) = build_id_hex.filter(|id| id.len() >= 16 && id.is_ascii()) {
        for d in debug_dirs {
            out.push(
                d.join(".build-id")
                    .join(&id[..2])
                    .join(format!("{}.debug", &id[2..])),
            );
        }
    }
    for d in debug_dirs {
        out.push(d.join(link));
    }
    if let Some(dir) = binary_path.parent() {
        out.push(dir.join(link));
        out.push(dir.join(".debug").join(link));
        let rel = dir.strip_prefix("/").unwrap_or(dir);
        for d in debug_dirs {
            out.push(d.join(rel).join(link));
        }
    }
    out
}

/// How one binary is symbolized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DwarfDecision {
    /// DWARF (and separate debug files) are read: inlined frames, best names.
    Use,
    /// `debug_info = false`: ELF symbol tables of the binary only.
    Disabled,
    /// The debug data exceeds the limit: ELF symbol tables only (counted).
    TooLarge,
}

/// The decision for a binary whose DWARF, in the file and in its separate debug file
/// together, is `debug_bytes` (uncompressed) long.
pub fn decide(debug_info: bool, debug_bytes: u64, max_bytes: u64) -> DwarfDecision {
    if !debug_info {
        DwarfDecision::Disabled
    } else if debug_bytes > max_bytes {
        DwarfDecision::TooLarge
    } else {
        DwarfDecision::Use
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision() {
        const MB: u64 = 1 << 20;
        assert_eq!(decide(true, 0, 32 * MB), DwarfDecision::Use);
        assert_eq!(decide(true, 32 * MB, 32 * MB), DwarfDecision::Use);
        assert_eq!(decide(true, 32 * MB + 1, 32 * MB), DwarfDecision::TooLarge);
        assert_eq!(decide(false, 0, 32 * MB), DwarfDecision::Disabled);
        assert_eq!(decide(false, 500 * MB, 32 * MB), DwarfDecision::Disabled);
        assert_eq!(decide(true, 1, 0), DwarfDecision::TooLarge);
    }

    #[test]
    fn file_offset_to_vaddr_uses_load_segments() {
        let f = DebugFootprint {
            loads: vec![(0, 0, 0x1000), (0x1000, 0x401000, 0x2000)],
            ..Default::default()
        };
        assert_eq!(f.file_offset_to_vaddr(0x10), Some(0x10));
        assert_eq!(f.file_offset_to_vaddr(0x1010), Some(0x401010));
        assert_eq!(f.file_offset_to_vaddr(0x2fff), Some(0x402fff));
        assert_eq!(f.file_offset_to_vaddr(0x3000), None);
    }

    #[test]
    fn candidates_follow_build_id_and_debuglink() {
        let dirs = vec![PathBuf::from("/usr/lib/debug")];
        let link = OsString::from("x.debug");
        let c = debug_file_candidates(
            &dirs,
            Some("0123456789abcdef00"),
            &link,
            Path::new("/opt/app/bin/x"),
        );
        assert_eq!(
            c,
            vec![
                PathBuf::from("/usr/lib/debug/.build-id/01/23456789abcdef00.debug"),
                PathBuf::from("/usr/lib/debug/x.debug"),
                PathBuf::from("/opt/app/bin/x.debug"),
                PathBuf::from("/opt/app/bin/.debug/x.debug"),
                PathBuf::from("/usr/lib/debug/opt/app/bin/x.debug"),
            ]
        );
        // Too-short build ids are ignored (blazesym skips them too).
        let c = debug_file_candidates(&dirs, Some("0123"), &link, Path::new("/x"));
        assert_eq!(
            c,
            vec![
                PathBuf::from("/usr/lib/debug/x.debug"),
                PathBuf::from("/x.debug"),
                PathBuf::from("/.debug/x.debug"),
                PathBuf::from("/usr/lib/debug/x.debug"),
            ]
        );
    }

    #[test]
    fn non_elf_is_an_error() {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, b"#!/bin/sh\necho hi\n").unwrap();
        assert!(footprint(&f).is_err());
        let empty = tempfile::tempfile().unwrap();
        assert!(footprint(&empty).is_err());
    }

    /// A binary built with and without `-g`: DWARF is counted only in the first; the
    /// numbers match the section headers as `readelf` sees them.
    #[test]
    fn counts_dwarf_of_real_binaries() {
        const T: &str = "debugsize::counts_dwarf_of_real_binaries";
        let Some(cc) = nodescope_testsupport::require_tool(T, "cc", &[]) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("a.c");
        std::fs::write(&src, "int main(void){ return 0; }\n").unwrap();
        let build = |out: &str, extra: &[&str]| {
            let p = dir.path().join(out);
            let ok = std::process::Command::new(&cc)
                .args(extra)
                .arg("-o")
                .arg(&p)
                .arg(&src)
                .status()
                .unwrap()
                .success();
            assert!(ok);
            p
        };
        let g = build("g", &["-g"]);
        let plain = build("plain", &["-g0"]);
        let fg = footprint(&File::open(&g).unwrap()).unwrap();
        let fp = footprint(&File::open(&plain).unwrap()).unwrap();
        assert!(fg.dwarf_bytes > 0, "{fg:?}");
        assert_eq!(fp.dwarf_bytes, 0, "{fp:?}");
        assert!(fg.has_symtab && fp.has_symtab);
        assert!(fg.symtab_bytes > 0 && fp.symtab_bytes > 0);
        assert!(!fg.loads.is_empty());
        // Our own test binary (Rust, debug profile) has DWARF too.
        let me = footprint(&File::open("/proc/self/exe").unwrap()).unwrap();
        assert!(me.dwarf_bytes > 1 << 20, "{me:?}");
    }
}
