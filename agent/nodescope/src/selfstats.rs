//! The agent's own process metrics and build info.

use std::path::Path;

use nodescope_model::selfmetrics::{Gauge, SelfMetrics};
use nodescope_model::{MetricFamily, MetricType};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub struct ProcessStats {
    cpu: Gauge,
    rss: Gauge,
    threads: Gauge,
}

impl ProcessStats {
    pub fn register(metrics: &SelfMetrics) -> Self {
        metrics
            .gauge(
                "nodescope_build_info",
                "A metric with a constant '1' value labelled by version and platform.",
                &[
                    ("version", VERSION),
                    ("arch", std::env::consts::ARCH),
                    ("os", std::env::consts::OS),
                ],
            )
            .set(1.0);
        metrics
            .gauge(
                "nodescope_start_time_seconds",
                "Start time of the agent since the Unix epoch, in seconds.",
                &[],
            )
            .set(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64(),
            );
        ProcessStats {
            // A gauge holding a monotonic value: rendered as a counter by `families()`.
            cpu: Gauge::default(),
            rss: metrics.gauge(
                "nodescope_process_resident_memory_bytes",
                "Resident set size of the agent process.",
                &[],
            ),
            threads: metrics.gauge(
                "nodescope_process_threads",
                "Threads in the agent process.",
                &[],
            ),
        }
    }

    /// Refreshes from getrusage(2) and /proc/self/statm. Cheap: two syscalls and one read.
    pub fn refresh(&self) {
        if let Some(cpu) = process_cpu_seconds() {
            self.cpu.set(cpu);
        }
        if let Some(rss) = read_rss_bytes(Path::new("/proc/self/statm")) {
            self.rss.set(rss as f64);
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/task") {
            self.threads.set(entries.count() as f64);
        }
    }

    /// The CPU counter as a family (kept out of the gauge registry so it is typed counter).
    pub fn families(&self) -> MetricFamily {
        MetricFamily::single(
            "nodescope_process_cpu_seconds_total",
            "Total user and system CPU time spent by the agent, in seconds.",
            MetricType::Counter,
            self.cpu.get(),
        )
    }
}

pub fn process_cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage writes into the zeroed struct we pass; RUSAGE_SELF is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return None;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(tv(ru.ru_utime) + tv(ru.ru_stime))
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Parses /proc/self/statm: "size resident shared text lib data dt" in pages.
pub fn parse_statm_rss(content: &str) -> Option<u64> {
    content
        .split_ascii_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|pages| pages.saturating_mul(page_size()))
}

fn read_rss_bytes(path: &Path) -> Option<u64> {
    parse_statm_rss(&std::fs::read_to_string(path).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statm_parsing() {
        assert_eq!(
            parse_statm_rss("100 25 3 1 0 40 0\n"),
            Some(25 * page_size())
        );
        assert_eq!(parse_statm_rss(""), None);
        assert_eq!(parse_statm_rss("1 x"), None);
    }

    #[test]
    fn own_rss_and_cpu_are_readable() {
        assert!(read_rss_bytes(Path::new("/proc/self/statm")).unwrap() > 0);
        assert!(process_cpu_seconds().unwrap() >= 0.0);
    }

    proptest::proptest! {
        #[test]
        fn statm_never_panics(s in ".{0,100}") {
            let _ = parse_statm_rss(&s);
        }
    }
}
