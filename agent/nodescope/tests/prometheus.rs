//! A real Prometheus (Debian package) scrapes the running agent.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn real_prometheus_scrapes_the_agent() {
    let test = "real_prometheus_scrapes_the_agent";
    let Some(prom) = require_tool(test, "prometheus", &["/usr/bin/prometheus"]) else {
        return;
    };
    let agent = start_agent("");
    let dir = tempfile::tempdir().unwrap();
    let (_p, port) = start_prometheus(
        &prom,
        dir.path(),
        &[("nodescope", format!("127.0.0.1:{}", agent.port))],
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = String::new();
    loop {
        let up = prom_query(port, "up{job=\"nodescope\"}");
        let cpu = prom_query(port, "count(node_cpu_seconds_total{job=\"nodescope\"})");
        let mem = prom_query(port, "node_memory_MemTotal_bytes{job=\"nodescope\"}");
        let rate = prom_query(
            port,
            "sum(rate(node_cpu_seconds_total{job=\"nodescope\"}[5s]))",
        );
        let ok = up.first().map(|v| v["value"][1] == "1").unwrap_or(false)
            && cpu
                .first()
                .and_then(|v| v["value"][1].as_str()?.parse::<f64>().ok())
                .unwrap_or(0.0)
                >= 1.0
            && !mem.is_empty()
            && rate
                .first()
                .and_then(|v| v["value"][1].as_str()?.parse::<f64>().ok())
                // Two CPUs' worth of seconds per second, all modes summed.
                .is_some_and(|r| r > 0.5 && r < 64.0);
        if ok {
            break;
        }
        last = format!("up={up:?} cpu={cpu:?} mem={mem:?} rate={rate:?}");
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw the agent: {last}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Prometheus negotiated OpenMetrics; scrape health is reported without sample errors.
    let samples = prom_query(port, "scrape_samples_scraped{job=\"nodescope\"}");
    let n: f64 = samples[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(n > 200.0, "only {n} samples scraped");
    let _ = last;
}

#[test]
fn exposition_formats_and_gzip_are_negotiated() {
    let agent = start_agent("");
    let client = reqwest::blocking::Client::builder()
        .no_gzip()
        .build()
        .unwrap();
    let plain = client.get(agent.url("/metrics")).send().unwrap();
    assert_eq!(
        plain.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let body = plain.text().unwrap();
    assert!(body.contains("# TYPE node_cpu_seconds_total counter"));
    assert!(!body.contains("# EOF"));

    let om = client
        .get(agent.url("/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .send()
        .unwrap();
    assert!(om.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text; version=1.0.0"));
    let body = om.text().unwrap();
    assert!(body.contains("# TYPE node_cpu_seconds counter"));
    assert!(body.ends_with("# EOF\n"));

    let gz = client
        .get(agent.url("/metrics"))
        .header("accept-encoding", "gzip")
        .send()
        .unwrap();
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    let bytes = gz.bytes().unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_string(&mut text)
        .unwrap();
    assert!(text.contains("node_memory_MemTotal_bytes "));
}
