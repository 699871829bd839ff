//! The recorder's HTTP API (docs/incidents.md): `/api/v1/recorder/*`,
//! `/api/v1/incidents*` and `POST /api/v1/alertmanager`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::bundle::Trigger;
use crate::incidents::{self, Incidents, Request, TriggerError};
use crate::query::{self, SampleFilter, Window};
use crate::recorder::Recorder;
use crate::samples::unix_ms;

pub struct ApiState {
    pub rec: Arc<Recorder>,
    pub incidents: Arc<Incidents>,
}

type St = State<Arc<ApiState>>;
type Params = Query<HashMap<String, String>>;

fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({"error": msg.into()}))).into_response()
}

fn bad(msg: impl Into<String>) -> Response {
    err(StatusCode::BAD_REQUEST, msg)
}

/// Most a query may span.
const MAX_SPAN_MS: i64 = 24 * 3600 * 1000;

/// `from`/`to`: unix seconds, or negative seconds relative to now; `to` defaults to now,
/// `from` to `default_from` seconds ago.
pub fn window(p: &HashMap<String, String>, default_from: f64) -> Result<Window, String> {
    let now = unix_ms(SystemTime::now());
    let parse = |k: &str, d: f64| -> Result<i64, String> {
        let v = match p.get(k) {
            Some(s) => s
                .trim()
                .parse::<f64>()
                .map_err(|_| format!("{k}: {s:?} is not a number of seconds"))?,
            None => d,
        };
        if !v.is_finite() {
            return Err(format!("{k}: not a finite number"));
        }
        Ok(if v <= 0.0 {
            now + (v * 1000.0) as i64
        } else {
            (v * 1000.0) as i64
        })
    };
    let from = parse("from", -default_from)?;
    let to = parse("to", 0.0)?;
    if to <= from {
        return Err("to must be after from".into());
    }
    if to - from > MAX_SPAN_MS {
        return Err("the range may span at most 24 h".into());
    }
    Ok(Window {
        from_ms: from,
        to_ms: to,
    })
}

fn limit(p: &HashMap<String, String>, d: usize, max: usize) -> Result<usize, String> {
    match p.get("limit") {
        None => Ok(d),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n.min(max)),
            _ => Err(format!("limit: {s:?} is not a positive integer")),
        },
    }
}

fn filter(p: &HashMap<String, String>) -> Result<SampleFilter, String> {
    let pid = match p.get("pid").filter(|s| !s.is_empty()) {
        Some(s) => Some(
            s.parse::<u32>()
                .map_err(|_| format!("pid: {s:?} is not a process id"))?,
        ),
        None => None,
    };
    Ok(SampleFilter {
        workload: p.get("workload").filter(|s| !s.is_empty()).cloned(),
        pid,
    })
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/recorder/timeline", get(timeline))
        .route("/api/v1/recorder/events", get(events))
        .route("/api/v1/recorder/network", get(network))
        .route("/api/v1/recorder/samples", get(samples))
        .route("/api/v1/recorder/profile", get(profile))
        .route("/api/v1/recorder/status", get(status))
        .route("/api/v1/incidents", get(list).post(create))
        .route("/api/v1/incidents/{id}", get(download))
        .route("/api/v1/incidents/{id}/files/{name}", get(member))
        .route("/api/v1/alertmanager", post(alertmanager))
        .with_state(state)
}

async fn timeline(State(s): St, Query(p): Params) -> Response {
    let w = match window(&p, 900.0) {
        Ok(w) => w,
        Err(e) => return bad(e),
    };
    let g = p.get("group").map(String::as_str).unwrap_or("");
    match s.rec.timed(|| query::timeline(&s.rec, g, w)) {
        Some(t) => Json(t).into_response(),
        None => bad(format!(
            "group: {g:?} is not one of {}",
            query::GROUPS.join(", ")
        )),
    }
}

async fn events(State(s): St, Query(p): Params) -> Response {
    let (w, n) = match window(&p, 900.0).and_then(|w| Ok((w, limit(&p, 1000, 20_000)?))) {
        Ok(x) => x,
        Err(e) => return bad(e),
    };
    let kinds: Option<Vec<String>> = p
        .get("kind")
        .map(|k| k.split(',').map(String::from).collect());
    let (ev, dropped) = s.rec.timed(|| {
        let ring = s.rec.events.lock();
        let ev = ring.query(w.from_ms, w.to_ms, n, |e| {
            kinds.as_ref().is_none_or(|k| k.contains(&e.kind))
        });
        (ev, ring.stats().evicted)
    });
    Json(json!({"events": ev, "dropped": dropped})).into_response()
}

async fn network(State(s): St, Query(p): Params) -> Response {
    let (w, n) = match window(&p, 900.0).and_then(|w| Ok((w, limit(&p, 500, 10_000)?))) {
        Ok(x) => x,
        Err(e) => return bad(e),
    };
    Json(s.rec.timed(|| query::network(&s.rec, w, n))).into_response()
}

async fn samples(State(s): St, Query(p): Params) -> Response {
    let (w, f) = match window(&p, 600.0).and_then(|w| Ok((w, filter(&p)?))) {
        Ok(x) => x,
        Err(e) => return bad(e),
    };
    Json(s.rec.timed(|| query::samples(&s.rec, w, &f))).into_response()
}

async fn profile(State(s): St, Query(p): Params) -> Response {
    let (w, f) = match window(&p, 60.0).and_then(|w| Ok((w, filter(&p)?))) {
        Ok(x) => x,
        Err(e) => return bad(e),
    };
    if let Some(t) = p.get("type").filter(|t| t.as_str() != "cpu") {
        return bad(format!(
            "type: {t:?}: the recorder keeps on-CPU samples only (type=cpu)"
        ));
    }
    let format = p.get("format").map(String::as_str).unwrap_or("pprof");
    let agg = s.rec.timed(|| query::aggregate(&s.rec, w, &f));
    match format {
        "folded" => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            query::folded(&agg),
        )
            .into_response(),
        "pprof" => match s
            .rec
            .timed(|| query::pprof(&agg, w, "nodescope flight recorder"))
        {
            Ok(b) => (
                [
                    (header::CONTENT_TYPE, "application/octet-stream"),
                    (
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"recorded.pb.gz\"",
                    ),
                ],
                b,
            )
                .into_response(),
            Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        f => bad(format!("format: {f:?} is not folded or pprof")),
    }
}

async fn status(State(s): St) -> Response {
    Json(json!({
        "memory_cap_bytes": s.rec.cfg.memory_cap.0,
        "memory_bytes": s.rec.bytes(),
        "cpu_seconds": s.rec.cpu_ns() as f64 / 1e9,
        "rings": s.rec.dropped(),
    }))
    .into_response()
}

async fn list(State(s): St) -> Response {
    let mut l = s.incidents.list();
    l.reverse();
    Json(json!({"incidents": l})).into_response()
}

fn trigger_response(r: Result<incidents::IncidentInfo, TriggerError>) -> Response {
    match r {
        Ok(i) => (
            StatusCode::ACCEPTED,
            Json(json!({"id": i.id, "state": i.state, "ready_at": i.ready_at, "window": i.window, "baseline": i.baseline})),
        )
            .into_response(),
        Err(TriggerError::Cooldown { left_seconds }) => {
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                Json(json!({"error": format!("cooldown: {left_seconds} s left"), "retry_after_seconds": left_seconds})),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&left_seconds.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        Err(e @ TriggerError::BadRequest(_)) => bad(e.to_string()),
        Err(e @ TriggerError::Spool { .. }) => err(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

fn duration(v: &serde_json::Value, key: &str, d: Duration) -> Result<Duration, String> {
    match v.get(key) {
        None | Some(serde_json::Value::Null) => Ok(d),
        Some(serde_json::Value::String(s)) => humantime::parse_duration(s.trim())
            .map_err(|e| format!("{key}: {s:?} is not a duration such as \"10m\": {e}")),
        Some(serde_json::Value::Number(n)) => n
            .as_f64()
            .filter(|x| *x >= 0.0 && x.is_finite())
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("{key}: {n} is not a number of seconds ≥ 0")),
        Some(_) => Err(format!(
            "{key}: must be a duration string or a number of seconds"
        )),
    }
}

async fn create(State(s): St, body: Bytes) -> Response {
    let v: serde_json::Value = if body.iter().all(|b| b.is_ascii_whitespace()) {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            Ok(_) => {
                return bad("the body must be a JSON object {\"before\", \"after\", \"reason\"}")
            }
            Err(e) => return bad(format!("the body is not JSON: {e}")),
        }
    };
    let cfg = &s.rec.cfg;
    let (before, after) = match (
        duration(&v, "before", cfg.default_before),
        duration(&v, "after", cfg.default_after),
    ) {
        (Ok(b), Ok(a)) => (b, a),
        (Err(e), _) | (_, Err(e)) => return bad(e),
    };
    let reason = match v.get("reason") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(r)) => Some(r.chars().take(500).collect()),
        Some(_) => return bad("reason: must be a string"),
    };
    let name = v
        .get("source")
        .and_then(|x| x.as_str())
        .unwrap_or("api")
        .chars()
        .take(64)
        .collect();
    trigger_response(s.incidents.trigger(Request {
        trigger: Trigger {
            kind: "manual".into(),
            name,
            reason,
        },
        before,
        after,
        anomaly_ms: None,
        rule: None,
    }))
}

/// Alertmanager's webhook (version 4): fires one incident for the firing alerts (their
/// names and summaries as the reason); a payload that is not one is a 400.
async fn alertmanager(State(s): St, body: Bytes) -> Response {
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return bad(format!(
                "not an Alertmanager webhook payload: invalid JSON: {e}"
            ))
        }
    };
    let Some(alerts) = v.get("alerts").and_then(|a| a.as_array()) else {
        return bad("not an Alertmanager webhook payload: no \"alerts\" array");
    };
    if v.get("version").is_some_and(|x| x.as_str() != Some("4")) {
        return bad("not an Alertmanager webhook payload: version must be \"4\"");
    }
    let mut firing = Vec::new();
    for (i, a) in alerts.iter().enumerate() {
        let (Some(status), Some(labels)) = (
            a.get("status").and_then(|x| x.as_str()),
            a.get("labels").and_then(|x| x.as_object()),
        ) else {
            return bad(format!(
                "not an Alertmanager webhook payload: alerts[{i}] needs \"status\" and \"labels\""
            ));
        };
        if status == "firing" {
            let name = labels
                .get("alertname")
                .and_then(|x| x.as_str())
                .unwrap_or("alert")
                .to_string();
            let summary = a
                .get("annotations")
                .and_then(|x| x.get("summary"))
                .and_then(|x| x.as_str())
                .unwrap_or("");
            firing.push(if summary.is_empty() {
                name
            } else {
                format!("{name}: {summary}")
            });
        }
    }
    if firing.is_empty() {
        return (StatusCode::OK, Json(json!({"ignored": "no firing alert"}))).into_response();
    }
    let cfg = &s.rec.cfg;
    let name = v
        .get("groupLabels")
        .and_then(|g| g.get("alertname"))
        .and_then(|x| x.as_str())
        .unwrap_or("alertmanager")
        .chars()
        .take(64)
        .collect();
    trigger_response(s.incidents.trigger(Request {
        trigger: Trigger {
            kind: "alertmanager".into(),
            name,
            reason: Some(firing.join("; ").chars().take(500).collect()),
        },
        before: cfg.default_before,
        after: cfg.default_after,
        anomaly_ms: None,
        rule: None,
    }))
}

fn valid_id(id: &str) -> bool {
    id.starts_with("incident-")
        && id.len() < 200
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !id.contains("..")
}

async fn download(State(s): St, Path(id): Path<String>) -> Response {
    let id = id.strip_suffix(".tar.gz").unwrap_or(&id).to_string();
    let Some(info) = s.incidents.get(&id).filter(|_| valid_id(&id)) else {
        return err(StatusCode::NOT_FOUND, format!("no incident {id:?}"));
    };
    if info.state != "ready" {
        return err(
            StatusCode::CONFLICT,
            format!(
                "incident {id} is {} (ready at {})",
                info.state, info.ready_at
            ),
        );
    }
    let path = s.incidents.path_of(&info);
    match tokio::fs::read(&path).await {
        Ok(b) => (
            [
                (header::CONTENT_TYPE, "application/gzip".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{}\"", info.file),
                ),
            ],
            b,
        )
            .into_response(),
        Err(e) => err(
            StatusCode::NOT_FOUND,
            format!("bundle {}: {e}", path.display()),
        ),
    }
}

const MEMBERS: &[(&str, &str)] = &[
    ("manifest.json", "application/json"),
    ("data.json", "application/json"),
    ("findings.json", "application/json"),
    ("network.json", "application/json"),
    ("events.ndjson", "application/x-ndjson"),
    ("summary.md", "text/markdown; charset=utf-8"),
    (
        "metrics.om",
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    ),
    ("cpu-incident.pb.gz", "application/octet-stream"),
    ("cpu-baseline.pb.gz", "application/octet-stream"),
    (crate::bundle::OFFCPU_FILE, "application/octet-stream"),
    ("cpu-incident.folded", "text/plain; charset=utf-8"),
    ("cpu-baseline.folded", "text/plain; charset=utf-8"),
    ("index.html", "text/html; charset=utf-8"),
];

async fn member(State(s): St, Path((id, name)): Path<(String, String)>) -> Response {
    let Some(&(_, ctype)) = MEMBERS.iter().find(|(n, _)| *n == name) else {
        return err(
            StatusCode::NOT_FOUND,
            format!("no file {name:?} in a bundle"),
        );
    };
    let Some(info) = s.incidents.get(&id).filter(|_| valid_id(&id)) else {
        return err(StatusCode::NOT_FOUND, format!("no incident {id:?}"));
    };
    if info.state != "ready" {
        return err(
            StatusCode::CONFLICT,
            format!("incident {id} is {}", info.state),
        );
    }
    let path = s.incidents.path_of(&info);
    let r =
        tokio::task::spawn_blocking(move || incidents::read_member(&path, &id, &name, 256 << 20))
            .await;
    match r {
        Ok(Ok(Some(b))) => {
            let mut resp = ([(header::CONTENT_TYPE, ctype)], b).into_response();
            if ctype.starts_with("text/html") {
                // The offline page's own CSP meta tag applies; never run it as the agent's origin.
                resp.headers_mut().insert(
                    header::CONTENT_DISPOSITION,
                    HeaderValue::from_static("attachment; filename=\"index.html\""),
                );
            }
            resp
        }
        Ok(Ok(None)) => err(StatusCode::NOT_FOUND, "this bundle has no such file"),
        Ok(Err(e)) => err(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the bundle: {e}"),
        ),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
