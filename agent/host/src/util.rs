//! Small shared helpers: reading a file into a reused buffer, number parsing, symlinks
//! resolved inside the host root.

use std::borrow::Cow;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use nodescope_model::CollectError;
use parking_lot::Mutex;

/// Upper bound on how much of one `/proc` or `/sys` file is read. The largest file read
/// here (`/proc/1/mountinfo` on a busy Kubernetes node) is well under this; anything
/// larger is truncated at a line boundary by the parsers simply not seeing the rest.
pub(crate) const MAX_FILE_BYTES: u64 = 16 << 20;

/// A reusable read buffer: collectors keep one per file so a scrape allocates nothing for
/// reading. The agent never runs two collects of one collector at once, so the lock is
/// uncontended.
///
/// It also keeps the last few procfs and sysfs files it read open, and reads them again
/// with `pread` at offset 0, which makes the kernel generate their content anew: one
/// syscall instead of open + read + read + close, and no path walk (an open of a
/// `/proc/1/net/...` file costs ~4 µs here, more than reading it). Only procfs and sysfs
/// (checked with `fstatfs` at open): a regular file (a textfile collector's `.prom`,
/// `os-release`) is replaced by rename, and a kept descriptor would go on reading the old
/// one. At most [`Buf::KEEP_OPEN`] per buffer; one not read for [`Buf::IDLE_CLOSE`] is
/// closed; one whose object went away (ENODEV, ENOENT) is reopened by path.
#[derive(Debug, Default)]
pub(crate) struct Buf(Mutex<BufInner>);

#[derive(Debug, Default)]
struct BufInner {
    data: Vec<u8>,
    open: Vec<(PathBuf, std::fs::File, std::time::Instant)>,
}

impl Buf {
    pub(crate) const KEEP_OPEN: usize = 4;
    pub(crate) const IDLE_CLOSE: std::time::Duration = std::time::Duration::from_secs(600);

    pub(crate) fn new() -> Self {
        Buf(Mutex::new(BufInner {
            data: Vec::with_capacity(4096),
            open: Vec::new(),
        }))
    }

    /// Reads `path` into the buffer and runs `f` on its text (lossily decoded when it is
    /// not UTF-8, which only mount paths can be).
    pub(crate) fn with_file<T>(
        &self,
        path: &Path,
        f: impl FnOnce(&str) -> Result<T, CollectError>,
    ) -> Result<T, CollectError> {
        let mut inner = self.0.lock();
        let BufInner { data, open } = &mut *inner;
        read_kept(open, path, data)?;
        let text = text(data);
        f(&text)
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        self.0.lock().open.len()
    }
}

fn read_kept(
    open: &mut Vec<(PathBuf, std::fs::File, std::time::Instant)>,
    path: &Path,
    data: &mut Vec<u8>,
) -> Result<(), CollectError> {
    let now = std::time::Instant::now();
    open.retain(|(_, _, used)| now.duration_since(*used) < Buf::IDLE_CLOSE);
    if let Some(i) = open.iter().position(|(p, _, _)| p == path) {
        match pread_all(&open[i].1, data) {
            Ok(()) => {
                open[i].2 = now;
                return Ok(());
            }
            // The object was removed (maybe recreated): open the path again.
            Err(e) if object_gone(&e) => {
                open.swap_remove(i);
            }
            Err(e) => return Err(io_err(path, e)),
        }
    }
    let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    if open.len() < Buf::KEEP_OPEN && regenerates_at_zero(&file) {
        pread_all(&file, data).map_err(|e| io_err(path, e))?;
        open.push((path.to_path_buf(), file, now));
        return Ok(());
    }
    read_whole(file, path, data)
}

/// ENODEV / ENOENT on a kept descriptor: its sysfs or procfs object was removed.
fn object_gone(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(19) | Some(2))
}

/// procfs and sysfs files produce their content anew when read from offset 0.
fn regenerates_at_zero(file: &std::fs::File) -> bool {
    const PROC_SUPER_MAGIC: u64 = 0x9fa0;
    const SYSFS_MAGIC: u64 = 0x6265_6572;
    rustix::fs::fstatfs(file)
        .map(|st| matches!(st.f_type as u64, PROC_SUPER_MAGIC | SYSFS_MAGIC))
        .unwrap_or(false)
}

/// Reads a file whole (up to [`MAX_FILE_BYTES`]) with `pread` from offset 0.
pub(crate) fn pread_all(f: &std::fs::File, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    buf.clear();
    let mut off = 0u64;
    loop {
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(4096);
        }
        let len = buf.len();
        buf.resize(buf.capacity(), 0);
        match f.read_at(&mut buf[len..], off) {
            Ok(0) => {
                buf.truncate(len);
                return Ok(());
            }
            Ok(n) => {
                buf.truncate(len + n);
                off += n as u64;
                if off >= MAX_FILE_BYTES {
                    return Ok(());
                }
            }
            Err(e) => {
                buf.truncate(len);
                return Err(e);
            }
        }
    }
}

pub(crate) fn read_into(path: &Path, buf: &mut Vec<u8>) -> Result<(), CollectError> {
    let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    read_whole(file, path, buf)
}

/// Reads an open file from its current position to the end (at most [`MAX_FILE_BYTES`]).
fn read_whole(file: std::fs::File, path: &Path, buf: &mut Vec<u8>) -> Result<(), CollectError> {
    buf.clear();
    file.take(MAX_FILE_BYTES)
        .read_to_end(buf)
        .map_err(|e| io_err(path, e))?;
    Ok(())
}

/// Like [`CollectError::io`], but also treats "operation not supported" (PSI disabled at
/// boot gives EOPNOTSUPP on read) as the source being unavailable.
pub(crate) fn io_err(path: &Path, e: std::io::Error) -> CollectError {
    if e.raw_os_error() == Some(95) {
        return CollectError::Unavailable {
            what: path.display().to_string(),
            reason: "not supported by this kernel".into(),
        };
    }
    CollectError::io(path, e)
}

pub(crate) fn read_small(path: &Path) -> Result<String, CollectError> {
    let mut buf = Vec::with_capacity(64);
    read_into(path, &mut buf)?;
    Ok(text(&buf).into_owned())
}

pub(crate) fn text(buf: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(buf) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(buf),
    }
}

/// Parses a decimal number the way node_exporter does (as a float), taking the fast
/// integer path for the common case.
pub(crate) fn num(s: &str) -> Option<f64> {
    if let Ok(v) = s.parse::<u64>() {
        return Some(v as f64);
    }
    if let Ok(v) = s.parse::<i64>() {
        return Some(v as f64);
    }
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() => Some(v),
        _ => None,
    }
}

/// Resolves `rel` (an absolute path as the host sees it, e.g. `/etc/localtime`) inside
/// `root`, following symlinks *as the host would*: an absolute link target is taken
/// relative to `root`, not to the agent's own filesystem. At most 16 links are followed.
pub(crate) fn resolve_in_root(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut pending: Vec<PathBuf> = vec![rel.to_path_buf()];
    let mut links = 0;
    let mut current = PathBuf::from("/");
    while let Some(p) = pending.pop() {
        let mut comps: Vec<Component> = p.components().collect();
        comps.reverse();
        if p.is_absolute() {
            current = PathBuf::from("/");
        }
        while let Some(c) = comps.pop() {
            match c {
                Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
                Component::ParentDir => {
                    current.pop();
                }
                Component::Normal(name) => {
                    let candidate = current.join(name);
                    let on_disk = root.join(candidate.strip_prefix("/").ok()?);
                    match std::fs::symlink_metadata(&on_disk) {
                        Ok(m) if m.file_type().is_symlink() => {
                            links += 1;
                            if links > 16 {
                                return None;
                            }
                            let target = std::fs::read_link(&on_disk).ok()?;
                            let rest: PathBuf = comps.iter().rev().collect();
                            let mut next = target;
                            if !rest.as_os_str().is_empty() {
                                next = next.join(rest);
                            }
                            pending.push(next);
                            comps.clear();
                            break;
                        }
                        Ok(_) => current = candidate,
                        Err(_) => return None,
                    }
                }
            }
        }
    }
    Some(root.join(current.strip_prefix("/").ok()?))
}

/// True when `s` can be part of a Prometheus metric name (`[a-zA-Z0-9_:]`, non-empty).
/// Names built from file content (meminfo keys, vmstat keys, netstat fields) are checked
/// with it so garbage input can never produce an invalid exposition.
pub(crate) fn is_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// Reads a small sysfs attribute and trims surrounding whitespace, as procfs'
/// `util.SysReadFile` does. `None` when the file cannot be read (missing, permission,
/// EINVAL from a driver that does not implement the attribute).
pub(crate) fn sys_read(path: &Path) -> Option<String> {
    let mut buf = Vec::with_capacity(64);
    read_into(path, &mut buf).ok()?;
    Some(text(&buf).trim().to_string())
}

/// Parses an integer as Go's `strconv.ParseInt(s, 0, 64)` does (procfs' `PInt64`):
/// `0x`/`0X` hex, `0o`/`0O` or a leading `0` octal, `0b` binary, an optional sign, and `_`
/// separators only after a base prefix.
pub(crate) fn go_int(s: &str) -> Option<i64> {
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = if let Some(d) = body.strip_prefix("0x").or(body.strip_prefix("0X")) {
        (16, d)
    } else if let Some(d) = body.strip_prefix("0b").or(body.strip_prefix("0B")) {
        (2, d)
    } else if let Some(d) = body.strip_prefix("0o").or(body.strip_prefix("0O")) {
        (8, d)
    } else if body.len() > 1 && body.starts_with('0') {
        (8, &body[1..])
    } else {
        (10, body)
    };
    if digits.is_empty() || digits.starts_with(['+', '-']) {
        return None;
    }
    let cleaned: Cow<'_, str> = if radix != 10 && digits.contains('_') {
        Cow::Owned(digits.replace('_', ""))
    } else {
        Cow::Borrowed(digits)
    };
    let mag = u64::from_str_radix(&cleaned, radix).ok()?;
    if neg {
        if mag > i64::MAX as u64 + 1 {
            return None;
        }
        Some((mag as i64).wrapping_neg())
    } else {
        i64::try_from(mag).ok()
    }
}

/// Names of the entries of `dir` (sorted), or an empty list when it cannot be read.
pub(crate) fn dir_names(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if let Some(n) = e.file_name().to_str() {
            out.push(n.to_string());
        }
    }
    out.sort();
    Ok(out)
}

/// Entries of `dir` named `<prefix><digit>...` (Go's `filepath.Glob(dir/prefix[0-9]*)`),
/// sorted by name, with the part after `prefix`. A missing or unreadable directory gives an
/// empty list (Glob ignores I/O errors).
pub(crate) fn glob_digit(dir: &Path, prefix: &str) -> Vec<(PathBuf, String)> {
    let mut out: Vec<(PathBuf, String)> = dir_names(dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| {
            let rest = n.strip_prefix(prefix)?;
            rest.starts_with(|c: char| c.is_ascii_digit())
                .then(|| (dir.join(&n), rest.to_string()))
        })
        .collect();
    out.sort();
    out
}

/// procfs' `util.ReadUintFromFile`: the trimmed content as a decimal `u64`.
pub(crate) fn read_uint(path: &Path) -> Result<u64, CollectError> {
    let t = read_small(path)?;
    t.trim()
        .parse::<u64>()
        .map_err(|_| CollectError::parse(path, format!("not an unsigned integer: {:?}", t.trim())))
}

/// procfs' `util.ReadIntFromFile`: the trimmed content as a decimal `i64`.
pub(crate) fn read_int(path: &Path) -> Result<i64, CollectError> {
    let t = read_small(path)?;
    t.trim()
        .parse::<i64>()
        .map_err(|_| CollectError::parse(path, format!("not an integer: {:?}", t.trim())))
}

/// A procfs-core error as text for the user. Its parse failures (`InternalError`, also
/// nested in `Other`) print the crate's source path on the build machine and ask for a
/// procfs bug report, which says nothing about the file that failed.
pub(crate) fn proc_error_text(e: &procfs_core::ProcError) -> String {
    match e {
        procfs_core::ProcError::InternalError(_) => {
            "malformed content: no line could be parsed".into()
        }
        procfs_core::ProcError::Other(s) if s.contains(".rs:") || s.contains("procfs bug") => {
            "malformed content: no line could be parsed".into()
        }
        other => other.to_string(),
    }
}

/// True for errors procfs treats as "attribute absent" (not found, permission denied).
pub(crate) fn absent(e: &CollectError) -> bool {
    match e {
        CollectError::Unavailable { .. } => true,
        CollectError::Io { source, .. } => source.kind() == std::io::ErrorKind::PermissionDenied,
        _ => false,
    }
}

/// node_exporter's `SanitizeMetricName`: every character outside `[a-zA-Z0-9_]` becomes
/// `_`.
pub(crate) fn sanitize_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Files of `/sys` or `/proc` kept open between collects and re-read with `pread` from
/// offset 0 (kernfs and procfs regenerate the content): one syscall instead of
/// open+fstat+read+close, which is most of the cost of a small attribute on this kind of
/// machine. Files not touched in a collect are closed at its end; at most `cap` are open
/// (past that, files are read the plain way and counted); a missing file is remembered as
/// missing until it is not touched for a collect.
#[derive(Debug)]
pub(crate) struct OpenFiles {
    map: std::collections::HashMap<
        PathBuf,
        (Option<std::fs::File>, u64),
        foldhash::fast::RandomState,
    >,
    gen: u64,
    cap: usize,
    pub(crate) uncached: u64,
}

impl OpenFiles {
    pub(crate) fn new(cap: usize) -> Self {
        OpenFiles {
            map: Default::default(),
            gen: 0,
            cap,
            uncached: 0,
        }
    }

    /// Starts a collect.
    pub(crate) fn begin(&mut self) {
        self.gen += 1;
    }

    /// Ends a collect: closes the files it did not read.
    pub(crate) fn end(&mut self) {
        let g = self.gen;
        self.map.retain(|_, (_, used)| *used == g);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Reads `p` whole into `buf`.
    pub(crate) fn read(&mut self, p: &Path, buf: &mut Vec<u8>) -> std::io::Result<()> {
        let gen = self.gen;
        if let Some((f, used)) = self.map.get_mut(p) {
            *used = gen;
            match f {
                None => return Err(std::io::ErrorKind::NotFound.into()),
                Some(file) => match pread_all(file, buf) {
                    // The object was removed (maybe recreated): reopen.
                    Err(e) if object_gone(&e) => {
                        self.map.remove(p);
                    }
                    r => return r,
                },
            }
        }
        match std::fs::File::open(p) {
            Ok(file) => {
                let r = pread_all(&file, buf);
                if self.map.len() < self.cap {
                    self.map.insert(p.to_path_buf(), (Some(file), gen));
                } else {
                    self.uncached += 1;
                }
                r
            }
            Err(e) => {
                if e.kind() == std::io::ErrorKind::NotFound && self.map.len() < self.cap {
                    self.map.insert(p.to_path_buf(), (None, gen));
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rchar(text: &str) -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    }

    #[test]
    fn buf_keeps_proc_files_open_and_they_regenerate() {
        let b = Buf::new();
        let p = Path::new("/proc/self/io");
        let first = b.with_file(p, |t| Ok(rchar(t))).unwrap();
        assert_eq!(b.kept(), 1);
        // rchar counts this process's reads, the first one included: a kept descriptor
        // read at offset 0 must show the new value, not the old text.
        let second = b.with_file(p, |t| Ok(rchar(t))).unwrap();
        assert!(second > first, "{second} <= {first}");
        assert_eq!(b.kept(), 1);
    }

    #[test]
    fn buf_keeps_at_most_keep_open_and_reads_the_rest_plainly() {
        let b = Buf::new();
        let paths = [
            "/proc/self/stat",
            "/proc/self/statm",
            "/proc/self/io",
            "/proc/self/status",
            "/proc/self/limits",
            "/proc/self/cmdline",
        ];
        for _ in 0..2 {
            for p in paths {
                let plain = std::fs::read(p).unwrap();
                let got = b.with_file(Path::new(p), |t| Ok(t.len())).unwrap();
                assert!(
                    got > 0 && got.abs_diff(plain.len()) < 64,
                    "{p}: {got} vs {}",
                    plain.len()
                );
            }
        }
        assert_eq!(b.kept(), Buf::KEEP_OPEN);
    }

    #[test]
    fn buf_never_keeps_regular_files_replaced_by_rename() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.prom");
        std::fs::write(&p, "old\n").unwrap();
        let b = Buf::new();
        assert_eq!(b.with_file(&p, |t| Ok(t.to_string())).unwrap(), "old\n");
        assert_eq!(b.kept(), 0);
        let tmp = dir.path().join("a.prom.tmp");
        std::fs::write(&tmp, "new\n").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        assert_eq!(b.with_file(&p, |t| Ok(t.to_string())).unwrap(), "new\n");
    }

    #[test]
    fn open_files_reread_close_and_forget() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, "1\n").unwrap();
        let mut f = OpenFiles::new(2);
        let mut buf = Vec::new();
        f.begin();
        f.read(&a, &mut buf).unwrap();
        assert_eq!(buf, b"1\n");
        assert!(f.read(&dir.path().join("missing"), &mut buf).is_err());
        assert_eq!(f.len(), 2);
        f.end();
        std::fs::write(&a, "22\n").unwrap();
        f.begin();
        f.read(&a, &mut buf).unwrap();
        assert_eq!(buf, b"22\n", "re-read through the open descriptor");
        f.end();
        assert_eq!(f.len(), 1, "the missing file was not touched: forgotten");
        f.begin();
        let b = dir.path().join("b");
        let c = dir.path().join("c");
        std::fs::write(&b, "b").unwrap();
        std::fs::write(&c, "c").unwrap();
        f.read(&a, &mut buf).unwrap();
        f.read(&b, &mut buf).unwrap();
        f.read(&c, &mut buf).unwrap();
        assert_eq!(buf, b"c");
        assert_eq!(f.len(), 2);
        assert_eq!(f.uncached, 1);
    }

    #[test]
    fn go_integers() {
        assert_eq!(go_int("0x1003"), Some(4099));
        assert_eq!(go_int("010"), Some(8));
        assert_eq!(go_int("0"), Some(0));
        assert_eq!(go_int("-1"), Some(-1));
        assert_eq!(go_int("1500"), Some(1500));
        assert_eq!(go_int("0b11"), Some(3));
        assert_eq!(go_int("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(go_int("9223372036854775808"), None);
        assert_eq!(go_int("0x"), None);
        assert_eq!(go_int("--1"), None);
        assert_eq!(go_int(""), None);
        assert_eq!(go_int("08"), None);
    }

    proptest::proptest! {
        #[test]
        fn go_int_never_panics(s in "\\PC*") {
            let _ = go_int(&s);
        }

        #[test]
        fn go_int_round_trips_decimal(v in proptest::num::i64::ANY) {
            proptest::prop_assert_eq!(go_int(&v.to_string()), Some(v));
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(num("12"), Some(12.0));
        assert_eq!(num("-3"), Some(-3.0));
        assert_eq!(num("0.25"), Some(0.25));
        assert_eq!(num("x"), None);
        assert_eq!(num("NaN"), None);
        assert_eq!(num(""), None);
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/share/zoneinfo/Europe")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("usr/share/zoneinfo/Europe/Berlin"), b"x").unwrap();
        std::os::unix::fs::symlink(
            "/usr/share/zoneinfo/Europe/Berlin",
            root.join("etc/localtime"),
        )
        .unwrap();
        std::os::unix::fs::symlink("../usr/share/zoneinfo", root.join("etc/zi")).unwrap();
        assert_eq!(
            resolve_in_root(root, Path::new("/etc/localtime")).unwrap(),
            root.join("usr/share/zoneinfo/Europe/Berlin")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/etc/zi/Europe/Berlin")).unwrap(),
            root.join("usr/share/zoneinfo/Europe/Berlin")
        );
        assert!(resolve_in_root(root, Path::new("/etc/missing")).is_none());
        std::os::unix::fs::symlink("/etc/loop", root.join("etc/loop")).unwrap();
        assert!(resolve_in_root(root, Path::new("/etc/loop")).is_none());
    }
}
