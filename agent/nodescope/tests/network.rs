//! The agent wires the eBPF network probes end to end: a loopback connection made by this
//! test shows up in /metrics and in /api/v1/network/connections (root only).

mod common;

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn loopback_connect_appears_in_metrics_and_api() {
    if !require_root("loopback_connect_appears_in_metrics_and_api") {
        return;
    }
    let agent = start_agent("[network]\nenabled = true\n");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let accept = std::thread::spawn(move || {
        for _ in 0..3 {
            let _ = listener.accept();
        }
    });
    for _ in 0..3 {
        drop(TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap());
    }
    accept.join().unwrap();

    let needle = format!(
        "nodescope_tcp_connect_duration_seconds_count{{workload=\"host\",peer_address=\"127.0.0.1\",peer_port=\"{port}\",direction=\"outbound\"}} 3"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = http_get(&agent.url("/metrics")).unwrap();
        if body.contains(&needle) {
            assert!(body.contains("nodescope_probe_up{probe=\"tcp_connect\"} 1"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{needle} not found in:\n{}",
            body.lines()
                .filter(|l| l.contains("connect_duration_seconds_count"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, body) = http_get(&agent.url("/api/v1/network/connections")).unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        body.contains(&port),
        "connections API lacks port {port}: {v}"
    );
}
