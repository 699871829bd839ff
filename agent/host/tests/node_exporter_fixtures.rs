//! Same input, real peer: node_exporter's own fixture trees (vendored in `tests/data`)
//! read by Debian's `prometheus-node-exporter` 1.5 and by nodescope's host collectors,
//! compared family by family (help, type) and series by series (labels, value).
//!
//! Everything node_exporter produces there must be produced here with equal values,
//! except the differences listed in [`DOCUMENTED`] (each one is in docs/host-metrics.md).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nodescope_host::{node_scrape_families, HostMetricsConfig, HostPaths};
use nodescope_model::{MetricFamily, MetricType, Value};
use nodescope_testsupport::{free_port, require_tool};

type Labels = Vec<(String, String)>;

#[derive(Default, Debug)]
struct Exposition {
    help: BTreeMap<String, String>,
    kind: BTreeMap<String, String>,
    samples: BTreeMap<(String, Labels), f64>,
}

/// A small reader of text format 0.0.4 for node_exporter's output (test-only; it is not
/// the collector's parser, so the comparison does not judge itself).
fn parse_exposition(text: &str) -> Exposition {
    let mut e = Exposition::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (n, h) = rest.split_once(' ').unwrap_or((rest, ""));
            e.help
                .insert(n.to_string(), h.replace("\\n", "\n").replace("\\\\", "\\"));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (n, t) = rest.split_once(' ').unwrap();
            e.kind.insert(n.to_string(), t.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(b) => {
                let name = &line[..b];
                let mut labels = Vec::new();
                let bytes: Vec<char> = line[b + 1..].chars().collect();
                let mut i = 0;
                loop {
                    if bytes[i] == '}' {
                        i += 1;
                        break;
                    }
                    if bytes[i] == ',' {
                        i += 1;
                        continue;
                    }
                    let ks = i;
                    while bytes[i] != '=' {
                        i += 1;
                    }
                    let k: String = bytes[ks..i].iter().collect();
                    i += 2; // ="
                    let mut v = String::new();
                    while bytes[i] != '"' {
                        if bytes[i] == '\\' {
                            i += 1;
                            v.push(match bytes[i] {
                                'n' => '\n',
                                c => c,
                            });
                        } else {
                            v.push(bytes[i]);
                        }
                        i += 1;
                    }
                    i += 1;
                    labels.push((k, v));
                }
                let rest: String = bytes[i..].iter().collect();
                (name.to_string(), labels, rest)
            }
            None => {
                let (n, r) = line.split_once(' ').unwrap();
                (n.to_string(), Vec::new(), r.to_string())
            }
        };
        let v = rest.split_whitespace().next().unwrap();
        let v = match v {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap(),
        };
        let mut labels = labels;
        labels.sort();
        e.samples.insert((name, labels), v);
    }
    e
}

fn fmt_le(v: f64) -> String {
    if v.is_infinite() {
        "+Inf".into()
    } else {
        let s = format!("{v}");
        s
    }
}

/// Our families flattened into the same shape (histograms as `_bucket`/`_sum`/`_count`).
fn flatten(fams: &[MetricFamily]) -> Exposition {
    let mut e = Exposition::default();
    for f in fams {
        e.help
            .entry(f.name.to_string())
            .or_insert_with(|| f.help.to_string());
        e.kind.entry(f.name.to_string()).or_insert_with(|| {
            match f.kind {
                MetricType::Counter => "counter",
                MetricType::Gauge => "gauge",
                MetricType::Histogram => "histogram",
                MetricType::Untyped => "untyped",
            }
            .to_string()
        });
        for p in &f.points {
            let mut labels: Labels = p
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            labels.sort();
            match &p.value {
                Value::Number(v) => {
                    let prev = e.samples.insert((f.name.to_string(), labels.clone()), *v);
                    assert!(prev.is_none(), "duplicate series {}{labels:?}", f.name);
                }
                Value::Histogram(h) => {
                    for b in &h.buckets {
                        let mut l = labels.clone();
                        l.push(("le".into(), fmt_le(b.upper_bound)));
                        l.sort();
                        e.samples
                            .insert((format!("{}_bucket", f.name), l), b.cumulative_count as f64);
                    }
                    let mut l = labels.clone();
                    l.push(("le".into(), "+Inf".into()));
                    l.sort();
                    e.samples
                        .insert((format!("{}_bucket", f.name), l), h.count as f64);
                    e.samples
                        .insert((format!("{}_sum", f.name), labels.clone()), h.sum);
                    e.samples
                        .insert((format!("{}_count", f.name), labels), h.count as f64);
                }
            }
        }
    }
    e
}

/// Families where a difference is a documented choice or where node_exporter 1.5 reads
/// the live machine instead of the fixture tree (docs/host-metrics.md, "Differences").
/// `Values` = same series, values compared with a tolerance or not at all.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Why {
    /// node_exporter reads the live machine (netlink, syscalls): its series are not the
    /// fixture's, so neither side is compared.
    Live,
    /// Same series; values are timing or wall-clock dependent, or differ by a documented
    /// choice (the source nodescope reads is another file).
    Values,
}

const DOCUMENTED: &[(&str, Why)] = &[
    // netdev: node_exporter 1.5 reads rtnetlink (this machine's interfaces), we read
    // <proc>/1/net/dev of the tree.
    ("node_network_receive_", Why::Live),
    ("node_network_transmit_", Why::Live),
    // adjtimex(2), the wall clock, uname(2): the machine's, read a moment apart.
    ("node_timex_", Why::Values),
    ("node_time_seconds", Why::Values),
    ("node_scrape_collector_duration_seconds", Why::Values),
    // Success differs where the sources differ: node_exporter's filesystem collector fails
    // on the tree's mount table, its netdev reads netlink; ours read the tree.
    ("node_scrape_collector_success", Why::Values),
    // Ours: the `entries` column of <proc>/1/net/stat/nf_conntrack (host netns) first;
    // node_exporter: <proc>/sys/net/netfilter/nf_conntrack_count.
    ("node_nf_conntrack_entries", Why::Values),
    // node_exporter's own process and Go runtime.
    ("go_", Why::Live),
    ("process_", Why::Live),
    ("promhttp_", Why::Live),
    ("node_exporter_build_info", Why::Live),
];

fn documented(name: &str) -> Option<Why> {
    DOCUMENTED
        .iter()
        .find(|(p, _)| name.starts_with(p))
        .map(|(_, w)| *w)
}

/// The systemd collector's scrape series. Debian builds node_exporter with its systemd
/// collector on (upstream: off); it needs systemd's D-Bus API, which nodescope does not
/// implement (docs/host-metrics.md).
fn systemd_scrape(name: &str, labels: &Labels) -> bool {
    name.starts_with("node_scrape_collector_")
        && labels
            .iter()
            .any(|(k, v)| k == "collector" && v == "systemd")
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scrape(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200").then(|| body.to_string())
}

fn unpack() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let tarball = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/node-exporter-fixtures/node-exporter-fixtures.tar.gz");
    let st = Command::new("tar")
        .arg("-C")
        .arg(dir.path())
        .arg("-xzf")
        .arg(&tarball)
        .status()
        .expect("run tar");
    assert!(st.success(), "tar -xzf {}", tarball.display());
    let f = dir.path().join("node-exporter-fixtures");
    // Adapter: nodescope reads the host network namespace's files through
    // <proc>/1/net; node_exporter reads <procfs>/net. The tree has only proc/net.
    std::os::unix::fs::symlink("../net", f.join("proc/1/net")).unwrap();
    (dir, f)
}

fn run_node_exporter(ne: &Path, f: &Path, extra: &[String]) -> String {
    let port = free_port();
    let child = Command::new(ne)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg(format!("--path.procfs={}", f.join("proc").display()))
        .arg(format!("--path.sysfs={}", f.join("sys").display()))
        .arg(format!("--path.rootfs={}", f.display()))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start node_exporter");
    let _k = Kill(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(body) = scrape(port) {
            return body;
        }
        assert!(Instant::now() < deadline, "node_exporter did not answer");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ours(f: &Path, textfile_dir: &str) -> Vec<MetricFamily> {
    let paths = HostPaths {
        proc: f.join("proc"),
        sys: f.join("sys"),
        root: f.to_path_buf(),
    };
    let mut cfg = HostMetricsConfig::default();
    cfg.textfile.directory = textfile_dir.to_string();
    // node_exporter 1.5 reads network filesystems too; the fixture's NFS mounts are data.
    cfg.filesystem.skip_network_filesystems = false;
    let collectors = cfg.build(&paths).expect("build host collectors");
    let mut all = Vec::new();
    let mut outcomes = Vec::new();
    for c in &collectors {
        let t = Instant::now();
        let r = c.collect();
        outcomes.push((c.name(), t.elapsed(), r.is_ok()));
        if let Ok(f) = r {
            all.extend(f.into_iter().filter(|f| !f.name.starts_with("nodescope_")));
        }
    }
    all.extend(node_scrape_families(outcomes));
    all
}

fn node_exporter(test: &str) -> Option<PathBuf> {
    require_tool(
        test,
        "prometheus-node-exporter",
        &["/usr/bin/prometheus-node-exporter"],
    )
}

#[test]
fn fixture_trees_agree_with_node_exporter() {
    let Some(ne) = node_exporter("fixture_trees_agree_with_node_exporter") else {
        return;
    };
    let (_tmp, f) = unpack();
    let tf = f.join("textfile/two_metric_files");
    let theirs_text = run_node_exporter(
        &ne,
        &f,
        &[format!("--collector.textfile.directory={}", tf.display())],
    );
    let problems = compare(&f, &theirs_text, &ours(&f, "/textfile/two_metric_files"));
    assert!(
        problems.is_empty(),
        "{} differences from node_exporter 1.5 on its fixtures:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// node_exporter 1.5 (procfs 0.8) refuses the fixture's nfsd file (a `wdeleg_getattr`
/// line newer than it); nodescope refuses it the same way (the first test sees both fail).
/// With that line removed, both read it: compare the values.
#[test]
fn nfsd_agrees_with_node_exporter_where_procfs_can_read_it() {
    let Some(ne) = node_exporter("nfsd_agrees_with_node_exporter_where_procfs_can_read_it") else {
        return;
    };
    let (_tmp, f) = unpack();
    let nfsd = f.join("proc/net/rpc/nfsd");
    let text = std::fs::read_to_string(&nfsd).unwrap();
    assert!(text.contains("wdeleg_getattr"), "fixture changed");
    let kept: String = text
        .lines()
        .filter(|l| !l.starts_with("wdeleg_getattr"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&nfsd, kept).unwrap();
    let theirs_text = run_node_exporter(
        &ne,
        &f,
        &[
            "--collector.disable-defaults".to_string(),
            "--collector.nfsd".to_string(),
        ],
    );
    assert!(
        theirs_text.contains("node_nfsd_requests_total"),
        "node_exporter read no nfsd file"
    );
    let paths = HostPaths {
        proc: f.join("proc"),
        sys: f.join("sys"),
        root: f.to_path_buf(),
    };
    let cfg = HostMetricsConfig {
        collectors: vec!["nfsd".into()],
        ..Default::default()
    };
    let mut all = Vec::new();
    let mut outcomes = Vec::new();
    for c in cfg.build(&paths).unwrap() {
        let r = c.collect();
        outcomes.push((c.name(), Duration::ZERO, r.is_ok()));
        all.extend(r.expect("nfsd reads the file"));
    }
    all.extend(node_scrape_families(outcomes));
    let problems = compare(&f, &theirs_text, &all);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn compare(f: &Path, theirs_text: &str, ours: &[MetricFamily]) -> Vec<String> {
    // node_exporter labels textfiles and RAPL zones with the path it was given; we with
    // the host's path.
    let theirs_text = theirs_text.replace(&format!("{}/", f.display()), "/");
    let theirs = parse_exposition(&theirs_text);
    let ours = flatten(ours);

    let mut problems: Vec<String> = Vec::new();
    let their_fams: BTreeSet<&String> = theirs.kind.keys().collect();
    for fam in &their_fams {
        if documented(fam) == Some(Why::Live) {
            continue;
        }
        let has_samples = theirs.samples.keys().any(|(n, _)| {
            n == *fam
                || n.strip_prefix(fam.as_str())
                    .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))
        });
        if !has_samples {
            continue;
        }
        match ours.kind.get(*fam) {
            None => problems.push(format!("missing family {fam}")),
            Some(k) if k != &theirs.kind[*fam] => problems.push(format!(
                "{fam}: type {k}, node_exporter {}",
                theirs.kind[*fam]
            )),
            _ => {}
        }
        if let (Some(a), Some(b)) = (ours.help.get(*fam), theirs.help.get(*fam)) {
            if a != b {
                problems.push(format!("{fam}: help {a:?}, node_exporter {b:?}"));
            }
        }
    }
    let mut compared = 0usize;
    for ((name, labels), tv) in &theirs.samples {
        let why = documented(name);
        if why == Some(Why::Live) || systemd_scrape(name, labels) {
            continue;
        }
        match ours.samples.get(&(name.clone(), labels.clone())) {
            None => problems.push(format!("missing series {name}{labels:?} = {tv}")),
            Some(ov) => {
                compared += 1;
                let equal =
                    ov == tv || (ov.is_nan() && tv.is_nan()) || (ov - tv).abs() <= tv.abs() * 1e-12;
                if !equal && why.is_none() {
                    problems.push(format!("{name}{labels:?}: ours {ov}, node_exporter {tv}"));
                }
            }
        }
    }
    for (name, labels) in ours.samples.keys() {
        if documented(name).is_some() || name.starts_with("nodescope_") {
            continue;
        }
        let fam_known = theirs.kind.contains_key(name)
            || ["_bucket", "_sum", "_count"].iter().any(|s| {
                name.strip_suffix(s)
                    .is_some_and(|b| theirs.kind.contains_key(b))
            });
        if fam_known && !theirs.samples.contains_key(&(name.clone(), labels.clone())) {
            problems.push(format!("extra series {name}{labels:?}"));
        }
    }
    eprintln!(
        "compared {compared} series of {} node_exporter families",
        their_fams.len()
    );
    problems
}

/// Every collector over node_exporter's whole fixture tree with every file replaced by
/// garbage (several kinds, one per run): errors are fine, panics are not.
#[test]
fn garbage_in_every_fixture_file_never_panics() {
    type Mangle<'a> = &'a dyn Fn(&[u8]) -> Vec<u8>;
    let garbage: [Mangle; 6] = [
        &|_| Vec::new(),
        &|b| b[..b.len() / 2].to_vec(),
        &|_| b"garbage: x y z\n((((\n-1 -2 -3\n".to_vec(),
        &|_| b"-1\n".to_vec(),
        &|_| vec![0xff, 0xfe, 0x00, b'\n', b':', b'=', b' '],
        &|b| b.iter().rev().copied().collect(),
    ];
    for (i, mangle) in garbage.iter().enumerate() {
        let (_tmp, f) = unpack();
        let mut stack = vec![f.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let t = e.file_type().unwrap();
                if t.is_dir() {
                    stack.push(e.path());
                } else if t.is_file() {
                    let b = std::fs::read(e.path()).unwrap_or_default();
                    let _ = std::fs::write(e.path(), mangle(&b));
                }
            }
        }
        let all = ours(&f, "/textfile/two_metric_files");
        eprintln!("garbage kind {i}: {} families", all.len());
    }
}
