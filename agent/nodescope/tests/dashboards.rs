//! Every Grafana dashboard in dashboards/ is tested against a real agent:
//!
//! 1. (no privileges) every dashboard parses; every PromQL expression is extracted (panels,
//!    collapsed rows, template variable queries) and its Grafana variables substituted;
//!    `promtool check rules` accepts every expression.
//! 2. (root + prometheus + ip + iptables) a real Prometheus (Debian package) scrapes a
//!    running `nodescope` with network probes, profiling and a remote_write exporter on,
//!    while the test makes TCP traffic (connects, refused connects, SYNs dropped by
//!    iptables) and DNS traffic (answered, NXDOMAIN, unanswered) in a network namespace
//!    it creates and removes. Then every expression runs
//!    against Prometheus's `/api/v1/query` and must return at least one series; every
//!    `label_values(...)` variable query must find a series carrying its label.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Extraction and substitution (unit tested below, no privileges needed).
// ---------------------------------------------------------------------------------------

/// Grafana's built-in interval variables, replaced by values that suit a 1 s scrape.
const BUILTINS: &[(&str, &str)] = &[
    ("__rate_interval", "15s"),
    ("__interval_ms", "5000"),
    ("__interval", "5s"),
    ("__range_s", "60"),
    ("__range_ms", "60000"),
    ("__range", "60s"),
];

/// Where an expression came from, for failure messages.
#[derive(Clone, Debug, PartialEq)]
enum Origin {
    Panel { title: String, ref_id: String },
}

#[derive(Clone, Debug, PartialEq)]
struct Query {
    dashboard: String,
    origin: Origin,
    /// As written in the dashboard.
    raw: String,
}

impl Query {
    fn describe(&self) -> String {
        let Origin::Panel { title, ref_id } = &self.origin;
        format!(
            "dashboard {:?}, panel {:?} (refId {ref_id})",
            self.dashboard, title
        )
    }
}

#[derive(Clone, Debug, PartialEq)]
enum VarKind {
    /// `label_values(selector, label)` or `label_values(label)`.
    LabelValues {
        selector: Option<String>,
        label: String,
    },
    /// `query_result(expr)`.
    QueryResult(String),
    /// Any other variable query is run as PromQL.
    Expr(String),
}

#[derive(Clone, Debug)]
struct Variable {
    name: String,
    kind: String,
    /// The value a dashboard opened with defaults would use, when known without querying
    /// Prometheus (All → allValue, textbox/constant/custom → its value).
    static_value: Option<String>,
    query: Option<String>,
}

fn is_prometheus(ds: Option<&Value>) -> Option<bool> {
    let ds = ds?;
    if ds.is_null() {
        return None;
    }
    let t = ds.get("type").and_then(Value::as_str);
    let uid = ds.get("uid").and_then(Value::as_str).or(ds.as_str());
    Some(t == Some("prometheus") || uid == Some("${datasource}") || uid == Some("$datasource"))
}

/// Every PromQL expression of panels (recursing into rows), with the effective data
/// source of each target. Targets of non-Prometheus data sources must not carry `expr`.
fn panel_queries(dashboard: &str, json: &Value) -> Result<(Vec<Query>, usize), String> {
    let mut out = Vec::new();
    let mut other = 0usize;
    fn walk(
        dashboard: &str,
        panels: &[Value],
        out: &mut Vec<Query>,
        other: &mut usize,
    ) -> Result<(), String> {
        for p in panels {
            let title = p["title"].as_str().unwrap_or("").to_string();
            let panel_prom = is_prometheus(p.get("datasource"));
            for t in p["targets"].as_array().into_iter().flatten() {
                let prom = is_prometheus(t.get("datasource"))
                    .or(panel_prom)
                    .unwrap_or(true);
                let expr = t.get("expr").and_then(Value::as_str);
                match (prom, expr) {
                    (true, Some(e)) => out.push(Query {
                        dashboard: dashboard.to_string(),
                        origin: Origin::Panel {
                            title: title.clone(),
                            ref_id: t["refId"].as_str().unwrap_or("?").to_string(),
                        },
                        raw: e.to_string(),
                    }),
                    (true, None) => {
                        return Err(format!(
                            "dashboard {dashboard:?}, panel {title:?}: Prometheus target without expr"
                        ))
                    }
                    (false, Some(_)) => {
                        return Err(format!(
                            "dashboard {dashboard:?}, panel {title:?}: non-Prometheus target with an expr"
                        ))
                    }
                    (false, None) => *other += 1,
                }
            }
            if let Some(children) = p.get("panels").and_then(Value::as_array) {
                walk(dashboard, children, out, other)?;
            }
        }
        Ok(())
    }
    // Dashboards of the old schema (grafonnet-lib, the node-mixin) keep panels in rows.
    let panels: Vec<Value> = match json["panels"].as_array() {
        Some(p) => p.clone(),
        None => json["rows"]
            .as_array()
            .ok_or("no panels or rows array")?
            .iter()
            .flat_map(|r| r["panels"].as_array().cloned().unwrap_or_default())
            .collect(),
    };
    walk(dashboard, &panels, &mut out, &mut other)?;
    Ok((out, other))
}

fn variables(json: &Value) -> Vec<Variable> {
    let mut out = Vec::new();
    for v in json["templating"]["list"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or("").to_string();
        let kind = v["type"].as_str().unwrap_or("").to_string();
        let query = match &v["query"] {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("query").and_then(Value::as_str).map(str::to_string),
            _ => None,
        };
        let static_value = match kind.as_str() {
            "query" if v["includeAll"].as_bool() == Some(true) => Some(
                v["allValue"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .unwrap_or(".*")
                    .to_string(),
            ),
            "textbox" | "constant" => query.clone(),
            "custom" | "interval" => query
                .as_deref()
                .and_then(|q| q.split(',').next())
                .map(|s| s.trim().to_string()),
            _ => None,
        };
        out.push(Variable {
            name,
            kind,
            static_value,
            query,
        });
    }
    out
}

/// Splits `s` at its last comma that is outside braces, brackets, parentheses and quotes.
fn split_last_top_level_comma(s: &str) -> Option<(&str, &str)> {
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut last = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '{' | '(' | '[' => depth += 1,
            '}' | ')' | ']' => depth -= 1,
            ',' if depth == 0 => last = Some(i),
            _ => {}
        }
    }
    last.map(|i| (&s[..i], &s[i + 1..]))
}

fn parse_variable_query(q: &str) -> Result<VarKind, String> {
    let q = q.trim();
    let inner = |prefix: &str| -> Option<&str> {
        q.strip_prefix(prefix)?
            .trim_start()
            .strip_prefix('(')?
            .strip_suffix(')')
            .map(str::trim)
    };
    if let Some(args) = inner("label_values") {
        return match split_last_top_level_comma(args) {
            Some((sel, label)) => {
                let label = label.trim();
                if label.is_empty() || sel.trim().is_empty() {
                    return Err(format!("bad label_values query {q:?}"));
                }
                Ok(VarKind::LabelValues {
                    selector: Some(sel.trim().to_string()),
                    label: label.to_string(),
                })
            }
            None if !args.is_empty() => Ok(VarKind::LabelValues {
                selector: None,
                label: args.to_string(),
            }),
            None => Err(format!("bad label_values query {q:?}")),
        };
    }
    if let Some(e) = inner("query_result") {
        return Ok(VarKind::QueryResult(e.to_string()));
    }
    if q.starts_with("label_names") || q.starts_with("metrics(") {
        return Err(format!("unsupported variable query {q:?}"));
    }
    Ok(VarKind::Expr(q.to_string()))
}

/// Replaces `$name`, `${name}`, `${name:fmt}` and `[[name]]` with `values[name]`;
/// fails when any variable reference is left.
fn substitute(expr: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let mut all: Vec<(String, String)> = BUILTINS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    all.extend(values.iter().map(|(k, v)| (k.clone(), v.clone())));
    // Longest names first so `$instance` is not eaten by a variable called `$inst`.
    all.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let mut out = expr.to_string();
    for (name, value) in &all {
        out = out.replace(&format!("[[{name}]]"), value);
        // ${name} and ${name:format}
        let open = format!("${{{name}");
        let mut from = 0;
        while let Some(pos) = out[from..].find(&open) {
            let start = from + pos;
            let rest = &out[start + open.len()..];
            match rest.find('}') {
                Some(end) if rest[..end].is_empty() || rest[..end].starts_with(':') => {
                    out = format!("{}{}{}", &out[..start], value, &rest[end + 1..]);
                    from = start + value.len();
                }
                _ => from = start + open.len(),
            }
        }
        // $name not followed by an identifier character.
        let needle = format!("${name}");
        let mut res = String::with_capacity(out.len());
        let mut i = 0;
        while let Some(pos) = out[i..].find(&needle) {
            let at = i + pos;
            let after = out[at + needle.len()..].chars().next();
            res.push_str(&out[i..at]);
            if after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                res.push_str(&needle);
            } else {
                res.push_str(value);
            }
            i = at + needle.len();
        }
        res.push_str(&out[i..]);
        out = res;
    }
    if out.contains('$') || out.contains("[[") {
        return Err(format!("unresolved Grafana variable in {out:?}"));
    }
    Ok(out)
}

fn escape_regex(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
            // PromQL strings need the backslash itself escaped.
            out.push('\\');
        }
        out.push(c);
    }
    out
}

struct Dashboard {
    file: String,
    title: String,
    json: Value,
}

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dashboards")
}

fn load_dashboards() -> Vec<Dashboard> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dashboards_dir())
        .expect("dashboards/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for p in files {
        let text = std::fs::read_to_string(&p).unwrap();
        let json: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", p.display()));
        out.push(Dashboard {
            file: p.file_name().unwrap().to_string_lossy().into_owned(),
            title: json["title"].as_str().unwrap_or("").to_string(),
            json,
        });
    }
    out
}

// ---------------------------------------------------------------------------------------
// Unit tests of the extraction/substitution logic and static dashboard checks.
// ---------------------------------------------------------------------------------------

#[test]
fn label_values_queries_parse() {
    assert_eq!(
        parse_variable_query("label_values(node_uname_info, job)").unwrap(),
        VarKind::LabelValues {
            selector: Some("node_uname_info".into()),
            label: "job".into()
        }
    );
    assert_eq!(
        parse_variable_query(
            r#"label_values(x_bucket{job=~"$job",a="b,c",d=~"(e|f)"}, peer_address)"#
        )
        .unwrap(),
        VarKind::LabelValues {
            selector: Some(r#"x_bucket{job=~"$job",a="b,c",d=~"(e|f)"}"#.into()),
            label: "peer_address".into()
        }
    );
    assert_eq!(
        parse_variable_query(" label_values( instance ) ").unwrap(),
        VarKind::LabelValues {
            selector: None,
            label: "instance".into()
        }
    );
    assert_eq!(
        parse_variable_query("query_result(topk(5, up))").unwrap(),
        VarKind::QueryResult("topk(5, up)".into())
    );
    assert!(parse_variable_query("label_values()").is_err());
    assert!(parse_variable_query("label_values(, job)").is_err());
    assert!(parse_variable_query("metrics(node_.*)").is_err());
}

#[test]
fn substitution_handles_every_form_and_rejects_leftovers() {
    let vals: BTreeMap<String, String> = [
        ("job".to_string(), ".*".to_string()),
        ("instance".to_string(), "host:9780".to_string()),
        ("inst".to_string(), "WRONG".to_string()),
    ]
    .into();
    let e = substitute(
        r#"rate(x{job=~"$job",instance=~"${instance}",i="[[inst]]",f="${instance:regex}"}[$__rate_interval])"#,
        &vals,
    )
    .unwrap();
    assert_eq!(
        e,
        r#"rate(x{job=~".*",instance=~"host:9780",i="WRONG",f="host:9780"}[15s])"#
    );
    assert_eq!(substitute("$__interval $__range", &vals).unwrap(), "5s 60s");
    assert!(substitute(r#"x{a="$unknown"}"#, &vals).is_err());
    assert!(substitute(r#"x{a="${nope}"}"#, &vals).is_err());
    // A longer name sharing a prefix, before and after the shorter one.
    let only_inst: BTreeMap<String, String> = [("inst".to_string(), "i".to_string())].into();
    assert!(substitute("${instance} ${inst}", &only_inst).is_err());
    let both: BTreeMap<String, String> = [
        ("inst".to_string(), "i".to_string()),
        ("instance".to_string(), "I".to_string()),
    ]
    .into();
    assert_eq!(
        substitute("${instance} ${inst} $inst $instance", &both).unwrap(),
        "I i i I"
    );
    // `$jobs` is not `$job` followed by `s`.
    assert!(substitute("$jobs", &vals).is_err());
}

#[test]
fn concrete_variable_values_are_escaped_for_promql_regex_strings() {
    // 127.0.0.1:9780 used in `instance=~"$instance"` must match only itself.
    assert_eq!(escape_regex("127.0.0.1:9780"), r"127\\.0\\.0\\.1:9780");
    assert_eq!(escape_regex("a(b)|c"), r"a\\(b\\)\\|c");
    assert_eq!(escape_regex("plain_name-1"), "plain_name-1");
}

#[test]
fn extraction_walks_rows_and_respects_data_sources() {
    let d = serde_json::json!({
        "panels": [
            {"type": "timeseries", "title": "top", "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "targets": [{"refId": "A", "expr": "up"}]},
            {"type": "row", "title": "collapsed", "collapsed": true, "panels": [
                {"type": "stat", "title": "inner", "targets": [
                    {"refId": "A", "expr": "node_load1", "datasource": {"uid": "${datasource}"}},
                    {"refId": "B", "expr": "node_load5"}]}
            ]},
            {"type": "flamegraph", "title": "flame", "datasource": {"type": "grafana-pyroscope-datasource", "uid": "${pyroscope}"},
             "targets": [{"refId": "A", "labelSelector": "{}"}]}
        ]
    });
    let (qs, other) = panel_queries("t", &d).unwrap();
    let exprs: Vec<&str> = qs.iter().map(|q| q.raw.as_str()).collect();
    assert_eq!(exprs, ["up", "node_load1", "node_load5"]);
    assert_eq!(other, 1);
    assert_eq!(
        qs[1].origin,
        Origin::Panel {
            title: "inner".into(),
            ref_id: "A".into()
        }
    );
    let bad = serde_json::json!({"panels": [{"title": "p", "datasource": {"type": "grafana-pyroscope-datasource", "uid": "x"},
        "targets": [{"refId": "A", "expr": "up"}]}]});
    assert!(panel_queries("t", &bad).is_err());
}

#[test]
fn variables_are_read_with_defaults() {
    let d = serde_json::json!({"templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus"},
        {"name": "job", "type": "query", "query": {"query": "label_values(up, job)"}, "includeAll": true, "allValue": ".*"},
        {"name": "node", "type": "query", "query": "label_values(up{job=~\"$job\"}, instance)", "includeAll": false},
        {"name": "svc", "type": "textbox", "query": "nodescope"},
        {"name": "iv", "type": "interval", "query": "1m,5m"}
    ]}});
    let v = variables(&d);
    assert_eq!(v.len(), 5);
    assert_eq!(v[1].static_value.as_deref(), Some(".*"));
    assert_eq!(v[2].static_value, None);
    assert_eq!(
        v[2].query.as_deref(),
        Some("label_values(up{job=~\"$job\"}, instance)")
    );
    assert_eq!(v[3].static_value.as_deref(), Some("nodescope"));
    assert_eq!(v[4].static_value.as_deref(), Some("1m"));
}

#[test]
fn every_dashboard_is_well_formed() {
    let ds = load_dashboards();
    let files: BTreeSet<&str> = ds.iter().map(|d| d.file.as_str()).collect();
    for f in [
        "node-overview.json",
        "network-latency.json",
        "profiling.json",
        "agent-health.json",
    ] {
        assert!(files.contains(f), "missing dashboard {f}");
    }
    let mut uids = BTreeSet::new();
    for d in &ds {
        let j = &d.json;
        let uid = j["uid"].as_str().expect("uid");
        assert!(uids.insert(uid.to_string()), "duplicate uid {uid}");
        assert!(j["schemaVersion"].as_u64().unwrap_or(0) >= 36, "{}", d.file);
        assert!(
            j["id"].is_null(),
            "{}: id must be null to import/provision",
            d.file
        );
        let vars = variables(j);
        let names: BTreeSet<&str> = vars.iter().map(|v| v.name.as_str()).collect();
        assert!(
            names.contains("datasource"),
            "{}: datasource variable",
            d.file
        );
        // Panel ids unique, data sources only through variables, positions present.
        let mut ids = BTreeSet::new();
        let mut stack: Vec<&Value> = j["panels"].as_array().unwrap().iter().collect();
        while let Some(p) = stack.pop() {
            let id = p["id"].as_u64().expect("panel id");
            assert!(ids.insert(id), "{}: duplicate panel id {id}", d.file);
            assert!(p["gridPos"]["w"].as_u64().is_some(), "{}: gridPos", d.file);
            let mut dss: Vec<&Value> = vec![&p["datasource"]];
            dss.extend(
                p["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| &t["datasource"]),
            );
            for ds in dss {
                if let Some(uid) = ds.get("uid").and_then(Value::as_str) {
                    let var = uid.trim_start_matches("${").trim_end_matches('}');
                    assert!(
                        uid.starts_with("${") && names.contains(var),
                        "{}: panel {:?} uses data source uid {uid:?}; use a datasource variable",
                        d.file,
                        p["title"]
                    );
                }
            }
            stack.extend(p["panels"].as_array().into_iter().flatten());
        }
        let (qs, _) = panel_queries(&d.title, j).unwrap();
        assert!(qs.len() >= 5, "{}: only {} queries", d.file, qs.len());
        let mut vals: BTreeMap<String, String> = BTreeMap::new();
        for v in &vars {
            vals.insert(
                v.name.clone(),
                v.static_value.clone().unwrap_or_else(|| "x".into()),
            );
        }
        for q in &qs {
            let e = substitute(&q.raw, &vals).unwrap_or_else(|e| panic!("{}: {e}", q.describe()));
            assert!(
                !e.contains("or vector(") && !e.contains("absent("),
                "{}: {e:?} would hide a missing metric",
                q.describe()
            );
        }
        for v in vars.iter().filter(|v| v.kind == "query") {
            let q = v.query.as_deref().expect("variable query");
            parse_variable_query(q).unwrap_or_else(|e| panic!("{}: ${}: {e}", d.file, v.name));
        }
    }
    // The provisioning files exist and point at a path.
    let prov =
        std::fs::read_to_string(dashboards_dir().join("provisioning/dashboards.yaml")).unwrap();
    assert!(prov.contains("apiVersion: 1") && prov.contains("path:"));
}

/// All expressions (panels and variable queries, substituted) as recording rules; promtool
/// parses each with Prometheus's own PromQL parser.
#[test]
fn promtool_accepts_every_expression() {
    let test = "promtool_accepts_every_expression";
    let Some(promtool) = common::require_tool(test, "promtool", &["/usr/bin/promtool"]) else {
        return;
    };
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    let mut n = 0;
    for d in load_dashboards() {
        let vars = variables(&d.json);
        let vals: BTreeMap<String, String> = vars
            .iter()
            .map(|v| {
                (
                    v.name.clone(),
                    v.static_value.clone().unwrap_or_else(|| "x".into()),
                )
            })
            .collect();
        let (qs, _) = panel_queries(&d.title, &d.json).unwrap();
        let mut exprs: Vec<String> = qs
            .iter()
            .map(|q| substitute(&q.raw, &vals).unwrap())
            .collect();
        for v in vars.iter().filter(|v| v.kind == "query") {
            let q = substitute(v.query.as_deref().unwrap(), &vals).unwrap();
            match parse_variable_query(&q).unwrap() {
                VarKind::LabelValues {
                    selector: Some(s), ..
                } => exprs.push(s),
                VarKind::LabelValues { selector: None, .. } => {}
                VarKind::QueryResult(e) | VarKind::Expr(e) => exprs.push(e),
            }
        }
        for e in exprs {
            n += 1;
            rules.push_str(&format!(
                "      - record: dashboard:expr{n}\n        expr: {}\n",
                serde_json::to_string(&e).unwrap()
            ));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("rules.yml");
    std::fs::write(&f, &rules).unwrap();
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool rejected a dashboard expression:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(n > 40, "only {n} expressions");
}

// ---------------------------------------------------------------------------------------
// The real run: agent + Prometheus + traffic.
// ---------------------------------------------------------------------------------------

struct Netns(String);

impl Netns {
    fn create(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        let ok = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip netns add {name}");
        let ns = Netns(name.to_string());
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }
    fn exec(&self, args: &[&str]) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip netns exec {} {args:?}: {}",
            self.0,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Moves the calling thread into network namespace `name` (sockets it creates, and
/// threads it spawns, live there).
fn enter_netns(name: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/run/netns/{name}")).expect("netns file");
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

const ECHO_PORT: u16 = 7101;
const CLOSED_PORT: u16 = 7102;
const BLACKHOLE_PORT: u16 = 7103;

/// A DNS query for `name` (one question, type A, class IN) with transaction id `id`.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(32);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; QDCOUNT 1
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, QTYPE A, QCLASS IN
    q
}

/// Runs in the namespace for `dur`: a DNS server on 127.0.0.1:53 that answers `ok.test`
/// NOERROR (no records), `nx.test` NXDOMAIN and never answers `drop.test`, and a client
/// asking for each every 100 ms (DNS latency, answer codes, timeouts, lookups).
fn make_dns_traffic(dur: Duration) -> u64 {
    let server = std::net::UdpSocket::bind(("127.0.0.1", 53)).expect("dns bind");
    server
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let srv = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !s2.load(Ordering::Relaxed) {
            let Ok((n, from)) = server.recv_from(&mut buf) else {
                continue;
            };
            if n < 17 {
                continue;
            }
            let first = &buf[13..13 + usize::from(buf[12]).min(n - 13)];
            let rcode = match first {
                b"drop" => continue,
                b"nx" => 3,
                _ => 0,
            };
            let mut a = buf[..n].to_vec();
            a[2] = 0x81; // QR, RD
            a[3] = 0x80 | rcode; // RA, RCODE
            let _ = server.send_to(&a, from);
        }
    });
    let client = std::net::UdpSocket::bind(("127.0.0.1", 0)).unwrap();
    client.connect(("127.0.0.1", 53)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + dur;
    let (mut id, mut answers) = (0u16, 0u64);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        for name in ["ok.test", "nx.test", "drop.test"] {
            id = id.wrapping_add(1);
            let _ = client.send(&dns_query(id, name));
        }
        for _ in 0..2 {
            if client.recv(&mut buf).is_ok() {
                answers += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = srv.join();
    answers
}

/// Runs inside the namespace for `dur`: an echo server, short connections with data,
/// one long-lived connection, refused connects, and connects whose SYNs iptables drops
/// (SYN retransmits, NETFILTER_DROP drops, timed-out connects).
fn make_traffic(ns: &Netns, dur: Duration) -> (u64, u64, u64) {
    ns.exec(&[
        "iptables",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        &BLACKHOLE_PORT.to_string(),
        "-j",
        "DROP",
    ]);
    let ns_name = ns.0.clone();
    std::thread::spawn(move || {
        enter_netns(&ns_name);
        let stop = Arc::new(AtomicBool::new(false));
        let listener = TcpListener::bind(("127.0.0.1", ECHO_PORT)).expect("echo bind");
        listener.set_nonblocking(true).unwrap();
        let s2 = stop.clone();
        let server = std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        std::thread::spawn(move || {
                            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                            let mut buf = [0u8; 16384];
                            while let Ok(n) = c.read(&mut buf) {
                                if n == 0 || c.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        // Threads spawned here are in the namespace too.
        let dns = std::thread::spawn(move || make_dns_traffic(dur));
        let echo: SocketAddr = ([127, 0, 0, 1], ECHO_PORT).into();
        let deadline = Instant::now() + dur;
        let (mut ok, mut refused) = (0u64, 0u64);
        // Blackholed connects: SYN, SYN retransmit at 1 s, give up at 1.5 s.
        let blackhole = std::thread::spawn(|| {
            let addr: SocketAddr = ([127, 0, 0, 1], BLACKHOLE_PORT).into();
            (0..2)
                .filter(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(1500)).is_err())
                .count() as u64
        });
        // A long-lived connection exchanging data every 100 ms (RTT samples over time).
        let mut long = TcpStream::connect(echo).expect("long-lived connect");
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline {
            if let Ok(mut c) = TcpStream::connect(echo) {
                let data = vec![7u8; 32 * 1024];
                if c.write_all(&data).is_ok() {
                    let _ = c.shutdown(Shutdown::Write);
                    let mut got = 0;
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        got += n;
                    }
                    if got == data.len() {
                        ok += 1;
                    }
                }
            }
            if TcpStream::connect(("127.0.0.1", CLOSED_PORT)).is_err() {
                refused += 1;
            }
            let _ = long.write_all(b"ping");
            let _ = long.read(&mut buf[..4]);
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(long);
        let timed_out = blackhole.join().unwrap();
        let dns_answers = dns.join().expect("dns traffic");
        assert!(dns_answers > 10, "DNS traffic: {dns_answers} answers");
        stop.store(true, Ordering::Relaxed);
        let _ = server.join();
        (ok, refused, timed_out)
    })
    .join()
    .expect("traffic thread")
}

fn start_prometheus(bin: &Path, dir: &Path, port: u16, agent_port: u16) -> common::Proc {
    let cfg = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: nodescope\n    static_configs:\n      - targets: ['127.0.0.1:{agent_port}']\n"
    );
    let cfg_path = dir.join("prometheus.yml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let child = Command::new(bin)
        .arg(format!("--config.file={}", cfg_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--web.enable-remote-write-receiver")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn prometheus");
    let p = common::Proc {
        child,
        name: "prometheus",
    };
    assert!(
        common::wait_http_ok(
            &format!("http://127.0.0.1:{port}/-/ready"),
            Duration::from_secs(30)
        ),
        "prometheus did not become ready"
    );
    p
}

/// Runs an instant query; Err carries Prometheus's error (syntax, execution).
fn query(port: u16, q: &str) -> Result<Vec<Value>, String> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r: Value = client
        .get(format!("http://127.0.0.1:{port}/api/v1/query"))
        .query(&[("query", q)])
        .send()
        .and_then(|r| r.json())
        .map_err(|e| e.to_string())?;
    if r["status"] != "success" {
        return Err(format!("{}: {}", r["errorType"], r["error"]));
    }
    Ok(r["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// Values of `label` on the series matching `selector` in the last 10 minutes.
fn label_values(port: u16, selector: Option<&str>, label: &str) -> Result<Vec<String>, String> {
    let client = reqwest::blocking::Client::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let start = (now - 600).to_string();
    let r: Value = match selector {
        Some(sel) => client
            .get(format!("http://127.0.0.1:{port}/api/v1/series"))
            .query(&[("match[]", sel), ("start", start.as_str())])
            .send()
            .and_then(|r| r.json())
            .map_err(|e| e.to_string())?,
        None => client
            .get(format!(
                "http://127.0.0.1:{port}/api/v1/label/{label}/values"
            ))
            .query(&[("start", start.as_str())])
            .send()
            .and_then(|r| r.json())
            .map_err(|e| e.to_string())?,
    };
    if r["status"] != "success" {
        return Err(format!("{}: {}", r["errorType"], r["error"]));
    }
    let mut vals = BTreeSet::new();
    for item in r["data"].as_array().into_iter().flatten() {
        match selector {
            Some(_) => {
                if let Some(v) = item[label].as_str().filter(|v| !v.is_empty()) {
                    vals.insert(v.to_string());
                }
            }
            None => {
                if let Some(v) = item.as_str() {
                    vals.insert(v.to_string());
                }
            }
        }
    }
    Ok(vals.into_iter().collect())
}

/// Resolves the dashboard's variables in order against Prometheus; returns the values and
/// the problems found (a `label_values` variable that finds nothing is a failure).
fn resolve_variables(port: u16, d: &Dashboard) -> (BTreeMap<String, String>, Vec<String>) {
    resolve_variables_with(port, d, &BTreeMap::new())
}

/// As [`resolve_variables`], with `preset` values taken as they are (not queried).
fn resolve_variables_with(
    port: u16,
    d: &Dashboard,
    preset: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, Vec<String>) {
    let mut vals = BTreeMap::new();
    let mut problems = Vec::new();
    for v in variables(&d.json) {
        if let Some(p) = preset.get(&v.name) {
            vals.insert(v.name.clone(), p.clone());
            continue;
        }
        if v.kind == "datasource" {
            vals.insert(v.name.clone(), "prometheus".into());
            continue;
        }
        let mut resolved = v.static_value.clone();
        if v.kind == "query" {
            let q = v.query.clone().unwrap_or_default();
            let what = format!("dashboard {:?}, variable ${} ({q})", d.title, v.name);
            let first = substitute(&q, &vals)
                .and_then(|q| parse_variable_query(&q))
                .and_then(|k| match k {
                    VarKind::LabelValues { selector, label } => {
                        label_values(port, selector.as_deref(), &label)
                    }
                    VarKind::QueryResult(e) | VarKind::Expr(e) => {
                        query(port, &e).map(|r| r.iter().map(|s| s["metric"].to_string()).collect())
                    }
                });
            match first {
                Ok(list) if !list.is_empty() => {
                    if resolved.is_none() {
                        resolved = Some(escape_regex(&list[0]));
                    }
                }
                Ok(_) => problems.push(format!("{what}: no values")),
                Err(e) => problems.push(format!("{what}: {e}")),
            }
        }
        vals.insert(v.name.clone(), resolved.unwrap_or_else(|| ".*".into()));
    }
    (vals, problems)
}

/// A loopback HTTP server answering 200 to every `POST /ingest` (Pyroscope's ingest
/// endpoint), for the lifetime of the test process.
fn pyroscope_sink() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = axum::Router::new().route("/ingest", axum::routing::post(|| async { "" }));
            let _ = axum::serve(listener, app).await;
        });
    });
    port
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_agent() {
    let test = "every_dashboard_query_returns_data_from_a_real_agent";
    if !common::require_root(test) {
        return;
    }
    let Some(prom) = common::require_tool(test, "prometheus", &["/usr/bin/prometheus"]) else {
        return;
    };
    for tool in ["ip", "iptables"] {
        if common::require_tool(test, tool, &[]).is_none() {
            return;
        }
    }
    let t0 = Instant::now();
    let prom_port = common::free_port();
    let wal = tempfile::tempdir().unwrap();
    // Continuous profiling runs only when an exporter takes profiles: give it a
    // Pyroscope-shaped sink that accepts every ingest.
    let pyroscope_port = pyroscope_sink();
    let agent = common::start_agent(&format!(
        r#"
[network]
enabled = true

[network.dns]
timeout_seconds = 1.0

[profiling]
enabled = true
continuous = true
interval_secs = 5

[exporters.pyroscope]
enabled = true
endpoint = "http://127.0.0.1:{pyroscope_port}"

[exporters.remote_write]
enabled = true
endpoint = "http://127.0.0.1:{prom_port}/api/v1/write"
external_labels = {{ job = "nodescope-remote-write" }}

[exporters.remote_write.wal]
enabled = true
dir = "{}"
"#,
        wal.path().display()
    ));
    let pdir = tempfile::tempdir().unwrap();
    let _prom = start_prometheus(&prom, pdir.path(), prom_port, agent.port);

    let ns = Netns::create(&format!("nsdash{}", std::process::id()));
    let (ok, refused, timed_out) = make_traffic(&ns, Duration::from_secs(10));
    eprintln!("traffic: {ok} echo connections, {refused} refused, {timed_out} blackholed");
    assert!(
        ok > 10 && refused > 10,
        "traffic generator failed: {ok} ok, {refused} refused"
    );

    // Queries run until each has data or the deadline passes (rate windows fill, the
    // profiler's 5 s interval emits).
    let deadline = t0 + Duration::from_secs(85);
    let dashboards = load_dashboards();
    let mut failures: Vec<String>;
    let mut total;
    loop {
        failures = Vec::new();
        total = 0;
        for d in &dashboards {
            let (vals, problems) = resolve_variables(prom_port, d);
            failures.extend(problems);
            let (qs, _) = panel_queries(&d.title, &d.json).unwrap();
            for q in qs {
                total += 1;
                match substitute(&q.raw, &vals) {
                    Ok(e) => match query(prom_port, &e) {
                        Ok(r) if !r.is_empty() => {}
                        Ok(_) => failures.push(format!("{}: no series for\n    {e}", q.describe())),
                        Err(err) => failures.push(format!("{}: {err}\n    {e}", q.describe())),
                    },
                    Err(e) => failures.push(format!("{}: {e}", q.describe())),
                }
            }
        }
        if failures.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    drop(ns);
    drop(agent);
    assert!(
        failures.is_empty(),
        "{} of {total} dashboard queries failed after {:?}:\n  {}",
        failures.len(),
        t0.elapsed(),
        failures.join("\n  ")
    );
    eprintln!(
        "{total} dashboard queries returned data after {:?}",
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// The dashboards, alerts and recording rules node_exporter users have (Grafana 1860 and
// the node-mixin, vendored in tests/data/node-exporter-dashboards) against nodescope.
// ---------------------------------------------------------------------------------------

fn node_dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/node-exporter-dashboards")
}

/// Differences that are documented choices (docs/host-metrics.md, "Differences from
/// node_exporter 1.5"): a query containing the first string may lack data for nodescope.
const NODE_DASHBOARD_DIFFERENCES: &[(&str, &str)] = &[(
    "node_exporter_build_info",
    "node_exporter's own build info (nodescope exports nodescope_build_info); the \
     node-mixin's USE dashboard lists instances with it",
)];

const HOST_ONLY: &str = "[network]\nenabled = false\n[profiling]\nenabled = false\n";

fn node_job_rewrite(text: &str) -> String {
    text.replace("job=\\\"node\\\"", "job=\\\"nodescope\\\"")
        .replace("job=\"node\"", "job=\"nodescope\"")
}

fn load_node_dashboard(file: &str, rewrite: bool) -> Dashboard {
    let text = std::fs::read_to_string(node_dashboards_dir().join(file)).unwrap();
    let text = if rewrite {
        node_job_rewrite(&text)
    } else {
        text
    };
    let json: Value = serde_json::from_str(&text).unwrap();
    Dashboard {
        file: file.to_string(),
        title: json["title"].as_str().unwrap_or("").to_string(),
        json,
    }
}

fn has_data(port: u16, q: &str) -> Result<bool, String> {
    query(port, q).map(|r| !r.is_empty())
}

/// The name of the variable a `resolve_variables` problem is about.
fn problem_variable(p: &str) -> String {
    p.split("variable $")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap_or("")
        .to_string()
}

struct NodeCheck {
    what: String,
    ne: String,
    ns: String,
}

/// Every check of one round: `(what, query for node_exporter, query for nodescope)`,
/// plus failures found while resolving variables.
fn node_checks(port: u16, ns_instance: &str) -> (Vec<NodeCheck>, Vec<String>) {
    let mut checks = Vec::new();
    let mut failures = Vec::new();
    let mixin = [
        "node-mixin/nodes.json",
        "node-mixin/node-rsrc-use.json",
        "node-mixin/node-cluster-rsrc-use.json",
    ];
    for file in std::iter::once("grafana-1860-node-exporter-full.json").chain(mixin) {
        let is_1860 = file.starts_with("grafana-1860");
        let ne_d = load_node_dashboard(file, false);
        let ns_d = load_node_dashboard(file, true);
        let mut ne_pre = BTreeMap::new();
        let mut ns_pre = BTreeMap::new();
        if is_1860 {
            ne_pre.insert("job".to_string(), "node".to_string());
            ns_pre.insert("job".to_string(), "nodescope".to_string());
        } else {
            // The mixin's multi-cluster variable: no cluster label here (its default).
            ne_pre.insert("cluster".to_string(), String::new());
            ns_pre.insert("cluster".to_string(), String::new());
        }
        // These dashboards use single-value variables with `=` matchers: Grafana inserts
        // the raw value there, not the regex-escaped one.
        let raw = |m: BTreeMap<String, String>| -> BTreeMap<String, String> {
            m.into_iter()
                .map(|(k, v)| (k, v.replace("\\\\", "")))
                .collect()
        };
        let (ne_vals, ne_problems) = resolve_variables_with(port, &ne_d, &ne_pre);
        let (ns_vals, ns_problems) = resolve_variables_with(port, &ns_d, &ns_pre);
        let ne_vals = raw(ne_vals);
        let mut ns_vals = raw(ns_vals);
        let ne_bad: BTreeSet<String> = ne_problems.iter().map(|p| problem_variable(p)).collect();
        for p in &ns_problems {
            let var = problem_variable(p);
            if ne_bad.contains(&var) {
                continue;
            }
            failures.push(format!("{file}: {p} (node_exporter has values)"));
            if var == "instance" {
                // Check the panels for nodescope's instance all the same.
                let mut pre = ns_pre.clone();
                pre.insert("instance".into(), escape_regex(ns_instance));
                ns_vals = raw(resolve_variables_with(port, &ns_d, &pre).0);
            }
        }
        let (ne_qs, _) = panel_queries(&ne_d.title, &ne_d.json).unwrap();
        let (ns_qs, _) = panel_queries(&ns_d.title, &ns_d.json).unwrap();
        assert_eq!(ne_qs.len(), ns_qs.len());
        for (a, b) in ne_qs.iter().zip(&ns_qs) {
            match (substitute(&a.raw, &ne_vals), substitute(&b.raw, &ns_vals)) {
                (Ok(ne), Ok(ns)) => checks.push(NodeCheck {
                    what: format!("{file}: {}", a.describe()),
                    ne,
                    ns,
                }),
                (Err(e), _) | (_, Err(e)) => {
                    failures.push(format!("{file}: {}: {e}", a.describe()))
                }
            }
        }
    }
    for file in ["node-mixin/node_alerts.json", "node-mixin/node_rules.json"] {
        let text = std::fs::read_to_string(node_dashboards_dir().join(file)).unwrap();
        let json: Value = serde_json::from_str(&text).unwrap();
        for g in json["groups"].as_array().unwrap() {
            for r in g["rules"].as_array().unwrap() {
                let name = r["alert"].as_str().or(r["record"].as_str()).unwrap_or("?");
                let expr = r["expr"].as_str().unwrap().to_string();
                checks.push(NodeCheck {
                    what: format!("{file}: {name}"),
                    ns: node_job_rewrite(&expr),
                    ne: expr,
                });
            }
        }
    }
    (checks, failures)
}

#[test]
fn node_exporter_dashboards_answer_for_nodescope_where_they_do_for_node_exporter() {
    let test = "node_exporter_dashboards_answer_for_nodescope_where_they_do_for_node_exporter";
    let Some(prom) = common::require_tool(test, "prometheus", &["/usr/bin/prometheus"]) else {
        return;
    };
    let Some(ne_bin) = common::node_exporter_bin(test) else {
        return;
    };
    let t0 = Instant::now();
    let (_ne, ne_port) = common::start_node_exporter(&ne_bin);
    let agent = common::start_agent(HOST_ONLY);
    let ns_instance = format!("127.0.0.1:{}", agent.port);

    // Prometheus with both targets and the node-mixin's recording rules for each job.
    let dir = tempfile::tempdir().unwrap();
    let rules =
        std::fs::read_to_string(node_dashboards_dir().join("node-mixin/node_rules.json")).unwrap();
    std::fs::write(dir.path().join("rules-node.json"), &rules).unwrap();
    std::fs::write(
        dir.path().join("rules-nodescope.json"),
        node_job_rewrite(&rules).replace("node-exporter.rules", "nodescope.rules"),
    )
    .unwrap();
    let port = common::free_port();
    let cfg = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
         rule_files: ['{0}/rules-node.json', '{0}/rules-nodescope.json']\n\
         scrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: ['127.0.0.1:{ne_port}']\n\
         \x20 - job_name: nodescope\n    static_configs:\n      - targets: ['{ns_instance}']\n",
        dir.path().display()
    );
    std::fs::write(dir.path().join("prometheus.yml"), cfg).unwrap();
    let child = Command::new(&prom)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn prometheus");
    let _prom = common::Proc {
        child,
        name: "prometheus",
    };
    assert!(
        common::wait_http_ok(
            &format!("http://127.0.0.1:{port}/-/ready"),
            Duration::from_secs(30)
        ),
        "prometheus did not become ready"
    );
    // Rate windows need a few samples; then retry until every check passes or time is up.
    std::thread::sleep(Duration::from_secs(20));
    let deadline = t0 + Duration::from_secs(100);
    loop {
        let (checks, mut failures) = node_checks(port, &ns_instance);
        let mut with_data = 0usize;
        let mut answered = 0usize;
        for c in &checks {
            match has_data(port, &c.ne) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    failures.push(format!(
                        "{}: node_exporter query fails: {e}\n    {}",
                        c.what, c.ne
                    ));
                    continue;
                }
            }
            with_data += 1;
            match has_data(port, &c.ns) {
                Ok(true) => answered += 1,
                Ok(false) => {
                    failures.push(format!("{}: no data for nodescope\n    {}", c.what, c.ns))
                }
                Err(e) => failures.push(format!("{}: {e}\n    {}", c.what, c.ns)),
            }
        }
        let (documented, undocumented): (Vec<String>, Vec<String>) =
            failures.into_iter().partition(|f| {
                NODE_DASHBOARD_DIFFERENCES
                    .iter()
                    .any(|(needle, _)| f.contains(needle))
            });
        // Not vacuous: most of 1860's panels and the mixin's have data for node_exporter.
        let enough = with_data >= checks.len() / 2;
        if (undocumented.is_empty() && enough) || Instant::now() > deadline {
            eprintln!(
                "{} checks (panels of 1860 and the node-mixin, its alerts and rules); {with_data} return data \
                 for node_exporter, {answered} of them for nodescope; documented differences:\n  {}",
                checks.len(),
                documented.join("\n  ")
            );
            assert!(
                enough,
                "only {with_data} of {} checks have data for node_exporter: the test would prove little",
                checks.len()
            );
            let hint = if undocumented
                .iter()
                .any(|f| f.contains("node_scrape_collector_"))
            {
                "\n(node_scrape_collector_* come from nodescope_host::node_scrape_families, which \
                 the agent's collector runner must call with each host collector's outcome)"
            } else {
                ""
            };
            assert!(
                undocumented.is_empty(),
                "{} queries answer for node_exporter but not for nodescope (after {:?}):\n  {}{hint}",
                undocumented.len(),
                t0.elapsed(),
                undocumented.join("\n  ")
            );
            break;
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    drop(agent);
}
