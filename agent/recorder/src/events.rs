//! The events ring: log records from the pipeline (failed/slow connects, resets, kernel
//! log lines, ...) and the recorder's own (incidents, OOM kills seen in cgroup counters),
//! each encoded once into a compact byte record; oldest dropped first when the byte
//! budget is reached.

use std::collections::VecDeque;

use nodescope_model::{LogRecord, Severity};
use serde::Serialize;

use crate::codec::{put_str, put_uvarint, Reader};
use crate::samples::unix_ms;

const MAX_BODY: usize = 2048;
const MAX_LABEL: usize = 256;
const MAX_PAIRS: usize = 32;
const RECORD_OVERHEAD: usize = 40;

/// An event as the HTTP API and bundles give it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Event {
    /// Unix seconds (with milliseconds).
    pub time: f64,
    pub kind: String,
    pub severity: &'static str,
    pub body: String,
    pub labels: serde_json::Map<String, serde_json::Value>,
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

impl Event {
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels.get(k).and_then(|v| v.as_str())
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct EventStats {
    pub bytes: usize,
    pub events: usize,
    pub recorded: u64,
    pub evicted: u64,
}

pub struct EventRing {
    budget: usize,
    retention_ms: i64,
    ring: VecDeque<(i64, Box<[u8]>)>,
    bytes: usize,
    stats: EventStats,
}

fn sev_code(s: Severity) -> u8 {
    match s {
        Severity::Debug => 0,
        Severity::Info => 1,
        Severity::Warn => 2,
        Severity::Error => 3,
    }
}

fn sev_name(c: u8) -> &'static str {
    match c {
        0 => "debug",
        1 => "info",
        2 => "warn",
        _ => "error",
    }
}

impl EventRing {
    pub fn new(budget: usize, retention_ms: i64) -> Self {
        EventRing {
            budget,
            retention_ms,
            ring: VecDeque::new(),
            bytes: 0,
            stats: EventStats::default(),
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes + self.ring.capacity() * std::mem::size_of::<(i64, Box<[u8]>)>()
    }

    pub fn stats(&self) -> EventStats {
        EventStats {
            bytes: self.bytes(),
            events: self.ring.len(),
            ..self.stats
        }
    }

    pub fn push(&mut self, r: &LogRecord, now_ms: i64) {
        let mut b = Vec::with_capacity(64 + r.body.len().min(MAX_BODY));
        b.push(sev_code(r.severity));
        put_str(&mut b, &r.kind, MAX_LABEL);
        put_str(&mut b, &r.body, MAX_BODY);
        for set in [&r.labels, &r.attributes] {
            let n = set.len().min(MAX_PAIRS);
            put_uvarint(&mut b, n as u64);
            for (k, v) in set.iter().take(n) {
                put_str(&mut b, k, MAX_LABEL);
                put_str(&mut b, v, MAX_LABEL);
            }
        }
        let t = unix_ms(r.timestamp);
        self.bytes += b.len() + RECORD_OVERHEAD;
        // Keep time order (records of one batch may come slightly out of order).
        let pos = self
            .ring
            .iter()
            .rev()
            .position(|(ts, _)| *ts <= t)
            .map(|p| self.ring.len() - p)
            .unwrap_or(0);
        self.ring.insert(pos, (t, b.into_boxed_slice()));
        self.stats.recorded += 1;
        self.enforce(now_ms);
    }

    pub fn enforce(&mut self, now_ms: i64) {
        while let Some((t, b)) = self.ring.front() {
            if *t >= now_ms - self.retention_ms && self.bytes() <= self.budget {
                break;
            }
            self.bytes -= b.len() + RECORD_OVERHEAD;
            self.ring.pop_front();
            self.stats.evicted += 1;
        }
    }

    /// Events with `from <= t <= to` that `keep` accepts, oldest first; at most the
    /// newest `limit`.
    pub fn query(
        &self,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
        keep: impl Fn(&Event) -> bool,
    ) -> Vec<Event> {
        let mut out: Vec<Event> = Vec::new();
        for (t, b) in self.ring.iter().rev() {
            if *t > to_ms {
                continue;
            }
            if *t < from_ms || out.len() >= limit {
                break;
            }
            if let Some(e) = decode(*t, b) {
                if keep(&e) {
                    out.push(e);
                }
            }
        }
        out.reverse();
        out
    }
}

fn decode(t: i64, b: &[u8]) -> Option<Event> {
    let mut r = Reader::new(b);
    let sev = r.u8()?;
    let kind = r.str()?.to_string();
    let body = r.str()?.to_string();
    let mut sets = [serde_json::Map::new(), serde_json::Map::new()];
    for set in sets.iter_mut() {
        let n = r.uvarint()?;
        for _ in 0..n {
            let k = r.str()?;
            let v = r.str()?;
            set.insert(k.to_string(), serde_json::Value::String(v.to_string()));
        }
    }
    let [labels, attributes] = sets;
    Some(Event {
        time: t as f64 / 1000.0,
        kind,
        severity: sev_name(sev),
        body,
        labels,
        attributes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn rec(ms: u64, kind: &'static str, body: &str) -> LogRecord {
        LogRecord {
            timestamp: UNIX_EPOCH + Duration::from_millis(ms),
            severity: Severity::Warn,
            kind: kind.into(),
            body: body.into(),
            labels: vec![("workload".into(), "/w".into())],
            attributes: vec![("pid".into(), "42".into())],
        }
    }

    #[test]
    fn events_round_trip_in_time_order_and_limit_keeps_the_newest() {
        let mut r = EventRing::new(1 << 20, 1 << 40);
        r.push(&rec(2000, "b", "second"), 3000);
        r.push(&rec(1000, "a", "first"), 3000);
        r.push(&rec(3000, "c", "third"), 3000);
        let all = r.query(0, i64::MAX, 10, |_| true);
        assert_eq!(
            all.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(all[0].label("workload"), Some("/w"));
        assert_eq!(all[0].severity, "warn");
        assert_eq!(all[0].time, 1.0);
        let last2 = r.query(0, i64::MAX, 2, |_| true);
        assert_eq!(last2[0].kind, "b");
        assert_eq!(r.query(1500, 2500, 10, |_| true).len(), 1);
    }

    #[test]
    fn budget_evicts_oldest_and_counts() {
        let mut r = EventRing::new(10_000, 1 << 40);
        let body = "x".repeat(100_000);
        for i in 0..1000 {
            r.push(&rec(i, "flood", &body), i as i64);
            assert!(r.bytes() <= 10_000 + 8192);
        }
        let s = r.stats();
        assert!(s.evicted > 900);
        assert_eq!(s.recorded, 1000);
        // Bodies are cut, so a record is bounded.
        assert!(r.query(0, i64::MAX, 1, |_| true)[0].body.len() <= MAX_BODY);
    }
}
