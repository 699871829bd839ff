//! Notable events from the ring buffer (failed / slow connects, resets) -> log records.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use nodescope_ebpf::net::{
    comm_str, ip_from_bytes, Event, EV_CONNECT_FAILED, EV_CONNECT_SLOW, EV_RESET_RECEIVED,
    EV_RESET_SENT,
};
use nodescope_model::workload::PodRef;
use nodescope_model::{Labels, LogRecord, Severity};

use crate::aggregate::{direction_name, error_name, ReasonNames, TCP_STATES};
use crate::workload::Resolved;

/// `CLOCK_MONOTONIC` now, in nanoseconds (the clock of `bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// Wall-clock time of a kernel monotonic timestamp.
pub fn wall_time(ts_ns: u64, now_mono: u64, now_wall: SystemTime) -> SystemTime {
    let age = now_mono.saturating_sub(ts_ns);
    now_wall
        .checked_sub(Duration::from_nanos(age))
        .unwrap_or(now_wall)
}

fn s(k: &'static str, v: impl Into<String>) -> (Cow<'static, str>, String) {
    (Cow::Borrowed(k), v.into())
}

/// The event class (`LogRecord::kind`).
pub fn kind_name(kind: u8) -> &'static str {
    match kind {
        EV_CONNECT_FAILED => "tcp_connect_failed",
        EV_CONNECT_SLOW => "tcp_connect_slow",
        EV_RESET_SENT => "tcp_reset_sent",
        EV_RESET_RECEIVED => "tcp_reset_received",
        _ => "tcp_event",
    }
}

/// Builds the log record of one event.
pub fn to_log(
    e: &Event,
    w: &Resolved,
    pod: Option<PodRef>,
    names: &ReasonNames,
    timestamp: SystemTime,
) -> LogRecord {
    let local = ip_from_bytes(&e.saddr);
    let peer = ip_from_bytes(&e.daddr);
    let comm = comm_str(&e.comm);
    let latency = e.latency_ns as f64 / 1e9;
    let mut labels: Labels = vec![s("workload", w.id.clone())];
    if let Some(p) = &pod {
        labels.push(s("namespace", p.namespace.clone()));
        labels.push(s("pod", p.pod.clone()));
        labels.push(s("container", p.container.clone()));
    }
    labels.push(s("direction", direction_name(e.direction)));
    let mut attrs: Labels = vec![
        s("peer_address", peer.to_string()),
        s("peer_port", e.dport.to_string()),
        s("local_address", local.to_string()),
        s("local_port", e.sport.to_string()),
    ];
    if e.pid != 0 {
        attrs.push(s("pid", e.pid.to_string()));
    }
    if !comm.is_empty() {
        attrs.push(s("process", comm.clone()));
    }
    if !w.path.is_empty() {
        attrs.push(s("cgroup", w.path.clone()));
    }
    let who = if comm.is_empty() {
        String::new()
    } else {
        format!(" (process {comm}, pid {})", e.pid)
    };
    let (severity, body) = match e.kind {
        EV_CONNECT_FAILED => {
            let err = error_name(e.error as usize);
            labels.push(s("error", err));
            attrs.push(s("errno", e.sk_err.to_string()));
            attrs.push(s("latency_seconds", format!("{latency:.6}")));
            (
                Severity::Warn,
                format!(
                    "TCP connect to {peer}:{} failed: {err} after {latency:.6} s{who}",
                    e.dport
                ),
            )
        }
        EV_CONNECT_SLOW => {
            attrs.push(s("latency_seconds", format!("{latency:.6}")));
            (
                Severity::Info,
                format!(
                    "slow TCP connect to {peer}:{}: {latency:.6} s{who}",
                    e.dport
                ),
            )
        }
        EV_RESET_SENT => {
            let reason = names.reset(e.reason as u32);
            labels.push(s("reason", reason.clone()));
            (
                Severity::Info,
                format!(
                    "TCP reset sent to {peer}:{} from local port {} ({reason}){who}",
                    e.dport, e.sport
                ),
            )
        }
        _ => {
            let st = TCP_STATES
                .get(e.reason as usize)
                .copied()
                .unwrap_or("unknown");
            labels.push(s("reason", st));
            (
                Severity::Info,
                format!(
                    "TCP reset received from {peer}:{} on local port {} in state {st}{who}",
                    e.dport, e.sport
                ),
            )
        }
    };
    LogRecord {
        timestamp,
        severity,
        kind: Cow::Borrowed(kind_name(e.kind)),
        body,
        labels,
        attributes: attrs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodescope_model::workload::WorkloadKind;

    #[test]
    fn failed_connect_record() {
        let mut d = [0u8; 16];
        d[10] = 0xff;
        d[11] = 0xff;
        d[12..].copy_from_slice(&[10, 1, 2, 3]);
        let e = Event {
            ts_ns: 5,
            cgroup_id: 9,
            latency_ns: 1_500_000,
            saddr: [0; 16],
            daddr: d,
            sport: 40000,
            dport: 8080,
            pid: 42,
            kind: EV_CONNECT_FAILED,
            family: 2,
            direction: 0,
            error: 0,
            reason: 0,
            sk_err: 111,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
        };
        let w = Resolved {
            kind: WorkloadKind::SystemdUnit,
            id: "app.service".into(),
            path: "/system.slice/app.service".into(),
        };
        let r = to_log(
            &e,
            &w,
            None,
            &ReasonNames::default(),
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(r.kind, "tcp_connect_failed");
        assert_eq!(r.severity, Severity::Warn);
        assert!(
            r.body.contains("10.1.2.3:8080 failed: refused"),
            "{}",
            r.body
        );
        assert!(r.body.contains("curl"));
        assert!(r
            .labels
            .contains(&(Cow::Borrowed("error"), "refused".into())));
        assert!(r.attributes.contains(&(Cow::Borrowed("pid"), "42".into())));
        assert!(r
            .attributes
            .contains(&(Cow::Borrowed("errno"), "111".into())));
    }

    #[test]
    fn wall_time_from_monotonic() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        assert_eq!(
            wall_time(1_000_000_000, 3_000_000_000, now),
            SystemTime::UNIX_EPOCH + Duration::from_secs(98)
        );
        assert_eq!(wall_time(5, 1, now), now);
        assert!(monotonic_ns() > 0);
    }
}
