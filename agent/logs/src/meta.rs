//! What a log line is labelled with: for pod logs, namespace, pod, uid and container come
//! from the path (`/var/log/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log`), so
//! they stay right after the pod is deleted; the pod cache adds `service_name` when a
//! well-known pod label gives one.

use std::borrow::Cow;
use std::path::Path;

use nodescope_model::Labels;

/// Identity of a container log file, from its path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPath {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub container: String,
    pub restart: Option<u32>,
}

/// Parses `.../<namespace>_<pod>_<uid>/<container>/<restart>.log`. Namespaces and pod
/// names cannot contain `_` (DNS labels/subdomains), so the split is unambiguous.
pub fn parse_pod_path(p: &Path) -> Option<PodPath> {
    let file = p.file_name()?.to_str()?;
    let container = p.parent()?.file_name()?.to_str()?;
    let pod_dir = p.parent()?.parent()?.file_name()?.to_str()?;
    let mut it = pod_dir.splitn(3, '_');
    let (namespace, pod, uid) = (it.next()?, it.next()?, it.next()?);
    if namespace.is_empty() || pod.is_empty() || uid.is_empty() || container.is_empty() {
        return None;
    }
    let restart = file.split('.').next().and_then(|n| n.parse::<u32>().ok());
    Some(PodPath {
        namespace: namespace.to_string(),
        pod: pod.to_string(),
        uid: uid.to_string(),
        container: container.to_string(),
        restart,
    })
}

/// Pod labels that name the service, in Loki's order of preference.
pub const SERVICE_LABELS: [&str; 6] = [
    "service",
    "app",
    "application",
    "app_name",
    "app.kubernetes.io/name",
    "k8s-app",
];

pub fn service_name(pod_labels: &[(String, String)]) -> Option<&str> {
    SERVICE_LABELS.iter().find_map(|k| {
        pod_labels
            .iter()
            .find(|(n, v)| n == k && !v.is_empty())
            .map(|(_, v)| v.as_str())
    })
}

/// Stream labels and per-file attributes of a tracked file.
#[derive(Clone, Debug, Default)]
pub struct FileMeta {
    pub kind: Cow<'static, str>,
    pub labels: Labels,
    pub attributes: Labels,
}

impl FileMeta {
    pub fn for_pod(pp: &PodPath, path: &Path, node: Option<&str>, service: Option<&str>) -> Self {
        let mut labels: Labels = vec![
            ("namespace".into(), pp.namespace.clone()),
            ("pod".into(), pp.pod.clone()),
            ("container".into(), pp.container.clone()),
            ("job".into(), format!("{}/{}", pp.namespace, pp.container)),
        ];
        if let Some(n) = node {
            labels.push(("node_name".into(), n.to_string()));
        }
        if let Some(s) = service {
            labels.push(("service_name".into(), s.to_string()));
        }
        let mut attributes: Labels = vec![
            ("log.file.path".into(), path.display().to_string()),
            ("k8s.pod.uid".into(), pp.uid.clone()),
        ];
        if let Some(r) = pp.restart {
            attributes.push(("k8s.container.restart_count".into(), r.to_string()));
        }
        FileMeta {
            kind: "container_log".into(),
            labels,
            attributes,
        }
    }

    pub fn for_file(path: &Path, job: &str, node: Option<&str>) -> Self {
        let mut labels: Labels = vec![("job".into(), job.to_string())];
        if let Some(n) = node {
            labels.push(("node_name".into(), n.to_string()));
        }
        FileMeta {
            kind: "file_log".into(),
            labels,
            attributes: vec![("log.file.path".into(), path.display().to_string())],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_path() {
        let p = parse_pod_path(Path::new(
            "/host/var/log/pods/kube-system_coredns-5d78c9869d-abcde_0f1e2d3c-aaaa-bbbb/coredns/3.log",
        ))
        .unwrap();
        assert_eq!(p.namespace, "kube-system");
        assert_eq!(p.pod, "coredns-5d78c9869d-abcde");
        assert_eq!(p.uid, "0f1e2d3c-aaaa-bbbb");
        assert_eq!(p.container, "coredns");
        assert_eq!(p.restart, Some(3));
        assert!(parse_pod_path(Path::new("/var/log/pods/nouid/c/0.log")).is_none());
    }

    #[test]
    fn service_from_labels() {
        let l = vec![
            ("app.kubernetes.io/name".to_string(), "web".to_string()),
            ("app".to_string(), "web-legacy".to_string()),
        ];
        assert_eq!(service_name(&l), Some("web-legacy"));
        assert_eq!(service_name(&l[..1]), Some("web"));
        assert_eq!(service_name(&[]), None);
    }
}
