//! `filesystem`: node_filesystem_* for the HOST's mounts.
//!
//! * Mounts come from `<proc>/1/mountinfo` (the host's mount namespace when the host's
//!   `/proc` is mounted), each line parsed with procfs-core's `MountInfo::from_line`; the
//!   parsed, filtered list is cached and reused while the file's bytes do not change.
//! * `statfs` goes through `<root>/<mountpoint>`.
//! * Every `statfs` runs on a [`Lane`] (the model's one type for blocking work under
//!   timeouts, also used by the collector runner), never on the collecting thread; one
//!   collect's mounts are one batch (one thread hand-off per scrape), each `statfs` under
//!   `stat_timeout` from its own start. On timeout the lane abandons the blocked thread and
//!   carries on with the remaining mounts on a fresh one; the mount stays *stuck* (its
//!   `statfs` is still in flight) until that call returns. A stuck mount is reported with
//!   `node_filesystem_device_error 1` and skipped without a new `statfs`, like
//!   node_exporter's stuck-mount tracker. At most `max_stuck` lane threads can be blocked
//!   at once; past that no further `statfs` is attempted (counted).
//! * Network filesystems (`nfs`, `cifs`, `ceph`, `fuse.sshfs`, `9p`, ...) are skipped by
//!   default.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nodescope_model::lane::{ItemOutcome, Lane, NotRunReason};
use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};
use parking_lot::Mutex;
use procfs_core::process::MountInfo;

use crate::config::FilesystemConfig;
use crate::filter::NameFilter;
use crate::util::read_into;
use crate::{HostError, HostPaths};

/// What `statfs` reports for one mount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsStat {
    pub block_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_avail: u64,
    pub files: u64,
    pub files_free: u64,
    /// The device (`major:minor`) the statted path is on, when known (`statx`).
    pub dev: Option<(u32, u32)>,
    /// Whether the path is the root of a mount (`STATX_ATTR_MOUNT_ROOT`), when the kernel
    /// says (5.8+).
    pub mount_root: Option<bool>,
}

/// The `statfs` implementation; injectable so tests can simulate a hung mount.
pub type StatFn = Arc<dyn Fn(&Path) -> std::io::Result<FsStat> + Send + Sync>;

/// The real `statfs(2)`.
/// The real `statfs(2)`, plus `statx(2)` for the device and mount-root attribute the
/// collector checks against the mount table.
pub fn real_statfs(path: &Path) -> std::io::Result<FsStat> {
    let s = rustix::fs::statfs(path)?;
    let x = rustix::fs::statx(
        rustix::fs::CWD,
        path,
        rustix::fs::AtFlags::NO_AUTOMOUNT,
        rustix::fs::StatxFlags::BASIC_STATS,
    )?;
    let attr = rustix::fs::StatxAttributes::MOUNT_ROOT;
    #[allow(clippy::unnecessary_cast)]
    Ok(FsStat {
        block_size: s.f_bsize as u64,
        blocks: s.f_blocks as u64,
        blocks_free: s.f_bfree as u64,
        blocks_avail: s.f_bavail as u64,
        files: s.f_files as u64,
        files_free: s.f_ffree as u64,
        dev: Some((x.stx_dev_major, x.stx_dev_minor)),
        mount_root: x
            .stx_attributes_mask
            .contains(attr)
            .then(|| x.stx_attributes.contains(attr)),
    })
}

/// Why `stat` is not the statistics of mount `m` (issue: a mount the host made after the
/// agent started, not propagated into the agent's view of the host root, is a plain
/// directory on the root disk there, and statfs would report the root disk's size).
/// `None` when the statted path is that mount, or when it cannot be checked.
pub fn mount_mismatch(m: &Mount, stat: &FsStat) -> Option<String> {
    let (want, got) = (m.dev?, stat.dev?);
    if want == got {
        return None;
    }
    // btrfs subvolumes (and other filesystems with per-subvolume anonymous devices) show
    // another st_dev than the mount table; the path is still that mount when it is a
    // mount root.
    if stat.mount_root == Some(true) && m.fs_type == "btrfs" {
        return None;
    }
    Some(format!(
        "the path is on device {}:{} but the mount table says {}:{} for this mount; it is not \
         that mount here (a mount hidden by another, or one made after the agent started and not \
         propagated into its view of the host root: mount the host's / with HostToContainer \
         propagation and make it shared)",
        got.0, got.1, want.0, want.1
    ))
}

/// One mount as node_exporter labels it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The mount source exactly as the mount table shows it (node_exporter does not
    /// unescape it).
    pub device: String,
    /// The mount point label: `\040` and `\011` decoded, as node_exporter 1.5 does.
    pub mount_point: String,
    pub fs_type: String,
    pub read_only: bool,
    /// The mount point fully decoded, as a path on the host (used for `statfs`).
    pub path: String,
    /// `major:minor` of the mount table (the `st_dev` of files on this filesystem).
    pub dev: Option<(u32, u32)>,
}

/// Decodes the `\ooo` octal escapes the kernel uses in mount tables (`\040` for a space).
pub fn unescape_mount_path(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (u32::from(b[i + 1] - b'0') << 6)
                | (u32::from(b[i + 2] - b'0') << 3)
                | u32::from(b[i + 3] - b'0');
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/<pid>/mountinfo`; lines procfs-core rejects are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(mi) = MountInfo::from_line(line) else {
            continue;
        };
        let read_only = mi.mount_options.contains_key("ro") || mi.super_options.contains_key("ro");
        let raw_mp = mi.mount_point.to_string_lossy().into_owned();
        out.push(Mount {
            device: mi.mount_source.unwrap_or_else(|| "none".to_string()),
            mount_point: raw_mp.replace("\\040", " ").replace("\\011", "\t"),
            path: unescape_mount_path(&raw_mp),
            fs_type: mi.fs_type,
            read_only,
            dev: mi
                .majmin
                .split_once(':')
                .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?))),
        });
    }
    out
}

pub(crate) struct FilesystemOptions {
    pub(crate) mount_points: NameFilter,
    pub(crate) fs_types: NameFilter,
    pub(crate) network_fs_types: Vec<String>,
    pub(crate) stat_timeout: Duration,
    pub(crate) max_stuck: usize,
    pub(crate) max_mounts: usize,
}

/// The mount table as last read, and the filtered mounts derived from it.
#[derive(Default)]
struct MountCache {
    raw: Vec<u8>,
    mounts: Arc<Vec<Mount>>,
    dropped: u64,
}

#[derive(Default)]
struct Counters {
    timeouts: AtomicU64,
    skipped: AtomicU64,
    dropped: AtomicU64,
    mismatched: AtomicU64,
}

/// The `filesystem` collector. Build it from configuration with
/// [`FilesystemCollector::from_config`]; tests inject a [`StatFn`].
pub struct FilesystemCollector {
    mountinfo: PathBuf,
    root: PathBuf,
    opts: FilesystemOptions,
    stat: StatFn,
    read_buf: Mutex<Vec<u8>>,
    cache: Mutex<MountCache>,
    lane: Lane,
    /// Mount points whose `statfs` is in flight: between collects, those still blocked on
    /// an abandoned lane thread.
    stuck: Arc<Mutex<HashSet<String>>>,
    counters: Counters,
}

impl FilesystemCollector {
    pub(crate) fn new(paths: &HostPaths, opts: FilesystemOptions) -> Self {
        FilesystemCollector {
            mountinfo: paths.proc.join("1/mountinfo"),
            root: paths.root.clone(),
            lane: Lane::new("statfs", opts.max_stuck),
            opts,
            stat: Arc::new(real_statfs),
            read_buf: Mutex::new(Vec::with_capacity(8192)),
            cache: Mutex::new(MountCache::default()),
            stuck: Arc::new(Mutex::new(HashSet::new())),
            counters: Counters::default(),
        }
    }

    /// Builds the collector from its configuration section; `stat` replaces the real
    /// `statfs` (tests use it to simulate a hung mount).
    pub fn from_config(
        paths: &HostPaths,
        cfg: &FilesystemConfig,
        stat: Option<StatFn>,
    ) -> Result<Self, HostError> {
        let opts = FilesystemOptions {
            mount_points: NameFilter::new(
                "",
                "",
                "host.filesystem.mount_points_exclude",
                &cfg.mount_points_exclude,
            )?,
            fs_types: NameFilter::new(
                "",
                "",
                "host.filesystem.fs_types_exclude",
                &cfg.fs_types_exclude,
            )?,
            network_fs_types: if cfg.skip_network_filesystems {
                cfg.network_fs_types.clone()
            } else {
                Vec::new()
            },
            stat_timeout: Duration::from_millis(cfg.stat_timeout_ms.max(1)),
            max_stuck: cfg.max_stuck_mounts.max(1),
            max_mounts: cfg.max_mounts.max(1),
        };
        let mut c = FilesystemCollector::new(paths, opts);
        if let Some(s) = stat {
            c.stat = s;
        }
        Ok(c)
    }

    /// Mount points currently skipped because an earlier `statfs` on them has not returned.
    pub fn stuck_mounts(&self) -> Vec<String> {
        let mut v: Vec<String> = self.stuck.lock().iter().cloned().collect();
        v.sort();
        v
    }

    /// Total `statfs` calls that exceeded the timeout.
    pub fn stat_timeouts(&self) -> u64 {
        self.counters.timeouts.load(Ordering::Relaxed)
    }

    fn wanted(&self, m: &Mount) -> bool {
        self.opts.mount_points.allows(&m.mount_point)
            && self.opts.fs_types.allows(&m.fs_type)
            && !self.opts.network_fs_types.contains(&m.fs_type)
    }

    /// The filtered mount list, re-parsed only when the mount table changed.
    fn mounts(&self) -> Result<(Arc<Vec<Mount>>, u64), CollectError> {
        let mut buf = self.read_buf.lock();
        read_into(&self.mountinfo, &mut buf)?;
        let mut cache = self.cache.lock();
        if cache.raw != *buf || cache.raw.is_empty() {
            let text = crate::util::text(&buf);
            let all = parse_mountinfo(&text);
            if all.is_empty() {
                return Err(CollectError::parse(
                    &self.mountinfo,
                    "no parsable mount lines",
                ));
            }
            let mut seen = HashSet::new();
            let mut mounts = Vec::new();
            let mut dropped = 0u64;
            for m in all {
                if !self.wanted(&m) {
                    continue;
                }
                if !seen.insert((m.device.clone(), m.mount_point.clone(), m.fs_type.clone())) {
                    continue;
                }
                if mounts.len() >= self.opts.max_mounts {
                    dropped += 1;
                    continue;
                }
                mounts.push(m);
            }
            cache.raw.clear();
            cache.raw.extend_from_slice(&buf);
            cache.mounts = Arc::new(mounts);
            cache.dropped = dropped;
        }
        Ok((Arc::clone(&cache.mounts), cache.dropped))
    }

    /// `statfs` of every mount, off this thread, each under the timeout. `Err(reason)`
    /// means a device error.
    fn stat_all(&self, mounts: &[Mount]) -> Vec<Result<FsStat, String>> {
        let mut out: Vec<Option<Result<FsStat, String>>> = vec![None; mounts.len()];
        let mut jobs: Vec<(PathBuf, String)> = Vec::with_capacity(mounts.len());
        let mut index: Vec<usize> = Vec::with_capacity(mounts.len());
        {
            let stuck = self.stuck.lock();
            for (i, m) in mounts.iter().enumerate() {
                if stuck.contains(&m.mount_point) {
                    self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                    out[i] = Some(Err("an earlier statfs is still blocked".into()));
                } else {
                    jobs.push((
                        self.root.join(m.path.trim_start_matches('/')),
                        m.mount_point.clone(),
                    ));
                    index.push(i);
                }
            }
        }
        if jobs.is_empty() {
            return out
                .into_iter()
                .map(|o| o.unwrap_or_else(|| Err("not statted".into())))
                .collect();
        }
        let stat = Arc::clone(&self.stat);
        let stuck = Arc::clone(&self.stuck);
        let outcomes = self.lane.run_blocking(
            jobs,
            self.opts.stat_timeout,
            move |(path, mount_point): &(PathBuf, String)| {
                stuck.lock().insert(mount_point.clone());
                let r = stat(path);
                stuck.lock().remove(mount_point);
                r
            },
        );
        for (k, outcome) in outcomes.into_iter().enumerate() {
            let i = index[k];
            let m = &mounts[i];
            out[i] = Some(match outcome {
                ItemOutcome::Done(Ok(s)) => Ok(s),
                ItemOutcome::Done(Err(e)) => Err(e.to_string()),
                ItemOutcome::Panicked => Err("statfs panicked".into()),
                ItemOutcome::TimedOut => {
                    self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        collector = "filesystem",
                        mountpoint = %m.mount_point,
                        fstype = %m.fs_type,
                        timeout_ms = self.opts.stat_timeout.as_millis() as u64,
                        "statfs timed out; mount marked stuck and skipped until it returns"
                    );
                    Err("statfs timed out".into())
                }
                ItemOutcome::NotRun(NotRunReason::TooManyAbandoned) => {
                    self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                    Err(format!(
                        "{} statfs calls are blocked (host.filesystem.max_stuck_mounts)",
                        self.lane.blocked()
                    ))
                }
                ItemOutcome::NotRun(reason) => {
                    self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                    Err(reason.as_str().to_string())
                }
            });
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Err("not statted".into())))
            .collect()
    }
}

const NAMES: [(&str, &str); 7] = [
    ("node_filesystem_size_bytes", "Filesystem size in bytes."),
    (
        "node_filesystem_free_bytes",
        "Filesystem free space in bytes.",
    ),
    (
        "node_filesystem_avail_bytes",
        "Filesystem space available to non-root users in bytes.",
    ),
    ("node_filesystem_files", "Filesystem total file nodes."),
    (
        "node_filesystem_files_free",
        "Filesystem total free file nodes.",
    ),
    ("node_filesystem_readonly", "Filesystem read-only status."),
    (
        "node_filesystem_device_error",
        "Whether an error occurred while getting statistics for the given device.",
    ),
];

impl Collector for FilesystemCollector {
    fn name(&self) -> &'static str {
        "filesystem"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let (mounts, dropped) = self.mounts()?;
        let mut fams: Vec<MetricFamily> = NAMES
            .iter()
            .map(|(n, h)| MetricFamily::new(*n, *h, MetricType::Gauge))
            .collect();
        let stats = self.stat_all(&mounts);
        for (m, stat) in mounts.iter().zip(stats) {
            let labels = || {
                [
                    ("device", m.device.clone()),
                    ("fstype", m.fs_type.clone()),
                    ("mountpoint", m.mount_point.clone()),
                ]
            };
            let ro = if m.read_only { 1.0 } else { 0.0 };
            let stat = match stat {
                Ok(s) => match mount_mismatch(m, &s) {
                    None => Ok(s),
                    Some(reason) => {
                        self.counters.mismatched.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            collector = "filesystem",
                            mountpoint = %m.mount_point,
                            fstype = %m.fs_type,
                            %reason,
                            "filesystem size not reported: the path under the host root is not that mount"
                        );
                        Err(reason)
                    }
                },
                Err(e) => Err(e),
            };
            match stat {
                Ok(s) => {
                    let bs = s.block_size as f64;
                    let vals = [
                        s.blocks as f64 * bs,
                        s.blocks_free as f64 * bs,
                        s.blocks_avail as f64 * bs,
                        s.files as f64,
                        s.files_free as f64,
                        ro,
                        0.0,
                    ];
                    for (f, v) in fams.iter_mut().zip(vals) {
                        f.push(labels(), v);
                    }
                }
                Err(reason) => {
                    tracing::debug!(collector = "filesystem", mountpoint = %m.mount_point, %reason, "statfs failed");
                    fams[5].push(labels(), ro);
                    fams[6].push(labels(), 1.0);
                }
            }
        }
        if dropped > 0 {
            self.counters.dropped.store(dropped, Ordering::Relaxed);
        }
        fams.retain(|f| !f.points.is_empty());
        let stuck = self.stuck.lock().len();
        fams.push(MetricFamily::single(
            "nodescope_host_filesystem_stat_timeouts_total",
            "statfs calls that exceeded host.filesystem.stat_timeout_ms (the mount is then skipped until the call returns).",
            MetricType::Counter,
            self.counters.timeouts.load(Ordering::Relaxed) as f64,
        ));
        fams.push(MetricFamily::single(
            "nodescope_host_filesystem_stuck_mounts",
            "Mounts whose statfs is still blocked; they are reported with node_filesystem_device_error 1 and not statted again until it returns.",
            MetricType::Gauge,
            stuck as f64,
        ));
        fams.push(MetricFamily::single(
            "nodescope_host_filesystem_stat_skipped_total",
            "Mounts not statted because they (or too many others) were stuck.",
            MetricType::Counter,
            self.counters.skipped.load(Ordering::Relaxed) as f64,
        ));
        fams.push(MetricFamily::single(
            "nodescope_host_filesystem_mount_mismatch_total",
            "Mounts whose path under the host root was on another device than the mount table says (not that mount: hidden, or not propagated into the agent's view); reported with node_filesystem_device_error 1 instead of a wrong size.",
            MetricType::Counter,
            self.counters.mismatched.load(Ordering::Relaxed) as f64,
        ));
        fams.push(MetricFamily::single(
            "nodescope_host_filesystem_mounts_dropped",
            "Mounts left out of the last collect because more than host.filesystem.max_mounts passed the filters.",
            MetricType::Gauge,
            self.counters.dropped.load(Ordering::Relaxed) as f64,
        ));
        Ok(fams)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil::value;
    use crate::config::FilesystemConfig;
    use proptest::prelude::*;
    use std::time::Instant;

    const FIXTURE: &str = include_str!("../../tests/fixtures/proc/1/mountinfo");

    #[test]
    fn parses_real_mountinfo() {
        let m = parse_mountinfo(FIXTURE);
        let root = m.iter().find(|m| m.mount_point == "/").unwrap();
        assert_eq!(root.fs_type, "ext4");
        assert!(root.device.starts_with("/dev/"));
        assert!(!root.read_only);
        assert!(m.iter().any(|m| m.fs_type == "proc"));
    }

    #[test]
    fn escapes_and_options() {
        let line = "36 35 98:0 /mnt1 /mnt/with\\040space ro,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    37 35 0:5 / /data rw - nfs4 srv:/export rw\nbroken line\n";
        let m = parse_mountinfo(line);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, "/mnt/with space");
        assert_eq!(m[0].path, "/mnt/with space");
        assert!(m[0].read_only);
        assert_eq!(m[1].device, "srv:/export");
        assert_eq!(unescape_mount_path("a\\011b\\134c\\9"), "a\tb\\c\\9");
        // Labels decode only what node_exporter decodes; the statfs path decodes all.
        let m = parse_mountinfo("1 0 8:1 / /a\\134b\\040c rw - ext4 /dev/x\\040y rw\n");
        assert_eq!(m[0].mount_point, "/a\\134b c");
        assert_eq!(m[0].path, "/a\\b c");
        assert_eq!(m[0].device, "/dev/x\\040y");
        assert_eq!(unescape_mount_path("\\04"), "\\04");
        assert_eq!(unescape_mount_path("x\\777y"), "x\\777y");
    }

    fn fake_root(mountinfo: &str) -> (tempfile::TempDir, HostPaths) {
        let dir = tempfile::tempdir().unwrap();
        let paths = HostPaths::from_root(dir.path());
        std::fs::create_dir_all(paths.proc.join("1")).unwrap();
        std::fs::create_dir_all(&paths.root).unwrap();
        std::fs::write(paths.proc.join("1/mountinfo"), mountinfo).unwrap();
        (dir, paths)
    }

    const MOUNTS: &str = "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n\
        2 1 0:20 / /proc rw - proc proc rw\n\
        3 1 0:30 / /nfs rw - nfs4 server:/x rw\n\
        4 1 8:2 / /hung rw - xfs /dev/sdb rw\n\
        5 1 8:3 / /ro ro - ext4 /dev/sdc ro\n";

    #[test]
    fn filters_and_values() {
        let (_d, paths) = fake_root(MOUNTS);
        let stat: StatFn = Arc::new(|_p: &Path| {
            Ok(FsStat {
                block_size: 4096,
                blocks: 100,
                blocks_free: 50,
                blocks_avail: 40,
                files: 10,
                files_free: 7,
                ..Default::default()
            })
        });
        let c = FilesystemCollector::from_config(&paths, &FilesystemConfig::default(), Some(stat))
            .unwrap();
        let f = c.collect().unwrap();
        let l = [
            ("mountpoint", "/"),
            ("device", "/dev/sda1"),
            ("fstype", "ext4"),
        ];
        assert_eq!(value(&f, "node_filesystem_size_bytes", &l), 409600.0);
        assert_eq!(value(&f, "node_filesystem_free_bytes", &l), 204800.0);
        assert_eq!(value(&f, "node_filesystem_avail_bytes", &l), 163840.0);
        assert_eq!(value(&f, "node_filesystem_files", &l), 10.0);
        assert_eq!(value(&f, "node_filesystem_files_free", &l), 7.0);
        assert_eq!(value(&f, "node_filesystem_readonly", &l), 0.0);
        assert_eq!(value(&f, "node_filesystem_device_error", &l), 0.0);
        assert_eq!(
            value(&f, "node_filesystem_readonly", &[("mountpoint", "/ro")]),
            1.0
        );
        let size = f
            .iter()
            .find(|f| f.name == "node_filesystem_size_bytes")
            .unwrap();
        let mps: Vec<&str> = size
            .points
            .iter()
            .map(|p| {
                p.labels
                    .iter()
                    .find(|l| l.0 == "mountpoint")
                    .unwrap()
                    .1
                    .as_str()
            })
            .collect();
        // /proc excluded by mount point and fs type, /nfs as a network filesystem.
        assert_eq!(mps, vec!["/", "/hung", "/ro"]);
    }

    /// Issue 16 item 8: a mount in the host's table whose path under the host root is a
    /// plain directory on another filesystem (a mount made after the agent started, not
    /// propagated) must not report that other filesystem's size.
    #[test]
    fn a_mount_that_is_not_there_is_an_error_not_the_root_disk_size() {
        let dir = tempfile::tempdir().unwrap();
        let paths = HostPaths::from_root(dir.path());
        std::fs::create_dir_all(paths.proc.join("1")).unwrap();
        std::fs::create_dir_all(paths.root.join("mnt/late")).unwrap();
        let st = rustix::fs::stat(&paths.root).unwrap();
        let (maj, min) = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
        // `/` is really the filesystem the root dir is on; /mnt/late claims a 10 MiB tmpfs
        // on device 0:4242 but is only a directory of the root filesystem here.
        std::fs::write(
            paths.proc.join("1/mountinfo"),
            format!(
                "1 0 {maj}:{min} / / rw - ext4 /dev/root rw\n\
                 2 1 0:4242 / /mnt/late rw - tmpfs tmpfs rw,size=10240k\n"
            ),
        )
        .unwrap();
        let cfg = FilesystemConfig {
            mount_points_exclude: String::new(),
            ..Default::default()
        };
        let c = FilesystemCollector::from_config(&paths, &cfg, None).unwrap();
        let f = c.collect().unwrap();
        let late = [("mountpoint", "/mnt/late")];
        assert_eq!(value(&f, "node_filesystem_device_error", &late), 1.0);
        let size = f
            .iter()
            .find(|f| f.name == "node_filesystem_size_bytes")
            .unwrap();
        assert!(
            !size
                .points
                .iter()
                .any(|p| p.labels.iter().any(|(_, v)| v == "/mnt/late")),
            "a size was reported for a mount that is not there"
        );
        assert_eq!(
            value(&f, "nodescope_host_filesystem_mount_mismatch_total", &[]),
            1.0
        );
        // The real root is that mount: its size is reported.
        let root = [("mountpoint", "/")];
        assert_eq!(value(&f, "node_filesystem_device_error", &root), 0.0);
        assert!(value(&f, "node_filesystem_size_bytes", &root) > 0.0);
    }

    #[test]
    fn mismatch_rules() {
        let m = |fs: &str, dev| Mount {
            device: "d".into(),
            mount_point: "/x".into(),
            fs_type: fs.into(),
            read_only: false,
            path: "/x".into(),
            dev,
        };
        let s = |dev, root| FsStat {
            dev,
            mount_root: root,
            ..Default::default()
        };
        assert!(mount_mismatch(&m("ext4", Some((8, 1))), &s(Some((8, 1)), None)).is_none());
        assert!(mount_mismatch(&m("ext4", Some((8, 1))), &s(Some((8, 2)), Some(true))).is_some());
        assert!(
            mount_mismatch(&m("btrfs", Some((0, 40))), &s(Some((0, 41)), Some(true))).is_none()
        );
        assert!(
            mount_mismatch(&m("btrfs", Some((0, 40))), &s(Some((0, 41)), Some(false))).is_some()
        );
        // Unknown on either side: nothing to check (injected statfs in tests).
        assert!(mount_mismatch(&m("ext4", None), &s(Some((8, 2)), None)).is_none());
        assert!(mount_mismatch(&m("ext4", Some((8, 1))), &s(None, None)).is_none());
    }

    #[test]
    fn statfs_goes_through_the_host_root() {
        let (_d, paths) = fake_root(MOUNTS);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = Arc::clone(&seen);
        let stat: StatFn = Arc::new(move |p: &Path| {
            s2.lock().push(p.to_path_buf());
            Ok(FsStat::default())
        });
        let c = FilesystemCollector::from_config(&paths, &FilesystemConfig::default(), Some(stat))
            .unwrap();
        c.collect().unwrap();
        let seen = seen.lock().clone();
        assert!(seen.contains(&paths.root.join("")), "{seen:?}");
        assert!(seen.contains(&paths.root.join("hung")), "{seen:?}");
    }

    #[test]
    fn hung_statfs_is_skipped_and_reported_within_the_timeout() {
        let (_d, paths) = fake_root(MOUNTS);
        let release = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let r2 = Arc::clone(&release);
        let hung_root = paths.root.join("hung");
        let stat: StatFn = Arc::new(move |p: &Path| {
            if p == hung_root {
                let (m, cv) = &*r2;
                let mut go = m.lock().unwrap();
                while !*go {
                    go = cv.wait(go).unwrap();
                }
            }
            Ok(FsStat {
                block_size: 1,
                blocks: 1,
                ..Default::default()
            })
        });
        let cfg = FilesystemConfig {
            stat_timeout_ms: 1000,
            ..Default::default()
        };
        let c = FilesystemCollector::from_config(&paths, &cfg, Some(stat)).unwrap();

        // First collect: the hung mount costs one timeout, the others (before and after it
        // in the batch) are still statted.
        let t = Instant::now();
        let f = c.collect().unwrap();
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(1000), "{took:?}");
        assert!(took < Duration::from_millis(3000), "{took:?}");
        assert_eq!(
            value(
                &f,
                "node_filesystem_device_error",
                &[("mountpoint", "/hung")]
            ),
            1.0
        );
        assert_eq!(
            value(&f, "node_filesystem_device_error", &[("mountpoint", "/")]),
            0.0
        );
        assert_eq!(
            value(&f, "node_filesystem_size_bytes", &[("mountpoint", "/ro")]),
            1.0
        );
        assert_eq!(
            value(&f, "nodescope_host_filesystem_stat_timeouts_total", &[]),
            1.0
        );
        assert_eq!(
            value(&f, "nodescope_host_filesystem_stuck_mounts", &[]),
            1.0
        );
        assert_eq!(c.stuck_mounts(), vec!["/hung".to_string()]);

        // Second collect: the stuck mount is skipped at once, no new statfs, no wait.
        let t = Instant::now();
        let f = c.collect().unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(150),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(
            value(
                &f,
                "node_filesystem_device_error",
                &[("mountpoint", "/hung")]
            ),
            1.0
        );
        assert_eq!(
            value(&f, "nodescope_host_filesystem_stat_skipped_total", &[]),
            1.0
        );
        assert_eq!(c.stat_timeouts(), 1);

        // The mount recovers: its blocked call returns and it is statted again.
        {
            let (m, cv) = &*release;
            *m.lock().unwrap() = true;
            cv.notify_all();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !c.stuck_mounts().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(c.stuck_mounts().is_empty());
        let f = c.collect().unwrap();
        assert_eq!(
            value(
                &f,
                "node_filesystem_device_error",
                &[("mountpoint", "/hung")]
            ),
            0.0
        );
        assert_eq!(
            value(&f, "node_filesystem_size_bytes", &[("mountpoint", "/hung")]),
            1.0
        );
    }

    #[test]
    fn stuck_workers_are_bounded() {
        let mounts: String = (0..6)
            .map(|i| format!("{i} 0 8:{i} / /m{i} rw - ext4 /dev/x{i} rw\n"))
            .collect();
        let (_d, paths) = fake_root(&mounts);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let stat: StatFn = Arc::new(move |_p: &Path| {
            let _ = rx.lock().unwrap().recv();
            Ok(FsStat::default())
        });
        let cfg = FilesystemConfig {
            stat_timeout_ms: 20,
            max_stuck_mounts: 2,
            ..Default::default()
        };
        let c = FilesystemCollector::from_config(&paths, &cfg, Some(stat)).unwrap();
        let f = c.collect().unwrap();
        // Two hung (and stuck); the other four are refused without a statfs.
        assert_eq!(c.stat_timeouts(), 2);
        assert_eq!(c.stuck_mounts().len(), 2);
        assert_eq!(
            value(&f, "nodescope_host_filesystem_stat_skipped_total", &[]),
            4.0
        );
        drop(tx);
    }

    #[test]
    fn statfs_error_is_a_device_error() {
        let (_d, paths) = fake_root("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n");
        let stat: StatFn =
            Arc::new(|_p: &Path| Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied)));
        let c = FilesystemCollector::from_config(&paths, &FilesystemConfig::default(), Some(stat))
            .unwrap();
        let f = c.collect().unwrap();
        assert_eq!(
            value(&f, "node_filesystem_device_error", &[("mountpoint", "/")]),
            1.0
        );
        assert!(f.iter().all(|f| f.name != "node_filesystem_size_bytes"));
    }

    #[test]
    fn real_statfs_of_root_matches_libc_view() {
        let s = real_statfs(Path::new("/")).unwrap();
        assert!(s.blocks > 0 && s.block_size > 0);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = parse_mountinfo(&s);
            let _ = unescape_mount_path(&s);
        }

        #[test]
        fn truncated_never_panics(cut in 0usize..3000) {
            let cut = cut.min(FIXTURE.len());
            if FIXTURE.is_char_boundary(cut) {
                let _ = parse_mountinfo(&FIXTURE[..cut]);
            }
        }

        #[test]
        fn line_shaped_garbage_never_panics(lines in proptest::collection::vec("[0-9]{0,3} [0-9]{0,3} [0-9:]{0,5} / /[a-z\\\\0-7]{0,8} (rw|ro)[a-z,=]{0,8}( shared:[0-9x]{0,2})? -? [a-z0-9.]{0,6} [a-z/]{0,6} [a-z,]{0,6}", 0..8)) {
            let _ = parse_mountinfo(&lines.join("\n"));
        }

        #[test]
        fn escape_shaped_garbage_never_panics(s in "(\\\\[0-9]{0,4}|[a-z ]){0,20}") {
            let _ = unescape_mount_path(&s);
        }
    }
}
