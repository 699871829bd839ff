//! Resource attributes describing this node and agent.

use std::path::Path;

use nodescope_model::Resource;

use crate::selfstats::VERSION;

fn read_trimmed(path: &Path) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// The kernel's idea of the hostname (the host's, when the agent shares the host's UTS
/// namespace, as a DaemonSet with hostNetwork does).
fn uname_nodename() -> Option<String> {
    // SAFETY: uname fills the zeroed struct; nodename is NUL-terminated by the kernel.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let bytes: Vec<u8> = u
        .nodename
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8(bytes).ok().filter(|s| !s.is_empty())
}

pub fn detect(host_root: &Path, node_name: Option<String>) -> Resource {
    let root = |p: &str| host_root.join(p.trim_start_matches('/'));
    let mut r = Resource::default();
    r.set("service.name", "nodescope");
    r.set("service.version", VERSION);
    let host_name = uname_nodename()
        .or_else(|| read_trimmed(&root("/etc/hostname")))
        .unwrap_or_else(|| "unknown".into());
    r.set("host.name", host_name.clone());
    if let Some(id) = read_trimmed(&root("/etc/machine-id"))
        .or_else(|| read_trimmed(&root("/var/lib/dbus/machine-id")))
    {
        r.set("host.id", id);
    }
    r.set("os.type", "linux");
    // As documented for `agent.node_name`: `$NODE_NAME`, then the host name.
    r.set("k8s.node.name", node_name.unwrap_or(host_name));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_machine_id_through_the_host_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/machine-id"), "abc123\n").unwrap();
        let r = detect(dir.path(), Some("node-1".into()));
        assert_eq!(r.get("host.id"), Some("abc123"));
        assert_eq!(r.get("k8s.node.name"), Some("node-1"));
        assert_eq!(r.get("service.name"), Some("nodescope"));
        assert_eq!(r.get("os.type"), Some("linux"));
        assert!(r.get("host.name").is_some());
        // Without a node name: the host name, as documented.
        let r = detect(dir.path(), None);
        assert_eq!(r.get("k8s.node.name"), r.get("host.name"));
    }
}
