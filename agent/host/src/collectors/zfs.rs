//! `zfs`: ZFS kstats from `<proc>/spl/kstat/zfs` as node_exporter 1.5 exports them: every
//! uint64 kstat of the subsystem files as an untyped `node_zfs_<subsystem>_<name>` (help:
//! the kstat's dotted name), per-pool I/O (`node_zfs_zpool_*{zpool}`), per-dataset objset
//! counters (`node_zfs_zpool_dataset_*{zpool,dataset}`) and `node_zfs_zpool_state{zpool,state}`.

use std::path::{Path, PathBuf};

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::{dir_names, is_name_part};
use crate::HostPaths;

/// (metric subsystem, kstat file).
const SUBSYSTEMS: &[(&str, &str)] = &[
    ("zfs_abd", "abdstats"),
    ("zfs_arc", "arcstats"),
    ("zfs_dbuf", "dbuf_stats"),
    ("zfs_dmu_tx", "dmu_tx"),
    ("zfs_dnode", "dnodestats"),
    ("zfs_fm", "fm"),
    ("zfs_vdev_cache", "vdev_cache_stats"),
    ("zfs_vdev_mirror", "vdev_mirror_stats"),
    ("zfs_xuio", "xuio_stats"),
    ("zfs_zfetch", "zfetchstats"),
    ("zfs_zil", "zil"),
];

const POOL_STATES: &[&str] = &[
    "online", "degraded", "faulted", "offline", "removed", "unavail",
];

/// The uint64 (`type 4`) kstats of a `name type data` file; `Err` when the header is
/// missing or a value does not parse (node_exporter fails the collect then).
pub fn parse_kstat(text: &str) -> Result<Vec<(&str, u64)>, String> {
    let mut started = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let p: Vec<&str> = line.split_ascii_whitespace().collect();
        if !started && p.len() == 3 && p[0] == "name" && p[1] == "type" && p[2] == "data" {
            started = true;
            continue;
        }
        if !started || p.len() < 3 {
            continue;
        }
        if p[1] == "4" {
            let v = p[2]
                .parse::<u64>()
                .map_err(|_| format!("could not parse expected integer value for {:?}", p[0]))?;
            out.push((p[0], v));
        }
    }
    if !started {
        return Err("did not parse a single metric".into());
    }
    Ok(out)
}

/// `(field, value)` pairs of a pool's `io` kstat (header line starting `nread`, 12+ fields).
pub fn parse_zpool_io(text: &str) -> Result<Vec<(String, u64)>, String> {
    let mut fields: Option<Vec<&str>> = None;
    let mut out = Vec::new();
    for line in text.lines() {
        let l: Vec<&str> = line.split_ascii_whitespace().collect();
        match &fields {
            None => {
                if l.len() >= 12 && l[0] == "nread" {
                    fields = Some(l);
                }
            }
            Some(f) => {
                for (i, name) in f.iter().enumerate() {
                    let v = l
                        .get(i)
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or_else(|| {
                            format!("could not parse expected integer value for {name:?}")
                        })?;
                    out.push((name.to_string(), v));
                }
            }
        }
    }
    Ok(out)
}

/// A dataset name and its `(field, value)` kstats.
pub type Objset<'a> = (String, Vec<(&'a str, u64)>);

/// `(dataset name, [(field, value)])` of an `objset-*` kstat.
pub fn parse_zpool_objset(text: &str) -> Result<Objset<'_>, String> {
    let mut started = false;
    let mut dataset = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let p: Vec<&str> = line.split_ascii_whitespace().collect();
        if !started && p.len() == 3 && p[0] == "name" && p[1] == "type" && p[2] == "data" {
            started = true;
            continue;
        }
        if !started || p.len() < 3 {
            continue;
        }
        if p[0] == "dataset_name" {
            dataset = p[2].to_string();
            continue;
        }
        if p[1] == "4" {
            let v = p[2]
                .parse::<u64>()
                .map_err(|_| format!("could not parse expected integer value for {:?}", p[0]))?;
            out.push((p[0], v));
        }
    }
    if !started {
        return Err("did not parse a single objset metric".into());
    }
    Ok((dataset, out))
}

#[derive(Default)]
struct Out(Vec<MetricFamily>);

impl Out {
    fn push(
        &mut self,
        name: String,
        help: String,
        kind: MetricType,
        labels: Vec<(&'static str, String)>,
        v: f64,
    ) {
        if !is_name_part(&name) {
            return;
        }
        match self.0.iter_mut().find(|f| f.name == name) {
            Some(f) => {
                if !f.points.iter().any(|p| {
                    p.labels
                        .iter()
                        .map(|(_, v)| v)
                        .eq(labels.iter().map(|(_, v)| v))
                }) {
                    f.push(labels, v);
                }
            }
            None => {
                let mut f = MetricFamily::new(name, help, kind);
                f.push(labels, v);
                self.0.push(f);
            }
        }
    }
}

fn metric_name(field: &str) -> String {
    field.replace('-', "_")
}

pub(crate) struct ZfsCollector {
    dir: PathBuf,
}

impl ZfsCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        ZfsCollector {
            dir: paths.proc.join("spl/kstat/zfs"),
        }
    }
}

fn read(path: &Path) -> Result<String, CollectError> {
    std::fs::read_to_string(path).map_err(|e| CollectError::io(path, e))
}

impl Collector for ZfsCollector {
    fn name(&self) -> &'static str {
        "zfs"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        if !self.dir.exists() {
            return Err(CollectError::Unavailable {
                what: self.dir.display().to_string(),
                reason: "ZFS is not loaded".into(),
            });
        }
        let mut out = Out::default();
        for (sub, file) in SUBSYSTEMS {
            let path = self.dir.join(file);
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            for (k, v) in parse_kstat(&text).map_err(|r| CollectError::parse(&path, r))? {
                out.push(
                    format!("node_{sub}_{}", metric_name(k)),
                    format!("kstat.zfs.misc.{file}.{k}"),
                    MetricType::Untyped,
                    Vec::new(),
                    v as f64,
                );
            }
        }
        let pools: Vec<String> = dir_names(&self.dir)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| self.dir.join(p).is_dir())
            .collect();
        for pool in &pools {
            let io = self.dir.join(pool).join("io");
            if io.is_file() {
                let text = read(&io)?;
                for (k, v) in parse_zpool_io(&text).map_err(|r| CollectError::parse(&io, r))? {
                    out.push(
                        format!("node_zfs_zpool_{}", metric_name(&k)),
                        format!("kstat.zfs.misc.io.{k}"),
                        MetricType::Untyped,
                        vec![("zpool", pool.clone())],
                        v as f64,
                    );
                }
            }
        }
        for pool in &pools {
            for f in dir_names(&self.dir.join(pool)).unwrap_or_default() {
                if !f.starts_with("objset-") {
                    continue;
                }
                let path = self.dir.join(pool).join(&f);
                let text = read(&path)?;
                let (dataset, vals) =
                    parse_zpool_objset(&text).map_err(|r| CollectError::parse(&path, r))?;
                for (k, v) in vals {
                    out.push(
                        format!("node_zfs_zpool_dataset_{}", metric_name(k)),
                        format!("kstat.zfs.misc.objset.{k}"),
                        MetricType::Untyped,
                        vec![("zpool", pool.clone()), ("dataset", dataset.clone())],
                        v as f64,
                    );
                }
            }
        }
        for pool in &pools {
            let path = self.dir.join(pool).join("state");
            if !path.is_file() {
                continue;
            }
            let text = read(&path)?;
            let state = text.lines().next().unwrap_or("").to_lowercase();
            for s in POOL_STATES {
                out.push(
                    "node_zfs_zpool_state".into(),
                    "kstat.zfs.misc.state".into(),
                    MetricType::Gauge,
                    vec![("zpool", pool.clone()), ("state", s.to_string())],
                    if state == *s { 1.0 } else { 0.0 },
                );
            }
        }
        Ok(out.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn kstat_files() {
        let t = "6 1 0x01 7 336 1 2\nname                            type data\nhits                            4    8772612\nc_min  4 1\nflag 7 x\n";
        assert_eq!(
            parse_kstat(t).unwrap(),
            vec![("hits", 8772612), ("c_min", 1)]
        );
        assert!(parse_kstat("hits 4 1\n").is_err());
        let io = "12 3 0x00 1 80 2 3\nnread    nwritten reads    writes   wtime    wlentime wupdate  rtime    rlentime rupdate  wcnt     rcnt\n1 2 3 4 5 6 7 8 9 10 11 12\n";
        assert_eq!(parse_zpool_io(io).unwrap().len(), 12);
        assert!(parse_zpool_io("nread a b c d e f g h i j k\n1\n").is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = parse_kstat(&s);
            let _ = parse_zpool_io(&s);
            let _ = parse_zpool_objset(&s);
        }
    }
}
