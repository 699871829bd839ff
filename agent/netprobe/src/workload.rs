//! Attribution: cgroup v2 id (from the socket, in the kernel) -> cgroup path -> workload.
//!
//! The kernel gives `sk->sk_cgrp_data.cgroup->kn->id` (or `bpf_skb_cgroup_id`), which
//! equals the inode number of the cgroup's directory in the cgroup2 mount, and is also the
//! cgroup's kernfs file handle. We open the directory by that handle
//! (`open_by_handle_at` with `FILEID_KERNFS`, as systemd and bpftool do; needs
//! CAP_DAC_READ_SEARCH) and read its path back from `/proc/self/fd`: one id, two system
//! calls, no matter how many cgroups exist. Without the capability we fall back to
//! walking the mount (at most once per [`WALK_MIN_INTERVAL`], bounded in depth and
//! entries). The path is classified with
//! [`nodescope_model::workload::classify_cgroup_path`]. Results live in a bounded cache;
//! evictions and unresolved ids are counted.

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
    /// The cgroup2 mount, opened once for `open_by_handle_at`; None when it cannot be
    /// opened, or after handles were refused (then only the walk is used).
    mount: Option<std::fs::File>,
}

/// `FILEID_KERNFS` (include/linux/exportfs.h): a kernfs node id (the cgroup id) as a file
/// handle.
const FILEID_KERNFS: i32 = 0xfe;

/// How opening a cgroup by its id went.
#[derive(Debug, PartialEq, Eq)]
enum ByHandle {
    /// The path relative to the mount.
    Found(String),
    /// No such cgroup (removed).
    Gone,
    /// Handles are not usable here (no CAP_DAC_READ_SEARCH, not a kernfs mount, ...).
    Unsupported,
}

/// cgroup2's `statfs` magic (`CGROUP2_SUPER_MAGIC`): only there are ids file handles.
fn is_cgroup2(f: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: fstatfs writes into a valid, zeroed statfs struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the descriptor is open for the call's duration.
    let rc = unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) };
    rc == 0 && st.f_type as u64 == 0x6367_7270
}

/// Opens cgroup `id` under the cgroup2 mount `mount` (opened from `root`) by its file
/// handle and returns its path relative to `root`.
fn open_by_id(mount: &std::fs::File, root: &Path, id: u64) -> ByHandle {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    #[repr(C)]
    struct Handle {
        bytes: libc::c_uint,
        kind: libc::c_int,
        id: [u8; 8],
    }
    let mut h = Handle {
        bytes: 8,
        kind: FILEID_KERNFS,
        id: id.to_ne_bytes(),
    };
    // SAFETY: `h` is a valid file_handle with 8 bytes of handle data, as handle_bytes
    // says; the kernel only reads it. The returned descriptor is owned below.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            (&mut h as *mut Handle).cast(),
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_DIRECTORY,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESTALE) | Some(libc::ENOENT) => ByHandle::Gone,
            _ => ByHandle::Unsupported,
        };
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let Ok(path) = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) else {
        return ByHandle::Unsupported;
    };
    match path.strip_prefix(root) {
        Ok(rel) if rel.as_os_str().is_empty() => ByHandle::Found("/".into()),
        Ok(rel) => ByHandle::Found(format!("/{}", rel.to_string_lossy())),
        // The mount is not where we think (a bind mount of a subtree): not usable.
        Err(_) => ByHandle::Unsupported,
    }
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
        let mount = std::fs::File::open(&root).ok().filter(is_cgroup2);
        WorkloadResolver {
            root,
            cap: cap.max(1),
            inner: Mutex::new(Inner {
                cache: HashMap::new(),
                last_walk: None,
                mount,
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
        let mut found: HashMap<u64, String> = HashMap::new();
        let mut gone: Vec<u64> = Vec::new();
        {
            let mut inner = self.inner.lock();
            if let Some(mount) = &inner.mount {
                let mut unsupported = false;
                for &id in &missing {
                    match open_by_id(mount, &self.root, id) {
                        ByHandle::Found(p) => {
                            found.insert(id, p);
                        }
                        ByHandle::Gone => gone.push(id),
                        ByHandle::Unsupported => {
                            unsupported = true;
                            break;
                        }
                    }
                }
                if unsupported {
                    tracing::debug!(root = %self.root.display(), "cgroup file handles unusable; walking the cgroup tree instead");
                    inner.mount = None;
                    found.clear();
                    gone.clear();
                }
            }
        }
        let rest: Vec<u64> = missing
            .iter()
            .copied()
            .filter(|id| !found.contains_key(id) && !gone.contains(id))
            .collect();
        if !rest.is_empty() {
            found.extend(self.walk_if_due(&rest));
        }
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

    /// True when ids are resolved by file handle (no walk needed).
    pub fn uses_handles(&self) -> bool {
        self.inner.lock().mount.is_some()
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

    /// Root-only: cgroups created after a resolution (within the walk interval) resolve
    /// at once by file handle, and a removed one is unknown.
    #[test]
    fn ids_resolve_by_file_handle_without_waiting_for_a_walk() {
        if !nodescope_testsupport::require_root(
            "workload::ids_resolve_by_file_handle_without_waiting_for_a_walk",
        ) {
            return;
        }
        let root = default_cgroup_root();
        let r = WorkloadResolver::new(root.clone(), 16, None);
        assert!(r.uses_handles(), "open_by_handle_at on {}", root.display());
        let mk = |n: &str| {
            let rel = format!("/nsnet-wl-{}-{n}", std::process::id());
            let dir = root.join(rel.trim_start_matches('/'));
            std::fs::create_dir(&dir).unwrap();
            let ino = std::fs::metadata(&dir).unwrap().ino();
            (rel, dir, ino)
        };
        let (rel_a, dir_a, a) = mk("a");
        assert_eq!(r.resolve_all([a])[&a].path, rel_a);
        let (rel_b, dir_b, b) = mk("b");
        let got = r.resolve_all([b]);
        assert_eq!(got[&b].path, rel_b, "resolved without a walk");
        assert_eq!(got[&b].id, rel_b);
        assert_eq!(r.walks.get(), 0);
        std::fs::remove_dir(&dir_b).unwrap();
        let (_, dir_c, c) = mk("c");
        std::fs::remove_dir(&dir_c).unwrap();
        assert_eq!(r.resolve_all([c])[&c].id, UNKNOWN);
        assert_eq!(r.resolve_all([1])[&1].kind, WorkloadKind::Host);
        std::fs::remove_dir(&dir_a).unwrap();
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
