//! The bounded pod cache of this node's pods: pods by uid, plus indexes container id →
//! (pod, container name) and pod address → workload. Readers (probes, profiler) take a
//! read lock for one hash lookup.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use nodescope_model::selfmetrics::{Counter, Gauge, SelfMetrics};
use nodescope_model::workload::{PeerRef, PodLookup, PodRef};
use parking_lot::RwLock;

use crate::client::Store;
use crate::objects::Pod;

/// Containers indexed per pod at most (regular + init + ephemeral); the rest is counted
/// as an eviction with reason `containers_per_pod`.
pub const MAX_CONTAINERS_PER_POD: usize = 64;

/// Strips the runtime prefix (`containerd://`, `docker://`, `cri-o://`, ...) from a
/// `containerStatuses[].containerID` and returns the lower-case id, or `None` when the
/// value is empty (container not started yet).
pub fn normalize_container_id(raw: &str) -> Option<String> {
    let id = match raw.split_once("://") {
        Some((_, id)) => id,
        None => raw,
    };
    let id = id.trim();
    if id.is_empty() || id.len() > 128 {
        return None;
    }
    Some(id.to_ascii_lowercase())
}

/// Self metrics of the cache.
#[derive(Clone, Debug)]
pub struct CacheMetrics {
    pub pods: Gauge,
    pub containers: Gauge,
    pub evicted_capacity: Counter,
    pub evicted_containers: Counter,
    pub hits: Counter,
    pub misses: Counter,
}

impl CacheMetrics {
    pub fn register(m: &SelfMetrics) -> Self {
        let ev = |reason| {
            m.counter(
                "nodescope_k8s_cache_evictions_total",
                "Pods or containers left out of the pod metadata cache because a bound was reached.",
                &[("reason", reason)],
            )
        };
        let lookups = |result| {
            m.counter(
                "nodescope_k8s_lookups_total",
                "Container id lookups in the pod metadata cache, by result.",
                &[("result", result)],
            )
        };
        Self {
            pods: m.gauge(
                "nodescope_k8s_cache_pods",
                "Pods in the pod metadata cache.",
                &[],
            ),
            containers: m.gauge(
                "nodescope_k8s_cache_containers",
                "Container ids indexed in the pod metadata cache.",
                &[],
            ),
            evicted_capacity: ev("capacity"),
            evicted_containers: ev("containers_per_pod"),
            hits: lookups("hit"),
            misses: lookups("miss"),
        }
    }
}

#[derive(Debug)]
struct CachedPod {
    pod_ref: Arc<PodShared>,
    containers: Vec<String>,
    ips: Vec<IpAddr>,
    /// Update sequence number: the smallest is evicted first when full.
    seq: u64,
}

#[derive(Debug)]
struct PodShared {
    namespace: String,
    pod: String,
    labels: Vec<(String, String)>,
}

#[derive(Debug, Default)]
struct Inner {
    pods: HashMap<String, CachedPod>,
    by_container: HashMap<String, (Arc<PodShared>, String)>,
    /// Pod address → (pod uid, its workload).
    by_ip: HashMap<IpAddr, (String, Arc<PeerRef>)>,
    seq: u64,
}

/// Bounded container id → pod map. Implements [`PodLookup`].
#[derive(Debug)]
pub struct PodCache {
    inner: RwLock<Inner>,
    max_pods: usize,
    label_keys: Vec<String>,
    metrics: CacheMetrics,
}

impl PodCache {
    pub fn new(max_pods: usize, label_keys: Vec<String>, metrics: CacheMetrics) -> Self {
        Self {
            inner: RwLock::new(Inner::default()),
            max_pods: max_pods.max(1),
            label_keys,
            metrics,
        }
    }

    pub fn len(&self) -> usize {
        self.inner.read().pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn metrics(&self) -> &CacheMetrics {
        &self.metrics
    }

    /// Replaces the whole content with a fresh list (re-list).
    pub(crate) fn replace(&self, pods: Vec<Pod>) {
        let mut fresh = Inner::default();
        for p in pods {
            self.upsert_into(&mut fresh, p);
        }
        *self.inner.write() = fresh;
        self.update_gauges();
    }

    /// Adds or updates one pod (watch ADDED / MODIFIED).
    pub(crate) fn upsert(&self, pod: Pod) {
        {
            let mut inner = self.inner.write();
            self.upsert_into(&mut inner, pod);
        }
        self.update_gauges();
    }

    /// Removes one pod (watch DELETED).
    pub(crate) fn remove(&self, uid: &str) {
        {
            let mut inner = self.inner.write();
            remove_from(&mut inner, uid);
        }
        self.update_gauges();
    }

    fn update_gauges(&self) {
        let inner = self.inner.read();
        self.metrics.pods.set(inner.pods.len() as f64);
        self.metrics.containers.set(inner.by_container.len() as f64);
    }

    fn upsert_into(&self, inner: &mut Inner, pod: Pod) {
        let Some(uid) = pod.key() else {
            return;
        };
        remove_from(inner, &uid);
        if inner.pods.len() >= self.max_pods {
            // Evict the pod updated longest ago.
            if let Some(oldest) = inner
                .pods
                .iter()
                .min_by_key(|(_, p)| p.seq)
                .map(|(k, _)| k.clone())
            {
                remove_from(inner, &oldest);
                self.metrics.evicted_capacity.inc();
            }
        }
        let labels = pod
            .metadata
            .labels
            .as_ref()
            .map(|all| {
                self.label_keys
                    .iter()
                    .filter_map(|k| all.get(k).map(|v| (k.clone(), v.clone())))
                    .collect()
            })
            .unwrap_or_default();
        let shared = Arc::new(PodShared {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            pod: pod.metadata.name.clone().unwrap_or_default(),
            labels,
        });
        let ips = pod.ips();
        if let Some(w) = pod.workload() {
            let w = Arc::new(w);
            for ip in &ips {
                inner.by_ip.insert(*ip, (uid.clone(), w.clone()));
            }
        }
        let mut containers = Vec::new();
        for (id, name) in pod.container_ids() {
            if containers.len() >= MAX_CONTAINERS_PER_POD {
                self.metrics.evicted_containers.inc();
                continue;
            }
            inner
                .by_container
                .insert(id.clone(), (shared.clone(), name.to_string()));
            containers.push(id);
        }
        inner.seq += 1;
        let seq = inner.seq;
        inner.pods.insert(
            uid,
            CachedPod {
                pod_ref: shared,
                containers,
                ips,
                seq,
            },
        );
    }
}

fn remove_from(inner: &mut Inner, uid: &str) {
    if let Some(old) = inner.pods.remove(uid) {
        for ip in &old.ips {
            // Only if the address still belongs to this pod (a new pod may have it now).
            if inner.by_ip.get(ip).is_some_and(|(u, _)| u == uid) {
                inner.by_ip.remove(ip);
            }
        }
        for c in old.containers {
            // Only drop the index entry if it still points at this pod.
            if inner
                .by_container
                .get(&c)
                .is_some_and(|(p, _)| Arc::ptr_eq(p, &old.pod_ref))
            {
                inner.by_container.remove(&c);
            }
        }
    }
}

impl PodCache {
    /// The workload of the node's pod with address `ip`.
    pub fn peer_for_ip(&self, ip: IpAddr) -> Option<PeerRef> {
        self.inner.read().by_ip.get(&ip).map(|(_, w)| (**w).clone())
    }
}

/// The node's pods as a [`Store`] for the generic watcher.
pub(crate) struct PodStore {
    pub cache: Arc<PodCache>,
    pub node_name: String,
}

impl Store for PodStore {
    type Item = Pod;
    fn resource(&self) -> &'static str {
        "pods"
    }
    fn path(&self) -> &'static str {
        "/api/v1/pods"
    }
    fn field_selector(&self) -> Option<String> {
        Some(format!("spec.nodeName={}", self.node_name))
    }
    fn replace(&self, items: Vec<Pod>) -> usize {
        self.cache.replace(items);
        self.cache.len()
    }
    fn upsert(&self, item: Pod) {
        self.cache.upsert(item);
    }
    fn remove(&self, item: &Pod) {
        if let Some(k) = item.key() {
            self.cache.remove(&k);
        }
    }
}

impl PodLookup for PodCache {
    fn pod_for_container(&self, container_id: &str) -> Option<PodRef> {
        let key = normalize_container_id(container_id)?;
        let inner = self.inner.read();
        match inner.by_container.get(&key) {
            Some((p, container)) => {
                self.metrics.hits.inc();
                Some(PodRef {
                    namespace: p.namespace.clone(),
                    pod: p.pod.clone(),
                    container: container.clone(),
                    labels: p.labels.clone(),
                })
            }
            None => {
                self.metrics.misses.inc();
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pod(uid: &str, name: &str, ids: &[(&str, &str)]) -> Pod {
        let statuses: Vec<_> = ids
            .iter()
            .map(|(n, id)| serde_json::json!({"name": n, "containerID": id}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"uid": uid, "name": name, "namespace": "ns",
                         "labels": {"app": name, "pod-template-hash": "abc"}},
            "status": {"containerStatuses": statuses}
        }))
        .unwrap()
    }

    fn cache(max: usize) -> PodCache {
        PodCache::new(
            max,
            vec!["app".into()],
            CacheMetrics::register(&SelfMetrics::new()),
        )
    }

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    #[test]
    fn prefix_is_stripped() {
        assert_eq!(
            normalize_container_id(&format!("containerd://{A}")).as_deref(),
            Some(A)
        );
        assert_eq!(
            normalize_container_id(&format!("cri-o://{}", A.to_uppercase())).as_deref(),
            Some(A)
        );
        assert_eq!(normalize_container_id(A).as_deref(), Some(A));
        assert_eq!(normalize_container_id(""), None);
        assert_eq!(normalize_container_id("containerd://"), None);
    }

    #[test]
    fn only_allowed_labels_are_kept() {
        let c = cache(10);
        c.upsert(pod("u1", "web", &[("nginx", &format!("containerd://{A}"))]));
        let r = c.pod_for_container(A).unwrap();
        assert_eq!(r.labels, vec![("app".to_string(), "web".to_string())]);
        assert_eq!(r.container, "nginx");
    }

    #[test]
    fn bound_evicts_oldest_and_counts() {
        let c = cache(2);
        c.upsert(pod("u1", "p1", &[("c", &format!("containerd://{A}"))]));
        c.upsert(pod("u2", "p2", &[("c", &format!("containerd://{B}"))]));
        c.upsert(pod("u1", "p1", &[("c", &format!("containerd://{A}"))])); // u1 refreshed
        c.upsert(pod("u3", "p3", &[("c", &format!("containerd://{C}"))]));
        assert_eq!(c.len(), 2);
        assert!(c.pod_for_container(B).is_none(), "u2 was the oldest");
        assert!(c.pod_for_container(A).is_some());
        assert!(c.pod_for_container(C).is_some());
        assert_eq!(c.metrics().evicted_capacity.get(), 1);
        assert_eq!(c.metrics().pods.get(), 2.0);
    }

    #[test]
    fn containers_per_pod_bound() {
        let c = cache(2);
        let ids: Vec<(String, String)> = (0..MAX_CONTAINERS_PER_POD + 3)
            .map(|i| (format!("c{i}"), format!("containerd://{i:064x}")))
            .collect();
        let refs: Vec<(&str, &str)> = ids.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        c.upsert(pod("u1", "big", &refs));
        assert_eq!(c.metrics().evicted_containers.get(), 3);
        assert_eq!(c.metrics().containers.get(), MAX_CONTAINERS_PER_POD as f64);
    }

    #[test]
    fn pod_addresses_name_their_workload_until_removed() {
        let c = cache(10);
        let mut p = pod("u1", "web-abc12-x", &[("c", &format!("containerd://{A}"))]);
        p.status.as_mut().unwrap().pod_ip = Some("10.244.0.9".into());
        c.upsert(p);
        let ip: IpAddr = "10.244.0.9".parse().unwrap();
        assert_eq!(c.peer_for_ip(ip).unwrap().workload, "web-abc12-x");
        // The address moves to a new pod before the old one's deletion arrives.
        let mut q = pod("u2", "api-1", &[]);
        q.status.as_mut().unwrap().pod_ip = Some("10.244.0.9".into());
        c.upsert(q);
        c.remove("u1");
        assert_eq!(c.peer_for_ip(ip).unwrap().workload, "api-1");
        c.remove("u2");
        assert!(c.peer_for_ip(ip).is_none());
    }

    #[test]
    fn container_moving_between_pods_is_not_lost_on_delete() {
        let c = cache(10);
        c.upsert(pod("u1", "old", &[("c", &format!("containerd://{A}"))]));
        c.upsert(pod("u2", "new", &[("c", &format!("containerd://{A}"))]));
        c.remove("u1");
        assert_eq!(c.pod_for_container(A).unwrap().pod, "new");
    }

    proptest! {
        #[test]
        fn normalize_never_panics(s in ".{0,200}") {
            let _ = normalize_container_id(&s);
        }

        #[test]
        fn cache_never_exceeds_bound(ops in proptest::collection::vec((0u8..20, any::<bool>()), 0..200)) {
            let c = cache(5);
            for (n, add) in ops {
                let uid = format!("u{n}");
                if add {
                    c.upsert(pod(&uid, &uid, &[("c", &format!("containerd://{n:064x}"))]));
                } else {
                    c.remove(&uid);
                }
                prop_assert!(c.len() <= 5);
                prop_assert!(c.metrics().containers.get() <= 5.0);
            }
        }
    }
}
