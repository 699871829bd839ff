//! JIT and interpreter symbols from perf maps (`/tmp/perf-<pid>.map`: one
//! `START SIZE name` line per code region, hex addresses), as written by Node
//! `--perf-basic-prof`, JVM perf-map agents and Python 3.12+ `-X perf`. The file is read
//! through the process's mount namespace (`/proc/<pid>/root/tmp/perf-<nspid>.map`, with
//! the pid as the process sees it), bounded in size and entries, and re-read when it
//! grew (JITs append) at most every few seconds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest perf map read (bytes); a larger file is read up to this size.
pub const MAX_BYTES: u64 = 64 << 20;
/// Entries kept per process at most.
pub const MAX_ENTRIES: usize = 1_000_000;
/// A grown map is re-read at most this often.
pub const REREAD_AFTER: Duration = Duration::from_secs(5);

/// A parsed perf map: (start, end, name), sorted by start.
#[derive(Debug, Default)]
pub struct PerfMap {
    entries: Vec<(u64, u64, Arc<str>)>,
    size: u64,
    read_at: Option<Instant>,
}

/// Parses perf-map text; malformed lines are skipped (their count is returned).
pub fn parse(text: &str, max_entries: usize) -> (Vec<(u64, u64, Arc<str>)>, usize) {
    let mut bad = 0;
    let mut out = Vec::new();
    for line in text.lines() {
        if out.len() >= max_entries {
            break;
        }
        let mut it = line.splitn(3, ' ');
        let (Some(a), Some(s), Some(name)) = (it.next(), it.next(), it.next()) else {
            if !line.trim().is_empty() {
                bad += 1;
            }
            continue;
        };
        let parse_hex = |v: &str| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok();
        match (parse_hex(a), parse_hex(s)) {
            (Some(start), Some(size)) if size > 0 && !name.is_empty() => {
                out.push((
                    start,
                    start.saturating_add(size),
                    Arc::from(name.trim_end()),
                ));
            }
            _ => bad += 1,
        }
    }
    // Stable: a later entry for the same start (re-JITted code) wins in lookups.
    out.sort_by_key(|e| e.0);
    (out, bad)
}

impl PerfMap {
    /// The name of the code region containing `addr`.
    pub fn lookup(&self, addr: u64) -> Option<Arc<str>> {
        let idx = self.entries.partition_point(|e| e.0 <= addr);
        // Walk back over a few overlapping regions (re-JITted code).
        for e in self.entries[..idx].iter().rev().take(8) {
            if addr < e.1 {
                return Some(e.2.clone());
            }
        }
        None
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Re-reads `path` if it changed size and was not read in the last [`REREAD_AFTER`].
    pub fn refresh(&mut self, path: &Path) {
        if self.read_at.is_some_and(|t| t.elapsed() < REREAD_AFTER) {
            return;
        }
        self.read_at = Some(Instant::now());
        let Ok(md) = std::fs::metadata(path) else {
            return;
        };
        if md.len() == self.size {
            return;
        }
        use std::io::Read;
        let mut buf = Vec::new();
        if let Ok(f) = std::fs::File::open(path) {
            let _ = f.take(MAX_BYTES).read_to_end(&mut buf);
        }
        let text = String::from_utf8_lossy(&buf);
        self.entries = parse(&text, MAX_ENTRIES).0;
        self.size = md.len();
    }
}

/// `/proc/<pid>/root/tmp/perf-<nspid>.map`, where nspid is the pid in the process's own
/// pid namespace (the last `NSpid:` value in its status file).
pub fn path_for(proc_root: &Path, pid: u32) -> PathBuf {
    let dir = proc_root.join(pid.to_string());
    let nspid = std::fs::read_to_string(dir.join("status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|v| v.split_whitespace().last().map(str::to_string))
        })
        .unwrap_or_else(|| pid.to_string());
    dir.join("root")
        .join("tmp")
        .join(format!("perf-{nspid}.map"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_looks_up() {
        let (e, bad) = parse(
            "7f0000001000 40 LazyCompile:*spin /tmp/a.js:1\n\
             0x7f0000002000 10 Builtin:Foo\nnonsense\n7f0000001010 8 inner\n",
            100,
        );
        assert_eq!(bad, 1);
        let m = PerfMap {
            entries: e,
            size: 1,
            read_at: None,
        };
        assert_eq!(
            m.lookup(0x7f0000001004).as_deref(),
            Some("LazyCompile:*spin /tmp/a.js:1")
        );
        assert_eq!(m.lookup(0x7f0000001012).as_deref(), Some("inner"));
        assert_eq!(m.lookup(0x7f0000002008).as_deref(), Some("Builtin:Foo"));
        assert_eq!(m.lookup(0x7f0000002010), None);
        assert_eq!(m.lookup(1), None);
    }

    #[test]
    fn reads_through_the_process_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("42/root/tmp")).unwrap();
        std::fs::write(root.join("42/status"), "Name:\tnode\nNSpid:\t42\t7\n").unwrap();
        let p = path_for(root, 42);
        assert!(p.ends_with("42/root/tmp/perf-7.map"), "{}", p.display());
        std::fs::write(&p, "1000 10 f\n").unwrap();
        let mut m = PerfMap::default();
        m.refresh(&p);
        assert_eq!(m.lookup(0x1008).as_deref(), Some("f"));
        assert_eq!(m.len(), 1);
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,300}") {
            let _ = parse(&s, 1000);
        }
    }
}
