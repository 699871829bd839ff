//! Peers named by workload and the series budget, on the real kernel (root; CI runs them
//! with NODESCOPE_STRICT_TESTS=1), with traffic into network namespaces the tests create.

mod common;

#[path = "../../k8s/tests/common/fake_api.rs"]
mod fake_api;

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use nodescope_model::workload::SharedPodLookup;
use nodescope_model::{MetricFamily, Value};
use nodescope_netprobe::config::PeerCidr;
use nodescope_netprobe::probe::points_of;
use nodescope_netprobe::{NetProbeContext, NetworkConfig, ProbesConfig};

fn series(f: &[MetricFamily]) -> usize {
    f.iter()
        .flat_map(|f| &f.points)
        .map(|p| match &p.value {
            Value::Histogram(h) => h.buckets.len() + 3,
            Value::Number(_) => 1,
        })
        .sum()
}

fn start_with(cfg: NetworkConfig, pods: SharedPodLookup) -> Harness {
    let (emitter, events) = nodescope_model::Emitter::for_test(1024);
    let status = nodescope_model::StatusRegistry::default();
    let self_metrics = nodescope_model::selfmetrics::SelfMetrics::new();
    let probe = cfg.build(NetProbeContext {
        emitter,
        status: status.clone(),
        self_metrics: self_metrics.clone(),
        pods,
        cgroup_root: PathBuf::new(),
    });
    Harness {
        probe,
        events,
        status,
        self_metrics,
    }
}

/// 20 000 distinct peers (refused connects from a test cgroup to 20 000 ports) against a
/// budget of 10 000 series: one collection stays within the budget, every peer is either
/// exposed or folded into `other` (the fold count is exact), no count is lost, and the
/// next collection folds nothing new and stays within the budget.
#[test]
fn twenty_thousand_peers_stay_within_the_series_budget() {
    if !require(
        "peers::twenty_thousand_peers_stay_within_the_series_budget",
        &["ip", "python3"],
    ) {
        return;
    }
    let _g = serial();
    let ns = NetNs::new();
    let root = nodescope_netprobe::workload::default_cgroup_root();
    let cg = TestCgroup::new(&root);
    let budget = 10_000;
    let h = start_probe(NetworkConfig {
        peer_cap: 65_536,
        series_budget: budget,
        // Only the client's connects: the namespace's resets would add 20 000 host rows.
        probes: ProbesConfig {
            tcp_resets: false,
            dns: false,
            ..Default::default()
        },
        ..NetworkConfig::default()
    });
    let n = 20_000u32;
    let script = format!(
        "import socket\nfor p in range(10000, {}):\n    s = socket.socket()\n    s.settimeout(2)\n    try: s.connect(('{}', p))\n    except OSError: pass\n    s.close()\n",
        10_000 + n,
        ns.ns_ip
    );
    let procs = cg.dir.join("cgroup.procs");
    let st = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && exec python3 -c \"$0\"",
            procs.display()
        ))
        .arg(&script)
        .status()
        .unwrap();
    assert!(st.success());

    let raw = h.probe.snapshot().unwrap();
    let ours = raw
        .keys()
        .filter(|k| k.workload == cg.rel && k.peer_address == ns.ns_ip.to_string())
        .count();
    assert_eq!(
        ours, n as usize,
        "every refused connect is a distinct peer in the kernel map"
    );

    let x = h.probe.exposition().unwrap();
    let actual = series(&x.families);
    eprintln!(
        "budget {budget}: {actual} series exposed (estimate {}), {} rows before, {} exposed, {} folded",
        x.series, x.rows_before, x.exposed_rows, x.folded
    );
    assert!(actual <= budget, "{actual} series > budget {budget}");
    assert!(actual <= x.series);
    assert!(x.folded > 0);
    assert_eq!(
        x.rows_before,
        x.exposed_rows + x.folded,
        "every row exposed or folded"
    );
    assert_eq!(
        h.self_counter(
            "nodescope_netprobe_series_folded_total",
            Some(("kind", "peer"))
        ),
        x.folded as f64,
        "the counter says exactly how many folded"
    );
    // Nothing lost: our workload's refused connects, exposed or in "other", are 20 000.
    let errs = points_of(&x.families, "nodescope_tcp_connect_errors_total");
    let total: f64 = errs
        .iter()
        .filter(|(l, _)| l["workload"] == cg.rel)
        .map(|(_, v)| match v {
            Value::Number(n) => *n,
            _ => 0.0,
        })
        .sum();
    assert_eq!(total, f64::from(n));
    assert!(errs
        .iter()
        .any(|(l, _)| l["workload"] == cg.rel && l["peer_address"] == "other"));

    // Sticky: the next collection unfolds none of ours (folding only the rows other
    // traffic on the machine added meanwhile, counted), and stays within the budget.
    let ours_exposed = |f: &[MetricFamily]| {
        points_of(f, "nodescope_tcp_connect_errors_total")
            .iter()
            .filter(|(l, _)| l["workload"] == cg.rel && l["peer_address"] != "other")
            .count()
    };
    let y = h.probe.exposition().unwrap();
    assert!(ours_exposed(&y.families) <= ours_exposed(&x.families));
    assert!(series(&y.families) <= budget);
    assert_eq!(
        h.self_counter(
            "nodescope_netprobe_series_folded_total",
            Some(("kind", "peer"))
        ),
        (x.folded + y.folded) as f64
    );
    assert!(h.self_counter("nodescope_netprobe_series", None) <= budget as f64);
}

fn echo_peer(ns: &NetNs, port: u16) -> EchoServer {
    EchoServer::start(ns, port)
}

/// Recorded Pod, Service and EndpointSlice responses (agent/k8s/tests/fixtures, with the
/// test peers' addresses filled in) name the peers: a node pod by its Deployment, a
/// ClusterIP by its Service, a pod behind that Service by its owner once fetched; an
/// off-cluster address by the CIDR table. Series carry `peer_workload` and
/// `peer_namespace` instead of the addresses; the connections API keeps the addresses.
#[test]
fn recorded_api_responses_name_test_peers_by_workload() {
    if !require(
        "peers::recorded_api_responses_name_test_peers_by_workload",
        &["ip"],
    ) {
        return;
    }
    let _g = serial();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let web = NetNs::new();
    let svc = NetNs::new();
    let remote = NetNs::new();
    let lab = NetNs::new();
    let vars = [
        ("WEB_IP", web.ns_ip.to_string()),
        ("API_CLUSTER_IP", svc.ns_ip.to_string()),
        ("API_POD_IP", remote.ns_ip.to_string()),
    ];
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/tests/fixtures");
    let objects: HashMap<String, String> = [
        ("/api/v1/pods", "peers-node-pods.json"),
        ("/api/v1/services", "peers-services.json"),
        (
            "/apis/discovery.k8s.io/v1/endpointslices",
            "peers-endpointslices.json",
        ),
        (
            "/api/v1/namespaces/shop/pods/api-5f6c8d9b7-k8m2p",
            "peers-pod-api.json",
        ),
    ]
    .into_iter()
    .map(|(p, f)| (p.to_string(), fake_api::fixture(&dir, f, &vars)))
    .collect();
    let api = rt.block_on(fake_api::FakeApi::start(objects));
    let k8s = nodescope_k8s::KubernetesConfig {
        enabled: true,
        node_name: "node-a".into(),
        api_server: api.url(),
        token_file: "/nonexistent/token".into(),
        ..Default::default()
    };
    let md = k8s
        .build(
            &nodescope_model::selfmetrics::SelfMetrics::new(),
            &nodescope_model::StatusRegistry::default(),
        )
        .unwrap();
    let lookup = md.lookup();
    let watchers = rt.spawn(md.watcher.run(std::future::pending()));
    let lab_net = format!("{}/30", lab.ns_ip);
    let h = start_with(
        NetworkConfig {
            peer_cidrs: vec![PeerCidr {
                cidr: lab_net,
                name: "lab-net".into(),
            }],
            ..NetworkConfig::default()
        },
        Some(lookup.clone()),
    );
    // The lists are applied before the traffic (as on a running agent).
    let deadline = Instant::now() + Duration::from_secs(5);
    while lookup.peer_for_ip(svc.ns_ip.into()).is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        lookup.peer_for_ip(web.ns_ip.into()).is_some(),
        "node pod list applied"
    );

    let servers = [
        echo_peer(&web, 8080),
        echo_peer(&svc, 8080),
        echo_peer(&remote, 8080),
        echo_peer(&lab, 443),
    ];
    for s in &servers {
        let mut c = TcpStream::connect(s.addr).unwrap();
        exchange(&mut c, 1, Duration::ZERO);
    }

    // The remote pod's owner arrives after one fetch; then every row is named.
    let deadline = Instant::now() + Duration::from_secs(10);
    let fams = loop {
        let f = h.probe.exposition().unwrap().families;
        let pts = points_of(&f, "nodescope_tcp_connect_duration_seconds");
        let api_connects: u64 = pts
            .iter()
            .filter(|(l, _)| l["peer_workload"] == "api" && l["direction"] == "outbound")
            .map(|(_, v)| match v {
                Value::Histogram(h) => h.count,
                _ => 0,
            })
            .sum();
        if api_connects == 2 || Instant::now() > deadline {
            break f;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let pts = points_of(&fams, "nodescope_tcp_connect_duration_seconds");
    let out: Vec<_> = pts
        .iter()
        .filter(|(l, _)| l["direction"] == "outbound" && l["peer_port"] != "other")
        .filter(|(l, _)| l["peer_port"] == "8080" || l["peer_port"] == "443")
        .map(|(l, v)| {
            let n = match v {
                Value::Histogram(h) => h.count,
                _ => 0,
            };
            (
                l["peer_namespace"].clone(),
                l["peer_workload"].clone(),
                l["peer_address"].clone(),
                l["peer_port"].clone(),
                n,
            )
        })
        .collect();
    eprintln!("{out:?}");
    let has = |ns: &str, w: &str, a: &str, p: &str, n: u64| {
        out.contains(&(ns.into(), w.into(), a.into(), p.into(), n))
    };
    assert!(
        has("shop", "web", "", "8080", 1),
        "node pod -> Deployment: {out:?}"
    );
    assert!(
        has("shop", "api", "", "8080", 2),
        "ClusterIP -> Service api, and the pod behind it -> Deployment api: {out:?}"
    );
    assert!(has("", "", "lab-net", "443", 1), "CIDR table: {out:?}");
    for ip in [web.ns_ip, svc.ns_ip, remote.ns_ip, lab.ns_ip] {
        assert!(
            !pts.iter().any(|(l, _)| l["peer_address"] == ip.to_string()),
            "{ip} still a label"
        );
    }
    // The per-address detail stays available (the connections API's rows).
    let raw = h.probe.snapshot().unwrap();
    assert!(raw
        .keys()
        .any(|k| k.peer_address == remote.ns_ip.to_string() && k.peer_port == "8080"));
    assert_eq!(
        api.requests_to("/api/v1/namespaces/shop/pods/api-5f6c8d9b7-k8m2p")
            .len(),
        1
    );
    watchers.abort();
    drop(servers);
}
