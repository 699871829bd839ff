//! `udp_queues`: `node_udp_queues{queue="rx|tx",ip="v4|v6"}`, the sums of the `tx_queue`
//! and `rx_queue` columns of `<proc>/1/net/udp{,6}` (host netns), as procfs'
//! `NetUDPSummary`.

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::Buf;
use crate::HostPaths;

/// `(tx, rx)` queue byte sums. Like procfs, a data line whose queue column is malformed
/// makes the file invalid (`None`); the header line is skipped.
pub fn parse_udp_queues(text: &str) -> Option<(u64, u64)> {
    let (mut tx, mut rx) = (0u64, 0u64);
    for (i, line) in text.lines().enumerate() {
        if i == 0 || line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split_ascii_whitespace().collect();
        let q = cols.get(4)?;
        let (t, r) = q.split_once(':')?;
        tx = tx.saturating_add(u64::from_str_radix(t, 16).ok()?);
        rx = rx.saturating_add(u64::from_str_radix(r, 16).ok()?);
    }
    Some((tx, rx))
}

pub(crate) struct UdpQueuesCollector {
    v4: PathBuf,
    v6: PathBuf,
    buf: Buf,
}

impl UdpQueuesCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        UdpQueuesCollector {
            v4: paths.proc.join("1/net/udp"),
            v6: paths.proc.join("1/net/udp6"),
            buf: Buf::new(),
        }
    }
}

impl Collector for UdpQueuesCollector {
    fn name(&self) -> &'static str {
        "udp_queues"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let mut f = MetricFamily::new(
            "node_udp_queues",
            "Number of allocated memory in the kernel for UDP datagrams in bytes.",
            MetricType::Gauge,
        );
        let mut missing = 0;
        for (path, ip) in [(&self.v4, "v4"), (&self.v6, "v6")] {
            match self.buf.with_file(path, |t| {
                parse_udp_queues(t)
                    .ok_or_else(|| CollectError::parse(path, "malformed queue column"))
            }) {
                Ok((tx, rx)) => {
                    f.push([("queue", "tx"), ("ip", ip)], tx as f64);
                    f.push([("queue", "rx"), ("ip", ip)], rx as f64);
                }
                Err(e) if e.is_unavailable() => missing += 1,
                Err(e) => return Err(e),
            }
        }
        if missing == 2 {
            return Err(CollectError::Unavailable {
                what: self.v4.display().to_string(),
                reason: "neither udp nor udp6 exists".into(),
            });
        }
        Ok(vec![f])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sums_queues() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:0016 00000000:0000 0A 00000015:00000000 00:00000000 00000000     0        0 2740 1\n\
   1: 00000000:0017 00000000:0000 0A 00000001:00000010 00:00000000 00000000     0        0 2741 1\n";
        assert_eq!(parse_udp_queues(t), Some((0x16, 0x10)));
        assert_eq!(parse_udp_queues("h\n 0: a b c zz\n"), None);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = parse_udp_queues(&s);
        }
    }
}
