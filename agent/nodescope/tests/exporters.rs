//! The agent's push path end to end: periodic collection → pipeline → remote_write into a
//! real Prometheus (Debian package, remote-write receiver on), read back with PromQL.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn mem_total_bytes() -> f64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024.0
}

#[test]
fn remote_write_delivers_host_and_self_metrics_to_prometheus() {
    let test = "remote_write_delivers_host_and_self_metrics_to_prometheus";
    let Some(prom) = require_tool(test, "prometheus", &["/usr/bin/prometheus"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_p, prom_port) = start_prometheus_with(
        &prom,
        dir.path(),
        &[],
        &["--web.enable-remote-write-receiver"],
    );
    let agent = start_agent(&format!(
        "collect_interval = \"1s\"\n\n[network]\nenabled = false\n\n\
         [exporters.remote_write]\nenabled = true\n\
         endpoint = \"http://127.0.0.1:{prom_port}/api/v1/write\"\n\
         [exporters.remote_write.batch]\ntimeout = \"200ms\"\n"
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    let want = mem_total_bytes();
    loop {
        let mem = prom_query(prom_port, "node_memory_MemTotal_bytes{job=\"nodescope\"}");
        let info = prom_query(prom_port, "nodescope_build_info");
        let cpu = prom_query(prom_port, "count(node_cpu_seconds_total)");
        let got = mem
            .first()
            .and_then(|v| v["value"][1].as_str()?.parse::<f64>().ok());
        if got == Some(want) && !info.is_empty() && !cpu.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "remote-written series never arrived: mem={mem:?} info={info:?} cpu={cpu:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The exporter reports itself healthy and counts what it sent.
    let (_, status) = http_get(&agent.url("/api/v1/status")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let rw = v["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "remote_write" && c["kind"] == "exporter")
        .expect("remote_write in status")
        .clone();
    assert_eq!(rw["state"], "ok", "{rw}");
    let (_, metrics) = http_get(&agent.url("/metrics")).unwrap();
    let sent = metrics
        .lines()
        .find(|l| l.starts_with("nodescope_exporter_sent_total{exporter=\"remote_write\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .expect("nodescope_exporter_sent_total for remote_write");
    assert!(sent > 100.0, "sent {sent}");
}
