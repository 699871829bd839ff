//! The recorder: its rings under one memory cap, fed by the collectors (every second for
//! the host, every 10 s for workloads and peers), the pipeline's events and the
//! profiler's samples; and its self metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use nodescope_model::feeds::{EventSink, SampleBatch, SampleSink};
use nodescope_model::selfmetrics::{Counter, Gauge, SelfMetrics};
use nodescope_model::{LogRecord, MetricBatch, Severity, Value};
use parking_lot::Mutex;

use crate::config::RecorderConfig;
use crate::events::EventRing;
use crate::samples::{unix_ms, SampleRing};
use crate::series::SeriesRing;

/// Share of `memory_cap` each ring may use (the rest is headroom for queries and the
/// incident being written).
pub const SHARES: [(&str, f64); 6] = [
    ("host_fine", 0.10),
    ("host_coarse", 0.05),
    ("workload", 0.10),
    ("network", 0.20),
    ("samples", 0.25),
    ("events", 0.10),
];

/// Families recorded per workload (from the `cgroup` collector).
pub const WORKLOAD_FAMILIES: &[&str] = &[
    "nodescope_workload_cpu_usage_seconds_total",
    "nodescope_workload_cpu_throttled_seconds_total",
    "nodescope_workload_memory_usage_bytes",
    "nodescope_workload_memory_working_set_bytes",
    "nodescope_workload_memory_limit_bytes",
    "nodescope_workload_memory_events_total",
    "nodescope_workload_pressure_waiting_seconds_total",
    "nodescope_workload_pressure_stalled_seconds_total",
    "nodescope_workload_io_read_bytes_total",
    "nodescope_workload_io_written_bytes_total",
];

/// Families recorded per workload → peer (from the `network` collector).
pub const NETWORK_FAMILIES: &[&str] = &[
    "nodescope_tcp_connect_duration_seconds",
    "nodescope_tcp_connect_errors_total",
    "nodescope_tcp_rtt_seconds",
    "nodescope_tcp_retransmits_total",
    "nodescope_tcp_resets_total",
];

pub const CGROUP_COLLECTOR: &str = "cgroup";
pub const NETWORK_COLLECTOR: &str = "network";

struct RingMetrics {
    bytes: Gauge,
    evicted: Counter,
    dropped: Counter,
}

struct Metrics {
    rings: Vec<RingMetrics>,
    cap: Gauge,
    total: Gauge,
    events: Counter,
    samples: Counter,
    cpu: Counter,
    ticks: Counter,
}

/// The flight recorder's state (see the crate doc).
pub struct Recorder {
    pub cfg: RecorderConfig,
    pub node: String,
    pub host_fine: Mutex<SeriesRing>,
    pub host_coarse: Mutex<SeriesRing>,
    pub workload: Mutex<SeriesRing>,
    pub network: Mutex<SeriesRing>,
    pub samples: Mutex<SampleRing>,
    pub events: Mutex<EventRing>,
    oom_seen: Mutex<HashMap<String, f64>>,
    m: Metrics,
    cpu_ns: AtomicU64,
    last_events: AtomicU64,
    last_samples: AtomicU64,
}

/// CPU time of the calling thread, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Recorder {
    pub fn new(cfg: RecorderConfig, node: String, sm: &SelfMetrics) -> Arc<Recorder> {
        let cap = cfg.memory_cap.0 as f64;
        let share = |i: usize| (cap * SHARES[i].1) as usize;
        let fine = cfg.fine_retention.as_millis() as i64;
        let coarse = cfg.coarse_retention.as_millis() as i64;
        let rings = SHARES
            .iter()
            .map(|(name, _)| RingMetrics {
                bytes: sm.gauge(
                    "nodescope_recorder_bytes",
                    "Bytes the flight recorder's ring holds (all rings together stay under memory_cap).",
                    &[("ring", name)],
                ),
                evicted: sm.counter(
                    "nodescope_recorder_evicted_total",
                    "Chunks (events for the events ring) the ring evicted, oldest first, to stay within its budget and retention.",
                    &[("ring", name)],
                ),
                dropped: sm.counter(
                    "nodescope_recorder_dropped_total",
                    "New series (stacks for the samples ring) not recorded because the ring's series cap was reached.",
                    &[("ring", name)],
                ),
            })
            .collect();
        let m = Metrics {
            rings,
            cap: sm.gauge(
                "nodescope_recorder_memory_cap_bytes",
                "The flight recorder's memory cap.",
                &[],
            ),
            total: sm.gauge(
                "nodescope_recorder_memory_bytes",
                "Bytes all of the flight recorder's rings hold.",
                &[],
            ),
            events: sm.counter(
                "nodescope_recorder_events_total",
                "Events recorded in the events ring.",
                &[],
            ),
            samples: sm.counter(
                "nodescope_recorder_samples_total",
                "On-CPU samples recorded.",
                &[],
            ),
            cpu: sm.counter(
                "nodescope_recorder_cpu_seconds_total",
                "CPU time the flight recorder spent recording, answering queries and writing bundles (excluding the collectors' own runs, which it shares with scrapes).",
                &[],
            ),
            ticks: sm.counter(
                "nodescope_recorder_ticks_total",
                "Host metric frames recorded.",
                &[],
            ),
        };
        m.cap.set(cap);
        Arc::new(Recorder {
            host_fine: Mutex::new(SeriesRing::new(share(0), fine, 60, cfg.series_cap)),
            host_coarse: Mutex::new(SeriesRing::new(share(1), coarse, 60, cfg.series_cap)),
            workload: Mutex::new(SeriesRing::new(share(2), coarse, 30, cfg.series_cap)),
            network: Mutex::new({
                let mut r = SeriesRing::new(share(3), coarse, 30, cfg.series_cap);
                r.counters_start_at_zero = true;
                r
            }),
            samples: Mutex::new(SampleRing::new(
                share(4),
                coarse,
                cfg.sample_retention.as_millis() as i64,
                10_000,
                cfg.stack_cap,
            )),
            events: Mutex::new(EventRing::new(share(5), coarse)),
            oom_seen: Mutex::new(HashMap::new()),
            cfg,
            node,
            m,
            cpu_ns: AtomicU64::new(0),
            last_events: AtomicU64::new(0),
            last_samples: AtomicU64::new(0),
        })
    }

    /// Runs `f`, adding the thread CPU time it took to the recorder's own.
    pub fn timed<R>(&self, f: impl FnOnce() -> R) -> R {
        let t0 = thread_cpu_ns();
        let r = f();
        let dt = thread_cpu_ns().saturating_sub(t0);
        let total = self.cpu_ns.fetch_add(dt, Ordering::Relaxed) + dt;
        let secs = total / 1_000_000_000;
        let prev = self.m.cpu.get();
        if secs > prev {
            self.m.cpu.add(secs - prev);
        }
        r
    }

    /// Recorder CPU time so far (ns).
    pub fn cpu_ns(&self) -> u64 {
        self.cpu_ns.load(Ordering::Relaxed)
    }

    /// Bytes of all rings.
    pub fn bytes(&self) -> usize {
        self.ring_bytes().iter().sum()
    }

    fn ring_bytes(&self) -> [usize; 6] {
        [
            self.host_fine.lock().bytes(),
            self.host_coarse.lock().bytes(),
            self.workload.lock().bytes(),
            self.network.lock().bytes(),
            self.samples.lock().bytes(),
            self.events.lock().bytes(),
        ]
    }

    /// Takes in one collection: host collectors every second (`ts_ms` on a whole second),
    /// and at every 10 s also the workload and network collectors.
    pub fn ingest(&self, ts_ms: i64, batches: &[Arc<MetricBatch>]) {
        self.timed(|| {
            let host: Vec<Arc<MetricBatch>> = batches
                .iter()
                .filter(|b| self.cfg.host_collectors.iter().any(|c| *c == b.source))
                .cloned()
                .collect();
            if !host.is_empty() {
                self.host_fine
                    .lock()
                    .record(ts_ms, &host, |_| true, |_| true);
                if ts_ms % 10_000 == 0 {
                    self.host_coarse
                        .lock()
                        .record(ts_ms, &host, |_| true, |_| true);
                }
                self.m.ticks.inc();
            }
            let of = |src: &str| -> Vec<Arc<MetricBatch>> {
                batches
                    .iter()
                    .filter(|b| b.source == src)
                    .cloned()
                    .collect()
            };
            let wl = of(CGROUP_COLLECTOR);
            if !wl.is_empty() {
                self.workload.lock().record(
                    ts_ms,
                    &wl,
                    |n| WORKLOAD_FAMILIES.contains(&n),
                    |_| true,
                );
                self.oom_events(ts_ms, &wl);
            }
            let net = of(NETWORK_COLLECTOR);
            if !net.is_empty() {
                self.network.lock().record(
                    ts_ms,
                    &net,
                    |n| NETWORK_FAMILIES.contains(&n),
                    |_| true,
                );
            }
            self.enforce(ts_ms);
        })
    }

    /// OOM kills seen as increases of a workload's `memory_events_total{event="oom_kill"}`
    /// become `workload_oom_kill` events.
    fn oom_events(&self, ts_ms: i64, batches: &[Arc<MetricBatch>]) {
        let mut seen = self.oom_seen.lock();
        let mut now: HashMap<String, f64> = HashMap::new();
        for b in batches {
            for f in &b.families {
                if f.name != "nodescope_workload_memory_events_total" {
                    continue;
                }
                for p in &f.points {
                    let is_oom = p
                        .labels
                        .iter()
                        .any(|(k, v)| k == "event" && v == "oom_kill");
                    let (Some(w), Value::Number(v), true) = (
                        p.labels
                            .iter()
                            .find(|(k, _)| k == "workload")
                            .map(|(_, v)| v),
                        &p.value,
                        is_oom,
                    ) else {
                        continue;
                    };
                    now.insert(w.clone(), *v);
                }
            }
        }
        let mut records = Vec::new();
        for (w, v) in &now {
            if let Some(prev) = seen.get(w) {
                if v > prev {
                    records.push(LogRecord {
                        timestamp: std::time::UNIX_EPOCH
                            + std::time::Duration::from_millis(ts_ms.max(0) as u64),
                        severity: Severity::Error,
                        kind: "workload_oom_kill".into(),
                        body: format!("{} OOM kill(s) in {w} (memory.events oom_kill)", v - prev),
                        labels: vec![("workload".into(), w.clone())],
                        attributes: vec![("count".into(), format!("{}", v - prev))],
                    });
                }
            }
        }
        *seen = now;
        drop(seen);
        let mut ev = self.events.lock();
        for r in &records {
            ev.push(r, ts_ms);
        }
    }

    /// Records one event of the recorder itself (an incident trigger).
    pub fn note(&self, r: LogRecord) {
        let now = unix_ms(SystemTime::now());
        self.events.lock().push(&r, now);
    }

    /// Applies budgets and retention everywhere and refreshes the self metrics.
    pub fn enforce(&self, now_ms: i64) {
        self.host_fine.lock().enforce(now_ms);
        self.host_coarse.lock().enforce(now_ms);
        self.workload.lock().enforce(now_ms);
        self.network.lock().enforce(now_ms);
        self.samples.lock().enforce(now_ms);
        self.events.lock().enforce(now_ms);
        self.refresh_metrics();
    }

    fn refresh_metrics(&self) {
        let rs = [
            self.host_fine.lock().stats(),
            self.host_coarse.lock().stats(),
            self.workload.lock().stats(),
            self.network.lock().stats(),
        ];
        let ss = self.samples.lock().stats();
        let es = self.events.lock().stats();
        let mut total = 0usize;
        let set = |m: &RingMetrics, bytes: usize, evicted: u64, dropped: u64| {
            m.bytes.set(bytes as f64);
            m.evicted.set(evicted);
            m.dropped.set(dropped);
        };
        for (i, s) in rs.iter().enumerate() {
            set(
                &self.m.rings[i],
                s.bytes,
                s.evicted_chunks,
                s.dropped_series,
            );
            total += s.bytes;
        }
        set(
            &self.m.rings[4],
            ss.bytes,
            ss.evicted_chunks,
            ss.dropped_stacks,
        );
        set(&self.m.rings[5], es.bytes, es.evicted, 0);
        total += ss.bytes + es.bytes;
        self.m.total.set(total as f64);
        let ev = es.recorded;
        let prev = self.last_events.swap(ev, Ordering::Relaxed);
        self.m.events.add(ev.saturating_sub(prev));
        let sa = ss.samples;
        let prev = self.last_samples.swap(sa, Ordering::Relaxed);
        self.m.samples.add(sa.saturating_sub(prev));
    }

    /// What every ring dropped so far (for a bundle's manifest).
    pub fn dropped(&self) -> serde_json::Value {
        let ring = |s: crate::series::RingStats| serde_json::json!({"bytes": s.bytes, "series": s.series, "evicted_chunks": s.evicted_chunks, "evicted_bytes": s.evicted_bytes, "dropped_series": s.dropped_series, "oldest": s.oldest_ms.map(|t| t as f64 / 1000.0)});
        let ss = self.samples.lock().stats();
        let es = self.events.lock().stats();
        serde_json::json!({
            "host_fine": ring(self.host_fine.lock().stats()),
            "host_coarse": ring(self.host_coarse.lock().stats()),
            "workload": ring(self.workload.lock().stats()),
            "network": ring(self.network.lock().stats()),
            "samples": {"bytes": ss.bytes, "stacks": ss.stacks, "evicted_chunks": ss.evicted_chunks, "evicted_samples": ss.evicted_samples, "dropped_stacks": ss.dropped_stacks, "off_cpu_ignored": ss.off_cpu_ignored},
            "events": {"bytes": es.bytes, "events": es.events, "evicted": es.evicted},
        })
    }
}

impl EventSink for Recorder {
    fn offer(&self, records: &Arc<Vec<LogRecord>>) {
        self.timed(|| {
            let now = unix_ms(SystemTime::now());
            let mut ev = self.events.lock();
            for r in records.iter().filter(|r| notable(r)) {
                ev.push(r, now);
            }
        })
    }
}

/// Whether a pipeline record belongs in the events ring: kernel log lines of priority
/// warning or worse, and every other event (network events, incidents). Pod and file log
/// lines (`[logs]`) are not events: they go to the log exporters, and at thousands of lines
/// a second they would evict the events an investigation needs.
pub fn notable(r: &LogRecord) -> bool {
    match r.kind.as_ref() {
        "container_log" | "file_log" => false,
        k => !k.starts_with("kernel") || r.severity >= Severity::Warn,
    }
}

impl SampleSink for Recorder {
    fn offer(&self, batch: SampleBatch) {
        self.timed(|| {
            let now = unix_ms(SystemTime::now());
            self.samples.lock().offer(&batch, now);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_lines_below_warning_stay_out_of_the_events_ring() {
        let rec = |kind: &'static str, severity| LogRecord {
            timestamp: SystemTime::now(),
            severity,
            kind: kind.into(),
            body: String::new(),
            labels: vec![],
            attributes: vec![],
        };
        assert!(!notable(&rec("kernel_log", Severity::Info)));
        assert!(notable(&rec("kernel_oom_kill", Severity::Error)));
        assert!(notable(&rec("kernel_log", Severity::Warn)));
        assert!(notable(&rec("tcp_connect_failed", Severity::Info)));
        assert!(!notable(&rec("container_log", Severity::Error)));
        assert!(!notable(&rec("file_log", Severity::Warn)));
    }
}
