//! `btrfs`: filesystem allocation statistics from `<sys>/fs/btrfs/<uuid>/` (procfs' btrfs
//! package), as node_exporter 1.5 exports them when its ioctl queries are not available:
//! `node_btrfs_info{uuid,label}`, `node_btrfs_global_rsv_size_bytes`,
//! `node_btrfs_reserved_bytes{block_group_type}`,
//! `node_btrfs_{used_bytes,size_bytes,allocation_ratio}{block_group_type,mode}`,
//! `node_btrfs_device_size_bytes{device}`. The per-device error counters node_exporter
//! reads with BTRFS ioctls are not implemented (docs/host-metrics.md).

use std::path::{Path, PathBuf};

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::dir_names;
use crate::HostPaths;

const SECTOR_SIZE: u64 = 512;

struct Reader {
    err: Option<CollectError>,
}

impl Reader {
    fn file(&mut self, p: &Path) -> String {
        match std::fs::read(p) {
            Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                self.err.get_or_insert(CollectError::io(p, e));
                String::new()
            }
        }
    }

    fn value(&mut self, p: &Path) -> u64 {
        self.file(p).parse().unwrap_or(0)
    }

    fn list(&mut self, p: &Path) -> Vec<String> {
        match dir_names(p) {
            Ok(v) => v,
            Err(e) => {
                self.err.get_or_insert(CollectError::io(p, e));
                Vec::new()
            }
        }
    }
}

/// procfs' `calcRatio`.
pub fn btrfs_ratio(layout: &str, devices: usize) -> f64 {
    let n = devices as f64;
    match layout {
        "single" | "raid0" => 1.0,
        "dup" | "raid1" | "raid10" => 2.0,
        "raid5" => n / (n - 1.0),
        "raid6" => n / (n - 2.0),
        _ => 0.0,
    }
}

pub(crate) struct BtrfsCollector {
    dir: PathBuf,
}

impl BtrfsCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        BtrfsCollector {
            dir: paths.sys.join("fs/btrfs"),
        }
    }
}

impl Collector for BtrfsCollector {
    fn name(&self) -> &'static str {
        "btrfs"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let g = MetricType::Gauge;
        let mut info = MetricFamily::new("node_btrfs_info", "Filesystem information", g);
        let mut rsv = MetricFamily::new(
            "node_btrfs_global_rsv_size_bytes",
            "Size of global reserve.",
            g,
        );
        let mut reserved = MetricFamily::new(
            "node_btrfs_reserved_bytes",
            "Amount of space reserved for a data type",
            g,
        );
        let mut used = MetricFamily::new(
            "node_btrfs_used_bytes",
            "Amount of used space by a layout/data type",
            g,
        );
        let mut size = MetricFamily::new(
            "node_btrfs_size_bytes",
            "Amount of space allocated for a layout/data type",
            g,
        );
        let mut ratio = MetricFamily::new(
            "node_btrfs_allocation_ratio",
            "Data allocation ratio for a layout/data type",
            g,
        );
        let mut dev_size = MetricFamily::new(
            "node_btrfs_device_size_bytes",
            "Size of a device that is part of the filesystem.",
            g,
        );
        for entry in dir_names(&self.dir).unwrap_or_default() {
            if !entry.contains('-') {
                continue;
            }
            let fs = self.dir.join(&entry);
            let mut r = Reader { err: None };
            let devices = r.list(&fs.join("devices"));
            let dev_sizes: Vec<(String, u64)> = devices
                .iter()
                .map(|d| {
                    let s = r.value(&fs.join("devices").join(d).join("size"));
                    (d.clone(), SECTOR_SIZE.wrapping_mul(s))
                })
                .collect();
            let label = r.file(&fs.join("label"));
            let mut uuid = r.file(&fs.join("metadata_uuid"));
            r.list(&fs.join("features"));
            let global = r.value(&fs.join("allocation/global_rsv_size"));
            let mut allocs = Vec::new();
            for kind in ["data", "metadata", "system"] {
                let a = fs.join("allocation").join(kind);
                let res = r.value(&a.join("bytes_reserved"));
                let mut layouts = Vec::new();
                match std::fs::read_dir(&a) {
                    Ok(rd) => {
                        let mut names: Vec<String> = rd
                            .filter_map(|e| e.ok())
                            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                            .filter_map(|e| e.file_name().to_str().map(str::to_string))
                            .collect();
                        names.sort();
                        for l in names {
                            let t = r.value(&a.join(&l).join("total_bytes"));
                            let u = r.value(&a.join(&l).join("used_bytes"));
                            layouts.push((l, t, u));
                        }
                    }
                    Err(e) => {
                        r.err.get_or_insert(CollectError::io(&a, e));
                    }
                }
                allocs.push((kind, res, layouts));
            }
            if let Some(e) = r.err {
                return Err(e);
            }
            if uuid.is_empty() {
                uuid = entry.clone();
            }
            info.push([("uuid", uuid.clone()), ("label", label)], 1.0);
            rsv.push([("uuid", uuid.clone())], global as f64);
            for (kind, res, layouts) in allocs {
                reserved.push(
                    [
                        ("uuid", uuid.clone()),
                        ("block_group_type", kind.to_string()),
                    ],
                    res as f64,
                );
                for (mode, total, u) in layouts {
                    let l = [
                        ("uuid", uuid.clone()),
                        ("block_group_type", kind.to_string()),
                        ("mode", mode.clone()),
                    ];
                    used.push(l.clone(), u as f64);
                    size.push(l.clone(), total as f64);
                    ratio.push(l, btrfs_ratio(&mode, dev_sizes.len()));
                }
            }
            for (d, s) in dev_sizes {
                dev_size.push([("uuid", uuid.clone()), ("device", d)], s as f64);
            }
        }
        let mut out = vec![info, rsv, reserved, used, size, ratio, dev_size];
        out.retain(|f| !f.points.is_empty());
        Ok(out)
    }
}
