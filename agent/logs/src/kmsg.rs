//! The kernel log: `/dev/kmsg` records `prio,seq,usec,flags[,...];message` followed by
//! optional ` KEY=value` continuation lines. The parser recognises the events the flight
//! recorder keeps (OOM kills, hung tasks, segfaults, link flaps) and tags them with
//! [`KernelEvent`].

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KmsgError {
    #[error("kmsg record: {0}")]
    Malformed(&'static str),
}

/// One kernel log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmsgRecord {
    /// syslog level 0 (emerg) ..= 7 (debug).
    pub level: u8,
    /// syslog facility (0 = kern, 1 = user for lines written to /dev/kmsg, ...).
    pub facility: u32,
    pub seq: u64,
    /// Microseconds since boot (the kernel's monotonic clock).
    pub usec: u64,
    /// The record continues the previous one (`c` flag; rare since 4.x).
    pub continuation: bool,
    pub message: String,
    /// `SUBSYSTEM=`, `DEVICE=` dictionary entries.
    pub dict: Vec<(String, String)>,
}

/// Recognised kernel events (the record attribute `kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    OomKill,
    HungTask,
    Segfault,
    LinkDown,
    LinkUp,
}

impl KernelEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            KernelEvent::OomKill => "kernel_oom_kill",
            KernelEvent::HungTask => "kernel_hung_task",
            KernelEvent::Segfault => "kernel_segfault",
            KernelEvent::LinkDown => "kernel_link_down",
            KernelEvent::LinkUp => "kernel_link_up",
        }
    }

    /// Classifies a kernel message.
    pub fn classify(msg: &str) -> Option<KernelEvent> {
        if msg.starts_with("Out of memory: Kill")
            || msg.starts_with("Memory cgroup out of memory: Kill")
            || msg.starts_with("oom-kill:")
            || msg.contains("invoked oom-killer")
        {
            return Some(KernelEvent::OomKill);
        }
        if msg.starts_with("INFO: task ") && msg.contains(" blocked for more than ") {
            return Some(KernelEvent::HungTask);
        }
        if msg.contains(" segfault at ") || msg.contains("general protection fault ip:") {
            return Some(KernelEvent::Segfault);
        }
        let lower = msg.to_ascii_lowercase();
        if lower.contains("link is down") || lower.contains("link down") {
            return Some(KernelEvent::LinkDown);
        }
        if lower.contains("link is up") || lower.contains("link becomes ready") {
            return Some(KernelEvent::LinkUp);
        }
        None
    }
}

fn field<'a>(it: &mut impl Iterator<Item = &'a str>, what: &'static str) -> Result<u64, KmsgError> {
    it.next()
        .ok_or(KmsgError::Malformed(what))?
        .parse()
        .map_err(|_| KmsgError::Malformed(what))
}

/// Undoes the kernel's `\xNN` escaping of non-printable bytes.
fn unescape(s: &str) -> String {
    if !s.contains("\\x") {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1] == b'x' {
            if let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 2..i + 4]).unwrap_or("zz"), 16)
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses one record as returned by one `read(2)` of `/dev/kmsg`.
pub fn parse(rec: &[u8]) -> Result<KmsgRecord, KmsgError> {
    let s = std::str::from_utf8(rec).map_err(|_| KmsgError::Malformed("not UTF-8"))?;
    let s = s.strip_suffix('\n').unwrap_or(s);
    let (head, rest) = s
        .split_once(';')
        .ok_or(KmsgError::Malformed("no ';' after the header"))?;
    let mut it = head.split(',');
    let prio = field(&mut it, "priority")?;
    let seq = field(&mut it, "sequence number")?;
    let usec = field(&mut it, "timestamp")?;
    let flags = it.next().unwrap_or("-");
    let mut lines = rest.split('\n');
    let message = unescape(lines.next().unwrap_or_default());
    let dict = lines
        .filter_map(|l| l.strip_prefix(' '))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), unescape(v)))
        .collect();
    let facility = u32::try_from(prio >> 3).map_err(|_| KmsgError::Malformed("priority"))?;
    Ok(KmsgRecord {
        level: (prio & 7) as u8,
        facility,
        seq,
        usec,
        continuation: flags.starts_with('c'),
        message,
        dict,
    })
}

pub fn level_name(level: u8) -> &'static str {
    match level {
        0 => "emerg",
        1 => "alert",
        2 => "crit",
        3 => "err",
        4 => "warning",
        5 => "notice",
        6 => "info",
        _ => "debug",
    }
}

pub fn facility_name(f: u32) -> &'static str {
    const NAMES: [&str; 24] = [
        "kern",
        "user",
        "mail",
        "daemon",
        "auth",
        "syslog",
        "lpr",
        "news",
        "uucp",
        "cron",
        "authpriv",
        "ftp",
        "ntp",
        "security",
        "console",
        "solaris-cron",
        "local0",
        "local1",
        "local2",
        "local3",
        "local4",
        "local5",
        "local6",
        "local7",
    ];
    NAMES.get(f as usize).copied().unwrap_or("unknown")
}

/// Tracks sequence numbers: how many records were skipped (the ring overwrote them before
/// they were read).
#[derive(Debug, Default)]
pub struct SeqTracker {
    last: Option<u64>,
}

impl SeqTracker {
    pub fn new(last: Option<u64>) -> Self {
        SeqTracker { last }
    }
    /// Returns the number of records missing before `seq` (0 when contiguous), and whether
    /// the record was already seen (seq ≤ last: skip it).
    pub fn observe(&mut self, seq: u64) -> (u64, bool) {
        match self.last {
            Some(l) if seq <= l => (0, true),
            Some(l) => {
                self.last = Some(seq);
                (seq - l - 1, false)
            }
            None => {
                self.last = Some(seq);
                (0, false)
            }
        }
    }
    pub fn last(&self) -> Option<u64> {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_records() {
        let r = parse(b"6,339,5140900,-;NET: Registered protocol family 10\n").unwrap();
        assert_eq!(r.level, 6);
        assert_eq!(r.facility, 0);
        assert_eq!(r.seq, 339);
        assert_eq!(r.usec, 5_140_900);
        assert_eq!(r.message, "NET: Registered protocol family 10");
        let r = parse(b"12,1,2,c,more;hello\\x0aworld\n SUBSYSTEM=net\n DEVICE=n2\n").unwrap();
        assert_eq!(r.level, 4);
        assert_eq!(r.facility, 1);
        assert!(r.continuation);
        assert_eq!(r.message, "hello\nworld");
        assert_eq!(
            r.dict,
            vec![
                ("SUBSYSTEM".to_string(), "net".to_string()),
                ("DEVICE".to_string(), "n2".to_string())
            ]
        );
        assert!(parse(b"x,1,2,-;m").is_err());
        assert!(parse(b"6,1,2,-").is_err());
        assert!(parse(b"6;m").is_err());
    }

    #[test]
    fn classifies_events() {
        use KernelEvent::*;
        for (m, k) in [
            (
                "Out of memory: Killed process 1234 (stress) total-vm:1kB",
                Some(OomKill),
            ),
            (
                "Memory cgroup out of memory: Killed process 99 (java)",
                Some(OomKill),
            ),
            (
                "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null)",
                Some(OomKill),
            ),
            (
                "INFO: task kworker/0:1:123 blocked for more than 120 seconds.",
                Some(HungTask),
            ),
            (
                "app[4242]: segfault at 0 ip 000055d sp 00007ff error 4 in app[55d+1000]",
                Some(Segfault),
            ),
            ("e1000e 0000:00:19.0 eth0: NIC Link is Down", Some(LinkDown)),
            (
                "e1000e 0000:00:19.0 eth0: NIC Link is Up 1000 Mbps Full Duplex",
                Some(LinkUp),
            ),
            (
                "IPv6: ADDRCONF(NETDEV_CHANGE): eth0: link becomes ready",
                Some(LinkUp),
            ),
            ("NET: Registered protocol family 10", None),
        ] {
            assert_eq!(KernelEvent::classify(m), k, "{m}");
        }
    }

    #[test]
    fn sequence_gaps() {
        let mut t = SeqTracker::new(Some(10));
        assert_eq!(t.observe(10), (0, true));
        assert_eq!(t.observe(11), (0, false));
        assert_eq!(t.observe(15), (3, false));
        assert_eq!(t.last(), Some(15));
        let mut t = SeqTracker::new(None);
        assert_eq!(t.observe(100), (0, false));
    }

    proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = parse(&b);
        }

        #[test]
        fn round_trips(prio in 0u64..200, seq in any::<u64>(), usec in any::<u64>(), msg in "[ -~]{0,80}") {
            let rec = format!("{prio},{seq},{usec},-;{}\n", msg.replace('\\', "/"));
            let r = parse(rec.as_bytes()).unwrap();
            prop_assert_eq!(u64::from(r.level), prio & 7);
            prop_assert_eq!(u64::from(r.facility), prio >> 3);
            prop_assert_eq!(r.seq, seq);
            prop_assert_eq!(r.usec, usec);
            prop_assert_eq!(r.message, msg.replace('\\', "/"));
        }
    }
}
