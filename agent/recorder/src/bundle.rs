//! Writing an incident bundle: `incident-<node>-<time>.tar.gz` with manifest.json,
//! metrics.om, cpu-incident.pb.gz, cpu-baseline.pb.gz (and their folded text),
//! offcpu-incident.pb.gz (the after window, when the profiler could take it),
//! events.ndjson, network.json, findings.json, summary.md, data.json and, when the UI
//! provides a renderer, index.html. Written to a temporary name and renamed, so a listed
//! bundle is always complete. See docs/incidents.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::write::GzEncoder;
use flate2::Compression;
use nodescope_model::feeds::BundleRenderer;
use nodescope_model::MetricType;
use serde::Serialize;
use serde_json::json;

use crate::events::Event;
use crate::findings::{self, Finding, WindowData};
use crate::query::{self, NetworkDoc, SampleFilter, Timeline, Window, WorkloadAgg};
use crate::recorder::Recorder;
use crate::redact;
use crate::series::{fmt_le, SeriesRing};

pub const BUNDLE_VERSION: u32 = 1;
/// The off-CPU profile of the after window, when the profiler could take one.
pub const OFFCPU_FILE: &str = "offcpu-incident.pb.gz";
/// Most events a bundle carries (the newest of the two windows).
const MAX_EVENTS: usize = 20_000;
const MAX_NETWORK_ROWS: usize = 50;
const MAX_HEATMAP: usize = 200_000;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("writing bundle {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building the {which} profile: {source}")]
    Pprof {
        which: &'static str,
        #[source]
        source: nodescope_pprof::PprofError,
    },
    #[error("encoding {what}: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// What started an incident.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Trigger {
    /// `manual` (HTTP/CLI/UI), `alertmanager` or `rule`.
    pub kind: String,
    pub name: String,
    pub reason: Option<String>,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Span {
    pub from: f64,
    pub to: f64,
}

impl From<Window> for Span {
    fn from(w: Window) -> Span {
        Span {
            from: w.from_ms as f64 / 1000.0,
            to: w.to_ms as f64 / 1000.0,
        }
    }
}

/// The identity and windows of one incident.
#[derive(Clone, Debug)]
pub struct Plan {
    pub id: String,
    pub node: String,
    pub time_ms: i64,
    pub trigger: Trigger,
    pub window: Window,
    pub baseline: Window,
    pub boost: Option<String>,
    /// The off-CPU profile of the after window (gzip pprof), or why there is none;
    /// `None`: not asked for (no after window, or `offcpu_after = false`).
    pub offcpu: Option<Result<Vec<u8>, String>>,
}

/// Result of writing a bundle.
#[derive(Clone, Debug)]
pub struct Written {
    pub path: PathBuf,
    pub bytes: u64,
    pub top_finding: Option<String>,
    pub seconds: f64,
    pub findings: usize,
    /// The incident and baseline profiles (gzip'd pprof) and their sampling rate, for the
    /// profile backends.
    pub profiles: Vec<(&'static str, Window, Vec<u8>)>,
    pub hz: u32,
}

struct Collected {
    timelines: BTreeMap<String, Timeline>,
    workloads: BTreeMap<String, WorkloadAgg>,
    network: NetworkDoc,
    events: Vec<Event>,
    per_cpu: BTreeMap<String, f64>,
    covered: bool,
}

fn collect(rec: &Recorder, w: Window) -> Collected {
    let timelines = query::GROUPS
        .iter()
        .filter_map(|g| Some((g.to_string(), query::timeline(rec, g, w)?)))
        .collect();
    Collected {
        timelines,
        workloads: query::workloads(rec, w),
        network: query::network(rec, w, 10_000),
        events: rec
            .events
            .lock()
            .query(w.from_ms, w.to_ms, MAX_EVENTS, |_| true),
        per_cpu: per_cpu(rec, w),
        covered: query::workloads_covered(rec, w),
    }
}

fn redact_event(mut e: Event) -> Event {
    e.body = redact::text(&e.body);
    for set in [&mut e.labels, &mut e.attributes] {
        let keys: Vec<String> = set.keys().cloned().collect();
        for k in keys {
            let v = set
                .get(&k)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string();
            match redact::attribute(&k, &v) {
                Some(r) => {
                    set.insert(k, serde_json::Value::String(r));
                }
                None => {
                    set.remove(&k);
                }
            }
        }
    }
    e
}

/// Writes the bundle of `plan` into `dir`.
pub fn write(
    rec: &Recorder,
    plan: &Plan,
    dir: &Path,
    renderer: Option<Arc<dyn BundleRenderer>>,
) -> Result<Written, BundleError> {
    let started = std::time::Instant::now();
    let inc = collect(rec, plan.window);
    let base = collect(rec, plan.baseline);
    let findings = findings::compute(
        &WindowData {
            secs: plan.window.secs(),
            workloads: &inc.workloads,
            network: &inc.network,
            timelines: &inc.timelines,
            events: &inc.events,
            workloads_covered: inc.covered,
        },
        &WindowData {
            secs: plan.baseline.secs(),
            workloads: &base.workloads,
            network: &base.network,
            timelines: &base.timelines,
            events: &base.events,
            workloads_covered: base.covered,
        },
    );
    let all = SampleFilter::default();
    let agg_inc = query::aggregate(rec, plan.window, &all);
    let agg_base = query::aggregate(rec, plan.baseline, &all);
    let pb_inc = query::pprof(
        &agg_inc,
        plan.window,
        &format!("nodescope incident {} (incident window)", plan.id),
    )
    .map_err(|source| BundleError::Pprof {
        which: "incident",
        source,
    })?;
    let pb_base = query::pprof(
        &agg_base,
        plan.baseline,
        &format!("nodescope incident {} (baseline window)", plan.id),
    )
    .map_err(|source| BundleError::Pprof {
        which: "baseline",
        source,
    })?;
    let folded_inc = query::folded(&agg_inc);
    let folded_base = query::folded(&agg_base);
    let mut heat = query::samples(rec, plan.window, &all);
    heat.offsets_ms.truncate(MAX_HEATMAP);

    let events: Vec<Event> = base
        .events
        .iter()
        .chain(inc.events.iter())
        .cloned()
        .map(redact_event)
        .collect();
    let mut events_nd = String::new();
    for e in &events {
        if let Ok(s) = serde_json::to_string(e) {
            events_nd.push_str(&s);
            events_nd.push('\n');
        }
    }
    let network = network_changes(&inc.network, &base.network);
    let summary = summary(plan, &inc, &base, &agg_inc, &agg_base, &findings);
    let metrics = metrics_om(rec, plan);

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let trigger = Trigger {
        kind: plan.trigger.kind.clone(),
        name: redact::text(&plan.trigger.name),
        reason: plan.trigger.reason.as_deref().map(redact::text),
    };
    let core = json!({
        "version": BUNDLE_VERSION,
        "id": plan.id,
        "node": plan.node,
        "time": plan.time_ms as f64 / 1000.0,
        "trigger": trigger,
        "window": Span::from(plan.window),
        "baseline": Span::from(plan.baseline),
        "kernel": kernel,
        "agent_version": env!("CARGO_PKG_VERSION"),
        "config_digest": config_digest(rec),
        "profiler_boost": plan.boost,
        "offcpu": match &plan.offcpu {
            Some(Ok(_)) => json!({"file": OFFCPU_FILE, "window": "after", "note": "off-CPU time of every thread of the node from the trigger through the after window (at most profiling.max_seconds); the off-CPU programs run only on demand, so there is no off-CPU baseline"}),
            Some(Err(e)) => json!({"error": e}),
            None => json!(null),
        },
        "samples": {"incident": agg_inc.stacks.iter().map(|s| s.2).sum::<u64>(), "baseline": agg_base.stacks.iter().map(|s| s.2).sum::<u64>(), "hz": agg_inc.hz},
        "dropped": rec.dropped(),
        "redaction": "docs/incidents.md#redaction: secrets in texts, command lines cut to the program, environment dropped",
    });
    let enc = |what: &'static str, v: &dyn erased::Ser| v.to_json(what);
    let findings_json = enc("findings.json", &findings)?;
    let network_json = enc("network.json", &network)?;
    let data = json!({
        "version": BUNDLE_VERSION,
        "manifest": core,
        "summary_md": summary,
        "findings": findings,
        "events": events,
        "network": network,
        "timelines": inc.timelines,
        "baseline_timelines": base.timelines,
        "profiles": {"incident": folded_inc, "baseline": folded_base},
        "heatmap": heat,
    });
    let data_json = serde_json::to_string(&data).map_err(|source| BundleError::Json {
        what: "data.json",
        source,
    })?;

    let mut files: Vec<(&str, Vec<u8>)> = vec![
        ("summary.md", summary.into_bytes()),
        ("findings.json", findings_json),
        ("events.ndjson", events_nd.into_bytes()),
        ("network.json", network_json),
        ("metrics.om", metrics.into_bytes()),
        ("cpu-incident.pb.gz", pb_inc.clone()),
        ("cpu-baseline.pb.gz", pb_base.clone()),
        ("cpu-incident.folded", folded_inc.into_bytes()),
        ("cpu-baseline.folded", folded_base.into_bytes()),
    ];
    if let Some(Ok(pb)) = &plan.offcpu {
        files.push((OFFCPU_FILE, pb.clone()));
    }
    let index_note = match &renderer {
        Some(r) => {
            let html = r.index_html(&data_json);
            files.push(("index.html", html));
            "index.html: the incident reader, opens offline".to_string()
        }
        None => {
            "no index.html: the web UI ([ui]) is disabled, so no renderer was available".to_string()
        }
    };
    files.push(("data.json", data_json.into_bytes()));
    let mut manifest = core;
    manifest["index"] = json!(index_note);
    manifest["files"] = json!(files
        .iter()
        .map(|(n, b)| json!({"name": n, "bytes": b.len(), "sha256": sha256_hex(b)}))
        .collect::<Vec<_>>());
    manifest["findings"] = json!(findings.len());
    manifest["top_finding"] = json!(findings.first().map(|f| &f.title));
    let manifest_json =
        serde_json::to_vec_pretty(&manifest).map_err(|source| BundleError::Json {
            what: "manifest.json",
            source,
        })?;
    files.insert(0, ("manifest.json", manifest_json));

    let name = format!("{}.tar.gz", plan.id);
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let io = |source| BundleError::Io {
        path: tmp.clone(),
        source,
    };
    let file = std::fs::File::create(&tmp).map_err(io)?;
    let gz = GzEncoder::new(std::io::BufWriter::new(file), Compression::default());
    let mut tar = tar::Builder::new(gz);
    let prefix = plan.id.clone();
    for (n, b) in &files {
        let mut h = tar::Header::new_gnu();
        h.set_size(b.len() as u64);
        h.set_mode(0o644);
        h.set_mtime((plan.time_ms / 1000).max(0) as u64);
        h.set_cksum();
        tar.append_data(&mut h, format!("{prefix}/{n}"), &b[..])
            .map_err(io)?;
    }
    let gz = tar.into_inner().map_err(io)?;
    let mut w = gz.finish().map_err(io)?;
    w.flush().map_err(io)?;
    drop(w);
    std::fs::rename(&tmp, &path).map_err(|source| BundleError::Io {
        path: path.clone(),
        source,
    })?;
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    Ok(Written {
        path,
        bytes,
        top_finding: findings.first().map(|f| f.title.clone()),
        seconds: started.elapsed().as_secs_f64(),
        findings: findings.len(),
        profiles: vec![
            ("incident", plan.window, pb_inc),
            ("baseline", plan.baseline, pb_base),
        ],
        hz: agg_inc.hz.max(agg_base.hz),
    })
}

mod erased {
    pub trait Ser {
        fn to_json(&self, what: &'static str) -> Result<Vec<u8>, super::BundleError>;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_json(&self, what: &'static str) -> Result<Vec<u8>, super::BundleError> {
            serde_json::to_vec_pretty(self)
                .map_err(|source| super::BundleError::Json { what, source })
        }
    }
}

pub fn sha256_hex(b: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    d.as_ref().iter().map(|x| format!("{x:02x}")).collect()
}

fn config_digest(rec: &Recorder) -> String {
    sha256_hex(format!("{:?}", rec.cfg).as_bytes())
}

/// network.json: the incident window's network document, rows ordered by how much they
/// changed against the baseline, with that change.
fn network_changes(inc: &NetworkDoc, base: &NetworkDoc) -> serde_json::Value {
    let base_rows: BTreeMap<String, &query::NetRow> =
        base.rows.iter().map(|r| (r.key(), r)).collect();
    let mut rows: Vec<(f64, serde_json::Value, &query::NetRow)> = inc
        .rows
        .iter()
        .map(|r| {
            let b = base_rows.get(&r.key());
            let d = |i: u64, bb: u64| i as f64 - bb as f64;
            let errs = d(r.total_errors(), b.map(|b| b.total_errors()).unwrap_or(0));
            let retr = d(r.total_retransmits(), b.map(|b| b.total_retransmits()).unwrap_or(0));
            let rst = d(r.total_resets(), b.map(|b| b.total_resets()).unwrap_or(0));
            let p99i = r.p99(&inc.connect_buckets, false);
            let p99b = b.and_then(|b| b.p99(&base.connect_buckets, false));
            let rtti = r.p99(&inc.rtt_buckets, true);
            let rttb = b.and_then(|b| b.p99(&base.rtt_buckets, true));
            let lat = ((p99i.unwrap_or(0.0) + 0.001) / (p99b.unwrap_or(0.0) + 0.001)).ln().abs()
                + ((rtti.unwrap_or(0.0) + 0.0005) / (rttb.unwrap_or(0.0) + 0.0005)).ln().abs();
            let score = errs.abs().ln_1p() * 2.0 + retr.abs().ln_1p() + rst.abs().ln_1p() + lat;
            (
                score,
                json!({"key": r.key(), "score": (score * 1000.0).round() / 1000.0, "errors": errs, "retransmits": retr, "resets": rst,
                       "connect_p99": {"incident": p99i, "baseline": p99b}, "rtt_p99": {"incident": rtti, "baseline": rttb}}),
                r,
            )
        })
        .collect();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    rows.truncate(MAX_NETWORK_ROWS);
    json!({
        "step_seconds": inc.step_seconds,
        "timestamps": inc.timestamps,
        "connect_buckets": inc.connect_buckets,
        "rtt_buckets": inc.rtt_buckets,
        "rows": rows.iter().map(|r| r.2).collect::<Vec<_>>(),
        "changes": rows.iter().map(|r| &r.1).collect::<Vec<_>>(),
    })
}

// ---------- metrics.om ----------

fn esc(v: &str) -> String {
    let mut o = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(x) if x.is_ascii_alphabetic() || x == '_' || x == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

/// Per family: type and, per label set (without `le`), per timestamp the samples
/// (suffix, le, value).
type Fam = (
    MetricType,
    BTreeMap<String, BTreeMap<i64, Vec<(String, Option<f64>, f64)>>>,
);

/// The series of `ring` that change within `span`, plus every series of a histogram one of
/// whose series changes (a histogram is written whole: all buckets, count and sum).
fn with_whole_histograms(ring: &SeriesRing, span: (i64, i64)) -> std::collections::HashSet<u32> {
    let mut vary = ring.varying(span.0, span.1);
    let hist_key = |k: &crate::series::SeriesKey| -> Option<(String, Vec<(String, String)>)> {
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| k.name.strip_suffix(s))?;
        (ring.kind(base) == Some(MetricType::Histogram)).then(|| {
            (
                base.to_string(),
                k.labels
                    .iter()
                    .filter(|(l, _)| l.as_ref() != "le")
                    .map(|(l, v)| (l.to_string(), v.to_string()))
                    .collect(),
            )
        })
    };
    let changed: std::collections::HashSet<(String, Vec<(String, String)>)> = ring
        .series()
        .filter(|(id, _)| vary.contains(id))
        .filter_map(|(_, k)| hist_key(k))
        .collect();
    for (id, k) in ring.series() {
        if hist_key(k).is_some_and(|h| changed.contains(&h)) {
            vary.insert(id);
        }
    }
    vary
}

fn gather(
    ring: &SeriesRing,
    from_ms: i64,
    to_ms: i64,
    fams: &mut BTreeMap<String, Fam>,
    only: Option<&std::collections::HashSet<u32>>,
) {
    let frames = ring.scan(from_ms, to_ms, |id| only.is_none_or(|o| o.contains(&id)));
    let mut keys: BTreeMap<u32, (String, String, String, Option<f64>, MetricType)> =
        BTreeMap::new();
    for (id, k) in ring.series() {
        let name = k.name.as_ref();
        let (family, suffix, kind) = match ring.kind(name) {
            Some(kind) if kind != MetricType::Histogram => (name.to_string(), String::new(), kind),
            _ => {
                let Some((base, suf)) = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).map(|b| (b, *s)))
                else {
                    continue;
                };
                if ring.kind(base) != Some(MetricType::Histogram) {
                    continue;
                }
                (base.to_string(), suf.to_string(), MetricType::Histogram)
            }
        };
        if !valid_name(&family) || k.labels.iter().any(|(l, _)| !valid_name(l)) {
            continue;
        }
        let le = k.label("le").and_then(|s| s.parse::<f64>().ok());
        let labels: Vec<String> = k
            .labels
            .iter()
            .filter(|(l, _)| l.as_ref() != "le")
            .map(|(l, v)| format!("{l}=\"{}\"", esc(v)))
            .collect();
        keys.insert(id, (family, suffix, labels.join(","), le, kind));
    }
    for (t, entries) in frames {
        for (id, v) in entries {
            let Some((fam, suf, labels, le, kind)) = keys.get(&id) else {
                continue;
            };
            let f = fams
                .entry(fam.clone())
                .or_insert_with(|| (*kind, BTreeMap::new()));
            f.1.entry(labels.clone())
                .or_default()
                .entry(t)
                .or_default()
                .push((suf.clone(), *le, v));
        }
    }
}

fn fmt_v(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

/// OpenMetrics text with timestamps of everything recorded in both windows (loadable by
/// `promtool tsdb create-blocks-from openmetrics`).
pub fn metrics_om(rec: &Recorder, plan: &Plan) -> String {
    let mut fams: BTreeMap<String, Fam> = BTreeMap::new();
    // Workload and peer series that never change in either window (every peer ever seen
    // keeps its counters) are left out: they carry nothing and would dominate the file.
    let span = (plan.baseline.from_ms, plan.window.to_ms);
    let wl_vary = with_whole_histograms(&rec.workload.lock(), span);
    let net_vary = with_whole_histograms(&rec.network.lock(), span);
    for w in [plan.baseline, plan.window] {
        let to = if w == plan.baseline {
            w.to_ms - 1
        } else {
            w.to_ms
        };
        let fine = rec.host_fine.lock();
        let covered = fine
            .stats()
            .oldest_ms
            .is_some_and(|o| o <= w.from_ms + 1000);
        if covered {
            gather(&fine, w.from_ms, to, &mut fams, None);
        }
        drop(fine);
        if !covered {
            gather(&rec.host_coarse.lock(), w.from_ms, to, &mut fams, None);
        }
        gather(
            &rec.workload.lock(),
            w.from_ms,
            to,
            &mut fams,
            Some(&wl_vary),
        );
        gather(
            &rec.network.lock(),
            w.from_ms,
            to,
            &mut fams,
            Some(&net_vary),
        );
    }
    let mut out = String::new();
    for (name, (kind, series)) in fams {
        let (tname, otype, sample_name) = match kind {
            MetricType::Counter if name.ends_with("_total") => (
                name.trim_end_matches("_total").to_string(),
                "counter",
                name.clone(),
            ),
            MetricType::Gauge => (name.clone(), "gauge", name.clone()),
            MetricType::Histogram => (name.clone(), "histogram", name.clone()),
            _ => (name.clone(), "unknown", name.clone()),
        };
        let _ = writeln!(out, "# TYPE {tname} {otype}");
        for (labels, points) in series {
            let lb = |extra: &str| -> String {
                match (labels.is_empty(), extra.is_empty()) {
                    (true, true) => String::new(),
                    (true, false) => format!("{{{extra}}}"),
                    (false, true) => format!("{{{labels}}}"),
                    (false, false) => format!("{{{labels},{extra}}}"),
                }
            };
            for (t, mut samples) in points {
                let ts = format!("{}.{:03}", t.div_euclid(1000), t.rem_euclid(1000));
                if kind == MetricType::Histogram {
                    samples.sort_by(|a, b| {
                        let rank = |s: &(String, Option<f64>, f64)| match s.0.as_str() {
                            "_bucket" => 0,
                            "_count" => 2,
                            _ => 3,
                        };
                        rank(a).cmp(&rank(b)).then(
                            a.1.unwrap_or(f64::INFINITY)
                                .total_cmp(&b.1.unwrap_or(f64::INFINITY)),
                        )
                    });
                    let Some(count) = samples.iter().find(|s| s.0 == "_count").map(|s| s.2) else {
                        continue;
                    };
                    for (suf, le, v) in &samples {
                        if suf == "_count" {
                            let _ = writeln!(
                                out,
                                "{sample_name}_bucket{} {} {ts}",
                                lb("le=\"+Inf\""),
                                fmt_v(count)
                            );
                        }
                        let extra = le
                            .map(|l| format!("le=\"{}\"", fmt_le(l)))
                            .unwrap_or_default();
                        let _ =
                            writeln!(out, "{sample_name}{suf}{} {} {ts}", lb(&extra), fmt_v(*v));
                    }
                } else {
                    for (_, _, v) in samples.iter().take(1) {
                        let _ = writeln!(out, "{sample_name}{} {} {ts}", lb(""), fmt_v(*v));
                    }
                }
            }
        }
    }
    out.push_str("# EOF\n");
    out
}

// ---------- summary.md ----------

fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.1}%", x * 100.0))
        .unwrap_or_else(|| "–".into())
}
fn num(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "–".into())
}
fn bytes(v: Option<f64>) -> String {
    v.map(|x| format!("{:.1} MiB", x / 1048576.0))
        .unwrap_or_else(|| "–".into())
}
fn rate(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.1}/s")).unwrap_or_else(|| "–".into())
}

fn stat(c: &Collected, g: &str, s: &str, max: bool) -> Option<f64> {
    let st = query::timeline_stats(c.timelines.get(g)?);
    st.get(s).map(|x| if max { x.1 } else { x.0 })
}

fn per_cpu(rec: &Recorder, w: Window) -> BTreeMap<String, f64> {
    let fine = rec.host_fine.lock();
    let covered = fine
        .stats()
        .oldest_ms
        .is_some_and(|o| o <= w.from_ms + 1000);
    let ring = if covered {
        fine
    } else {
        drop(fine);
        rec.host_coarse.lock()
    };
    let vals = query::series_values(&ring, w, 10_000, |k| {
        k.name.as_ref() == "node_cpu_seconds_total"
    });
    drop(ring);
    let mut idle: BTreeMap<String, f64> = BTreeMap::new();
    let mut total: BTreeMap<String, f64> = BTreeMap::new();
    for (k, v) in vals {
        let cpu = k.label("cpu").unwrap_or("?").to_string();
        let inc: f64 = v.windows(2).map(|p| (p[1].1 - p[0].1).max(0.0)).sum();
        *total.entry(cpu.clone()).or_default() += inc;
        if matches!(k.label("mode"), Some("idle") | Some("iowait")) {
            *idle.entry(cpu).or_default() += inc;
        }
    }
    total
        .into_iter()
        .filter(|(_, t)| *t > 0.0)
        .map(|(c, t)| (c.clone(), 1.0 - idle.get(&c).copied().unwrap_or(0.0) / t))
        .collect()
}

fn summary(
    plan: &Plan,
    inc: &Collected,
    base: &Collected,
    agg_inc: &query::Aggregated,
    agg_base: &query::Aggregated,
    findings: &[Finding],
) -> String {
    let mut s = String::new();
    let span = |w: Window| {
        format!(
            "{} → {} ({:.0} s)",
            fmt_time(w.from_ms),
            fmt_time(w.to_ms),
            w.secs()
        )
    };
    let _ = writeln!(s, "# Incident {} on {}\n", plan.id, plan.node);
    let _ = writeln!(
        s,
        "- trigger: {} {}{}",
        plan.trigger.kind,
        redact::text(&plan.trigger.name),
        plan.trigger
            .reason
            .as_deref()
            .map(|r| format!(" — {}", redact::text(r)))
            .unwrap_or_default()
    );
    let _ = writeln!(s, "- incident window: {}", span(plan.window));
    let _ = writeln!(s, "- baseline window: {}\n", span(plan.baseline));
    let _ = writeln!(s, "## Top findings\n");
    if findings.is_empty() {
        let _ = writeln!(
            s,
            "Nothing deviated from the baseline beyond its noise floor.\n"
        );
    }
    for f in findings.iter().take(5) {
        let _ = writeln!(
            s,
            "{}. {} (score {:.2}; evidence: {})",
            f.rank,
            f.title,
            f.score,
            f.evidence.join("; ")
        );
    }
    let _ = writeln!(s, "\n## The 60-second checklist (incident | baseline)\n");
    let row = |s: &mut String, q: &str, f: &dyn Fn(&Collected) -> String| {
        let _ = writeln!(s, "| {q} | {} | {} |", f(inc), f(base));
    };
    let _ = writeln!(s, "| question | incident | baseline |\n| --- | --- | --- |");
    row(
        &mut s,
        "1. uptime: load average 1/5/15 (mean, max load1)",
        &|c| {
            format!(
                "{} / {} / {} (max {})",
                num(stat(c, "load", "load1", false)),
                num(stat(c, "load", "load5", false)),
                num(stat(c, "load", "load15", false)),
                num(stat(c, "load", "load1", true))
            )
        },
    );
    row(&mut s, "2. dmesg | tail: kernel and OOM events", &|c| {
        let k: Vec<&Event> = c
            .events
            .iter()
            .filter(|e| e.kind.starts_with("kernel") || e.kind.contains("oom"))
            .collect();
        match k.last() {
            Some(e) => format!(
                "{} (last: {})",
                k.len(),
                redact::text(&e.body).replace('|', "/")
            ),
            None => "0".into(),
        }
    });
    row(
        &mut s,
        "3. vmstat 1: CPU user/system/iowait, PSI cpu/memory/io",
        &|c| {
            format!(
                "us {} sy {} wa {}; psi {} / {} / {}",
                pct(stat(c, "cpu", "user", false)),
                pct(stat(c, "cpu", "system", false)),
                pct(stat(c, "cpu", "iowait", false)),
                pct(stat(c, "psi", "cpu_some", false)),
                pct(stat(c, "psi", "memory_some", false)),
                pct(stat(c, "psi", "io_some", false))
            )
        },
    );
    let (pi, pb) = (per_cpu_line(&inc.per_cpu), per_cpu_line(&base.per_cpu));
    let _ = writeln!(s, "| 4. mpstat -P ALL 1: busy per CPU | {pi} | {pb} |");
    let top_w = |c: &Collected| {
        let mut v: Vec<(&String, &WorkloadAgg)> = c.workloads.iter().collect();
        v.sort_by(|a, b| b.1.cpu_cores.total_cmp(&a.1.cpu_cores));
        v.iter()
            .take(5)
            .map(|(w, a)| format!("{w} {:.2}", a.cpu_cores))
            .collect::<Vec<_>>()
            .join(", ")
    };
    row(&mut s, "5. pidstat 1: top workloads by CPU (cores)", &top_w);
    row(&mut s, "6. iostat -xz 1: disk read/write, busy", &|c| {
        format!(
            "{} read, {} write, busy {}",
            bytes(stat(c, "disk", "read_bytes", false)).replace(" MiB", " MiB/s"),
            bytes(stat(c, "disk", "write_bytes", false)).replace(" MiB", " MiB/s"),
            pct(stat(c, "disk", "io_time", false))
        )
    });
    row(
        &mut s,
        "7. free -m: used / available / swap used (max)",
        &|c| {
            format!(
                "{} / {} / {}",
                bytes(stat(c, "memory", "used", true)),
                bytes(stat(c, "memory", "available", false)),
                bytes(stat(c, "memory", "swap_used", true))
            )
        },
    );
    row(&mut s, "8. sar -n DEV 1: rx / tx, drops, errors", &|c| {
        format!(
            "{} / {}, drops {}, errors {}",
            bytes(stat(c, "network", "receive_bytes", false)).replace(" MiB", " MiB/s"),
            bytes(stat(c, "network", "transmit_bytes", false)).replace(" MiB", " MiB/s"),
            rate(stat(c, "network", "receive_drops", false)),
            rate(stat(c, "network", "transmit_errors", false))
        )
    });
    row(
        &mut s,
        "9. sar -n TCP,ETCP 1: retransmits, connects, connect errors",
        &|c| {
            let conn: u64 = c.network.rows.iter().map(|r| r.total_connects()).sum();
            let err: u64 = c.network.rows.iter().map(|r| r.total_errors()).sum();
            format!(
                "retrans {}, {conn} connects, {err} connect errors",
                rate(stat(c, "network", "tcp_retransmits", false))
            )
        },
    );
    let top_fn = |a: &query::Aggregated| {
        let total: u64 = a.stacks.iter().map(|s| s.2).sum();
        if total == 0 {
            return "no CPU samples".to_string();
        }
        let mut by: BTreeMap<String, u64> = BTreeMap::new();
        for (st, _, n) in &a.stacks {
            let leaf = st
                .frames
                .first()
                .map(|f| f.function.to_string())
                .unwrap_or_else(|| "[unknown]".into());
            *by.entry(format!("{}:{leaf}", st.process)).or_default() += n;
        }
        let mut v: Vec<(String, u64)> = by.into_iter().collect();
        v.sort_by_key(|x| std::cmp::Reverse(x.1));
        v.iter()
            .take(3)
            .map(|(f, n)| format!("{f} {:.0}%", *n as f64 * 100.0 / total as f64))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        s,
        "| 10. top: hottest functions (share of samples) | {} | {} |",
        top_fn(agg_inc).replace('|', "/"),
        top_fn(agg_base).replace('|', "/")
    );
    let _ = writeln!(s, "\n## Profiles\n");
    let _ = writeln!(
        s,
        "- on CPU: `go tool pprof -diff_base cpu-baseline.pb.gz cpu-incident.pb.gz`"
    );
    let _ = writeln!(
        s,
        "- off CPU (after window only): {}",
        match &plan.offcpu {
            Some(Ok(_)) => format!("`go tool pprof {OFFCPU_FILE}`"),
            Some(Err(e)) => format!("none: {}", redact::text(e)),
            None => "not asked for (no after window, or recorder.offcpu_after = false)".into(),
        }
    );
    s
}

fn per_cpu_line(m: &BTreeMap<String, f64>) -> String {
    if m.is_empty() {
        return "–".into();
    }
    m.iter()
        .map(|(c, v)| format!("cpu{c} {:.0}%", v * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn fmt_time(ms: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
    )
    .to_string()
}
