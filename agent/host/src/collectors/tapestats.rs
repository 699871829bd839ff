//! `tapestats`: SCSI tape statistics from `<sys>/class/scsi_tape/stN/stats/*`
//! (`node_tape_*{device}`).

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::filter::NameFilter;
use crate::util::{dir_names, go_int, sys_read};
use crate::HostPaths;

/// stats file → (metric, help, counter, scale).
const FIELDS: &[(&str, &str, &str, bool, f64)] = &[
    ("in_flight", "node_tape_io_now", "The number of I/Os currently outstanding to this device.", false, 1.0),
    ("io_ns", "node_tape_io_time_seconds_total", "The amount of time spent waiting for all I/O to complete (including read and write). This includes tape movement commands such as seeking between file or set marks and implicit tape movement such as when rewind on close tape devices are used.", true, 1e-9),
    ("other_cnt", "node_tape_io_others_total", "The number of I/Os issued to the tape drive other than read or write commands. The time taken to complete these commands uses the following calculation io_time_seconds_total-read_time_seconds_total-write_time_seconds_total", true, 1.0),
    ("read_byte_cnt", "node_tape_read_bytes_total", "The number of bytes read from the tape drive.", true, 1.0),
    ("read_cnt", "node_tape_reads_completed_total", "The number of read requests issued to the tape drive.", true, 1.0),
    ("read_ns", "node_tape_read_time_seconds_total", "The amount of time spent waiting for read requests to complete.", true, 1e-9),
    ("resid_cnt", "node_tape_residual_total", "The number of times during a read or write we found the residual amount to be non-zero. This should mean that a program is issuing a read larger thean the block size on tape. For write not all data made it to tape.", true, 1.0),
    ("write_byte_cnt", "node_tape_written_bytes_total", "The number of bytes written to the tape drive.", true, 1.0),
    ("write_cnt", "node_tape_writes_completed_total", "The number of write requests issued to the tape drive.", true, 1.0),
    ("write_ns", "node_tape_write_time_seconds_total", "The amount of time spent waiting for write requests to complete.", true, 1e-9),
];

pub(crate) struct TapestatsCollector {
    dir: PathBuf,
    ignored: NameFilter,
}

impl TapestatsCollector {
    pub(crate) fn new(paths: &HostPaths, ignored: NameFilter) -> Self {
        TapestatsCollector {
            dir: paths.sys.join("class/scsi_tape"),
            ignored,
        }
    }
}

fn is_st(name: &str) -> bool {
    name.strip_prefix("st")
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

impl Collector for TapestatsCollector {
    fn name(&self) -> &'static str {
        "tapestats"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let names = dir_names(&self.dir).map_err(|e| CollectError::io(&self.dir, e))?;
        let mut fams: Vec<MetricFamily> = FIELDS
            .iter()
            .map(|(_, n, h, c, _)| {
                MetricFamily::new(
                    *n,
                    *h,
                    if *c {
                        MetricType::Counter
                    } else {
                        MetricType::Gauge
                    },
                )
            })
            .collect();
        for name in names.into_iter().filter(|n| is_st(n)) {
            let stats = self.dir.join(&name).join("stats");
            let mut values = [0u64; 10];
            for file in dir_names(&stats).map_err(|e| CollectError::io(&stats, e))? {
                let p = stats.join(&file);
                let v = sys_read(&p)
                    .ok_or_else(|| CollectError::parse(&p, "failed to read tape statistic"))?;
                if let Some(i) = FIELDS.iter().position(|(f, ..)| *f == file) {
                    values[i] = go_int(&v)
                        .and_then(|v| u64::try_from(v).ok())
                        .ok_or_else(|| CollectError::parse(&p, format!("not a counter: {v:?}")))?;
                }
            }
            if !self.ignored.allows(&name) {
                continue;
            }
            for ((f, v), (.., scale)) in fams.iter_mut().zip(values).zip(FIELDS) {
                f.push([("device", name.clone())], v as f64 * scale);
            }
        }
        fams.retain(|f| !f.points.is_empty());
        Ok(fams)
    }
}
