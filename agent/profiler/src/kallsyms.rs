//! Kernel symbolization from `/proc/kallsyms`.
//!
//! kallsyms already lists *runtime* addresses (KASLR applied), so an instruction pointer
//! from a kernel stack is looked up directly. When `kernel.kptr_restrict` hides the
//! addresses (every address reads as zero for an unprivileged reader), the table is
//! reported as unusable instead of symbolizing everything to the first symbol.
//!
//! Names are stored in one string arena (about 200k text symbols on a distro kernel: a
//! `Vec<String>` would cost several MB more).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KallsymsError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: every address is zero (kernel.kptr_restrict hides kernel addresses; run as root with CAP_SYSLOG or set kernel.kptr_restrict=0)")]
    Restricted { path: PathBuf },
    #[error("{path}: no text symbols found")]
    Empty { path: PathBuf },
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    addr: u64,
    name_start: u32,
    name_len: u16,
    /// 0 = vmlinux, otherwise index + 1 into `modules`.
    module: u16,
}

/// A sorted table of kernel text symbols.
#[derive(Debug, Default)]
pub struct KernelSymbols {
    entries: Vec<Entry>,
    names: String,
    modules: Vec<String>,
}

/// One parsed kallsyms line.
#[derive(Debug, PartialEq, Eq)]
pub struct KallsymsLine<'a> {
    pub addr: u64,
    pub kind: char,
    pub name: &'a str,
    pub module: Option<&'a str>,
}

/// Parses one kallsyms line (`ffffffff81000000 T _stext` or `... t fn\t[module]`).
/// Returns `None` for malformed lines.
pub fn parse_line(line: &str) -> Option<KallsymsLine<'_>> {
    let mut it = line.split_ascii_whitespace();
    let addr = u64::from_str_radix(it.next()?, 16).ok()?;
    let kind_s = it.next()?;
    let mut kind_chars = kind_s.chars();
    let kind = kind_chars.next()?;
    if kind_chars.next().is_some() {
        return None;
    }
    let name = it.next()?;
    let module = match it.next() {
        Some(m) => Some(m.strip_prefix('[')?.strip_suffix(']')?),
        None => None,
    };
    if it.next().is_some() {
        return None;
    }
    Some(KallsymsLine {
        addr,
        kind,
        name,
        module,
    })
}

impl KernelSymbols {
    /// Reads and indexes `path` (normally `/proc/kallsyms`).
    pub fn load(path: &Path) -> Result<Self, KallsymsError> {
        let content = std::fs::read_to_string(path).map_err(|source| KallsymsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&content, path)
    }

    /// Builds the table from kallsyms text; `path` only names the source in errors.
    pub fn parse(content: &str, path: &Path) -> Result<Self, KallsymsError> {
        let mut out = KernelSymbols::default();
        let mut any = false;
        let mut nonzero = false;
        for line in content.lines() {
            let Some(l) = parse_line(line) else { continue };
            any = true;
            if l.addr != 0 {
                nonzero = true;
            }
            if !matches!(l.kind, 't' | 'T' | 'w' | 'W') || l.addr == 0 {
                continue;
            }
            if l.name.len() > u16::MAX as usize
                || out.names.len() + l.name.len() > u32::MAX as usize
            {
                continue;
            }
            let module = match l.module {
                None => 0,
                Some(m) => match out.modules.iter().position(|x| x == m) {
                    Some(i) => i + 1,
                    None if out.modules.len() < u16::MAX as usize - 1 => {
                        out.modules.push(m.to_string());
                        out.modules.len()
                    }
                    None => continue,
                },
            };
            let name_start = out.names.len() as u32;
            out.names.push_str(l.name);
            out.entries.push(Entry {
                addr: l.addr,
                name_start,
                name_len: l.name.len() as u16,
                module: module as u16,
            });
        }
        if any && !nonzero {
            return Err(KallsymsError::Restricted {
                path: path.to_path_buf(),
            });
        }
        if out.entries.is_empty() {
            return Err(KallsymsError::Empty {
                path: path.to_path_buf(),
            });
        }
        out.entries.sort_by_key(|e| e.addr);
        out.names.shrink_to_fit();
        out.entries.shrink_to_fit();
        Ok(out)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The symbol containing `addr` (the last symbol starting at or below it), with its
    /// module name (`None` for vmlinux). Addresses below the first symbol resolve to `None`.
    pub fn lookup(&self, addr: u64) -> Option<(&str, Option<&str>)> {
        let idx = self.entries.partition_point(|e| e.addr <= addr);
        let e = self.entries.get(idx.checked_sub(1)?)?;
        let start = e.name_start as usize;
        let name = self.names.get(start..start + e.name_len as usize)?;
        let module = match e.module {
            0 => None,
            m => self.modules.get(m as usize - 1).map(String::as_str),
        };
        Some((name, module))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = "ffffffff81000000 T _stext\n\
ffffffff81001000 t do_one_initcall\n\
ffffffff81002000 D some_data\n\
ffffffffc0000000 t ext4_fill_super\t[ext4]\n\
ffffffff81003000 T __x64_sys_write\n\
garbage line\n";

    #[test]
    fn parses_and_looks_up() {
        let k = KernelSymbols::parse(SAMPLE, Path::new("kallsyms")).unwrap();
        assert_eq!(k.len(), 4);
        assert_eq!(k.lookup(0xffffffff81000010), Some(("_stext", None)));
        assert_eq!(
            k.lookup(0xffffffff81003040),
            Some(("__x64_sys_write", None))
        );
        // data symbols are skipped: an address after some_data still maps to the text before.
        assert_eq!(
            k.lookup(0xffffffff81002010),
            Some(("do_one_initcall", None))
        );
        assert_eq!(
            k.lookup(0xffffffffc0000100),
            Some(("ext4_fill_super", Some("ext4")))
        );
        assert_eq!(k.lookup(0x1000), None);
    }

    #[test]
    fn restricted_table_is_an_error() {
        let s = "0000000000000000 T _stext\n0000000000000000 t foo\n";
        let e = KernelSymbols::parse(s, Path::new("/proc/kallsyms")).unwrap_err();
        assert!(matches!(e, KallsymsError::Restricted { .. }));
        assert!(e.to_string().contains("kptr_restrict"));
    }

    #[test]
    fn line_parser() {
        assert_eq!(
            parse_line("ffffffffc0000000 t f\t[mod]"),
            Some(KallsymsLine {
                addr: 0xffffffffc0000000,
                kind: 't',
                name: "f",
                module: Some("mod")
            })
        );
        assert_eq!(parse_line("zz T f"), None);
        assert_eq!(parse_line("10 TT f"), None);
        assert_eq!(parse_line("10 T f mod"), None);
    }

    #[test]
    fn this_hosts_kallsyms_if_readable() {
        // Not gated: /proc/kallsyms is world-readable; as non-root it may be restricted,
        // which must then be the Restricted error, never a bogus table.
        match KernelSymbols::load(Path::new("/proc/kallsyms")) {
            Ok(k) => assert!(k.len() > 1000),
            Err(KallsymsError::Restricted { .. }) => {}
            Err(e) => panic!("unexpected: {e}"),
        }
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC{0,400}") {
            let _ = parse_line(&s);
            if let Ok(k) = KernelSymbols::parse(&s, Path::new("x")) {
                let _ = k.lookup(0);
                let _ = k.lookup(u64::MAX);
            }
        }

        #[test]
        fn lookup_finds_the_enclosing_symbol(mut addrs in proptest::collection::btree_set(1u64..u64::MAX/2, 1..50), probe in 0u64..u64::MAX/2) {
            let text: String = addrs.iter().map(|a| format!("{a:016x} T f{a:x}\n")).collect();
            let k = KernelSymbols::parse(&text, Path::new("x")).unwrap();
            let expect = addrs.range(..=probe).next_back().map(|a| format!("f{a:x}"));
            prop_assert_eq!(k.lookup(probe).map(|(n, _)| n.to_string()), expect);
            addrs.clear();
        }
    }
}
