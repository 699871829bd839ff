//! Kubernetes pod metadata: container id to pod, namespace, container and labels
