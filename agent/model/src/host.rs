//! Where the host's `/proc`, `/sys` and `/` are visible to the agent.

use std::path::{Path, PathBuf};

/// The host's filesystems as the agent sees them: `/proc`, `/sys`, `/` on a bare host;
/// `/host/proc`, `/host/sys`, `/host/root` inside a container (the kube-prometheus
/// node-exporter DaemonSet's layout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPaths {
    pub proc: PathBuf,
    pub sys: PathBuf,
    pub root: PathBuf,
}

impl HostPaths {
    /// `/` gives `/proc`, `/sys`, `/`; any other root `R` gives `R/proc`, `R/sys`, `R/root`.
    pub fn from_root(host_root: &Path) -> Self {
        if host_root == Path::new("/") || host_root.as_os_str().is_empty() {
            return HostPaths {
                proc: PathBuf::from("/proc"),
                sys: PathBuf::from("/sys"),
                root: PathBuf::from("/"),
            };
        }
        HostPaths {
            proc: host_root.join("proc"),
            sys: host_root.join("sys"),
            root: host_root.join("root"),
        }
    }

    /// The cgroup2 mount as seen through these paths. On a bare host, empty: the reader
    /// finds it in /proc/self/mounts. Through a host root, under the host's /sys (hybrid
    /// hosts mount cgroup2 at `fs/cgroup/unified`).
    pub fn cgroup2_root(&self) -> PathBuf {
        if self.sys == Path::new("/sys") {
            return PathBuf::new();
        }
        let unified = self.sys.join("fs/cgroup/unified");
        if unified.is_dir() {
            unified
        } else {
            self.sys.join("fs/cgroup")
        }
    }
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths::from_root(Path::new("/"))
    }
}
