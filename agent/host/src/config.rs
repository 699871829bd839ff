//! `[host]` configuration: which collectors run and node_exporter-style filters.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nodescope_model::config::Issues;
use nodescope_model::workload::SharedPodLookup;
use nodescope_model::Collector;
use serde::Deserialize;

use crate::collectors::{self, ALL_COLLECTORS};
use crate::filter::{compile, NameFilter};
use crate::{HostError, HostPaths};

/// node_exporter 1.5's `--collector.diskstats.device-exclude` default.
pub const DEFAULT_DISK_DEVICE_EXCLUDE: &str = r"^(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$";
/// node_exporter's `--collector.netdev.device-exclude` as Debian's 1.5 runs it.
pub const DEFAULT_NETDEV_DEVICE_EXCLUDE: &str = "^lo$";
/// node_exporter 1.5's `--collector.filesystem.mount-points-exclude` default.
pub const DEFAULT_MOUNT_POINTS_EXCLUDE: &str =
    "^/(dev|proc|run|sys|mnt|media|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)";
/// node_exporter 1.5's `--collector.filesystem.fs-types-exclude` default.
pub const DEFAULT_FS_TYPES_EXCLUDE: &str = "^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|sysfs|tracefs)$";
/// node_exporter 1.5's `--collector.netstat.fields` default.
pub const DEFAULT_NETSTAT_FIELDS: &str = "^(.*_(InErrors|InErrs)|Ip_Forwarding|Ip(6|Ext)_(InOctets|OutOctets)|Icmp6?_(InMsgs|OutMsgs)|TcpExt_(Listen.*|Syncookies.*|TCPSynRetrans|TCPTimeouts)|Tcp_(ActiveOpens|InSegs|OutSegs|OutRsts|PassiveOpens|RetransSegs|CurrEstab)|Udp6?_(InDatagrams|OutDatagrams|NoPorts|RcvbufErrors|SndbufErrors))$";
/// node_exporter 1.5's `--collector.vmstat.fields` default.
pub const DEFAULT_VMSTAT_FIELDS: &str = "^(oom_kill|pgpg|pswp|pg.*fault).*";
/// Filesystem types whose `statfs` can block on a remote server; skipped by default.
pub const DEFAULT_NETWORK_FS_TYPES: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ceph",
    "glusterfs",
    "fuse.glusterfs",
    "fuse.cephfs",
    "fuse.sshfs",
    "fuse.s3fs",
    "fuse.rclone",
    "fuse.juicefs",
    "9p",
    "afs",
    "lustre",
    "gpfs",
    "beegfs",
    "ncpfs",
    "davfs",
    "fuse.davfs2",
];

/// The `[host]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostMetricsConfig {
    /// Master switch for host metrics.
    pub enabled: bool,
    /// Collectors to run (default: all of [`ALL_COLLECTORS`]).
    pub collectors: Vec<String>,
    /// Collectors to leave out of `collectors` (handy to drop one from the default set).
    pub disabled_collectors: Vec<String>,
    pub filesystem: FilesystemConfig,
    pub diskstats: DiskstatsConfig,
    pub netdev: NetdevConfig,
    pub netstat: NetstatConfig,
    pub vmstat: VmstatConfig,
    pub netclass: NetclassConfig,
    pub arp: ArpConfig,
    pub textfile: TextfileConfig,
    pub powersupply: PowerSupplyConfig,
    pub tapestats: TapestatsConfig,
    pub ipvs: IpvsConfig,
    pub bcache: BcacheConfig,
    pub cgroup: CgroupConfig,
}

/// `[host.cgroup]`: per-workload metrics from the cgroup filesystem.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CgroupConfig {
    /// Cgroup directories walked per collect; the rest are skipped and counted.
    pub max_cgroups: usize,
    /// Workloads exported per collect; the rest are dropped and counted.
    pub max_workloads: usize,
    /// Cgroup files kept open between collects (re-read with pread, about 6× cheaper
    /// than open+read+close); past it files are opened per read and counted. Keep it
    /// below the agent's RLIMIT_NOFILE.
    pub max_open_files: usize,
    /// The cgroup tree is walked again at least this often; also whenever cgroups appear
    /// or vanish (cgroup v2: the root's `cgroup.stat` descendant count; v1: the link
    /// count of every directory with children), and whenever a known cgroup vanished.
    pub rescan_interval_ms: u64,
}

impl Default for CgroupConfig {
    fn default() -> Self {
        CgroupConfig {
            max_cgroups: 10_000,
            max_workloads: 2_000,
            max_open_files: 8_192,
            rescan_interval_ms: 60_000,
        }
    }
}

/// `[host.bcache]` (`--collector.bcache.priorityStats`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BcacheConfig {
    /// Also read the (expensive) `priority_stats` of each cache device.
    pub priority_stats: bool,
}

/// `[host.ipvs]` (`--collector.ipvs.backend-labels`, as a list).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpvsConfig {
    /// Labels of the backend gauges; backends equal on these are summed.
    pub backend_labels: Vec<String>,
}

impl Default for IpvsConfig {
    fn default() -> Self {
        IpvsConfig {
            backend_labels: crate::collectors::ipvs::IPVS_BACKEND_LABELS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// `[host.powersupply]` (`--collector.powersupply.ignored-supplies`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PowerSupplyConfig {
    pub ignored_supplies: String,
}

impl Default for PowerSupplyConfig {
    fn default() -> Self {
        PowerSupplyConfig {
            ignored_supplies: "^$".into(),
        }
    }
}

/// `[host.tapestats]` (`--collector.tapestats.ignored-devices`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TapestatsConfig {
    pub ignored_devices: String,
}

impl Default for TapestatsConfig {
    fn default() -> Self {
        TapestatsConfig {
            ignored_devices: "^$".into(),
        }
    }
}

/// `[host.netclass]` (`--collector.netclass.*`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetclassConfig {
    /// `--collector.netclass.ignored-devices` (default `^$`).
    pub ignored_devices: String,
    /// `--collector.netclass.ignore-invalid-speed`.
    pub ignore_invalid_speed: bool,
    /// Interfaces beyond this many are dropped and counted.
    pub max_devices: usize,
}

/// `[host.arp]` (`--collector.arp.device-include` / `-exclude`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArpConfig {
    pub device_include: String,
    pub device_exclude: String,
}

/// `[host.textfile]` (`--collector.textfile.directory`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TextfileConfig {
    /// Directory of `*.prom` files, as the host sees it (read under the host root).
    /// Default: Debian's `/var/lib/prometheus/node-exporter`; a missing default directory
    /// is not an error, a missing configured one is. `""` turns the collector into a no-op.
    pub directory: String,
    /// Files beyond this many (in name order) are not read, and counted.
    pub max_files: usize,
    /// A larger file is refused (`node_textfile_scrape_error 1`).
    pub max_file_bytes: u64,
    /// Series beyond this many (over all files) are dropped, and counted.
    pub max_series: usize,
}

/// Debian's `--collector.textfile.directory` default.
pub const DEFAULT_TEXTFILE_DIRECTORY: &str = "/var/lib/prometheus/node-exporter";

impl Default for NetclassConfig {
    fn default() -> Self {
        NetclassConfig {
            ignored_devices: "^$".into(),
            ignore_invalid_speed: false,
            max_devices: 4096,
        }
    }
}

impl Default for TextfileConfig {
    fn default() -> Self {
        TextfileConfig {
            directory: DEFAULT_TEXTFILE_DIRECTORY.into(),
            max_files: 1024,
            max_file_bytes: 16 << 20,
            max_series: 100_000,
        }
    }
}

/// `[host.filesystem]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesystemConfig {
    /// Regex of mount points to leave out (node_exporter's default).
    pub mount_points_exclude: String,
    /// Regex of filesystem types to leave out (node_exporter's default).
    pub fs_types_exclude: String,
    /// Skip the types in `network_fs_types` (a hung server can block `statfs`).
    pub skip_network_filesystems: bool,
    pub network_fs_types: Vec<String>,
    /// How long one `statfs` may take before the mount is reported stuck and skipped.
    pub stat_timeout_ms: u64,
    /// At most this many hung `statfs` calls (one blocked thread each) are tolerated; while
    /// that many are outstanding, no further `statfs` is attempted.
    pub max_stuck_mounts: usize,
    /// Mounts beyond this many (after filtering) are dropped and counted.
    pub max_mounts: usize,
}

/// `[host.diskstats]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiskstatsConfig {
    pub device_exclude: String,
    pub device_include: String,
    /// Devices beyond this many are dropped and counted.
    pub max_devices: usize,
}

/// `[host.netdev]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetdevConfig {
    pub device_exclude: String,
    pub device_include: String,
    /// Devices beyond this many are dropped and counted.
    pub max_devices: usize,
}

/// `[host.netstat]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetstatConfig {
    /// Regex over `<Protocol>_<Field>` names to export.
    pub fields: String,
}

/// `[host.vmstat]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmstatConfig {
    /// Regex over `/proc/vmstat` keys to export.
    pub fields: String,
}

impl Default for HostMetricsConfig {
    fn default() -> Self {
        HostMetricsConfig {
            enabled: true,
            collectors: ALL_COLLECTORS.iter().map(|s| s.to_string()).collect(),
            disabled_collectors: Vec::new(),
            filesystem: FilesystemConfig::default(),
            diskstats: DiskstatsConfig::default(),
            netdev: NetdevConfig::default(),
            netstat: NetstatConfig::default(),
            vmstat: VmstatConfig::default(),
            netclass: NetclassConfig::default(),
            arp: ArpConfig::default(),
            textfile: TextfileConfig::default(),
            powersupply: PowerSupplyConfig::default(),
            tapestats: TapestatsConfig::default(),
            ipvs: IpvsConfig::default(),
            bcache: BcacheConfig::default(),
            cgroup: CgroupConfig::default(),
        }
    }
}

impl Default for FilesystemConfig {
    fn default() -> Self {
        FilesystemConfig {
            mount_points_exclude: DEFAULT_MOUNT_POINTS_EXCLUDE.into(),
            fs_types_exclude: DEFAULT_FS_TYPES_EXCLUDE.into(),
            skip_network_filesystems: true,
            network_fs_types: DEFAULT_NETWORK_FS_TYPES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            stat_timeout_ms: 1000,
            max_stuck_mounts: 32,
            max_mounts: 4096,
        }
    }
}

impl Default for DiskstatsConfig {
    fn default() -> Self {
        DiskstatsConfig {
            device_exclude: DEFAULT_DISK_DEVICE_EXCLUDE.into(),
            device_include: String::new(),
            max_devices: 4096,
        }
    }
}

impl Default for NetdevConfig {
    fn default() -> Self {
        NetdevConfig {
            device_exclude: DEFAULT_NETDEV_DEVICE_EXCLUDE.into(),
            device_include: String::new(),
            max_devices: 4096,
        }
    }
}

impl Default for NetstatConfig {
    fn default() -> Self {
        NetstatConfig {
            fields: DEFAULT_NETSTAT_FIELDS.into(),
        }
    }
}

impl Default for VmstatConfig {
    fn default() -> Self {
        VmstatConfig {
            fields: DEFAULT_VMSTAT_FIELDS.into(),
        }
    }
}

fn key(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_string()
    } else {
        format!("{prefix}.{rest}")
    }
}

fn check_regex(issues: &mut Issues, k: String, pattern: &str) {
    if let Err(e) = compile(&k, pattern) {
        let reason = match e {
            HostError::InvalidRegex { source, .. } => {
                format!("invalid regular expression: {source}")
            }
            other => other.to_string(),
        };
        issues.push(k, reason);
    }
}

impl HostMetricsConfig {
    /// Records every problem of this section in `issues`, keys prefixed with `prefix`
    /// (e.g. `host`).
    pub fn validate(&self, prefix: &str, issues: &mut Issues) {
        for (field, list) in [
            ("collectors", &self.collectors),
            ("disabled_collectors", &self.disabled_collectors),
        ] {
            for (i, name) in list.iter().enumerate() {
                if !ALL_COLLECTORS.contains(&name.as_str()) {
                    issues.push(
                        key(prefix, &format!("{field}[{i}]")),
                        format!(
                            "unknown collector `{name}`; known: {}",
                            ALL_COLLECTORS.join(", ")
                        ),
                    );
                }
            }
        }
        let fs = &self.filesystem;
        check_regex(
            issues,
            key(prefix, "filesystem.mount_points_exclude"),
            &fs.mount_points_exclude,
        );
        check_regex(
            issues,
            key(prefix, "filesystem.fs_types_exclude"),
            &fs.fs_types_exclude,
        );
        issues.check(
            (1..=60_000).contains(&fs.stat_timeout_ms),
            key(prefix, "filesystem.stat_timeout_ms"),
            format!(
                "must be between 1 and 60000 milliseconds, got {}",
                fs.stat_timeout_ms
            ),
        );
        issues.check(
            (1..=1024).contains(&fs.max_stuck_mounts),
            key(prefix, "filesystem.max_stuck_mounts"),
            format!("must be between 1 and 1024, got {}", fs.max_stuck_mounts),
        );
        issues.check(
            fs.max_mounts >= 1,
            key(prefix, "filesystem.max_mounts"),
            "must be at least 1",
        );
        for (i, t) in fs.network_fs_types.iter().enumerate() {
            issues.check(
                !t.is_empty() && !t.contains(char::is_whitespace),
                key(prefix, &format!("filesystem.network_fs_types[{i}]")),
                format!("`{t}` is not a filesystem type name"),
            );
        }
        for (section, include, exclude, max) in [
            (
                "diskstats",
                &self.diskstats.device_include,
                &self.diskstats.device_exclude,
                self.diskstats.max_devices,
            ),
            (
                "netdev",
                &self.netdev.device_include,
                &self.netdev.device_exclude,
                self.netdev.max_devices,
            ),
        ] {
            check_regex(
                issues,
                key(prefix, &format!("{section}.device_include")),
                include,
            );
            check_regex(
                issues,
                key(prefix, &format!("{section}.device_exclude")),
                exclude,
            );
            issues.check(
                include.is_empty() || exclude.is_empty(),
                key(prefix, &format!("{section}.device_include")),
                "device_include and device_exclude are mutually exclusive (as in node_exporter); set device_exclude = \"\" to use device_include",
            );
            issues.check(
                max >= 1,
                key(prefix, &format!("{section}.max_devices")),
                "must be at least 1",
            );
        }
        check_regex(
            issues,
            key(prefix, "netclass.ignored_devices"),
            &self.netclass.ignored_devices,
        );
        issues.check(
            self.netclass.max_devices >= 1,
            key(prefix, "netclass.max_devices"),
            "must be at least 1",
        );
        check_regex(
            issues,
            key(prefix, "arp.device_include"),
            &self.arp.device_include,
        );
        check_regex(
            issues,
            key(prefix, "arp.device_exclude"),
            &self.arp.device_exclude,
        );
        issues.check(
            self.arp.device_include.is_empty() || self.arp.device_exclude.is_empty(),
            key(prefix, "arp.device_include"),
            "device_include and device_exclude are mutually exclusive (as in node_exporter)",
        );
        check_regex(
            issues,
            key(prefix, "powersupply.ignored_supplies"),
            &self.powersupply.ignored_supplies,
        );
        check_regex(
            issues,
            key(prefix, "tapestats.ignored_devices"),
            &self.tapestats.ignored_devices,
        );
        for (i, l) in self.ipvs.backend_labels.iter().enumerate() {
            issues.check(
                crate::collectors::ipvs::IPVS_BACKEND_LABELS.contains(&l.as_str()),
                key(prefix, &format!("ipvs.backend_labels[{i}]")),
                format!(
                    "unknown IPVS backend label `{l}`; known: {}",
                    crate::collectors::ipvs::IPVS_BACKEND_LABELS.join(", ")
                ),
            );
        }
        issues.check(
            (1..=1_000_000).contains(&self.cgroup.max_cgroups),
            key(prefix, "cgroup.max_cgroups"),
            format!(
                "must be between 1 and 1000000, got {}",
                self.cgroup.max_cgroups
            ),
        );
        issues.check(
            (1..=100_000).contains(&self.cgroup.max_workloads),
            key(prefix, "cgroup.max_workloads"),
            format!(
                "must be between 1 and 100000, got {}",
                self.cgroup.max_workloads
            ),
        );
        issues.check(
            self.cgroup.max_open_files <= 1_000_000,
            key(prefix, "cgroup.max_open_files"),
            format!(
                "must be at most 1000000, got {}",
                self.cgroup.max_open_files
            ),
        );
        issues.check(
            (100..=3_600_000).contains(&self.cgroup.rescan_interval_ms),
            key(prefix, "cgroup.rescan_interval_ms"),
            format!(
                "must be between 100 and 3600000 milliseconds, got {}",
                self.cgroup.rescan_interval_ms
            ),
        );
        let tf = &self.textfile;
        issues.check(
            tf.directory.is_empty() || tf.directory.starts_with('/'),
            key(prefix, "textfile.directory"),
            format!(
                "must be an absolute path as the host sees it, got {:?}",
                tf.directory
            ),
        );
        issues.check(
            tf.max_files >= 1,
            key(prefix, "textfile.max_files"),
            "must be at least 1",
        );
        issues.check(
            (1..=(1u64 << 30)).contains(&tf.max_file_bytes),
            key(prefix, "textfile.max_file_bytes"),
            format!(
                "must be between 1 and 1073741824, got {}",
                tf.max_file_bytes
            ),
        );
        issues.check(
            tf.max_series >= 1,
            key(prefix, "textfile.max_series"),
            "must be at least 1",
        );
        check_regex(issues, key(prefix, "netstat.fields"), &self.netstat.fields);
        check_regex(issues, key(prefix, "vmstat.fields"), &self.vmstat.fields);
    }

    /// The collectors that will run, in [`ALL_COLLECTORS`] order.
    pub fn enabled_collectors(&self) -> Vec<&'static str> {
        if !self.enabled {
            return Vec::new();
        }
        ALL_COLLECTORS
            .iter()
            .copied()
            .filter(|c| self.collectors.iter().any(|n| n == c))
            .filter(|c| !self.disabled_collectors.iter().any(|n| n == c))
            .collect()
    }

    /// Builds one collector per enabled family, reading under `paths`. Fails on the first
    /// invalid setting (run [`validate`](Self::validate) first to see them all).
    pub fn build(&self, paths: &HostPaths) -> Result<Vec<Arc<dyn Collector>>, HostError> {
        self.build_with_pods(paths, None)
    }

    /// As [`build`](Self::build), with the Kubernetes pod metadata the `cgroup` collector
    /// adds to container workloads (`namespace`, `pod`, `container`).
    pub fn build_with_pods(
        &self,
        paths: &HostPaths,
        pods: SharedPodLookup,
    ) -> Result<Vec<Arc<dyn Collector>>, HostError> {
        if !self.enabled {
            return Ok(Vec::new());
        }
        for (field, list) in [
            ("collectors", &self.collectors),
            ("disabled_collectors", &self.disabled_collectors),
        ] {
            if let Some(bad) = list.iter().find(|n| !ALL_COLLECTORS.contains(&n.as_str())) {
                return Err(HostError::InvalidConfig {
                    key: format!("host.{field}"),
                    reason: format!("unknown collector `{bad}`"),
                });
            }
        }
        let mut issues = Issues::default();
        self.validate("host", &mut issues);
        if let Some(first) = issues.list.first() {
            return Err(HostError::InvalidConfig {
                key: first.key.clone(),
                reason: first.reason.clone(),
            });
        }
        let mut out: Vec<Arc<dyn Collector>> = Vec::new();
        for name in self.enabled_collectors() {
            out.push(self.build_one(name, paths, &pods)?);
        }
        Ok(out)
    }

    fn build_one(
        &self,
        name: &str,
        paths: &HostPaths,
        pods: &SharedPodLookup,
    ) -> Result<Arc<dyn Collector>, HostError> {
        use collectors::*;
        Ok(match name {
            "cpu" => Arc::new(cpu::CpuCollector::new(paths)),
            "stat" => Arc::new(cpu::StatCollector::new(paths)),
            "meminfo" => Arc::new(meminfo::MeminfoCollector::new(paths)),
            "loadavg" => Arc::new(loadavg::LoadavgCollector::new(paths)),
            "diskstats" => Arc::new(diskstats::DiskstatsCollector::new(
                paths,
                NameFilter::new(
                    "host.diskstats.device_include",
                    &self.diskstats.device_include,
                    "host.diskstats.device_exclude",
                    &self.diskstats.device_exclude,
                )?,
                self.diskstats.max_devices,
            )),
            "filesystem" => {
                let fs = &self.filesystem;
                Arc::new(filesystem::FilesystemCollector::new(
                    paths,
                    filesystem::FilesystemOptions {
                        mount_points: NameFilter::new(
                            "",
                            "",
                            "host.filesystem.mount_points_exclude",
                            &fs.mount_points_exclude,
                        )?,
                        fs_types: NameFilter::new(
                            "",
                            "",
                            "host.filesystem.fs_types_exclude",
                            &fs.fs_types_exclude,
                        )?,
                        network_fs_types: if fs.skip_network_filesystems {
                            fs.network_fs_types.clone()
                        } else {
                            Vec::new()
                        },
                        stat_timeout: Duration::from_millis(fs.stat_timeout_ms),
                        max_stuck: fs.max_stuck_mounts,
                        max_mounts: fs.max_mounts,
                    },
                ))
            }
            "netdev" => Arc::new(netdev::NetdevCollector::new(
                paths,
                NameFilter::new(
                    "host.netdev.device_include",
                    &self.netdev.device_include,
                    "host.netdev.device_exclude",
                    &self.netdev.device_exclude,
                )?,
                self.netdev.max_devices,
            )),
            "netstat" => Arc::new(netstat::NetstatCollector::new(
                paths,
                NameFilter::new("host.netstat.fields", &self.netstat.fields, "", "")?,
            )),
            "sockstat" => Arc::new(sockstat::SockstatCollector::new(paths)),
            "pressure" => Arc::new(pressure::PressureCollector::new(paths)),
            "vmstat" => Arc::new(vmstat::VmstatCollector::new(
                paths,
                NameFilter::new("host.vmstat.fields", &self.vmstat.fields, "", "")?,
            )),
            "filefd" => Arc::new(filefd::FilefdCollector::new(paths)),
            "uname" => Arc::new(uname::UnameCollector),
            "os" => Arc::new(os::OsCollector::new(paths)),
            "time" => Arc::new(time::TimeCollector::new(paths)),
            "conntrack" => Arc::new(conntrack::ConntrackCollector::new(paths)),
            "netclass" => Arc::new(netclass::NetclassCollector::new(
                paths,
                NameFilter::new(
                    "",
                    "",
                    "host.netclass.ignored_devices",
                    &self.netclass.ignored_devices,
                )?,
                self.netclass.ignore_invalid_speed,
                self.netclass.max_devices,
            )),
            "arp" => Arc::new(arp::ArpCollector::new(
                paths,
                NameFilter::new(
                    "host.arp.device_include",
                    &self.arp.device_include,
                    "host.arp.device_exclude",
                    &self.arp.device_exclude,
                )?,
            )),
            "entropy" => Arc::new(entropy::EntropyCollector::new(paths)),
            "selinux" => Arc::new(selinux::SelinuxCollector::new(paths)),
            "udp_queues" => Arc::new(udp_queues::UdpQueuesCollector::new(paths)),
            "softnet" => Arc::new(softnet::SoftnetCollector::new(paths)),
            "schedstat" => Arc::new(schedstat::SchedstatCollector::new(paths)),
            "timex" => Arc::new(timex::TimexCollector),
            "textfile" => {
                let tf = &self.textfile;
                let rel = tf.directory.trim_start_matches('/');
                Arc::new(textfile::TextfileCollector::new(
                    if tf.directory.is_empty() {
                        PathBuf::new()
                    } else {
                        paths.root.join(rel)
                    },
                    PathBuf::from(&tf.directory),
                    tf.directory == DEFAULT_TEXTFILE_DIRECTORY,
                    textfile::TextfileLimits {
                        max_files: tf.max_files,
                        max_file_bytes: tf.max_file_bytes,
                        max_series: tf.max_series,
                    },
                ))
            }
            "cpufreq" => Arc::new(cpufreq::CpufreqCollector::new(paths)),
            "thermal_zone" => Arc::new(thermal_zone::ThermalZoneCollector::new(paths)),
            "edac" => Arc::new(edac::EdacCollector::new(paths)),
            "rapl" => Arc::new(rapl::RaplCollector::new(paths)),
            "nvme" => Arc::new(nvme::NvmeCollector::new(paths)),
            "bonding" => Arc::new(bonding::BondingCollector::new(paths)),
            "dmi" => Arc::new(dmi::DmiCollector::new(paths)),
            "powersupplyclass" => Arc::new(powersupplyclass::PowerSupplyClassCollector::new(
                paths,
                NameFilter::new(
                    "",
                    "",
                    "host.powersupply.ignored_supplies",
                    &self.powersupply.ignored_supplies,
                )?,
            )),
            "tapestats" => Arc::new(tapestats::TapestatsCollector::new(
                paths,
                NameFilter::new(
                    "",
                    "",
                    "host.tapestats.ignored_devices",
                    &self.tapestats.ignored_devices,
                )?,
            )),
            "mdadm" => Arc::new(mdadm::MdadmCollector::new(paths)),
            "hwmon" => Arc::new(hwmon::HwmonCollector::new(paths)),
            "infiniband" => Arc::new(infiniband::InfinibandCollector::new(paths)),
            "ipvs" => Arc::new(ipvs::IpvsCollector::new(
                paths,
                ipvs::IPVS_BACKEND_LABELS
                    .iter()
                    .copied()
                    .filter(|l| self.ipvs.backend_labels.iter().any(|c| c == l))
                    .collect(),
            )),
            "nfs" => Arc::new(nfs::NfsCollector::new(paths)),
            "xfs" => Arc::new(xfs::XfsCollector::new(paths)),
            "btrfs" => Arc::new(btrfs::BtrfsCollector::new(paths)),
            "bcache" => Arc::new(bcache::BcacheCollector::new(
                paths,
                self.bcache.priority_stats,
            )),
            "zfs" => Arc::new(zfs::ZfsCollector::new(paths)),
            "nfsd" => Arc::new(nfsd::NfsdCollector::new(paths)),
            "fibrechannel" => Arc::new(fibrechannel::FibrechannelCollector::new(paths)),
            "process" => Arc::new(process::ProcessCollector::new()),
            "cgroup" => Arc::new(cgroup::CgroupCollector::new(
                paths,
                pods.clone(),
                cgroup::CgroupLimits {
                    max_cgroups: self.cgroup.max_cgroups,
                    max_workloads: self.cgroup.max_workloads,
                    max_open_files: self.cgroup.max_open_files,
                    rescan_interval: Duration::from_millis(self.cgroup.rescan_interval_ms),
                },
            )),
            other => {
                return Err(HostError::InvalidConfig {
                    key: "host.collectors".into(),
                    reason: format!("unknown collector `{other}`"),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_builds_every_collector() {
        let cfg = HostMetricsConfig::default();
        let mut issues = Issues::default();
        cfg.validate("host", &mut issues);
        assert!(issues.is_empty(), "{:?}", issues.list);
        let cs = cfg.build(&HostPaths::default()).unwrap();
        let names: Vec<_> = cs.iter().map(|c| c.name()).collect();
        assert_eq!(names, ALL_COLLECTORS);
    }

    #[test]
    fn disabled_and_master_switch() {
        let cfg: HostMetricsConfig =
            toml::from_str(r#"disabled_collectors = ["conntrack", "filesystem"]"#).unwrap();
        let names = cfg.enabled_collectors();
        assert!(!names.contains(&"conntrack"));
        assert!(!names.contains(&"filesystem"));
        assert!(names.contains(&"cpu"));
        let cfg = HostMetricsConfig {
            enabled: false,
            ..Default::default()
        };
        assert!(cfg.build(&HostPaths::default()).unwrap().is_empty());
    }

    #[test]
    fn toml_section_parses_and_rejects_unknown_keys() {
        let cfg: HostMetricsConfig = toml::from_str(
            r#"
            collectors = ["cpu", "filesystem"]
            [filesystem]
            stat_timeout_ms = 250
            skip_network_filesystems = false
            [netdev]
            device_exclude = "^(lo|veth.*)$"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.enabled_collectors(), vec!["cpu", "filesystem"]);
        assert_eq!(cfg.filesystem.stat_timeout_ms, 250);
        assert_eq!(cfg.filesystem.max_stuck_mounts, 32);
        assert_eq!(cfg.diskstats.device_exclude, DEFAULT_DISK_DEVICE_EXCLUDE);
        let err = toml::from_str::<HostMetricsConfig>("[filesystem]\nstat_timeout = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("stat_timeout"), "{err}");
        let err = toml::from_str::<HostMetricsConfig>("enabled = \"yes\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("enabled") || err.contains("bool"), "{err}");
    }

    #[test]
    fn validate_reports_every_problem() {
        let mut cfg = HostMetricsConfig::default();
        cfg.collectors.push("bogus".into());
        cfg.disabled_collectors.push("nope".into());
        cfg.filesystem.mount_points_exclude = "(".into();
        cfg.filesystem.stat_timeout_ms = 0;
        cfg.netdev.device_include = "^eth".into();
        cfg.vmstat.fields = "[".into();
        let mut issues = Issues::default();
        cfg.validate("host", &mut issues);
        let keys: Vec<_> = issues.list.iter().map(|i| i.key.as_str()).collect();
        assert!(
            keys.contains(&format!("host.collectors[{}]", ALL_COLLECTORS.len()).as_str()),
            "{keys:?}"
        );
        assert!(keys.contains(&"host.disabled_collectors[0]"), "{keys:?}");
        assert!(
            keys.contains(&"host.filesystem.mount_points_exclude"),
            "{keys:?}"
        );
        assert!(
            keys.contains(&"host.filesystem.stat_timeout_ms"),
            "{keys:?}"
        );
        assert!(keys.contains(&"host.netdev.device_include"), "{keys:?}");
        assert!(keys.contains(&"host.vmstat.fields"), "{keys:?}");
        assert_eq!(issues.list.len(), 6, "{:?}", issues.list);
        let err = match cfg.build(&HostPaths::default()) {
            Ok(_) => panic!("invalid config built"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("bogus"), "{err}");
    }
}
