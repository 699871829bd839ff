//! One module per node_exporter collector. Each has a pure parser (`parse_*`, tested with
//! real-format fixtures and proptest) and a [`nodescope_model::Collector`] that reads the
//! file under the host root into a reused buffer and maps it to node_exporter's families.

pub(crate) mod arp;
pub(crate) mod bcache;
pub(crate) mod bonding;
pub(crate) mod btrfs;
pub(crate) mod cgroup;
pub(crate) mod conntrack;
pub(crate) mod cpu;
pub(crate) mod cpufreq;
pub(crate) mod diskstats;
pub(crate) mod dmi;
pub(crate) mod edac;
pub(crate) mod entropy;
pub(crate) mod fibrechannel;
pub(crate) mod filefd;
pub(crate) mod filesystem;
pub(crate) mod hwmon;
pub(crate) mod infiniband;
pub(crate) mod ipvs;
pub(crate) mod loadavg;
pub(crate) mod mdadm;
pub(crate) mod meminfo;
pub(crate) mod netclass;
pub(crate) mod netdev;
pub(crate) mod netstat;
pub(crate) mod nfs;
pub(crate) mod nfsd;
pub(crate) mod nvme;
pub(crate) mod os;
pub(crate) mod powersupplyclass;
pub(crate) mod pressure;
pub(crate) mod process;
pub(crate) mod rapl;
pub(crate) mod schedstat;
pub(crate) mod selinux;
pub(crate) mod sockstat;
pub(crate) mod softnet;
pub(crate) mod tapestats;
pub(crate) mod textfile;
pub(crate) mod thermal_zone;
pub(crate) mod time;
pub(crate) mod timex;
pub(crate) mod udp_queues;
pub(crate) mod uname;
pub(crate) mod vmstat;
pub(crate) mod xfs;
pub(crate) mod zfs;

/// Every collector this crate provides, named like node_exporter's collectors (plus
/// `process`, the agent's own `process_*` metrics, which client libraries export, and
/// `cgroup`, per-workload resource metrics).
pub const ALL_COLLECTORS: &[&str] = &[
    "cpu",
    "stat",
    "meminfo",
    "loadavg",
    "diskstats",
    "filesystem",
    "netdev",
    "netstat",
    "sockstat",
    "pressure",
    "vmstat",
    "filefd",
    "uname",
    "os",
    "time",
    "conntrack",
    "netclass",
    "arp",
    "entropy",
    "selinux",
    "udp_queues",
    "softnet",
    "schedstat",
    "timex",
    "textfile",
    "cpufreq",
    "thermal_zone",
    "edac",
    "rapl",
    "nvme",
    "bonding",
    "dmi",
    "powersupplyclass",
    "tapestats",
    "mdadm",
    "hwmon",
    "infiniband",
    "ipvs",
    "nfs",
    "xfs",
    "btrfs",
    "bcache",
    "zfs",
    "nfsd",
    "fibrechannel",
    "process",
    "cgroup",
];

/// Collectors of this crate that node_exporter does not have (no
/// `node_scrape_collector_*` series for them).
pub const NODESCOPE_ONLY_COLLECTORS: &[&str] = &["process", "cgroup"];

#[cfg(test)]
pub(crate) mod testutil {
    use nodescope_model::{MetricFamily, Value};

    pub(crate) fn find<'a>(fams: &'a [MetricFamily], name: &str) -> &'a MetricFamily {
        fams.iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("family {name} missing"))
    }

    /// The value of the point of `name` whose labels include all of `labels`.
    pub(crate) fn value(fams: &[MetricFamily], name: &str, labels: &[(&str, &str)]) -> f64 {
        let f = find(fams, name);
        let p = f
            .points
            .iter()
            .find(|p| {
                labels
                    .iter()
                    .all(|(k, v)| p.labels.iter().any(|(pk, pv)| pk == k && pv == v))
            })
            .unwrap_or_else(|| panic!("{name}{labels:?} missing"));
        match p.value {
            Value::Number(v) => v,
            _ => panic!("{name} is not numeric"),
        }
    }
}
