//! `diskstats`: node_disk_* from `<proc>/diskstats` (each line parsed with procfs-core's
//! `DiskStat::from_line`; a bad line is skipped), plus `node_disk_info` and the udev-derived
//! families node_exporter 1.5 exports (`<root>/run/udev/data/b<major>:<minor>`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};
use procfs_core::DiskStat;

use crate::filter::NameFilter;
use crate::util::Buf;
use crate::HostPaths;

/// node_exporter's fixed sector size for `/proc/diskstats` (the kernel always counts
/// 512-byte units there).
const SECTOR: f64 = 512.0;

/// Parses `/proc/diskstats`; malformed lines are skipped.
pub fn parse_diskstats(text: &str) -> Vec<DiskStat> {
    text.lines()
        .filter_map(|l| DiskStat::from_line(l).ok())
        .collect()
}

/// `KEY=VALUE` pairs of the `E:` lines of a udev database file.
pub fn parse_udev_props(text: &str) -> Vec<(&str, &str)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("E:"))
        .filter_map(|kv| kv.split_once('='))
        .collect()
}

type Getter = fn(&DiskStat) -> Option<f64>;

fn ms(v: u64) -> f64 {
    v as f64 / 1000.0
}

const FIELDS: [(&str, &str, MetricType, Getter); 17] = [
    (
        "node_disk_reads_completed_total",
        "The total number of reads completed successfully.",
        MetricType::Counter,
        |d| Some(d.reads as f64),
    ),
    (
        "node_disk_reads_merged_total",
        "The total number of reads merged.",
        MetricType::Counter,
        |d| Some(d.merged as f64),
    ),
    (
        "node_disk_read_bytes_total",
        "The total number of bytes read successfully.",
        MetricType::Counter,
        |d| Some(d.sectors_read as f64 * SECTOR),
    ),
    (
        "node_disk_read_time_seconds_total",
        "The total number of seconds spent by all reads.",
        MetricType::Counter,
        |d| Some(ms(d.time_reading)),
    ),
    (
        "node_disk_writes_completed_total",
        "The total number of writes completed successfully.",
        MetricType::Counter,
        |d| Some(d.writes as f64),
    ),
    (
        "node_disk_writes_merged_total",
        "The number of writes merged.",
        MetricType::Counter,
        |d| Some(d.writes_merged as f64),
    ),
    (
        "node_disk_written_bytes_total",
        "The total number of bytes written successfully.",
        MetricType::Counter,
        |d| Some(d.sectors_written as f64 * SECTOR),
    ),
    (
        "node_disk_write_time_seconds_total",
        "This is the total number of seconds spent by all writes.",
        MetricType::Counter,
        |d| Some(ms(d.time_writing)),
    ),
    (
        "node_disk_io_now",
        "The number of I/Os currently in progress.",
        MetricType::Gauge,
        |d| Some(d.in_progress as f64),
    ),
    (
        "node_disk_io_time_seconds_total",
        "Total seconds spent doing I/Os.",
        MetricType::Counter,
        |d| Some(ms(d.time_in_progress)),
    ),
    (
        "node_disk_io_time_weighted_seconds_total",
        "The weighted # of seconds spent doing I/Os.",
        MetricType::Counter,
        |d| Some(ms(d.weighted_time_in_progress)),
    ),
    (
        "node_disk_discards_completed_total",
        "The total number of discards completed successfully.",
        MetricType::Counter,
        |d| d.discards.map(|v| v as f64),
    ),
    (
        "node_disk_discards_merged_total",
        "The total number of discards merged.",
        MetricType::Counter,
        |d| d.discards_merged.map(|v| v as f64),
    ),
    (
        "node_disk_discarded_sectors_total",
        "The total number of sectors discarded successfully.",
        MetricType::Counter,
        |d| d.sectors_discarded.map(|v| v as f64),
    ),
    (
        "node_disk_discard_time_seconds_total",
        "This is the total number of seconds spent by all discards.",
        MetricType::Counter,
        |d| d.time_discarding.map(ms),
    ),
    (
        "node_disk_flush_requests_total",
        "The total number of flush requests completed successfully",
        MetricType::Counter,
        |d| d.flushes.map(|v| v as f64),
    ),
    (
        "node_disk_flush_requests_time_seconds_total",
        "This is the total number of seconds spent by all flush requests.",
        MetricType::Counter,
        |d| d.time_flushing.map(ms),
    ),
];

pub(crate) struct DiskstatsCollector {
    path: PathBuf,
    udev: PathBuf,
    buf: Buf,
    udev_buf: Buf,
    devices: NameFilter,
    max_devices: usize,
    dropped: AtomicU64,
}

impl DiskstatsCollector {
    pub(crate) fn new(paths: &HostPaths, devices: NameFilter, max_devices: usize) -> Self {
        DiskstatsCollector {
            path: paths.proc.join("diskstats"),
            udev: paths.root.join("run/udev/data"),
            buf: Buf::new(),
            udev_buf: Buf::new(),
            devices,
            max_devices,
            dropped: AtomicU64::new(0),
        }
    }
}

#[derive(Default)]
struct UdevFams {
    info: Option<MetricFamily>,
    rpm: Option<MetricFamily>,
    wc: Option<MetricFamily>,
    wce: Option<MetricFamily>,
    dm: Option<MetricFamily>,
}

impl UdevFams {
    fn push(&mut self, d: &DiskStat, props: &[(&str, &str)]) {
        let get = |k: &str| {
            props
                .iter()
                .find(|(pk, _)| *pk == k)
                .map(|(_, v)| (*v).to_string())
        };
        let dev = || ("device", d.name.clone());
        self.info
            .get_or_insert_with(|| {
                MetricFamily::new(
                    "node_disk_info",
                    "Info of /sys/block/<block_device>.",
                    MetricType::Gauge,
                )
            })
            .push(
                [
                    dev(),
                    ("major", d.major.to_string()),
                    ("minor", d.minor.to_string()),
                    ("path", get("ID_PATH").unwrap_or_default()),
                    ("wwn", get("ID_WWN").unwrap_or_default()),
                    ("model", get("ID_MODEL").unwrap_or_default()),
                    ("serial", get("ID_SERIAL_SHORT").unwrap_or_default()),
                    ("revision", get("ID_REVISION").unwrap_or_default()),
                ],
                1.0,
            );
        if let Some(v) = get("ID_ATA_ROTATION_RATE_RPM").and_then(|v| v.parse::<f64>().ok()) {
            self.rpm
                .get_or_insert_with(|| {
                    MetricFamily::new(
                        "node_disk_ata_rotation_rate_rpm",
                        "ATA disk rotation rate in RPMs (0 for SSDs).",
                        MetricType::Gauge,
                    )
                })
                .push([dev()], v);
        }
        if let Some(v) = get("ID_ATA_WRITE_CACHE") {
            self.wc
                .get_or_insert_with(|| {
                    MetricFamily::new(
                        "node_disk_ata_write_cache",
                        "ATA disk has a write cache.",
                        MetricType::Gauge,
                    )
                })
                .push([dev()], if v == "1" { 1.0 } else { 0.0 });
        }
        if let Some(v) = get("ID_ATA_WRITE_CACHE_ENABLED") {
            self.wce
                .get_or_insert_with(|| {
                    MetricFamily::new(
                        "node_disk_ata_write_cache_enabled",
                        "ATA disk has its write cache enabled.",
                        MetricType::Gauge,
                    )
                })
                .push([dev()], if v == "1" { 1.0 } else { 0.0 });
        }
        if let Some(name) = get("DM_NAME") {
            self.dm
                .get_or_insert_with(|| {
                    MetricFamily::new(
                        "node_disk_device_mapper_info",
                        "Info about disk device mapper.",
                        MetricType::Gauge,
                    )
                })
                .push(
                    [
                        dev(),
                        ("name", name),
                        ("uuid", get("DM_UUID").unwrap_or_default()),
                        ("vg_name", get("DM_VG_NAME").unwrap_or_default()),
                        ("lv_name", get("DM_LV_NAME").unwrap_or_default()),
                        ("lv_layer", get("DM_LV_LAYER").unwrap_or_default()),
                    ],
                    1.0,
                );
        }
    }
}

impl Collector for DiskstatsCollector {
    fn name(&self) -> &'static str {
        "diskstats"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let disks = self.buf.with_file(&self.path, |t| Ok(parse_diskstats(t)))?;
        let mut fams: Vec<MetricFamily> = FIELDS
            .iter()
            .map(|(n, h, k, _)| MetricFamily::new(*n, *h, *k))
            .collect();
        let mut udev = UdevFams::default();
        let have_udev = self.udev.is_dir();
        let mut kept = 0usize;
        for d in &disks {
            if !self.devices.allows(&d.name) {
                continue;
            }
            if kept >= self.max_devices {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            kept += 1;
            for (fam, (_, _, _, get)) in fams.iter_mut().zip(FIELDS.iter()) {
                if let Some(v) = get(d) {
                    fam.push([("device", d.name.clone())], v);
                }
            }
            let udev_file = self.udev.join(format!("b{}:{}", d.major, d.minor));
            let res = if have_udev {
                self.udev_buf.with_file(&udev_file, |t| {
                    udev.push(d, &parse_udev_props(t));
                    Ok(())
                })
            } else {
                Err(CollectError::Other(String::new()))
            };
            if res.is_err() {
                udev.push(d, &[]);
            }
        }
        fams.retain(|f| !f.points.is_empty());
        fams.extend(
            [udev.info, udev.rpm, udev.wc, udev.wce, udev.dm]
                .into_iter()
                .flatten(),
        );
        fams.push(MetricFamily::single(
            "nodescope_host_diskstats_devices_dropped_total",
            "Block devices left out because more than host.diskstats.max_devices passed the filters.",
            MetricType::Counter,
            self.dropped.load(Ordering::Relaxed) as f64,
        ));
        Ok(fams)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_DISK_DEVICE_EXCLUDE;
    use proptest::prelude::*;

    const FIXTURE: &str = include_str!("../../tests/fixtures/proc/diskstats");

    #[test]
    fn parses_real_file_and_default_exclude() {
        let d = parse_diskstats(FIXTURE);
        assert!(d.iter().any(|d| d.name == "vda" && d.flushes.is_some()));
        let f = NameFilter::new("i", "", "e", DEFAULT_DISK_DEVICE_EXCLUDE).unwrap();
        assert!(!f.allows("loop0"));
        assert!(!f.allows("sda1"));
        assert!(!f.allows("nvme0n1p2"));
        assert!(f.allows("vda"));
        assert!(f.allows("nvme0n1"));
        assert!(f.allows("dm-0"));
    }

    #[test]
    fn old_kernel_lines_and_bad_lines() {
        let d = parse_diskstats("   8 0 sda 1 2 3 4 5 6 7 8 9 10 11\n 8 1 sdb x\nshort\n");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].discards, None);
        assert_eq!(d[0].weighted_time_in_progress, 11);
    }

    #[test]
    fn udev_props() {
        let p = parse_udev_props(
            "S:disk/by-id/x\nE:ID_MODEL=QEMU_HARDDISK\nE:ID_SERIAL_SHORT=abc=1\nG:systemd\n",
        );
        assert_eq!(
            p,
            vec![("ID_MODEL", "QEMU_HARDDISK"), ("ID_SERIAL_SHORT", "abc=1")]
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = parse_diskstats(&s);
            let _ = parse_udev_props(&s);
        }

        #[test]
        fn truncated_never_panics(cut in 0usize..1500) {
            let _ = parse_diskstats(&FIXTURE[..cut.min(FIXTURE.len())]);
        }

        #[test]
        fn line_shaped_garbage_never_panics(lines in proptest::collection::vec(" *[0-9-]{0,4} +[0-9]{0,3} +[a-z0-9]{0,5}( [0-9x-]{0,21}){0,20}", 0..8)) {
            let _ = parse_diskstats(&lines.join("\n"));
        }
    }
}
