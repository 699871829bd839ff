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
/// The off-CPU program (`tp_btf/sched_switch`), loaded and attached only while an
/// off-CPU or wall-clock profile runs.
pub const PROGRAM_OFFCPU: &str = "nodescope_offcpu";
/// Its hook.
pub const OFFCPU_HOOK: &str = "sched_switch";
/// The wake-up stamp program (`tp_btf/sched_wakeup`), attached with it.
pub const PROGRAM_OFFCPU_WAKEUP: &str = "nodescope_offcpu_wakeup";
/// Its hook.
pub const OFFCPU_WAKEUP_HOOK: &str = "sched_wakeup";
/// LRU map of followed tasks (tid -> [`OffCpuTask`]).
pub const MAP_OFFCPU_TASKS: &str = "offcpu_tasks";

pub const MAP_CONFIG: &str = "profile_config";
pub const MAP_FILTER_PIDS: &str = "profile_filter_pids";
pub const MAP_FILTER_CGROUPS: &str = "profile_filter_cgroups";
pub const MAP_SAMPLES: &str = "profile_samples";
pub const MAP_COUNTERS: &str = "profile_counters";

pub const MAX_KSTACK: usize = 127;
pub const MAX_USTACK: usize = 256;
pub const COMM_LEN: usize = 16;
pub const RINGBUF_BYTES: u32 = 4 << 20;
pub const FILTER_MAX_ENTRIES: u32 = 1024;
pub const SAMPLE_HDR_BYTES: usize = 56;

pub const FILTER_ALL: u32 = 0;
pub const FILTER_PIDS: u32 = 1;
pub const FILTER_CGROUPS: u32 = 2;
pub const FILTER_NONE: u32 = 3;

pub const CTR_SAMPLES: u32 = 0;
pub const CTR_LOST_RINGBUF: u32 = 1;
pub const CTR_KSTACK_ERROR: u32 = 2;
pub const CTR_USTACK_ERROR: u32 = 3;
pub const CTR_FILTERED: u32 = 4;
pub const CTR_DWARF: u32 = 5;
pub const CTR_OFFCPU_STARTS: u32 = 6;
pub const CTR_OFFCPU_ENDS: u32 = 7;
pub const CTR_OFFCPU_LOST: u32 = 8;
pub const CTR_OFFCPU_SKIPPED: u32 = 9;
pub const CTR_OFFCPU_MAP_FULL: u32 = 10;
pub const CTR_MAX: u32 = 11;

pub const OFFCPU_MAX_TASKS: u32 = 16384;
pub const OFFCPU_FLAG_START: u32 = 0x10000;
pub const OFFCPU_END_BYTES: usize = 40;
pub const OFFCPU_END_MAGIC: u32 = 0x6f66_6663;
pub const OFFCPU_STATE_PREEMPTED: u32 = 0x100;

/// `struct offcpu_task` (the value of `offcpu_tasks`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffCpuTask {
    pub start_ns: u64,
    pub wake_ns: u64,
    pub pid: u32,
    pub state: u32,
}

/// `struct offcpu_end`: written at switch-in of a followed task.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffCpuEnd {
    pub start_ns: u64,
    pub wake_ns: u64,
    pub end_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub state: u32,
    pub magic: u32,
}

const _: () = assert!(std::mem::size_of::<OffCpuTask>() == 24);
const _: () = assert!(std::mem::size_of::<OffCpuEnd>() == OFFCPU_END_BYTES);

// SAFETY: plain-old-data #[repr(C)] type; any bit pattern is a valid value.
unsafe impl aya::Pod for OffCpuTask {}

impl OffCpuEnd {
    /// Decodes an end record: exactly [`OFFCPU_END_BYTES`] with the magic, else `None`.
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() != OFFCPU_END_BYTES {
            return None;
        }
        let u64_at = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let e = OffCpuEnd {
            start_ns: u64_at(0),
            wake_ns: u64_at(8),
            end_ns: u64_at(16),
            pid: u32_at(24),
            tid: u32_at(28),
            state: u32_at(32),
            magic: u32_at(36),
        };
        (e.magic == OFFCPU_END_MAGIC).then_some(e)
    }
}

pub const MAP_UNWIND_PROCS: &str = "unwind_procs";
pub const MAP_UNWIND_TABLES: &str = "unwind_tables";
pub const MAP_UNWIND_ROWS: &str = "unwind_rows";

pub const UNWIND_MAX_MAPPINGS: usize = 128;
pub const UNWIND_MAX_PROCS: u32 = 4096;
pub const UNWIND_MAX_TABLES: u32 = 1024;
pub const UNWIND_MAX_ROWS: u32 = 2 << 20;

pub const UNWIND_MAPPING_FP: u32 = 0;
pub const UNWIND_MAPPING_CFI: u32 = 1;

pub const UNWIND_CFA_INVALID: u8 = 0;
pub const UNWIND_CFA_RSP: u8 = 1;
pub const UNWIND_CFA_RBP: u8 = 2;
pub const UNWIND_CFA_PLT: u8 = 3;
pub const UNWIND_CFA_DEREF_RSP: u8 = 4;
pub const UNWIND_CFA_SIGNAL: u8 = 5;
pub const UNWIND_CFA_END: u8 = 6;
pub const UNWIND_RBP_SAME: u8 = 0;
pub const UNWIND_RBP_CFA: u8 = 1;

pub const UNWIND_END_NONE: u32 = 0;
pub const UNWIND_END_ROOT: u32 = 1;
pub const UNWIND_END_NO_MAPPING: u32 = 2;
pub const UNWIND_END_READ: u32 = 3;
pub const UNWIND_END_DEPTH: u32 = 4;
pub const UNWIND_END_BAD_FRAME: u32 = 5;
pub const UNWIND_END_NO_PROC: u32 = 6;
pub const UNWIND_FLAG_DWARF: u32 = 0x100;

/// `struct unwind_row` (8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UnwindRow {
    pub pc: u32,
    pub cfa_off: i16,
    pub rbp_off: i8,
    pub kind: u8,
}

/// `struct unwind_table_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindTableInfo {
    pub first_row: u32,
    pub nrows: u32,
}

/// `struct unwind_mapping`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindMapping {
    pub start: u64,
    pub end: u64,
    pub bias: u64,
    pub table: u32,
    pub kind: u32,
}

/// `struct unwind_proc`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnwindProc {
    pub n: u32,
    pub _pad: u32,
    pub maps: [UnwindMapping; UNWIND_MAX_MAPPINGS],
}

impl Default for UnwindProc {
    fn default() -> Self {
        UnwindProc {
            n: 0,
            _pad: 0,
            maps: [UnwindMapping::default(); UNWIND_MAX_MAPPINGS],
        }
    }
}

const _: () = assert!(std::mem::size_of::<UnwindRow>() == 8);
const _: () = assert!(std::mem::size_of::<UnwindMapping>() == 32);
const _: () = assert!(std::mem::size_of::<UnwindProc>() == 8 + 32 * UNWIND_MAX_MAPPINGS);

// SAFETY: plain-old-data #[repr(C)] types; any bit pattern is a valid value.
unsafe impl aya::Pod for UnwindRow {}
// SAFETY: as above.
unsafe impl aya::Pod for UnwindTableInfo {}
// SAFETY: as above.
unsafe impl aya::Pod for UnwindProc {}

/// `struct profile_config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProfileConfig {
    pub filter_mode: u32,
    pub include_idle: u32,
    /// Off-CPU: follow 1 in N switch-outs (0 or 1: every one).
    pub offcpu_sample_ratio: u32,
    pub _pad: u32,
}

/// The fixed header of `struct profile_sample` (the ring-buffer record); `kernel_len`
/// kernel frames and then `user_len` user frames (u64 each, leaf first) follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleHeader {
    pub time_ns: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub cpu: u32,
    pub kernel_len: u16,
    pub user_len: u16,
    pub flags: u32,
    pub comm: [u8; COMM_LEN],
    pub _pad: u32,
}

/// A sample record decoded from the ring buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampleRecord {
    pub header: SampleHeader,
    pub kernel: Vec<u64>,
    pub user: Vec<u64>,
}

/// Why a ring-buffer record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("sample record of {len} bytes is shorter than its {need}-byte header")]
    Short { len: usize, need: usize },
    #[error(
        "sample record of {len} bytes announces {frames} frames ({kernel} kernel, {user} user)"
    )]
    Frames {
        len: usize,
        frames: usize,
        kernel: usize,
        user: usize,
    },
}

impl SampleHeader {
    /// The task's comm, up to the first NUL, lossily decoded.
    pub fn comm(&self) -> String {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        String::from_utf8_lossy(&self.comm[..end]).into_owned()
    }
}

impl SampleRecord {
    /// Decodes one ring-buffer record (never panics on malformed input).
    pub fn parse(b: &[u8]) -> Result<Self, RecordError> {
        if b.len() < SAMPLE_HDR_BYTES {
            return Err(RecordError::Short {
                len: b.len(),
                need: SAMPLE_HDR_BYTES,
            });
        }
        let u64_at = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u16_at = |o: usize| u16::from_ne_bytes(b[o..o + 2].try_into().expect("2 bytes"));
        let mut comm = [0u8; COMM_LEN];
        comm.copy_from_slice(&b[36..36 + COMM_LEN]);
        let header = SampleHeader {
            time_ns: u64_at(0),
            cgroup_id: u64_at(8),
            pid: u32_at(16),
            tid: u32_at(20),
            cpu: u32_at(24),
            kernel_len: u16_at(28),
            user_len: u16_at(30),
            flags: u32_at(32),
            comm,
            _pad: u32_at(52),
        };
        let (k, u) = (header.kernel_len as usize, header.user_len as usize);
        let need = SAMPLE_HDR_BYTES + (k + u) * 8;
        if k > MAX_KSTACK || u > MAX_USTACK || b.len() < need {
            return Err(RecordError::Frames {
                len: b.len(),
                frames: k + u,
                kernel: k,
                user: u,
            });
        }
        let ips: Vec<u64> = (0..k + u)
            .map(|i| u64_at(SAMPLE_HDR_BYTES + i * 8))
            .collect();
        Ok(SampleRecord {
            header,
            kernel: ips[..k].to_vec(),
            user: ips[k..].to_vec(),
        })
    }
}

const _: () = assert!(std::mem::size_of::<ProfileConfig>() == 16);
const _: () = assert!(std::mem::size_of::<SampleHeader>() == SAMPLE_HDR_BYTES);

// SAFETY: plain-old-data #[repr(C)] types without padding-sensitive invariants; any bit
// pattern is a valid value.
unsafe impl aya::Pod for ProfileConfig {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
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
        let dir = std::env::temp_dir().join(format!("nodescope-profile-h-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let src = dir.join("p.c");
        let bin = dir.join("p");
        std::fs::write(
            &src,
            r#"#include <stdio.h>
#include <stddef.h>
#include "profile.h"
#define O(f) offsetof(struct profile_sample, f)
int main(void) {
  printf("config %zu %zu %zu %zu\n", sizeof(struct profile_config), offsetof(struct profile_config, filter_mode), offsetof(struct profile_config, include_idle), offsetof(struct profile_config, offcpu_sample_ratio));
  printf("offcpu %zu %zu %zu %zu %zu %zu %zu %d %d %d %d %d %d %d %d %d %d\n", sizeof(struct offcpu_task), offsetof(struct offcpu_task, pid), offsetof(struct offcpu_task, state), sizeof(struct offcpu_end), offsetof(struct offcpu_end, end_ns), offsetof(struct offcpu_end, state), offsetof(struct offcpu_end, magic), OFFCPU_MAX_TASKS, OFFCPU_FLAG_START, OFFCPU_END_BYTES, OFFCPU_END_MAGIC, OFFCPU_STATE_PREEMPTED, PROFILE_CTR_OFFCPU_STARTS, PROFILE_CTR_OFFCPU_ENDS, PROFILE_CTR_OFFCPU_LOST, PROFILE_CTR_OFFCPU_SKIPPED, PROFILE_CTR_OFFCPU_MAP_FULL);
  printf("sample %zu %zu %zu %zu %zu %zu %zu %zu %zu %zu %zu\n", O(time_ns), O(cgroup_id), O(pid), O(tid), O(cpu), O(kernel_len), O(user_len), O(flags), O(comm), O(_pad), O(ips));
  printf("consts %d %d %d %d %d %d\n", PROFILE_MAX_KSTACK, PROFILE_MAX_USTACK, PROFILE_COMM_LEN, PROFILE_RINGBUF_BYTES, PROFILE_FILTER_MAX_ENTRIES, PROFILE_SAMPLE_HDR_BYTES);
  printf("filter %d %d %d %d\n", PROFILE_FILTER_ALL, PROFILE_FILTER_PIDS, PROFILE_FILTER_CGROUPS, PROFILE_FILTER_NONE);
  printf("ctr %d %d %d %d %d %d %d\n", PROFILE_CTR_SAMPLES, PROFILE_CTR_LOST_RINGBUF, PROFILE_CTR_KSTACK_ERROR, PROFILE_CTR_USTACK_ERROR, PROFILE_CTR_FILTERED, PROFILE_CTR_DWARF, PROFILE_CTR_MAX);
  printf("unwind %zu %zu %zu %zu %zu %zu %zu %zu %zu %zu %zu %zu %zu\n", sizeof(struct unwind_row), offsetof(struct unwind_row, cfa_off), offsetof(struct unwind_row, rbp_off), offsetof(struct unwind_row, kind), sizeof(struct unwind_table_info), sizeof(struct unwind_mapping), offsetof(struct unwind_mapping, bias), offsetof(struct unwind_mapping, table), offsetof(struct unwind_mapping, kind), sizeof(struct unwind_proc), offsetof(struct unwind_proc, maps), (size_t)UNWIND_MAX_ROWS, (size_t)UNWIND_MAX_TABLES);
  printf("uconst %d %d %d %d %d %d %d %d %d %d %d %d %d %d %d %d %d %d %d %d %d %d\n", UNWIND_MAX_MAPPINGS, UNWIND_MAX_PROCS, UNWIND_MAPPING_FP, UNWIND_MAPPING_CFI, UNWIND_CFA_INVALID, UNWIND_CFA_RSP, UNWIND_CFA_RBP, UNWIND_CFA_PLT, UNWIND_CFA_DEREF_RSP, UNWIND_CFA_SIGNAL, UNWIND_CFA_END, UNWIND_RBP_SAME, UNWIND_RBP_CFA, UNWIND_END_NONE, UNWIND_END_ROOT, UNWIND_END_NO_MAPPING, UNWIND_END_READ, UNWIND_END_DEPTH, UNWIND_END_BAD_FRAME, UNWIND_END_NO_PROC, UNWIND_FLAG_DWARF, 0);
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
            "config {} {} {} {}\noffcpu {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {}\nsample {} {} {} {} {} {} {} {} {} {} {}\nconsts {} {} {} {} {} {}\nfilter {} {} {} {}\nctr {} {} {} {} {} {} {}\nunwind {} {} {} {} {} {} {} {} {} {} {} {} {}\nuconst {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} 0\n",
            size_of::<ProfileConfig>(),
            offset_of!(ProfileConfig, filter_mode),
            offset_of!(ProfileConfig, include_idle),
            offset_of!(ProfileConfig, offcpu_sample_ratio),
            size_of::<OffCpuTask>(),
            offset_of!(OffCpuTask, pid),
            offset_of!(OffCpuTask, state),
            size_of::<OffCpuEnd>(),
            offset_of!(OffCpuEnd, end_ns),
            offset_of!(OffCpuEnd, state),
            offset_of!(OffCpuEnd, magic),
            OFFCPU_MAX_TASKS,
            OFFCPU_FLAG_START,
            OFFCPU_END_BYTES,
            OFFCPU_END_MAGIC,
            OFFCPU_STATE_PREEMPTED,
            CTR_OFFCPU_STARTS,
            CTR_OFFCPU_ENDS,
            CTR_OFFCPU_LOST,
            CTR_OFFCPU_SKIPPED,
            CTR_OFFCPU_MAP_FULL,
            offset_of!(SampleHeader, time_ns),
            offset_of!(SampleHeader, cgroup_id),
            offset_of!(SampleHeader, pid),
            offset_of!(SampleHeader, tid),
            offset_of!(SampleHeader, cpu),
            offset_of!(SampleHeader, kernel_len),
            offset_of!(SampleHeader, user_len),
            offset_of!(SampleHeader, flags),
            offset_of!(SampleHeader, comm),
            offset_of!(SampleHeader, _pad),
            size_of::<SampleHeader>(),
            MAX_KSTACK,
            MAX_USTACK,
            COMM_LEN,
            RINGBUF_BYTES,
            FILTER_MAX_ENTRIES,
            SAMPLE_HDR_BYTES,
            FILTER_ALL,
            FILTER_PIDS,
            FILTER_CGROUPS,
            FILTER_NONE,
            CTR_SAMPLES,
            CTR_LOST_RINGBUF,
            CTR_KSTACK_ERROR,
            CTR_USTACK_ERROR,
            CTR_FILTERED,
            CTR_DWARF,
            CTR_MAX,
            size_of::<UnwindRow>(),
            offset_of!(UnwindRow, cfa_off),
            offset_of!(UnwindRow, rbp_off),
            offset_of!(UnwindRow, kind),
            size_of::<UnwindTableInfo>(),
            size_of::<UnwindMapping>(),
            offset_of!(UnwindMapping, bias),
            offset_of!(UnwindMapping, table),
            offset_of!(UnwindMapping, kind),
            size_of::<UnwindProc>(),
            offset_of!(UnwindProc, maps),
            UNWIND_MAX_ROWS,
            UNWIND_MAX_TABLES,
            UNWIND_MAX_MAPPINGS,
            UNWIND_MAX_PROCS,
            UNWIND_MAPPING_FP,
            UNWIND_MAPPING_CFI,
            UNWIND_CFA_INVALID,
            UNWIND_CFA_RSP,
            UNWIND_CFA_RBP,
            UNWIND_CFA_PLT,
            UNWIND_CFA_DEREF_RSP,
            UNWIND_CFA_SIGNAL,
            UNWIND_CFA_END,
            UNWIND_RBP_SAME,
            UNWIND_RBP_CFA,
            UNWIND_END_NONE,
            UNWIND_END_ROOT,
            UNWIND_END_NO_MAPPING,
            UNWIND_END_READ,
            UNWIND_END_DEPTH,
            UNWIND_END_BAD_FRAME,
            UNWIND_END_NO_PROC,
            UNWIND_FLAG_DWARF,
        );
        assert_eq!(got, want);
    }

    fn record(k: &[u64], u: &[u64], comm: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&7u64.to_ne_bytes());
        b.extend_from_slice(&9u64.to_ne_bytes());
        for v in [11u32, 12, 1] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.extend_from_slice(&(k.len() as u16).to_ne_bytes());
        b.extend_from_slice(&(u.len() as u16).to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        let mut c = [0u8; COMM_LEN];
        c[..comm.len()].copy_from_slice(comm);
        b.extend_from_slice(&c);
        b.extend_from_slice(&0u32.to_ne_bytes());
        for ip in k.iter().chain(u) {
            b.extend_from_slice(&ip.to_ne_bytes());
        }
        b
    }

    #[test]
    fn parses_a_record() {
        let r = SampleRecord::parse(&record(&[1, 2], &[3, 4, 5], b"burn")).unwrap();
        assert_eq!(r.header.time_ns, 7);
        assert_eq!(r.header.cgroup_id, 9);
        assert_eq!((r.header.pid, r.header.tid, r.header.cpu), (11, 12, 1));
        assert_eq!(r.header.comm(), "burn");
        assert_eq!(r.kernel, vec![1, 2]);
        assert_eq!(r.user, vec![3, 4, 5]);
        let full = SampleHeader {
            comm: [b'x'; COMM_LEN],
            ..Default::default()
        };
        assert_eq!(full.comm().len(), COMM_LEN);
    }

    #[test]
    fn rejects_short_and_overlong_records() {
        let b = record(&[1], &[2, 3], b"x");
        assert!(matches!(
            SampleRecord::parse(&b[..40]),
            Err(RecordError::Short { .. })
        ));
        assert!(matches!(
            SampleRecord::parse(&b[..b.len() - 8]),
            Err(RecordError::Frames { .. })
        ));
    }

    #[test]
    fn parses_an_offcpu_end_record() {
        let mut b = Vec::new();
        for v in [100u64, 200, 250] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        for v in [7u32, 8, OFFCPU_STATE_PREEMPTED, OFFCPU_END_MAGIC] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        let e = OffCpuEnd::parse(&b).unwrap();
        assert_eq!((e.start_ns, e.wake_ns, e.end_ns), (100, 200, 250));
        assert_eq!((e.pid, e.tid), (7, 8));
        assert_eq!(e.state, OFFCPU_STATE_PREEMPTED);
        assert!(OffCpuEnd::parse(&b[..39]).is_none());
        b[36] ^= 1;
        assert!(OffCpuEnd::parse(&b).is_none(), "wrong magic");
    }

    proptest! {
        #[test]
        fn parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = SampleRecord::parse(&b);
            let _ = OffCpuEnd::parse(&b);
        }
    }
}
