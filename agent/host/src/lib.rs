//! Host metrics collectors with node_exporter-compatible names, read through a configurable
//! host root.
//!
//! Every collector reads its files under [`HostPaths`] (`/proc`, `/sys`, `/` on a bare host;
//! `/host/proc`, `/host/sys`, `/host/root` inside a container), so an agent running in a pod
//! reports the node, not the pod: network counters come from `<proc>/1/net/*` (the host's
//! network namespace when the host's `/proc` is mounted), mounts from `<proc>/1/mountinfo`
//! (the host's mount table), and `statfs` goes through `<root>/<mountpoint>`.
//!
//! Each collector is one [`nodescope_model::Collector`] named like the node_exporter
//! collector it mirrors (`cpu`, `meminfo`, `filesystem`, ...) and emits node_exporter 1.5's
//! metric names, types, help strings and labels. See `docs/host-metrics.md`.

use std::path::PathBuf;

mod collectors;
mod component;
mod config;
mod filter;
mod util;

pub use collectors::cgroup::WORKLOAD_FAMILIES;
pub use collectors::filesystem::{real_statfs, FilesystemCollector, FsStat, StatFn};
pub use collectors::process::ProcessCollector;
pub use collectors::{ALL_COLLECTORS, NODESCOPE_ONLY_COLLECTORS};
pub use config::{
    ArpConfig, BcacheConfig, CgroupConfig, DiskstatsConfig, FilesystemConfig, HostMetricsConfig,
    IpvsConfig, NetclassConfig, NetdevConfig, NetstatConfig, PowerSupplyConfig, TapestatsConfig,
    TextfileConfig, VmstatConfig, DEFAULT_TEXTFILE_DIRECTORY,
};

/// Parsers of the individual files, exposed for property tests and tools.
pub mod parse {
    pub use crate::collectors::arp::parse_arp;
    pub use crate::collectors::bcache::{dehumanize, parse_writeback_rate_debug};
    pub use crate::collectors::btrfs::btrfs_ratio;
    pub use crate::collectors::cgroup::{flat_keyed, parse_blkio, parse_io_stat, psi_total};
    pub use crate::collectors::conntrack::parse_conntrack_stat;
    pub use crate::collectors::cpu::parse_cpu_list;
    pub use crate::collectors::cpu::{parse_proc_stat, ProcStat};
    pub use crate::collectors::diskstats::{parse_diskstats, parse_udev_props};
    pub use crate::collectors::filefd::parse_file_nr;
    pub use crate::collectors::filesystem::{parse_mountinfo, unescape_mount_path, Mount};
    pub use crate::collectors::hwmon::{clean_metric_name, explode_sensor_filename};
    pub use crate::collectors::infiniband::{parse_ib_rate, parse_ib_state};
    pub use crate::collectors::ipvs::{parse_ipvs_backends, parse_ipvs_stats, IpvsBackend};
    pub use crate::collectors::loadavg::parse_loadavg;
    pub use crate::collectors::mdadm::{parse_mdstat, MdStat};
    pub use crate::collectors::meminfo::{parse_meminfo, MeminfoField};
    pub use crate::collectors::netclass::{apply_netclass_attr, NetClassIface};
    pub use crate::collectors::netdev::parse_net_dev;
    pub use crate::collectors::netstat::{parse_netstat, parse_snmp6};
    pub use crate::collectors::nfs::{parse_nfs_client, NfsClientStats};
    pub use crate::collectors::nfsd::{parse_nfsd, NfsdStats};
    pub use crate::collectors::os::{parse_os_release, parse_os_version};
    pub use crate::collectors::pressure::parse_pressure;
    pub use crate::collectors::process::{parse_btime, parse_limits, parse_pid_stat};
    pub use crate::collectors::rapl::rapl_index_and_name;
    pub use crate::collectors::schedstat::parse_schedstat;
    pub use crate::collectors::selinux::parse_selinux_config;
    pub use crate::collectors::sockstat::parse_sockstat;
    pub use crate::collectors::softnet::parse_softnet;
    pub use crate::collectors::textfile::{parse_text_format, TextFamily, TextType, TextValue};
    pub use crate::collectors::time::parse_clocksources;
    pub use crate::collectors::timex::{timex_families, Timex};
    pub use crate::collectors::udp_queues::parse_udp_queues;
    pub use crate::collectors::vmstat::parse_vmstat;
    pub use crate::collectors::xfs::parse_xfs_stats;
    pub use crate::collectors::zfs::{parse_kstat, parse_zpool_io, parse_zpool_objset};
}

/// node_exporter's per-collector scrape families,
/// `node_scrape_collector_duration_seconds{collector}` and
/// `node_scrape_collector_success{collector}`, for the outcomes of one collection of the
/// host collectors: `(collector name, how long it ran, whether it returned Ok)`. Only the
/// collectors node_exporter has are reported (not [`NODESCOPE_ONLY_COLLECTORS`]). The agent's runner, which
/// knows each outcome and duration, calls this once per collection; a failed collector is
/// `success 0`, as in node_exporter (whose "no data" errors also count as failures).
pub fn node_scrape_families<'a>(
    outcomes: impl IntoIterator<Item = (&'a str, std::time::Duration, bool)>,
) -> Vec<nodescope_model::MetricFamily> {
    use nodescope_model::{MetricFamily, MetricType};
    let mut dur = MetricFamily::new(
        "node_scrape_collector_duration_seconds",
        "node_exporter: Duration of a collector scrape.",
        MetricType::Gauge,
    );
    let mut ok = MetricFamily::new(
        "node_scrape_collector_success",
        "node_exporter: Whether a collector succeeded.",
        MetricType::Gauge,
    );
    for (name, took, success) in outcomes {
        if !ALL_COLLECTORS.contains(&name) || NODESCOPE_ONLY_COLLECTORS.contains(&name) {
            continue;
        }
        dur.push([("collector", name)], took.as_secs_f64());
        ok.push([("collector", name)], if success { 1.0 } else { 0.0 });
    }
    vec![dur, ok]
}

pub use nodescope_model::host::HostPaths;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("host root: cannot read {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("host root: {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("host root: {path} does not look like procfs: {reason}")]
    NotProcfs { path: PathBuf, reason: String },
    #[error("{key}: invalid regular expression: {source}")]
    InvalidRegex {
        key: String,
        #[source]
        source: Box<regex::Error>,
    },
    #[error("{key}: {reason}")]
    InvalidConfig { key: String, reason: String },
}

/// Checks that the host root is usable before any collector runs: `<proc>/stat` must be
/// readable and look like `/proc/stat`, and `<sys>` and `<root>` must be directories.
pub fn check_host_root(paths: &HostPaths) -> Result<(), HostError> {
    for dir in [&paths.proc, &paths.sys, &paths.root] {
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(HostError::NotADirectory { path: dir.clone() }),
            Err(source) => {
                return Err(HostError::Unreadable {
                    path: dir.clone(),
                    source,
                })
            }
        }
    }
    let stat = paths.proc.join("stat");
    let text = std::fs::read_to_string(&stat).map_err(|source| HostError::Unreadable {
        path: stat.clone(),
        source,
    })?;
    if !text.starts_with("cpu ") {
        return Err(HostError::NotProcfs {
            path: stat,
            reason: "it does not start with a `cpu ` line".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn host_paths_from_root() {
        let p = HostPaths::from_root(Path::new("/"));
        assert_eq!(p.proc, PathBuf::from("/proc"));
        assert_eq!(p.sys, PathBuf::from("/sys"));
        assert_eq!(p.root, PathBuf::from("/"));
        let p = HostPaths::from_root(Path::new("/host"));
        assert_eq!(p.proc, PathBuf::from("/host/proc"));
        assert_eq!(p.sys, PathBuf::from("/host/sys"));
        assert_eq!(p.root, PathBuf::from("/host/root"));
    }

    #[test]
    fn check_host_root_reports_the_missing_path() {
        let dir = tempfile::tempdir().unwrap();
        let paths = HostPaths::from_root(dir.path());
        let err = check_host_root(&paths).unwrap_err().to_string();
        assert!(
            err.contains(&dir.path().join("proc").display().to_string()),
            "{err}"
        );
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::fs::create_dir_all(dir.path().join("sys")).unwrap();
        std::fs::create_dir_all(dir.path().join("root")).unwrap();
        let err = check_host_root(&paths).unwrap_err().to_string();
        assert!(err.contains("proc/stat"), "{err}");
        std::fs::write(dir.path().join("proc/stat"), "garbage\n").unwrap();
        let err = check_host_root(&paths).unwrap_err().to_string();
        assert!(err.contains("does not look like procfs"), "{err}");
        std::fs::write(dir.path().join("proc/stat"), "cpu  1 2 3 4\n").unwrap();
        check_host_root(&paths).unwrap();
    }

    #[test]
    fn real_host_root_is_usable() {
        check_host_root(&HostPaths::default()).unwrap();
    }
}
