//! Builds every collector against a fake host root (a temp dir with `proc/`, `sys/`,
//! `root/`) and checks the values they report, including that the host's files
//! (`proc/1/net/dev`, `proc/1/mountinfo`) are read rather than the agent's own
//! (`proc/net/dev`, `proc/self/mountinfo`), which the test fills with decoys.

use std::collections::BTreeMap;
use std::path::Path;

use nodescope_host::{check_host_root, real_statfs, HostMetricsConfig, HostPaths, ALL_COLLECTORS};
use nodescope_model::{MetricFamily, MetricType, Value};

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn fixture(rel: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(rel),
    )
    .unwrap()
}

const STAT: &str = "cpu  300 0 150 5000 10 0 5 0 0 0\n\
cpu0 100 0 50 2500 5 0 2 0 0 0\n\
cpu1 200 0 100 2500 5 0 3 0 7 1\n\
intr 123456 1 2 3 4\n\
ctxt 987654\n\
btime 1700000000\n\
processes 4242\n\
procs_running 3\n\
procs_blocked 1\n\
softirq 5 1 1 1 1 1\n";

const MEMINFO: &str = "MemTotal:       16000000 kB\nMemFree:         8000000 kB\nActive(anon):      12345 kB\nHugePages_Total:       0\nHugepagesize:       2048 kB\n";

const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  eth0: 5000000   4000    1    2    3     4          5         6  7000000    8000    9   10   11    12      13         14\n";

const DECOY_NET_DEV: &str = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n  eth0: 1   1    0    0    0     0          0         0  1    1    0    0    0     0       0          0\n";

const MOUNTINFO: &str = "1 0 8:1 / / rw,relatime - ext4 /dev/hostroot rw\n\
2 1 0:20 / /proc rw - proc proc rw\n\
3 1 0:21 / /var/lib/kubelet rw - nfs4 nas:/kubelet rw\n\
4 1 0:22 / /boot ro,relatime - vfat /dev/hostboot rw\n";

const DECOY_MOUNTINFO: &str = "1 0 8:1 / / rw - overlay overlay rw\n";

fn build_tree(dir: &Path) -> HostPaths {
    let paths = HostPaths::from_root(dir);
    let p = &paths.proc;
    write(p, "stat", STAT);
    write(p, "meminfo", MEMINFO);
    write(p, "loadavg", "0.41 0.71 1.08 2/180 12345\n");
    write(p, "diskstats", "   7       0 loop0 9 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n 254       0 vda 100 10 2000 300 50 5 1000 400 2 500 700 7 1 80 9 6 12\n");
    write(
        p,
        "vmstat",
        "nr_free_pages 100\npgfault 5000\npgmajfault 7\noom_kill 1\npgpgin 11\n",
    );
    write(p, "pressure/cpu", "some avg10=0.00 avg60=0.00 avg300=0.00 total=2500000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n");
    write(p, "pressure/io", "some avg10=0.00 avg60=0.00 avg300=0.00 total=1000000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=500000\n");
    write(p, "pressure/memory", "some avg10=0.00 avg60=0.00 avg300=0.00 total=3000000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=1500000\n");
    write(p, "1/net/dev", NET_DEV);
    write(p, "net/dev", DECOY_NET_DEV);
    write(p, "1/net/netstat", &fixture("proc/1/net/netstat"));
    write(p, "1/net/snmp", "Tcp: RtoAlgorithm ActiveOpens CurrEstab RetransSegs\nTcp: 1 77 3 9\nUdp: InDatagrams NoPorts\nUdp: 40 2\n");
    write(p, "1/net/snmp6", "Ip6InOctets 600\nIp6InReceives 5\n");
    write(
        p,
        "1/net/sockstat",
        "sockets: used 15\nTCP: inuse 2 orphan 0 tw 4 alloc 2 mem 3\nUDP: inuse 1 mem 0\n",
    );
    write(p, "1/net/sockstat6", "TCP6: inuse 6\n");
    write(p, "1/net/stat/nf_conntrack", "entries  found drop early_drop\n00000011  00000001 00000002 00000000\n00000011  00000002 00000003 00000001\n");
    // `/` and `/boot` are directories of the temp dir's filesystem here: give them its
    // device so the collector's mount check (path device == mount table device) passes.
    std::fs::create_dir_all(&paths.root).unwrap();
    let st = std::fs::metadata(&paths.root).unwrap();
    let dev = {
        use std::os::unix::fs::MetadataExt;
        let d = st.dev();
        format!("{}:{}", rustix::fs::major(d), rustix::fs::minor(d))
    };
    write(
        p,
        "1/mountinfo",
        &MOUNTINFO.replace("8:1", &dev).replace("0:22", &dev),
    );
    write(p, "1/net/arp", "IP address       HW type     Flags       HW address            Mask     Device\n10.0.0.1         0x1         0x2         52:54:00:12:35:02     *        eth0\n");
    write(p, "net/arp", "IP address       HW type     Flags       HW address            Mask     Device\n10.9.9.9         0x1         0x2         52:54:00:12:35:02     *        decoy0\n");
    write(p, "1/net/udp", "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:0016 00000000:0000 07 00000010:00000020 00:00000000 00000000     0        0 2740 2 0\n");
    write(p, "1/net/udp6", "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n");
    write(p, "1/net/softnet_stat", "00000100 00000002 00000003 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000\n");
    write(
        p,
        "schedstat",
        "version 15\ntimestamp 1\ncpu0 0 0 0 0 0 0 3000000000 1000000000 42\n",
    );
    write(p, "sys/kernel/random/entropy_avail", "256\n");
    write(p, "sys/kernel/random/poolsize", "256\n");
    write(&paths.sys, "class/net/eth0/operstate", "up\n");
    write(&paths.sys, "class/net/eth0/mtu", "9000\n");
    write(p, "self/mountinfo", DECOY_MOUNTINFO);
    write(p, "sys/fs/file-nr", "430\t0\t2464775\n");
    write(p, "sys/net/netfilter/nf_conntrack_count", "99\n");
    write(p, "sys/net/netfilter/nf_conntrack_max", "262144\n");
    let s = &paths.sys;
    write(s, "class/net/eth0/statistics/rx_nohandler", "42\n");
    write(
        s,
        "devices/system/clocksource/clocksource0/available_clocksource",
        "tsc kvm-clock \n",
    );
    write(
        s,
        "devices/system/clocksource/clocksource0/current_clocksource",
        "tsc\n",
    );
    let r = &paths.root;
    write(r, "usr/lib/os-release", "NAME=\"Fake Linux\"\nID=fake\nID_LIKE=debian\nVERSION_ID=\"3.18.4\"\nPRETTY_NAME=\"Fake 3.18\"\n");
    std::fs::create_dir_all(r.join("etc")).unwrap();
    std::os::unix::fs::symlink("../usr/lib/os-release", r.join("etc/os-release")).unwrap();
    write(
        r,
        "run/udev/data/b254:0",
        "E:ID_MODEL=FakeDisk\nE:ID_SERIAL_SHORT=SN1\nE:ID_PATH=pci-0000:00:04.0\n",
    );
    write(r, "boot/.keep", "");
    paths
}

type Series = BTreeMap<(String, Vec<(String, String)>), f64>;

fn flatten(fams: &[MetricFamily]) -> (Series, BTreeMap<String, MetricType>) {
    let mut s = Series::new();
    let mut kinds = BTreeMap::new();
    for f in fams {
        kinds.insert(f.name.to_string(), f.kind);
        for p in &f.points {
            let mut l: Vec<(String, String)> = p
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            l.sort();
            let v = match &p.value {
                Value::Number(v) => *v,
                Value::Histogram(h) => h.sum,
            };
            assert!(
                s.insert((f.name.to_string(), l.clone()), v).is_none(),
                "duplicate series {}{l:?}",
                f.name
            );
        }
    }
    (s, kinds)
}

fn get(s: &Series, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut l: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.sort();
    *s.get(&(name.to_string(), l.clone()))
        .unwrap_or_else(|| panic!("{name}{l:?} missing"))
}

/// Collectors whose sources `build_tree` writes: they must succeed.
const IN_TREE: &[&str] = &[
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
    "process",
];

#[test]
fn every_collector_reads_the_fake_host_root() {
    let dir = tempfile::tempdir().unwrap();
    let paths = build_tree(dir.path());
    check_host_root(&paths).unwrap();
    let collectors = HostMetricsConfig::default().build(&paths).unwrap();
    assert_eq!(collectors.len(), ALL_COLLECTORS.len());
    let mut all = Vec::new();
    for c in &collectors {
        match c.collect() {
            Ok(f) => all.extend(f),
            // Hardware this tree does not have (no hwmon, no bonding, ...) is unavailable.
            Err(e) if e.is_unavailable() && !IN_TREE.contains(&c.name()) => {}
            Err(e) => panic!("collector {} failed on the fake root: {e}", c.name()),
        }
    }
    let (s, kinds) = flatten(&all);
    let hz = 100.0;

    // cpu + stat
    assert_eq!(
        get(
            &s,
            "node_cpu_seconds_total",
            &[("cpu", "1"), ("mode", "user")]
        ),
        200.0 / hz
    );
    assert_eq!(
        get(
            &s,
            "node_cpu_seconds_total",
            &[("cpu", "0"), ("mode", "softirq")]
        ),
        2.0 / hz
    );
    assert_eq!(
        get(
            &s,
            "node_cpu_guest_seconds_total",
            &[("cpu", "1"), ("mode", "user")]
        ),
        7.0 / hz
    );
    assert_eq!(
        get(
            &s,
            "node_cpu_guest_seconds_total",
            &[("cpu", "1"), ("mode", "nice")]
        ),
        1.0 / hz
    );
    assert_eq!(kinds["node_cpu_seconds_total"], MetricType::Counter);
    assert_eq!(get(&s, "node_intr_total", &[]), 123456.0);
    assert_eq!(get(&s, "node_context_switches_total", &[]), 987654.0);
    assert_eq!(get(&s, "node_forks_total", &[]), 4242.0);
    assert_eq!(get(&s, "node_boot_time_seconds", &[]), 1.7e9);
    assert_eq!(get(&s, "node_procs_running", &[]), 3.0);
    assert_eq!(get(&s, "node_procs_blocked", &[]), 1.0);

    // meminfo, loadavg, vmstat
    assert_eq!(
        get(&s, "node_memory_MemTotal_bytes", &[]),
        16_000_000.0 * 1024.0
    );
    assert_eq!(
        get(&s, "node_memory_Active_anon_bytes", &[]),
        12345.0 * 1024.0
    );
    assert_eq!(get(&s, "node_memory_HugePages_Total", &[]), 0.0);
    assert_eq!(get(&s, "node_load1", &[]), 0.41);
    assert_eq!(get(&s, "node_load15", &[]), 1.08);
    assert_eq!(get(&s, "node_vmstat_pgfault", &[]), 5000.0);
    assert_eq!(get(&s, "node_vmstat_oom_kill", &[]), 1.0);
    assert_eq!(kinds["node_vmstat_pgfault"], MetricType::Untyped);
    assert!(!kinds.contains_key("node_vmstat_nr_free_pages"));

    // diskstats: loop0 excluded; bytes are sectors * 512, times ms / 1000
    assert!(s.keys().all(|(_, l)| !l.iter().any(|(_, v)| v == "loop0")));
    assert_eq!(
        get(&s, "node_disk_read_bytes_total", &[("device", "vda")]),
        2000.0 * 512.0
    );
    assert_eq!(
        get(
            &s,
            "node_disk_write_time_seconds_total",
            &[("device", "vda")]
        ),
        0.4
    );
    assert_eq!(get(&s, "node_disk_io_now", &[("device", "vda")]), 2.0);
    assert_eq!(
        get(
            &s,
            "node_disk_io_time_weighted_seconds_total",
            &[("device", "vda")]
        ),
        0.7
    );
    assert_eq!(
        get(
            &s,
            "node_disk_discarded_sectors_total",
            &[("device", "vda")]
        ),
        80.0
    );
    assert_eq!(
        get(&s, "node_disk_flush_requests_total", &[("device", "vda")]),
        6.0
    );
    assert_eq!(
        get(
            &s,
            "node_disk_flush_requests_time_seconds_total",
            &[("device", "vda")]
        ),
        0.012
    );
    assert_eq!(
        get(
            &s,
            "node_disk_info",
            &[
                ("device", "vda"),
                ("major", "254"),
                ("minor", "0"),
                ("model", "FakeDisk"),
                ("serial", "SN1"),
                ("path", "pci-0000:00:04.0"),
                ("wwn", ""),
                ("revision", "")
            ]
        ),
        1.0
    );

    // netdev from proc/1/net/dev (not the decoy proc/net/dev), lo excluded
    assert_eq!(
        get(
            &s,
            "node_network_receive_bytes_total",
            &[("device", "eth0")]
        ),
        5_000_000.0
    );
    assert_eq!(
        get(
            &s,
            "node_network_transmit_compressed_total",
            &[("device", "eth0")]
        ),
        14.0
    );
    assert_eq!(
        get(
            &s,
            "node_network_receive_nohandler_total",
            &[("device", "eth0")]
        ),
        42.0
    );
    assert!(s.keys().all(|(_, l)| !l.iter().any(|(_, v)| v == "lo")));

    // netstat (untyped, default field filter), sockstat
    assert_eq!(get(&s, "node_netstat_Tcp_ActiveOpens", &[]), 77.0);
    assert_eq!(get(&s, "node_netstat_Udp_NoPorts", &[]), 2.0);
    assert_eq!(get(&s, "node_netstat_Ip6_InOctets", &[]), 600.0);
    assert!(!kinds.contains_key("node_netstat_Tcp_RtoAlgorithm"));
    assert!(kinds.contains_key("node_netstat_TcpExt_ListenDrops"));
    assert_eq!(kinds["node_netstat_Tcp_ActiveOpens"], MetricType::Untyped);
    assert_eq!(get(&s, "node_sockstat_sockets_used", &[]), 15.0);
    assert_eq!(get(&s, "node_sockstat_TCP_tw", &[]), 4.0);
    let page = get(&s, "node_sockstat_TCP_mem_bytes", &[]) / 3.0;
    assert!(
        page == 4096.0 || page == 16384.0 || page == 65536.0,
        "{page}"
    );
    assert_eq!(get(&s, "node_sockstat_TCP6_inuse", &[]), 6.0);

    // pressure
    assert_eq!(get(&s, "node_pressure_cpu_waiting_seconds_total", &[]), 2.5);
    assert_eq!(get(&s, "node_pressure_io_stalled_seconds_total", &[]), 0.5);
    assert_eq!(
        get(&s, "node_pressure_memory_waiting_seconds_total", &[]),
        3.0
    );
    assert_eq!(
        get(&s, "node_pressure_memory_stalled_seconds_total", &[]),
        1.5
    );

    // filefd, conntrack (entries from the host netns stat file, stats summed per CPU)
    assert_eq!(get(&s, "node_filefd_allocated", &[]), 430.0);
    assert_eq!(get(&s, "node_filefd_maximum", &[]), 2464775.0);
    assert_eq!(get(&s, "node_nf_conntrack_entries", &[]), 17.0);
    assert_eq!(get(&s, "node_nf_conntrack_entries_limit", &[]), 262144.0);
    assert_eq!(get(&s, "node_nf_conntrack_stat_drop", &[]), 5.0);
    assert_eq!(get(&s, "node_nf_conntrack_stat_early_drop", &[]), 1.0);

    // os (etc/os-release is a relative symlink into usr/lib), time
    assert_eq!(
        get(
            &s,
            "node_os_version",
            &[
                ("id", "fake"),
                ("id_like", "debian"),
                ("name", "Fake Linux")
            ]
        ),
        3.18
    );
    assert!(s.keys().any(|(n, l)| n == "node_os_info"
        && l.contains(&("pretty_name".to_string(), "Fake 3.18".to_string()))
        && l.len() == 12));
    assert_eq!(
        get(&s, "node_time_zone_offset_seconds", &[("time_zone", "UTC")]),
        0.0
    );
    assert_eq!(
        get(
            &s,
            "node_time_clocksource_available_info",
            &[("clocksource", "kvm-clock"), ("device", "0")]
        ),
        1.0
    );
    assert_eq!(
        get(
            &s,
            "node_time_clocksource_current_info",
            &[("clocksource", "tsc"), ("device", "0")]
        ),
        1.0
    );

    // filesystem: host mount table (not the decoy), statfs through root/, proc and nfs
    // skipped, ro from mount options
    let expect = real_statfs(&paths.root).unwrap();
    let root_l = [
        ("device", "/dev/hostroot"),
        ("fstype", "ext4"),
        ("mountpoint", "/"),
    ];
    assert_eq!(
        get(&s, "node_filesystem_size_bytes", &root_l),
        expect.blocks as f64 * expect.block_size as f64
    );
    assert_eq!(
        get(&s, "node_filesystem_files", &root_l),
        expect.files as f64
    );
    assert_eq!(get(&s, "node_filesystem_readonly", &root_l), 0.0);
    let boot_l = [
        ("device", "/dev/hostboot"),
        ("fstype", "vfat"),
        ("mountpoint", "/boot"),
    ];
    assert_eq!(get(&s, "node_filesystem_readonly", &boot_l), 1.0);
    assert_eq!(get(&s, "node_filesystem_device_error", &boot_l), 0.0);
    let mut mps: Vec<&str> = s
        .keys()
        .filter(|(n, _)| n == "node_filesystem_device_error")
        .flat_map(|(_, l)| {
            l.iter()
                .filter(|(k, _)| k == "mountpoint")
                .map(|(_, v)| v.as_str())
        })
        .collect();
    mps.sort();
    assert_eq!(mps, vec!["/", "/boot"]);

    // uname comes from the syscall
    assert!(s.keys().any(|(n, l)| n == "node_uname_info"
        && l.contains(&("sysname".to_string(), "Linux".to_string()))));

    // arp, udp_queues and softnet read the host netns (proc/1/net), never proc/net.
    assert_eq!(get(&s, "node_arp_entries", &[("device", "eth0")]), 1.0);
    assert!(!s
        .keys()
        .any(|(_, l)| l.contains(&("device".into(), "decoy0".into()))));
    assert_eq!(
        get(&s, "node_udp_queues", &[("ip", "v4"), ("queue", "tx")]),
        16.0
    );
    assert_eq!(
        get(&s, "node_udp_queues", &[("ip", "v4"), ("queue", "rx")]),
        32.0
    );
    assert_eq!(
        get(&s, "node_udp_queues", &[("ip", "v6"), ("queue", "rx")]),
        0.0
    );
    assert_eq!(
        get(&s, "node_softnet_processed_total", &[("cpu", "0")]),
        256.0
    );
    assert_eq!(
        get(&s, "node_softnet_times_squeezed_total", &[("cpu", "0")]),
        3.0
    );
    assert_eq!(
        get(&s, "node_schedstat_running_seconds_total", &[("cpu", "0")]),
        3.0
    );
    assert_eq!(
        get(&s, "node_schedstat_timeslices_total", &[("cpu", "0")]),
        42.0
    );
    assert_eq!(get(&s, "node_entropy_available_bits", &[]), 256.0);
    assert_eq!(
        get(&s, "node_network_mtu_bytes", &[("device", "eth0")]),
        9000.0
    );
    assert_eq!(get(&s, "node_network_up", &[("device", "eth0")]), 1.0);
    assert_eq!(get(&s, "node_selinux_enabled", &[]), 0.0);
    assert_eq!(get(&s, "node_textfile_scrape_error", &[]), 0.0);
    assert!(get(&s, "process_resident_memory_bytes", &[]) > 0.0);
}

#[test]
fn missing_optional_sources_are_unavailable_and_the_rest_work() {
    let dir = tempfile::tempdir().unwrap();
    let paths = build_tree(dir.path());
    std::fs::remove_dir_all(paths.proc.join("pressure")).unwrap();
    std::fs::remove_dir_all(paths.proc.join("sys/net/netfilter")).unwrap();
    std::fs::remove_dir_all(paths.proc.join("1/net/stat")).unwrap();
    for c in HostMetricsConfig::default().build(&paths).unwrap() {
        let r = c.collect();
        match c.name() {
            "pressure" | "conntrack" => {
                let e = r.expect_err("source removed");
                assert!(e.is_unavailable(), "{}: {e}", c.name());
            }
            name if IN_TREE.contains(&name) => {
                r.unwrap_or_else(|e| panic!("{}: {e}", c.name()));
            }
            _ => {}
        }
    }
}

#[test]
fn garbage_files_give_errors_or_skips_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let paths = build_tree(dir.path());
    let junk = "\u{0}\u{1}garbage: x y z\n\n((((\n-1 -2 -3\n";
    for rel in [
        "stat",
        "meminfo",
        "loadavg",
        "diskstats",
        "vmstat",
        "pressure/cpu",
        "1/net/dev",
        "1/net/netstat",
        "1/net/snmp",
        "1/net/snmp6",
        "1/net/sockstat",
        "1/mountinfo",
        "sys/fs/file-nr",
        "1/net/stat/nf_conntrack",
    ] {
        std::fs::write(paths.proc.join(rel), junk).unwrap();
    }
    std::fs::write(
        paths.proc.join("1/net/dev"),
        vec![0xff_u8, 0xfe, b'\n', b':'],
    )
    .unwrap();
    for c in HostMetricsConfig::default().build(&paths).unwrap() {
        if let Err(e) = c.collect() {
            let msg = e.to_string();
            assert!(
                msg.contains(dir.path().to_str().unwrap()) || e.is_unavailable(),
                "{}: {msg}",
                c.name()
            );
        }
    }
}

mod collectors_on_garbage {
    use super::*;
    use proptest::prelude::*;

    const FILES: &[&str] = &[
        "stat",
        "meminfo",
        "loadavg",
        "diskstats",
        "vmstat",
        "pressure/cpu",
        "pressure/io",
        "pressure/memory",
        "1/net/dev",
        "1/net/netstat",
        "1/net/snmp",
        "1/net/snmp6",
        "1/net/sockstat",
        "1/net/sockstat6",
        "1/net/stat/nf_conntrack",
        "1/mountinfo",
        "sys/fs/file-nr",
        "sys/net/netfilter/nf_conntrack_count",
        "sys/net/netfilter/nf_conntrack_max",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Every collector, fed arbitrary bytes (or a truncated real-format file) in any
        /// of its files, returns families or an error naming the file; it never panics,
        /// and whatever it returns has valid metric names.
        #[test]
        fn collectors_never_panic(
            which in proptest::collection::vec(0usize..FILES.len(), 1..6),
            junk in proptest::collection::vec(any::<u8>(), 0..600),
            cut in 0usize..400,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let paths = build_tree(dir.path());
            for (n, &i) in which.iter().enumerate() {
                let p = paths.proc.join(FILES[i]);
                if n % 2 == 0 {
                    std::fs::write(&p, &junk).unwrap();
                } else {
                    let real = std::fs::read(&p).unwrap();
                    std::fs::write(&p, &real[..cut.min(real.len())]).unwrap();
                }
            }
            for c in HostMetricsConfig::default().build(&paths).unwrap() {
                if let Ok(fams) = c.collect() {
                    for f in fams {
                        prop_assert!(
                            !f.name.is_empty()
                                && f.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
                            "bad name {:?}", f.name
                        );
                    }
                }
            }
        }
    }
}
