//! `process`: the standard `process_*` metrics every Prometheus client library exports for
//! its own process (client_golang's process collector, as node_exporter 1.5 shows them),
//! here for the agent itself: CPU, resident and virtual memory, address-space limit, open
//! and maximum file descriptors, start time.
//!
//! Reads the agent's own `/proc/self/{stat,limits,fd}` (never through the host root: it
//! describes the agent process, wherever it runs) and the boot time from `/proc/stat`.

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::{read_small, Buf};

/// Fields of `/proc/<pid>/stat` the process metrics need.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcStatFields {
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    pub starttime_ticks: u64,
    pub vsize_bytes: u64,
    pub rss_pages: i64,
}

/// Parses `/proc/<pid>/stat`; the command name (field 2) may contain spaces and
/// parentheses, so fields are counted after its last `)`.
pub fn parse_pid_stat(text: &str) -> Option<ProcStatFields> {
    let after = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_ascii_whitespace().collect();
    // after ')' : state(3) ppid(4) ... utime(14) stime(15) ... starttime(22) vsize(23) rss(24)
    let at = |n: usize| f.get(n - 3).copied();
    Some(ProcStatFields {
        utime_ticks: at(14)?.parse().ok()?,
        stime_ticks: at(15)?.parse().ok()?,
        starttime_ticks: at(22)?.parse().ok()?,
        vsize_bytes: at(23)?.parse().ok()?,
        rss_pages: at(24)?.parse().ok()?,
    })
}

/// Soft limits of `/proc/<pid>/limits` for `Max open files` and `Max address space`;
/// `unlimited` is `u64::MAX` (procfs' -1 read as unsigned, as client_golang exports it).
pub fn parse_limits(text: &str) -> (Option<u64>, Option<u64>) {
    let soft = |line: &str, key: &str| -> Option<u64> {
        let rest = line.strip_prefix(key)?;
        let v = rest.split_ascii_whitespace().next()?;
        if v == "unlimited" {
            Some(u64::MAX)
        } else {
            v.parse().ok()
        }
    };
    let (mut files, mut space) = (None, None);
    for line in text.lines() {
        if let Some(v) = soft(line, "Max open files") {
            files = Some(v);
        }
        if let Some(v) = soft(line, "Max address space") {
            space = Some(v);
        }
    }
    (files, space)
}

/// `btime` of `/proc/stat`.
pub fn parse_btime(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The agent's own `process_*` metrics.
pub struct ProcessCollector {
    proc_self: PathBuf,
    proc_stat: PathBuf,
    buf: Buf,
    ticks: f64,
    page: f64,
    /// Boot time: constant, read from `/proc/stat` (a large file) once.
    btime: std::sync::OnceLock<u64>,
}

impl ProcessCollector {
    /// Reads `/proc/self`.
    pub fn new() -> Self {
        Self::for_proc(PathBuf::from("/proc/self"), PathBuf::from("/proc/stat"))
    }

    /// Reads another process directory (tests).
    pub fn for_proc(proc_pid: PathBuf, proc_stat: PathBuf) -> Self {
        ProcessCollector {
            proc_self: proc_pid,
            proc_stat,
            buf: Buf::new(),
            ticks: rustix::param::clock_ticks_per_second() as f64,
            page: rustix::param::page_size() as f64,
            btime: std::sync::OnceLock::new(),
        }
    }
}

/// Open descriptors of a process, from its `/proc/<pid>/fd`. Since Linux 6.2 the
/// directory's `st_size` is that count: one `statx` instead of listing the directory (a
/// getdents and a dentry per descriptor, ~1.5 % of the agent's CPU under scrape load).
/// Older kernels report 0 there, and get the listing.
fn count_open_fds(fd_dir: &std::path::Path) -> Result<usize, CollectError> {
    let meta = std::fs::metadata(fd_dir).map_err(|e| CollectError::io(fd_dir, e))?;
    if meta.len() > 0 {
        return Ok(meta.len() as usize);
    }
    Ok(std::fs::read_dir(fd_dir)
        .map_err(|e| CollectError::io(fd_dir, e))?
        .count())
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for ProcessCollector {
    fn name(&self) -> &'static str {
        "process"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let stat_path = self.proc_self.join("stat");
        let st = self.buf.with_file(&stat_path, |t| {
            parse_pid_stat(t).ok_or_else(|| CollectError::parse(&stat_path, "malformed stat line"))
        })?;
        let btime = match self.btime.get() {
            Some(b) => *b,
            None => {
                let btime_path = &self.proc_stat;
                let b = self.buf.with_file(btime_path, |t| {
                    parse_btime(t).ok_or_else(|| CollectError::parse(btime_path, "no btime line"))
                })?;
                *self.btime.get_or_init(|| b)
            }
        };
        let limits_path = self.proc_self.join("limits");
        let (max_fds, max_as) = parse_limits(&read_small(&limits_path)?);
        let fd_dir = self.proc_self.join("fd");
        let open_fds = count_open_fds(&fd_dir)?;
        let g = MetricType::Gauge;
        let mut out = vec![
            MetricFamily::single(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                MetricType::Counter,
                (st.utime_ticks + st.stime_ticks) as f64 / self.ticks,
            ),
            MetricFamily::single(
                "process_open_fds",
                "Number of open file descriptors.",
                g,
                open_fds as f64,
            ),
            MetricFamily::single(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                g,
                st.rss_pages as f64 * self.page,
            ),
            MetricFamily::single(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                g,
                btime as f64 + st.starttime_ticks as f64 / self.ticks,
            ),
            MetricFamily::single(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                g,
                st.vsize_bytes as f64,
            ),
        ];
        if let Some(v) = max_fds {
            out.push(MetricFamily::single(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                g,
                v as f64,
            ));
        }
        if let Some(v) = max_as {
            out.push(MetricFamily::single(
                "process_virtual_memory_max_bytes",
                "Maximum amount of virtual memory available in bytes.",
                g,
                v as f64,
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil::value;
    use proptest::prelude::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let t = "1234 (a) b (c)) S 1 1 1 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 9000 123456789 2000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        let s = parse_pid_stat(t).unwrap();
        assert_eq!(s.utime_ticks, 250);
        assert_eq!(s.stime_ticks, 50);
        assert_eq!(s.starttime_ticks, 9000);
        assert_eq!(s.vsize_bytes, 123456789);
        assert_eq!(s.rss_pages, 2000);
    }

    #[test]
    fn parses_limits() {
        let t = "Limit                     Soft Limit           Hard Limit           Units\n\
                 Max open files            1024                 524288               files\n\
                 Max address space         unlimited            unlimited            bytes\n";
        assert_eq!(parse_limits(t), (Some(1024), Some(u64::MAX)));
    }

    #[test]
    fn own_process_agrees_with_proc() {
        let fams = ProcessCollector::new().collect().unwrap();
        let rss = value(&fams, "process_resident_memory_bytes", &[]);
        assert!(rss > 1e6, "{rss}");
        let fds = value(&fams, "process_open_fds", &[]);
        assert!(fds >= 3.0, "{fds}");
        let start = value(&fams, "process_start_time_seconds", &[]);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            start <= now + 1.0 && start > now - 3600.0,
            "{start} vs {now}"
        );
        let (soft, _) = parse_limits(&std::fs::read_to_string("/proc/self/limits").unwrap());
        assert_eq!(value(&fams, "process_max_fds", &[]), soft.unwrap() as f64);
    }

    #[test]
    fn open_fds_follow_the_descriptors_opened() {
        // Other tests of this binary open and close files meanwhile: a few tries for a
        // quiet moment, and a tolerance far below the 200 descriptors opened.
        let dir = std::path::Path::new("/proc/self/fd");
        let mut seen = Vec::new();
        for _ in 0..5 {
            let before = count_open_fds(dir).unwrap();
            let held: Vec<std::fs::File> = (0..200)
                .map(|_| std::fs::File::open("/proc/self/stat").unwrap())
                .collect();
            let during = count_open_fds(dir).unwrap();
            drop(held);
            let delta = during as i64 - before as i64;
            if (190..=210).contains(&delta) {
                return;
            }
            seen.push(delta);
        }
        panic!("open_fds moved by {seen:?} for 200 descriptors opened");
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = parse_pid_stat(&s);
            let _ = parse_limits(&s);
            let _ = parse_btime(&s);
        }
    }
}
