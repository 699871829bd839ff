//! `nfs`: NFS client RPC statistics from `<proc>/1/net/rpc/nfs` (host netns), as
//! node_exporter 1.5 exports them: `node_nfs_packets_total{protocol}`,
//! `node_nfs_connections_total`, `node_nfs_rpcs_total`, `node_nfs_rpc_retransmissions_total`,
//! `node_nfs_rpc_authentication_refreshes_total` and
//! `node_nfs_requests_total{proto,method}` (method names are procfs' field names).

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::Buf;
use crate::HostPaths;

pub const NFS_V2: &[&str] = &[
    "Null", "GetAttr", "SetAttr", "Root", "Lookup", "ReadLink", "Read", "WrCache", "Write",
    "Create", "Remove", "Rename", "Link", "SymLink", "MkDir", "RmDir", "ReadDir", "FsStat",
];

pub const NFS_V3: &[&str] = &[
    "Null",
    "GetAttr",
    "SetAttr",
    "Lookup",
    "Access",
    "ReadLink",
    "Read",
    "Write",
    "Create",
    "MkDir",
    "SymLink",
    "MkNod",
    "Remove",
    "RmDir",
    "Rename",
    "Link",
    "ReadDir",
    "ReadDirPlus",
    "FsStat",
    "FsInfo",
    "PathConf",
    "Commit",
];

pub const NFS_CLIENT_V4: &[&str] = &[
    "Null",
    "Read",
    "Write",
    "Commit",
    "Open",
    "OpenConfirm",
    "OpenNoattr",
    "OpenDowngrade",
    "Close",
    "Setattr",
    "FsInfo",
    "Renew",
    "SetClientID",
    "SetClientIDConfirm",
    "Lock",
    "Lockt",
    "Locku",
    "Access",
    "Getattr",
    "Lookup",
    "LookupRoot",
    "Remove",
    "Rename",
    "Link",
    "Symlink",
    "Create",
    "Pathconf",
    "StatFs",
    "ReadLink",
    "ReadDir",
    "ServerCaps",
    "DelegReturn",
    "GetACL",
    "SetACL",
    "FsLocations",
    "ReleaseLockowner",
    "Secinfo",
    "FsidPresent",
    "ExchangeID",
    "CreateSession",
    "DestroySession",
    "Sequence",
    "GetLeaseTime",
    "ReclaimComplete",
    "LayoutGet",
    "GetDeviceInfo",
    "LayoutCommit",
    "LayoutReturn",
    "SecinfoNoName",
    "TestStateID",
    "FreeStateID",
    "GetDeviceList",
    "BindConnToSession",
    "DestroyClientID",
    "Seek",
    "Allocate",
    "DeAllocate",
    "LayoutStats",
    "Clone",
];

/// The client statistics node_exporter exports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NfsClientStats {
    /// net: netcnt, udpcnt, tcpcnt, tcpconn.
    pub net: [u64; 4],
    /// rpc: calls, retransmissions, auth refreshes.
    pub rpc: [u64; 3],
    pub v2: Vec<u64>,
    pub v3: Vec<u64>,
    pub v4: Vec<u64>,
}

/// Parses `/proc/net/rpc/nfs` as procfs' `ParseClientRPCStats` (an unknown line or a line
/// of the wrong length fails the file).
pub fn parse_nfs_client(text: &str) -> Result<NfsClientStats, String> {
    let mut s = NfsClientStats {
        v2: vec![0; NFS_V2.len()],
        v3: vec![0; NFS_V3.len()],
        v4: vec![0; NFS_CLIENT_V4.len()],
        ..Default::default()
    };
    for line in text.lines() {
        let parts: Vec<&str> = line.split_ascii_whitespace().collect();
        if parts.len() < 2 {
            return Err(format!("invalid NFS metric line {line:?}"));
        }
        let v: Vec<u64> = parts[1..]
            .iter()
            .map(|p| p.parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("error parsing NFS metric line: {e}"))?;
        let counted = |min: usize| -> Result<&[u64], String> {
            let n = v[0] as usize;
            if v.len() - 1 != n || n < min {
                return Err(format!("invalid {} line {v:?}", parts[0]));
            }
            Ok(&v[1..])
        };
        match parts[0] {
            "net" if v.len() == 4 => s.net.copy_from_slice(&v),
            "rpc" if v.len() == 3 => s.rpc.copy_from_slice(&v),
            "net" | "rpc" => return Err(format!("invalid {} line {v:?}", parts[0])),
            "proc2" => {
                let x = counted(NFS_V2.len())?;
                s.v2.copy_from_slice(&x[..NFS_V2.len()]);
            }
            "proc3" => {
                let x = counted(NFS_V3.len())?;
                s.v3.copy_from_slice(&x[..NFS_V3.len()]);
            }
            "proc4" => {
                let x = counted(0)?;
                for (i, slot) in s.v4.iter_mut().enumerate() {
                    *slot = x.get(i).copied().unwrap_or(0);
                }
            }
            other => return Err(format!("unknown NFS metric line {other:?}")),
        }
    }
    Ok(s)
}

pub(crate) struct NfsCollector {
    path: PathBuf,
    buf: Buf,
}

impl NfsCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        NfsCollector {
            path: paths.proc.join("1/net/rpc/nfs"),
            buf: Buf::new(),
        }
    }
}

impl Collector for NfsCollector {
    fn name(&self) -> &'static str {
        "nfs"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let s = self.buf.with_file(&self.path, |t| {
            parse_nfs_client(t).map_err(|r| CollectError::parse(&self.path, r))
        })?;
        let c = MetricType::Counter;
        let mut packets = MetricFamily::new(
            "node_nfs_packets_total",
            "Total NFSd network packets (sent+received) by protocol type.",
            c,
        );
        packets.push([("protocol", "udp")], s.net[1] as f64);
        packets.push([("protocol", "tcp")], s.net[2] as f64);
        let mut req = MetricFamily::new(
            "node_nfs_requests_total",
            "Number of NFS procedures invoked.",
            c,
        );
        for (proto, names, vals) in [
            ("2", NFS_V2, &s.v2),
            ("3", NFS_V3, &s.v3),
            ("4", NFS_CLIENT_V4, &s.v4),
        ] {
            for (m, v) in names.iter().zip(vals.iter()) {
                req.push([("proto", proto), ("method", m)], *v as f64);
            }
        }
        Ok(vec![
            packets,
            MetricFamily::single(
                "node_nfs_connections_total",
                "Total number of NFSd TCP connections.",
                c,
                s.net[3] as f64,
            ),
            MetricFamily::single(
                "node_nfs_rpcs_total",
                "Total number of RPCs performed.",
                c,
                s.rpc[0] as f64,
            ),
            MetricFamily::single(
                "node_nfs_rpc_retransmissions_total",
                "Number of RPC transmissions performed.",
                c,
                s.rpc[1] as f64,
            ),
            MetricFamily::single(
                "node_nfs_rpc_authentication_refreshes_total",
                "Number of RPC authentication refreshes performed.",
                c,
                s.rpc[2] as f64,
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
    fn short_v4_is_zero_padded_and_bad_lines_fail() {
        let s = parse_nfs_client("net 1 2 3 4\nrpc 5 6 7\nproc4 2 10 11\n").unwrap();
        assert_eq!(s.v4[0], 10);
        assert_eq!(s.v4[1], 11);
        assert_eq!(s.v4[2], 0);
        assert!(parse_nfs_client("net 1 2\n").is_err());
        assert!(parse_nfs_client("proc3 2 1 1\n").is_err());
        assert!(parse_nfs_client("bogus 1\n").is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = parse_nfs_client(&s);
        }
    }
}
