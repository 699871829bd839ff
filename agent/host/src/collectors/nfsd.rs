//! `nfsd`: NFS server statistics from `<proc>/1/net/rpc/nfsd` (host netns), parsed as
//! procfs 0.8's `ParseServerRPCStats` (an unknown line fails the file, as there) and
//! exported with node_exporter 1.5's `node_nfsd_*` names.

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::Buf;
use crate::HostPaths;

/// `proc4ops` index → exported method (node_exporter's list; ops 0–2, PutPubFH and
/// PutRootFH are not exported).
const V4_OPS: &[(usize, &str)] = &[
    (4, "Access"),
    (5, "Close"),
    (6, "Commit"),
    (7, "Create"),
    (8, "DelegPurge"),
    (9, "DelegReturn"),
    (10, "GetAttr"),
    (11, "GetFH"),
    (12, "Link"),
    (13, "Lock"),
    (14, "Lockt"),
    (15, "Locku"),
    (16, "Lookup"),
    (17, "LookupRoot"),
    (18, "Nverify"),
    (19, "Open"),
    (20, "OpenAttr"),
    (21, "OpenConfirm"),
    (22, "OpenDgrd"),
    (23, "PutFH"),
    (26, "Read"),
    (27, "ReadDir"),
    (28, "ReadLink"),
    (29, "Remove"),
    (30, "Rename"),
    (31, "Renew"),
    (32, "RestoreFH"),
    (33, "SaveFH"),
    (34, "SecInfo"),
    (35, "SetAttr"),
    (36, "Verify"),
    (37, "Write"),
    (38, "RelLockOwner"),
];

/// The server statistics node_exporter exports (zero where a line is absent).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NfsdStats {
    pub rc: [u64; 3],
    pub fh_stale: u64,
    pub io: [u64; 2],
    pub threads: u64,
    pub ra_size: u64,
    pub ra_not_found: u64,
    pub net: [u64; 4],
    pub rpc: [u64; 5],
    /// `proc2`/`proc3` values after the count (Null first).
    pub v2: Vec<u64>,
    pub v3: Vec<u64>,
    /// `proc4ops` values including the count at index 0.
    pub v4ops: Vec<u64>,
}

pub fn parse_nfsd(text: &str) -> Result<NfsdStats, String> {
    let mut s = NfsdStats {
        v2: vec![0; 18],
        v3: vec![0; 22],
        v4ops: vec![0; 39],
        ..Default::default()
    };
    for line in text.lines() {
        let parts: Vec<&str> = line.split_ascii_whitespace().collect();
        if parts.len() < 2 {
            return Err(format!("invalid NFSd metric line {line:?}"));
        }
        let raw = if parts[0] == "th" {
            if parts.len() < 3 {
                return Err(format!("invalid NFSd th metric line {line:?}"));
            }
            &parts[1..3]
        } else {
            &parts[1..]
        };
        let v: Vec<u64> = raw
            .iter()
            .map(|p| p.parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("error parsing NFSd metric line: {e}"))?;
        let bad = || format!("invalid {} line {v:?}", parts[0]);
        let exact = |n: usize| if v.len() == n { Ok(()) } else { Err(bad()) };
        match parts[0] {
            "rc" => {
                exact(3)?;
                s.rc.copy_from_slice(&v);
            }
            "fh" => {
                exact(5)?;
                s.fh_stale = v[0];
            }
            "io" => {
                exact(2)?;
                s.io.copy_from_slice(&v);
            }
            "th" => {
                exact(2)?;
                s.threads = v[0];
            }
            "ra" => {
                exact(12)?;
                s.ra_size = v[0];
                s.ra_not_found = v[11];
            }
            "net" => {
                exact(4)?;
                s.net.copy_from_slice(&v);
            }
            "rpc" => {
                exact(5)?;
                s.rpc.copy_from_slice(&v);
            }
            "proc2" | "proc3" | "proc4" | "proc4ops" => {
                let n = v[0] as usize;
                let min = match parts[0] {
                    "proc2" => 18,
                    "proc3" => 22,
                    "proc4" => 2,
                    _ => 39,
                };
                if v.len() - 1 != n || n < min || (parts[0] == "proc4" && n != 2) {
                    return Err(bad());
                }
                match parts[0] {
                    "proc2" => s.v2.copy_from_slice(&v[1..19]),
                    "proc3" => s.v3.copy_from_slice(&v[1..23]),
                    "proc4ops" => s.v4ops.copy_from_slice(&v[..39]),
                    _ => {}
                }
            }
            other => return Err(format!("unknown NFSd metric line {other:?}")),
        }
    }
    Ok(s)
}

pub(crate) struct NfsdCollector {
    path: PathBuf,
    buf: Buf,
}

impl NfsdCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        NfsdCollector {
            path: paths.proc.join("1/net/rpc/nfsd"),
            buf: Buf::new(),
        }
    }
}

impl Collector for NfsdCollector {
    fn name(&self) -> &'static str {
        "nfsd"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let s = self.buf.with_file(&self.path, |t| {
            parse_nfsd(t).map_err(|r| CollectError::parse(&self.path, r))
        })?;
        let c = MetricType::Counter;
        let g = MetricType::Gauge;
        let one =
            |n: &'static str, h: &'static str, k, v: u64| MetricFamily::single(n, h, k, v as f64);
        let mut packets = MetricFamily::new(
            "node_nfsd_packets_total",
            "Total NFSd network packets (sent+received) by protocol type.",
            c,
        );
        packets.push([("proto", "udp")], s.net[1] as f64);
        packets.push([("proto", "tcp")], s.net[2] as f64);
        let mut errors = MetricFamily::new(
            "node_nfsd_rpc_errors_total",
            "Total number of NFSd RPC errors by error type.",
            c,
        );
        errors.push([("error", "fmt")], s.rpc[2] as f64);
        errors.push([("error", "auth")], s.rpc[3] as f64);
        errors.push([("error", "cInt")], s.rpc[4] as f64);
        let mut req = MetricFamily::new(
            "node_nfsd_requests_total",
            "Total number NFSd Requests by method and protocol.",
            c,
        );
        for (m, v) in crate::collectors::nfs::NFS_V2.iter().zip(&s.v2).skip(1) {
            req.push([("proto", "2"), ("method", m)], *v as f64);
        }
        for (m, v) in crate::collectors::nfs::NFS_V3.iter().zip(&s.v3).skip(1) {
            req.push([("proto", "3"), ("method", m)], *v as f64);
        }
        for (i, m) in V4_OPS {
            req.push([("proto", "4"), ("method", m)], s.v4ops[*i] as f64);
        }
        Ok(vec![
            one(
                "node_nfsd_reply_cache_hits_total",
                "Total number of NFSd Reply Cache hits (client lost server response).",
                c,
                s.rc[0],
            ),
            one(
                "node_nfsd_reply_cache_misses_total",
                "Total number of NFSd Reply Cache an operation that requires caching (idempotent).",
                c,
                s.rc[1],
            ),
            one(
                "node_nfsd_reply_cache_nocache_total",
                "Total number of NFSd Reply Cache non-idempotent operations (rename/delete/…).",
                c,
                s.rc[2],
            ),
            one(
                "node_nfsd_file_handles_stale_total",
                "Total number of NFSd stale file handles",
                c,
                s.fh_stale,
            ),
            one(
                "node_nfsd_disk_bytes_read_total",
                "Total NFSd bytes read.",
                c,
                s.io[0],
            ),
            one(
                "node_nfsd_disk_bytes_written_total",
                "Total NFSd bytes written.",
                c,
                s.io[1],
            ),
            one(
                "node_nfsd_server_threads",
                "Total number of NFSd kernel threads that are running.",
                g,
                s.threads,
            ),
            one(
                "node_nfsd_read_ahead_cache_size_blocks",
                "How large the read ahead cache is in blocks.",
                g,
                s.ra_size,
            ),
            one(
                "node_nfsd_read_ahead_cache_not_found_total",
                "Total number of NFSd read ahead cache not found.",
                c,
                s.ra_not_found,
            ),
            packets,
            one(
                "node_nfsd_connections_total",
                "Total number of NFSd TCP connections.",
                c,
                s.net[3],
            ),
            errors,
            one(
                "node_nfsd_server_rpcs_total",
                "Total number of NFSd RPCs.",
                c,
                s.rpc[0],
            ),
            req,
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn unknown_lines_fail_like_procfs() {
        assert!(parse_nfsd("rc 0 6 18622\nwdeleg_getattr 15\n").is_err());
        let s = parse_nfsd("rc 0 6 18622\nth 8 0 0.000 0.000\nproc4 2 2 10853\n").unwrap();
        assert_eq!(s.rc, [0, 6, 18622]);
        assert_eq!(s.threads, 8);
        assert!(parse_nfsd("proc4 3 1 2 3\n").is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = parse_nfsd(&s);
        }
    }
}
