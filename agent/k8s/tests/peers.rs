//! Peer naming against recorded API responses (tests/fixtures/peers-*.json, the API's JSON
//! shape): Services by ClusterIP, this node's pods by owner, pods behind Services by the
//! owner fetched once from the API's cache, host-network and finished pods not at all.

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use common::fake_api::{fixture, FakeApi};
use nodescope_k8s::KubernetesConfig;
use nodescope_model::selfmetrics::SelfMetrics;
use nodescope_model::status::StatusRegistry;
use nodescope_model::workload::PeerRef;
use nodescope_model::Value;

fn peer(ns: &str, workload: &str, kind: &str) -> Option<PeerRef> {
    Some(PeerRef {
        namespace: ns.into(),
        workload: workload.into(),
        kind: kind.into(),
    })
}

pub fn recorded(vars: &[(&str, &str)]) -> HashMap<String, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    HashMap::from([
        (
            "/api/v1/pods".to_string(),
            fixture(&dir, "peers-node-pods.json", vars),
        ),
        (
            "/api/v1/services".to_string(),
            fixture(&dir, "peers-services.json", vars),
        ),
        (
            "/apis/discovery.k8s.io/v1/endpointslices".to_string(),
            fixture(&dir, "peers-endpointslices.json", vars),
        ),
        (
            "/api/v1/namespaces/shop/pods/api-5f6c8d9b7-k8m2p".to_string(),
            fixture(&dir, "peers-pod-api.json", vars),
        ),
    ])
}

fn counter(m: &SelfMetrics, name: &str, label: (&str, &str)) -> f64 {
    m.collect()
        .into_iter()
        .filter(|f| f.name == name)
        .flat_map(|f| f.points)
        .find(|p| p.labels.iter().any(|(k, v)| k == label.0 && v == label.1))
        .map(|p| match p.value {
            Value::Number(n) => n,
            other => panic!("{other:?}"),
        })
        .unwrap_or_else(|| panic!("no {name}{{{}={}}}", label.0, label.1))
}

#[tokio::test]
async fn peers_are_named_from_recorded_api_responses() {
    let vars = [
        ("WEB_IP", "10.244.1.17"),
        ("API_CLUSTER_IP", "10.96.40.12"),
        ("API_POD_IP", "10.244.2.9"),
    ];
    let api = FakeApi::start(recorded(&vars)).await;
    let cfg = KubernetesConfig {
        enabled: true,
        node_name: "node-a".into(),
        api_server: api.url(),
        token_file: "/nonexistent/token".into(),
        ..Default::default()
    };
    let metrics = SelfMetrics::new();
    let status = StatusRegistry::default();
    let md = cfg.build(&metrics, &status).unwrap();
    let lookup = md.lookup();
    let task = tokio::spawn(md.watcher.run(std::future::pending()));
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let mut ok = false;
    for _ in 0..250 {
        if lookup.peer_for_ip(ip("10.96.40.12")).is_some()
            && lookup.peer_for_ip(ip("10.244.1.17")).is_some()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "lists not applied: {:?}", api.seen());

    // A Service's ClusterIP names the Service.
    assert_eq!(
        lookup.peer_for_ip(ip("10.96.40.12")),
        peer("shop", "api", "Service")
    );
    assert_eq!(
        lookup.peer_for_ip(ip("10.96.0.10")),
        peer("kube-system", "kube-dns", "Service")
    );
    // This node's pods: owners from ownerReferences, ReplicaSet -> Deployment.
    assert_eq!(
        lookup.peer_for_ip(ip("10.244.1.17")),
        peer("shop", "web", "Deployment")
    );
    assert_eq!(
        lookup.peer_for_ip(ip("10.244.1.23")),
        peer("cache", "redis", "StatefulSet")
    );
    assert_eq!(
        lookup.peer_for_ip(ip("10.244.1.30")),
        peer("shop", "migrate-28870215", "Job")
    );
    // Host-network pods share the node's address; finished pods gave theirs back.
    assert_eq!(lookup.peer_for_ip(ip("192.168.10.5")), None);
    assert_eq!(lookup.peer_for_ip(ip("10.244.1.31")), None);
    // A pod behind a Service on another node: unknown until its owner is fetched once.
    assert_eq!(lookup.peer_for_ip(ip("10.244.2.9")), None);
    let mut named = None;
    for _ in 0..250 {
        named = lookup.peer_for_ip(ip("10.244.2.9"));
        if named.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(named, peer("shop", "api", "Deployment"));
    let gets = api.requests_to("/api/v1/namespaces/shop/pods/api-5f6c8d9b7-k8m2p");
    assert_eq!(gets.len(), 1, "fetched once");
    assert_eq!(
        gets[0].get("resourceVersion").map(String::as_str),
        Some("0")
    );
    // A pod the API no longer has: not named, and not fetched again.
    assert_eq!(lookup.peer_for_ip(ip("10.244.0.5")), None);
    for _ in 0..100 {
        if counter(
            &metrics,
            "nodescope_k8s_peer_owner_lookups_total",
            ("result", "not_found"),
        ) == 1.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lookup.peer_for_ip(ip("10.244.0.5")), None);
    assert_eq!(
        api.requests_to("/api/v1/namespaces/kube-system/pods/coredns-5d78c9869d-7tx2m")
            .len(),
        1
    );
    // An address nobody has.
    assert_eq!(lookup.peer_for_ip(ip("10.9.9.9")), None);

    // Services and EndpointSlices: cluster-wide, from the watch cache, then watched.
    for path in [
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
    ] {
        let reqs = api.requests_to(path);
        assert!(reqs.len() >= 2, "{path}: list and watch: {reqs:?}");
        assert_eq!(
            reqs[0].get("resourceVersion").map(String::as_str),
            Some("0")
        );
        assert!(!reqs[0].contains_key("fieldSelector"));
        assert!(reqs
            .iter()
            .any(|q| q.get("watch").map(String::as_str) == Some("true")));
    }
    assert_eq!(
        counter(
            &metrics,
            "nodescope_k8s_peer_index_entries",
            ("source", "services")
        ),
        2.0,
        "the headless Service has no ClusterIP"
    );
    assert_eq!(
        counter(
            &metrics,
            "nodescope_k8s_peer_index_entries",
            ("source", "endpoints")
        ),
        3.0
    );
    assert_eq!(
        counter(
            &metrics,
            "nodescope_k8s_relists_total",
            ("resource", "endpointslices")
        ),
        1.0
    );
    task.abort();
}
