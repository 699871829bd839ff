//! Incidents: triggers (by hand, Alertmanager, rules) with cooldowns, the after window
//! with the profiler boosted, the bundle written on a blocking thread, and the bounded
//! spool (count and bytes caps, oldest deleted).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nodescope_model::feeds::{BundleRenderer, OnDemandProfiler, ProfilerControl};
use nodescope_model::selfmetrics::{Counter, Gauge, SelfMetrics};
use nodescope_model::{Emitter, LogRecord, Profile, Services, Severity, Signal};
use parking_lot::Mutex;
use serde::Serialize;
use tracing::{info, warn};

use crate::bundle::{self, Plan, Span, Trigger};
use crate::query::Window;
use crate::recorder::Recorder;
use crate::samples::unix_ms;

/// How long the bundle writer waits, after the after window, for its off-CPU profile.
const OFFCPU_GRACE: Duration = Duration::from_secs(10);

/// Largest member a `files/<name>` request reads out of a bundle.
const MAX_MEMBER: u64 = 256 << 20;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct IncidentInfo {
    pub id: String,
    pub node: String,
    pub time: f64,
    pub trigger: Trigger,
    pub window: Span,
    pub baseline: Span,
    /// `recording` (the after window), `writing`, `ready` or `failed`.
    pub state: String,
    pub ready_at: f64,
    pub bytes: Option<u64>,
    pub file: String,
    pub top_finding: Option<String>,
    pub error: Option<String>,
    /// Seconds from the end of the after window until the bundle was ready.
    pub ready_after_window_seconds: Option<f64>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TriggerError {
    #[error("cooldown: {left_seconds} s left")]
    Cooldown { left_seconds: u64 },
    #[error("{0}")]
    BadRequest(String),
    #[error("incident spool {dir} is unusable: {reason}")]
    Spool { dir: String, reason: String },
}

/// What a trigger asks for.
#[derive(Clone, Debug)]
pub struct Request {
    pub trigger: Trigger,
    pub before: Duration,
    pub after: Duration,
    /// When the anomaly began (rules: when the condition first held); the baseline ends
    /// before it. Defaults to the start of the before window.
    pub anomaly_ms: Option<i64>,
    /// Whose cooldown applies: `None` the shared one of manual/API/Alertmanager triggers,
    /// `Some((rule, cooldown))` the rule's own.
    pub rule: Option<(String, Duration)>,
}

struct Metrics {
    triggered: HashMap<&'static str, Counter>,
    refused: Counter,
    failed: Counter,
    evicted: Counter,
    spool_bytes: Gauge,
    last_seconds: Gauge,
}

pub struct Incidents {
    rec: Arc<Recorder>,
    /// Where a finished bundle's summary (a log record) and profiles go: the configured
    /// backends (Loki/OTLP, Pyroscope with an `incident` label).
    emitter: Mutex<Option<Emitter>>,
    dir: PathBuf,
    services: Services,
    list: Mutex<Vec<IncidentInfo>>,
    cooldowns: Mutex<HashMap<String, i64>>,
    m: Metrics,
}

fn sanitize(s: &str) -> String {
    let v: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if v.is_empty() {
        "node".into()
    } else {
        v
    }
}

/// `20261204T044500Z`
fn stamp(ms: i64) -> String {
    bundle::fmt_time(ms).replace([':', '-'], "")
}

impl Incidents {
    pub fn new(rec: Arc<Recorder>, services: Services, sm: &SelfMetrics) -> Arc<Incidents> {
        let help = "Incidents triggered, by trigger kind.";
        let triggered = ["manual", "alertmanager", "rule"]
            .into_iter()
            .map(|k| {
                (
                    k,
                    sm.counter(
                        "nodescope_recorder_incidents_total",
                        help,
                        &[("trigger", k)],
                    ),
                )
            })
            .collect();
        let m = Metrics {
            triggered,
            refused: sm.counter(
                "nodescope_recorder_triggers_refused_total",
                "Triggers refused during a cooldown (429).",
                &[],
            ),
            failed: sm.counter(
                "nodescope_recorder_bundle_failures_total",
                "Bundles that could not be written.",
                &[],
            ),
            evicted: sm.counter(
                "nodescope_recorder_spool_evicted_total",
                "Bundles deleted, oldest first, to keep the spool within its count and bytes caps.",
                &[],
            ),
            spool_bytes: sm.gauge(
                "nodescope_recorder_spool_bytes",
                "Bytes of the bundles in the spool.",
                &[],
            ),
            last_seconds: sm.gauge(
                "nodescope_recorder_bundle_write_seconds",
                "How long the last bundle took to write.",
                &[],
            ),
        };
        let inc = Arc::new(Incidents {
            dir: rec.cfg.spool_dir.clone(),
            rec,
            emitter: Mutex::new(None),
            services,
            list: Mutex::new(Vec::new()),
            cooldowns: Mutex::new(HashMap::new()),
            m,
        });
        inc.load_spool();
        inc
    }

    /// Sends each finished bundle's summary and profiles into the pipeline.
    pub fn set_emitter(&self, e: Emitter) {
        *self.emitter.lock() = Some(e);
    }

    /// The summary log record and the two profiles of a written bundle, to the backends.
    fn publish(&self, plan: &Plan, w: &bundle::Written) {
        let Some(em) = self.emitter.lock().clone() else {
            return;
        };
        let mut attributes = vec![
            ("incident_id".into(), plan.id.clone()),
            (
                "file".into(),
                w.path
                    .file_name()
                    .map(|f| f.to_string_lossy().to_string())
                    .unwrap_or_default(),
            ),
            (
                "window".into(),
                format!(
                    "{} → {}",
                    bundle::fmt_time(plan.window.from_ms),
                    bundle::fmt_time(plan.window.to_ms)
                ),
            ),
            ("findings".into(), w.findings.to_string()),
        ];
        if let Some(r) = &plan.trigger.reason {
            attributes.push(("reason".into(), r.clone()));
        }
        let record = LogRecord {
            timestamp: SystemTime::now(),
            severity: Severity::Warn,
            kind: "incident_bundle".into(),
            body: format!(
                "incident {} on {} ({} {}): {}",
                plan.id,
                plan.node,
                plan.trigger.kind,
                plan.trigger.name,
                w.top_finding.as_deref().unwrap_or("no finding")
            ),
            labels: vec![("trigger".into(), plan.trigger.kind.clone())],
            attributes,
        };
        em.emit(Signal::Logs(nodescope_model::LogBatch::from(vec![record])));
        for (which, win, pb) in &w.profiles {
            em.emit(Signal::Profile(Arc::new(Profile {
                start: std::time::UNIX_EPOCH + Duration::from_millis(win.from_ms.max(0) as u64),
                duration: Duration::from_millis((win.to_ms - win.from_ms).max(0) as u64),
                sample_rate_hz: w.hz.max(1),
                labels: vec![
                    ("incident".into(), plan.id.clone()),
                    ("window".into(), (*which).to_string()),
                ],
                pprof_gz: pb.clone(),
            })));
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Lists the bundles already in the spool (a restart keeps them).
    fn load_spool(&self) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut found = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(".incident-") && name.ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            let Some(id) = name
                .strip_prefix("")
                .and_then(|n| n.strip_suffix(".tar.gz"))
            else {
                continue;
            };
            if !id.starts_with("incident-") {
                continue;
            }
            let bytes = e.metadata().map(|m| m.len()).ok();
            match read_member(&e.path(), id, "manifest.json", 1 << 20) {
                Ok(Some(m)) => {
                    let v: serde_json::Value = serde_json::from_slice(&m).unwrap_or_default();
                    let span = |k: &str| Span {
                        from: v[k]["from"].as_f64().unwrap_or(0.0),
                        to: v[k]["to"].as_f64().unwrap_or(0.0),
                    };
                    found.push(IncidentInfo {
                        id: id.to_string(),
                        node: v["node"].as_str().unwrap_or("").to_string(),
                        time: v["time"].as_f64().unwrap_or(0.0),
                        trigger: Trigger {
                            kind: v["trigger"]["kind"].as_str().unwrap_or("").to_string(),
                            name: v["trigger"]["name"].as_str().unwrap_or("").to_string(),
                            reason: v["trigger"]["reason"].as_str().map(String::from),
                        },
                        window: span("window"),
                        baseline: span("baseline"),
                        state: "ready".into(),
                        ready_at: span("window").to,
                        bytes,
                        file: name.clone(),
                        top_finding: v["top_finding"].as_str().map(String::from),
                        error: None,
                        ready_after_window_seconds: None,
                    });
                }
                _ => {
                    warn!(file = %e.path().display(), "not a readable incident bundle; left alone")
                }
            }
        }
        found.sort_by(|a, b| a.time.total_cmp(&b.time));
        *self.list.lock() = found;
        self.enforce_spool();
    }

    pub fn list(&self) -> Vec<IncidentInfo> {
        self.list.lock().clone()
    }

    pub fn get(&self, id: &str) -> Option<IncidentInfo> {
        self.list.lock().iter().find(|i| i.id == id).cloned()
    }

    pub fn path_of(&self, info: &IncidentInfo) -> PathBuf {
        self.dir.join(&info.file)
    }

    /// Seconds of cooldown left for the manual triggers (0: none).
    fn cooldown_left(&self, key: &str, cooldown: Duration, now_ms: i64) -> u64 {
        match self.cooldowns.lock().get(key) {
            Some(&last) => {
                let until = last + cooldown.as_millis() as i64;
                if until > now_ms {
                    ((until - now_ms) as u64).div_ceil(1000)
                } else {
                    0
                }
            }
            None => 0,
        }
    }

    /// Starts an incident: freezes the before window, keeps recording for `after` (with
    /// the profiler boosted when it can be), then writes the bundle.
    pub fn trigger(self: &Arc<Self>, req: Request) -> Result<IncidentInfo, TriggerError> {
        let now = unix_ms(SystemTime::now());
        let cfg = &self.rec.cfg;
        let mut req = req;
        req.trigger.name = crate::redact::text(&req.trigger.name);
        req.trigger.reason = req.trigger.reason.as_deref().map(crate::redact::text);
        if req.before < Duration::from_secs(1) || req.before > cfg.coarse_retention {
            return Err(TriggerError::BadRequest(format!(
                "before: {} must be between 1s and the recorder's retention ({})",
                humantime::format_duration(req.before),
                humantime::format_duration(cfg.coarse_retention)
            )));
        }
        if req.after > cfg.max_after {
            return Err(TriggerError::BadRequest(format!(
                "after: {} is above recorder.max_after ({})",
                humantime::format_duration(req.after),
                humantime::format_duration(cfg.max_after)
            )));
        }
        let (key, cooldown) = match &req.rule {
            Some((name, cd)) => (format!("rule:{name}"), *cd),
            None => ("manual".to_string(), cfg.cooldown),
        };
        let left = self.cooldown_left(&key, cooldown, now);
        if left > 0 {
            self.m.refused.inc();
            return Err(TriggerError::Cooldown { left_seconds: left });
        }
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            return Err(TriggerError::Spool {
                dir: self.dir.display().to_string(),
                reason: e.to_string(),
            });
        }
        self.cooldowns.lock().insert(key, now);
        let before_ms = req.before.as_millis() as i64;
        let after_ms = req.after.as_millis() as i64;
        let window = Window {
            from_ms: now - before_ms,
            to_ms: now + after_ms,
        };
        let anomaly = req.anomaly_ms.unwrap_or(window.from_ms).min(window.from_ms);
        let len = window.to_ms - window.from_ms;
        let baseline = Window {
            from_ms: anomaly - len,
            to_ms: anomaly,
        };
        let node = sanitize(&self.rec.node);
        let mut id = format!("incident-{node}-{}", stamp(now));
        {
            let list = self.list.lock();
            let mut n = 2;
            while list.iter().any(|i| i.id == id) {
                id = format!("incident-{node}-{}-{n}", stamp(now));
                n += 1;
            }
        }
        let boost = if cfg.boost_hz > 0 && after_ms > 0 {
            match self.services.get::<dyn ProfilerControl>() {
                Some(p) => Some(match p.boost(cfg.boost_hz, SystemTime::now() + req.after) {
                    Ok(()) => format!("profiler at {} Hz during the after window", cfg.boost_hz),
                    Err(e) => format!("profiler boost refused: {e}"),
                }),
                None => {
                    Some("no profiler control (profiler off or without continuous sampling)".into())
                }
            }
        } else {
            None
        };
        // The off-CPU profile of the after window, started now and awaited by the writer.
        let offcpu = (cfg.offcpu_after && req.after >= Duration::from_secs(1)).then(|| {
            let secs = req.after.as_secs();
            match self.services.get::<dyn OnDemandProfiler>() {
                Some(p) => tokio::spawn(async move { p.offcpu_node(secs).await }),
                None => tokio::spawn(async {
                    Err("no on-demand profiler (profiling is off)".to_string())
                }),
            }
        });
        let info = IncidentInfo {
            id: id.clone(),
            node: self.rec.node.clone(),
            time: now as f64 / 1000.0,
            trigger: req.trigger.clone(),
            window: window.into(),
            baseline: baseline.into(),
            state: "recording".into(),
            ready_at: window.to_ms as f64 / 1000.0,
            bytes: None,
            file: format!("{id}.tar.gz"),
            top_finding: None,
            error: None,
            ready_after_window_seconds: None,
        };
        self.list.lock().push(info.clone());
        if let Some(c) = self.m.triggered.get(req.trigger.kind.as_str()) {
            c.inc();
        }
        self.rec.note(LogRecord {
            timestamp: SystemTime::now(),
            severity: Severity::Info,
            kind: "incident".into(),
            body: format!(
                "incident {id}: {} {}{}",
                req.trigger.kind,
                req.trigger.name,
                req.trigger
                    .reason
                    .as_deref()
                    .map(|r| format!(" — {r}"))
                    .unwrap_or_default()
            ),
            labels: vec![("trigger".into(), req.trigger.kind.clone())],
            attributes: vec![("id".into(), id.clone())],
        });
        info!(id = %id, trigger = %req.trigger.kind, name = %req.trigger.name, before_s = req.before.as_secs(), after_s = req.after.as_secs(), "incident triggered");
        let plan = Plan {
            id,
            node: self.rec.node.clone(),
            time_ms: now,
            trigger: req.trigger,
            window,
            baseline,
            boost,
            offcpu: None,
        };
        let me = self.clone();
        tokio::spawn(async move {
            // Let the tick at the end of the window land first.
            let wait = (window.to_ms - unix_ms(SystemTime::now())).max(0) as u64 + 1100;
            tokio::time::sleep(Duration::from_millis(wait)).await;
            me.set(&plan.id, |i| i.state = "writing".into());
            let mut plan = plan;
            if let Some(h) = offcpu {
                // The profile ends with the after window; symbolizing it takes a moment more.
                plan.offcpu = Some(match tokio::time::timeout(OFFCPU_GRACE, h).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => Err(format!("off-CPU profile task: {e}")),
                    Err(_) => Err(format!(
                        "off-CPU profile not done {} s after the after window",
                        OFFCPU_GRACE.as_secs()
                    )),
                });
            }
            let me2 = me.clone();
            let p2 = plan.clone();
            let r = tokio::task::spawn_blocking(move || {
                let renderer = me2.services.get::<dyn BundleRenderer>();
                me2.rec
                    .timed(|| bundle::write(&me2.rec, &p2, &me2.dir, renderer))
            })
            .await;
            let done = unix_ms(SystemTime::now());
            match r {
                Ok(Ok(w)) => {
                    me.m.last_seconds.set(w.seconds);
                    me.publish(&plan, &w);
                    info!(id = %plan.id, bytes = w.bytes, seconds = w.seconds, top = ?w.top_finding, "incident bundle written");
                    me.set(&plan.id, |i| {
                        i.state = "ready".into();
                        i.bytes = Some(w.bytes);
                        i.top_finding = w.top_finding.clone();
                        i.ready_after_window_seconds = Some((done - window.to_ms) as f64 / 1000.0);
                    });
                }
                Ok(Err(e)) => me.fail(&plan.id, e.to_string()),
                Err(e) => me.fail(&plan.id, format!("bundle writer panicked: {e}")),
            }
            me.enforce_spool();
        });
        Ok(info)
    }

    fn fail(&self, id: &str, e: String) {
        warn!(id, error = %e, "incident bundle failed");
        self.m.failed.inc();
        self.set(id, |i| {
            i.state = "failed".into();
            i.error = Some(e.clone());
        });
    }

    fn set(&self, id: &str, f: impl FnOnce(&mut IncidentInfo)) {
        if let Some(i) = self.list.lock().iter_mut().find(|i| i.id == id) {
            f(i);
        }
    }

    /// Deletes the oldest finished bundles until the spool is within its caps (failed
    /// entries are forgotten the same way).
    pub fn enforce_spool(&self) {
        let cfg = &self.rec.cfg;
        let mut list = self.list.lock();
        loop {
            let finished: Vec<usize> = (0..list.len())
                .filter(|&i| matches!(list[i].state.as_str(), "ready" | "failed"))
                .collect();
            let bytes: u64 = list.iter().filter_map(|i| i.bytes).sum();
            if finished.is_empty()
                || (list.len() <= cfg.spool_max_bundles && bytes <= cfg.spool_max_bytes.0)
            {
                self.m.spool_bytes.set(bytes as f64);
                return;
            }
            let victim = list.remove(finished[0]);
            let path = self.dir.join(&victim.file);
            if victim.state == "ready" {
                if let Err(e) = std::fs::remove_file(&path) {
                    warn!(file = %path.display(), error = %e, "cannot delete an old bundle");
                }
                self.m.evicted.inc();
                info!(id = %victim.id, "spool full: oldest bundle deleted");
            }
        }
    }
}

/// Reads `<id>/<name>` out of a bundle (`None`: no such member).
pub fn read_member(
    path: &Path,
    id: &str,
    name: &str,
    max: u64,
) -> std::io::Result<Option<Vec<u8>>> {
    let f = std::fs::File::open(path)?;
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(f)));
    let want = format!("{id}/{name}");
    for e in a.entries()? {
        let e = e?;
        if e.path()?.to_string_lossy() == want {
            if e.size() > max.min(MAX_MEMBER) {
                return Err(std::io::Error::other(format!(
                    "{name} is larger than {max} bytes"
                )));
            }
            let mut v = Vec::with_capacity(e.size() as usize);
            e.take(max).read_to_end(&mut v)?;
            return Ok(Some(v));
        }
    }
    Ok(None)
}
