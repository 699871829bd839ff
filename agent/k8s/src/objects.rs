//! The parts of the Kubernetes API's JSON that nodescope reads: Pods, Services and
//! EndpointSlices. Unknown fields are ignored: this is external input, and the API adds
//! fields over time. Every field is optional so a partial object never fails decoding.

use std::collections::BTreeMap;
use std::net::IpAddr;

use nodescope_model::workload::PeerRef;
use serde::Deserialize;

use crate::cache::normalize_container_id;

#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct OwnerReference {
    pub kind: Option<String>,
    pub name: Option<String>,
    pub controller: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct ObjectMeta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    #[serde(rename = "resourceVersion")]
    pub resource_version: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "ownerReferences", default)]
    pub owner_references: Vec<OwnerReference>,
}

impl ObjectMeta {
    /// Cache key: the uid, else namespace/name.
    pub fn key(&self) -> Option<String> {
        if let Some(uid) = self.uid.as_ref().filter(|u| !u.is_empty()) {
            return Some(uid.clone());
        }
        match (&self.namespace, &self.name) {
            (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
            _ => None,
        }
    }
}

/// Objects the generic list/watch loop handles.
pub(crate) trait Object: serde::de::DeserializeOwned + Send + 'static {
    fn meta(&self) -> &ObjectMeta;
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ContainerStatus {
    pub name: Option<String>,
    #[serde(rename = "containerID")]
    pub container_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct PodIp {
    pub ip: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct PodStatus {
    #[serde(rename = "containerStatuses", default)]
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(rename = "initContainerStatuses", default)]
    pub init_container_statuses: Vec<ContainerStatus>,
    #[serde(rename = "ephemeralContainerStatuses", default)]
    pub ephemeral_container_statuses: Vec<ContainerStatus>,
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(rename = "podIPs", default)]
    pub pod_ips: Vec<PodIp>,
    pub phase: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct PodSpec {
    #[serde(rename = "hostNetwork")]
    pub host_network: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<PodSpec>,
    #[serde(default)]
    pub status: Option<PodStatus>,
}

impl Object for Pod {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

impl Pod {
    pub fn key(&self) -> Option<String> {
        self.metadata.key()
    }

    /// (normalized container id, container name) of every started container.
    pub fn container_ids(&self) -> Vec<(String, &str)> {
        let Some(st) = &self.status else {
            return Vec::new();
        };
        st.container_statuses
            .iter()
            .chain(&st.init_container_statuses)
            .chain(&st.ephemeral_container_statuses)
            .filter_map(|c| {
                let id = normalize_container_id(c.container_id.as_deref()?)?;
                Some((id, c.name.as_deref().unwrap_or("")))
            })
            .collect()
    }

    /// The pod's own addresses. None for host-network pods (their address is the
    /// node's, shared by every host-network pod and the node itself) and for pods that
    /// have finished (their address may already belong to a new pod).
    pub fn ips(&self) -> Vec<IpAddr> {
        if self.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            return Vec::new();
        }
        let Some(st) = &self.status else {
            return Vec::new();
        };
        if matches!(st.phase.as_deref(), Some("Succeeded") | Some("Failed")) {
            return Vec::new();
        }
        let mut out: Vec<IpAddr> = st
            .pod_ips
            .iter()
            .filter_map(|p| p.ip.as_deref()?.parse().ok())
            .collect();
        if let Some(ip) = st.pod_ip.as_deref().and_then(|s| s.parse().ok()) {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        out
    }

    /// The workload the pod belongs to, from its ownerReferences: the controller (else
    /// the first owner); a ReplicaSet made by a Deployment (its name is the Deployment's
    /// plus `-<pod-template-hash>`, the hash also a label of the pod) is named by that
    /// Deployment. A pod without owner is its own workload.
    pub fn workload(&self) -> Option<PeerRef> {
        let m = &self.metadata;
        let namespace = m.namespace.clone()?;
        let owner = m
            .owner_references
            .iter()
            .find(|o| o.controller == Some(true))
            .or(m.owner_references.first());
        let (kind, name) = match owner {
            Some(o) => (o.kind.clone()?, o.name.clone()?),
            None => ("Pod".to_string(), m.name.clone()?),
        };
        if kind == "ReplicaSet" {
            let hash = m
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash"))
                .filter(|h| !h.is_empty());
            if let Some(dep) = hash.and_then(|h| name.strip_suffix(&format!("-{h}"))) {
                if !dep.is_empty() {
                    return Some(PeerRef {
                        namespace,
                        workload: dep.to_string(),
                        kind: "Deployment".into(),
                    });
                }
            }
        }
        Some(PeerRef {
            namespace,
            workload: name,
            kind,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ServiceSpec {
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs", default)]
    pub cluster_ips: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Service {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<ServiceSpec>,
}

impl Object for Service {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

impl Service {
    /// The Service's cluster IPs (none for headless Services, `clusterIP: None`).
    pub fn ips(&self) -> Vec<IpAddr> {
        let Some(s) = &self.spec else {
            return Vec::new();
        };
        let mut out: Vec<IpAddr> = s
            .cluster_ips
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        if let Some(ip) = s.cluster_ip.as_deref().and_then(|s| s.parse().ok()) {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        out
    }

    pub fn peer(&self) -> Option<PeerRef> {
        Some(PeerRef {
            namespace: self.metadata.namespace.clone()?,
            workload: self.metadata.name.clone()?,
            kind: "Service".into(),
        })
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ObjectReference {
    pub kind: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Endpoint {
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(rename = "targetRef")]
    pub target_ref: Option<ObjectReference>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct EndpointSlice {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

impl Object for EndpointSlice {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

/// A pod address behind a Service: the pod (namespace, name) and the Service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct EndpointPod {
    pub namespace: String,
    pub pod: String,
    pub service: String,
}

impl EndpointSlice {
    /// (address, pod) of every endpoint that is a pod.
    pub fn pod_addresses(&self) -> Vec<(IpAddr, EndpointPod)> {
        let m = &self.metadata;
        let service = m
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
            .cloned()
            .unwrap_or_default();
        let mut out = Vec::new();
        for e in &self.endpoints {
            let Some(t) = &e.target_ref else { continue };
            if t.kind.as_deref() != Some("Pod") {
                continue;
            }
            let (Some(name), Some(ns)) = (
                t.name.clone(),
                t.namespace.clone().or_else(|| m.namespace.clone()),
            ) else {
                continue;
            };
            for a in &e.addresses {
                if let Ok(ip) = a.parse() {
                    out.push((
                        ip,
                        EndpointPod {
                            namespace: ns.clone(),
                            pod: name.clone(),
                            service: service.clone(),
                        },
                    ));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn owners_name_the_workload() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "web-7d4b9c8f6-x2x9q", "namespace": "shop",
                "labels": {"pod-template-hash": "7d4b9c8f6"},
                "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7d4b9c8f6", "controller": true}]},
            "status": {"podIP": "10.244.1.7", "podIPs": [{"ip": "10.244.1.7"}, {"ip": "fd00::7"}], "phase": "Running"}
        }));
        assert_eq!(
            p.workload().unwrap(),
            PeerRef {
                namespace: "shop".into(),
                workload: "web".into(),
                kind: "Deployment".into()
            }
        );
        assert_eq!(p.ips().len(), 2);
        // A bare ReplicaSet (no template hash label) stays a ReplicaSet.
        let p = pod(
            serde_json::json!({"metadata": {"name": "r-abcde", "namespace": "n",
            "ownerReferences": [{"kind": "ReplicaSet", "name": "r", "controller": true}]}}),
        );
        assert_eq!(p.workload().unwrap().kind, "ReplicaSet");
        let p = pod(
            serde_json::json!({"metadata": {"name": "db-0", "namespace": "n",
            "ownerReferences": [{"kind": "StatefulSet", "name": "db", "controller": true}]}}),
        );
        assert_eq!(p.workload().unwrap().workload, "db");
        let p = pod(serde_json::json!({"metadata": {"name": "solo", "namespace": "n"}}));
        assert_eq!(
            (
                p.workload().unwrap().kind.as_str(),
                p.workload().unwrap().workload.as_str()
            ),
            ("Pod", "solo")
        );
        // Host-network and finished pods give no address.
        let p = pod(
            serde_json::json!({"metadata": {"name": "x", "namespace": "n"},
            "spec": {"hostNetwork": true}, "status": {"podIP": "192.168.1.5"}}),
        );
        assert!(p.ips().is_empty());
        let p = pod(
            serde_json::json!({"metadata": {"name": "x", "namespace": "n"},
            "status": {"podIP": "10.1.1.1", "phase": "Succeeded"}}),
        );
        assert!(p.ips().is_empty());
    }

    #[test]
    fn services_and_endpoint_slices() {
        let s: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.12.34", "clusterIPs": ["10.96.12.34", "fd00:96::12"]}
        }))
        .unwrap();
        assert_eq!(s.ips().len(), 2);
        let h: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db", "namespace": "shop"}, "spec": {"clusterIP": "None"}
        }))
        .unwrap();
        assert!(h.ips().is_empty());
        let e: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api-x7k2p", "namespace": "shop",
                "labels": {"kubernetes.io/service-name": "api"}},
            "endpoints": [
                {"addresses": ["10.244.2.9"], "targetRef": {"kind": "Pod", "name": "api-5f6c8d9b7-k8m2p", "namespace": "shop"}},
                {"addresses": ["10.0.0.5"], "targetRef": {"kind": "Node", "name": "n1"}},
                {"addresses": ["not-an-ip"], "targetRef": {"kind": "Pod", "name": "p"}}
            ]
        }))
        .unwrap();
        let a = e.pod_addresses();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].1.service, "api");
        assert_eq!(a[0].1.pod, "api-5f6c8d9b7-k8m2p");
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_json_never_panics(s in ".{0,400}") {
            if let Ok(p) = serde_json::from_str::<Pod>(&s) {
                let _ = (p.container_ids(), p.ips(), p.workload());
            }
            if let Ok(x) = serde_json::from_str::<Service>(&s) {
                let _ = (x.ips(), x.peer());
            }
            if let Ok(x) = serde_json::from_str::<EndpointSlice>(&s) {
                let _ = x.pod_addresses();
            }
        }
    }
}
