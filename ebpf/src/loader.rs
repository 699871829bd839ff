//! Loading helpers shared by every nodescope eBPF program (network probes, profiler).
//!
//! * [`ensure_tracefs`] / [`ensure_bpffs`] find (or, when permitted, mount) the kernel
//!   filesystems some attach types need. Raw tracepoints and perf_event programs need
//!   neither; classic tracepoints need tracefs for the tracepoint id.
//! * [`load`] parses a committed CO-RE object, relocates it against the running kernel's
//!   BTF (`/sys/kernel/btf/vmlinux`) and creates its maps. Programs are loaded (verified)
//!   one by one ([`load_btf_tracepoint`], or [`program_as`] then the program type's own
//!   load), so one program refused by the verifier does not take the others down.
//! * Every failure is a [`LoadError`] naming the object/program/hook and the reason; the
//!   verifier log is kept (bounded to [`MAX_VERIFIER_LOG`] bytes, tail kept) so the
//!   status endpoint can show it.
//!
//! Architecture invariant: nothing here panics on a missing kernel feature; callers turn
//! a `LoadError` into "probe down with reason" and carry on.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use aya::programs::ProgramError;
use aya::{Btf, Ebpf, EbpfError, EbpfLoader};

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// Mount points aya (and libbpf) search for tracefs, in order.
pub const TRACEFS_PATHS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
/// The conventional bpffs mount point.
pub const BPFFS_PATH: &str = "/sys/fs/bpf";
/// Verifier logs can be megabytes; we keep at most this many bytes (the tail, where the
/// kernel states the reason).
pub const MAX_VERIFIER_LOG: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The caller lacks CAP_BPF / CAP_PERFMON (or CAP_SYS_ADMIN to mount a filesystem).
    #[error("{what}: not permitted ({reason}); {}", perm_hint(.what))]
    NotPermitted { what: String, reason: String },
    /// The kernel exposes no BTF, so CO-RE relocation is impossible.
    #[error("kernel BTF unavailable at {path}: {reason} (needs CONFIG_DEBUG_INFO_BTF=y)")]
    NoBtf { path: PathBuf, reason: String },
    #[error("tracefs is not mounted and could not be mounted at {path}: {reason}")]
    TracefsMissing { path: PathBuf, reason: String },
    #[error("bpffs is not mounted and could not be mounted at {path}: {reason}")]
    BpffsMissing { path: PathBuf, reason: String },
    /// Parsing, relocating or map creation failed for the whole object.
    #[error("loading eBPF object {object}: {reason}")]
    Load { object: String, reason: String },
    #[error("eBPF object {object} has no program named {program}")]
    ProgramMissing { object: String, program: String },
    /// The verifier refused a program; `log` is the (tail of the) verifier log.
    #[error("verifier rejected program {program}: {reason}\n{log}")]
    Verifier {
        program: String,
        reason: String,
        log: String,
    },
    #[error("attaching program {program} to {hook}: {reason}")]
    Attach {
        program: String,
        hook: String,
        reason: String,
    },
    #[error("eBPF object {object} has no map named {map}")]
    MapMissing { object: String, map: String },
    #[error("map {map} of eBPF object {object}: {reason}")]
    Map {
        object: String,
        map: String,
        reason: String,
    },
}

impl LoadError {
    /// A short, stable classification for the `reason` detail in the status endpoint.
    pub fn kind(&self) -> &'static str {
        match self {
            LoadError::NotPermitted { .. } => "not_permitted",
            LoadError::NoBtf { .. } => "no_btf",
            LoadError::TracefsMissing { .. } => "tracefs_missing",
            LoadError::BpffsMissing { .. } => "bpffs_missing",
            LoadError::Load { .. } => "load",
            LoadError::ProgramMissing { .. } => "program_missing",
            LoadError::Verifier { .. } => "verifier",
            LoadError::Attach { .. } => "attach",
            LoadError::MapMissing { .. } => "map_missing",
            LoadError::Map { .. } => "map",
        }
    }

    /// The verifier log, when the kernel refused a program.
    pub fn verifier_log(&self) -> Option<&str> {
        match self {
            LoadError::Verifier { log, .. } => Some(log),
            _ => None,
        }
    }
}

fn is_perm(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

/// Reads `/proc/self/mounts` and returns the mount points of filesystems of type `fstype`.
pub fn mounts_of_type(fstype: &str) -> Vec<PathBuf> {
    let Ok(s) = std::fs::read_to_string("/proc/self/mounts") else {
        return Vec::new();
    };
    parse_mounts(&s, fstype)
}

/// Parses `/proc/mounts` content; mount points are octal-escaped (`\040` for space).
pub fn parse_mounts(content: &str, fstype: &str) -> Vec<PathBuf> {
    content
        .lines()
        .filter_map(|l| {
            let mut it = l.split_ascii_whitespace();
            let (_src, dir, ty) = (it.next()?, it.next()?, it.next()?);
            (ty == fstype).then(|| PathBuf::from(unescape_mount(dir)))
        })
        .collect()
}

fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = (oct[0] - b'0') as u32 * 64
                    + (oct[1] - b'0') as u32 * 8
                    + (oct[2] - b'0') as u32;
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mount_fs(fstype: &str, target: &Path) -> io::Result<()> {
    std::fs::create_dir_all(target).or_else(|e| {
        // /sys/kernel/tracing exists as an empty directory on most kernels; creating
        // directories in sysfs is refused, which is fine when it already exists.
        if target.is_dir() {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    let src = CString::new(fstype).map_err(io::Error::other)?;
    let tgt = CString::new(target.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call; data is null.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            src.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn dir_non_empty(p: &Path) -> bool {
    std::fs::read_dir(p)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

/// Finds a mounted tracefs at one of [`TRACEFS_PATHS`] (the places aya looks), or mounts
/// one at `/sys/kernel/tracing` when permitted.
///
/// Call this before aya attaches any classic tracepoint: aya caches its tracefs lookup
/// for the process lifetime on first use.
pub fn ensure_tracefs() -> Result<PathBuf, LoadError> {
    let mounted = mounts_of_type("tracefs");
    for p in TRACEFS_PATHS {
        let p = Path::new(p);
        if mounted.iter().any(|m| m == p) && dir_non_empty(p) {
            return Ok(p.to_path_buf());
        }
    }
    mount_or_explain(
        "tracefs",
        PathBuf::from(TRACEFS_PATHS[0]),
        |path, reason| LoadError::TracefsMissing { path, reason },
    )
}

/// What to grant for a refusal: loading and attaching need CAP_BPF and CAP_PERFMON (the
/// `full` overlay's set; kernel 5.8 or later), never CAP_SYS_ADMIN; only mounting tracefs
/// or bpffs ourselves does, and mounting it from the host avoids that.
fn perm_hint(what: &str) -> &'static str {
    if what.starts_with("mounting") {
        "mount it on the host and into the container (deploy/kubernetes/overlays/full mounts \
         /sys/kernel/tracing), or run as root"
    } else {
        "grant CAP_BPF and CAP_PERFMON (as deploy/kubernetes/overlays/full does), or run as root"
    }
}

/// Mounts `fstype` at `target`; a refusal for lack of privilege is `NotPermitted`, any
/// other failure is `missing(target, reason)`.
fn mount_or_explain(
    fstype: &str,
    target: PathBuf,
    missing: impl FnOnce(PathBuf, String) -> LoadError,
) -> Result<PathBuf, LoadError> {
    match mount_fs(fstype, &target) {
        Ok(()) => {
            tracing::info!(path = %target.display(), fstype, "mounted");
            Ok(target)
        }
        Err(e) if is_perm(&e) => Err(LoadError::NotPermitted {
            what: format!("mounting {fstype} at {}", target.display()),
            reason: e.to_string(),
        }),
        Err(e) => Err(missing(target, e.to_string())),
    }
}

/// Finds a mounted bpffs at `/sys/fs/bpf` (or anywhere), or mounts it there when permitted.
/// Only needed by code that pins maps or links.
pub fn ensure_bpffs() -> Result<PathBuf, LoadError> {
    let mounted = mounts_of_type("bpf");
    if let Some(p) = mounted
        .iter()
        .find(|m| m.as_path() == Path::new(BPFFS_PATH))
    {
        return Ok(p.clone());
    }
    if let Some(p) = mounted.into_iter().next() {
        return Ok(p);
    }
    mount_or_explain("bpf", PathBuf::from(BPFFS_PATH), |path, reason| {
        LoadError::BpffsMissing { path, reason }
    })
}

/// Lifts RLIMIT_MEMLOCK to infinity. Kernels >= 5.11 account BPF memory to the memory
/// cgroup instead, so this is harmless there; on older kernels map creation needs it.
/// Failure is logged, never fatal.
pub fn raise_memlock_rlimit() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid, initialised rlimit struct.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "could not raise RLIMIT_MEMLOCK");
    }
}

/// Keeps the tail of a verifier log, at most [`MAX_VERIFIER_LOG`] bytes, on a char boundary.
pub fn truncate_log(log: &str) -> String {
    if log.len() <= MAX_VERIFIER_LOG {
        return log.to_string();
    }
    let mut start = log.len() - MAX_VERIFIER_LOG;
    while !log.is_char_boundary(start) {
        start += 1;
    }
    format!("[... {} bytes elided ...]\n{}", start, &log[start..])
}

fn ebpf_error(object: &str, e: EbpfError) -> LoadError {
    match e {
        EbpfError::MapError(aya::maps::MapError::CreateError {
            name,
            io_error,
            code: _,
        }) if is_perm(&io_error) => LoadError::NotPermitted {
            what: format!("creating map {name} of eBPF object {object}"),
            reason: io_error.to_string(),
        },
        EbpfError::ProgramError(p) => program_error(object, p),
        EbpfError::BtfError(b) => {
            let msg = b.to_string();
            if msg.contains("EPERM") || msg.contains("Operation not permitted") {
                LoadError::NotPermitted {
                    what: format!("loading BTF of eBPF object {object}"),
                    reason: msg,
                }
            } else {
                LoadError::Load {
                    object: object.into(),
                    reason: format!("BTF: {msg}"),
                }
            }
        }
        other => {
            // Include the source chain: aya's relocation errors keep the detail there.
            let mut reason = other.to_string();
            let mut src = std::error::Error::source(&other);
            while let Some(s) = src {
                reason.push_str(": ");
                reason.push_str(&s.to_string());
                src = s.source();
            }
            LoadError::Load {
                object: object.into(),
                reason,
            }
        }
    }
}

/// Converts an aya program error (load or verify) into a [`LoadError`] naming `program`,
/// keeping the verifier log.
pub fn program_error(program: &str, e: ProgramError) -> LoadError {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            if is_perm(&io_error) && verifier_log.to_string().trim().is_empty() {
                LoadError::NotPermitted {
                    what: format!("loading program {program}"),
                    reason: io_error.to_string(),
                }
            } else {
                LoadError::Verifier {
                    program: program.into(),
                    reason: io_error.to_string(),
                    log: truncate_log(&verifier_log.to_string()),
                }
            }
        }
        ProgramError::SyscallError(s) if is_perm(&s.io_error) => LoadError::NotPermitted {
            what: format!("program {program}: {}", s.call),
            reason: s.io_error.to_string(),
        },
        other => LoadError::Load {
            object: program.into(),
            reason: other.to_string(),
        },
    }
}

fn attach_error(program: &str, hook: &str, e: ProgramError) -> LoadError {
    let reason = match &e {
        ProgramError::SyscallError(s) => {
            if is_perm(&s.io_error) {
                return LoadError::NotPermitted {
                    what: format!("attaching {program} to {hook}"),
                    reason: s.io_error.to_string(),
                };
            }
            if s.io_error.raw_os_error() == Some(libc::ENOENT) {
                format!(
                    "{}: {} (hook does not exist on this kernel)",
                    s.call, s.io_error
                )
            } else {
                format!("{}: {}", s.call, s.io_error)
            }
        }
        other => other.to_string(),
    };
    LoadError::Attach {
        program: program.into(),
        hook: hook.into(),
        reason,
    }
}

/// Checks that kernel BTF is present and parses it.
pub fn kernel_btf() -> Result<Btf, LoadError> {
    let path = PathBuf::from(VMLINUX_BTF);
    if !path.exists() {
        return Err(LoadError::NoBtf {
            path,
            reason: "file does not exist".into(),
        });
    }
    Btf::from_sys_fs().map_err(|e| match e {
        aya::BtfError::FileError { error, .. } if is_perm(&error) => LoadError::NotPermitted {
            what: format!("reading {VMLINUX_BTF}"),
            reason: error.to_string(),
        },
        other => LoadError::NoBtf {
            path,
            reason: other.to_string(),
        },
    })
}

/// Parses `bytes` (a CO-RE object), relocates it against the kernel's BTF and creates its
/// maps. Programs are not loaded yet: load each one on its own (see [`program_as`]) so
/// each fails (or works) on its own.
pub fn load(object_name: &str, bytes: &[u8]) -> Result<Ebpf, LoadError> {
    let btf = kernel_btf()?;
    load_object(object_name, bytes, &LoadOptions::default(), &btf, false)
}

/// Per-load overrides: map sizes (configurable bounds) and `volatile const` globals.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions<'a> {
    /// `(map name, max_entries)`.
    pub max_entries: &'a [(&'a str, u32)],
    /// `(global name, value)` for `volatile const __u64` tunables in `.rodata`.
    pub globals_u64: &'a [(&'a str, u64)],
}

/// Parses, relocates against `btf` and creates the maps, with `opts` applied;
/// `allow_unsupported_maps` admits map types aya has no typed wrapper for.
fn load_object(
    object_name: &str,
    bytes: &[u8],
    opts: &LoadOptions<'_>,
    btf: &Btf,
    allow_unsupported_maps: bool,
) -> Result<Ebpf, LoadError> {
    raise_memlock_rlimit();
    let mut loader = EbpfLoader::new();
    loader.btf(Some(btf));
    if allow_unsupported_maps {
        loader.allow_unsupported_maps();
    }
    for (name, n) in opts.max_entries {
        loader.set_max_entries(name, *n);
    }
    for (name, v) in opts.globals_u64 {
        loader.set_global(name, v, true);
    }
    loader.load(bytes).map_err(|e| ebpf_error(object_name, e))
}

fn valid_hook(program: &str, hook: &str) -> Result<(), LoadError> {
    if hook.is_empty() || hook.contains('\0') || hook.len() > 128 {
        return Err(LoadError::Attach {
            program: program.into(),
            hook: hook.escape_debug().to_string(),
            reason: "invalid hook name".into(),
        });
    }
    Ok(())
}

/// The program `program` of `object` as its concrete type `T` (`BtfTracePoint`,
/// `PerfEvent`, ...), or an error naming what is missing or mismatched.
pub fn program_as<'a, T>(
    ebpf: &'a mut Ebpf,
    object: &str,
    program: &str,
) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(program)
        .ok_or_else(|| LoadError::ProgramMissing {
            object: object.into(),
            program: program.into(),
        })?
        .try_into()
        .map_err(|e: ProgramError| program_error(program, e))
}

/// Takes a map out of the object, or names the missing map.
pub fn take_map(ebpf: &mut Ebpf, object: &str, map: &str) -> Result<aya::maps::Map, LoadError> {
    ebpf.take_map(map).ok_or_else(|| LoadError::MapMissing {
        object: object.into(),
        map: map.into(),
    })
}

/// Like [`load`], with map sizes and tunables overridden, an already parsed kernel BTF
/// (parse it once with [`kernel_btf`] and reuse it for [`load_btf_tracepoint`]), and map
/// types that aya has no typed wrapper for (e.g. `BPF_MAP_TYPE_SK_STORAGE`, used only
/// from BPF) allowed.
pub fn load_with_btf(
    object_name: &str,
    bytes: &[u8],
    opts: &LoadOptions<'_>,
    btf: &Btf,
) -> Result<Ebpf, LoadError> {
    load_object(object_name, bytes, opts, btf, true)
}

/// Loads (verifies) the BTF-typed raw tracepoint program `program` (`SEC("tp_btf/...")`)
/// against the tracepoint `hook` and attaches it. Needs kernel BTF, no tracefs. A hook
/// that does not exist is an [`LoadError::Attach`] naming it.
pub fn load_btf_tracepoint(
    ebpf: &mut Ebpf,
    object: &str,
    program: &str,
    hook: &str,
    btf: &Btf,
) -> Result<(), LoadError> {
    valid_hook(program, hook)?;
    let prog: &mut aya::programs::BtfTracePoint = program_as(ebpf, object, program)?;
    prog.load(hook, btf).map_err(|e| match e {
        ProgramError::Btf(b) => LoadError::Attach {
            program: program.into(),
            hook: hook.into(),
            reason: format!("{b} (hook does not exist on this kernel)"),
        },
        other => program_error(program, other),
    })?;
    prog.attach().map_err(|e| attach_error(program, hook, e))?;
    Ok(())
}

/// The direction a `cgroup_skb` program filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupSkbDirection {
    Ingress,
    Egress,
}

/// Loads (verifies) the `cgroup_skb` program `program` and attaches it to the cgroup v2
/// directory `cgroup` (normally the root: every socket of every workload), through a BPF
/// link (multi-attach semantics), so programs others attached to the same cgroup or below
/// keep running. A missing or unopenable directory is an [`LoadError::Attach`] naming it.
pub fn load_cgroup_skb(
    ebpf: &mut Ebpf,
    object: &str,
    program: &str,
    cgroup: &Path,
    direction: CgroupSkbDirection,
) -> Result<(), LoadError> {
    use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType};
    let hook = format!(
        "cgroup_skb/{} on {}",
        match direction {
            CgroupSkbDirection::Ingress => "ingress",
            CgroupSkbDirection::Egress => "egress",
        },
        cgroup.display()
    );
    let dir = std::fs::File::open(cgroup).map_err(|e| {
        if is_perm(&e) {
            LoadError::NotPermitted {
                what: format!("opening cgroup {}", cgroup.display()),
                reason: e.to_string(),
            }
        } else {
            LoadError::Attach {
                program: program.into(),
                hook: hook.clone(),
                reason: format!("opening the cgroup directory: {e}"),
            }
        }
    })?;
    let prog: &mut CgroupSkb = program_as(ebpf, object, program)?;
    prog.load().map_err(|e| program_error(program, e))?;
    let ty = match direction {
        CgroupSkbDirection::Ingress => CgroupSkbAttachType::Ingress,
        CgroupSkbDirection::Egress => CgroupSkbAttachType::Egress,
    };
    // A BPF link (kernel >= 5.7, which aya uses then) is always attached as with
    // BPF_F_ALLOW_MULTI; the kernel refuses explicit flags on link creation, so Single (0).
    prog.attach(dir, ty, CgroupAttachMode::Single)
        .map_err(|e| attach_error(program, &hook, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_errors_name_the_capabilities_that_suffice() {
        let e = LoadError::NotPermitted {
            what: "loading program tcp_probe".into(),
            reason: "Operation not permitted (os error 1)".into(),
        }
        .to_string();
        assert!(e.contains("CAP_BPF and CAP_PERFMON"), "{e}");
        assert!(!e.contains("SYS_ADMIN"), "{e}");
        let e = LoadError::NotPermitted {
            what: "mounting tracefs at /sys/kernel/tracing".into(),
            reason: "Operation not permitted (os error 1)".into(),
        }
        .to_string();
        assert!(e.contains("mount it on the host"), "{e}");
    }
    use proptest::prelude::*;

    #[test]
    fn parses_mounts() {
        let m = "tracefs /sys/kernel/tracing tracefs rw,nosuid 0 0\n\
                 cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n\
                 bpf /my\\040bpf bpf rw 0 0\n";
        assert_eq!(
            parse_mounts(m, "tracefs"),
            vec![PathBuf::from("/sys/kernel/tracing")]
        );
        assert_eq!(parse_mounts(m, "bpf"), vec![PathBuf::from("/my bpf")]);
        assert!(parse_mounts(m, "debugfs").is_empty());
    }

    #[test]
    fn truncates_log_tail() {
        let long = "x".repeat(MAX_VERIFIER_LOG * 2) + "REASON";
        let t = truncate_log(&long);
        assert!(t.ends_with("REASON"));
        assert!(t.len() < MAX_VERIFIER_LOG + 64);
        assert_eq!(truncate_log("short"), "short");
    }

    #[test]
    fn bad_hook_names_are_errors_not_panics() {
        assert!(valid_hook("p", "a\0b").is_err());
        assert!(valid_hook("p", "").is_err());
        assert!(valid_hook("p", "inet_sock_set_state").is_ok());
    }

    proptest! {
        #[test]
        fn mount_parser_never_panics(s in "\\PC{0,200}") {
            let _ = parse_mounts(&s, "tracefs");
            let _ = unescape_mount(&s);
        }
        #[test]
        fn truncate_never_panics(s in "\\PC{0,100}") {
            let _ = truncate_log(&s);
        }
    }

    /// Root-only: the loader finds or mounts tracefs, and kernel BTF parses.
    #[test]
    fn tracefs_and_btf_on_this_kernel() {
        if !nodescope_testsupport::require_root("loader::tracefs_and_btf_on_this_kernel") {
            return;
        }
        let p = ensure_tracefs().expect("tracefs");
        assert!(p.join("events").is_dir(), "{} has no events/", p.display());
        kernel_btf().expect("kernel BTF");
    }
}
