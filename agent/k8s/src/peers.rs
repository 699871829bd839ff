//! Peer naming: a network peer's IP address → the workload (or Service) it belongs to.
//!
//! What a node agent can afford to know about the rest of the cluster, and how:
//!
//! * **Services** (watched cluster-wide): ClusterIP → Service. Outbound connections to a
//!   Service keep its ClusterIP as their destination in the socket, so this names most
//!   client → server traffic. Services are few and change rarely.
//! * **EndpointSlices** (watched cluster-wide): the address of every pod behind a Service
//!   → that pod (namespace, name). This is exactly what kube-proxy already watches on
//!   every node, so the API server is sized for it. The pod's owner is not in the slice:
//!   the first time an address is *seen in traffic*, the pod is fetched once
//!   (`GET /api/v1/namespaces/<ns>/pods/<name>?resourceVersion=0`, served from the API
//!   server's watch cache) by a background task, rate-limited, and its owner cached.
//! * **This node's pods** (the pod watch the agent has anyway): address → owner at once.
//!
//! Pods are never watched cluster-wide: in a 5 000-node cluster that is every agent
//! receiving every pod update of the cluster. Pods on other nodes that back no Service
//! stay unnamed (their address and port are kept, or folded by the CIDR table).
//!
//! Everything is bounded (`max_services`, `max_endpoints`, `max_peer_pods`) with
//! evictions counted; the lookup answers from memory and never waits for the API.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodescope_model::selfmetrics::{Counter, Gauge, SelfMetrics};
use nodescope_model::workload::PeerRef;
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;
use tracing::debug;

use crate::client::{ApiClient, Store};
use crate::objects::{EndpointPod, EndpointSlice, Pod, Service};

/// Owner lookups queued at most; beyond, a lookup is dropped (counted) and retried the
/// next time the address is seen.
pub const OWNER_QUEUE: usize = 1024;
/// How long a failed or not-found owner lookup is remembered before it is retried.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub(crate) struct PeerMetrics {
    services: Gauge,
    endpoints: Gauge,
    owners: Gauge,
    evicted_services: Counter,
    evicted_endpoints: Counter,
    evicted_owners: Counter,
    owner_ok: Counter,
    owner_not_found: Counter,
    owner_error: Counter,
    owner_dropped: Counter,
}

impl PeerMetrics {
    pub(crate) fn register(m: &SelfMetrics) -> Self {
        let entries = |source| {
            m.gauge(
                "nodescope_k8s_peer_index_entries",
                "Entries of the peer address index, by source.",
                &[("source", source)],
            )
        };
        let ev = |reason| {
            m.counter(
                "nodescope_k8s_cache_evictions_total",
                "Pods or containers left out of the pod metadata cache because a bound was reached.",
                &[("reason", reason)],
            )
        };
        let owner = |result| {
            m.counter(
                "nodescope_k8s_peer_owner_lookups_total",
                "Owner lookups of pods behind Services (one GET per pod seen in traffic), by result.",
                &[("result", result)],
            )
        };
        PeerMetrics {
            services: entries("services"),
            endpoints: entries("endpoints"),
            owners: entries("pod_owners"),
            evicted_services: ev("services"),
            evicted_endpoints: ev("endpoints"),
            evicted_owners: ev("pod_owners"),
            owner_ok: owner("ok"),
            owner_not_found: owner("not_found"),
            owner_error: owner("error"),
            owner_dropped: owner("queue_full"),
        }
    }
}

#[derive(Clone, Debug)]
enum Owner {
    Known(Arc<PeerRef>),
    Pending,
    Unknown(Instant),
}

#[derive(Default)]
struct Services {
    by_ip: HashMap<IpAddr, (String, Arc<PeerRef>)>,
    ips_of: HashMap<String, Vec<IpAddr>>,
}

#[derive(Default)]
struct Endpoints {
    /// Address → (slice key, pod).
    by_ip: HashMap<IpAddr, (String, Arc<EndpointPod>)>,
    ips_of: HashMap<String, Vec<IpAddr>>,
}

/// Addresses of Services and of pods behind Services, with their owners.
pub struct PeerIndex {
    services: RwLock<Services>,
    endpoints: RwLock<Endpoints>,
    owners: RwLock<HashMap<(String, String), Owner>>,
    queue: mpsc::Sender<(String, String)>,
    queue_rx: Mutex<Option<mpsc::Receiver<(String, String)>>>,
    max_services: usize,
    max_endpoints: usize,
    max_owners: usize,
    metrics: PeerMetrics,
}

impl PeerIndex {
    pub(crate) fn new(
        max_services: usize,
        max_endpoints: usize,
        max_owners: usize,
        metrics: PeerMetrics,
    ) -> Self {
        let (queue, rx) = mpsc::channel(OWNER_QUEUE);
        PeerIndex {
            services: RwLock::default(),
            endpoints: RwLock::default(),
            owners: RwLock::default(),
            queue,
            queue_rx: Mutex::new(Some(rx)),
            max_services: max_services.max(1),
            max_endpoints: max_endpoints.max(1),
            max_owners: max_owners.max(1),
            metrics,
        }
    }

    /// The Service whose ClusterIP `ip` is.
    pub fn service_for_ip(&self, ip: IpAddr) -> Option<PeerRef> {
        self.services
            .read()
            .by_ip
            .get(&ip)
            .map(|(_, s)| (**s).clone())
    }

    /// The Service or the (owner of the) pod behind a Service with address `ip`. An
    /// endpoint pod whose owner is not known yet is queued for a lookup: None for now.
    pub fn peer_for_ip(&self, ip: IpAddr) -> Option<PeerRef> {
        if let Some(s) = self.service_for_ip(ip) {
            return Some(s);
        }
        let pod = self
            .endpoints
            .read()
            .by_ip
            .get(&ip)
            .map(|(_, p)| p.clone())?;
        let key = (pod.namespace.clone(), pod.pod.clone());
        match self.owners.read().get(&key) {
            Some(Owner::Known(w)) => return Some((**w).clone()),
            Some(Owner::Pending) => return None,
            Some(Owner::Unknown(t)) if t.elapsed() < NEGATIVE_TTL => return None,
            _ => {}
        }
        let mut owners = self.owners.write();
        if owners.len() >= self.max_owners && !owners.contains_key(&key) {
            // Make room: forget failed lookups first, else an arbitrary tenth.
            owners.retain(|_, o| !matches!(o, Owner::Unknown(_)));
            if owners.len() >= self.max_owners {
                let n = (self.max_owners / 10).max(1);
                let victims: Vec<_> = owners.keys().take(n).cloned().collect();
                for v in victims {
                    owners.remove(&v);
                    self.metrics.evicted_owners.inc();
                }
            }
        }
        match self.queue.try_send(key.clone()) {
            Ok(()) => {
                owners.insert(key, Owner::Pending);
            }
            Err(_) => self.metrics.owner_dropped.inc(),
        }
        self.metrics.owners.set(owners.len() as f64);
        None
    }

    fn set_owner(&self, key: (String, String), o: Owner) {
        let mut owners = self.owners.write();
        owners.insert(key, o);
        self.metrics.owners.set(owners.len() as f64);
    }

    /// Resolves queued pods' owners, at most `per_second` API requests per second, until
    /// the future is dropped.
    pub(crate) async fn resolve_owners(self: Arc<Self>, api: Arc<ApiClient>, per_second: u32) {
        let Some(mut rx) = self.queue_rx.lock().take() else {
            return;
        };
        let gap = Duration::from_secs_f64(1.0 / f64::from(per_second.max(1)));
        while let Some((ns, pod)) = rx.recv().await {
            let path = format!("/api/v1/namespaces/{ns}/pods/{pod}");
            let key = (ns, pod);
            match api.get_object::<Pod>(&path).await {
                Ok(Some(p)) => match p.workload() {
                    Some(w) => {
                        self.metrics.owner_ok.inc();
                        self.set_owner(key, Owner::Known(Arc::new(w)));
                    }
                    None => {
                        self.metrics.owner_error.inc();
                        self.set_owner(key, Owner::Unknown(Instant::now()));
                    }
                },
                Ok(None) => {
                    self.metrics.owner_not_found.inc();
                    self.set_owner(key, Owner::Unknown(Instant::now()));
                }
                Err(e) => {
                    debug!(error = %e, "pod owner lookup failed");
                    self.metrics.owner_error.inc();
                    self.set_owner(key, Owner::Unknown(Instant::now()));
                }
            }
            tokio::time::sleep(gap).await;
        }
    }
}

/// Every Service of the cluster, as a [`Store`].
pub(crate) struct ServiceStore(pub Arc<PeerIndex>);

impl ServiceStore {
    fn put(&self, s: &mut Services, svc: &Service) {
        let Some(key) = svc.metadata.key() else {
            return;
        };
        remove_service(s, &key);
        let (Some(peer), ips) = (svc.peer(), svc.ips()) else {
            return;
        };
        if ips.is_empty() {
            return;
        }
        if s.ips_of.len() >= self.0.max_services {
            self.0.metrics.evicted_services.inc();
            return;
        }
        let peer = Arc::new(peer);
        for ip in &ips {
            s.by_ip.insert(*ip, (key.clone(), peer.clone()));
        }
        s.ips_of.insert(key, ips);
    }

    fn gauge(&self, s: &Services) {
        self.0.metrics.services.set(s.ips_of.len() as f64);
    }
}

fn remove_service(s: &mut Services, key: &str) {
    if let Some(ips) = s.ips_of.remove(key) {
        for ip in ips {
            if s.by_ip.get(&ip).is_some_and(|(k, _)| k == key) {
                s.by_ip.remove(&ip);
            }
        }
    }
}

impl Store for ServiceStore {
    type Item = Service;
    fn resource(&self) -> &'static str {
        "services"
    }
    fn path(&self) -> &'static str {
        "/api/v1/services"
    }
    fn field_selector(&self) -> Option<String> {
        None
    }
    fn replace(&self, items: Vec<Service>) -> usize {
        let mut fresh = Services::default();
        for svc in &items {
            self.put(&mut fresh, svc);
        }
        let n = fresh.ips_of.len();
        self.gauge(&fresh);
        *self.0.services.write() = fresh;
        n
    }
    fn upsert(&self, item: Service) {
        let mut s = self.0.services.write();
        self.put(&mut s, &item);
        self.gauge(&s);
    }
    fn remove(&self, item: &Service) {
        if let Some(k) = item.metadata.key() {
            let mut s = self.0.services.write();
            remove_service(&mut s, &k);
            self.gauge(&s);
        }
    }
}

/// Every EndpointSlice of the cluster, as a [`Store`].
pub(crate) struct EndpointStore(pub Arc<PeerIndex>);

impl EndpointStore {
    fn put(&self, e: &mut Endpoints, slice: &EndpointSlice) {
        let Some(key) = slice.metadata.key() else {
            return;
        };
        remove_slice(e, &key);
        let mut ips = Vec::new();
        for (ip, pod) in slice.pod_addresses() {
            if e.by_ip.len() >= self.0.max_endpoints && !e.by_ip.contains_key(&ip) {
                self.0.metrics.evicted_endpoints.inc();
                continue;
            }
            e.by_ip.insert(ip, (key.clone(), Arc::new(pod)));
            ips.push(ip);
        }
        if !ips.is_empty() {
            e.ips_of.insert(key, ips);
        }
    }

    fn gauge(&self, e: &Endpoints) {
        self.0.metrics.endpoints.set(e.by_ip.len() as f64);
    }
}

fn remove_slice(e: &mut Endpoints, key: &str) {
    if let Some(ips) = e.ips_of.remove(key) {
        for ip in ips {
            if e.by_ip.get(&ip).is_some_and(|(k, _)| k == key) {
                e.by_ip.remove(&ip);
            }
        }
    }
}

impl Store for EndpointStore {
    type Item = EndpointSlice;
    fn resource(&self) -> &'static str {
        "endpointslices"
    }
    fn path(&self) -> &'static str {
        "/apis/discovery.k8s.io/v1/endpointslices"
    }
    fn field_selector(&self) -> Option<String> {
        None
    }
    fn replace(&self, items: Vec<EndpointSlice>) -> usize {
        let mut fresh = Endpoints::default();
        for s in &items {
            self.put(&mut fresh, s);
        }
        let n = fresh.by_ip.len();
        self.gauge(&fresh);
        *self.0.endpoints.write() = fresh;
        n
    }
    fn upsert(&self, item: EndpointSlice) {
        let mut e = self.0.endpoints.write();
        self.put(&mut e, &item);
        self.gauge(&e);
    }
    fn remove(&self, item: &EndpointSlice) {
        if let Some(k) = item.metadata.key() {
            let mut e = self.0.endpoints.write();
            remove_slice(&mut e, &k);
            self.gauge(&e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> Arc<PeerIndex> {
        Arc::new(PeerIndex::new(
            2,
            3,
            10,
            PeerMetrics::register(&SelfMetrics::new()),
        ))
    }

    fn svc(name: &str, ip: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "shop", "uid": name},
            "spec": {"clusterIP": ip}
        }))
        .unwrap()
    }

    #[test]
    fn services_are_bounded_and_replaced() {
        let ix = index();
        let st = ServiceStore(ix.clone());
        assert_eq!(
            st.replace(vec![
                svc("a", "10.96.0.1"),
                svc("b", "10.96.0.2"),
                svc("c", "10.96.0.3")
            ]),
            2
        );
        assert_eq!(ix.metrics.evicted_services.get(), 1);
        let ip: IpAddr = "10.96.0.1".parse().unwrap();
        assert_eq!(ix.peer_for_ip(ip).unwrap().kind, "Service");
        st.remove(&svc("a", "10.96.0.1"));
        assert!(ix.peer_for_ip(ip).is_none());
        // Changing a Service's IP moves it.
        st.upsert(svc("b", "10.96.0.9"));
        assert!(ix.peer_for_ip("10.96.0.2".parse().unwrap()).is_none());
        assert_eq!(
            ix.peer_for_ip("10.96.0.9".parse().unwrap())
                .unwrap()
                .workload,
            "b"
        );
    }

    #[test]
    fn endpoint_pods_are_queued_once_for_their_owner() {
        let ix = index();
        let es = EndpointStore(ix.clone());
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api-1", "namespace": "shop", "uid": "s1",
                "labels": {"kubernetes.io/service-name": "api"}},
            "endpoints": [
                {"addresses": ["10.244.1.1"], "targetRef": {"kind": "Pod", "name": "api-x-1", "namespace": "shop"}},
                {"addresses": ["10.244.1.2"], "targetRef": {"kind": "Pod", "name": "api-x-2", "namespace": "shop"}},
                {"addresses": ["10.244.1.3"], "targetRef": {"kind": "Pod", "name": "api-x-3", "namespace": "shop"}},
                {"addresses": ["10.244.1.4"], "targetRef": {"kind": "Pod", "name": "api-x-4", "namespace": "shop"}}
            ]
        }))
        .unwrap();
        assert_eq!(es.replace(vec![slice]), 3, "bounded at 3 addresses");
        assert_eq!(ix.metrics.evicted_endpoints.get(), 1);
        let ip: IpAddr = "10.244.1.1".parse().unwrap();
        assert!(ix.peer_for_ip(ip).is_none(), "owner not known yet");
        assert!(ix.peer_for_ip(ip).is_none(), "still pending");
        let mut rx = ix.queue_rx.lock().take().unwrap();
        assert_eq!(
            rx.try_recv().unwrap(),
            ("shop".to_string(), "api-x-1".to_string())
        );
        assert!(rx.try_recv().is_err(), "queued once");
        ix.set_owner(
            ("shop".into(), "api-x-1".into()),
            Owner::Known(Arc::new(PeerRef {
                namespace: "shop".into(),
                workload: "api".into(),
                kind: "Deployment".into(),
            })),
        );
        assert_eq!(ix.peer_for_ip(ip).unwrap().kind, "Deployment");
    }
}
