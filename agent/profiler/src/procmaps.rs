//! `/proc/<pid>/maps` parsing: only the executable mappings matter for symbolization.

/// One line of `/proc/<pid>/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapLine {
    pub start: u64,
    pub end: u64,
    pub readable: bool,
    pub executable: bool,
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// Path, `[vdso]`-style pseudo name, or empty for anonymous memory. A trailing
    /// ` (deleted)` is kept (the file is then reachable only through map_files).
    pub path: String,
}

impl MapLine {
    /// A regular file mapping (not anonymous, not `[vdso]`/`[stack]`...).
    pub fn is_file(&self) -> bool {
        self.path.starts_with('/') && self.inode != 0
    }
    pub fn deleted(&self) -> bool {
        self.path.ends_with(" (deleted)")
    }
}

/// Parses one maps line; `None` when malformed. Format:
/// `start-end perms offset major:minor inode [path]` (path may contain spaces).
pub fn parse_line(line: &str) -> Option<MapLine> {
    let line = line.trim_end_matches('\n');
    let mut rest = line;
    let mut field = || -> Option<&str> {
        let t = rest.trim_start_matches(' ');
        let end = t.find(' ').unwrap_or(t.len());
        let (f, r) = t.split_at(end);
        rest = r;
        (!f.is_empty()).then_some(f)
    };
    let range = field()?;
    let perms = field()?;
    let offset = field()?;
    let dev = field()?;
    let inode = field()?;
    let path = rest.trim_start_matches(' ').to_string();
    let (s, e) = range.split_once('-')?;
    let start = u64::from_str_radix(s, 16).ok()?;
    let end = u64::from_str_radix(e, 16).ok()?;
    if end < start || perms.len() != 4 || !perms.is_ascii() {
        return None;
    }
    let (maj, min) = dev.split_once(':')?;
    Some(MapLine {
        start,
        end,
        readable: perms.as_bytes()[0] == b'r',
        executable: perms.as_bytes()[2] == b'x',
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev_major: u32::from_str_radix(maj, 16).ok()?,
        dev_minor: u32::from_str_radix(min, 16).ok()?,
        inode: inode.parse().ok()?,
        path,
    })
}

/// The executable mappings of a maps file, sorted by start address. Malformed lines are
/// skipped (and counted in the returned number).
pub fn executable_mappings(content: &str) -> (Vec<MapLine>, usize) {
    let mut bad = 0;
    let mut out: Vec<MapLine> = content
        .lines()
        .filter_map(|l| match parse_line(l) {
            Some(m) => Some(m),
            None => {
                if !l.trim().is_empty() {
                    bad += 1;
                }
                None
            }
        })
        .filter(|m| m.executable)
        .collect();
    out.sort_by_key(|m| m.start);
    (out, bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAPS: &str = "\
55d0c6a00000-55d0c6a02000 r--p 00000000 08:01 1311 /usr/bin/burn
55d0c6a02000-55d0c6a03000 r-xp 00002000 08:01 1311 /usr/bin/burn
7f1e2a028000-7f1e2a1bd000 r-xp 00028000 fd:00 40917 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1e2a300000-7f1e2a301000 r-xp 00000000 08:01 99 /tmp/my lib.so (deleted)
7ffd1d5f2000-7ffd1d5f4000 r-xp 00000000 00:00 0                          [vdso]
7ffd1d500000-7ffd1d521000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn parses_exec_mappings() {
        let (m, bad) = executable_mappings(MAPS);
        assert_eq!(bad, 0);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].path, "/usr/bin/burn");
        assert_eq!(m[0].offset, 0x2000);
        assert!(m[0].is_file());
        assert_eq!((m[1].dev_major, m[1].dev_minor), (0xfd, 0));
        assert_eq!(m[2].path, "/tmp/my lib.so (deleted)");
        assert!(m[2].deleted());
        assert_eq!(m[3].path, "[vdso]");
        assert!(!m[3].is_file());
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(parse_line("zz-10 r-xp 0 0:0 0"), None);
        assert_eq!(parse_line("20-10 r-xp 0 0:0 0"), None);
        assert_eq!(parse_line("10-20 r-x 0 0:0 0"), None);
        assert_eq!(parse_line("10-20 r-xp 0 00 0"), None);
        assert!(parse_line("10-20 r-xp 0 0:0 0").is_some());
    }

    #[test]
    fn own_maps_parse() {
        let s = std::fs::read_to_string("/proc/self/maps").unwrap();
        let (m, bad) = executable_mappings(&s);
        assert_eq!(bad, 0);
        assert!(m.iter().any(|m| m.is_file()));
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,300}") {
            let _ = parse_line(&s);
            let _ = executable_mappings(&s);
        }

        #[test]
        fn roundtrip(start in 0u64..u64::MAX/2, len in 0u64..1<<40, off in any::<u32>(), ino in any::<u32>(), x in any::<bool>(), path in "(/[a-z ]{1,10}){0,3}") {
            let line = format!("{:x}-{:x} r{}{}p {:08x} fd:01 {} {}", start, start + len, "-", if x {"x"} else {"-"}, off, ino, path);
            let m = parse_line(&line).unwrap();
            prop_assert_eq!(m.start, start);
            prop_assert_eq!(m.end, start + len);
            prop_assert_eq!(m.executable, x);
            prop_assert_eq!(m.offset, off as u64);
            prop_assert_eq!(m.inode, ino as u64);
            prop_assert_eq!(m.path, path.trim_start().to_string());
        }
    }
}
