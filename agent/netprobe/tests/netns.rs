//! Privileged ground-truth tests on the real kernel (root; CI runs them with
//! NODESCOPE_STRICT_TESTS=1). Traffic only crosses veth pairs into network namespaces the
//! tests create and remove.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use nodescope_ebpf::net::{CONNECT_BOUNDS_NS, RTT_BOUNDS_US};
use nodescope_model::{ComponentState, Value};
use nodescope_netprobe::aggregate::OTHER;
use nodescope_netprobe::probe::points_of;
use nodescope_netprobe::NetworkConfig;

fn slot_of(bounds: &[u64], v: u64) -> usize {
    bounds.iter().position(|&b| v <= b).unwrap_or(bounds.len())
}

/// A dropped first SYN makes the kernel retry after its 1 s initial RTO: the connect
/// takes ~1000-1032 ms, lands in the (1, 2] s bucket, the SYN retransmit is counted and a
/// slow-connect event is emitted.
#[test]
fn syn_drop_gives_one_second_connect_retransmit_and_slow_event() {
    if !require("syn_drop_gives_one_second_connect", &["ip", "iptables"]) {
        return;
    }
    let _g = serial();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();
    let ns = NetNs::new();
    let srv = EchoServer::start(&ns, 8080);
    ns.iptables(
        "-A INPUT -p tcp --dport 8080 --syn -m statistic --mode nth --every 2 --packet 0 -j DROP",
    );
    let mut h = start_probe(NetworkConfig::default());
    let token = tokio_util::sync::CancellationToken::new();
    h.probe.spawn(token.clone()).expect("event reader");

    let measured = ping_pong(srv.addr, 1, Duration::ZERO);
    assert!(
        measured >= Duration::from_millis(990) && measured < Duration::from_millis(1500),
        "client measured {measured:?}; the SYN drop rule did not work as intended"
    );
    let rows = h.rows_for(&ns.ns_ip.to_string(), Some(8080));
    let out: Vec<_> = rows
        .iter()
        .filter(|(k, _)| k.direction == "outbound")
        .collect();
    assert_eq!(out.len(), 1, "rows: {rows:?}");
    let s = &out[0].1;
    let n: u64 = s.connect_hist.iter().sum();
    assert_eq!(n, 1);
    let want = slot_of(&CONNECT_BOUNDS_NS, 1_010_000_000);
    assert_eq!(
        connect_bucket_index(s),
        vec![want],
        "connect histogram {:?}",
        s.connect_hist
    );
    let secs = s.connect_sum_ns as f64 / 1e9;
    eprintln!(
        "syn drop: kernel connect {secs:.6} s, client {measured:?}, retransmits {}",
        s.retransmits
    );
    assert!(
        (0.9..=1.1).contains(&secs),
        "connect took {secs} s, expected 1 s ±10%"
    );
    assert!(
        (secs - measured.as_secs_f64()).abs() < 0.05,
        "kernel {secs} s vs client {measured:?}"
    );
    assert!(s.retransmits >= 1, "SYN retransmit not counted: {s:?}");

    // Exposed with the exact metric name and bucket.
    let fams = h.probe.collector().collect().unwrap();
    let pts = points_of(&fams, "nodescope_tcp_connect_duration_seconds");
    let (_, v) = pts
        .iter()
        .find(|(l, _)| l["peer_address"] == ns.ns_ip.to_string() && l["peer_port"] == "8080")
        .expect("connect histogram point");
    let Value::Histogram(hist) = v else { panic!() };
    let le1 = hist.buckets.iter().find(|b| b.upper_bound == 1.0).unwrap();
    let le2 = hist.buckets.iter().find(|b| b.upper_bound == 2.0).unwrap();
    assert_eq!((le1.cumulative_count, le2.cumulative_count), (0, 1));
    let retr = points_of(&fams, "nodescope_tcp_retransmits_total");
    assert!(retr
        .iter()
        .any(|(l, v)| l["peer_address"] == ns.ns_ip.to_string() && **v != Value::Number(0.0)));

    // The slow-connect event arrives as a log record.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut found = None;
    while std::time::Instant::now() < deadline && found.is_none() {
        rt.block_on(tokio::time::sleep(Duration::from_millis(50)));
        found = h
            .drain_logs()
            .into_iter()
            .find(|r| r.kind == "tcp_connect_slow" && r.body.contains(&ns.ns_ip.to_string()));
    }
    let rec = found.expect("slow connect event");
    assert!(rec.attributes.iter().any(|(k, _)| k == "latency_seconds"));
    token.cancel();
}

/// An NFQUEUE delayer in the namespace holds every client->server packet 40 ms: the
/// RTT samples fall in the (25 ms, 50 ms] bucket and their mean is within ±10% of 40 ms.
#[test]
fn nfqueue_delay_measured_as_rtt() {
    if !require("nfqueue_delay_measured_as_rtt", &["ip", "iptables"]) {
        return;
    }
    let _g = serial();
    let ns = NetNs::new();
    let srv = EchoServer::start(&ns, 8081);
    let queue = 100 + (std::process::id() % 1000) as u16;
    let _delayer = Delayer::start(&ns, queue, Duration::from_millis(40));
    ns.iptables(&format!(
        "-A INPUT -p tcp --dport 8081 -j NFQUEUE --queue-num {queue}"
    ));
    let h = start_probe(NetworkConfig {
        rtt_sample_interval_seconds: 0.05,
        ..NetworkConfig::default()
    });
    let connect = ping_pong(srv.addr, 25, Duration::from_millis(60));
    assert!(
        connect >= Duration::from_millis(36) && connect < Duration::from_millis(200),
        "client connect {connect:?}: delayer not in the path"
    );
    let rows = h.rows_for(&ns.ns_ip.to_string(), Some(8081));
    let (_, s) = rows
        .iter()
        .find(|(k, _)| k.direction == "outbound")
        .expect("outbound row");
    let samples: u64 = s.rtt_hist.iter().sum();
    assert!(
        samples >= 10,
        "only {samples} RTT samples: {:?}",
        s.rtt_hist
    );
    let want = slot_of(&RTT_BOUNDS_US, 40_000);
    let in_bucket = s.rtt_hist[want];
    assert_eq!(in_bucket, samples, "RTT histogram {:?}", s.rtt_hist);
    let mean_ms = s.rtt_sum_us as f64 / samples as f64 / 1000.0;
    eprintln!(
        "nfqueue 40 ms: {samples} RTT samples, mean {mean_ms:.3} ms, connect {:.3} ms",
        s.connect_sum_ns as f64 / 1e6
    );
    assert!(
        (36.0..=44.0).contains(&mean_ms),
        "mean RTT {mean_ms} ms, expected 40 ms ±10%"
    );
    // The connect itself waited for the delayed SYN (and then the delayed ACK path).
    let c: u64 = s.connect_hist.iter().sum();
    assert_eq!(c, 1);
    let conn_ms = s.connect_sum_ns as f64 / 1e6;
    assert!(
        (36.0..=44.0).contains(&conn_ms),
        "connect {conn_ms} ms, expected 40 ms ±10%"
    );
    assert!(h.self_counter("nodescope_netprobe_rtt_samples_total", None) >= samples as f64);
    let fams = h.probe.collector().collect().unwrap();
    assert!(!points_of(&fams, "nodescope_tcp_rtt_seconds").is_empty());
}

/// tcp_probe covers a socket opened before the probe started (its key derived from the
/// socket: outbound, no connect seen, not counted as active), while a short connection
/// (fewer than 8 segments received) takes no live sample and keeps its close-time RTT.
#[test]
fn live_rtt_for_sockets_older_than_the_probe_not_for_short_ones() {
    if !require(
        "live_rtt_for_sockets_older_than_the_probe_not_for_short_ones",
        &["ip"],
    ) {
        return;
    }
    let _g = serial();
    let ns = NetNs::new();
    let old_srv = EchoServer::start(&ns, 8086);
    let short_srv = EchoServer::start(&ns, 8087);
    let mut old = TcpStream::connect(old_srv.addr).unwrap();
    exchange(&mut old, 2, Duration::ZERO);
    let h = start_probe(NetworkConfig {
        rtt_sample_interval_seconds: 0.05,
        ..NetworkConfig::default()
    });
    let ip = ns.ns_ip.to_string();

    // The old connection: 20 round trips 60 ms apart after the probe started.
    exchange(&mut old, 20, Duration::from_millis(60));
    let (_, s) = h
        .rows_for(&ip, Some(8086))
        .into_iter()
        .find(|(k, _)| k.direction == "outbound")
        .expect("outbound row for the socket older than the probe");
    let samples: u64 = s.rtt_hist.iter().sum();
    assert!(samples >= 5, "only {samples} live RTT samples: {s:?}");
    assert_eq!(s.connect_hist.iter().sum::<u64>(), 0, "{s:?}");
    assert_eq!(s.active, 0, "{s:?}");

    // A short connection: 3 round trips 100 ms apart (more than the 50 ms interval, so
    // without the segment gate it would take two live samples), then closed.
    let mut short = TcpStream::connect(short_srv.addr).unwrap();
    exchange(&mut short, 3, Duration::from_millis(100));
    drop(short);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let closed = loop {
        let r = h
            .rows_for(&ip, Some(8087))
            .into_iter()
            .find(|(k, _)| k.direction == "outbound");
        match r {
            Some((_, s)) if s.duration_hist.iter().sum::<u64>() == 1 => break s,
            _ if std::time::Instant::now() > deadline => panic!("no closed row: {r:?}"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    assert_eq!(
        closed.rtt_hist.iter().sum::<u64>(),
        1,
        "expected only the close-time RTT: {closed:?}"
    );
    assert!(closed.rtt_sum_us > 0, "{closed:?}");
    drop(old);
}

/// Refused connects count as `refused`; the namespace's RST is a sent reset (no socket)
/// and the client's a received reset in SYN_SENT; a failed-connect event is emitted.
#[test]
fn refused_connects_and_resets_with_direction() {
    if !require("refused_connects_and_resets_with_direction", &["ip"]) {
        return;
    }
    let _g = serial();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();
    let ns = NetNs::new();
    let mut h = start_probe(NetworkConfig::default());
    let token = tokio_util::sync::CancellationToken::new();
    h.probe.spawn(token.clone()).expect("event reader");
    let addr = SocketAddr::from((ns.ns_ip, 9));
    for _ in 0..3 {
        let e = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    }
    let fams = h.probe.collector().collect().unwrap();
    let ip = ns.ns_ip.to_string();
    let errs = points_of(&fams, "nodescope_tcp_connect_errors_total");
    let (_, v) = errs
        .iter()
        .find(|(l, _)| l["peer_address"] == ip && l["peer_port"] == "9")
        .expect("refused errors point");
    assert_eq!(**v, Value::Number(3.0));
    let refused = errs
        .iter()
        .find(|(l, _)| l["peer_address"] == ip)
        .map(|(l, _)| l["error"].clone());
    assert_eq!(refused.as_deref(), Some("refused"));

    let resets = points_of(&fams, "nodescope_tcp_resets_total");
    let recv = resets
        .iter()
        .find(|(l, _)| l["peer_address"] == ip && l["direction"] == "received")
        .expect("received reset");
    assert_eq!(recv.0["reason"], "syn_sent");
    assert_eq!(*recv.1, Value::Number(3.0));
    // The namespace answered with RSTs for port 9 without a socket: sent, reason no_socket,
    // peer = the client's (host-side) address, port = the closed port.
    let sent = resets
        .iter()
        .find(|(l, _)| l["peer_address"] == ns.host_ip.to_string() && l["direction"] == "sent")
        .expect("sent reset");
    assert_eq!(sent.0["peer_port"], "9");
    assert_eq!(sent.0["reason"], "no_socket");
    assert_eq!(*sent.1, Value::Number(3.0));

    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut kinds = Vec::new();
    while std::time::Instant::now() < deadline {
        rt.block_on(tokio::time::sleep(Duration::from_millis(50)));
        kinds.extend(
            h.drain_logs()
                .into_iter()
                .filter(|r| r.body.contains(&ip) || r.body.contains(&ns.host_ip.to_string()))
                .map(|r| (r.kind.to_string(), r.labels.clone())),
        );
        if kinds
            .iter()
            .filter(|(k, _)| k == "tcp_connect_failed")
            .count()
            >= 3
        {
            break;
        }
    }
    let failed: Vec<_> = kinds
        .iter()
        .filter(|(k, _)| k == "tcp_connect_failed")
        .collect();
    assert_eq!(failed.len(), 3, "{kinds:?}");
    assert!(failed[0]
        .1
        .iter()
        .any(|(k, v)| k == "error" && v == "refused"));
    assert!(kinds.iter().any(|(k, _)| k == "tcp_reset_received"));
    token.cancel();
}

/// A process the test puts in its own cgroup is attributed to that workload, for both
/// the metric and the failed-connect event (which keeps the process name).
#[test]
fn process_in_test_cgroup_is_attributed() {
    if !require("process_in_test_cgroup_is_attributed", &["ip", "bash"]) {
        return;
    }
    let _g = serial();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();
    let root = nodescope_netprobe::workload::default_cgroup_root();
    let cg = TestCgroup::new(&root);
    let ns = NetNs::new();
    let srv = EchoServer::start(&ns, 8082);
    let mut h = start_probe(NetworkConfig::default());
    let token = tokio_util::sync::CancellationToken::new();
    h.probe.spawn(token.clone()).expect("event reader");
    let procs = cg.dir.join("cgroup.procs");
    let script = format!(
        "echo $$ > {procs} && exec 3<>/dev/tcp/{ip}/8082 && echo hi >&3 && read -t 5 line <&3 && exec 3<&- ; \
         (exec 4<>/dev/tcp/{ip}/9) 2>/dev/null; true",
        procs = procs.display(),
        ip = ns.ns_ip
    );
    let st = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .status()
        .unwrap();
    assert!(st.success());
    let rows = h.rows_for(&ns.ns_ip.to_string(), None);
    let ok = rows
        .iter()
        .find(|(k, _)| k.peer_port == "8082" && k.direction == "outbound")
        .expect("row for the cgroup's connect");
    assert_eq!(ok.0.workload, cg.rel, "rows: {rows:?}");
    assert_eq!(ok.1.connect_hist.iter().sum::<u64>(), 1);
    let refused = rows
        .iter()
        .find(|(k, _)| k.peer_port == "9")
        .expect("row for the refused connect");
    assert_eq!(refused.0.workload, cg.rel);
    assert_eq!(refused.1.connect_errors[0], 1);

    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut rec = None;
    while std::time::Instant::now() < deadline && rec.is_none() {
        rt.block_on(tokio::time::sleep(Duration::from_millis(50)));
        rec = h
            .drain_logs()
            .into_iter()
            .find(|r| r.kind == "tcp_connect_failed");
    }
    let rec = rec.expect("failed connect event");
    assert!(
        rec.labels
            .iter()
            .any(|(k, v)| k == "workload" && *v == cg.rel),
        "{rec:?}"
    );
    assert!(
        rec.attributes
            .iter()
            .any(|(k, v)| k == "process" && v == "bash"),
        "{rec:?}"
    );
    token.cancel();
    drop(srv);
}

/// With a cap of 16 peers, 40 distinct peers never exceed it: the rest is counted under
/// peer_address="other" for the same workload, and the overflow counter moves.
#[test]
fn peer_cap_overflows_into_other() {
    if !require("peer_cap_overflows_into_other", &["ip"]) {
        return;
    }
    let _g = serial();
    let ns = NetNs::new();
    let cap = 16u32;
    let h = start_probe(NetworkConfig {
        peer_cap: cap,
        ..NetworkConfig::default()
    });
    for port in 20000..20040u16 {
        let _ =
            TcpStream::connect_timeout(&SocketAddr::from((ns.ns_ip, port)), Duration::from_secs(2));
    }
    let rows = h.rows();
    let distinct = rows.keys().filter(|k| k.peer_address != OTHER).count();
    assert!(distinct <= cap as usize, "{distinct} peers > cap {cap}");
    let ours = rows
        .keys()
        .filter(|k| k.peer_address == ns.ns_ip.to_string())
        .count();
    let other_errors: u64 = rows
        .iter()
        .filter(|(k, _)| k.peer_address == OTHER && k.direction == "outbound")
        .map(|(_, s)| s.connect_errors[0])
        .sum();
    assert_eq!(
        ours as u64 + other_errors,
        40,
        "each refused connect is either in its own row or in other (ours={ours}, other={other_errors})"
    );
    assert!(other_errors >= 24);
    assert!(h.self_counter("nodescope_netprobe_peer_overflow_total", None) >= 24.0);
    assert_eq!(h.self_counter("nodescope_netprobe_peers", None) as u32, cap);
    let fams = h.probe.collector().collect().unwrap();
    let errs = points_of(&fams, "nodescope_tcp_connect_errors_total");
    assert!(errs
        .iter()
        .any(|(l, _)| l["peer_address"] == OTHER && l["peer_port"] == OTHER));
}

/// The socket table is bounded by `socket_cap`: with more concurrent connections than
/// slots, at most `socket_cap` sockets are tracked, the rest are counted as
/// `socket_map_full`; closing frees the slots, so later connections are tracked again.
#[test]
fn socket_cap_bounds_tracked_sockets_and_frees_slots_on_close() {
    if !require(
        "socket_cap_bounds_tracked_sockets_and_frees_slots_on_close",
        &["ip"],
    ) {
        return;
    }
    let _g = serial();
    let ns = NetNs::new();
    let cap = 256u32;
    let h = start_probe(NetworkConfig {
        socket_cap: cap,
        ..NetworkConfig::default()
    });
    let srv = EchoServer::start(&ns, 7411);
    let n = 400usize;
    let full0 = h.self_counter(
        "nodescope_netprobe_dropped_total",
        Some(("reason", "socket_map_full")),
    );
    let streams: Vec<TcpStream> = (0..n)
        .map(|_| TcpStream::connect_timeout(&srv.addr, Duration::from_secs(2)).expect("connect"))
        .collect();
    let outbound = |h: &Harness| -> (u64, i64) {
        h.rows_for(&ns.ns_ip.to_string(), Some(srv.addr.port()))
            .iter()
            .filter(|(k, _)| k.direction == "outbound")
            .fold((0, 0), |(c, a), (_, s)| {
                (c + s.connect_hist.iter().sum::<u64>(), a + s.active)
            })
    };
    let (tracked, active) = outbound(&h);
    assert!(tracked > 0, "no connection tracked");
    assert!(tracked <= u64::from(cap), "{tracked} tracked > cap {cap}");
    assert_eq!(active, tracked as i64, "every tracked connection is active");
    let total_active: i64 = h.rows().values().map(|s| s.active).sum();
    assert!(
        total_active <= i64::from(cap),
        "{total_active} active > cap {cap}"
    );
    let full = h.self_counter(
        "nodescope_netprobe_dropped_total",
        Some(("reason", "socket_map_full")),
    ) - full0;
    assert!(
        full >= (n as u64 - tracked) as f64,
        "untracked connects not counted: full={full}, untracked={}",
        n as u64 - tracked
    );
    drop(streams);
    // Closed: the active gauge returns to zero and the slots are free again.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while outbound(&h).1 != 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(outbound(&h).1, 0, "active after close");
    let more: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect_timeout(&srv.addr, Duration::from_secs(2)).expect("connect"))
        .collect();
    let (tracked2, active2) = outbound(&h);
    assert_eq!(
        tracked2,
        tracked + 20,
        "connections after close not all tracked"
    );
    assert_eq!(active2, 20);
    drop(more);
}

/// A hook that does not exist takes only its probe down (up=0, reason with the hook name,
/// status degraded); the other probes keep measuring and the API still answers.
#[test]
fn missing_hook_degrades_only_that_probe() {
    if !require("missing_hook_degrades_only_that_probe", &["ip"]) {
        return;
    }
    let _g = serial();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cfg = NetworkConfig::default();
    cfg.hooks
        .insert("tcp_probe".into(), "nodescope_no_such_tracepoint".into());
    let h = start_probe(cfg);
    let health = h.probe.health();
    let rtt = health.iter().find(|x| x.probe == "tcp_rtt").unwrap();
    assert!(!rtt.up);
    assert!(
        rtt.reason
            .as_deref()
            .unwrap_or("")
            .contains("nodescope_no_such_tracepoint"),
        "{rtt:?}"
    );
    assert!(
        health.iter().filter(|x| x.probe != "tcp_rtt").all(|x| x.up),
        "{health:?}"
    );
    let st = &h.status.snapshot()[0];
    assert_eq!(st.state, ComponentState::Degraded);
    assert!(st.details["probe.tcp_rtt"].starts_with("down:"));

    let fams = h.probe.collector().collect().unwrap();
    let up = points_of(&fams, "nodescope_probe_up");
    let get = |p: &str| {
        up.iter()
            .find(|(l, _)| l["probe"] == p)
            .map(|(_, v)| (*v).clone())
    };
    assert_eq!(get("tcp_rtt"), Some(Value::Number(0.0)));
    assert_eq!(get("tcp_connect"), Some(Value::Number(1.0)));

    // The rest keeps working: a refused connect on loopback is still counted.
    let port = nodescope_testsupport::free_port();
    let _ = TcpStream::connect(("127.0.0.1", port));
    let rows = h.rows_for("127.0.0.1", Some(port));
    assert!(
        rows.iter().any(|(_, s)| s.connect_errors[0] == 1),
        "{rows:?}"
    );

    // And the API answers with the probe health and top peers.
    let body = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = h.probe.router();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /api/v1/network/connections?limit=5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .await
        .unwrap()
    });
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let json = &body[body.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert!(
        v["by_connect_p99"].is_array() && v["by_rtt_p99"].is_array(),
        "{v}"
    );
    assert!(v["probes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["probe"] == "tcp_rtt" && p["up"] == false));
}

/// `enabled = false` loads nothing and reports Disabled; the collector still answers.
#[test]
fn disabled_loads_nothing() {
    let h = start_probe(NetworkConfig {
        enabled: false,
        ..NetworkConfig::default()
    });
    assert_eq!(h.status.snapshot()[0].state, ComponentState::Disabled);
    let fams = h.probe.collector().collect().unwrap();
    assert_eq!(fams.len(), 1);
    assert!(fams[0].points.is_empty());
}

/// Active connections, bytes and duration of a closed connection; then, with a 1 s idle
/// timeout, the idle peer is folded into peer_address="other" keeping its counts.
#[test]
fn lifecycle_bytes_duration_and_idle_eviction() {
    if !require("lifecycle_bytes_duration_and_idle_eviction", &["ip"]) {
        return;
    }
    let _g = serial();
    let ns = NetNs::new();
    let srv = EchoServer::start(&ns, 8083);
    let h = start_probe(NetworkConfig {
        peer_idle_timeout_seconds: 1,
        ..NetworkConfig::default()
    });
    let ip = ns.ns_ip.to_string();
    let outbound = |h: &Harness| {
        h.rows_for(&ip, Some(8083))
            .into_iter()
            .find(|(k, _)| k.direction == "outbound")
    };
    let mut s = TcpStream::connect(srv.addr).unwrap();
    let mut buf = [0u8; 1000];
    for _ in 0..3 {
        s.write_all(&[1u8; 1000]).unwrap();
        s.read_exact(&mut buf).unwrap();
    }
    let (_, open) = outbound(&h).expect("row while open");
    assert_eq!(open.active, 1);
    // The accepting side (the echo server in the namespace) is tracked too: inbound,
    // peer = the client's address, port = the local listening port.
    let inbound = h
        .rows_for(&ns.host_ip.to_string(), Some(8083))
        .into_iter()
        .find(|(k, _)| k.direction == "inbound")
        .expect("inbound row for the accepted connection");
    assert_eq!(inbound.1.active, 1, "{inbound:?}");
    std::thread::sleep(Duration::from_millis(200));
    drop(s);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let closed = loop {
        let r = outbound(&h).expect("row after close");
        if r.1.duration_hist.iter().sum::<u64>() == 1 || std::time::Instant::now() > deadline {
            break r.1;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(closed.active, 0);
    assert_eq!(closed.duration_hist.iter().sum::<u64>(), 1, "{closed:?}");
    let dur = closed.duration_sum_ns as f64 / 1e9;
    assert!((0.2..1.0).contains(&dur), "duration {dur} s");
    // tcpi_bytes_acked / tcpi_bytes_received semantics: sequence space, so the SYN and
    // FIN add up to 2 to the 3000 payload bytes.
    assert!((3000..=3002).contains(&closed.bytes_sent), "{closed:?}");
    assert!((3000..=3002).contains(&closed.bytes_received), "{closed:?}");
    let fams = h.probe.collector().collect().unwrap();
    let bytes = points_of(&fams, "nodescope_tcp_bytes_total");
    let sent = bytes
        .iter()
        .find(|(l, _)| {
            l["peer_address"] == ip && l["peer_port"] == "8083" && l["direction"] == "sent"
        })
        .expect("bytes sent point");
    assert!(matches!(sent.1, Value::Number(n) if (3000.0..=3002.0).contains(n)));
    let active = points_of(&fams, "nodescope_tcp_connections_active");
    assert!(active.iter().any(|(l, v)| l["peer_address"] == ip
        && l["direction"] == "outbound"
        && **v == Value::Number(0.0)));

    // Idle for > 1 s: evicted into "other" (same workload), counts preserved.
    let workload = outbound(&h).expect("row").0.workload;
    std::thread::sleep(Duration::from_millis(2100));
    let rows = h.rows();
    assert!(
        !rows
            .keys()
            .any(|k| k.peer_address == ip && k.peer_port == "8083"),
        "idle peer still present"
    );
    let other = rows
        .iter()
        .find(|(k, _)| {
            k.peer_address == OTHER && k.workload == workload && k.direction == "outbound"
        })
        .expect("evicted peer folded into other");
    assert!(other.1.bytes_sent >= 3000);
    assert!(other.1.connect_hist.iter().sum::<u64>() >= 1);
    assert!(h.self_counter("nodescope_netprobe_peer_evictions_total", None) >= 1.0);
}

const CHILD_ENV: &str = "NODESCOPE_NETPROBE_UNPRIVILEGED_CHILD";

/// Not root: the same test binary re-run as uid 65534 with no capabilities builds the
/// probe; every probe is down with a "not permitted" reason, the status is Unavailable,
/// and the collector still answers (nodescope_probe_up=0), without panicking.
#[test]
fn unprivileged_build_reports_probes_down() {
    nodescope_testsupport::run_unprivileged_child(
        "unprivileged_build_reports_probes_down",
        "unprivileged_child",
        CHILD_ENV,
    );
}

/// Runs only when spawned by `unprivileged_build_reports_probes_down` (as uid 65534).
#[test]
fn unprivileged_child() {
    if std::env::var(CHILD_ENV).is_err() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    assert_ne!(unsafe { libc::geteuid() }, 0, "child must not be root");
    let h = start_probe(NetworkConfig::default());
    let health = h.probe.health();
    assert_eq!(health.len(), 6, "{health:?}");
    for p in &health {
        assert!(!p.up, "{p:?}");
        let r = p.reason.as_deref().unwrap_or("");
        assert!(r.contains("not permitted"), "{p:?}");
    }
    let st = &h.status.snapshot()[0];
    assert_eq!(st.state, ComponentState::Unavailable);
    let fams = h.probe.collector().collect().unwrap();
    let up = points_of(&fams, "nodescope_probe_up");
    assert_eq!(up.len(), 6);
    assert!(up.iter().all(|(_, v)| **v == Value::Number(0.0)));
    println!(
        "{}: {}",
        nodescope_testsupport::CHILD_OK,
        st.last_error.as_deref().unwrap_or("")
    );
}

/// IPv6 peers are keyed and labelled as IPv6 (loopback only; no namespace needed).
#[test]
fn ipv6_refused_connect_is_labelled_v6() {
    if !require("ipv6_refused_connect_is_labelled_v6", &[]) {
        return;
    }
    let _g = serial();
    let Ok(l) = std::net::TcpListener::bind("[::1]:0") else {
        nodescope_testsupport::skip("ipv6_refused_connect_is_labelled_v6", "no IPv6 loopback");
        return;
    };
    let port = l.local_addr().unwrap().port();
    drop(l);
    let h = start_probe(NetworkConfig::default());
    let e = TcpStream::connect(("::1", port)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    let rows = h.rows_for("::1", Some(port));
    let (k, s) = rows
        .iter()
        .find(|(k, _)| k.direction == "outbound")
        .unwrap_or_else(|| {
            panic!(
                "IPv6 outbound row; all rows: {:?}",
                h.rows().keys().collect::<Vec<_>>()
            )
        });
    assert_eq!(s.connect_errors[0], 1, "{k:?} {s:?}");
    // A successful IPv6 connect, and its accepted side.
    let l = std::net::TcpListener::bind("[::1]:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let c = TcpStream::connect(("::1", port)).unwrap();
    let (a, _) = l.accept().unwrap();
    let rows = h.rows_for("::1", Some(port));
    let out = rows
        .iter()
        .find(|(k, _)| k.direction == "outbound")
        .expect("v6 outbound");
    assert_eq!(out.1.connect_hist.iter().sum::<u64>(), 1);
    assert_eq!(out.1.active, 1);
    let inb = rows
        .iter()
        .find(|(k, _)| k.direction == "inbound")
        .expect("v6 inbound");
    assert_eq!(inb.1.active, 1);
    drop((c, a));
}

/// Events are rate-limited in the kernel: 10 refused connects with a limit of 2 per
/// second give at most 2 failed-connect events (one window), the rest are counted; the
/// metrics still count all 10.
#[test]
fn events_are_rate_limited_and_counted() {
    if !require("events_are_rate_limited_and_counted", &[]) {
        return;
    }
    let _g = serial();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();
    let mut h = start_probe(NetworkConfig {
        events_per_second: 2,
        probes: nodescope_netprobe::ProbesConfig {
            tcp_resets: false, // only failed-connect events in this test
            ..Default::default()
        },
        ..NetworkConfig::default()
    });
    let token = tokio_util::sync::CancellationToken::new();
    h.probe.spawn(token.clone()).expect("event reader");
    let port = nodescope_testsupport::free_port();
    let t = std::time::Instant::now();
    for _ in 0..10 {
        let _ = TcpStream::connect(("127.0.0.1", port));
    }
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "connects too slow for one window"
    );
    rt.block_on(tokio::time::sleep(Duration::from_millis(300)));
    let ours: Vec<_> = h
        .drain_logs()
        .into_iter()
        .filter(|r| r.kind == "tcp_connect_failed" && r.body.contains(&format!(":{port} ")))
        .collect();
    assert!(
        (1..=2).contains(&ours.len()),
        "{} events: {ours:?}",
        ours.len()
    );
    let rows = h.rows_for("127.0.0.1", Some(port));
    let errs: u64 = rows.iter().map(|(_, s)| s.connect_errors[0]).sum();
    assert_eq!(errs, 10);
    let limited = h.self_counter(
        "nodescope_netprobe_dropped_total",
        Some(("reason", "event_rate_limited")),
    );
    assert!(limited >= 8.0, "rate-limited counter {limited}");
    token.cancel();
}

/// Sets SO_LINGER {on, 0}: close() then aborts the connection with a reset.
fn set_linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads a valid, initialised linger struct of the given size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

fn attr<'a>(r: &'a nodescope_model::LogRecord, k: &str) -> &'a str {
    r.attributes
        .iter()
        .chain(r.labels.iter())
        .find(|(a, _)| a == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// Issue 16 item 9: `tcp_reset_sent` events carry both endpoints. A reset sent without a
/// socket (refused connect) names the client's port as the peer port and the closed port
/// as the local one; a reset sent by a socket that closes with SO_LINGER 0 (reason
/// `tcp_state`: the kernel has already released the local port number when it sends it)
/// keeps the socket's local address and port. So does the client's failed-connect event.
#[test]
fn reset_sent_events_carry_both_endpoints() {
    if !require("reset_sent_events_carry_both_endpoints", &["ip"]) {
        return;
    }
    let _g = serial();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();
    let ns = NetNs::new();
    let srv = EchoServer::start(&ns, 8088);
    let mut h = start_probe(NetworkConfig::default());
    let token = tokio_util::sync::CancellationToken::new();
    h.probe.spawn(token.clone()).expect("event reader");

    // 1. No socket: the namespace answers a SYN to port 9 with a reset.
    let e = TcpStream::connect_timeout(&SocketAddr::from((ns.ns_ip, 9)), Duration::from_secs(3))
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    // 2. A socket aborting its connection: SO_LINGER 0, then close.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    exchange(&mut s, 1, Duration::ZERO);
    let local = s.local_addr().unwrap();
    set_linger_zero(&s);
    drop(s);

    let (host, nsip) = (ns.host_ip.to_string(), ns.ns_ip.to_string());
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let (mut sent, mut failed) = (Vec::new(), Vec::new());
    while std::time::Instant::now() < deadline {
        rt.block_on(tokio::time::sleep(Duration::from_millis(50)));
        for r in h.drain_logs() {
            if attr(&r, "peer_address") != host && attr(&r, "peer_address") != nsip {
                continue;
            }
            match r.kind.as_ref() {
                "tcp_reset_sent" => sent.push(r),
                "tcp_connect_failed" => failed.push(r),
                _ => {}
            }
        }
        let reasons: Vec<&str> = sent.iter().map(|r| attr(r, "reason")).collect();
        if reasons.contains(&"no_socket") && reasons.iter().any(|r| *r != "no_socket") {
            break;
        }
    }
    let no_sock = sent
        .iter()
        .find(|r| attr(r, "reason") == "no_socket")
        .unwrap_or_else(|| panic!("no no_socket reset event: {sent:?}"));
    assert_eq!(attr(no_sock, "peer_address"), host, "{no_sock:?}");
    assert_ne!(attr(no_sock, "peer_port"), "0", "{no_sock:?}");
    assert_eq!(attr(no_sock, "local_address"), nsip, "{no_sock:?}");
    assert_eq!(attr(no_sock, "local_port"), "9", "{no_sock:?}");
    assert!(
        no_sock
            .body
            .contains(&format!("{host}:{}", attr(no_sock, "peer_port"))),
        "{}",
        no_sock.body
    );

    // The client's failed connect (SYN_SENT -> CLOSE: its port number is released
    // before the tracepoint fires) names its local port too.
    let f = failed.first().expect("failed-connect event");
    assert_eq!(attr(f, "local_address"), host, "{f:?}");
    assert_eq!(attr(f, "local_port"), attr(no_sock, "peer_port"), "{f:?}");
    assert_eq!(attr(f, "peer_port"), "9", "{f:?}");

    let abort = sent
        .iter()
        .find(|r| attr(r, "reason") != "no_socket")
        .unwrap_or_else(|| panic!("no reset event from the aborting socket: {sent:?}"));
    eprintln!("abort reset: {:?} / {}", attr(abort, "reason"), abort.body);
    assert_eq!(attr(abort, "peer_address"), nsip, "{abort:?}");
    assert_eq!(attr(abort, "peer_port"), "8088", "{abort:?}");
    assert_eq!(attr(abort, "local_address"), host, "{abort:?}");
    assert_eq!(
        attr(abort, "local_port"),
        local.port().to_string(),
        "{abort:?}"
    );
    // The metric row of that reset is the outbound peer, not a port-0 inbound one.
    let rows = h.rows_for(&nsip, Some(8088));
    assert!(
        rows.iter()
            .any(|(k, s)| k.direction == "outbound" && s.resets_sent.iter().sum::<u64>() == 1),
        "{rows:?}"
    );
    token.cancel();
}

/// A program the verifier refuses takes only its probe down, with the verifier's reason
/// and log in the status; the other probes (DNS included) keep running. `tcp_probe`'s
/// program is pointed at `sched_switch`, whose arguments are no socket: its socket loads
/// no longer verify.
#[test]
fn verifier_rejection_degrades_only_that_probe() {
    if !require("verifier_rejection_degrades_only_that_probe", &["ip"]) {
        return;
    }
    let _g = serial();
    let mut cfg = NetworkConfig::default();
    cfg.hooks.insert("tcp_probe".into(), "sched_switch".into());
    let h = start_probe(cfg);
    let health = h.probe.health();
    let rtt = health.iter().find(|x| x.probe == "tcp_rtt").unwrap();
    assert!(!rtt.up);
    let reason = rtt.reason.as_deref().unwrap_or("");
    assert!(
        reason.contains("verifier rejected program ns_tcp_probe"),
        "{reason}"
    );
    assert!(
        health.iter().filter(|x| x.probe != "tcp_rtt").all(|x| x.up),
        "{health:?}"
    );
    let st = &h.status.snapshot()[0];
    assert_eq!(st.state, ComponentState::Degraded);
    let log = st
        .details
        .get("verifier_log.ns_tcp_probe")
        .expect("verifier log kept");
    assert!(!log.trim().is_empty());
    let port = nodescope_testsupport::free_port();
    let _ = TcpStream::connect(("127.0.0.1", port));
    let rows = h.rows_for("127.0.0.1", Some(port));
    assert!(
        rows.iter().any(|(_, s)| s.connect_errors[0] == 1),
        "{rows:?}"
    );
}

/// Runs `python` (a Python program) as a process of cgroup `cg` inside network namespace
/// `ns`.
fn python_in(cg: &TestCgroup, ns: &NetNs, python: &str) {
    let procs = cg.dir.join("cgroup.procs");
    let st = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && exec ip netns exec {} python3 -c \"$0\"",
            procs.display(),
            ns.name
        ))
        .arg(python)
        .status()
        .unwrap();
    assert!(st.success());
}

/// An nftables rule in a test namespace drops a workload's packets on their way out:
/// counted as `reason="netfilter_drop", class="harmful"` for the sending workload (the
/// cgroup of the socket the packets belong to), exactly once per packet.
#[test]
fn nftables_drop_is_attributed_to_the_sending_workload() {
    if !require(
        "nftables_drop_is_attributed_to_the_sending_workload",
        &["ip", "nft", "python3"],
    ) {
        return;
    }
    let _g = serial();
    let ns = NetNs::new();
    ns.exec(&["nft", "add", "table", "inet", "nsnet"]);
    ns.exec(&[
        "nft",
        "add",
        "chain",
        "inet",
        "nsnet",
        "out",
        "{ type filter hook output priority 0 ; }",
    ]);
    ns.exec(&[
        "nft", "add", "rule", "inet", "nsnet", "out", "udp", "dport", "9999", "drop",
    ]);
    let root = nodescope_netprobe::workload::default_cgroup_root();
    let cg = TestCgroup::new(&root);
    let h = start_probe(NetworkConfig::default());
    let n = 25;
    python_in(
        &cg,
        &ns,
        &format!(
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor _ in range({n}):\n    try: s.sendto(b'x', ('{}', 9999))\n    except PermissionError: pass\n",
            ns.host_ip
        ),
    );
    let fams = h.probe.collector().collect().unwrap();
    let drops = points_of(&fams, "nodescope_packet_drops_total");
    let ours: Vec<_> = drops
        .iter()
        .filter(|(l, _)| l["workload"] == cg.rel)
        .collect();
    assert_eq!(ours.len(), 1, "{drops:?}");
    let (l, v) = ours[0];
    assert_eq!(l["reason"], "netfilter_drop");
    assert_eq!(l["class"], "harmful");
    assert_eq!(**v, Value::Number(f64::from(n)));
}

/// Benign reasons are off by default: a workload's loopback connections each leave a
/// `queue_purge` drop that is not counted; with `drops.benign = true` it is, as benign.
#[test]
fn benign_drops_only_when_asked_for() {
    if !require("benign_drops_only_when_asked_for", &["ip", "python3"]) {
        return;
    }
    let _g = serial();
    let ns = NetNs::new();
    let root = nodescope_netprobe::workload::default_cgroup_root();
    let connect_loop = "import socket, threading\nl = socket.socket()\nl.bind(('127.0.0.1', 0))\nl.listen(64)\na = l.getsockname()\ndef srv():\n    for _ in range(20):\n        c, _ = l.accept()\n        c.sendall(b'x')\n        c.close()\nt = threading.Thread(target=srv)\nt.start()\nfor _ in range(20):\n    s = socket.create_connection(a)\n    s.recv(1)\n    s.close()\nt.join()\n";
    let mut seen = Vec::new();
    for benign in [false, true] {
        let cg = TestCgroup::new(&root);
        let h = start_probe(NetworkConfig {
            drops: nodescope_netprobe::config::DropsConfig {
                benign,
                ..Default::default()
            },
            ..NetworkConfig::default()
        });
        python_in(&cg, &ns, connect_loop);
        let fams = h.probe.collector().collect().unwrap();
        let classes: Vec<(String, String)> = points_of(&fams, "nodescope_packet_drops_total")
            .iter()
            .filter(|(l, _)| l["workload"] == cg.rel)
            .map(|(l, _)| (l["reason"].clone(), l["class"].clone()))
            .collect();
        eprintln!("benign={benign}: {classes:?}");
        seen.push(classes);
    }
    assert!(
        seen[0].iter().all(|(_, c)| c != "benign"),
        "benign counted by default: {:?}",
        seen[0]
    );
    assert!(
        seen[1]
            .iter()
            .any(|(r, c)| r == "queue_purge" && c == "benign"),
        "{:?}",
        seen[1]
    );
}
