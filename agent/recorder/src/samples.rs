//! Timed CPU samples: one chunk per interval (10 s) holding every sample's time offset
//! (ms), pid, tid and stack id as varints, plus the chunk's per-(stack, pid) counts. The
//! timed part is dropped after `timed_retention` (the sub-second heatmap and exact range
//! profiles need it); the counts stay for `retention` (baseline profiles further back).
//! Stacks are interned once (symbolized frames; processes may be gone by the time a
//! bundle is written) and freed when no retained chunk uses them. One byte budget covers
//! everything; oldest chunks go first.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use nodescope_model::feeds::{SampleBatch, SampleKind, StackRecord};

use crate::codec::{put_uvarint, Reader};

const STACK_OVERHEAD: usize = 128;
const FRAME_OVERHEAD: usize = 48;
const CHUNK_OVERHEAD: usize = 96;

pub fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// A chunk as the readers see it: start, end, rate, timed part, closed counts, open counts.
type ChunkView<'a> = (
    i64,
    i64,
    u32,
    Option<&'a [u8]>,
    &'a [(u32, u32, u32)],
    Option<&'a HashMap<(u32, u32), u32>>,
);

struct StackEntry {
    stack: Arc<StackRecord>,
    last_chunk_start: i64,
    bytes: usize,
}

struct Chunk {
    start_ms: i64,
    end_ms: i64,
    hz: u32,
    /// (ms offset from start, pid, tid, stack) per on-CPU sample, in arrival order.
    timed: Option<Box<[u8]>>,
    samples: u64,
    counts: Box<[(u32, u32, u32)]>,
}

impl Chunk {
    fn bytes(&self) -> usize {
        self.timed.as_ref().map(|t| t.len()).unwrap_or(0) + self.counts.len() * 12 + CHUNK_OVERHEAD
    }
}

struct Open {
    start_ms: i64,
    end_ms: i64,
    hz: u32,
    timed: Vec<u8>,
    samples: u64,
    counts: HashMap<(u32, u32), u32>,
}

/// One decoded on-CPU sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub time_ms: i64,
    pub pid: u32,
    pub tid: u32,
    pub stack: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleStats {
    pub bytes: usize,
    pub stacks: usize,
    pub samples: u64,
    pub evicted_chunks: u64,
    pub evicted_samples: u64,
    pub dropped_stacks: u64,
    pub off_cpu_ignored: u64,
}

pub struct SampleRing {
    budget: usize,
    retention_ms: i64,
    timed_retention_ms: i64,
    chunk_ms: i64,
    stack_cap: usize,
    stacks: Vec<Option<StackEntry>>,
    free: Vec<u32>,
    ids: HashMap<Arc<StackRecord>, u32>,
    stack_bytes: usize,
    chunks: VecDeque<Chunk>,
    chunk_bytes: usize,
    open: Option<Open>,
    stats: SampleStats,
}

fn stack_bytes(s: &StackRecord) -> usize {
    STACK_OVERHEAD
        + s.process.len()
        + s.workload.len()
        + s.frames
            .iter()
            .map(|f| {
                FRAME_OVERHEAD
                    + f.function.len()
                    + f.module.len()
                    + f.file.as_ref().map(|x| x.len()).unwrap_or(0)
            })
            .sum::<usize>()
}

impl SampleRing {
    pub fn new(
        budget: usize,
        retention_ms: i64,
        timed_retention_ms: i64,
        chunk_ms: i64,
        stack_cap: usize,
    ) -> Self {
        SampleRing {
            budget,
            retention_ms,
            timed_retention_ms,
            chunk_ms: chunk_ms.max(1),
            stack_cap,
            stacks: Vec::new(),
            free: Vec::new(),
            ids: HashMap::new(),
            stack_bytes: 0,
            chunks: VecDeque::new(),
            chunk_bytes: 0,
            open: None,
            stats: SampleStats::default(),
        }
    }

    pub fn bytes(&self) -> usize {
        self.chunk_bytes
            + self.stack_bytes
            + self.stacks.capacity() * std::mem::size_of::<Option<StackEntry>>()
            + self
                .open
                .as_ref()
                .map(|o| o.timed.capacity() + o.counts.capacity() * 24 + CHUNK_OVERHEAD)
                .unwrap_or(0)
    }

    pub fn stats(&self) -> SampleStats {
        SampleStats {
            bytes: self.bytes(),
            stacks: self.ids.len(),
            ..self.stats
        }
    }

    pub fn stack(&self, id: u32) -> Option<&Arc<StackRecord>> {
        self.stacks.get(id as usize)?.as_ref().map(|e| &e.stack)
    }

    fn intern(&mut self, s: &StackRecord, chunk_start: i64) -> Option<u32> {
        if let Some(&id) = self.ids.get(s) {
            if let Some(Some(e)) = self.stacks.get_mut(id as usize) {
                e.last_chunk_start = chunk_start;
            }
            return Some(id);
        }
        if self.ids.len() >= self.stack_cap {
            self.stats.dropped_stacks += 1;
            return None;
        }
        let stack = Arc::new(s.clone());
        let bytes = stack_bytes(s);
        self.stack_bytes += bytes;
        let e = StackEntry {
            stack: stack.clone(),
            last_chunk_start: chunk_start,
            bytes,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.stacks[id as usize] = Some(e);
                id
            }
            None => {
                self.stacks.push(Some(e));
                (self.stacks.len() - 1) as u32
            }
        };
        self.ids.insert(stack, id);
        Some(id)
    }

    /// Takes in a batch: on-CPU samples are recorded; off-CPU ones are counted as ignored
    /// (no off-CPU ring yet).
    pub fn offer(&mut self, batch: &SampleBatch, now_ms: i64) {
        let mut local: Vec<Option<u32>> = vec![None; batch.stacks.len()];
        let mut resolved = vec![false; batch.stacks.len()];
        for s in &batch.samples {
            if !matches!(s.kind, SampleKind::OnCpu) {
                self.stats.off_cpu_ignored += 1;
                continue;
            }
            let t = unix_ms(s.time);
            self.roll(t, batch.hz);
            let start = self.open.as_ref().map(|o| o.start_ms).unwrap_or(t);
            let i = s.stack as usize;
            let Some(rec) = batch.stacks.get(i) else {
                continue;
            };
            if !resolved[i] {
                resolved[i] = true;
                local[i] = self.intern(rec, start);
            } else if let Some(id) = local[i] {
                if let Some(Some(e)) = self.stacks.get_mut(id as usize) {
                    e.last_chunk_start = start;
                }
            }
            let Some(id) = local[i] else { continue };
            let o = self.open.as_mut().expect("rolled");
            put_uvarint(&mut o.timed, (t - o.start_ms).max(0) as u64);
            put_uvarint(&mut o.timed, u64::from(s.pid));
            put_uvarint(&mut o.timed, u64::from(s.tid));
            put_uvarint(&mut o.timed, u64::from(id));
            o.end_ms = o.end_ms.max(t);
            o.samples += 1;
            *o.counts.entry((id, s.pid)).or_default() += 1;
            self.stats.samples += 1;
        }
        self.enforce(now_ms);
    }

    /// Opens a new chunk when `t` is past the open one's interval (or before it).
    fn roll(&mut self, t: i64, hz: u32) {
        if let Some(o) = &self.open {
            if t >= o.start_ms + self.chunk_ms || t < o.start_ms || o.hz != hz {
                self.close();
            }
        }
        if self.open.is_none() {
            let start = t - t.rem_euclid(self.chunk_ms);
            self.open = Some(Open {
                start_ms: start,
                end_ms: t,
                hz,
                timed: Vec::new(),
                samples: 0,
                counts: HashMap::new(),
            });
        }
    }

    fn close(&mut self) {
        if let Some(o) = self.open.take() {
            let mut counts: Vec<(u32, u32, u32)> =
                o.counts.into_iter().map(|((s, p), n)| (s, p, n)).collect();
            counts.sort_unstable();
            let c = Chunk {
                start_ms: o.start_ms,
                end_ms: o.end_ms,
                hz: o.hz,
                timed: Some(o.timed.into_boxed_slice()),
                samples: o.samples,
                counts: counts.into_boxed_slice(),
            };
            self.chunk_bytes += c.bytes();
            self.chunks.push_back(c);
        }
    }

    pub fn enforce(&mut self, now_ms: i64) {
        if let Some(o) = &self.open {
            if now_ms >= o.start_ms + self.chunk_ms + 2000 {
                self.close();
            }
        }
        // Timed parts older than their retention.
        for c in self.chunks.iter_mut() {
            if c.end_ms >= now_ms - self.timed_retention_ms {
                break;
            }
            if let Some(t) = c.timed.take() {
                self.chunk_bytes -= t.len();
            }
        }
        let mut evicted = false;
        while let Some(c) = self.chunks.front() {
            if c.end_ms >= now_ms - self.retention_ms && self.bytes() <= self.budget {
                break;
            }
            let c = self.chunks.pop_front().expect("front");
            self.chunk_bytes -= c.bytes();
            self.stats.evicted_chunks += 1;
            self.stats.evicted_samples += c.samples;
            evicted = true;
        }
        if self.chunks.is_empty() && self.bytes() > self.budget {
            if let Some(o) = self.open.take() {
                self.stats.evicted_chunks += 1;
                self.stats.evicted_samples += o.samples;
                evicted = true;
            }
        }
        if evicted {
            let oldest = self
                .chunks
                .front()
                .map(|c| c.start_ms)
                .or(self.open.as_ref().map(|o| o.start_ms))
                .unwrap_or(i64::MAX);
            for i in 0..self.stacks.len() {
                if matches!(&self.stacks[i], Some(e) if e.last_chunk_start < oldest) {
                    if let Some(e) = self.stacks[i].take() {
                        self.stack_bytes -= e.bytes;
                        self.ids.remove(&e.stack);
                        self.free.push(i as u32);
                    }
                }
            }
        }
    }

    fn all_chunks(&self) -> impl Iterator<Item = ChunkView<'_>> {
        let open = self.open.as_ref().map(|o| {
            (
                o.start_ms,
                o.end_ms,
                o.hz,
                Some(&o.timed[..]),
                &[][..],
                Some(&o.counts),
            )
        });
        self.chunks
            .iter()
            .map(|c| {
                (
                    c.start_ms,
                    c.end_ms,
                    c.hz,
                    c.timed.as_deref(),
                    &c.counts[..],
                    None,
                )
            })
            .chain(open)
    }

    /// On-CPU samples with `from <= t < to` whose (stack, pid) `keep` accepts, in time
    /// order, and the sampling rate (of the newest chunk). Only the timed part is used.
    pub fn samples(
        &self,
        from_ms: i64,
        to_ms: i64,
        keep: impl Fn(&StackRecord, u32) -> bool,
        max: usize,
    ) -> (Vec<Sample>, u32) {
        let mut out = Vec::new();
        let mut hz = 0;
        for (start, end, chz, timed, _, _) in self.all_chunks() {
            if end < from_ms || start >= to_ms {
                continue;
            }
            let Some(timed) = timed else { continue };
            hz = chz;
            let mut r = Reader::new(timed);
            while !r.at_end() && out.len() < max {
                let (Some(dt), Some(pid), Some(tid), Some(stack)) =
                    (r.uvarint(), r.uvarint(), r.uvarint(), r.uvarint())
                else {
                    break;
                };
                let t = start + dt as i64;
                if t < from_ms || t >= to_ms {
                    continue;
                }
                let Some(rec) = self.stack(stack as u32) else {
                    continue;
                };
                if keep(rec, pid as u32) {
                    out.push(Sample {
                        time_ms: t,
                        pid: pid as u32,
                        tid: tid as u32,
                        stack: stack as u32,
                    });
                }
            }
        }
        out.sort_by_key(|s| s.time_ms);
        (out, hz)
    }

    /// Sample counts per (stack, pid) in `[from, to)`: exact from the timed part where it
    /// is kept, else whole chunks whose middle lies in the range. Also the rate.
    pub fn counts(
        &self,
        from_ms: i64,
        to_ms: i64,
        keep: impl Fn(&StackRecord, u32) -> bool,
    ) -> (HashMap<(u32, u32), u64>, u32) {
        let mut out: HashMap<(u32, u32), u64> = HashMap::new();
        let mut hz = 0;
        for (start, end, chz, timed, counts, _) in self.all_chunks() {
            if end < from_ms || start >= to_ms {
                continue;
            }
            hz = chz;
            if let Some(timed) = timed {
                let mut r = Reader::new(timed);
                while !r.at_end() {
                    let (Some(dt), Some(pid), Some(_tid), Some(stack)) =
                        (r.uvarint(), r.uvarint(), r.uvarint(), r.uvarint())
                    else {
                        break;
                    };
                    let t = start + dt as i64;
                    if t < from_ms || t >= to_ms {
                        continue;
                    }
                    *out.entry((stack as u32, pid as u32)).or_default() += 1;
                }
            } else {
                let mid = start + (end - start) / 2;
                if mid < from_ms || mid >= to_ms {
                    continue;
                }
                for &(s, p, n) in counts {
                    *out.entry((s, p)).or_default() += u64::from(n);
                }
            }
        }
        out.retain(|(s, p), _| self.stack(*s).is_some_and(|r| keep(r, *p)));
        (out, hz)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodescope_model::feeds::{Frame, TimedSample};
    use std::time::Duration;

    pub fn stack(proc_: &str, fns: &[&str]) -> StackRecord {
        StackRecord {
            frames: fns
                .iter()
                .map(|f| Frame {
                    function: (*f).into(),
                    module: "/bin/x".into(),
                    file: None,
                    line: 0,
                    address: 0x1000,
                    kernel: false,
                })
                .collect(),
            process: proc_.into(),
            workload: format!("/{proc_}").into(),
        }
    }

    fn batch(t0_ms: u64, n: usize, stacks: Vec<StackRecord>) -> SampleBatch {
        let k = stacks.len();
        SampleBatch {
            hz: 19,
            stacks,
            samples: (0..n)
                .map(|i| TimedSample {
                    time: UNIX_EPOCH + Duration::from_millis(t0_ms + i as u64 * 10),
                    pid: 100 + (i % 2) as u32,
                    tid: 100,
                    cpu: 0,
                    stack: (i % k) as u32,
                    kind: SampleKind::OnCpu,
                })
                .collect(),
        }
    }

    #[test]
    fn samples_keep_their_times_and_counts_outlive_the_timed_part() {
        let mut r = SampleRing::new(1 << 20, 3_600_000, 60_000, 10_000, 1000);
        let b = batch(
            1_000_000,
            300,
            vec![stack("a", &["f", "main"]), stack("b", &["g"])],
        );
        r.offer(&b, 1_003_000);
        let (s, hz) = r.samples(1_000_000, 1_001_000, |_, _| true, 10_000);
        assert_eq!(hz, 19);
        assert_eq!(s.len(), 100);
        assert!(s.windows(2).all(|w| w[0].time_ms <= w[1].time_ms));
        let (c, _) = r.counts(0, i64::MAX, |st, _| st.process.as_ref() == "a");
        assert_eq!(c.values().sum::<u64>(), 150);
        // Two minutes later the timed part is gone, the counts remain.
        r.offer(&SampleBatch::default(), 1_200_000);
        assert!(r.samples(0, i64::MAX, |_, _| true, 10).0.is_empty());
        let (c, _) = r.counts(0, i64::MAX, |_, _| true);
        assert_eq!(c.values().sum::<u64>(), 300);
    }

    #[test]
    fn budget_holds_under_a_flood_of_distinct_stacks() {
        let budget = 200_000;
        let mut r = SampleRing::new(budget, i64::MAX / 4, i64::MAX / 4, 1000, 1_000_000);
        for round in 0..200u64 {
            let stacks: Vec<StackRecord> = (0..20)
                .map(|j| stack(&format!("p{round}-{j}"), &["deep", "stack", "here"]))
                .collect();
            r.offer(
                &batch(round * 1000, 200, stacks),
                (round * 1000 + 500) as i64,
            );
            assert!(r.bytes() <= budget + 50_000, "round {round}: {}", r.bytes());
        }
        let st = r.stats();
        assert!(st.evicted_chunks > 0 && st.evicted_samples > 0);
        assert!(st.stacks < 4000);
    }
}
