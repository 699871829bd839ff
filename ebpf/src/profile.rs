//! Profiler object (`ebpf/c/profile.bpf.c`) and the Rust mirrors of the structs in
//! `ebpf/include/profile.h`. Every type here is `#[repr(C)]` with a compile-time size
//! assert; `mirror_matches_c_header` compiles the header with the host C compiler and
//! compares every size and field offset, so a header change without a mirror change fails.

/// The compiled CO-RE object (committed; rebuilt by `cargo xtask build-ebpf`).
pub static PROFILE_OBJ: &[u8] = aya::include_bytes_aligned!("../objects/profile.bpf.o");

/// Object name used in load errors and status.
pub const OBJECT_NAME: &str = "profile";
/// The perf_event program.
pub const PROGRAM: &str = "nodescope_profile";

pub const MAP_CONFIG: &str = "profile_config";
pub const MAP_FILTER_PIDS: &str = "profile_filter_pids";
pub const MAP_FILTER_CGROUPS: &str = "profile_filter_cgroups";
pub const MAP_COUNTS: &str = "profile_counts";
pub const MAP_STACKS: &str = "profile_stacks";
pub const MAP_COUNTERS: &str = "profile_counters";

pub const MAX_STACK_DEPTH: usize = 127;
pub const COMM_LEN: usize = 16;
pub const COUNTS_MAX_ENTRIES: u32 = 16384;
pub const STACKS_MAX_ENTRIES: u32 = 8192;
pub const FILTER_MAX_ENTRIES: u32 = 1024;

pub const FILTER_ALL: u32 = 0;
pub const FILTER_PIDS: u32 = 1;
pub const FILTER_CGROUPS: u32 = 2;
pub const FILTER_NONE: u32 = 3;

pub const CTR_SAMPLES: u32 = 0;
pub const CTR_LOST_MAP_FULL: u32 = 1;
pub const CTR_KSTACK_COLLISION: u32 = 2;
pub const CTR_USTACK_COLLISION: u32 = 3;
pub const CTR_KSTACK_ERROR: u32 = 4;
pub const CTR_USTACK_ERROR: u32 = 5;
pub const CTR_FILTERED: u32 = 6;
pub const CTR_MAX: u32 = 7;

/// `struct profile_config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProfileConfig {
    pub filter_mode: u32,
    pub include_idle: u32,
}

/// `struct profile_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProfileKey {
    pub pid: u32,
    pub tid: u32,
    pub cgroup_id: u64,
    pub kernel_stack_id: i32,
    pub user_stack_id: i32,
}

/// `struct profile_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProfileValue {
    pub count: u64,
    pub comm: [u8; COMM_LEN],
}

impl ProfileValue {
    /// The task's comm, up to the first NUL, lossily decoded.
    pub fn comm(&self) -> String {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        String::from_utf8_lossy(&self.comm[..end]).into_owned()
    }
}

/// One stack-trace map value: `PROFILE_MAX_STACK_DEPTH` instruction pointers, zero-padded.
pub type StackTrace = [u64; MAX_STACK_DEPTH];

const _: () = assert!(std::mem::size_of::<ProfileConfig>() == 8);
const _: () = assert!(std::mem::size_of::<ProfileKey>() == 24);
const _: () = assert!(std::mem::size_of::<ProfileValue>() == 24);
const _: () = assert!(std::mem::size_of::<StackTrace>() == 1016);

// SAFETY: plain-old-data #[repr(C)] types without padding-sensitive invariants; any bit
// pattern is a valid value.
unsafe impl aya::Pod for ProfileConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for ProfileKey {}
// SAFETY: as above.
unsafe impl aya::Pod for ProfileValue {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};
    use std::process::Command;

    #[test]
    fn object_is_embedded_elf() {
        assert!(PROFILE_OBJ.len() > 1000);
        assert_eq!(&PROFILE_OBJ[..4], b"\x7fELF");
    }

    /// Compiles a tiny C program that includes the header and prints every size and
    /// offset; compares them with the Rust mirror. Fails if header and mirror diverge.
    #[test]
    fn mirror_matches_c_header() {
        let Some(cc) =
            nodescope_testsupport::require_tool("profile::mirror_matches_c_header", "cc", &[])
        else {
            return;
        };
        // (no tempfile dev-dependency in this crate: a per-process directory, removed below)
        let dir = std::env::temp_dir().join(format!("nodescope-profile-h-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let src = dir.join("p.c");
        let bin = dir.join("p");
        std::fs::write(
            &src,
            r#"#include <stdio.h>
#include <stddef.h>
#include "profile.h"
int main(void) {
  printf("config %zu %zu %zu\n", sizeof(struct profile_config), offsetof(struct profile_config, filter_mode), offsetof(struct profile_config, include_idle));
  printf("key %zu %zu %zu %zu %zu %zu\n", sizeof(struct profile_key), offsetof(struct profile_key, pid), offsetof(struct profile_key, tid), offsetof(struct profile_key, cgroup_id), offsetof(struct profile_key, kernel_stack_id), offsetof(struct profile_key, user_stack_id));
  printf("value %zu %zu %zu\n", sizeof(struct profile_value), offsetof(struct profile_value, count), offsetof(struct profile_value, comm));
  printf("consts %d %d %d %d %d\n", PROFILE_MAX_STACK_DEPTH, PROFILE_COMM_LEN, PROFILE_COUNTS_MAX_ENTRIES, PROFILE_STACKS_MAX_ENTRIES, PROFILE_FILTER_MAX_ENTRIES);
  printf("filter %d %d %d %d\n", PROFILE_FILTER_ALL, PROFILE_FILTER_PIDS, PROFILE_FILTER_CGROUPS, PROFILE_FILTER_NONE);
  printf("ctr %d %d %d %d %d %d %d %d\n", PROFILE_CTR_SAMPLES, PROFILE_CTR_LOST_MAP_FULL, PROFILE_CTR_KSTACK_COLLISION, PROFILE_CTR_USTACK_COLLISION, PROFILE_CTR_KSTACK_ERROR, PROFILE_CTR_USTACK_ERROR, PROFILE_CTR_FILTERED, PROFILE_CTR_MAX);
  return 0;
}
"#,
        )
        .expect("write C source");
        let include = concat!(env!("CARGO_MANIFEST_DIR"), "/include");
        let st = Command::new(cc)
            .arg("-I")
            .arg(include)
            .arg(&src)
            .arg("-o")
            .arg(&bin)
            .status()
            .expect("run cc");
        assert!(st.success(), "cc failed");
        let out = Command::new(&bin).output().expect("run probe");
        let _ = std::fs::remove_dir_all(&dir);
        let got = String::from_utf8(out.stdout).expect("utf8");
        let want = format!(
            "config {} {} {}\nkey {} {} {} {} {} {}\nvalue {} {} {}\nconsts {} {} {} {} {}\nfilter {} {} {} {}\nctr {} {} {} {} {} {} {} {}\n",
            size_of::<ProfileConfig>(),
            offset_of!(ProfileConfig, filter_mode),
            offset_of!(ProfileConfig, include_idle),
            size_of::<ProfileKey>(),
            offset_of!(ProfileKey, pid),
            offset_of!(ProfileKey, tid),
            offset_of!(ProfileKey, cgroup_id),
            offset_of!(ProfileKey, kernel_stack_id),
            offset_of!(ProfileKey, user_stack_id),
            size_of::<ProfileValue>(),
            offset_of!(ProfileValue, count),
            offset_of!(ProfileValue, comm),
            MAX_STACK_DEPTH,
            COMM_LEN,
            COUNTS_MAX_ENTRIES,
            STACKS_MAX_ENTRIES,
            FILTER_MAX_ENTRIES,
            FILTER_ALL,
            FILTER_PIDS,
            FILTER_CGROUPS,
            FILTER_NONE,
            CTR_SAMPLES,
            CTR_LOST_MAP_FULL,
            CTR_KSTACK_COLLISION,
            CTR_USTACK_COLLISION,
            CTR_KSTACK_ERROR,
            CTR_USTACK_ERROR,
            CTR_FILTERED,
            CTR_MAX,
        );
        assert_eq!(got, want);
    }

    #[test]
    fn comm_stops_at_nul() {
        let mut v = ProfileValue::default();
        v.comm[..4].copy_from_slice(b"burn");
        assert_eq!(v.comm(), "burn");
        v.comm = [b'x'; COMM_LEN];
        assert_eq!(v.comm().len(), COMM_LEN);
    }
}
