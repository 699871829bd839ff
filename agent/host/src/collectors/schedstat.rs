//! `schedstat`: `node_schedstat_{running,waiting}_seconds_total{cpu}` and
//! `node_schedstat_timeslices_total{cpu}` from `<proc>/schedstat` (fields 7-9 of each
//! `cpuN` line, nanoseconds).

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::Buf;
use crate::HostPaths;

/// `(cpu, running_ns, waiting_ns, timeslices)` of each `cpuN` line with at least nine
/// numeric fields (procfs' regex); other lines are ignored.
pub fn parse_schedstat(text: &str) -> Vec<(&str, u64, u64, u64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split(' ');
        let Some(cpu) = it.next().and_then(|c| c.strip_prefix("cpu")) else {
            continue;
        };
        if cpu.is_empty() || !cpu.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let nums: Vec<u64> = it.take(9).map_while(|f| f.parse::<u64>().ok()).collect();
        if nums.len() < 9 {
            continue;
        }
        out.push((cpu, nums[6], nums[7], nums[8]));
    }
    out
}

pub(crate) struct SchedstatCollector {
    path: PathBuf,
    buf: Buf,
}

impl SchedstatCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        SchedstatCollector {
            path: paths.proc.join("schedstat"),
            buf: Buf::new(),
        }
    }
}

impl Collector for SchedstatCollector {
    fn name(&self) -> &'static str {
        "schedstat"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        self.buf.with_file(&self.path, |t| {
            let mut run = MetricFamily::new(
                "node_schedstat_running_seconds_total",
                "Number of seconds CPU spent running a process.",
                MetricType::Counter,
            );
            let mut wait = MetricFamily::new(
                "node_schedstat_waiting_seconds_total",
                "Number of seconds spent by processing waiting for this CPU.",
                MetricType::Counter,
            );
            let mut slices = MetricFamily::new(
                "node_schedstat_timeslices_total",
                "Number of timeslices executed by CPU.",
                MetricType::Counter,
            );
            for (cpu, r, w, s) in parse_schedstat(t) {
                run.push([("cpu", cpu)], r as f64 / 1e9);
                wait.push([("cpu", cpu)], w as f64 / 1e9);
                slices.push([("cpu", cpu)], s as f64);
            }
            Ok(vec![run, slices, wait])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_cpu_lines() {
        let t = "version 15\ntimestamp 15819019232\ncpu0 498494191 0 3533438552 2553969831 3853684107 2465731542 2045936778163039 343796328169361 4767485306\ndomain0 00000000,00000003 212499247 210112015\ncpu1 1 2 3\n";
        assert_eq!(
            parse_schedstat(t),
            vec![("0", 2045936778163039, 343796328169361, 4767485306)]
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = parse_schedstat(&s);
        }
    }
}
