//! The second name map: node_exporter-compatible model names → OpenTelemetry
//! semantic-convention host metrics (as the collector's hostmetrics receiver emits them).
//!
//! One model, two name maps: the Prometheus exposition uses the model's names as they are;
//! this module renames, re-labels and (for memory and filesystem usage) derives the
//! `state="used"` series the conventions define. Families with no rule (all `nodescope_*`
//! metrics, and node_* families without a convention) keep their own name.

use std::borrow::Cow;

use nodescope_model::{Labels, MetricFamily, MetricType, Value};

/// How the OTLP metric is typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Cumulative monotonic Sum.
    Counter,
    /// Cumulative non-monotonic Sum (usage, counts that go up and down).
    UpDown,
    Gauge,
    Histogram,
}

/// A metric ready for encoding: OTLP name, unit and points.
#[derive(Clone, Debug, PartialEq)]
pub struct OtelMetric {
    pub name: Cow<'static, str>,
    pub description: Cow<'static, str>,
    pub unit: &'static str,
    pub kind: Kind,
    pub points: Vec<(Labels, Value)>,
}

struct Rule {
    from: &'static str,
    to: &'static str,
    unit: &'static str,
    kind: Kind,
    /// Constant attribute added to each point (`direction`, `state`, ...).
    attr: Option<(&'static str, &'static str)>,
    /// Label renames (model label → semconv attribute).
    rename: &'static [(&'static str, &'static str)],
}

const fn r(
    from: &'static str,
    to: &'static str,
    unit: &'static str,
    kind: Kind,
    attr: Option<(&'static str, &'static str)>,
) -> Rule {
    Rule {
        from,
        to,
        unit,
        kind,
        attr,
        rename: &[],
    }
}

use Kind::*;

static RULES: &[Rule] = &[
    Rule {
        from: "node_cpu_seconds_total",
        to: "system.cpu.time",
        unit: "s",
        kind: Counter,
        attr: None,
        rename: &[("mode", "state")],
    },
    r(
        "node_load1",
        "system.cpu.load_average.1m",
        "{thread}",
        Gauge,
        None,
    ),
    r(
        "node_load5",
        "system.cpu.load_average.5m",
        "{thread}",
        Gauge,
        None,
    ),
    r(
        "node_load15",
        "system.cpu.load_average.15m",
        "{thread}",
        Gauge,
        None,
    ),
    r(
        "node_memory_MemTotal_bytes",
        "system.memory.limit",
        "By",
        UpDown,
        None,
    ),
    r(
        "node_memory_MemFree_bytes",
        "system.memory.usage",
        "By",
        UpDown,
        Some(("state", "free")),
    ),
    r(
        "node_memory_Buffers_bytes",
        "system.memory.usage",
        "By",
        UpDown,
        Some(("state", "buffered")),
    ),
    r(
        "node_memory_Cached_bytes",
        "system.memory.usage",
        "By",
        UpDown,
        Some(("state", "cached")),
    ),
    r(
        "node_memory_SReclaimable_bytes",
        "system.memory.usage",
        "By",
        UpDown,
        Some(("state", "slab_reclaimable")),
    ),
    r(
        "node_memory_SUnreclaim_bytes",
        "system.memory.usage",
        "By",
        UpDown,
        Some(("state", "slab_unreclaimable")),
    ),
    r(
        "node_network_receive_bytes_total",
        "system.network.io",
        "By",
        Counter,
        Some(("direction", "receive")),
    ),
    r(
        "node_network_transmit_bytes_total",
        "system.network.io",
        "By",
        Counter,
        Some(("direction", "transmit")),
    ),
    r(
        "node_network_receive_packets_total",
        "system.network.packets",
        "{packet}",
        Counter,
        Some(("direction", "receive")),
    ),
    r(
        "node_network_transmit_packets_total",
        "system.network.packets",
        "{packet}",
        Counter,
        Some(("direction", "transmit")),
    ),
    r(
        "node_network_receive_errs_total",
        "system.network.errors",
        "{error}",
        Counter,
        Some(("direction", "receive")),
    ),
    r(
        "node_network_transmit_errs_total",
        "system.network.errors",
        "{error}",
        Counter,
        Some(("direction", "transmit")),
    ),
    r(
        "node_network_receive_drop_total",
        "system.network.dropped",
        "{packet}",
        Counter,
        Some(("direction", "receive")),
    ),
    r(
        "node_network_transmit_drop_total",
        "system.network.dropped",
        "{packet}",
        Counter,
        Some(("direction", "transmit")),
    ),
    r(
        "node_disk_read_bytes_total",
        "system.disk.io",
        "By",
        Counter,
        Some(("direction", "read")),
    ),
    r(
        "node_disk_written_bytes_total",
        "system.disk.io",
        "By",
        Counter,
        Some(("direction", "write")),
    ),
    r(
        "node_disk_reads_completed_total",
        "system.disk.operations",
        "{operation}",
        Counter,
        Some(("direction", "read")),
    ),
    r(
        "node_disk_writes_completed_total",
        "system.disk.operations",
        "{operation}",
        Counter,
        Some(("direction", "write")),
    ),
    r(
        "node_disk_reads_merged_total",
        "system.disk.merged",
        "{operation}",
        Counter,
        Some(("direction", "read")),
    ),
    r(
        "node_disk_writes_merged_total",
        "system.disk.merged",
        "{operation}",
        Counter,
        Some(("direction", "write")),
    ),
    r(
        "node_disk_read_time_seconds_total",
        "system.disk.operation_time",
        "s",
        Counter,
        Some(("direction", "read")),
    ),
    r(
        "node_disk_write_time_seconds_total",
        "system.disk.operation_time",
        "s",
        Counter,
        Some(("direction", "write")),
    ),
    r(
        "node_disk_io_time_seconds_total",
        "system.disk.io_time",
        "s",
        Counter,
        None,
    ),
    r(
        "node_procs_running",
        "system.processes.count",
        "{process}",
        UpDown,
        Some(("status", "running")),
    ),
    r(
        "node_procs_blocked",
        "system.processes.count",
        "{process}",
        UpDown,
        Some(("status", "blocked")),
    ),
    r(
        "node_forks_total",
        "system.processes.created",
        "{process}",
        Counter,
        None,
    ),
    // cpufreq (hostmetrics' `cpu` attribute, `cpuN`).
    r(
        "node_cpu_scaling_frequency_hertz",
        "system.cpu.frequency",
        "Hz",
        Gauge,
        None,
    ),
    // conntrack (hostmetrics' networkscraper).
    r(
        "node_nf_conntrack_entries",
        "system.network.conntrack.count",
        "{entry}",
        UpDown,
        None,
    ),
    r(
        "node_nf_conntrack_entries_limit",
        "system.network.conntrack.max",
        "{entry}",
        UpDown,
        None,
    ),
    // The agent's own process (process.* semantic conventions).
    r(
        "process_cpu_seconds_total",
        "process.cpu.time",
        "s",
        Counter,
        None,
    ),
    r(
        "process_resident_memory_bytes",
        "process.memory.usage",
        "By",
        UpDown,
        None,
    ),
    r(
        "process_virtual_memory_bytes",
        "process.memory.virtual",
        "By",
        UpDown,
        None,
    ),
    r(
        "process_open_fds",
        "process.open_file_descriptor.count",
        "{file_descriptor}",
        UpDown,
        None,
    ),
    // Per-workload cgroup metrics (container.* semantic conventions; every workload kind
    // uses them, `workload_kind` says which).
    r(
        "nodescope_workload_cpu_usage_seconds_total",
        "container.cpu.time",
        "s",
        Counter,
        None,
    ),
    r(
        "nodescope_workload_memory_usage_bytes",
        "container.memory.usage",
        "By",
        UpDown,
        None,
    ),
    Rule {
        from: "nodescope_workload_io_read_bytes_total",
        to: "container.disk.io",
        unit: "By",
        kind: Counter,
        attr: Some(("disk.io.direction", "read")),
        rename: &[("device", "system.device")],
    },
    Rule {
        from: "nodescope_workload_io_written_bytes_total",
        to: "container.disk.io",
        unit: "By",
        kind: Counter,
        attr: Some(("disk.io.direction", "write")),
        rename: &[("device", "system.device")],
    },
];

/// Families consumed by the derived filesystem series (never emitted under their own name
/// in the OTel map).
const FS_SIZE: &str = "node_filesystem_size_bytes";
const FS_FREE: &str = "node_filesystem_free_bytes";
const FS_AVAIL: &str = "node_filesystem_avail_bytes";
const FS_FILES: &str = "node_filesystem_files";
const FS_FILES_FREE: &str = "node_filesystem_files_free";

fn rule(name: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.from == name)
}

/// Unit guessed from a Prometheus name suffix (UCUM, as OTLP wants).
pub fn unit_from_name(name: &str) -> &'static str {
    let base = name.strip_suffix("_total").unwrap_or(name);
    if base.ends_with("_seconds") {
        "s"
    } else if base.ends_with("_bytes") {
        "By"
    } else if base.ends_with("_ratio") {
        "1"
    } else {
        ""
    }
}

fn kind_of(t: MetricType) -> Kind {
    match t {
        MetricType::Counter => Counter,
        MetricType::Gauge | MetricType::Untyped => Gauge,
        MetricType::Histogram => Histogram,
    }
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => Some(*n),
        Value::Histogram(_) => None,
    }
}

fn push(out: &mut Vec<OtelMetric>, m: OtelMetric) {
    match out.iter_mut().find(|x| x.name == m.name) {
        Some(x) => x.points.extend(m.points),
        None => out.push(m),
    }
}

/// The model's families under their own names (the identity map).
pub fn identity(families: &[MetricFamily]) -> Vec<OtelMetric> {
    families
        .iter()
        .map(|f| OtelMetric {
            name: f.name.clone(),
            description: f.help.clone(),
            unit: unit_from_name(&f.name),
            kind: kind_of(f.kind),
            points: f
                .points
                .iter()
                .map(|p| (p.labels.clone(), p.value.clone()))
                .collect(),
        })
        .collect()
}

/// Maps one collector run's families to OTel semantic-convention metrics.
pub fn to_semconv(families: &[MetricFamily]) -> Vec<OtelMetric> {
    let mut out: Vec<OtelMetric> = Vec::new();
    let find = |n: &str| families.iter().find(|f| f.name == n);
    for f in families {
        if let Some(rule) = rule(&f.name) {
            let points = f
                .points
                .iter()
                .map(|p| {
                    let mut l: Labels = p
                        .labels
                        .iter()
                        .map(|(k, v)| {
                            let k = rule
                                .rename
                                .iter()
                                .find(|(from, _)| from == k)
                                .map_or(k.clone(), |(_, to)| Cow::Borrowed(*to));
                            // hostmetrics names CPUs `cpu0`, `cpu1`, ...
                            let v = if (rule.from == "node_cpu_seconds_total"
                                || rule.from == "node_cpu_scaling_frequency_hertz")
                                && k == "cpu"
                            {
                                format!("cpu{v}")
                            } else {
                                v.clone()
                            };
                            (k, v)
                        })
                        .collect();
                    if let Some((k, v)) = rule.attr {
                        l.push((Cow::Borrowed(k), v.to_string()));
                    }
                    (l, p.value.clone())
                })
                .collect();
            push(
                &mut out,
                OtelMetric {
                    name: Cow::Borrowed(rule.to),
                    description: f.help.clone(),
                    unit: rule.unit,
                    kind: rule.kind,
                    points,
                },
            );
            continue;
        }
        if [FS_SIZE, FS_FREE, FS_AVAIL, FS_FILES, FS_FILES_FREE].contains(&f.name.as_ref()) {
            continue;
        }
        out.extend(identity(std::slice::from_ref(f)));
    }

    // system.memory.usage{state="used"} = total - free - buffers - cached - slab (as the
    // hostmetrics receiver computes it on Linux).
    let single = |n: &str| {
        find(n)
            .and_then(|f| f.points.first())
            .and_then(|p| num(&p.value))
    };
    if let (Some(total), Some(free)) = (
        single("node_memory_MemTotal_bytes"),
        single("node_memory_MemFree_bytes"),
    ) {
        let used = total
            - free
            - single("node_memory_Buffers_bytes").unwrap_or(0.0)
            - single("node_memory_Cached_bytes").unwrap_or(0.0)
            - single("node_memory_SReclaimable_bytes").unwrap_or(0.0)
            - single("node_memory_SUnreclaim_bytes").unwrap_or(0.0);
        push(
            &mut out,
            OtelMetric {
                name: Cow::Borrowed("system.memory.usage"),
                description: Cow::Borrowed("Bytes of memory in use."),
                unit: "By",
                kind: UpDown,
                points: vec![(
                    vec![(Cow::Borrowed("state"), "used".to_string())],
                    Value::Number(used.max(0.0)),
                )],
            },
        );
    }

    // system.filesystem.usage{state=used|free|reserved}: used = size - free,
    // free = avail, reserved = free - avail (blocks only root may use).
    let fs_attrs = |l: &Labels| -> Labels {
        l.iter()
            .map(|(k, v)| {
                let k = if k == "fstype" {
                    Cow::Borrowed("type")
                } else {
                    k.clone()
                };
                (k, v.clone())
            })
            .collect()
    };
    let mut fs_points = Vec::new();
    if let Some(size) = find(FS_SIZE) {
        for p in &size.points {
            let lookup = |fam: &str| {
                find(fam)?
                    .points
                    .iter()
                    .find(|q| q.labels == p.labels)
                    .and_then(|q| num(&q.value))
            };
            let (Some(sz), Some(free), Some(avail)) =
                (num(&p.value), lookup(FS_FREE), lookup(FS_AVAIL))
            else {
                continue;
            };
            for (state, v) in [
                ("used", sz - free),
                ("free", avail),
                ("reserved", free - avail),
            ] {
                let mut l = fs_attrs(&p.labels);
                l.push((Cow::Borrowed("state"), state.to_string()));
                fs_points.push((l, Value::Number(v.max(0.0))));
            }
        }
    }
    if !fs_points.is_empty() {
        push(
            &mut out,
            OtelMetric {
                name: Cow::Borrowed("system.filesystem.usage"),
                description: Cow::Borrowed("Filesystem bytes used."),
                unit: "By",
                kind: UpDown,
                points: fs_points,
            },
        );
    }
    let mut inode_points = Vec::new();
    if let Some(files) = find(FS_FILES) {
        for p in &files.points {
            let free = find(FS_FILES_FREE)
                .and_then(|f| f.points.iter().find(|q| q.labels == p.labels))
                .and_then(|q| num(&q.value));
            let (Some(total), Some(free)) = (num(&p.value), free) else {
                continue;
            };
            for (state, v) in [("used", total - free), ("free", free)] {
                let mut l = fs_attrs(&p.labels);
                l.push((Cow::Borrowed("state"), state.to_string()));
                inode_points.push((l, Value::Number(v.max(0.0))));
            }
        }
    }
    if !inode_points.is_empty() {
        push(
            &mut out,
            OtelMetric {
                name: Cow::Borrowed("system.filesystem.inodes.usage"),
                description: Cow::Borrowed("Filesystem inodes used."),
                unit: "{inode}",
                kind: UpDown,
                points: inode_points,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(l: &'a Labels, k: &str) -> Option<&'a str> {
        l.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn process_workload_and_new_host_families() {
        let mut freq = MetricFamily::new("node_cpu_scaling_frequency_hertz", "", MetricType::Gauge);
        freq.push([("cpu", "1")], 2.0e9);
        let rss = MetricFamily::single("process_resident_memory_bytes", "", MetricType::Gauge, 5.0);
        let mut wl = MetricFamily::new(
            "nodescope_workload_cpu_usage_seconds_total",
            "",
            MetricType::Counter,
        );
        wl.push(
            [
                ("workload", "nginx.service"),
                ("workload_kind", "systemd_unit"),
            ],
            3.0,
        );
        let mut rd = MetricFamily::new(
            "nodescope_workload_io_read_bytes_total",
            "",
            MetricType::Counter,
        );
        rd.push([("workload", "w"), ("device", "sda")], 7.0);
        let mut wr = MetricFamily::new(
            "nodescope_workload_io_written_bytes_total",
            "",
            MetricType::Counter,
        );
        wr.push([("workload", "w"), ("device", "sda")], 9.0);
        let out = to_semconv(&[freq, rss, wl, rd, wr]);
        let m = |n: &str| {
            out.iter()
                .find(|m| m.name == n)
                .unwrap_or_else(|| panic!("{n}"))
        };
        let f = m("system.cpu.frequency");
        assert_eq!(get(&f.points[0].0, "cpu"), Some("cpu1"));
        assert_eq!(f.unit, "Hz");
        assert_eq!(m("process.memory.usage").kind, Kind::UpDown);
        assert_eq!(m("container.cpu.time").kind, Kind::Counter);
        let io = m("container.disk.io");
        assert_eq!(io.points.len(), 2);
        assert!(io
            .points
            .iter()
            .any(|(l, v)| get(l, "disk.io.direction") == Some("write")
                && get(l, "system.device") == Some("sda")
                && *v == Value::Number(9.0)));
    }

    #[test]
    fn cpu_network_memory_filesystem_and_passthrough() {
        let mut cpu = MetricFamily::new("node_cpu_seconds_total", "", MetricType::Counter);
        cpu.push([("cpu", "0"), ("mode", "idle")], 10.0);
        let mut rx = MetricFamily::new("node_network_receive_bytes_total", "", MetricType::Counter);
        rx.push([("device", "eth0")], 100.0);
        let mut tx =
            MetricFamily::new("node_network_transmit_bytes_total", "", MetricType::Counter);
        tx.push([("device", "eth0")], 50.0);
        let mem = |n: &'static str, v| MetricFamily::single(n, "", MetricType::Gauge, v);
        let mut size = MetricFamily::new(FS_SIZE, "", MetricType::Gauge);
        size.push(
            [
                ("device", "/dev/sda1"),
                ("fstype", "ext4"),
                ("mountpoint", "/"),
            ],
            1000.0,
        );
        let mut free = MetricFamily::new(FS_FREE, "", MetricType::Gauge);
        free.push(
            [
                ("device", "/dev/sda1"),
                ("fstype", "ext4"),
                ("mountpoint", "/"),
            ],
            400.0,
        );
        let mut avail = MetricFamily::new(FS_AVAIL, "", MetricType::Gauge);
        avail.push(
            [
                ("device", "/dev/sda1"),
                ("fstype", "ext4"),
                ("mountpoint", "/"),
            ],
            350.0,
        );
        let own = MetricFamily::single("nodescope_build_info", "", MetricType::Gauge, 1.0);
        let fams = vec![
            cpu,
            rx,
            tx,
            mem("node_memory_MemTotal_bytes", 1000.0),
            mem("node_memory_MemFree_bytes", 300.0),
            mem("node_memory_Buffers_bytes", 50.0),
            mem("node_memory_Cached_bytes", 150.0),
            size,
            free,
            avail,
            own,
        ];
        let out = to_semconv(&fams);
        let m = |n: &str| {
            out.iter()
                .find(|m| m.name == n)
                .unwrap_or_else(|| panic!("{n}"))
        };
        let c = m("system.cpu.time");
        assert_eq!(c.kind, Counter);
        assert_eq!(c.unit, "s");
        assert_eq!(get(&c.points[0].0, "cpu"), Some("cpu0"));
        assert_eq!(get(&c.points[0].0, "state"), Some("idle"));
        let n = m("system.network.io");
        assert_eq!(n.points.len(), 2);
        assert_eq!(get(&n.points[1].0, "direction"), Some("transmit"));
        let u = m("system.memory.usage");
        let used = u
            .points
            .iter()
            .find(|p| get(&p.0, "state") == Some("used"))
            .unwrap();
        assert_eq!(used.1, Value::Number(500.0));
        assert_eq!(m("system.memory.limit").points[0].1, Value::Number(1000.0));
        let fs = m("system.filesystem.usage");
        let st: Vec<_> = fs
            .points
            .iter()
            .map(|(l, v)| {
                (
                    get(l, "state").unwrap().to_string(),
                    get(l, "type").unwrap().to_string(),
                    v.clone(),
                )
            })
            .collect();
        assert_eq!(
            st,
            vec![
                ("used".into(), "ext4".into(), Value::Number(600.0)),
                ("free".into(), "ext4".into(), Value::Number(350.0)),
                ("reserved".into(), "ext4".into(), Value::Number(50.0)),
            ]
        );
        assert!(m("nodescope_build_info").points.len() == 1);
        assert!(
            out.iter().all(|m| !m.name.starts_with("node_")),
            "mapped families are not duplicated"
        );
    }
}
