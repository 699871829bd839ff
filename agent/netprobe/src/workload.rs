//! Attribution: cgroup v2 id (from the socket, in the kernel) -> cgroup path -> workload.
//!
//! The kernel gives `sk->sk_cgrp_data.cgroup->kn->id`, which equals the inode number of
//! the cgroup's directory in the cgroup2 mount. We find the path by walking the mount
//! (at most once per [`WALK_MIN_INTERVAL`], bounded in depth and entries) and classify it
//! with [`nodescope_model::workload::classify_cgroup_path`]. Results live in a bounded
//! cache; evictions and unresolved ids are counted.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodescope_model::selfmetrics::Counter;
use nodescope_model::workload::{classify_cgroup_path, PodLookup, PodRef, WorkloadKind};
use parking_lot::Mutex;

/// Minimum time between two walks of the cgroup tree.
pub const WALK_MIN_INTERVAL: Duration = Duration::from_secs(2);
/// Bounds of one walk.
pub const WALK_MAX_DEPTH: usize = 32;
pub const WALK_MAX_ENTRIES: usize = 200_000;

/// The workload label value used when a cgroup id cannot be resolved (the cgroup was
/// removed before we saw it).
pub const UNKNOWN: &str = "unknown";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub kind: WorkloadKind,
    /// The `workload` label value.
    pub id: String,
    /// The cgroup path relative to the cgroup2 mount (empty when unresolved).
    pub path: String,
}

impl Resolved {
    fn host() -> Self {
        Resolved {
            kind: WorkloadKind::Host,
            id: "host".into(),
            path: "/".into(),
        }
    }
    fn unknown() -> Self {
        Resolved {
            kind: WorkloadKind::Cgroup,
            id: UNKNOWN.into(),
            path: String::new(),
        }
    }
}

/// Finds the cgroup2 mount point in `/proc/self/mounts` (cgroup v2 or hybrid hosts).
pub fn default_cgroup_root() -> PathBuf {
    nodescope_ebpf::loader::mounts_of_type("cgroup2")
        .into_iter()
        .next()
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
}

struct Inner {
    cache: HashMap<u64, Arc<Resolved>>,
    last_walk: Option<Instant>,
}

pub struct WorkloadResolver {
    root: PathBuf,
    cap: usize,
    inner: Mutex<Inner>,
    pods: Option<Arc<dyn PodLookup>>,
    pub evictions: Counter,
    pub unresolved: Counter,
    pub walks: Counter,
}

impl WorkloadResolver {
    pub fn new(root: PathBuf, cap: usize, pods: Option<Arc<dyn PodLookup>>) -> Self {
        WorkloadResolver {
            root,
            cap: cap.max(1),
            inner: Mutex::new(Inner {
                cache: HashMap::new(),
                last_walk: None,
            }),
            pods,
            evictions: Counter::default(),
            unresolved: Counter::default(),
            walks: Counter::default(),
        }
    }

    pub fn has_pod_lookup(&self) -> bool {
        self.pods.is_some()
    }

    pub fn pod_for(&self, w: &Resolved) -> Option<PodRef> {
        if w.kind != WorkloadKind::Container {
            return None;
        }
        self.pods.as_ref()?.pod_for_container(&w.id)
    }

    pub fn cached_len(&self) -> usize {
        self.inner.lock().cache.len()
    }

    /// Resolves a set of cgroup ids, walking the cgroup tree at most once.
    pub fn resolve_all(&self, ids: impl IntoIterator<Item = u64>) -> HashMap<u64, Arc<Resolved>> {
        let mut out = HashMap::new();
        let mut missing = Vec::new();
        {
            let inner = self.inner.lock();
            for id in ids {
                if out.contains_key(&id) {
                    continue;
                }
                if id == 0 {
                    out.insert(0, Arc::new(Resolved::host()));
                } else if let Some(r) = inner.cache.get(&id) {
                    out.insert(id, r.clone());
                } else {
                    missing.push(id);
                }
            }
        }
        if missing.is_empty() {
            return out;
        }
        let found = self.walk_if_due(&missing);
        let mut inner = self.inner.lock();
        for id in missing {
            match found.get(&id) {
                Some(path) => {
                    let r = Arc::new(classify(path));
                    if inner.cache.len() >= self.cap {
                        // Evict an arbitrary tenth; bounded work, counted.
                        let n = (self.cap / 10).max(1);
                        let victims: Vec<u64> = inner.cache.keys().take(n).copied().collect();
                        for v in victims {
                            inner.cache.remove(&v);
                            self.evictions.inc();
                        }
                    }
                    inner.cache.insert(id, r.clone());
                    out.insert(id, r);
                }
                None => {
                    self.unresolved.inc();
                    out.insert(id, Arc::new(Resolved::unknown()));
                }
            }
        }
        out
    }

    fn walk_if_due(&self, wanted: &[u64]) -> HashMap<u64, String> {
        {
            let mut inner = self.inner.lock();
            if inner
                .last_walk
                .is_some_and(|t| t.elapsed() < WALK_MIN_INTERVAL)
            {
                return HashMap::new();
            }
            inner.last_walk = Some(Instant::now());
        }
        self.walks.inc();
        walk(&self.root, wanted)
    }
}

fn classify(path: &str) -> Resolved {
    let w = classify_cgroup_path(path);
    Resolved {
        kind: w.kind,
        id: w.id,
        path: path.to_string(),
    }
}

/// Walks the cgroup2 tree under `root`, returning the relative paths (`/a/b`) of the
/// directories whose inode is in `wanted`. The root itself maps to `/`.
pub fn walk(root: &Path, wanted: &[u64]) -> HashMap<u64, String> {
    let mut found = HashMap::new();
    let Ok(meta) = std::fs::metadata(root) else {
        return found;
    };
    if wanted.contains(&meta.ino()) {
        found.insert(meta.ino(), "/".to_string());
    }
    let mut stack: Vec<(PathBuf, String, usize)> = vec![(root.to_path_buf(), String::new(), 0)];
    let mut seen = 0usize;
    while let Some((dir, rel, depth)) = stack.pop() {
        if found.len() == wanted.len() || depth >= WALK_MAX_DEPTH {
            if found.len() == wanted.len() {
                break;
            }
            continue;
        }
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for ent in rd.flatten() {
            seen += 1;
            if seen > WALK_MAX_ENTRIES {
                return found;
            }
            let Ok(ft) = ent.file_type() else { continue };
            if !ft.is_dir() {
                continue;
            }
            let name = ent.file_name().to_string_lossy().into_owned();
            let child_rel = format!("{rel}/{name}");
            if let Ok(m) = ent.metadata() {
                if wanted.contains(&m.ino()) {
                    found.insert(m.ino(), child_rel.clone());
                }
            }
            stack.push((ent.path(), child_rel, depth + 1));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_finds_directories_by_inode() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("system.slice/nginx.service");
        std::fs::create_dir_all(&a).unwrap();
        let b = d
            .path()
            .join("kubepods/pod1/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
        std::fs::create_dir_all(&b).unwrap();
        let ia = std::fs::metadata(&a).unwrap().ino();
        let ib = std::fs::metadata(&b).unwrap().ino();
        let iroot = std::fs::metadata(d.path()).unwrap().ino();
        let r = WorkloadResolver::new(d.path().to_path_buf(), 16, None);
        let got = r.resolve_all([ia, ib, iroot, 0, 999_999_999]);
        assert_eq!(got[&ia].id, "nginx.service");
        assert_eq!(got[&ia].kind, WorkloadKind::SystemdUnit);
        assert_eq!(got[&ib].kind, WorkloadKind::Container);
        assert_eq!(got[&iroot].kind, WorkloadKind::Host);
        assert_eq!(got[&0].id, "host");
        assert_eq!(got[&999_999_999].id, UNKNOWN);
        assert_eq!(r.unresolved.get(), 1);
        // Cached: no second walk needed (and none allowed within the interval).
        let again = r.resolve_all([ia]);
        assert_eq!(again[&ia].id, "nginx.service");
        assert_eq!(r.walks.get(), 1);
    }

    #[test]
    fn cache_is_bounded_and_counts_evictions() {
        let d = tempfile::tempdir().unwrap();
        let mut inos = Vec::new();
        for i in 0..40 {
            let p = d.path().join(format!("w{i}"));
            std::fs::create_dir(&p).unwrap();
            inos.push(std::fs::metadata(&p).unwrap().ino());
        }
        let r = WorkloadResolver::new(d.path().to_path_buf(), 16, None);
        let got = r.resolve_all(inos.iter().copied());
        assert_eq!(got.len(), 40);
        assert!(r.cached_len() <= 16, "{}", r.cached_len());
        assert!(r.evictions.get() > 0);
    }

    struct Pods;
    impl PodLookup for Pods {
        fn pod_for_container(&self, id: &str) -> Option<PodRef> {
            (id.len() == 64).then(|| PodRef {
                namespace: "ns".into(),
                pod: "p".into(),
                container: "c".into(),
                labels: vec![],
            })
        }
    }

    #[test]
    fn pod_lookup_only_for_containers() {
        let r = WorkloadResolver::new(PathBuf::from("/nonexistent"), 16, Some(Arc::new(Pods)));
        let c = classify(
            "/kubepods/pod1/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        );
        assert_eq!(r.pod_for(&c).unwrap().pod, "p");
        assert!(r.pod_for(&classify("/system.slice/x.service")).is_none());
    }
}
