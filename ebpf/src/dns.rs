//! DNS probe object (`ebpf/c/dns.bpf.c`) and the Rust mirror of `ebpf/include/dns.h`.
//!
//! Every struct here is `#[repr(C)]` with the exact layout of its C counterpart; sizes are
//! asserted at compile time and `tests::layout_matches_c_header` compiles the header with
//! the host C compiler and compares every `sizeof` / `offsetof`, bound and constant.

/// The compiled CO-RE object (committed; rebuilt by `cargo xtask build-ebpf`).
pub static DNS_OBJ: &[u8] = aya::include_bytes_aligned!("../objects/dns.bpf.o");

/// Object name used in error messages and status.
pub const DNS_OBJ_NAME: &str = "dns.bpf.o";

/// Programs (cgroup_skb, attached to the cgroup2 root).
pub const PROG_EGRESS: &str = "ns_dns_egress";
pub const PROG_INGRESS: &str = "ns_dns_ingress";

/// `nodescope_dns_request_duration_seconds` bucket bounds, nanoseconds (C: NS_DNS_BOUNDS_NS).
pub const BOUNDS_NS: [u64; 14] = [
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
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

pub const NAME_MAX: usize = 256;
pub const MAX_LABELS: usize = 64;
pub const PORTS: usize = 4;
/// Slots per set of the in-flight table (C: NS_DNS_WAYS).
pub const WAYS: usize = 8;
pub const RCODE_TIMEOUT: u8 = 16;
pub const RCODE_TRUNCATED: u8 = 17;
pub const RCODE_SLOTS: usize = 18;
pub const UDP: u8 = 0;
pub const TCP: u8 = 1;
/// QTYPEs kept in aggregate keys (C: NS_DNS_QTYPES); others are folded into 0.
pub const QTYPES: [u16; 14] = [1, 2, 5, 6, 12, 15, 16, 28, 33, 35, 64, 65, 255, 257];

pub const CNT_QUERIES: u32 = 0;
pub const CNT_ANSWERS: u32 = 1;
pub const CNT_UNMATCHED: u32 = 2;
pub const CNT_INFLIGHT_FULL: u32 = 3;
pub const CNT_RETRANSMITS: u32 = 4;
pub const CNT_STATS_OVERFLOW: u32 = 5;
pub const CNT_OTHER_FULL: u32 = 6;
pub const CNT_EVENTS_RATE_LIMITED: u32 = 7;
pub const CNT_EVENTS_LOST: u32 = 8;
pub const CNT_EVENTS_SENT: u32 = 9;
pub const CNT_LOOKUPS_FULL: u32 = 10;
pub const CNT_MALFORMED: u32 = 11;
pub const CNT_LATE: u32 = 12;
pub const CNT_SLOTS: u32 = 16;

pub const EV_SLOW: u8 = 1;
pub const EV_FAILED: u8 = 2;
pub const EV_TIMEOUT: u8 = 3;

pub const DONE_A: u32 = 1;
pub const DONE_AAAA: u32 = 2;
pub const DONE_OTHER: u32 = 4;

/// Map names in the object.
pub const MAP_TAGS: &str = "dns_tags";
pub const MAP_SLOTS: &str = "dns_slots";
pub const MAP_STATS: &str = "dns_stats";
pub const MAP_STATS_OTHER: &str = "dns_stats_other";
pub const MAP_LOOKUP_STATE: &str = "dns_lookup_state";
pub const MAP_LOOKUPS: &str = "dns_lookups";
pub const MAP_COUNTERS: &str = "dns_counters";
pub const MAP_EVENTS: &str = "dns_events";

/// Tunables (`volatile const __u64` globals).
pub const CFG_PORTS: [&str; PORTS] = [
    "cfg_dns_port0",
    "cfg_dns_port1",
    "cfg_dns_port2",
    "cfg_dns_port3",
];
pub const CFG_SLOW_NS: &str = "cfg_slow_ns";
pub const CFG_EVENTS_PER_SEC: &str = "cfg_events_per_sec";
pub const CFG_LOOKUP_GAP_NS: &str = "cfg_lookup_gap_ns";
pub const CFG_TIMEOUT_NS: &str = "cfg_timeout_ns";
pub const CFG_NXDOMAIN_EVENTS: &str = "cfg_nxdomain_events";
/// Number of sets of the in-flight table (`dns_slots` max_entries / [`WAYS`]).
pub const CFG_SETS: &str = "cfg_dns_sets";

/// `struct ns_dns_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsKey {
    pub cgroup_id: u64,
    pub server: [u8; 16],
    pub qtype: u16,
    pub rcode: u8,
    pub transport: u8,
    pub family: u8,
    pub _pad: [u8; 3],
}

/// `struct ns_dns_stats`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsStats {
    pub hist: [u64; 15],
    pub sum_ns: u64,
    pub requests: u64,
    pub last_seen_ns: u64,
}

impl DnsStats {
    /// Adds `o` into `self` (saturating); `last_seen_ns` keeps the newer one.
    pub fn merge(&mut self, o: &DnsStats) {
        for (x, y) in self.hist.iter_mut().zip(&o.hist) {
            *x = x.saturating_add(*y);
        }
        self.sum_ns = self.sum_ns.saturating_add(o.sum_ns);
        self.requests = self.requests.saturating_add(o.requests);
        self.last_seen_ns = self.last_seen_ns.max(o.last_seen_ns);
    }
}

/// `struct ns_dns_qkey`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct QueryKey {
    pub client: [u8; 16],
    pub server: [u8; 16],
    pub client_port: u16,
    pub server_port: u16,
    pub id: u16,
    pub transport: u8,
    pub _pad: u8,
}

/// `struct ns_dns_lkey`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LookupKey {
    pub cgroup_id: u64,
    pub pid: u32,
    pub label_hash: u32,
}

/// `struct ns_dns_lookup_state`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LookupState {
    pub last_ns: u64,
    pub outstanding: u32,
    pub done: u32,
}

/// `struct ns_dns_lookup_stats`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LookupStats {
    pub lookups: u64,
    pub queries: u64,
}

/// `struct ns_dns_query` (an in-flight query).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Query {
    pub start_ns: u64,
    pub cgroup_id: u64,
    pub lkey: LookupKey,
    pub pid: u32,
    pub qtype: u16,
    pub family: u8,
    pub _pad: u8,
    pub name_len: u16,
    pub _pad2: [u16; 3],
    pub comm: [u8; 16],
    pub name: [u8; NAME_MAX],
}

impl Default for Query {
    fn default() -> Self {
        Query {
            start_ns: 0,
            cgroup_id: 0,
            lkey: LookupKey::default(),
            pid: 0,
            qtype: 0,
            family: 0,
            _pad: 0,
            name_len: 0,
            _pad2: [0; 3],
            comm: [0; 16],
            name: [0; NAME_MAX],
        }
    }
}

/// `struct ns_dns_tags`: the owners of one set's slots (a hash of the query key; 0 = free).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Tags {
    pub tag: [u64; WAYS],
}

/// `struct ns_dns_slot`: one slot of the in-flight table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Slot {
    pub key: QueryKey,
    pub q: Query,
}

/// `struct ns_dns_event`, decoded from ring-buffer bytes by [`DnsEvent::decode`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsEvent {
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub latency_ns: u64,
    pub client: [u8; 16],
    pub server: [u8; 16],
    pub client_port: u16,
    pub server_port: u16,
    pub pid: u32,
    pub id: u16,
    pub qtype: u16,
    pub kind: u8,
    pub rcode: u8,
    pub transport: u8,
    pub family: u8,
    pub name_len: u16,
    pub _pad: [u16; 3],
    pub comm: [u8; 16],
    pub name: [u8; NAME_MAX],
}

impl Default for DnsEvent {
    fn default() -> Self {
        DnsEvent {
            ts_ns: 0,
            cgroup_id: 0,
            latency_ns: 0,
            client: [0; 16],
            server: [0; 16],
            client_port: 0,
            server_port: 0,
            pid: 0,
            id: 0,
            qtype: 0,
            kind: 0,
            rcode: 0,
            transport: 0,
            family: 0,
            name_len: 0,
            _pad: [0; 3],
            comm: [0; 16],
            name: [0; NAME_MAX],
        }
    }
}

const _: () = assert!(core::mem::size_of::<DnsKey>() == 32);
const _: () = assert!(core::mem::size_of::<DnsStats>() == 18 * 8);
const _: () = assert!(core::mem::size_of::<QueryKey>() == 40);
const _: () = assert!(core::mem::size_of::<LookupKey>() == 16);
const _: () = assert!(core::mem::size_of::<LookupState>() == 16);
const _: () = assert!(core::mem::size_of::<LookupStats>() == 16);
const _: () = assert!(core::mem::size_of::<Query>() == 64 + NAME_MAX);
const _: () = assert!(core::mem::size_of::<Tags>() == 8 * WAYS);
const _: () = assert!(core::mem::size_of::<Slot>() == 40 + 64 + NAME_MAX);
const _: () = assert!(core::mem::size_of::<DnsEvent>() == 96 + NAME_MAX);

// SAFETY: plain-old-data #[repr(C)] structs of integers and byte arrays without padding
// holes; every bit pattern is valid.
unsafe impl aya::Pod for DnsKey {}
// SAFETY: as above.
unsafe impl aya::Pod for DnsStats {}
// SAFETY: as above.
unsafe impl aya::Pod for QueryKey {}
// SAFETY: as above.
unsafe impl aya::Pod for Query {}
// SAFETY: as above.
unsafe impl aya::Pod for LookupKey {}
// SAFETY: as above.
unsafe impl aya::Pod for LookupState {}
// SAFETY: as above.
unsafe impl aya::Pod for LookupStats {}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "DNS ring buffer record of {got} bytes is shorter than struct ns_dns_event ({want} bytes)"
    )]
    Short { got: usize, want: usize },
    #[error("unknown DNS event kind {0}")]
    UnknownKind(u8),
}

fn arr<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[off..off + N]);
    out
}

impl DnsEvent {
    pub const SIZE: usize = core::mem::size_of::<DnsEvent>();

    /// Decodes one ring-buffer record (native endianness). Longer records are accepted;
    /// shorter ones and unknown kinds are errors.
    pub fn decode(b: &[u8]) -> Result<DnsEvent, DecodeError> {
        if b.len() < Self::SIZE {
            return Err(DecodeError::Short {
                got: b.len(),
                want: Self::SIZE,
            });
        }
        let u64_at = |o| u64::from_ne_bytes(arr::<8>(b, o));
        let u16_at = |o| u16::from_ne_bytes(arr::<2>(b, o));
        let e = DnsEvent {
            ts_ns: u64_at(0),
            cgroup_id: u64_at(8),
            latency_ns: u64_at(16),
            client: arr::<16>(b, 24),
            server: arr::<16>(b, 40),
            client_port: u16_at(56),
            server_port: u16_at(58),
            pid: u32::from_ne_bytes(arr::<4>(b, 60)),
            id: u16_at(64),
            qtype: u16_at(66),
            kind: b[68],
            rcode: b[69],
            transport: b[70],
            family: b[71],
            name_len: u16_at(72),
            _pad: [u16_at(74), u16_at(76), u16_at(78)],
            comm: arr::<16>(b, 80),
            name: arr::<NAME_MAX>(b, 96),
        };
        if !(EV_SLOW..=EV_TIMEOUT).contains(&e.kind) {
            return Err(DecodeError::UnknownKind(e.kind));
        }
        Ok(e)
    }

    /// Encodes to the kernel layout (tests and fuzzing).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; Self::SIZE];
        b[0..8].copy_from_slice(&self.ts_ns.to_ne_bytes());
        b[8..16].copy_from_slice(&self.cgroup_id.to_ne_bytes());
        b[16..24].copy_from_slice(&self.latency_ns.to_ne_bytes());
        b[24..40].copy_from_slice(&self.client);
        b[40..56].copy_from_slice(&self.server);
        b[56..58].copy_from_slice(&self.client_port.to_ne_bytes());
        b[58..60].copy_from_slice(&self.server_port.to_ne_bytes());
        b[60..64].copy_from_slice(&self.pid.to_ne_bytes());
        b[64..66].copy_from_slice(&self.id.to_ne_bytes());
        b[66..68].copy_from_slice(&self.qtype.to_ne_bytes());
        b[68] = self.kind;
        b[69] = self.rcode;
        b[70] = self.transport;
        b[71] = self.family;
        b[72..74].copy_from_slice(&self.name_len.to_ne_bytes());
        for (i, p) in self._pad.iter().enumerate() {
            b[74 + 2 * i..76 + 2 * i].copy_from_slice(&p.to_ne_bytes());
        }
        b[80..96].copy_from_slice(&self.comm);
        b[96..96 + NAME_MAX].copy_from_slice(&self.name);
        b
    }

    /// The event as the in-flight query it came from (user space builds timeout events
    /// from swept queries the same way).
    pub fn from_query(q: &Query, k: &QueryKey, kind: u8, rcode: u8, now_ns: u64) -> DnsEvent {
        DnsEvent {
            ts_ns: now_ns,
            cgroup_id: q.cgroup_id,
            latency_ns: now_ns.saturating_sub(q.start_ns),
            client: k.client,
            server: k.server,
            client_port: k.client_port,
            server_port: k.server_port,
            pid: q.pid,
            id: k.id,
            qtype: q.qtype,
            kind,
            rcode,
            transport: k.transport,
            family: q.family,
            name_len: q.name_len,
            _pad: [0; 3],
            comm: q.comm,
            name: q.name,
        }
    }
}

/// The aggregate key's qtype (the kernel's `qtype_class`): the QTYPE when it is in
/// [`QTYPES`], else 0 ("other").
pub fn qtype_class(t: u16) -> u16 {
    if QTYPES.contains(&t) {
        t
    } else {
        0
    }
}

/// The `qtype` label value.
pub fn qtype_name(t: u16) -> &'static str {
    match t {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        35 => "NAPTR",
        64 => "SVCB",
        65 => "HTTPS",
        255 => "ANY",
        257 => "CAA",
        _ => "other",
    }
}

/// The `rcode` label value: the DNS RCODE name (RFC 1035 / 2136 / 6895), `timeout`,
/// `truncated`, or `other` for codes above 10.
pub fn rcode_name(r: u8) -> &'static str {
    match r {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        RCODE_TIMEOUT => "timeout",
        RCODE_TRUNCATED => "truncated",
        _ => "other",
    }
}

pub fn transport_name(t: u8) -> &'static str {
    if t == TCP {
        "tcp"
    } else {
        "udp"
    }
}

/// Renders the first `len` bytes of a wire-format question name (length-prefixed labels,
/// as the kernel copied them) as a dotted name. Bytes outside `[A-Za-z0-9-_]` are
/// escaped as `\DDD` (RFC 1035 master-file style), a literal `.` or `\` inside a label as
/// `\.` / `\\`. Returns the name and whether it was cut short (longer than what the
/// kernel kept, or malformed); the root name is `.`.
pub fn decode_name(wire: &[u8], len: usize) -> (String, bool) {
    let wire = &wire[..len.min(wire.len())];
    let mut out = String::new();
    let mut pos = 0usize;
    let mut labels = 0usize;
    loop {
        let Some(&l) = wire.get(pos) else {
            // Ran out of bytes before the terminating zero label.
            return (finish(out), true);
        };
        if l == 0 {
            return (finish(out), false);
        }
        if l & 0xc0 != 0 || labels >= MAX_LABELS {
            return (finish(out), true);
        }
        let start = pos + 1;
        let end = start + l as usize;
        let take = end.min(wire.len());
        if !out.is_empty() && start < take {
            out.push('.');
        }
        for &c in &wire[start.min(take)..take] {
            match c {
                b'.' => out.push_str("\\."),
                b'\\' => out.push_str("\\\\"),
                c if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' => out.push(c as char),
                c => out.push_str(&format!("\\{c:03}")),
            }
        }
        if end > wire.len() {
            return (finish(out), true);
        }
        pos = end;
        labels += 1;
    }
}

fn finish(s: String) -> String {
    if s.is_empty() {
        ".".to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn object_is_embedded_and_elf() {
        assert!(DNS_OBJ.len() > 1000);
        assert_eq!(&DNS_OBJ[..4], b"\x7fELF");
    }

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

    /// Compiles a C program that includes dns.h and prints every size, offset, bound and
    /// constant, then compares with this mirror. Fails on any drift.
    #[test]
    fn layout_matches_c_header() {
        let Some(cc) =
            nodescope_testsupport::require_tool("dns::layout_matches_c_header", "cc", &[])
        else {
            return;
        };
        let (structs_c, structs_rust) = layout! {
            "ns_dns_key" => DnsKey { cgroup_id, server, qtype, rcode, transport, family, _pad }
            "ns_dns_stats" => DnsStats { hist, sum_ns, requests, last_seen_ns }
            "ns_dns_qkey" => QueryKey { client, server, client_port, server_port, id, transport, _pad }
            "ns_dns_lkey" => LookupKey { cgroup_id, pid, label_hash }
            "ns_dns_lookup_state" => LookupState { last_ns, outstanding, done }
            "ns_dns_lookup_stats" => LookupStats { lookups, queries }
            "ns_dns_query" => Query {
                start_ns, cgroup_id, lkey, pid, qtype, family, _pad, name_len, _pad2, comm, name
            }
            "ns_dns_tags" => Tags { tag }
            "ns_dns_slot" => Slot { key, q }
            "ns_dns_event" => DnsEvent {
                ts_ns, cgroup_id, latency_ns, client, server, client_port, server_port, pid,
                id, qtype, kind, rcode, transport, family, name_len, _pad, comm, name
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("layout.c");
        let bin = dir.path().join("layout");
        let include = concat!(env!("CARGO_MANIFEST_DIR"), "/include");
        let prog = r#"
#include <stdio.h>
#include <stddef.h>
#include "dns.h"
#define S(t) printf(#t " %zu\n", sizeof(struct t));
#define O(t, f) printf(#t "." #f " %zu\n", offsetof(struct t, f));
int main(void) {
  unsigned long long b[] = NS_DNS_BOUNDS_NS;
  unsigned q[] = NS_DNS_QTYPES;
  for (unsigned i = 0; i < sizeof b / sizeof b[0]; i++) printf("bound.%u %llu\n", i, b[i]);
  for (unsigned i = 0; i < sizeof q / sizeof q[0]; i++) printf("qtype.%u %u\n", i, q[i]);
  STRUCTS
  printf("WAYS %d LATE %d\n", NS_DNS_WAYS, NS_DNS_CNT_LATE);
  printf("CONST %d %d %d %d %d %d %d %d %d %d\n", NS_DNS_NAME_MAX, NS_DNS_MAX_LABELS, NS_DNS_PORTS, NS_DNS_RCODE_TIMEOUT, NS_DNS_RCODE_TRUNCATED, NS_DNS_RCODE_SLOTS, NS_DNS_UDP, NS_DNS_TCP, NS_DNS_NQTYPES, NS_DNS_DONE_A | NS_DNS_DONE_AAAA << 4 | NS_DNS_DONE_OTHER << 8);
  printf("CNT %d %d %d %d %d %d %d %d %d %d %d %d %d\n", NS_DNS_CNT_QUERIES, NS_DNS_CNT_ANSWERS, NS_DNS_CNT_UNMATCHED, NS_DNS_CNT_INFLIGHT_FULL, NS_DNS_CNT_RETRANSMITS, NS_DNS_CNT_STATS_OVERFLOW, NS_DNS_CNT_OTHER_FULL, NS_DNS_CNT_EVENTS_RATE_LIMITED, NS_DNS_CNT_EVENTS_LOST, NS_DNS_CNT_EVENTS_SENT, NS_DNS_CNT_LOOKUPS_FULL, NS_DNS_CNT_MALFORMED, NS_DNS_CNT_SLOTS);
  printf("EV %d %d %d\n", NS_DNS_EV_SLOW, NS_DNS_EV_FAILED, NS_DNS_EV_TIMEOUT);
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
        for (i, b) in BOUNDS_NS.iter().enumerate() {
            rust.insert(format!("bound.{i}"), b.to_string());
        }
        for (i, q) in QTYPES.iter().enumerate() {
            rust.insert(format!("qtype.{i}"), q.to_string());
        }
        for (k, v) in &structs_rust {
            rust.insert(k.clone(), v.to_string());
        }
        rust.insert(
            "CONST".into(),
            format!(
                "{NAME_MAX} {MAX_LABELS} {PORTS} {RCODE_TIMEOUT} {RCODE_TRUNCATED} {RCODE_SLOTS} {UDP} {TCP} {} {}",
                QTYPES.len(),
                DONE_A | DONE_AAAA << 4 | DONE_OTHER << 8
            ),
        );
        rust.insert(
            "CNT".into(),
            format!(
                "{CNT_QUERIES} {CNT_ANSWERS} {CNT_UNMATCHED} {CNT_INFLIGHT_FULL} {CNT_RETRANSMITS} {CNT_STATS_OVERFLOW} {CNT_OTHER_FULL} {CNT_EVENTS_RATE_LIMITED} {CNT_EVENTS_LOST} {CNT_EVENTS_SENT} {CNT_LOOKUPS_FULL} {CNT_MALFORMED} {CNT_SLOTS}"
            ),
        );
        rust.insert("EV".into(), format!("{EV_SLOW} {EV_FAILED} {EV_TIMEOUT}"));
        rust.insert("WAYS".into(), format!("{WAYS} LATE {CNT_LATE}"));
        assert_eq!(c, rust, "ebpf/include/dns.h and ebpf/src/dns.rs disagree");
        // The decoder's hard-coded offsets must agree with the mirror too.
        assert_eq!(offset_of!(DnsEvent, name), 96);
        assert_eq!(offset_of!(DnsEvent, kind), 68);
        assert_eq!(offset_of!(DnsEvent, name_len), 72);
    }

    fn wire(name: &str) -> Vec<u8> {
        let mut v = Vec::new();
        for l in name.split('.').filter(|l| !l.is_empty()) {
            v.push(l.len() as u8);
            v.extend_from_slice(l.as_bytes());
        }
        v.push(0);
        v
    }

    #[test]
    fn names_decode_escape_and_flag_truncation() {
        let w = wire("api.shop.svc.cluster.local");
        assert_eq!(
            decode_name(&w, w.len()),
            ("api.shop.svc.cluster.local".to_string(), false)
        );
        // The kernel's name_len excludes the zero label: still complete.
        assert_eq!(decode_name(&w, w.len() - 1).0, "api.shop.svc.cluster.local");
        assert!(
            decode_name(&w, w.len() - 1).1,
            "no zero label seen: flagged"
        );
        assert_eq!(decode_name(&[0], 1), (".".to_string(), false));
        let odd = [3, b'a', b'.', 0xff, 1, b'\\', 0];
        assert_eq!(decode_name(&odd, odd.len()).0, "a\\.\\255.\\\\");
        // Cut inside a label.
        assert_eq!(decode_name(&w, 7), ("api.sh".to_string(), true));
        assert_eq!(decode_name(&w, 5), ("api".to_string(), true));
        // A compression pointer in a question is malformed.
        assert!(decode_name(&[0xc0, 12], 2).1);
    }

    #[test]
    fn event_roundtrip_and_errors() {
        let mut e = DnsEvent {
            ts_ns: 1,
            cgroup_id: 2,
            latency_ns: 3,
            client_port: 4,
            server_port: 53,
            pid: 6,
            id: 7,
            qtype: 28,
            kind: EV_TIMEOUT,
            rcode: RCODE_TIMEOUT,
            transport: UDP,
            family: 2,
            name_len: 9,
            ..Default::default()
        };
        e.comm[..3].copy_from_slice(b"dig");
        e.name[..9].copy_from_slice(&wire("a.example")[..9]);
        let b = e.encode();
        assert_eq!(DnsEvent::decode(&b), Ok(e));
        assert!(matches!(
            DnsEvent::decode(&b[..DnsEvent::SIZE - 1]),
            Err(DecodeError::Short { .. })
        ));
        let mut bad = b.clone();
        bad[68] = 9;
        assert_eq!(DnsEvent::decode(&bad), Err(DecodeError::UnknownKind(9)));
    }

    #[test]
    fn label_values() {
        assert_eq!(qtype_name(qtype_class(28)), "AAAA");
        assert_eq!(qtype_class(99), 0);
        assert_eq!(qtype_name(0), "other");
        assert_eq!(rcode_name(3), "NXDOMAIN");
        assert_eq!(rcode_name(RCODE_TIMEOUT), "timeout");
        assert_eq!(rcode_name(RCODE_TRUNCATED), "truncated");
        assert_eq!(rcode_name(15), "other");
        for q in QTYPES {
            assert_ne!(qtype_name(q), "other", "{q}");
        }
    }

    /// Root-only: the committed object loads and both programs pass the verifier and
    /// attach to the cgroup2 root.
    #[test]
    fn loads_verifies_and_attaches_on_this_kernel() {
        if !nodescope_testsupport::require_root("dns::loads_verifies_and_attaches_on_this_kernel") {
            return;
        }
        let btf = crate::loader::kernel_btf().expect("kernel BTF");
        let mut ebpf = crate::loader::load_with_btf(
            DNS_OBJ_NAME,
            DNS_OBJ,
            &crate::loader::LoadOptions::default(),
            &btf,
        )
        .expect("load dns.bpf.o");
        let root = crate::loader::mounts_of_type("cgroup2")
            .into_iter()
            .next()
            .expect("a cgroup2 mount");
        for (prog, dir) in [
            (PROG_EGRESS, crate::loader::CgroupSkbDirection::Egress),
            (PROG_INGRESS, crate::loader::CgroupSkbDirection::Ingress),
        ] {
            crate::loader::load_cgroup_skb(&mut ebpf, DNS_OBJ_NAME, prog, &root, dir)
                .unwrap_or_else(|e| panic!("{prog}: {e}"));
        }
        // A cgroup directory that does not exist is an Attach error naming it.
        let mut ebpf = crate::loader::load_with_btf(
            DNS_OBJ_NAME,
            DNS_OBJ,
            &crate::loader::LoadOptions::default(),
            &btf,
        )
        .unwrap();
        let e = crate::loader::load_cgroup_skb(
            &mut ebpf,
            DNS_OBJ_NAME,
            PROG_EGRESS,
            std::path::Path::new("/nonexistent/nsnet-cgroup"),
            crate::loader::CgroupSkbDirection::Egress,
        )
        .unwrap_err();
        assert!(matches!(e, crate::loader::LoadError::Attach { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/nsnet-cgroup"), "{e}");
    }

    proptest! {
        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..500)) {
            if let Ok(e) = DnsEvent::decode(&b) {
                prop_assert_eq!(&e.encode()[..], &b[..DnsEvent::SIZE]);
            }
        }
        #[test]
        fn name_decoder_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300), len in 0usize..400) {
            let (s, _) = decode_name(&b, len);
            prop_assert!(s.len() <= 4 * 300 + 64);
        }
        #[test]
        fn names_roundtrip(labels in proptest::collection::vec("[a-z0-9-]{1,20}", 1..8)) {
            let name = labels.join(".");
            let w = wire(&name);
            prop_assert_eq!(decode_name(&w, w.len()), (name, false));
        }
    }
}
