//! Workload identity: what a process or socket belongs to, derived from its cgroup path.
//!
//! Order of preference: container id (container hosts), systemd unit (bare hosts), else
//! the cgroup path itself. Pod name / namespace come from a [`PodLookup`] (the Kubernetes
//! metadata cache) when one is configured.

use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    Container,
    SystemdUnit,
    Cgroup,
    /// The root cgroup or no cgroup information (kernel threads, host processes).
    Host,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Container => "container",
            WorkloadKind::SystemdUnit => "systemd_unit",
            WorkloadKind::Cgroup => "cgroup",
            WorkloadKind::Host => "host",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Workload {
    pub kind: WorkloadKind,
    /// Container id (64 hex), unit name (`nginx.service`), or cgroup path.
    pub id: String,
}

/// Pod identity for a container, supplied by the Kubernetes metadata cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// Selected pod labels (bounded by configuration).
    pub labels: Vec<(String, String)>,
}

/// What a network peer's address is in the cluster: the workload that owns the pod with
/// that address, or the Service whose ClusterIP it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerRef {
    pub namespace: String,
    /// The owning workload's name (a Deployment, StatefulSet, DaemonSet, Job, ...; the
    /// pod's own name when it has no owner), or the Service's name.
    pub workload: String,
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `Job`, `ReplicaSet`, `Pod`, `Service`, ...
    pub kind: String,
}

/// Resolves a container id to its pod, and a peer address to its workload. Implemented
/// by the Kubernetes metadata cache; probes and the profiler hold an
/// `Option<Arc<dyn PodLookup>>`.
pub trait PodLookup: Send + Sync + 'static {
    fn pod_for_container(&self, container_id: &str) -> Option<PodRef>;

    /// The cluster object behind a peer IP address, if known. Called for every peer at
    /// every collection: implementations answer from memory and never block on I/O (an
    /// unknown address may be looked up in the background and answered later).
    fn peer_for_ip(&self, _ip: std::net::IpAddr) -> Option<PeerRef> {
        None
    }
}

pub type SharedPodLookup = Option<Arc<dyn PodLookup>>;

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Extracts a 64-hex container id from one cgroup path component, covering the
/// runtimes' naming schemes: `cri-containerd-<id>.scope`, `docker-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope`, and cgroupfs-driver plain `<id>`.
fn container_id_in(component: &str) -> Option<&str> {
    let base = component.strip_suffix(".scope").unwrap_or(component);
    let candidate = base.rsplit(['-', ':']).next().unwrap_or(base);
    is_container_id(candidate).then_some(candidate)
}

/// Classifies a cgroup path (as found in `/proc/<pid>/cgroup` or a cgroupfs walk).
pub fn classify_cgroup_path(path: &str) -> Workload {
    let path = path.trim();
    if path.is_empty() || path == "/" {
        return Workload {
            kind: WorkloadKind::Host,
            id: "host".into(),
        };
    }
    for comp in path.rsplit('/') {
        if let Some(id) = container_id_in(comp) {
            return Workload {
                kind: WorkloadKind::Container,
                id: id.to_string(),
            };
        }
    }
    // The innermost systemd unit that is a service (or a scope for user sessions).
    if let Some(unit) = path
        .rsplit('/')
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
    {
        return Workload {
            kind: WorkloadKind::SystemdUnit,
            id: unit.to_string(),
        };
    }
    Workload {
        kind: WorkloadKind::Cgroup,
        id: path.to_string(),
    }
}

/// Picks the most specific cgroup path from `/proc/<pid>/cgroup` content: the v2
/// (`0::`) entry when present, otherwise the `name=systemd` or first v1 hierarchy.
pub fn cgroup_path_from_proc(content: &str) -> Option<&str> {
    let mut fallback = None;
    for line in content.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrl), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && ctrl.is_empty() && path != "/" {
            return Some(path);
        }
        if ctrl.contains("name=systemd") || (fallback.is_none() && ctrl.contains("cpu")) {
            fallback = Some(path);
        }
        if fallback.is_none() {
            fallback = Some(path);
        }
    }
    fallback
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn recognises_runtimes() {
        for p in [
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{ID}.scope"),
            format!("/system.slice/docker-{ID}.scope"),
            format!("/kubepods/besteffort/pod1234/{ID}"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
        ] {
            let w = classify_cgroup_path(&p);
            assert_eq!(w.kind, WorkloadKind::Container, "{p}");
            assert_eq!(w.id, ID);
        }
    }

    #[test]
    fn systemd_and_fallbacks() {
        let w = classify_cgroup_path("/system.slice/nginx.service");
        assert_eq!(
            (w.kind, w.id.as_str()),
            (WorkloadKind::SystemdUnit, "nginx.service")
        );
        let w = classify_cgroup_path("/nodescope-test/worker");
        assert_eq!(
            (w.kind, w.id.as_str()),
            (WorkloadKind::Cgroup, "/nodescope-test/worker")
        );
        assert_eq!(classify_cgroup_path("/").kind, WorkloadKind::Host);
    }

    #[test]
    fn proc_cgroup_prefers_v2_then_systemd() {
        let v2 = "0::/system.slice/ssh.service\n";
        assert_eq!(cgroup_path_from_proc(v2), Some("/system.slice/ssh.service"));
        let v1 = "12:pids:/user.slice\n1:name=systemd:/system.slice/cron.service\n0::/\n";
        assert_eq!(
            cgroup_path_from_proc(v1),
            Some("/system.slice/cron.service")
        );
        assert_eq!(cgroup_path_from_proc("garbage"), None);
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,300}") {
            let _ = classify_cgroup_path(&s);
            let _ = cgroup_path_from_proc(&s);
        }
    }
}
