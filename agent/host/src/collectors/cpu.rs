//! `cpu` (node_cpu_seconds_total, node_cpu_guest_seconds_total) and `stat`
//! (context switches, interrupts, forks, procs running/blocked, boot time), both from
//! `<proc>/stat`.
//!
//! `/proc/stat` is parsed directly rather than with procfs-core's `KernelStats`: that
//! parser drops the CPU number of each `cpuN` line (so offline CPUs would shift every
//! later CPU's label) and does not read the `intr` total.

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};
use parking_lot::Mutex;

use crate::util::Buf;
use crate::HostPaths;

/// One `cpuN` line: the CPU number and up to ten tick counters in kernel order (user nice
/// system idle iowait irq softirq steal guest guest_nice).
#[derive(Clone, Debug, PartialEq)]
pub struct CpuLine {
    pub cpu: u32,
    pub ticks: Vec<u64>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcStat {
    pub cpus: Vec<CpuLine>,
    pub ctxt: Option<u64>,
    pub intr: Option<u64>,
    pub btime: Option<u64>,
    pub processes: Option<u64>,
    pub procs_running: Option<u64>,
    pub procs_blocked: Option<u64>,
}

fn first_u64(rest: &str) -> Option<u64> {
    rest.split_ascii_whitespace().next()?.parse().ok()
}

/// Parses `/proc/stat`. Malformed lines are skipped; a `cpuN` line needs at least the four
/// classic counters.
pub fn parse_proc_stat(text: &str) -> ProcStat {
    let mut out = ProcStat::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("cpu") {
            // "cpu " is the aggregate; node_exporter reports per-CPU lines only.
            let Some((num, fields)) = rest.split_once(' ') else {
                continue;
            };
            let Ok(cpu) = num.parse::<u32>() else {
                continue;
            };
            let mut ticks = Vec::with_capacity(10);
            for f in fields.split_ascii_whitespace().take(10) {
                match f.parse::<u64>() {
                    Ok(v) => ticks.push(v),
                    Err(_) => break,
                }
            }
            if ticks.len() >= 4 {
                out.cpus.push(CpuLine { cpu, ticks });
            }
        } else if let Some(rest) = line.strip_prefix("ctxt ") {
            out.ctxt = first_u64(rest);
        } else if let Some(rest) = line.strip_prefix("intr ") {
            // Only the first number (the total); the per-IRQ list that follows is long.
            out.intr = first_u64(rest);
        } else if let Some(rest) = line.strip_prefix("btime ") {
            out.btime = first_u64(rest);
        } else if let Some(rest) = line.strip_prefix("processes ") {
            out.processes = first_u64(rest);
        } else if let Some(rest) = line.strip_prefix("procs_running ") {
            out.procs_running = first_u64(rest);
        } else if let Some(rest) = line.strip_prefix("procs_blocked ") {
            out.procs_blocked = first_u64(rest);
        }
    }
    out
}

const MODES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];

/// node_exporter resets a CPU's cache when its idle time jumps back this far (CPU hotplug).
const JUMP_BACK_SECONDS: f64 = 3.0;

/// One online CPU's topology: its sysfs directory, physical package and core id.
#[derive(Clone, Debug)]
struct Topo {
    dir: PathBuf,
    package: u64,
    core: u64,
}

pub(crate) struct CpuCollector {
    path: PathBuf,
    buf: Buf,
    small: Buf,
    sys_cpu: PathBuf,
    /// CPU topology for the thermal-throttle counters, read once and re-read when the
    /// number of CPUs in `/proc/stat` changes (hotplug). `None` until first read.
    topology: Mutex<Option<(usize, Vec<Topo>)>>,
    user_hz: f64,
    /// Last reported seconds per CPU (10 fields), so counters never go backwards (the
    /// kernel's iowait can), as node_exporter's `updateCPUStats` does. Bounded by the
    /// number of CPUs the kernel reports.
    last: Mutex<Vec<(u32, [f64; 10])>>,
}

impl CpuCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        let hz = rustix::param::clock_ticks_per_second();
        CpuCollector {
            path: paths.proc.join("stat"),
            buf: Buf::new(),
            small: Buf::new(),
            sys_cpu: paths.sys.join("devices/system/cpu"),
            topology: Mutex::new(None),
            user_hz: if hz == 0 { 100.0 } else { hz as f64 },
            last: Mutex::new(Vec::new()),
        }
    }

    fn read_u64(&self, path: &std::path::Path) -> Option<u64> {
        self.small
            .with_file(path, |t| Ok(t.trim().parse::<u64>().ok()))
            .ok()
            .flatten()
    }

    fn topology(&self, cpus: &[CpuLine]) -> Vec<Topo> {
        let mut cache = self.topology.lock();
        if let Some((n, t)) = cache.as_ref() {
            if *n == cpus.len() {
                return t.clone();
            }
        }
        let mut t = Vec::with_capacity(cpus.len());
        for c in cpus {
            let dir = self.sys_cpu.join(format!("cpu{}", c.cpu));
            let (Some(package), Some(core)) = (
                self.read_u64(&dir.join("topology/physical_package_id")),
                self.read_u64(&dir.join("topology/core_id")),
            ) else {
                continue;
            };
            t.push(Topo { dir, package, core });
        }
        *cache = Some((cpus.len(), t.clone()));
        t
    }

    /// node_cpu_core_throttles_total{core,package} and node_cpu_package_throttles_total
    /// {package} from `<sys>/devices/system/cpu/cpuN/thermal_throttle/*` (Intel hardware;
    /// absent on VMs, where this costs one `stat`). Each core and package is read once.
    fn throttles(&self, cpus: &[CpuLine], out: &mut Vec<MetricFamily>) {
        let Some(first) = cpus.first() else {
            return;
        };
        if !self
            .sys_cpu
            .join(format!("cpu{}/thermal_throttle", first.cpu))
            .is_dir()
        {
            return;
        }
        let topo = self.topology(cpus);
        let mut cores: Vec<(u64, u64, u64)> = Vec::new();
        let mut packages: Vec<(u64, u64)> = Vec::new();
        for t in &topo {
            if !cores
                .iter()
                .any(|(p, c, _)| *p == t.package && *c == t.core)
            {
                if let Some(v) = self.read_u64(&t.dir.join("thermal_throttle/core_throttle_count"))
                {
                    cores.push((t.package, t.core, v));
                }
            }
            if !packages.iter().any(|(p, _)| *p == t.package) {
                if let Some(v) =
                    self.read_u64(&t.dir.join("thermal_throttle/package_throttle_count"))
                {
                    packages.push((t.package, v));
                }
            }
        }
        if !cores.is_empty() {
            let mut f = MetricFamily::new(
                "node_cpu_core_throttles_total",
                "Number of times this CPU core has been throttled.",
                MetricType::Counter,
            );
            for (p, c, v) in cores {
                f.push(
                    [("core", c.to_string()), ("package", p.to_string())],
                    v as f64,
                );
            }
            out.push(f);
        }
        if !packages.is_empty() {
            let mut f = MetricFamily::new(
                "node_cpu_package_throttles_total",
                "Number of times this CPU package has been throttled.",
                MetricType::Counter,
            );
            for (p, v) in packages {
                f.push([("package", p.to_string())], v as f64);
            }
            out.push(f);
        }
    }

    fn monotonic(&self, cpu: u32, secs: &mut [f64; 10], n: usize) {
        let mut last = self.last.lock();
        let slot = match last.iter().position(|(c, _)| *c == cpu) {
            Some(i) => i,
            None => {
                if last.len() >= 8192 {
                    return;
                }
                last.push((cpu, *secs));
                return;
            }
        };
        let prev = &mut last[slot].1;
        if prev[3] - secs[3] >= JUMP_BACK_SECONDS {
            *prev = *secs;
            return;
        }
        for i in 0..n {
            if secs[i] >= prev[i] {
                prev[i] = secs[i];
            } else {
                secs[i] = prev[i];
            }
        }
    }
}

impl Collector for CpuCollector {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let stat = self.buf.with_file(&self.path, |t| Ok(parse_proc_stat(t)))?;
        if stat.cpus.is_empty() {
            return Err(CollectError::parse(&self.path, "no cpuN lines"));
        }
        let mut seconds = MetricFamily::new(
            "node_cpu_seconds_total",
            "Seconds the CPUs spent in each mode.",
            MetricType::Counter,
        );
        let mut guest = MetricFamily::new(
            "node_cpu_guest_seconds_total",
            "Seconds the CPUs spent in guests (VMs) for each mode.",
            MetricType::Counter,
        );
        seconds.points.reserve(stat.cpus.len() * MODES.len());
        for line in &stat.cpus {
            let n = line.ticks.len().min(10);
            let mut secs = [0f64; 10];
            for (s, t) in secs.iter_mut().zip(line.ticks.iter()) {
                *s = *t as f64 / self.user_hz;
            }
            self.monotonic(line.cpu, &mut secs, n);
            let cpu = line.cpu.to_string();
            for (i, mode) in MODES.iter().enumerate().take(n) {
                seconds.push(
                    [("cpu", cpu.clone()), ("mode", (*mode).to_string())],
                    secs[i],
                );
            }
            if n >= 9 {
                guest.push(
                    [("cpu", cpu.clone()), ("mode", "user".to_string())],
                    secs[8],
                );
            }
            if n >= 10 {
                guest.push([("cpu", cpu), ("mode", "nice".to_string())], secs[9]);
            }
        }
        let mut out = vec![seconds];
        if !guest.points.is_empty() {
            out.push(guest);
        }
        self.throttles(&stat.cpus, &mut out);
        if let Some(text) = crate::util::sys_read(&self.sys_cpu.join("isolated")) {
            let mut iso = MetricFamily::new(
                "node_cpu_isolated",
                "Whether each core is isolated, information from /sys/devices/system/cpu/isolated.",
                MetricType::Gauge,
            );
            for cpu in parse_cpu_list(&text).unwrap_or_default() {
                iso.push([("cpu", cpu.to_string())], 1.0);
            }
            if !iso.points.is_empty() {
                out.push(iso);
            }
        }
        Ok(out)
    }
}

/// A kernel CPU list (`0-2,7,12-14`) as procfs' `parseIsolatedCPUs` reads it; `None` on
/// a malformed entry. Ranges are capped at 65536 CPUs (u16, as procfs).
pub fn parse_cpu_list(text: &str) -> Option<Vec<u16>> {
    let mut out = Vec::new();
    for part in text.trim_end_matches('\n').split(',') {
        if part.is_empty() {
            continue;
        }
        match part.split_once('-') {
            Some((a, b)) => {
                let a: u16 = a.parse().ok()?;
                let b: u16 = b.parse().ok()?;
                if b < a {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

pub(crate) struct StatCollector {
    path: PathBuf,
    buf: Buf,
}

impl StatCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        StatCollector {
            path: paths.proc.join("stat"),
            buf: Buf::new(),
        }
    }
}

impl Collector for StatCollector {
    fn name(&self) -> &'static str {
        "stat"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let s = self.buf.with_file(&self.path, |t| Ok(parse_proc_stat(t)))?;
        let mut out = Vec::with_capacity(6);
        let items: [(Option<u64>, &'static str, &'static str, MetricType); 6] = [
            (
                s.intr,
                "node_intr_total",
                "Total number of interrupts serviced.",
                MetricType::Counter,
            ),
            (
                s.ctxt,
                "node_context_switches_total",
                "Total number of context switches.",
                MetricType::Counter,
            ),
            (
                s.processes,
                "node_forks_total",
                "Total number of forks.",
                MetricType::Counter,
            ),
            (
                s.btime,
                "node_boot_time_seconds",
                "Node boot time, in unixtime.",
                MetricType::Gauge,
            ),
            (
                s.procs_running,
                "node_procs_running",
                "Number of processes in runnable state.",
                MetricType::Gauge,
            ),
            (
                s.procs_blocked,
                "node_procs_blocked",
                "Number of processes blocked waiting for I/O to complete.",
                MetricType::Gauge,
            ),
        ];
        for (v, name, help, kind) in items {
            if let Some(v) = v {
                out.push(MetricFamily::single(name, help, kind, v as f64));
            }
        }
        if out.is_empty() {
            return Err(CollectError::parse(
                &self.path,
                "none of ctxt, intr, btime, processes, procs_running, procs_blocked found",
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("1-2,7\n"), Some(vec![1, 2, 7]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    proptest::proptest! {
        #[test]
        fn cpu_list_garbage_never_panics(s in "\\PC*") {
            let _ = parse_cpu_list(&s);
        }
    }
    use crate::collectors::testutil::value;
    use proptest::prelude::*;

    const FIXTURE: &str = include_str!("../../tests/fixtures/proc/stat");

    #[test]
    fn parses_real_proc_stat() {
        let s = parse_proc_stat(FIXTURE);
        assert_eq!(s.cpus.len(), 2);
        assert_eq!(s.cpus[0].cpu, 0);
        assert_eq!(s.cpus[1].cpu, 1);
        assert_eq!(s.cpus[0].ticks.len(), 10);
        assert!(s.ctxt.unwrap() > 0);
        assert!(s.intr.unwrap() > 0);
        assert!(s.btime.unwrap() > 1_600_000_000);
        assert!(s.processes.unwrap() > 0);
        assert!(s.procs_running.unwrap() >= 1);
        assert!(s.procs_blocked.is_some());
    }

    #[test]
    fn keeps_cpu_numbers_of_sparse_lines_and_skips_bad_ones() {
        let s = parse_proc_stat(
            "cpu  1 2 3 4\ncpu0 100 0 50 1000 3\ncpu2 7 8 9 10 11 12 13 14 15 16\ncpuX 1 2 3 4\ncpu3 1 2\nintr 42 1 2 3\n",
        );
        assert_eq!(s.cpus.len(), 2);
        assert_eq!(s.cpus[1].cpu, 2);
        assert_eq!(s.cpus[1].ticks[9], 16);
        assert_eq!(s.intr, Some(42));
        assert_eq!(s.ctxt, None);
    }

    #[test]
    fn counters_never_go_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let paths = HostPaths::from_root(dir.path());
        std::fs::create_dir_all(&paths.proc).unwrap();
        let c = CpuCollector::new(&paths);
        let hz = c.user_hz;
        std::fs::write(paths.proc.join("stat"), "cpu0 100 0 0 1000 50 0 0 0\n").unwrap();
        let f = c.collect().unwrap();
        assert_eq!(
            value(
                &f,
                "node_cpu_seconds_total",
                &[("cpu", "0"), ("mode", "iowait")]
            ),
            50.0 / hz
        );
        std::fs::write(paths.proc.join("stat"), "cpu0 110 0 0 1010 40 0 0 0\n").unwrap();
        let f = c.collect().unwrap();
        assert_eq!(
            value(
                &f,
                "node_cpu_seconds_total",
                &[("cpu", "0"), ("mode", "iowait")]
            ),
            50.0 / hz
        );
        assert_eq!(
            value(
                &f,
                "node_cpu_seconds_total",
                &[("cpu", "0"), ("mode", "user")]
            ),
            110.0 / hz
        );
    }

    #[test]
    fn thermal_throttles_once_per_core_and_package() {
        let dir = tempfile::tempdir().unwrap();
        let paths = HostPaths::from_root(dir.path());
        std::fs::create_dir_all(&paths.proc).unwrap();
        std::fs::write(
            paths.proc.join("stat"),
            "cpu0 1 0 0 1\ncpu1 1 0 0 1\ncpu2 1 0 0 1\n",
        )
        .unwrap();
        // cpu0 and cpu1 are hyperthreads of core 0; cpu2 is core 1; one package.
        for (cpu, core, count) in [(0, 0, 5), (1, 0, 5), (2, 1, 9)] {
            let d = paths.sys.join(format!("devices/system/cpu/cpu{cpu}"));
            std::fs::create_dir_all(d.join("topology")).unwrap();
            std::fs::create_dir_all(d.join("thermal_throttle")).unwrap();
            std::fs::write(d.join("topology/physical_package_id"), "0\n").unwrap();
            std::fs::write(d.join("topology/core_id"), format!("{core}\n")).unwrap();
            std::fs::write(
                d.join("thermal_throttle/core_throttle_count"),
                format!("{count}\n"),
            )
            .unwrap();
            std::fs::write(d.join("thermal_throttle/package_throttle_count"), "3\n").unwrap();
        }
        let f = CpuCollector::new(&paths).collect().unwrap();
        let cores = f
            .iter()
            .find(|f| f.name == "node_cpu_core_throttles_total")
            .unwrap();
        assert_eq!(cores.points.len(), 2);
        assert_eq!(
            value(
                &f,
                "node_cpu_core_throttles_total",
                &[("core", "1"), ("package", "0")]
            ),
            9.0
        );
        assert_eq!(
            value(&f, "node_cpu_package_throttles_total", &[("package", "0")]),
            3.0
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = parse_proc_stat(&s);
        }

        #[test]
        fn truncated_real_input_never_panics(cut in 0usize..2000) {
            let cut = cut.min(FIXTURE.len());
            if FIXTURE.is_char_boundary(cut) {
                let _ = parse_proc_stat(&FIXTURE[..cut]);
            }
        }

        #[test]
        fn line_shaped_garbage_never_panics(lines in proptest::collection::vec("(cpu[0-9]{0,3}|intr|ctxt|btime)( [0-9a-z-]{0,21}){0,12}", 0..20)) {
            let _ = parse_proc_stat(&lines.join("\n"));
        }
    }
}
