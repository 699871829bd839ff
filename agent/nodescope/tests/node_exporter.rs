//! Compatibility with Debian's real node_exporter (1.5), read at the same moment:
//! same family names for the collectors nodescope replaces, same values, and no
//! `promtool check metrics` complaint that node_exporter's own output does not also get.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

fn fetch_both(ours: &str, theirs: &str) -> (String, String) {
    std::thread::scope(|s| {
        let a = s.spawn(|| http_get(ours).expect("scrape nodescope").1);
        let b = s.spawn(|| http_get(theirs).expect("scrape node_exporter").1);
        (a.join().unwrap(), b.join().unwrap())
    })
}

fn parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("exposition parses with prometheus-parse")
}

fn value(s: &prometheus_parse::Sample) -> f64 {
    use prometheus_parse::Value::*;
    match &s.value {
        Counter(v) | Gauge(v) | Untyped(v) => *v,
        _ => f64::NAN,
    }
}

type Series = BTreeMap<(String, Vec<(String, String)>), f64>;

fn series(scrape: &prometheus_parse::Scrape) -> Series {
    scrape
        .samples
        .iter()
        .map(|s| {
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            ((s.metric.clone(), labels), value(s))
        })
        .collect()
}

/// Every `node_*` family node_exporter 1.5 produces is in scope, except the documented
/// differences (docs/host-metrics.md): its own build info, and the systemd collector
/// (Debian enables it; it needs D-Bus; not implemented).
fn in_scope(name: &str) -> bool {
    name.starts_with("node_")
        && name != "node_exporter_build_info"
        && !name.starts_with("node_systemd_")
}

fn close(a: f64, b: f64, rel: f64, abs: f64) -> bool {
    (a - b).abs() <= (a.abs().max(b.abs()) * rel).max(abs)
}

#[test]
fn values_and_families_agree_with_node_exporter() {
    let Some(ne) = node_exporter_bin("values_and_families_agree_with_node_exporter") else {
        return;
    };
    let agent = start_agent("");
    let (_ne, ne_port) = start_node_exporter(&ne);
    let (ours_text, theirs_text) = fetch_both(
        &agent.url("/metrics"),
        &format!("http://127.0.0.1:{ne_port}/metrics"),
    );
    let ours = series(&parse(&ours_text));
    let theirs = series(&parse(&theirs_text));

    // 1. Family names: node_exporter's in-scope set is a subset of ours.
    let our_names: BTreeSet<&str> = ours.keys().map(|(n, _)| n.as_str()).collect();
    let missing: Vec<&str> = theirs
        .keys()
        .filter(|(n, l)| {
            // The systemd collector's own scrape series (not implemented, see above).
            !(n.starts_with("node_scrape_collector_")
                && l.iter().any(|(k, v)| k == "collector" && v == "systemd"))
        })
        .map(|(n, _)| n.as_str())
        .filter(|n| in_scope(n) && !our_names.contains(n))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(
        missing.is_empty(),
        "families node_exporter has and we lack: {missing:?}"
    );

    // 2. Values.
    let get = |s: &Series, name: &str| -> Vec<(Vec<(String, String)>, f64)> {
        s.iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, l), v)| (l.clone(), *v))
            .collect()
    };
    let mem_ours = get(&ours, "node_memory_MemTotal_bytes");
    let mem_theirs = get(&theirs, "node_memory_MemTotal_bytes");
    assert_eq!(mem_ours.len(), 1);
    assert_eq!(mem_ours[0].1, mem_theirs[0].1, "MemTotal must be equal");

    let mut compared = BTreeMap::new();
    for (name, rel, abs) in [
        // Exact: static sizes.
        ("node_filesystem_size_bytes", 0.0, 0.0),
        // Cumulative counters read a few ms apart: 2%, with a floor of two 10 ms ticks
        // per counter for counters that are still near zero.
        ("node_cpu_seconds_total", 0.02, 0.02),
        // 2%, with a floor of 64 KiB for devices that carry the scrapes themselves.
        ("node_network_receive_bytes_total", 0.02, 65536.0),
    ] {
        let t: BTreeMap<_, _> = get(&theirs, name).into_iter().collect();
        let o: BTreeMap<_, _> = get(&ours, name).into_iter().collect();
        let mut n = 0;
        for (labels, tv) in &t {
            let Some(ov) = o.get(labels) else {
                panic!("{name}{labels:?} exported by node_exporter but not by nodescope");
            };
            assert!(
                close(*ov, *tv, rel, abs),
                "{name}{labels:?}: nodescope {ov} vs node_exporter {tv}"
            );
            n += 1;
        }
        assert!(n > 0, "node_exporter exported no {name} series here");
        compared.insert(name, n);
    }
    eprintln!("compared series: {compared:?}");
}

fn promtool_problems(promtool: &std::path::Path, text: &str) -> BTreeSet<String> {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let all =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    all.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn promtool_reports_nothing_beyond_node_exporter() {
    let test = "promtool_reports_nothing_beyond_node_exporter";
    let Some(ne) = node_exporter_bin(test) else {
        return;
    };
    let Some(promtool) = require_tool(test, "promtool", &["/usr/bin/promtool"]) else {
        return;
    };
    let agent = start_agent("");
    let (_ne, ne_port) = start_node_exporter(&ne);
    let (ours, theirs) = fetch_both(
        &agent.url("/metrics"),
        &format!("http://127.0.0.1:{ne_port}/metrics"),
    );
    let ours_p = promtool_problems(&promtool, &ours);
    let theirs_p = promtool_problems(&promtool, &theirs);
    // A parse error would be reported as a single line starting with "error".
    assert!(
        !ours_p.iter().any(|l| l.starts_with("error while linting")),
        "promtool could not parse our output: {ours_p:?}"
    );
    let extra: Vec<&String> = ours_p.difference(&theirs_p).collect();
    assert!(
        extra.is_empty(),
        "promtool reports these for nodescope but not for node_exporter: {extra:#?}"
    );
}
