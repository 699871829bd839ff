//! Metrics: families of points, each point a label set and a value.

use std::borrow::Cow;
use std::time::SystemTime;

/// Label pairs of one point, in the order the collector gives them. Keys are almost
/// always static (`cpu`, `mode`, `device`); values are owned.
pub type Labels = Vec<(Cow<'static, str>, String)>;

/// The Prometheus metric type. `Untyped` exists because node_exporter exports several
/// families (netstat, vmstat) untyped and dashboards rely on the exact exposition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    Untyped,
}

impl MetricType {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::Untyped => "untyped",
        }
    }
}

/// One cumulative histogram bucket: observations `<= upper_bound`. The `+Inf` bucket is
/// implied by [`Histogram::count`] and is never stored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    pub upper_bound: f64,
    pub cumulative_count: u64,
}

/// A cumulative, explicit-bucket histogram (Prometheus classic / OTLP explicit bounds).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Histogram {
    pub buckets: Vec<Bucket>,
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    /// Builds a cumulative histogram from per-bucket (non-cumulative) counts.
    /// `counts` has one entry per bound plus a final overflow entry.
    pub fn from_bucket_counts(bounds: &[f64], counts: &[u64], sum: f64) -> Self {
        let mut acc = 0u64;
        let buckets = bounds
            .iter()
            .enumerate()
            .map(|(i, &upper_bound)| {
                acc = acc.saturating_add(counts.get(i).copied().unwrap_or(0));
                Bucket {
                    upper_bound,
                    cumulative_count: acc,
                }
            })
            .collect();
        let overflow = counts.get(bounds.len()).copied().unwrap_or(0);
        Histogram {
            buckets,
            count: acc.saturating_add(overflow),
            sum,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Counter, gauge or untyped sample.
    Number(f64),
    Histogram(Histogram),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub labels: Labels,
    pub value: Value,
}

/// A metric family: one name, one type, many points. `name` is the Prometheus
/// (node_exporter-compatible) name including any `_total` suffix; exporters with other
/// naming conventions (OTLP semantic conventions) map from it.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricFamily {
    pub name: Cow<'static, str>,
    pub help: Cow<'static, str>,
    pub kind: MetricType,
    pub points: Vec<Point>,
}

impl MetricFamily {
    pub fn new(
        name: impl Into<Cow<'static, str>>,
        help: impl Into<Cow<'static, str>>,
        kind: MetricType,
    ) -> Self {
        MetricFamily {
            name: name.into(),
            help: help.into(),
            kind,
            points: Vec::new(),
        }
    }

    /// Adds a numeric point; labels are given as `(key, value)` pairs.
    pub fn push<K, V>(&mut self, labels: impl IntoIterator<Item = (K, V)>, v: f64) -> &mut Self
    where
        K: Into<Cow<'static, str>>,
        V: Into<String>,
    {
        self.points.push(Point {
            labels: labels
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            value: Value::Number(v),
        });
        self
    }

    /// Adds a histogram point.
    pub fn push_histogram<K, V>(
        &mut self,
        labels: impl IntoIterator<Item = (K, V)>,
        h: Histogram,
    ) -> &mut Self
    where
        K: Into<Cow<'static, str>>,
        V: Into<String>,
    {
        self.points.push(Point {
            labels: labels
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            value: Value::Histogram(h),
        });
        self
    }

    /// A family with a single unlabelled point.
    pub fn single(
        name: impl Into<Cow<'static, str>>,
        help: impl Into<Cow<'static, str>>,
        kind: MetricType,
        v: f64,
    ) -> Self {
        let mut f = MetricFamily::new(name, help, kind);
        f.push(std::iter::empty::<(&'static str, String)>(), v);
        f
    }
}

/// What one collector produced in one run.
#[derive(Clone, Debug)]
pub struct MetricBatch {
    /// The collector (or probe) that produced the batch, e.g. `cpu`, `net_tcp`.
    pub source: Cow<'static, str>,
    pub timestamp: SystemTime,
    pub families: Vec<MetricFamily>,
}

impl MetricBatch {
    pub fn point_count(&self) -> usize {
        self.families.iter().map(|f| f.points.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_histogram_from_counts() {
        let h = Histogram::from_bucket_counts(&[1.0, 2.0, 5.0], &[3, 0, 2, 4], 20.5);
        let cum: Vec<u64> = h.buckets.iter().map(|b| b.cumulative_count).collect();
        assert_eq!(cum, vec![3, 3, 5]);
        assert_eq!(h.count, 9);
        assert_eq!(h.sum, 20.5);
    }

    #[test]
    fn short_count_slice_is_zero_filled() {
        let h = Histogram::from_bucket_counts(&[1.0, 2.0], &[1], 0.5);
        assert_eq!(h.buckets[1].cumulative_count, 1);
        assert_eq!(h.count, 1);
    }
}
