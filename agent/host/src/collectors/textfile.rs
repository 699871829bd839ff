//! `textfile`: the metrics of `*.prom` files in a directory (cron jobs, config management),
//! merged the way node_exporter 1.5 merges them, plus `node_textfile_mtime_seconds{file}`
//! and `node_textfile_scrape_error`.
//!
//! The parser follows Prometheus' text format 0.0.4 as `expfmt.TextParser` reads it (a file
//! it refuses is refused whole and sets `node_textfile_scrape_error 1`): `# HELP` / `# TYPE`
//! at most once per family and before its samples, `_sum` / `_count` / `_bucket` samples
//! folded into a preceding summary or histogram, escapes `\\`, `\"`, `\n` in label values,
//! and no client-side timestamps (a file with one is skipped, as in node_exporter).
//!
//! Merging follows client_golang's gather as node_exporter 1.5 runs it (continue on
//! error): the first family of a name (files in name order) fixes its help and type, a later
//! family of the same name with another help or type is dropped, a series already seen
//! (same name and label values) is dropped, and within one family labels missing from some
//! series are added with an empty value. A family without `# HELP` gets
//! `Metric read from <files>`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nodescope_model::{Bucket, CollectError, Collector, Histogram, MetricFamily, MetricType};

use crate::util::text;

/// The type of a parsed family (`summary` kept apart: the model has no summary type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextType {
    Counter,
    Gauge,
    Untyped,
    Histogram,
    Summary,
}

/// One series of a parsed family.
#[derive(Clone, Debug, PartialEq)]
pub enum TextValue {
    Number(f64),
    Histogram {
        /// `(le, cumulative count)` in file order (last wins for a repeated `le`).
        buckets: Vec<(f64, u64)>,
        count: u64,
        sum: f64,
    },
    Summary {
        quantiles: Vec<(f64, f64)>,
        count: u64,
        sum: f64,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct TextMetric {
    /// Label pairs without `le` / `quantile`, in file order.
    pub labels: Vec<(String, String)>,
    pub value: TextValue,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TextFamily {
    pub name: String,
    pub help: Option<String>,
    pub kind: TextType,
    pub metrics: Vec<TextMetric>,
}

fn is_name_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}
fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}
fn is_label_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}
fn is_label_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Go's `strconv.ParseFloat` for what the text format carries (decimal, exponents, `NaN`,
/// `Inf`, `+Inf`, `-Inf`, case-insensitive).
fn parse_float(s: &str) -> Option<f64> {
    if s.is_empty() || s.contains('_') {
        return None;
    }
    s.parse::<f64>().ok()
}

struct Pending {
    name: String,
    help: Option<String>,
    kind: Option<TextType>,
    metrics: Vec<TextMetric>,
    /// Label signature → metric index (summaries and histograms merge their lines).
    by_sig: HashMap<Vec<(String, String)>, usize>,
}

fn unescape(s: &str, quote: bool, line: usize) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if quote => out.push('"'),
            other => {
                return Err(format!(
                    "line {line}: invalid escape sequence '\\{}'",
                    other.map(String::from).unwrap_or_default()
                ))
            }
        }
    }
    Ok(out)
}

/// Splits a sample line into name, labels, value and optional timestamp.
#[allow(clippy::type_complexity)]
fn parse_sample_line(
    line: &str,
    n: usize,
) -> Result<(&str, Vec<(String, String)>, f64, Option<i64>), String> {
    let b = line.as_bytes();
    let mut i = 0;
    if b.is_empty() || !is_name_start(b[0]) {
        return Err(format!("line {n}: invalid metric name"));
    }
    while i < b.len() && is_name_char(b[i]) {
        i += 1;
    }
    let name = &line[..i];
    let skip_blank = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t') {
            *i += 1;
        }
    };
    skip_blank(&mut i);
    let mut labels: Vec<(String, String)> = Vec::new();
    if i < b.len() && b[i] == b'{' {
        i += 1;
        loop {
            skip_blank(&mut i);
            if i < b.len() && b[i] == b'}' {
                i += 1;
                break;
            }
            if i >= b.len() || !is_label_start(b[i]) {
                return Err(format!("line {n}: invalid label name for metric {name:?}"));
            }
            let start = i;
            while i < b.len() && is_label_char(b[i]) {
                i += 1;
            }
            let lname = &line[start..i];
            if lname == "__name__" {
                return Err(format!("line {n}: label name \"__name__\" is reserved"));
            }
            skip_blank(&mut i);
            if i >= b.len() || b[i] != b'=' {
                return Err(format!("line {n}: expected '=' after label name {lname:?}"));
            }
            i += 1;
            skip_blank(&mut i);
            if i >= b.len() || b[i] != b'"' {
                return Err(format!("line {n}: expected '\"' at start of label value"));
            }
            i += 1;
            let vstart = i;
            let mut escaped = false;
            loop {
                if i >= b.len() {
                    return Err(format!("line {n}: unterminated label value"));
                }
                if escaped {
                    escaped = false;
                } else if b[i] == b'\\' {
                    escaped = true;
                } else if b[i] == b'"' {
                    break;
                }
                i += 1;
            }
            let value = unescape(&line[vstart..i], true, n)?;
            i += 1;
            if labels.iter().any(|(k, _)| k == lname) {
                return Err(format!(
                    "line {n}: duplicate label names for metric {name:?}"
                ));
            }
            labels.push((lname.to_string(), value));
            skip_blank(&mut i);
            if i < b.len() && b[i] == b',' {
                i += 1;
                continue;
            }
            if i < b.len() && b[i] == b'}' {
                i += 1;
                break;
            }
            return Err(format!("line {n}: unexpected end of label value"));
        }
        skip_blank(&mut i);
    }
    let rest = &line[i..];
    let mut toks = rest.split([' ', '\t']).filter(|t| !t.is_empty());
    let v = toks
        .next()
        .ok_or_else(|| format!("line {n}: missing value for metric {name:?}"))?;
    let value =
        parse_float(v).ok_or_else(|| format!("line {n}: expected float as value, got {v:?}"))?;
    let ts = match toks.next() {
        None => None,
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| format!("line {n}: expected integer as timestamp, got {t:?}"))?,
        ),
    };
    if toks.next().is_some() {
        return Err(format!("line {n}: spurious string after timestamp"));
    }
    Ok((name, labels, value, ts))
}

/// Parses one text-format file. `Err` names the line and the reason (the whole file is
/// refused, as in node_exporter). Families are returned in name order; families with no
/// samples are dropped (as `expfmt` drops them). `had_timestamp` is set when any sample
/// carries a timestamp.
pub fn parse_text_format(input: &str) -> Result<(Vec<TextFamily>, bool), String> {
    let mut fams: Vec<Pending> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let mut had_ts = false;
    for (idx, raw) in input.split('\n').enumerate() {
        let n = idx + 1;
        let line = raw.trim_start_matches([' ', '\t']);
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            let c = c.trim_start_matches([' ', '\t']);
            let (kw, rest) = match c.find([' ', '\t']) {
                Some(p) => (&c[..p], c[p..].trim_start_matches([' ', '\t'])),
                None => (c, ""),
            };
            if kw != "HELP" && kw != "TYPE" {
                continue;
            }
            let (name, arg) = match rest.find([' ', '\t']) {
                Some(p) => (&rest[..p], rest[p..].trim_start_matches([' ', '\t'])),
                None => (rest, ""),
            };
            let nb = name.as_bytes();
            if nb.is_empty() || !is_name_start(nb[0]) || !nb.iter().all(|&c| is_name_char(c)) {
                return Err(format!("line {n}: invalid metric name in comment"));
            }
            let i = *by_name.entry(name.to_string()).or_insert_with(|| {
                fams.push(Pending {
                    name: name.to_string(),
                    help: None,
                    kind: None,
                    metrics: Vec::new(),
                    by_sig: HashMap::new(),
                });
                fams.len() - 1
            });
            let f = &mut fams[i];
            if kw == "HELP" {
                if f.help.is_some() {
                    return Err(format!(
                        "line {n}: second HELP line for metric name {name:?}"
                    ));
                }
                f.help = Some(unescape(arg, false, n)?);
            } else {
                if f.kind.is_some() || !f.metrics.is_empty() {
                    return Err(format!(
                        "line {n}: second TYPE line for metric name {name:?}, or TYPE reported after samples"
                    ));
                }
                f.kind = Some(match arg.trim_end_matches([' ', '\t']) {
                    "counter" => TextType::Counter,
                    "gauge" => TextType::Gauge,
                    "untyped" => TextType::Untyped,
                    "histogram" => TextType::Histogram,
                    "summary" => TextType::Summary,
                    other => return Err(format!("line {n}: unknown metric type {other:?}")),
                });
            }
            continue;
        }
        let (name, mut labels, value, ts) = parse_sample_line(line, n)?;
        had_ts |= ts.is_some();
        // Resolve the family: exact name, else the base of a summary/histogram suffix.
        let mut part = "";
        let mut fi = by_name.get(name).copied();
        if fi.is_none() {
            for (suffix, kinds) in [
                ("_sum", &[TextType::Summary, TextType::Histogram][..]),
                ("_count", &[TextType::Summary, TextType::Histogram][..]),
                ("_bucket", &[TextType::Histogram][..]),
            ] {
                if let Some(base) = name.strip_suffix(suffix) {
                    if let Some(&j) = by_name.get(base) {
                        if fams[j].kind.is_some_and(|k| kinds.contains(&k)) {
                            fi = Some(j);
                            part = suffix;
                            break;
                        }
                    }
                }
            }
        }
        let fi = fi.unwrap_or_else(|| {
            fams.push(Pending {
                name: name.to_string(),
                help: None,
                kind: None,
                metrics: Vec::new(),
                by_sig: HashMap::new(),
            });
            by_name.insert(name.to_string(), fams.len() - 1);
            fams.len() - 1
        });
        let f = &mut fams[fi];
        match f.kind {
            Some(k @ (TextType::Summary | TextType::Histogram)) => {
                let special = if k == TextType::Summary {
                    "quantile"
                } else {
                    "le"
                };
                let mut bound = None;
                if let Some(p) = labels.iter().position(|(k, _)| k == special) {
                    if (k == TextType::Summary && part.is_empty()) || part == "_bucket" {
                        let (_, v) = labels.remove(p);
                        bound = Some(parse_float(&v).ok_or_else(|| {
                            format!("line {n}: expected float as value for '{special}' label")
                        })?);
                    }
                }
                let sig = labels.clone();
                let mi = match f.by_sig.get(&sig) {
                    Some(&mi) => mi,
                    None => {
                        f.metrics.push(TextMetric {
                            labels,
                            value: if k == TextType::Summary {
                                TextValue::Summary {
                                    quantiles: Vec::new(),
                                    count: 0,
                                    sum: 0.0,
                                }
                            } else {
                                TextValue::Histogram {
                                    buckets: Vec::new(),
                                    count: 0,
                                    sum: 0.0,
                                }
                            },
                        });
                        f.by_sig.insert(sig, f.metrics.len() - 1);
                        f.metrics.len() - 1
                    }
                };
                let to_count = |v: f64| {
                    if v.is_finite() && v > 0.0 {
                        v as u64
                    } else {
                        0
                    }
                };
                match &mut f.metrics[mi].value {
                    TextValue::Summary {
                        quantiles,
                        count,
                        sum,
                    } => match part {
                        "_sum" => *sum = value,
                        "_count" => *count = to_count(value),
                        _ => {
                            if let Some(q) = bound {
                                quantiles.push((q, value));
                            }
                        }
                    },
                    TextValue::Histogram {
                        buckets,
                        count,
                        sum,
                    } => match part {
                        "_sum" => *sum = value,
                        "_count" => *count = to_count(value),
                        "_bucket" => {
                            if let Some(le) = bound {
                                buckets.retain(|(b, _)| *b != le);
                                buckets.push((le, to_count(value)));
                            }
                        }
                        _ => {}
                    },
                    TextValue::Number(_) => {}
                }
            }
            _ => f.metrics.push(TextMetric {
                labels,
                value: TextValue::Number(value),
            }),
        }
    }
    let mut out: Vec<TextFamily> = fams
        .into_iter()
        .filter(|f| !f.metrics.is_empty())
        .map(|f| TextFamily {
            name: f.name,
            help: f.help,
            kind: f.kind.unwrap_or(TextType::Untyped),
            metrics: f.metrics,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((out, had_ts))
}

/// Limits of one textfile collect.
#[derive(Clone, Debug)]
pub(crate) struct TextfileLimits {
    pub max_files: usize,
    pub max_file_bytes: u64,
    pub max_series: usize,
}

pub(crate) struct TextfileCollector {
    dir: PathBuf,
    /// The directory as configured (host view), used in the `file` label.
    label_dir: PathBuf,
    /// A missing directory is not an error (the built-in default directory).
    missing_ok: bool,
    limits: TextfileLimits,
    files_dropped: AtomicU64,
    series_dropped: AtomicU64,
}

impl TextfileCollector {
    pub(crate) fn new(
        dir: PathBuf,
        label_dir: PathBuf,
        missing_ok: bool,
        limits: TextfileLimits,
    ) -> Self {
        TextfileCollector {
            dir,
            label_dir,
            missing_ok,
            limits,
            files_dropped: AtomicU64::new(0),
            series_dropped: AtomicU64::new(0),
        }
    }

    fn read_file(&self, path: &Path) -> Result<(Vec<TextFamily>, f64), String> {
        use nodescope_model::files::{read_capped, ReadFileError};
        // Checked before it is opened: opening a FIFO named `*.prom` would block until a
        // writer came, hanging the collector.
        let buf =
            read_capped(path, self.limits.max_file_bytes, "textfile").map_err(|e| match e {
                ReadFileError::TooLarge { .. } => format!(
                    "larger than host.textfile.max_file_bytes ({} bytes)",
                    self.limits.max_file_bytes
                ),
                ReadFileError::NotRegular { kind, .. } => format!("not a regular file ({kind})"),
                other => other.to_string(),
            })?;
        let meta = std::fs::metadata(path).map_err(|e| format!("failed to stat: {e}"))?;
        let (fams, ts) = parse_text_format(&text(&buf))?;
        if ts {
            return Err("contains unsupported client-side timestamps, skipping entire file".into());
        }
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as f64)
            .unwrap_or(0.0);
        Ok((fams, mtime))
    }
}

impl Collector for TextfileCollector {
    fn name(&self) -> &'static str {
        "textfile"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let mut errored = false;
        let listing = if self.dir.as_os_str().is_empty() {
            Ok(Vec::new())
        } else {
            std::fs::read_dir(&self.dir).map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| n.ends_with(".prom"))
                    .collect()
            })
        };
        let mut names: Vec<String> = match listing {
            Ok(v) => v,
            Err(e) if self.missing_ok && e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "textfile: cannot read the directory");
                errored = true;
                Vec::new()
            }
        };
        names.sort();
        if names.len() > self.limits.max_files {
            let extra = names.len() - self.limits.max_files;
            self.files_dropped
                .fetch_add(extra as u64, Ordering::Relaxed);
            names.truncate(self.limits.max_files);
        }
        let mut parsed: Vec<(String, TextFamily)> = Vec::new();
        let mut files_of: HashMap<String, Vec<String>> = HashMap::new();
        let mut mtimes: BTreeMap<String, f64> = BTreeMap::new();
        for name in &names {
            let label = self.label_dir.join(name).display().to_string();
            match self.read_file(&self.dir.join(name)) {
                Ok((fams, mtime)) => {
                    for f in fams {
                        files_of
                            .entry(f.name.clone())
                            .or_default()
                            .push(label.clone());
                        parsed.push((label.clone(), f));
                    }
                    mtimes.insert(label, mtime);
                }
                Err(reason) => {
                    tracing::warn!(file = %label, %reason, "textfile: file skipped");
                    errored = true;
                }
            }
        }
        // Gather: first family of a name fixes help and type; duplicates dropped.
        let mut out: Vec<MetricFamily> = Vec::new();
        let mut index: HashMap<String, (usize, String, TextType)> = HashMap::new();
        let mut seen: HashSet<(String, Vec<(String, String)>)> = HashSet::new();
        let mut series = 0usize;
        let mut dropped = 0u64;
        for (_, f) in parsed {
            let help = f.help.clone().unwrap_or_else(|| {
                format!(
                    "Metric read from {}",
                    files_of
                        .get(&f.name)
                        .map(|v| v.join(", "))
                        .unwrap_or_default()
                )
            });
            let oi = match index.get(&f.name) {
                Some((i, h, k)) => {
                    if *h != help || *k != f.kind {
                        tracing::debug!(metric = %f.name, "textfile: family with another help or type dropped");
                        continue;
                    }
                    *i
                }
                None => {
                    let kind = match f.kind {
                        TextType::Counter => MetricType::Counter,
                        TextType::Gauge => MetricType::Gauge,
                        TextType::Histogram => MetricType::Histogram,
                        // The model has no summary: its samples are exported untyped
                        // (see docs/host-metrics.md).
                        TextType::Untyped | TextType::Summary => MetricType::Untyped,
                    };
                    out.push(MetricFamily::new(f.name.clone(), help.clone(), kind));
                    index.insert(f.name.clone(), (out.len() - 1, help, f.kind));
                    out.len() - 1
                }
            };
            let mut all_labels: Vec<&str> = Vec::new();
            for m in &f.metrics {
                for (k, _) in &m.labels {
                    if !all_labels.contains(&k.as_str()) {
                        all_labels.push(k);
                    }
                }
            }
            let mut extra: Vec<MetricFamily> = Vec::new();
            for m in &f.metrics {
                let mut labels = m.labels.clone();
                for k in &all_labels {
                    if !labels.iter().any(|(n, _)| n == k) {
                        labels.push((k.to_string(), String::new()));
                    }
                }
                labels.sort();
                if !seen.insert((f.name.clone(), labels.clone())) {
                    continue;
                }
                if series >= self.limits.max_series {
                    dropped += 1;
                    continue;
                }
                series += 1;
                let fam = &mut out[oi];
                match &m.value {
                    TextValue::Number(v) => {
                        fam.push(labels, *v);
                    }
                    TextValue::Histogram {
                        buckets,
                        count,
                        sum,
                    } => {
                        let mut b: Vec<Bucket> = buckets
                            .iter()
                            .filter(|(le, _)| le.is_finite() || *le < 0.0)
                            .map(|(le, c)| Bucket {
                                upper_bound: *le,
                                cumulative_count: *c,
                            })
                            .collect();
                        b.sort_by(|x, y| x.upper_bound.total_cmp(&y.upper_bound));
                        fam.push_histogram(
                            labels,
                            Histogram {
                                buckets: b,
                                count: *count,
                                sum: *sum,
                            },
                        );
                    }
                    TextValue::Summary {
                        quantiles,
                        count,
                        sum,
                    } => {
                        let mut qs = quantiles.clone();
                        qs.sort_by(|x, y| x.0.total_cmp(&y.0));
                        qs.dedup_by(|a, b| a.0 == b.0);
                        for (q, v) in qs {
                            let mut l = labels.clone();
                            l.push(("quantile".into(), format_go_float(q)));
                            l.sort();
                            fam.push(l, v);
                        }
                        let help = fam.help.clone();
                        let mut s = MetricFamily::new(
                            format!("{}_sum", f.name),
                            help.clone(),
                            MetricType::Untyped,
                        );
                        s.push(labels.clone(), *sum);
                        let mut c = MetricFamily::new(
                            format!("{}_count", f.name),
                            help,
                            MetricType::Untyped,
                        );
                        c.push(labels, *count as f64);
                        extra.push(s);
                        extra.push(c);
                    }
                }
            }
            out.extend(extra);
        }
        if dropped > 0 {
            self.series_dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        let mut mt = MetricFamily::new(
            "node_textfile_mtime_seconds",
            "Unixtime mtime of textfiles successfully read.",
            MetricType::Gauge,
        );
        for (file, t) in mtimes {
            mt.push([("file", file)], t);
        }
        out.push(mt);
        out.push(MetricFamily::single(
            "node_textfile_scrape_error",
            "1 if there was an error opening or reading a file, 0 otherwise",
            MetricType::Gauge,
            if errored { 1.0 } else { 0.0 },
        ));
        out.push(MetricFamily::single(
            "nodescope_host_textfile_files_dropped_total",
            "Textfiles beyond host.textfile.max_files that were not read.",
            MetricType::Counter,
            self.files_dropped.load(Ordering::Relaxed) as f64,
        ));
        out.push(MetricFamily::single(
            "nodescope_host_textfile_series_dropped_total",
            "Textfile series beyond host.textfile.max_series that were not exported.",
            MetricType::Counter,
            self.series_dropped.load(Ordering::Relaxed) as f64,
        ));
        out.retain(|f| !f.points.is_empty());
        Ok(out)
    }
}

/// Formats a float the way Go's `strconv.FormatFloat(f, 'g', -1, 64)` writes a quantile
/// label (`0.5`, `0.99`, `1e-05`).
fn format_go_float(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let exp = v.abs().log10().floor() as i32;
    if !(-4..21).contains(&exp) {
        let s = format!("{v:e}");
        // Rust: 1e-5 → Go: 1e-05
        if let Some((m, e)) = s.split_once('e') {
            let (sign, digits) = match e.strip_prefix('-') {
                Some(d) => ("-", d),
                None => ("+", e),
            };
            return format!("{m}e{sign}{digits:0>2}");
        }
        return s;
    }
    format!("{v}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_families_and_merges_summary_and_histogram_lines() {
        let t = "# HELP a_total Help with \\\\ and \\n.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n\
                 # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3.5\nh_count 2\n\
                 # TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 2\ns_count 3\nplain 1\n";
        let (fams, ts) = parse_text_format(t).unwrap();
        assert!(!ts);
        let names: Vec<_> = fams.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a_total", "h", "plain", "s"]);
        assert_eq!(fams[0].help.as_deref(), Some("Help with \\ and \n."));
        assert_eq!(
            fams[1].metrics[0].value,
            TextValue::Histogram {
                buckets: vec![(1.0, 1), (f64::INFINITY, 2)],
                count: 2,
                sum: 3.5
            }
        );
        assert_eq!(
            fams[3].metrics[0].value,
            TextValue::Summary {
                quantiles: vec![(0.5, 1.0)],
                count: 3,
                sum: 2.0
            }
        );
        assert_eq!(fams[2].kind, TextType::Untyped);
    }

    #[test]
    fn refuses_what_expfmt_refuses() {
        for bad in [
            "# HELP a x\n# HELP a y\na 1\n",
            "a 1\n# TYPE a counter\n",
            "# TYPE a countr\n",
            "a{b=\"1\",b=\"2\"} 1\n",
            "a{b=\"\\x\"} 1\n",
            "a{__name__=\"x\"} 1\n",
            "a 1 2 3\n",
            "a x\n",
            "a{b=\"1\" 1\n",
            "1a 1\n",
            "a\n",
        ] {
            assert!(parse_text_format(bad).is_err(), "{bad:?} accepted");
        }
        let (_, ts) = parse_text_format("a 1 1234\n").unwrap();
        assert!(ts);
        assert!(parse_text_format("a{b=\"1\",} 1\n\n  # comment\n").is_ok());
    }

    #[test]
    fn go_float_labels() {
        assert_eq!(format_go_float(0.5), "0.5");
        assert_eq!(format_go_float(0.99), "0.99");
        assert_eq!(format_go_float(1e-5), "1e-05");
        assert_eq!(format_go_float(1.0), "1");
    }

    #[test]
    fn merges_files_like_node_exporter() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.prom"),
            "# HELP e_total A.\n# TYPE e_total counter\ne_total{f=\"a\"} 1\nx{y=\"1\"} 1\nx 2\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.prom"),
            "# HELP e_total B.\n# TYPE e_total counter\ne_total{f=\"b\"} 2\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("c.prom"), "t 1 123\n").unwrap();
        std::fs::write(dir.path().join("ignored.txt"), "garbage").unwrap();
        let c = TextfileCollector::new(
            dir.path().to_path_buf(),
            PathBuf::from("/t"),
            false,
            TextfileLimits {
                max_files: 10,
                max_file_bytes: 1 << 20,
                max_series: 100,
            },
        );
        let fams = c.collect().unwrap();
        let e = fams.iter().find(|f| f.name == "e_total").unwrap();
        assert_eq!(e.help, "A.");
        assert_eq!(e.points.len(), 1, "b's family has another help: dropped");
        let x = fams.iter().find(|f| f.name == "x").unwrap();
        assert_eq!(x.help, "Metric read from /t/a.prom");
        assert!(x
            .points
            .iter()
            .any(|p| p.labels == vec![("y".into(), String::new())]));
        let mt = fams
            .iter()
            .find(|f| f.name == "node_textfile_mtime_seconds")
            .unwrap();
        assert_eq!(mt.points.len(), 2, "c.prom has a timestamp: skipped");
        let err = fams
            .iter()
            .find(|f| f.name == "node_textfile_scrape_error")
            .unwrap();
        assert_eq!(err.points[0].value, nodescope_model::Value::Number(1.0));
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.prom"), "m 1\n").unwrap();
        let fifo = dir.path().join("b.prom");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let c = TextfileCollector::new(
            dir.path().to_path_buf(),
            dir.path().to_path_buf(),
            false,
            TextfileLimits {
                max_files: 10,
                max_file_bytes: 1 << 20,
                max_series: 100,
            },
        );
        let t0 = std::time::Instant::now();
        let fams = c.collect().unwrap();
        assert!(t0.elapsed() < std::time::Duration::from_secs(2));
        assert!(fams.iter().any(|f| f.name == "m"));
        let err = fams
            .iter()
            .find(|f| f.name == "node_textfile_scrape_error")
            .unwrap();
        assert_eq!(err.points[0].value, nodescope_model::Value::Number(1.0));
    }

    #[test]
    fn caps_series() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = String::new();
        for i in 0..50 {
            t.push_str(&format!("m{{i=\"{i}\"}} 1\n"));
        }
        std::fs::write(dir.path().join("a.prom"), t).unwrap();
        let c = TextfileCollector::new(
            dir.path().to_path_buf(),
            dir.path().to_path_buf(),
            false,
            TextfileLimits {
                max_files: 10,
                max_file_bytes: 1 << 20,
                max_series: 10,
            },
        );
        let fams = c.collect().unwrap();
        assert_eq!(
            fams.iter().find(|f| f.name == "m").unwrap().points.len(),
            10
        );
        let d = fams
            .iter()
            .find(|f| f.name == "nodescope_host_textfile_series_dropped_total")
            .unwrap();
        assert_eq!(d.points[0].value, nodescope_model::Value::Number(40.0));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = parse_text_format(&s);
        }

        #[test]
        fn line_shaped_garbage_never_panics(lines in proptest::collection::vec(
            "(# (HELP|TYPE) [a-z_]{1,4} [a-z ]{0,8}|[a-z_]{1,4}(\\{[a-z]{1,2}=\"[a-z\\\\\"]{0,3}\"(,)?\\})? [-+0-9.eNaIf]{1,6}( [0-9]{1,3})?)",
            0..20)) {
            let _ = parse_text_format(&lines.join("\n"));
        }
    }
}
