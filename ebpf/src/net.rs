//! Network probe object (`ebpf/c/net.bpf.c`) and the Rust mirror of `ebpf/include/net.h`.
//!
//! Every struct here is `#[repr(C)]` with the exact layout of its C counterpart; sizes are
//! asserted at compile time and `tests::layout_matches_c_header` compiles the header with
//! the host C compiler and compares every `sizeof` / `offsetof` and histogram bound.

/// The compiled CO-RE object (committed; rebuilt by `cargo xtask build-ebpf`).
pub static NET_OBJ: &[u8] = aya::include_bytes_aligned!("../objects/net.bpf.o");

/// Object name used in error messages and status.
pub const NET_OBJ_NAME: &str = "net.bpf.o";

/// `nodescope_tcp_connect_duration_seconds` bucket bounds, nanoseconds (C: NS_CONNECT_BOUNDS_NS).
pub const CONNECT_BOUNDS_NS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_000_000_000,
    3_500_000_000,
    7_000_000_000,
];
/// `nodescope_tcp_rtt_seconds` bucket bounds, microseconds (C: NS_RTT_BOUNDS_US).
pub const RTT_BOUNDS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];
/// `nodescope_tcp_connection_duration_seconds` bucket bounds, nanoseconds.
pub const DURATION_BOUNDS_NS: [u64; 9] = [
    1_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
    10_000_000_000,
    60_000_000_000,
    300_000_000_000,
    1_800_000_000_000,
    3_600_000_000_000,
];

pub const ERR_REFUSED: usize = 0;
pub const ERR_TIMEOUT: usize = 1;
pub const ERR_RESET: usize = 2;
pub const ERR_UNREACHABLE: usize = 3;
pub const ERR_OTHER: usize = 4;
pub const ERR_SLOTS: usize = 8;
pub const RST_REASON_SLOTS: usize = 32;
pub const TCP_STATE_SLOTS: usize = 16;
pub const DIR_OUTBOUND: u8 = 0;
pub const DIR_INBOUND: u8 = 1;
pub const DROP_SLOTS: usize = 1024;

pub const CNT_SOCK_MAP_FULL: u32 = 0;
pub const CNT_PEER_OVERFLOW: u32 = 1;
pub const CNT_OTHER_MAP_FULL: u32 = 2;
pub const CNT_EVENTS_RATE_LIMITED: u32 = 3;
pub const CNT_EVENTS_LOST: u32 = 4;
pub const CNT_RTT_SAMPLES: u32 = 5;
pub const CNT_EVENTS_SENT: u32 = 6;
pub const CNT_SLOTS: u32 = 8;

pub const EV_CONNECT_FAILED: u8 = 1;
pub const EV_CONNECT_SLOW: u8 = 2;
pub const EV_RESET_SENT: u8 = 3;
pub const EV_RESET_RECEIVED: u8 = 4;

/// Map names in the object.
pub const MAP_SOCKS: &str = "socks";
pub const MAP_SOCK_TAGS: &str = "sock_tags";
pub const MAP_PEERS: &str = "peers";
pub const MAP_PEERS_OTHER: &str = "peers_other";
pub const MAP_RTT_LAST: &str = "rtt_last";
pub const MAP_COUNTERS: &str = "counters";
pub const MAP_DROPS: &str = "drops";
pub const MAP_DROPS_OTHER: &str = "drops_other";
pub const MAP_DROP_FILTER: &str = "drop_filter";
pub const MAP_EVENTS: &str = "events";

/// Tunables (`volatile const __u64` globals).
pub const CFG_SLOW_CONNECT_NS: &str = "cfg_slow_connect_ns";
pub const CFG_RTT_INTERVAL_NS: &str = "cfg_rtt_interval_ns";
pub const CFG_EVENTS_PER_SEC: &str = "cfg_events_per_sec";
/// Number of sets of the `socks` table (its max_entries / [`SOCK_WAYS`]).
pub const CFG_SOCK_SETS: &str = "cfg_sock_sets";
/// Slots per set of the set-associative `socks` table (C: NS_SOCK_WAYS).
pub const SOCK_WAYS: u32 = 8;

/// `struct ns_peer_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub cgroup_id: u64,
    pub addr: [u8; 16],
    pub port: u16,
    pub direction: u8,
    pub family: u8,
    pub _pad: u32,
}

/// `struct ns_drop_key`: workload (cgroup v2 id; 0 = no socket) x drop reason slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DropKey {
    pub cgroup_id: u64,
    pub reason: u32,
    pub _pad: u32,
}

/// `struct ns_peer_stats`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerStats {
    pub connect_hist: [u64; 15],
    pub connect_sum_ns: u64,
    pub rtt_hist: [u64; 15],
    pub rtt_sum_us: u64,
    pub duration_hist: [u64; 10],
    pub duration_sum_ns: u64,
    pub connect_errors: [u64; ERR_SLOTS],
    pub resets_sent: [u64; RST_REASON_SLOTS],
    pub resets_received: [u64; TCP_STATE_SLOTS],
    pub retransmits: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub active: i64,
    pub last_seen_ns: u64,
}

impl Default for PeerStats {
    fn default() -> Self {
        PeerStats {
            connect_hist: [0; 15],
            connect_sum_ns: 0,
            rtt_hist: [0; 15],
            rtt_sum_us: 0,
            duration_hist: [0; 10],
            duration_sum_ns: 0,
            connect_errors: [0; ERR_SLOTS],
            resets_sent: [0; RST_REASON_SLOTS],
            resets_received: [0; TCP_STATE_SLOTS],
            retransmits: 0,
            bytes_sent: 0,
            bytes_received: 0,
            active: 0,
            last_seen_ns: 0,
        }
    }
}

impl PeerStats {
    /// Adds `o` into `self` (saturating); `last_seen_ns` keeps the newer one.
    pub fn merge(&mut self, o: &PeerStats) {
        fn add(a: &mut [u64], b: &[u64]) {
            for (x, y) in a.iter_mut().zip(b) {
                *x = x.saturating_add(*y);
            }
        }
        add(&mut self.connect_hist, &o.connect_hist);
        add(&mut self.rtt_hist, &o.rtt_hist);
        add(&mut self.duration_hist, &o.duration_hist);
        add(&mut self.connect_errors, &o.connect_errors);
        add(&mut self.resets_sent, &o.resets_sent);
        add(&mut self.resets_received, &o.resets_received);
        self.connect_sum_ns = self.connect_sum_ns.saturating_add(o.connect_sum_ns);
        self.rtt_sum_us = self.rtt_sum_us.saturating_add(o.rtt_sum_us);
        self.duration_sum_ns = self.duration_sum_ns.saturating_add(o.duration_sum_ns);
        self.retransmits = self.retransmits.saturating_add(o.retransmits);
        self.bytes_sent = self.bytes_sent.saturating_add(o.bytes_sent);
        self.bytes_received = self.bytes_received.saturating_add(o.bytes_received);
        self.active = self.active.saturating_add(o.active);
        self.last_seen_ns = self.last_seen_ns.max(o.last_seen_ns);
    }
}

/// `struct ns_sock` (kernel-side only; mirrored for the layout test).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockState {
    pub start_ns: u64,
    pub established_ns: u64,
    pub rtt_last_ns: u64,
    pub key: PeerKey,
    pub pid: u32,
    pub flags: u8,
    pub _pad: [u8; 3],
    pub comm: [u8; 16],
}

/// `struct ns_sock_tags` (kernel-side only; mirrored for the layout test): the socket
/// addresses owning the slots of one set of the `socks` table, 0 = free.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockTags {
    pub sk: [u64; SOCK_WAYS as usize],
}

/// `struct ns_event`, decoded from ring-buffer bytes by [`Event::decode`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub latency_ns: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub pid: u32,
    pub kind: u8,
    pub family: u8,
    pub direction: u8,
    pub error: u8,
    pub reason: u16,
    pub sk_err: u16,
    pub comm: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<PeerKey>() == 32);
const _: () = assert!(core::mem::size_of::<DropKey>() == 16);
const _: () = assert!(core::mem::size_of::<PeerStats>() == 104 * 8);
const _: () = assert!(core::mem::size_of::<SockState>() == 80);
const _: () = assert!(core::mem::size_of::<SockTags>() == 64);
const _: () = assert!(core::mem::size_of::<Event>() == 88);

// SAFETY: plain-old-data #[repr(C)] structs without padding holes that the kernel could
// leave uninitialised in a way that matters (all-integer fields; every bit pattern valid).
unsafe impl aya::Pod for PeerKey {}
// SAFETY: as above.
unsafe impl aya::Pod for PeerStats {}
// SAFETY: as above.
unsafe impl aya::Pod for DropKey {}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("ring buffer record of {got} bytes is shorter than struct ns_event ({want} bytes)")]
    Short { got: usize, want: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u8),
}

fn arr<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[off..off + N]);
    out
}

impl Event {
    pub const SIZE: usize = core::mem::size_of::<Event>();

    /// Decodes one ring-buffer record (native endianness, the kernel's). Longer records
    /// are accepted (forward compatibility); shorter ones and unknown kinds are errors.
    pub fn decode(b: &[u8]) -> Result<Event, DecodeError> {
        if b.len() < Self::SIZE {
            return Err(DecodeError::Short {
                got: b.len(),
                want: Self::SIZE,
            });
        }
        let u64_at = |o| u64::from_ne_bytes(arr::<8>(b, o));
        let u16_at = |o| u16::from_ne_bytes(arr::<2>(b, o));
        let e = Event {
            ts_ns: u64_at(0),
            cgroup_id: u64_at(8),
            latency_ns: u64_at(16),
            saddr: arr::<16>(b, 24),
            daddr: arr::<16>(b, 40),
            sport: u16_at(56),
            dport: u16_at(58),
            pid: u32::from_ne_bytes(arr::<4>(b, 60)),
            kind: b[64],
            family: b[65],
            direction: b[66],
            error: b[67],
            reason: u16_at(68),
            sk_err: u16_at(70),
            comm: arr::<16>(b, 72),
        };
        if !(EV_CONNECT_FAILED..=EV_RESET_RECEIVED).contains(&e.kind) {
            return Err(DecodeError::UnknownKind(e.kind));
        }
        Ok(e)
    }

    /// Encodes to the kernel layout (tests and fuzzing).
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..8].copy_from_slice(&self.ts_ns.to_ne_bytes());
        b[8..16].copy_from_slice(&self.cgroup_id.to_ne_bytes());
        b[16..24].copy_from_slice(&self.latency_ns.to_ne_bytes());
        b[24..40].copy_from_slice(&self.saddr);
        b[40..56].copy_from_slice(&self.daddr);
        b[56..58].copy_from_slice(&self.sport.to_ne_bytes());
        b[58..60].copy_from_slice(&self.dport.to_ne_bytes());
        b[60..64].copy_from_slice(&self.pid.to_ne_bytes());
        b[64] = self.kind;
        b[65] = self.family;
        b[66] = self.direction;
        b[67] = self.error;
        b[68..70].copy_from_slice(&self.reason.to_ne_bytes());
        b[70..72].copy_from_slice(&self.sk_err.to_ne_bytes());
        b[72..88].copy_from_slice(&self.comm);
        b
    }
}

/// The IP address in a 16-byte kernel address (IPv4-mapped IPv6 becomes IPv4).
pub fn ip_from_bytes(b: &[u8; 16]) -> std::net::IpAddr {
    let v6 = std::net::Ipv6Addr::from(*b);
    match v6.to_ipv4_mapped() {
        Some(v4) => std::net::IpAddr::V4(v4),
        None => std::net::IpAddr::V6(v6),
    }
}

/// A NUL-terminated `comm` as a string (lossy).
pub fn comm_str(c: &[u8; 16]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn object_is_embedded_and_elf() {
        assert!(NET_OBJ.len() > 1000);
        assert_eq!(&NET_OBJ[..4], b"\x7fELF");
    }

    /// Every mirrored struct and all of its fields (same names in C and Rust): expands to
    /// the C statements that print their sizes and offsets, and the Rust values to match.
    macro_rules! layout {
        ($($c:literal => $t:ty { $($f:ident),* })*) => {{
            let mut c_stmts = String::new();
            let mut rust: Vec<(String, usize)> = Vec::new();
            $(
                c_stmts += &format!("S({}) ", $c);
                rust.push(($c.to_string(), size_of::<$t>()));
                $(
                    c_stmts += &format!("O({}, {}) ", $c, stringify!($f));
                    rust.push((format!("{}.{}", $c, stringify!($f)), offset_of!($t, $f)));
                )*
                c_stmts.push('\n');
            )*
            (c_stmts, rust)
        }};
    }

    /// Compiles a C program that includes net.h and prints every size, offset and bound,
    /// then compares with this mirror. Fails on any drift.
    #[test]
    fn layout_matches_c_header() {
        let Some(cc) =
            nodescope_testsupport::require_tool("net::layout_matches_c_header", "cc", &[])
        else {
            return;
        };
        let (structs_c, structs_rust) = layout! {
            "ns_peer_key" => PeerKey { cgroup_id, addr, port, direction, family, _pad }
            "ns_drop_key" => DropKey { cgroup_id, reason, _pad }
            "ns_peer_stats" => PeerStats {
                connect_hist, connect_sum_ns, rtt_hist, rtt_sum_us, duration_hist,
                duration_sum_ns, connect_errors, resets_sent, resets_received, retransmits,
                bytes_sent, bytes_received, active, last_seen_ns
            }
            "ns_sock" => SockState {
                start_ns, established_ns, rtt_last_ns, key, pid, flags, _pad, comm
            }
            "ns_sock_tags" => SockTags { sk }
            "ns_event" => Event {
                ts_ns, cgroup_id, latency_ns, saddr, daddr, sport, dport, pid, kind, family,
                direction, error, reason, sk_err, comm
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("layout.c");
        let bin = dir.path().join("layout");
        let include = concat!(env!("CARGO_MANIFEST_DIR"), "/include");
        let prog = r#"
#include <stdio.h>
#include <stddef.h>
#include "net.h"
#define S(t) printf(#t " %zu\n", sizeof(struct t));
#define O(t, f) printf(#t "." #f " %zu\n", offsetof(struct t, f));
int main(void) {
  unsigned long long c[] = NS_CONNECT_BOUNDS_NS, r[] = NS_RTT_BOUNDS_US, d[] = NS_DURATION_BOUNDS_NS;
  for (unsigned i = 0; i < sizeof c / sizeof c[0]; i++) printf("connect.%u %llu\n", i, c[i]);
  for (unsigned i = 0; i < sizeof r / sizeof r[0]; i++) printf("rtt.%u %llu\n", i, r[i]);
  for (unsigned i = 0; i < sizeof d / sizeof d[0]; i++) printf("duration.%u %llu\n", i, d[i]);
  STRUCTS
  printf("ERR_SLOTS %d\nRST_SLOTS %d\nSTATE_SLOTS %d\nDROP_SLOTS %d\nCNT_SLOTS %d\nSOCK_WAYS %d\n", NS_ERR_SLOTS, NS_RST_REASON_SLOTS, NS_TCP_STATE_SLOTS, NS_DROP_SLOTS, NS_CNT_SLOTS, NS_SOCK_WAYS);
  printf("EV %d %d %d %d\n", NS_EV_CONNECT_FAILED, NS_EV_CONNECT_SLOW, NS_EV_RESET_SENT, NS_EV_RESET_RECEIVED);
  printf("CNT %d %d %d %d %d %d %d\n", NS_CNT_SOCK_MAP_FULL, NS_CNT_PEER_OVERFLOW, NS_CNT_OTHER_MAP_FULL, NS_CNT_EVENTS_RATE_LIMITED, NS_CNT_EVENTS_LOST, NS_CNT_RTT_SAMPLES, NS_CNT_EVENTS_SENT);
  return 0;
}
"#
        .replace("STRUCTS", &structs_c);
        std::fs::write(&src, prog).unwrap();
        let st = std::process::Command::new(cc)
            .arg(format!("-I{include}"))
            .arg(&src)
            .arg("-o")
            .arg(&bin)
            .status()
            .unwrap();
        assert!(st.success(), "compiling the layout probe failed");
        let out = std::process::Command::new(&bin).output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let c: BTreeMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut rust: BTreeMap<String, String> = BTreeMap::new();
        let mut put = |k: &str, v: usize| {
            rust.insert(k.to_string(), v.to_string());
        };
        for (i, b) in CONNECT_BOUNDS_NS.iter().enumerate() {
            put(&format!("connect.{i}"), *b as usize);
        }
        for (i, b) in RTT_BOUNDS_US.iter().enumerate() {
            put(&format!("rtt.{i}"), *b as usize);
        }
        for (i, b) in DURATION_BOUNDS_NS.iter().enumerate() {
            put(&format!("duration.{i}"), *b as usize);
        }
        for (k, v) in &structs_rust {
            put(k, *v);
        }
        put("ERR_SLOTS", ERR_SLOTS);
        put("RST_SLOTS", RST_REASON_SLOTS);
        put("STATE_SLOTS", TCP_STATE_SLOTS);
        put("SOCK_WAYS", SOCK_WAYS as usize);
        put("DROP_SLOTS", DROP_SLOTS);
        put("CNT_SLOTS", CNT_SLOTS as usize);
        rust.insert(
            "EV".into(),
            format!("{EV_CONNECT_FAILED} {EV_CONNECT_SLOW} {EV_RESET_SENT} {EV_RESET_RECEIVED}"),
        );
        rust.insert(
            "CNT".into(),
            format!(
                "{CNT_SOCK_MAP_FULL} {CNT_PEER_OVERFLOW} {CNT_OTHER_MAP_FULL} {CNT_EVENTS_RATE_LIMITED} {CNT_EVENTS_LOST} {CNT_RTT_SAMPLES} {CNT_EVENTS_SENT}"
            ),
        );
        assert_eq!(c, rust, "ebpf/include/net.h and ebpf/src/net.rs disagree");
        // The Rust decoder's hard-coded offsets must agree with the mirror too.
        assert_eq!(offset_of!(Event, comm), 72);
        assert_eq!(offset_of!(Event, reason), 68);
    }

    #[test]
    fn event_roundtrip_and_errors() {
        let e = Event {
            ts_ns: 1,
            cgroup_id: 2,
            latency_ns: 3,
            saddr: [1; 16],
            daddr: [2; 16],
            sport: 4,
            dport: 5,
            pid: 6,
            kind: EV_CONNECT_FAILED,
            family: 2,
            direction: 0,
            error: 0,
            reason: 7,
            sk_err: 111,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
        };
        let b = e.encode();
        assert_eq!(Event::decode(&b), Ok(e));
        assert_eq!(comm_str(&e.comm), "curl");
        assert!(matches!(
            Event::decode(&b[..87]),
            Err(DecodeError::Short { .. })
        ));
        let mut bad = b;
        bad[64] = 9;
        assert_eq!(Event::decode(&bad), Err(DecodeError::UnknownKind(9)));
    }

    #[test]
    fn mapped_addresses() {
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(ip_from_bytes(&a).to_string(), "10.0.0.1");
        assert_eq!(ip_from_bytes(&[0; 16]).to_string(), "::");
    }

    /// Root-only: the committed object relocates against this kernel's BTF and every
    /// program passes the verifier and attaches to its BTF-typed raw tracepoint.
    #[test]
    fn loads_verifies_and_attaches_on_this_kernel() {
        if !nodescope_testsupport::require_root("net::loads_verifies_and_attaches_on_this_kernel") {
            return;
        }
        let btf = crate::loader::kernel_btf().expect("kernel BTF");
        let load = || {
            crate::loader::load_with_btf(
                NET_OBJ_NAME,
                NET_OBJ,
                &crate::loader::LoadOptions::default(),
                &btf,
            )
            .expect("load net.bpf.o")
        };
        let mut ebpf = load();
        for (prog, hook) in [
            ("ns_set_state", "inet_sock_set_state"),
            ("ns_tcp_probe", "tcp_probe"),
            ("ns_retransmit", "tcp_retransmit_skb"),
            ("ns_retransmit_synack", "tcp_retransmit_synack"),
            ("ns_send_reset", "tcp_send_reset"),
            ("ns_receive_reset", "tcp_receive_reset"),
            ("ns_kfree_skb", "kfree_skb"),
        ] {
            if let Err(e) =
                crate::loader::load_btf_tracepoint(&mut ebpf, NET_OBJ_NAME, prog, hook, &btf)
            {
                panic!("{prog} -> {hook}: {e}");
            }
        }
        // A hook that does not exist is an Attach error naming it, not a panic.
        let mut ebpf = load();
        let e = crate::loader::load_btf_tracepoint(
            &mut ebpf,
            NET_OBJ_NAME,
            "ns_tcp_probe",
            "no_such_tracepoint_xyz",
            &btf,
        )
        .unwrap_err();
        assert!(matches!(e, crate::loader::LoadError::Attach { .. }), "{e}");
        assert!(e.to_string().contains("no_such_tracepoint_xyz"), "{e}");
    }

    proptest! {
        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(e) = Event::decode(&b) {
                prop_assert_eq!(&e.encode()[..], &b[..Event::SIZE]);
            }
        }
        #[test]
        fn comm_never_panics(c in any::<[u8; 16]>()) {
            let _ = comm_str(&c);
        }
    }
}
