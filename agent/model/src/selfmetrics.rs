//! The agent's own metrics (`nodescope_*`): lock-free counters and gauges that any
//! component registers once and updates on its hot path, rendered into the model's
//! [`MetricFamily`] form on collection.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::{Labels, MetricFamily, MetricType, Point, Value};

/// Upper bound on distinct self-metric series. Registrations past it get a detached
/// handle (updates go nowhere) and are counted in `nodescope_selfmetrics_refused_total`.
pub const MAX_SERIES: usize = 20_000;

#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// For counters mirrored from a monotonic source (an eBPF map, an atomic elsewhere).
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge storing an `f64` as bits.
#[derive(Clone, Debug, Default)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
    pub fn add(&self, d: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some((f64::from_bits(b) + d).to_bits())
            });
    }
}

#[derive(Debug)]
enum Cell {
    Counter(Counter),
    Gauge(Gauge),
}

#[derive(Debug)]
struct Series {
    name: &'static str,
    help: &'static str,
    labels: Labels,
    cell: Cell,
}

#[derive(Clone, Debug, Default)]
pub struct SelfMetrics {
    series: Arc<Mutex<Vec<Series>>>,
    refused: Counter,
}

fn owned_labels(labels: &[(&'static str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(k, v)| (Cow::Borrowed(*k), (*v).to_string()))
        .collect()
}

impl SelfMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or finds) a counter. `name` must carry the `nodescope_` prefix and the
    /// `_total` suffix.
    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Counter {
        debug_assert!(name.starts_with("nodescope_") && name.ends_with("_total"));
        match self.register(name, help, labels, || Cell::Counter(Counter::default())) {
            Some(Cell::Counter(c)) => c,
            _ => Counter::default(),
        }
    }

    pub fn gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Gauge {
        debug_assert!(name.starts_with("nodescope_"));
        match self.register(name, help, labels, || Cell::Gauge(Gauge::default())) {
            Some(Cell::Gauge(g)) => g,
            _ => Gauge::default(),
        }
    }

    fn register(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        make: impl FnOnce() -> Cell,
    ) -> Option<Cell> {
        let labels = owned_labels(labels);
        let mut all = self.series.lock();
        if let Some(s) = all.iter().find(|s| s.name == name && s.labels == labels) {
            return Some(match &s.cell {
                Cell::Counter(c) => Cell::Counter(c.clone()),
                Cell::Gauge(g) => Cell::Gauge(g.clone()),
            });
        }
        if all.len() >= MAX_SERIES {
            self.refused.inc();
            return None;
        }
        let cell = make();
        let out = match &cell {
            Cell::Counter(c) => Cell::Counter(c.clone()),
            Cell::Gauge(g) => Cell::Gauge(g.clone()),
        };
        all.push(Series {
            name,
            help,
            labels,
            cell,
        });
        Some(out)
    }

    /// Renders every series, grouped into families in registration order.
    pub fn collect(&self) -> Vec<MetricFamily> {
        let all = self.series.lock();
        let mut out: Vec<MetricFamily> = Vec::new();
        for s in all.iter() {
            let (kind, v) = match &s.cell {
                Cell::Counter(c) => (MetricType::Counter, c.get() as f64),
                Cell::Gauge(g) => (MetricType::Gauge, g.get()),
            };
            let point = Point {
                labels: s.labels.clone(),
                value: Value::Number(v),
            };
            match out.iter_mut().find(|f| f.name == s.name) {
                Some(f) => f.points.push(point),
                None => {
                    let mut f = MetricFamily::new(s.name, s.help, kind);
                    f.points.push(point);
                    out.push(f);
                }
            }
        }
        out.push(MetricFamily::single(
            "nodescope_selfmetrics_refused_total",
            "Self-metric series refused because the series cap was reached.",
            MetricType::Counter,
            self.refused.get() as f64,
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_series_shares_a_cell_and_renders_grouped() {
        let m = SelfMetrics::new();
        let a = m.counter("nodescope_x_total", "x", &[("exporter", "otlp")]);
        let b = m.counter("nodescope_x_total", "x", &[("exporter", "otlp")]);
        let c = m.counter("nodescope_x_total", "x", &[("exporter", "loki")]);
        a.inc();
        b.add(2);
        c.inc();
        let g = m.gauge("nodescope_q", "q", &[]);
        g.set(1.5);
        let fams = m.collect();
        let x = fams.iter().find(|f| f.name == "nodescope_x_total").unwrap();
        assert_eq!(x.points.len(), 2);
        assert_eq!(x.points[0].value, Value::Number(3.0));
        let q = fams.iter().find(|f| f.name == "nodescope_q").unwrap();
        assert_eq!(q.points[0].value, Value::Number(1.5));
    }
}
