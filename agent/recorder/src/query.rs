//! Reading the rings: the documents of the HTTP API (docs/incidents.md) and the window
//! aggregates the findings and the summary are computed from.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use nodescope_model::feeds::StackRecord;
use serde::Serialize;

use crate::recorder::Recorder;
use crate::series::{Frame, SeriesKey, SeriesRing};

/// A time window in unix milliseconds, `[from, to]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub from_ms: i64,
    pub to_ms: i64,
}

impl Window {
    pub fn secs(&self) -> f64 {
        ((self.to_ms - self.from_ms) as f64 / 1000.0).max(0.001)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Gauge,
    Rate,
    CpuShare,
}

type Sel = fn(&SeriesKey) -> bool;

struct Out {
    name: &'static str,
    unit: &'static str,
    op: Op,
    terms: &'static [(Sel, f64)],
}

fn is(k: &SeriesKey, n: &str) -> bool {
    k.name.as_ref() == n
}
fn cpu_mode(k: &SeriesKey, modes: &[&str]) -> bool {
    is(k, "node_cpu_seconds_total") && k.label("mode").is_some_and(|m| modes.contains(&m))
}
fn not_lo(k: &SeriesKey, n: &str) -> bool {
    is(k, n) && k.label("device") != Some("lo")
}

/// The timeline groups of the Node page and of the bundles.
pub const GROUPS: &[&str] = &["cpu", "memory", "psi", "disk", "network", "load"];

fn group(name: &str) -> Option<&'static [Out]> {
    Some(match name {
        "cpu" => &[
            Out {
                name: "user",
                unit: "ratio",
                op: Op::CpuShare,
                terms: &[(|k| cpu_mode(k, &["user", "nice"]), 1.0)],
            },
            Out {
                name: "system",
                unit: "ratio",
                op: Op::CpuShare,
                terms: &[(|k| cpu_mode(k, &["system"]), 1.0)],
            },
            Out {
                name: "iowait",
                unit: "ratio",
                op: Op::CpuShare,
                terms: &[(|k| cpu_mode(k, &["iowait"]), 1.0)],
            },
            Out {
                name: "irq",
                unit: "ratio",
                op: Op::CpuShare,
                terms: &[(|k| cpu_mode(k, &["irq"]), 1.0)],
            },
            Out {
                name: "softirq",
                unit: "ratio",
                op: Op::CpuShare,
                terms: &[(|k| cpu_mode(k, &["softirq"]), 1.0)],
            },
            Out {
                name: "steal",
                unit: "ratio",
                op: Op::CpuShare,
                terms: &[(|k| cpu_mode(k, &["steal"]), 1.0)],
            },
            Out {
                name: "idle",
                unit: "ratio",
                op: Op::CpuShare,
                terms: &[(|k| cpu_mode(k, &["idle"]), 1.0)],
            },
        ],
        "memory" => &[
            Out {
                name: "used",
                unit: "bytes",
                op: Op::Gauge,
                terms: &[
                    (|k| is(k, "node_memory_MemTotal_bytes"), 1.0),
                    (|k| is(k, "node_memory_MemAvailable_bytes"), -1.0),
                ],
            },
            Out {
                name: "available",
                unit: "bytes",
                op: Op::Gauge,
                terms: &[(|k| is(k, "node_memory_MemAvailable_bytes"), 1.0)],
            },
            Out {
                name: "cached",
                unit: "bytes",
                op: Op::Gauge,
                terms: &[(|k| is(k, "node_memory_Cached_bytes"), 1.0)],
            },
            Out {
                name: "buffers",
                unit: "bytes",
                op: Op::Gauge,
                terms: &[(|k| is(k, "node_memory_Buffers_bytes"), 1.0)],
            },
            Out {
                name: "swap_used",
                unit: "bytes",
                op: Op::Gauge,
                terms: &[
                    (|k| is(k, "node_memory_SwapTotal_bytes"), 1.0),
                    (|k| is(k, "node_memory_SwapFree_bytes"), -1.0),
                ],
            },
        ],
        "psi" => &[
            Out {
                name: "cpu_some",
                unit: "ratio",
                op: Op::Rate,
                terms: &[(|k| is(k, "node_pressure_cpu_waiting_seconds_total"), 1.0)],
            },
            Out {
                name: "memory_some",
                unit: "ratio",
                op: Op::Rate,
                terms: &[(|k| is(k, "node_pressure_memory_waiting_seconds_total"), 1.0)],
            },
            Out {
                name: "memory_full",
                unit: "ratio",
                op: Op::Rate,
                terms: &[(|k| is(k, "node_pressure_memory_stalled_seconds_total"), 1.0)],
            },
            Out {
                name: "io_some",
                unit: "ratio",
                op: Op::Rate,
                terms: &[(|k| is(k, "node_pressure_io_waiting_seconds_total"), 1.0)],
            },
            Out {
                name: "io_full",
                unit: "ratio",
                op: Op::Rate,
                terms: &[(|k| is(k, "node_pressure_io_stalled_seconds_total"), 1.0)],
            },
        ],
        "disk" => &[
            Out {
                name: "read_bytes",
                unit: "bytes_per_second",
                op: Op::Rate,
                terms: &[(|k| is(k, "node_disk_read_bytes_total"), 1.0)],
            },
            Out {
                name: "write_bytes",
                unit: "bytes_per_second",
                op: Op::Rate,
                terms: &[(|k| is(k, "node_disk_written_bytes_total"), 1.0)],
            },
            Out {
                name: "io_time",
                unit: "ratio",
                op: Op::Rate,
                terms: &[(|k| is(k, "node_disk_io_time_seconds_total"), 1.0)],
            },
        ],
        "network" => &[
            Out {
                name: "receive_bytes",
                unit: "bytes_per_second",
                op: Op::Rate,
                terms: &[(|k| not_lo(k, "node_network_receive_bytes_total"), 1.0)],
            },
            Out {
                name: "transmit_bytes",
                unit: "bytes_per_second",
                op: Op::Rate,
                terms: &[(|k| not_lo(k, "node_network_transmit_bytes_total"), 1.0)],
            },
            Out {
                name: "receive_drops",
                unit: "per_second",
                op: Op::Rate,
                terms: &[(|k| not_lo(k, "node_network_receive_drop_total"), 1.0)],
            },
            Out {
                name: "transmit_errors",
                unit: "per_second",
                op: Op::Rate,
                terms: &[(|k| not_lo(k, "node_network_transmit_errs_total"), 1.0)],
            },
            Out {
                name: "tcp_retransmits",
                unit: "per_second",
                op: Op::Rate,
                terms: &[(|k| is(k, "node_netstat_Tcp_RetransSegs"), 1.0)],
            },
        ],
        "load" => &[
            Out {
                name: "load1",
                unit: "load",
                op: Op::Gauge,
                terms: &[(|k| is(k, "node_load1"), 1.0)],
            },
            Out {
                name: "load5",
                unit: "load",
                op: Op::Gauge,
                terms: &[(|k| is(k, "node_load5"), 1.0)],
            },
            Out {
                name: "load15",
                unit: "load",
                op: Op::Gauge,
                terms: &[(|k| is(k, "node_load15"), 1.0)],
            },
        ],
        _ => return None,
    })
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TimelineSeries {
    pub name: &'static str,
    pub unit: &'static str,
    pub values: Vec<Option<f64>>,
}

/// `GET /api/v1/recorder/timeline` and a bundle's `timelines`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Timeline {
    pub group: String,
    pub step_seconds: u32,
    pub timestamps: Vec<f64>,
    pub series: Vec<TimelineSeries>,
}

/// Whether the 1 s ring still covers `from`.
fn fine_covers(rec: &Recorder, from_ms: i64) -> bool {
    rec.host_fine
        .lock()
        .stats()
        .oldest_ms
        .is_some_and(|o| o <= from_ms + 1000)
}

/// The timeline of `group` over `w`, from the 1 s ring when it covers the window, else
/// from the 10 s ring. `None`: unknown group.
pub fn timeline(rec: &Recorder, group_name: &str, w: Window) -> Option<Timeline> {
    let outs = group(group_name)?;
    let (ring, step) = if fine_covers(rec, w.from_ms) {
        (&rec.host_fine, 1u32)
    } else {
        (&rec.host_coarse, 10u32)
    };
    let ring = ring.lock();
    Some(timeline_from(&ring, group_name, outs, step, w))
}

fn timeline_from(
    ring: &SeriesRing,
    group_name: &str,
    outs: &[Out],
    step: u32,
    w: Window,
) -> Timeline {
    // Which outputs each series feeds.
    let mut class: HashMap<u32, Vec<(usize, f64)>> = HashMap::new();
    let mut cpu_total: BTreeSet<u32> = BTreeSet::new();
    for (id, k) in ring.series() {
        for (i, o) in outs.iter().enumerate() {
            for (sel, wt) in o.terms {
                if sel(k) {
                    class.entry(id).or_default().push((i, *wt));
                }
            }
        }
        if is(k, "node_cpu_seconds_total") {
            cpu_total.insert(id);
        }
    }
    let frames = ring.scan(w.from_ms - i64::from(step) * 1000, w.to_ms, |id| {
        class.contains_key(&id) || cpu_total.contains(&id)
    });
    let mut sums: Vec<(i64, Vec<Option<f64>>, f64)> = Vec::with_capacity(frames.len());
    for (t, entries) in &frames {
        let mut s: Vec<Option<f64>> = vec![None; outs.len()];
        let mut total = 0.0;
        for (id, v) in entries {
            if let Some(c) = class.get(id) {
                for (i, wt) in c {
                    *s[*i].get_or_insert(0.0) += wt * v;
                }
            }
            if cpu_total.contains(id) {
                total += v;
            }
        }
        sums.push((*t, s, total));
    }
    let mut ts = Vec::new();
    let mut values: Vec<Vec<Option<f64>>> = vec![Vec::new(); outs.len()];
    for i in 0..sums.len() {
        let (t, s, total) = &sums[i];
        if *t < w.from_ms {
            continue;
        }
        ts.push((*t as f64 / 1000.0 * 1000.0).round() / 1000.0);
        let prev = i.checked_sub(1).map(|j| &sums[j]);
        for (k, o) in outs.iter().enumerate() {
            let v = match o.op {
                Op::Gauge => s[k],
                Op::Rate => prev.and_then(|(pt, ps, _)| {
                    let (a, b) = (ps[k]?, s[k]?);
                    let dt = (t - pt) as f64 / 1000.0;
                    (b >= a && dt > 0.0).then(|| (b - a) / dt)
                }),
                Op::CpuShare => prev.and_then(|(_, ps, pt)| {
                    let (a, b) = (ps[k]?, s[k]?);
                    let dt = total - pt;
                    (b >= a && dt > 0.0).then(|| ((b - a) / dt).min(1.0))
                }),
            };
            values[k].push(v.map(|x| (x * 1e6).round() / 1e6));
        }
    }
    Timeline {
        group: group_name.to_string(),
        step_seconds: step,
        timestamps: ts,
        series: outs
            .iter()
            .zip(values)
            .map(|(o, values)| TimelineSeries {
                name: o.name,
                unit: o.unit,
                values,
            })
            .collect(),
    }
}

/// One series' samples over a window.
pub type SeriesValues = Vec<(Arc<SeriesKey>, Vec<(i64, f64)>)>;

/// Sum of the positive steps of a counter between consecutive frames (resets ignored).
fn increase(vals: &[(i64, f64)]) -> f64 {
    vals.windows(2)
        .map(|w| w[1].1 - w[0].1)
        .filter(|d| *d > 0.0)
        .sum()
}

/// Per-series values over a window of a series ring: `(key, [(t, v)])` for the series
/// `pick` accepts, including the frame just before the window (for increases).
pub fn series_values(
    ring: &SeriesRing,
    w: Window,
    step_ms: i64,
    pick: impl Fn(&SeriesKey) -> bool,
) -> SeriesValues {
    let ids: HashMap<u32, Arc<SeriesKey>> = ring
        .series()
        .filter(|(_, k)| pick(k))
        .map(|(id, k)| (id, k.clone()))
        .collect();
    let frames: Vec<Frame> = ring.scan(w.from_ms - step_ms, w.to_ms, |id| ids.contains_key(&id));
    let times: Vec<i64> = frames.iter().map(|f| f.0).collect();
    let mut by: HashMap<u32, Vec<(i64, f64)>> = HashMap::new();
    for (t, entries) in frames {
        for (id, v) in entries {
            by.entry(id).or_default().push((t, v));
        }
    }
    // A series that first appears after an earlier frame of the scan was born in
    // between (a first connect to a peer, a new cgroup): it was 0 at that frame, so its
    // first value counts as an increase. (A series present in the first scanned frame
    // may predate the recording and is not given a zero.)
    let first = ring.first_frame().filter(|_| ring.counters_start_at_zero);
    for v in by.values_mut() {
        if let Some(i) = times.iter().position(|t| *t == v[0].0) {
            if i > 0 {
                v.insert(0, (times[i - 1], 0.0));
            } else if first == Some(v[0].0) {
                v.insert(0, (v[0].0 - step_ms, 0.0));
            }
        }
    }
    let mut out: SeriesValues = by
        .into_iter()
        .filter_map(|(id, v)| Some((ids.get(&id)?.clone(), v)))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Per-workload aggregates over a window.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct WorkloadAgg {
    /// Mean CPU in cores.
    pub cpu_cores: f64,
    pub memory_max_bytes: f64,
    pub psi_cpu: f64,
    pub psi_memory: f64,
    pub psi_io: f64,
    pub oom_kills: f64,
    pub throttled_seconds: f64,
}

/// Whether the workload ring holds a frame inside `w`.
pub fn workloads_covered(rec: &Recorder, w: Window) -> bool {
    rec.workload
        .lock()
        .stats()
        .oldest_ms
        .is_some_and(|o| o <= w.to_ms)
        && !rec
            .workload
            .lock()
            .scan(w.from_ms, w.to_ms, |_| false)
            .is_empty()
}

pub fn workloads(rec: &Recorder, w: Window) -> BTreeMap<String, WorkloadAgg> {
    let step = rec.cfg.workload_interval.as_millis() as i64;
    let ring = rec.workload.lock();
    let vals = series_values(&ring, w, step, |_| true);
    drop(ring);
    let mut out: BTreeMap<String, WorkloadAgg> = BTreeMap::new();
    let secs = w.secs();
    for (k, v) in vals {
        let Some(wl) = k.label("workload") else {
            continue;
        };
        let a = out.entry(wl.to_string()).or_default();
        match k.name.as_ref() {
            "nodescope_workload_cpu_usage_seconds_total" => a.cpu_cores += increase(&v) / secs,
            "nodescope_workload_cpu_throttled_seconds_total" => a.throttled_seconds += increase(&v),
            "nodescope_workload_memory_usage_bytes" => {
                let m = v
                    .iter()
                    .filter(|(t, _)| *t >= w.from_ms)
                    .map(|x| x.1)
                    .fold(0.0, f64::max);
                a.memory_max_bytes = a.memory_max_bytes.max(m);
            }
            "nodescope_workload_memory_events_total" if k.label("event") == Some("oom_kill") => {
                a.oom_kills += increase(&v)
            }
            "nodescope_workload_pressure_waiting_seconds_total" => {
                let r = increase(&v) / secs;
                match k.label("resource") {
                    Some("cpu") => a.psi_cpu += r,
                    Some("memory") => a.psi_memory += r,
                    Some("io") => a.psi_io += r,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    out
}

/// Mean and maximum of every timeline series over a window (for the summary and the
/// node-wide findings).
pub fn timeline_stats(t: &Timeline) -> BTreeMap<String, (f64, f64, &'static str)> {
    let mut out = BTreeMap::new();
    for s in &t.series {
        let v: Vec<f64> = s.values.iter().flatten().copied().collect();
        if v.is_empty() {
            continue;
        }
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let max = v.iter().copied().fold(f64::MIN, f64::max);
        out.insert(s.name.to_string(), (mean, max, s.unit));
    }
    out
}

// ---------- network ----------

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NetRow {
    pub workload: String,
    pub peer: String,
    pub peer_port: String,
    pub direction: String,
    pub connects: Vec<u64>,
    pub errors: BTreeMap<String, Vec<u64>>,
    pub retransmits: Vec<u64>,
    pub resets: Vec<u64>,
    pub connect_p50: Vec<Option<f64>>,
    pub connect_p99: Vec<Option<f64>>,
    pub rtt_p50: Vec<Option<f64>>,
    pub rtt_p99: Vec<Option<f64>>,
    pub connect_hist: Vec<Vec<u64>>,
    pub rtt_hist: Vec<Vec<u64>>,
}

impl NetRow {
    pub fn total_connects(&self) -> u64 {
        self.connects.iter().sum()
    }
    pub fn total_errors(&self) -> u64 {
        self.errors.values().flatten().sum()
    }
    pub fn total_retransmits(&self) -> u64 {
        self.retransmits.iter().sum()
    }
    pub fn total_resets(&self) -> u64 {
        self.resets.iter().sum()
    }
    /// p99 of the whole window from the summed histogram.
    pub fn p99(&self, bounds: &[Option<f64>], rtt: bool) -> Option<f64> {
        let h = if rtt {
            &self.rtt_hist
        } else {
            &self.connect_hist
        };
        let mut sum = vec![0u64; bounds.len()];
        for c in h {
            for (i, n) in c.iter().enumerate() {
                if let Some(s) = sum.get_mut(i) {
                    *s += n;
                }
            }
        }
        quantile(0.99, &sum, bounds)
    }
    pub fn key(&self) -> String {
        format!(
            "{}→{}:{}/{}",
            self.workload, self.peer, self.peer_port, self.direction
        )
    }
}

/// `GET /api/v1/recorder/network` and a bundle's `network.json` (plus `changes` there).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NetworkDoc {
    pub step_seconds: u32,
    pub timestamps: Vec<f64>,
    pub connect_buckets: Vec<Option<f64>>,
    pub rtt_buckets: Vec<Option<f64>>,
    pub rows: Vec<NetRow>,
}

/// Quantile from non-cumulative bucket counts (the last bucket is +Inf), interpolating
/// linearly inside a bucket like Prometheus' `histogram_quantile`.
pub fn quantile(q: f64, counts: &[u64], bounds: &[Option<f64>]) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut acc = 0.0;
    let mut lower = 0.0;
    for (i, &n) in counts.iter().enumerate() {
        let upper = bounds.get(i).copied().flatten();
        let next = acc + n as f64;
        if next >= rank && n > 0 {
            return Some(match upper {
                Some(u) => lower + (u - lower) * ((rank - acc) / n as f64),
                None => lower,
            });
        }
        acc = next;
        if let Some(u) = upper {
            lower = u;
        }
    }
    Some(lower)
}

type RowKey = (String, String, String, String);

fn row_key(k: &SeriesKey) -> RowKey {
    let peer = match (k.label("peer_namespace"), k.label("peer_workload")) {
        (Some(ns), Some(w)) if !w.is_empty() => format!("{ns}/{w}"),
        _ => k.label("peer_address").unwrap_or("").to_string(),
    };
    (
        k.label("workload").unwrap_or("").to_string(),
        peer,
        k.label("peer_port").unwrap_or("").to_string(),
        k.label("direction").unwrap_or("").to_string(),
    )
}

pub fn network(rec: &Recorder, w: Window, limit: usize) -> NetworkDoc {
    let step = rec.cfg.workload_interval.as_millis() as i64;
    let ring = rec.network.lock();
    let vals = series_values(&ring, w, step, |_| true);
    drop(ring);
    network_from(vals, w, limit, (step / 1000) as u32)
}

fn network_from(vals: SeriesValues, w: Window, limit: usize, step_seconds: u32) -> NetworkDoc {
    // Frame times in the window.
    let mut times: BTreeSet<i64> = BTreeSet::new();
    for (_, v) in &vals {
        for (t, _) in v {
            if *t >= w.from_ms {
                times.insert(*t);
            }
        }
    }
    let times: Vec<i64> = times.into_iter().collect();
    let n = times.len();
    let idx: HashMap<i64, usize> = times.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    // Deltas per frame of the window (against the previous frame of the same series).
    let deltas = |v: &[(i64, f64)]| -> Vec<u64> {
        let mut d = vec![0u64; n];
        for p in v.windows(2) {
            if let Some(&i) = idx.get(&p[1].0) {
                let x = p[1].1 - p[0].1;
                if x > 0.0 {
                    d[i] = x.round() as u64;
                }
            }
        }
        d
    };
    let mut bounds: [BTreeSet<u64>; 2] = [BTreeSet::new(), BTreeSet::new()];
    for (k, _) in &vals {
        let which = match k.name.as_ref() {
            "nodescope_tcp_connect_duration_seconds_bucket" => 0,
            "nodescope_tcp_rtt_seconds_bucket" => 1,
            _ => continue,
        };
        if let Some(le) = k.label("le").and_then(|s| s.parse::<f64>().ok()) {
            if le.is_finite() {
                bounds[which].insert(le.to_bits());
            }
        }
    }
    let bounds: [Vec<f64>; 2] = bounds.map(|b| {
        let mut v: Vec<f64> = b.into_iter().map(f64::from_bits).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    });
    #[derive(Default)]
    struct Acc {
        connects: Vec<u64>,
        errors: BTreeMap<String, Vec<u64>>,
        retrans: Vec<u64>,
        resets: Vec<u64>,
        /// Cumulative bucket deltas per frame (connect, rtt), plus the count deltas.
        cum: [Vec<Vec<u64>>; 2],
        count: [Vec<u64>; 2],
    }
    let mut rows: BTreeMap<RowKey, Acc> = BTreeMap::new();
    let mut resets_pending: Vec<(RowKey, Vec<u64>)> = Vec::new();
    let add = |a: &mut Vec<u64>, d: &[u64]| {
        if a.is_empty() {
            *a = vec![0; d.len()];
        }
        for (x, y) in a.iter_mut().zip(d) {
            *x += y;
        }
    };
    for (k, v) in &vals {
        let name = k.name.as_ref();
        let rk = row_key(k);
        if name == "nodescope_tcp_resets_total" {
            resets_pending.push((rk, deltas(v)));
            continue;
        }
        let a = rows.entry(rk).or_default();
        match name {
            "nodescope_tcp_connect_duration_seconds_count" => {
                let d = deltas(v);
                add(&mut a.connects, &d);
                add(&mut a.count[0], &d);
            }
            "nodescope_tcp_rtt_seconds_count" => add(&mut a.count[1], &deltas(v)),
            "nodescope_tcp_connect_errors_total" => {
                let r = k.label("reason").unwrap_or("other").to_string();
                add(a.errors.entry(r).or_default(), &deltas(v));
            }
            "nodescope_tcp_retransmits_total" => add(&mut a.retrans, &deltas(v)),
            "nodescope_tcp_connect_duration_seconds_bucket"
            | "nodescope_tcp_rtt_seconds_bucket" => {
                let which = usize::from(name == "nodescope_tcp_rtt_seconds_bucket");
                let Some(le) = k.label("le").and_then(|s| s.parse::<f64>().ok()) else {
                    continue;
                };
                let Some(bi) = bounds[which].iter().position(|b| *b == le) else {
                    continue;
                };
                let d = deltas(v);
                let cum = &mut a.cum[which];
                if cum.is_empty() {
                    *cum = vec![vec![0; bounds[which].len()]; n];
                }
                for (f, x) in d.iter().enumerate() {
                    cum[f][bi] += x;
                }
            }
            _ => {}
        }
    }
    // Resets carry sent/received instead of the connection's direction: they go to the
    // outbound row of the same peer when there is one, else the inbound one.
    for ((wl, peer, port, _), d) in resets_pending {
        let pick = ["outbound", "inbound"]
            .iter()
            .map(|dir| (wl.clone(), peer.clone(), port.clone(), dir.to_string()))
            .find(|k| rows.contains_key(k))
            .unwrap_or((wl, peer, port, "outbound".into()));
        add(&mut rows.entry(pick).or_default().resets, &d);
    }
    let mk_bounds = |b: &[f64]| -> Vec<Option<f64>> {
        b.iter()
            .map(|x| Some(*x))
            .chain(std::iter::once(None))
            .collect()
    };
    let cb = mk_bounds(&bounds[0]);
    let rb = mk_bounds(&bounds[1]);
    let fill = |v: Vec<u64>| if v.is_empty() { vec![0; n] } else { v };
    let mut out: Vec<NetRow> = rows
        .into_iter()
        .map(|((workload, peer, peer_port, direction), a)| {
            let hist = |which: usize| -> Vec<Vec<u64>> {
                let nb = bounds[which].len();
                (0..n)
                    .map(|f| {
                        let cum = a.cum[which].get(f);
                        let count = a.count[which].get(f).copied().unwrap_or(0);
                        let mut h = Vec::with_capacity(nb + 1);
                        let mut prev = 0u64;
                        for b in 0..nb {
                            let c = cum.map(|c| c[b]).unwrap_or(0);
                            h.push(c.saturating_sub(prev));
                            prev = c;
                        }
                        h.push(count.saturating_sub(prev));
                        h
                    })
                    .collect()
            };
            let ch = hist(0);
            let rh = hist(1);
            let q = |h: &Vec<Vec<u64>>, b: &[Option<f64>], p: f64| -> Vec<Option<f64>> {
                h.iter().map(|c| quantile(p, c, b)).collect()
            };
            NetRow {
                workload,
                peer,
                peer_port,
                direction,
                connect_p50: q(&ch, &cb, 0.5),
                connect_p99: q(&ch, &cb, 0.99),
                rtt_p50: q(&rh, &rb, 0.5),
                rtt_p99: q(&rh, &rb, 0.99),
                connects: fill(a.connects),
                errors: a.errors,
                retransmits: fill(a.retrans),
                resets: fill(a.resets),
                connect_hist: ch,
                rtt_hist: rh,
            }
        })
        .collect();
    out.sort_by_key(|r| {
        std::cmp::Reverse(
            r.total_connects()
                + r.total_errors() * 10
                + r.total_retransmits() * 10
                + r.total_resets() * 10,
        )
    });
    out.truncate(limit);
    NetworkDoc {
        step_seconds,
        timestamps: times.iter().map(|t| *t as f64 / 1000.0).collect(),
        connect_buckets: cb,
        rtt_buckets: rb,
        rows: out,
    }
}

// ---------- samples and profiles ----------

/// Which samples a profile or heatmap covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SampleFilter {
    pub workload: Option<String>,
    pub pid: Option<u32>,
}

impl SampleFilter {
    pub fn keep(&self, s: &StackRecord, pid: u32) -> bool {
        self.workload
            .as_deref()
            .is_none_or(|w| s.workload.as_ref() == w)
            && self.pid.is_none_or(|p| p == pid)
    }
}

/// `GET /api/v1/recorder/samples`: on-CPU sample times for the sub-second heatmap.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SamplesDoc {
    pub hz: u32,
    pub start: f64,
    pub offsets_ms: Vec<u64>,
    pub count: usize,
}

pub const MAX_HEATMAP_SAMPLES: usize = 1_000_000;

pub fn samples(rec: &Recorder, w: Window, f: &SampleFilter) -> SamplesDoc {
    let (s, hz) = rec.samples.lock().samples(
        w.from_ms,
        w.to_ms,
        |st, pid| f.keep(st, pid),
        MAX_HEATMAP_SAMPLES,
    );
    let start_ms = s
        .first()
        .map(|x| x.time_ms - x.time_ms.rem_euclid(1000))
        .unwrap_or(w.from_ms);
    SamplesDoc {
        hz,
        start: start_ms as f64 / 1000.0,
        count: s.len(),
        offsets_ms: s
            .iter()
            .map(|x| (x.time_ms - start_ms).max(0) as u64)
            .collect(),
    }
}

/// Aggregated stacks of a window: (stack, pid) → count, with the stacks and the rate.
pub struct Aggregated {
    pub hz: u32,
    pub stacks: Vec<(Arc<StackRecord>, u32, u64)>,
}

pub fn aggregate(rec: &Recorder, w: Window, f: &SampleFilter) -> Aggregated {
    let ring = rec.samples.lock();
    let (counts, hz) = ring.counts(w.from_ms, w.to_ms, |st, pid| f.keep(st, pid));
    let mut stacks: Vec<(Arc<StackRecord>, u32, u64)> = counts
        .into_iter()
        .filter_map(|((s, pid), n)| Some((ring.stack(s)?.clone(), pid, n)))
        .collect();
    drop(ring);
    stacks.sort_by_key(|s| std::cmp::Reverse(s.2));
    Aggregated { hz, stacks }
}

/// Folded stacks (`process;root;…;leaf count`), kernel frames marked `_[k]`.
pub fn folded(a: &Aggregated) -> String {
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    for (s, _, n) in &a.stacks {
        let mut line = sanitize(&s.process);
        for f in s.frames.iter().rev() {
            line.push(';');
            line.push_str(&sanitize(&f.function));
            if f.kernel {
                line.push_str("_[k]");
            }
        }
        *by.entry(line).or_default() += n;
    }
    let mut out = String::new();
    for (l, n) in by {
        out.push_str(&l);
        out.push(' ');
        out.push_str(&n.to_string());
        out.push('\n');
    }
    out
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == ';' || c == '\n' || c == '\r' {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// The same as a gzip'd pprof profile (`samples`/count and `cpu`/nanoseconds).
pub fn pprof(
    a: &Aggregated,
    w: Window,
    comment: &str,
) -> Result<Vec<u8>, nodescope_pprof::PprofError> {
    let hz = if a.hz == 0 { 19 } else { a.hz };
    let period = 1_000_000_000i64 / i64::from(hz);
    let mut b = nodescope_pprof::ProfileBuilder::new(
        &[("samples", "count"), ("cpu", "nanoseconds")],
        ("cpu", "nanoseconds"),
        period,
    );
    b.time(std::time::UNIX_EPOCH + std::time::Duration::from_millis(w.from_ms.max(0) as u64))
        .duration(std::time::Duration::from_millis(
            (w.to_ms - w.from_ms).max(0) as u64,
        ))
        .comment(comment);
    for (s, pid, n) in &a.stacks {
        let n = i64::try_from(*n).unwrap_or(i64::MAX);
        b.add_sample(
            &s.frames,
            &[n, n.saturating_mul(period)],
            &[
                nodescope_pprof::Label::str("workload", &s.workload),
                nodescope_pprof::Label::str("process", &s.process),
                nodescope_pprof::Label::num("pid", i64::from(*pid)),
            ],
        )?;
    }
    b.finish_gzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let b = [Some(0.1), Some(1.0), None];
        assert_eq!(quantile(0.5, &[0, 0, 0], &b), None);
        assert_eq!(quantile(0.5, &[10, 0, 0], &b), Some(0.05));
        let p99 = quantile(0.99, &[0, 100, 0], &b).unwrap();
        assert!((p99 - 0.991).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(0.99, &[0, 0, 5], &b), Some(1.0));
    }
}
