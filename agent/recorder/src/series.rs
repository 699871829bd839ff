//! A ring of metric samples at a fixed resolution with a hard byte budget.
//!
//! Each tick is one *frame*: the time as a varint delta from the previous frame, then
//! every recorded series as (id delta, value delta) varint pairs, values in thousandths
//! (see [`crate::codec::quantize`]) and deltas against the same series' previous value in
//! the chunk. Frames are grouped into chunks that decode on their own, so eviction drops
//! whole chunks, oldest first. Series names and labels are interned once in a dictionary
//! whose bytes count against the same budget; entries no retained chunk uses are freed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use nodescope_model::{MetricBatch, MetricType, Value};

use crate::codec::{dequantize, put_ivarint, put_uvarint, quantize, Reader};

/// Longest label value or name kept (longer ones are cut).
const MAX_KEY_PART: usize = 256;
/// Bytes a dictionary entry costs besides its strings (maps, Arc, vectors).
const DICT_OVERHEAD: usize = 160;
/// Bytes a chunk costs besides its data.
const CHUNK_OVERHEAD: usize = 64;

/// One series: metric name and labels (histograms are recorded as their `_bucket{le}`,
/// `_count` and `_sum` series).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub name: Box<str>,
    pub labels: Vec<(Box<str>, Box<str>)>,
}

impl SeriesKey {
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(a, _)| a.as_ref() == k)
            .map(|(_, v)| v.as_ref())
    }
    fn bytes(&self) -> usize {
        self.name.len()
            + self
                .labels
                .iter()
                .map(|(k, v)| k.len() + v.len() + 32)
                .sum::<usize>()
            + DICT_OVERHEAD
    }
}

fn cut(s: &str) -> Box<str> {
    let mut end = s.len().min(MAX_KEY_PART);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].into()
}

struct Entry {
    key: Arc<SeriesKey>,
    /// Start of the newest chunk that holds the series.
    last_chunk_start: i64,
}

struct Chunk {
    start_ms: i64,
    end_ms: i64,
    data: Box<[u8]>,
}

struct Open {
    start_ms: i64,
    last_ms: i64,
    frames: usize,
    data: Vec<u8>,
    prev: HashMap<u32, i64>,
}

/// What one frame holds after decoding: (series id, value).
pub type Frame = (i64, Vec<(u32, f64)>);

/// Counters of what the ring dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    pub bytes: usize,
    pub chunks: usize,
    pub series: usize,
    pub evicted_chunks: u64,
    pub evicted_bytes: u64,
    pub dropped_series: u64,
    pub oldest_ms: Option<i64>,
}

/// A series ring (see the module doc).
pub struct SeriesRing {
    budget: usize,
    retention_ms: i64,
    chunk_frames: usize,
    series_cap: usize,
    entries: Vec<Option<Entry>>,
    free: Vec<u32>,
    ids: HashMap<Arc<SeriesKey>, u32>,
    kinds: HashMap<Box<str>, MetricType>,
    dict_bytes: usize,
    chunks: VecDeque<Chunk>,
    chunk_bytes: usize,
    open: Option<Open>,
    stats: RingStats,
    /// Counters of this ring's source start at 0 when the agent starts (eBPF maps): a
    /// series in the very first frame was born since then.
    pub counters_start_at_zero: bool,
    first_frame_ms: Option<i64>,
}

impl SeriesRing {
    pub fn new(budget: usize, retention_ms: i64, chunk_frames: usize, series_cap: usize) -> Self {
        SeriesRing {
            budget,
            retention_ms,
            chunk_frames: chunk_frames.max(1),
            series_cap,
            entries: Vec::new(),
            free: Vec::new(),
            ids: HashMap::new(),
            kinds: HashMap::new(),
            dict_bytes: 0,
            chunks: VecDeque::new(),
            chunk_bytes: 0,
            open: None,
            stats: RingStats::default(),
            counters_start_at_zero: false,
            first_frame_ms: None,
        }
    }

    /// The first frame ever recorded, while it is still held.
    pub fn first_frame(&self) -> Option<i64> {
        self.first_frame_ms
            .filter(|_| self.stats.evicted_chunks == 0)
    }

    /// Bytes held now (chunks, the open chunk, the dictionary).
    pub fn bytes(&self) -> usize {
        self.chunk_bytes
            + self
                .open
                .as_ref()
                .map(|o| o.data.capacity() + o.prev.capacity() * 16 + CHUNK_OVERHEAD)
                .unwrap_or(0)
            + self.dict_bytes
            + self.entries.capacity() * std::mem::size_of::<Option<Entry>>()
    }

    pub fn stats(&self) -> RingStats {
        RingStats {
            bytes: self.bytes(),
            chunks: self.chunks.len() + usize::from(self.open.is_some()),
            series: self.ids.len(),
            oldest_ms: self
                .chunks
                .front()
                .map(|c| c.start_ms)
                .or(self.open.as_ref().map(|o| o.start_ms)),
            ..self.stats
        }
    }

    pub fn kind(&self, name: &str) -> Option<MetricType> {
        self.kinds.get(name).copied()
    }

    pub fn key(&self, id: u32) -> Option<&Arc<SeriesKey>> {
        self.entries.get(id as usize)?.as_ref().map(|e| &e.key)
    }

    /// Every live series with its id.
    pub fn series(&self) -> impl Iterator<Item = (u32, &Arc<SeriesKey>)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().map(|e| (i as u32, &e.key)))
    }

    fn intern(&mut self, key: SeriesKey, chunk_start: i64) -> Option<u32> {
        if let Some(&id) = self.ids.get(&key) {
            if let Some(Some(e)) = self.entries.get_mut(id as usize) {
                e.last_chunk_start = chunk_start;
            }
            return Some(id);
        }
        if self.ids.len() >= self.series_cap {
            self.stats.dropped_series += 1;
            return None;
        }
        let key = Arc::new(key);
        self.dict_bytes += key.bytes();
        let entry = Entry {
            key: key.clone(),
            last_chunk_start: chunk_start,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = Some(entry);
                id
            }
            None => {
                self.entries.push(Some(entry));
                (self.entries.len() - 1) as u32
            }
        };
        self.ids.insert(key, id);
        Some(id)
    }

    /// Records the numeric points (and histograms, as their series) of `batches` whose
    /// family passes `keep`, as one frame at `ts_ms`.
    pub fn record(
        &mut self,
        ts_ms: i64,
        batches: &[Arc<MetricBatch>],
        keep: impl Fn(&str) -> bool,
        label_keep: impl Fn(&str) -> bool,
    ) {
        let mut values: Vec<(SeriesKey, f64)> = Vec::new();
        for b in batches {
            for f in &b.families {
                if !keep(&f.name) {
                    continue;
                }
                self.kinds.entry(cut(&f.name)).or_insert(f.kind);
                for p in &f.points {
                    let labels: Vec<(Box<str>, Box<str>)> = p
                        .labels
                        .iter()
                        .filter(|(k, _)| label_keep(k))
                        .map(|(k, v)| (cut(k), cut(v)))
                        .collect();
                    match &p.value {
                        Value::Number(v) => values.push((
                            SeriesKey {
                                name: cut(&f.name),
                                labels,
                            },
                            *v,
                        )),
                        Value::Histogram(h) => {
                            for bk in &h.buckets {
                                let mut l = labels.clone();
                                l.push(("le".into(), fmt_le(bk.upper_bound).into()));
                                values.push((
                                    SeriesKey {
                                        name: format!("{}_bucket", f.name).into(),
                                        labels: l,
                                    },
                                    bk.cumulative_count as f64,
                                ));
                            }
                            values.push((
                                SeriesKey {
                                    name: format!("{}_count", f.name).into(),
                                    labels: labels.clone(),
                                },
                                h.count as f64,
                            ));
                            values.push((
                                SeriesKey {
                                    name: format!("{}_sum", f.name).into(),
                                    labels,
                                },
                                h.sum,
                            ));
                        }
                    }
                }
            }
        }
        self.record_values(ts_ms, values);
    }

    /// Records one frame of (series, value).
    pub fn record_values(&mut self, ts_ms: i64, values: Vec<(SeriesKey, f64)>) {
        if let Some(o) = &self.open {
            if ts_ms <= o.last_ms || o.frames >= self.chunk_frames {
                self.close();
            }
        }
        let start = self.open.as_ref().map(|o| o.start_ms).unwrap_or(ts_ms);
        self.first_frame_ms.get_or_insert(ts_ms);
        let mut entries: Vec<(u32, i64)> = Vec::with_capacity(values.len());
        for (k, v) in values {
            let Some(q) = quantize(v) else { continue };
            if let Some(id) = self.intern(k, start) {
                entries.push((id, q));
            }
        }
        entries.sort_unstable_by_key(|e| e.0);
        entries.dedup_by_key(|e| e.0);
        let o = self.open.get_or_insert_with(|| Open {
            start_ms: ts_ms,
            last_ms: ts_ms,
            frames: 0,
            data: Vec::new(),
            prev: HashMap::new(),
        });
        put_uvarint(&mut o.data, (ts_ms - o.last_ms) as u64);
        o.last_ms = ts_ms;
        o.frames += 1;
        put_uvarint(&mut o.data, entries.len() as u64);
        let mut prev_id = 0u32;
        for (id, q) in entries {
            put_uvarint(&mut o.data, u64::from(id - prev_id));
            prev_id = id;
            let p = o.prev.insert(id, q).unwrap_or(0);
            put_ivarint(&mut o.data, q.wrapping_sub(p));
        }
        self.enforce(ts_ms);
    }

    fn close(&mut self) {
        if let Some(o) = self.open.take() {
            let data = o.data.into_boxed_slice();
            self.chunk_bytes += data.len() + CHUNK_OVERHEAD;
            self.chunks.push_back(Chunk {
                start_ms: o.start_ms,
                end_ms: o.last_ms,
                data,
            });
        }
    }

    /// Evicts the oldest chunks until the ring fits its budget and retention.
    pub fn enforce(&mut self, now_ms: i64) {
        let mut evicted = false;
        while let Some(c) = self.chunks.front() {
            let old = c.end_ms < now_ms - self.retention_ms;
            if !old && self.bytes() <= self.budget {
                break;
            }
            let c = self.chunks.pop_front().expect("front exists");
            let n = c.data.len() + CHUNK_OVERHEAD;
            self.chunk_bytes -= n;
            self.stats.evicted_chunks += 1;
            self.stats.evicted_bytes += n as u64;
            evicted = true;
        }
        if self.chunks.is_empty() && self.bytes() > self.budget {
            // The open chunk alone is over budget: close and drop it.
            if let Some(o) = self.open.take() {
                self.stats.evicted_chunks += 1;
                self.stats.evicted_bytes += o.data.len() as u64;
                evicted = true;
            }
        }
        if evicted {
            self.gc();
        }
    }

    /// Frees dictionary entries no retained chunk uses.
    fn gc(&mut self) {
        let oldest = self
            .chunks
            .front()
            .map(|c| c.start_ms)
            .or(self.open.as_ref().map(|o| o.start_ms))
            .unwrap_or(i64::MAX);
        for i in 0..self.entries.len() {
            let stale = matches!(&self.entries[i], Some(e) if e.last_chunk_start < oldest);
            if stale {
                if let Some(e) = self.entries[i].take() {
                    self.dict_bytes -= e.key.bytes();
                    self.ids.remove(&e.key);
                    self.free.push(i as u32);
                }
            }
        }
    }

    /// Calls `f(time, [(id, quantized value)])` for every frame with
    /// `from_ms <= t <= to_ms`, sealed chunks first, then the open one.
    fn frames_in(&self, from_ms: i64, to_ms: i64, mut f: impl FnMut(i64, &[(u32, i64)])) {
        let open = self
            .open
            .as_ref()
            .map(|o| (o.start_ms, o.last_ms, &o.data[..]));
        let all = self
            .chunks
            .iter()
            .map(|c| (c.start_ms, c.end_ms, &c.data[..]))
            .chain(open);
        for (start, end, data) in all {
            if end < from_ms || start > to_ms {
                continue;
            }
            decode_chunk(start, data, |t, entries| {
                if t >= from_ms && t <= to_ms {
                    f(t, entries);
                }
            });
        }
    }

    /// The series whose value changes within `[from_ms, to_ms]` (decoded without
    /// materializing the frames).
    pub fn varying(&self, from_ms: i64, to_ms: i64) -> std::collections::HashSet<u32> {
        let mut first: HashMap<u32, i64> = HashMap::new();
        let mut out = std::collections::HashSet::new();
        self.frames_in(from_ms, to_ms, |_, entries| {
            for &(id, q) in entries {
                if *first.entry(id).or_insert(q) != q {
                    out.insert(id);
                }
            }
        });
        out
    }

    /// Decodes the frames with `from_ms <= t <= to_ms`, keeping the series `want` accepts.
    pub fn scan(&self, from_ms: i64, to_ms: i64, want: impl Fn(u32) -> bool) -> Vec<Frame> {
        let mut out = Vec::new();
        self.frames_in(from_ms, to_ms, |t, entries| {
            out.push((
                t,
                entries
                    .iter()
                    .filter(|(id, _)| want(*id))
                    .map(|&(id, q)| (id, dequantize(q)))
                    .collect(),
            ));
        });
        out
    }
}

/// Calls `f(time, [(id, value)])` for every frame of a chunk; stops at corrupt data.
fn decode_chunk(start_ms: i64, data: &[u8], mut f: impl FnMut(i64, &[(u32, i64)])) {
    let mut r = Reader::new(data);
    let mut t = start_ms;
    let mut prev: HashMap<u32, i64> = HashMap::new();
    let mut entries = Vec::new();
    while !r.at_end() {
        let Some(dt) = r.uvarint() else { return };
        t = t.saturating_add(dt as i64);
        let Some(n) = r.uvarint() else { return };
        entries.clear();
        let mut id = 0u32;
        for _ in 0..n {
            let (Some(did), Some(dv)) = (r.uvarint(), r.ivarint()) else {
                return;
            };
            id = id.saturating_add(did as u32);
            let p = prev.entry(id).or_insert(0);
            *p = p.wrapping_add(dv);
            entries.push((id, *p));
        }
        f(t, &entries);
    }
}

/// `le` label value as Prometheus writes it.
pub fn fmt_le(v: f64) -> String {
    if v.is_infinite() {
        "+Inf".into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodescope_model::{Histogram, MetricFamily};
    use std::time::SystemTime;

    fn key(n: &str, l: &[(&str, &str)]) -> SeriesKey {
        SeriesKey {
            name: n.into(),
            labels: l.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect(),
        }
    }

    #[test]
    fn frames_round_trip_with_thousandths() {
        let mut r = SeriesRing::new(1 << 20, 3_600_000, 4, 100);
        for i in 0..10i64 {
            r.record_values(
                1000 * i,
                vec![
                    (key("a", &[("cpu", "0")]), i as f64 * 1.5),
                    (key("b", &[]), 1e9 + i as f64),
                ],
            );
        }
        let frames = r.scan(2000, 5000, |_| true);
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[0].0, 2000);
        let a = r.series().find(|(_, k)| k.name.as_ref() == "a").unwrap().0;
        let v: Vec<f64> = frames
            .iter()
            .map(|f| f.1.iter().find(|e| e.0 == a).unwrap().1)
            .collect();
        assert_eq!(v, vec![3.0, 4.5, 6.0, 7.5]);
        // Counters that grow slowly cost a few bytes per frame, not text.
        assert!(r.bytes() < 2000, "{}", r.bytes());
    }

    #[test]
    fn budget_evicts_oldest_chunks_and_frees_their_series() {
        let mut r = SeriesRing::new(20_000, i64::MAX / 4, 10, 100_000);
        for i in 0..2000i64 {
            // A new series every frame: the dictionary grows, eviction must free it.
            r.record_values(
                i * 1000,
                vec![(key("flood", &[("peer", &i.to_string())]), i as f64)],
            );
            assert!(r.bytes() <= 20_000 + 4096, "frame {i}: {} bytes", r.bytes());
        }
        let s = r.stats();
        assert!(s.evicted_chunks > 0);
        assert!(s.series < 2000);
        let frames = r.scan(0, i64::MAX, |_| true);
        assert_eq!(frames.last().unwrap().0, 1_999_000);
        assert!(frames.first().unwrap().0 > 0, "oldest evicted first");
    }

    #[test]
    fn retention_evicts_by_age_and_series_cap_counts_drops() {
        let mut r = SeriesRing::new(1 << 20, 10_000, 2, 3);
        for i in 0..30i64 {
            r.record_values(
                i * 1000,
                (0..5)
                    .map(|j| (key("x", &[("j", &j.to_string())]), 1.0))
                    .collect(),
            );
        }
        let s = r.stats();
        assert_eq!(s.series, 3);
        assert!(s.dropped_series >= 2);
        assert!(s.oldest_ms.unwrap() >= 30_000 - 10_000 - 2000);
    }

    #[test]
    fn histograms_become_bucket_count_and_sum_series() {
        let mut f = MetricFamily::new("h", "h", MetricType::Histogram);
        f.push_histogram(
            [("w", "x")],
            Histogram::from_bucket_counts(&[0.1, 1.0], &[1, 2, 3], 4.5),
        );
        let b = Arc::new(MetricBatch {
            source: "t".into(),
            timestamp: SystemTime::now(),
            families: vec![f],
        });
        let mut r = SeriesRing::new(1 << 20, 1 << 40, 60, 100);
        r.record(5, &[b], |_| true, |_| true);
        let names: Vec<String> = r
            .series()
            .map(|(_, k)| format!("{}{:?}", k.name, k.label("le")))
            .collect();
        assert!(names.contains(&"h_bucket Some(\"0.1\")".replace(' ', "")));
        assert!(names.contains(&"h_countNone".to_string()));
        let frames = r.scan(0, 10, |_| true);
        let total: f64 = frames[0].1.iter().map(|e| e.1).sum();
        assert_eq!(total, 1.0 + 3.0 + 6.0 + 4.5);
        assert_eq!(r.kind("h"), Some(MetricType::Histogram));
    }
}
