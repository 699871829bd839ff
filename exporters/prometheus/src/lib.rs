//! Prometheus exposition of the telemetry model: the classic text format 0.0.4 (what
//! node_exporter serves by default) and OpenMetrics 1.0.0 (what Prometheus asks for first
//! in its `Accept` header).
//!
//! Why not `prometheus-client`: its encoder only writes OpenMetrics and only from its own
//! registry types, while nodescope serves pre-aggregated snapshots (including
//! node_exporter's *untyped* families) in both formats. Encoding is a few escaping rules;
//! it is checked against real peers (`promtool check metrics` and a real Prometheus scrape
//! in the agent's tests) rather than against our own idea of the format.

use std::collections::HashMap;
use std::fmt::Write as _;

use nodescope_model::{Histogram, MetricFamily, MetricType, Point, Value};

pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text004,
    OpenMetrics,
}

impl Format {
    /// Picks the format from an HTTP `Accept` header the way client_golang does:
    /// OpenMetrics only when the scraper explicitly lists it (and does not give it q=0).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text004;
        };
        for part in accept.split(',') {
            let mut params = part.split(';').map(str::trim);
            let media = params.next().unwrap_or("");
            if !media.eq_ignore_ascii_case("application/openmetrics-text") {
                continue;
            }
            let refused = params.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            if !refused {
                return Format::OpenMetrics;
            }
        }
        Format::Text004
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text004 => TEXT_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// Encodes families in `format`. Families sharing a name (from different collectors)
/// are merged so each name has exactly one `# TYPE` block, as both formats require;
/// the first family's help and type win.
pub fn encode<'a>(
    families: impl IntoIterator<Item = &'a MetricFamily>,
    format: Format,
    out: &mut String,
) {
    let mut order: Vec<(&'a MetricFamily, Vec<&'a MetricFamily>)> = Vec::new();
    // foldhash, not SipHash: these keys are our own family names, hashed on every scrape.
    let mut index: HashMap<&str, usize, foldhash::fast::RandomState> = HashMap::default();
    for f in families {
        match index.get(f.name.as_ref()) {
            Some(&i) => order[i].1.push(f),
            None => {
                index.insert(f.name.as_ref(), order.len());
                order.push((f, Vec::new()));
            }
        }
    }
    for (head, rest) in &order {
        if head.points.is_empty() && rest.iter().all(|f| f.points.is_empty()) {
            continue;
        }
        let points = head
            .points
            .iter()
            .chain(rest.iter().flat_map(|f| f.points.iter()));
        match format {
            Format::Text004 => encode_text_family(head, points, out),
            Format::OpenMetrics => encode_om_family(head, points, out),
        }
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
}

fn escape_help(s: &str, om: bool, out: &mut String) {
    escape(s, om, out);
}

fn escape_label_value(s: &str, out: &mut String) {
    escape(s, true, out);
}

/// Backslash, newline and (with `quote`) the double quote escaped; everything between
/// them copied in one piece (HELP texts are long and rarely need escaping).
fn escape(s: &str, quote: bool, out: &mut String) {
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let rep = match b {
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'"' if quote => "\\\"",
            _ => continue,
        };
        // The escaped bytes are ASCII: `i` and `i + 1` are char boundaries.
        out.push_str(&s[start..i]);
        out.push_str(rep);
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

fn write_value(v: f64, out: &mut String) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let mut b = itoa::Buffer::new();
        out.push_str(b.format(v as i64));
    } else {
        let mut b = ryu::Buffer::new();
        out.push_str(b.format_finite(v));
    }
}

/// `name{labels,extra} value\n`
fn write_sample(
    name: &str,
    suffix: &str,
    point: &Point,
    extra: Option<(&str, f64)>,
    value: f64,
    out: &mut String,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !point.labels.is_empty() || extra.is_some() {
        out.push('{');
        let mut first = true;
        for (k, v) in &point.labels {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(k);
            out.push_str("=\"");
            escape_label_value(v, out);
            out.push('"');
        }
        if let Some((k, bound)) = extra {
            if !first {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            write_value(bound, out);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    write_value(value, out);
    out.push('\n');
}

fn write_histogram(name: &str, point: &Point, h: &Histogram, out: &mut String) {
    for b in &h.buckets {
        write_sample(
            name,
            "_bucket",
            point,
            Some(("le", b.upper_bound)),
            b.cumulative_count as f64,
            out,
        );
    }
    write_sample(
        name,
        "_bucket",
        point,
        Some(("le", f64::INFINITY)),
        h.count as f64,
        out,
    );
    write_sample(name, "_sum", point, None, h.sum, out);
    write_sample(name, "_count", point, None, h.count as f64, out);
}

fn encode_text_family<'a>(
    f: &MetricFamily,
    points: impl Iterator<Item = &'a Point>,
    out: &mut String,
) {
    out.push_str("# HELP ");
    out.push_str(&f.name);
    out.push(' ');
    escape_help(&f.help, false, out);
    out.push_str("\n# TYPE ");
    out.push_str(&f.name);
    out.push(' ');
    out.push_str(f.kind.as_str());
    out.push('\n');
    for p in points {
        match &p.value {
            Value::Number(v) => write_sample(&f.name, "", p, None, *v, out),
            Value::Histogram(h) => write_histogram(&f.name, p, h, out),
        }
    }
}

fn encode_om_family<'a>(
    f: &MetricFamily,
    points: impl Iterator<Item = &'a Point>,
    out: &mut String,
) {
    // OpenMetrics names a counter family without `_total`; its samples carry it.
    let (family_name, counter_suffix) = match f.kind {
        MetricType::Counter => (f.name.strip_suffix("_total").unwrap_or(&f.name), "_total"),
        _ => (f.name.as_ref(), ""),
    };
    let om_type = match f.kind {
        MetricType::Untyped => "unknown",
        k => k.as_str(),
    };
    let _ = write!(out, "# TYPE {family_name} {om_type}\n# HELP {family_name} ");
    escape_help(&f.help, true, out);
    out.push('\n');
    for p in points {
        match &p.value {
            Value::Number(v) => write_sample(family_name, counter_suffix, p, None, *v, out),
            Value::Histogram(h) => write_histogram(family_name, p, h, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodescope_model::Bucket;

    fn fams() -> Vec<MetricFamily> {
        let mut cpu = MetricFamily::new(
            "node_cpu_seconds_total",
            "Seconds the CPUs spent in each mode.",
            MetricType::Counter,
        );
        cpu.push([("cpu", "0"), ("mode", "idle")], 12345.67);
        cpu.push([("cpu", "0"), ("mode", "user")], 10.0);
        let mut h = MetricFamily::new(
            "nodescope_tcp_rtt_seconds",
            "RTT \"quoted\"\nline",
            MetricType::Histogram,
        );
        h.push_histogram(
            [("workload", "a\\b\"c")],
            Histogram {
                buckets: vec![
                    Bucket {
                        upper_bound: 0.0005,
                        cumulative_count: 1,
                    },
                    Bucket {
                        upper_bound: 1.0,
                        cumulative_count: 3,
                    },
                ],
                count: 4,
                sum: 2.5,
            },
        );
        let u = MetricFamily::single(
            "node_netstat_Tcp_ActiveOpens",
            "Statistic TcpActiveOpens.",
            MetricType::Untyped,
            42.0,
        );
        vec![cpu, h, u]
    }

    #[test]
    fn text_format_matches_node_exporter_style() {
        let mut s = String::new();
        encode(&fams(), Format::Text004, &mut s);
        assert!(s.contains("# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.\n# TYPE node_cpu_seconds_total counter\n"));
        assert!(s.contains("node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 12345.67\n"));
        assert!(s.contains("node_cpu_seconds_total{cpu=\"0\",mode=\"user\"} 10\n"));
        assert!(s.contains("# HELP nodescope_tcp_rtt_seconds RTT \"quoted\"\\nline\n"));
        assert!(s.contains(
            "nodescope_tcp_rtt_seconds_bucket{workload=\"a\\\\b\\\"c\",le=\"0.0005\"} 1\n"
        ));
        assert!(s.contains(
            "nodescope_tcp_rtt_seconds_bucket{workload=\"a\\\\b\\\"c\",le=\"+Inf\"} 4\n"
        ));
        assert!(s.contains("nodescope_tcp_rtt_seconds_sum{workload=\"a\\\\b\\\"c\"} 2.5\n"));
        assert!(s.contains(
            "# TYPE node_netstat_Tcp_ActiveOpens untyped\nnode_netstat_Tcp_ActiveOpens 42\n"
        ));
        assert!(!s.contains("# EOF"));
    }

    #[test]
    fn openmetrics_names_counters_without_total_and_ends_with_eof() {
        let mut s = String::new();
        encode(&fams(), Format::OpenMetrics, &mut s);
        assert!(s.contains("# TYPE node_cpu_seconds counter\n"));
        assert!(s.contains("node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 12345.67\n"));
        assert!(s.contains("# TYPE node_netstat_Tcp_ActiveOpens unknown\n"));
        assert!(s.contains("# HELP nodescope_tcp_rtt_seconds RTT \\\"quoted\\\"\\nline\n"));
        assert!(s.ends_with("# EOF\n"));
    }

    #[test]
    fn same_name_from_two_collectors_is_one_block() {
        let mut a = MetricFamily::new("nodescope_collector_success", "h", MetricType::Gauge);
        a.push([("collector", "cpu")], 1.0);
        let mut b = MetricFamily::new("nodescope_collector_success", "h", MetricType::Gauge);
        b.push([("collector", "meminfo")], 0.0);
        let mut s = String::new();
        encode([&a, &b], Format::Text004, &mut s);
        assert_eq!(s.matches("# TYPE nodescope_collector_success").count(), 1);
        assert!(s.contains(
            "{collector=\"cpu\"} 1\nnodescope_collector_success{collector=\"meminfo\"} 0\n"
        ));
    }

    #[test]
    fn special_values() {
        let f = MetricFamily::single("x", "h", MetricType::Gauge, f64::NAN);
        let g = MetricFamily::single("y", "h", MetricType::Gauge, f64::NEG_INFINITY);
        let k = MetricFamily::single("z", "h", MetricType::Gauge, 1.5e300);
        let mut s = String::new();
        encode([&f, &g, &k], Format::Text004, &mut s);
        assert!(s.contains("x NaN\n") && s.contains("y -Inf\n") && s.contains("z 1.5e300\n"));
    }

    #[test]
    fn negotiation_follows_accept() {
        assert_eq!(Format::negotiate(None), Format::Text004);
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Text004);
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prom)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0")),
            Format::Text004
        );
    }

    proptest::proptest! {
        /// Whatever a collector puts in help strings and label values, every sample stays on
        /// one line and label values stay inside their quotes.
        #[test]
        fn escaping_keeps_one_sample_per_line(help in ".*", value in ".*", v in proptest::num::f64::ANY) {
            let mut f = MetricFamily::new("m", help, MetricType::Gauge);
            f.push([("l", value)], v);
            for fmt in [Format::Text004, Format::OpenMetrics] {
                let mut s = String::new();
                encode([&f], fmt, &mut s);
                let samples: Vec<&str> = s.lines().filter(|l| !l.starts_with('#')).collect();
                proptest::prop_assert_eq!(samples.len(), 1);
                let prefix = "m{l=\""; proptest::prop_assert!(samples[0].starts_with(prefix));
            }
        }

        /// The escaper that copies runs between special bytes agrees with escaping char by
        /// char, and unescaping gives the input back.
        #[test]
        fn escape_agrees_with_char_by_char(s in "(\\PC|[\\\\\n\"é])*", quote in proptest::bool::ANY) {
            let mut reference = String::new();
            for c in s.chars() {
                match c {
                    '\\' => reference.push_str("\\\\"),
                    '\n' => reference.push_str("\\n"),
                    '"' if quote => reference.push_str("\\\""),
                    c => reference.push(c),
                }
            }
            let mut out = String::new();
            escape(&s, quote, &mut out);
            proptest::prop_assert_eq!(&out, &reference);
            let back = out.replace("\\\\", "\u{0}").replace("\\n", "\n").replace("\\\"", "\"").replace('\u{0}', "\\");
            if !s.contains('\u{0}') {
                proptest::prop_assert_eq!(back, s);
            }
        }
    }
}
