//! The file tailer: one thread per source, polling (no inotify: no watch limits, and the
//! same code path for every file system).
//!
//! Every `discover_interval` the include globs are walked; a file is known by its identity
//! (device, inode, fingerprint of its first bytes), so a rename keeps its state and a new
//! file at an old path is a new file. Each round reads up to `read_chunk_bytes` from every
//! file that has data, least recently served first, with at most `max_open_files` files
//! open: files that are idle are closed and reopened by path (their identity checked) when
//! they grow, so 10,000 files cost at most `max_open_files` descriptors. Files renamed or
//! deleted while open are read to their end, then closed (at the latest `rotated_close_after`
//! after they went away).
//!
//! Lines go out in batches with an [`Ack`]; a file's checkpoint moves to the end of the
//! last whole line of a batch only when the batch is acknowledged, and the checkpoint file
//! is rewritten atomically after each advance. A batch that is not acknowledged rewinds
//! every file to its checkpoint; at most `max_inflight_bytes` of source bytes are
//! unacknowledged at any time, so an outage keeps its backlog in the files, not in memory.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nodescope_model::{Ack, Emitter, LogBatch, LogRecord, Severity, Signal};
use parking_lot::Mutex;
use serde::Serialize;

use crate::checkpoint::{fnv1a, FileCheckpoint, FileId, State, Store};
use crate::format::{Decoder, Format, Line};
use crate::glob::Glob;
use crate::meta::FileMeta;
use crate::metrics::SourceMetrics;
use crate::multiline::Multiline;

/// Bytes of a file's start that make its fingerprint.
pub const FINGERPRINT_BYTES: usize = 1024;

/// Where a new file (no checkpoint) starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    Beginning,
    End,
}

/// A multiline rule, compiled.
#[derive(Clone, Debug)]
pub struct MultilineRule {
    pub start: regex::Regex,
    pub max_lines: usize,
    pub max_bytes: usize,
    pub timeout: Duration,
}

/// Labels a file by its path (pod logs from the path, host files by their source).
pub type MetaFn = Arc<dyn Fn(&Path) -> FileMeta + Send + Sync>;

/// Everything one tailer needs.
#[derive(Clone)]
pub struct TailerSpec {
    pub name: String,
    pub include: Vec<Glob>,
    pub exclude: Vec<Glob>,
    pub follow_links: bool,
    pub format: Format,
    pub multiline: Option<MultilineRule>,
    pub meta: MetaFn,
    pub start_at: StartAt,
    pub max_open_files: usize,
    pub max_tracked_files: usize,
    pub max_line_bytes: usize,
    pub read_chunk_bytes: usize,
    pub max_inflight_bytes: u64,
    pub batch_lines: usize,
    pub poll_interval: Duration,
    pub discover_interval: Duration,
    pub rotated_close_after: Duration,
    /// Bytes per second per file (0 = unlimited).
    pub file_bytes_per_sec: u64,
    /// Bytes per second of this source (0 = unlimited).
    pub source_bytes_per_sec: u64,
    /// Bytes per second of every source together (`rate_limit.node_bytes_per_sec`), shared.
    pub node_bucket: Option<Arc<ByteBucket>>,
    pub checkpoint_dir: PathBuf,
}

/// A token bucket of bytes per second shared by several tailers (each on its own thread):
/// the node-wide read limit. Holds at most one second of tokens.
#[derive(Debug)]
pub struct ByteBucket {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl ByteBucket {
    /// `None` for 0 (unlimited).
    pub fn new(bytes_per_sec: u64) -> Option<Arc<ByteBucket>> {
        (bytes_per_sec > 0).then(|| {
            Arc::new(ByteBucket {
                rate: bytes_per_sec as f64,
                state: Mutex::new((bytes_per_sec as f64, Instant::now())),
            })
        })
    }

    /// Whole bytes that may be read now.
    pub fn available(&self) -> u64 {
        let mut st = self.state.lock();
        let now = Instant::now();
        let dt = now.duration_since(st.1).as_secs_f64();
        st.0 = (st.0 + dt * self.rate).min(self.rate);
        st.1 = now;
        st.0.max(0.0) as u64
    }

    /// Spends `n` bytes (may go below zero when several readers raced: they wait longer).
    pub fn take(&self, n: u64) {
        self.state.lock().0 -= n as f64;
    }
}

/// Per-file state shown by `GET /api/v1/logs/files`.
#[derive(Clone, Debug, Serialize)]
pub struct FileStatus {
    pub source: String,
    pub path: PathBuf,
    pub size: u64,
    pub read_offset: u64,
    pub checkpoint: u64,
    pub lag_bytes: u64,
    pub open: bool,
    pub rotated: bool,
}

pub type StatusBoard = Arc<Mutex<HashMap<String, Vec<FileStatus>>>>;

struct Tracked {
    path: PathBuf,
    id: FileId,
    meta: Arc<FileMeta>,
    file: Option<File>,
    size: u64,
    /// Next byte to read.
    read_off: u64,
    /// Every line before this offset is acknowledged.
    committed: u64,
    /// Bytes of the current, incomplete physical line, and its start offset.
    buf: Vec<u8>,
    buf_start: u64,
    /// Discarding the rest of a physical line cut at the limit.
    skipping: bool,
    decoder: Decoder,
    multiline: Option<Multiline>,
    /// Bumped when offsets restart (truncation), so older acknowledgements do not apply.
    epoch: u64,
    gone_since: Option<Instant>,
    /// Last time bytes were read or acknowledged (a file that went away is closed when it
    /// made no progress for `rotated_close_after`).
    progress_at: Instant,
    last_served: u64,
    tokens: f64,
}

impl Tracked {
    /// Where a restart must resume so no line is lost: the start of the oldest line not
    /// yet complete.
    fn safe_offset(&self) -> u64 {
        let mut o = if self.buf.is_empty() && !self.skipping {
            self.read_off
        } else {
            self.buf_start
        };
        if let Some(p) = self.decoder.pending_start() {
            o = o.min(p);
        }
        if let Some(p) = self.multiline.as_ref().and_then(Multiline::pending_start) {
            o = o.min(p);
        }
        o
    }

    fn rewind(&mut self) {
        self.read_off = self.committed;
        self.buf.clear();
        self.buf_start = self.committed;
        self.skipping = false;
        self.decoder.reset();
        if let Some(m) = &mut self.multiline {
            m.reset();
        }
    }
}

struct Outstanding {
    /// 0 = pending, 1 = acknowledged, 2 = not acknowledged.
    state: Arc<AtomicU8>,
    /// (file key, epoch, safe offset after this batch)
    marks: Vec<(u64, u64, u64)>,
    lines: u64,
    bytes: u64,
}

pub struct Tailer {
    spec: TailerSpec,
    emitter: Emitter,
    metrics: SourceMetrics,
    store: Store,
    files: HashMap<u64, Tracked>,
    by_inode: HashMap<(u64, u64), u64>,
    next_key: u64,
    round: u64,
    open: usize,
    outstanding: VecDeque<Outstanding>,
    inflight: u64,
    records: Vec<LogRecord>,
    record_bytes: u64,
    marks: HashMap<u64, (u64, u64)>,
    restored: HashMap<(u64, u64), FileCheckpoint>,
    first_discovery: bool,
    dirty: bool,
    source_tokens: f64,
    last_refill: Instant,
    board: Option<StatusBoard>,
    read_buf: Vec<u8>,
}

fn fingerprint(f: &File, size: u64) -> std::io::Result<(u64, u32)> {
    let n = (size as usize).min(FINGERPRINT_BYTES);
    let mut b = vec![0u8; n];
    let got = f.read_at(&mut b, 0)?;
    b.truncate(got);
    Ok((fnv1a(&b), got as u32))
}

impl Tailer {
    pub fn new(spec: TailerSpec, emitter: Emitter, metrics: SourceMetrics) -> Tailer {
        let store = Store::new(&spec.checkpoint_dir, &spec.name.replace('/', "_"));
        let restored = match store.load() {
            Ok(Some(s)) => s
                .files
                .into_iter()
                .map(|c| ((c.id.dev, c.id.ino), c))
                .collect(),
            Ok(None) => HashMap::new(),
            Err(e) => {
                tracing::warn!(source = %spec.name, error = %e, "cannot load the checkpoint");
                HashMap::new()
            }
        };
        Tailer {
            source_tokens: spec.source_bytes_per_sec as f64,
            spec,
            emitter,
            metrics,
            store,
            files: HashMap::new(),
            by_inode: HashMap::new(),
            next_key: 0,
            round: 0,
            open: 0,
            outstanding: VecDeque::new(),
            inflight: 0,
            records: Vec::new(),
            record_bytes: 0,
            marks: HashMap::new(),
            restored,
            first_discovery: true,
            dirty: false,
            last_refill: Instant::now(),
            board: None,
            read_buf: Vec::new(),
        }
    }

    pub fn with_board(mut self, board: StatusBoard) -> Self {
        self.board = Some(board);
        self
    }

    /// Runs until `stop` returns true, then waits up to `drain` for outstanding
    /// acknowledgements and writes the checkpoint a last time.
    pub fn run(mut self, stop: impl Fn() -> bool, drain: Duration) {
        let mut next_discover = Instant::now();
        let mut next_status = Instant::now();
        while !stop() {
            let now = Instant::now();
            self.process_acks();
            if now >= next_discover {
                self.discover();
                next_discover = now + self.spec.discover_interval;
            }
            let read = self.read_round();
            self.flush_timeouts(false);
            self.emit();
            self.process_acks();
            self.save_if_dirty();
            if now >= next_status {
                self.publish_status();
                next_status = now + Duration::from_secs(1);
            }
            if read == 0 {
                // Woken early by an acknowledgement.
                std::thread::park_timeout(self.spec.poll_interval);
            }
        }
        let until = Instant::now() + drain;
        while !self.outstanding.is_empty() && Instant::now() < until {
            self.process_acks();
            std::thread::sleep(Duration::from_millis(10));
        }
        self.process_acks();
        self.save_if_dirty();
    }

    fn excluded(&self, p: &Path) -> bool {
        self.spec.exclude.iter().any(|g| g.matches(p))
    }

    /// Walks the globs: new files are tracked, vanished or replaced paths are marked
    /// rotated.
    pub fn discover(&mut self) {
        let mut found = Vec::new();
        let cap = self.spec.max_tracked_files * 2 + 1024;
        for g in &self.spec.include {
            g.walk(self.spec.follow_links, cap, &mut found);
        }
        found.sort();
        found.dedup();
        let mut seen: HashMap<u64, ()> = HashMap::new();
        for p in found {
            if self.excluded(&p) {
                continue;
            }
            let Ok(md) = std::fs::metadata(&p) else {
                continue;
            };
            let ino = (md.dev(), md.ino());
            if let Some(&k) = self.by_inode.get(&ino) {
                seen.insert(k, ());
                if let Some(t) = self.files.get_mut(&k) {
                    if t.path != p && t.gone_since.is_none() {
                        t.path = p.clone();
                    }
                    // Truncated and rewritten past our offset between two looks
                    // (copytruncate): the first bytes changed.
                    if let Some(f) = &t.file {
                        if t.id.fp_len > 0 {
                            if let Ok((h, n)) = fingerprint(f, u64::from(t.id.fp_len)) {
                                if n < t.id.fp_len || h != t.id.fp {
                                    self.metrics.truncations.inc();
                                    restart(t);
                                    self.dirty = true;
                                }
                            }
                        }
                    }
                }
                continue;
            }
            if self.files.len() >= self.spec.max_tracked_files {
                self.metrics.files_skipped.inc();
                continue;
            }
            if let Some(k) = self.track(&p, md.len(), ino) {
                seen.insert(k, ());
            }
        }
        // After a restart: files of the checkpoint renamed away (rotated) while the agent
        // was down are looked up by inode in their directory and read to their end.
        if self.first_discovery {
            self.first_discovery = false;
            let left: Vec<FileCheckpoint> = self.restored.drain().map(|(_, c)| c).collect();
            for c in left {
                if let Some(p) = find_by_inode(&c.path, c.id.dev, c.id.ino) {
                    if let Ok(md) = std::fs::metadata(&p) {
                        self.restored.insert((c.id.dev, c.id.ino), c.clone());
                        if let Some(k) = self.track(&p, md.len(), (md.dev(), md.ino())) {
                            if let Some(t) = self.files.get_mut(&k) {
                                t.gone_since = Some(Instant::now());
                                self.metrics.rotations.inc();
                            }
                        }
                    }
                }
            }
            self.restored.clear();
        }
        let now = Instant::now();
        for (k, t) in self.files.iter_mut() {
            if seen.contains_key(k) || t.gone_since.is_some() {
                continue;
            }
            t.gone_since = Some(now);
            self.metrics.rotations.inc();
            if t.file.is_none() {
                // Closed while it was renamed: look for it in its directory.
                if let Some((p, f)) = find_by_inode(&t.path, t.id.dev, t.id.ino)
                    .and_then(|p| File::open(&p).ok().map(|f| (p, f)))
                {
                    t.path = p;
                    t.file = Some(f);
                    self.open += 1;
                }
            }
        }
        self.metrics.files_tracked.set(self.files.len() as f64);
        self.metrics.files_open.set(self.open as f64);
    }

    fn track(&mut self, p: &Path, size: u64, ino: (u64, u64)) -> Option<u64> {
        let f = File::open(p).ok()?;
        let (fp, fp_len) = fingerprint(&f, size).ok()?;
        let id = FileId {
            dev: ino.0,
            ino: ino.1,
            fp,
            fp_len,
        };
        let mut start = if self.first_discovery && self.spec.start_at == StartAt::End {
            size
        } else {
            0
        };
        if let Some(c) = self.restored.remove(&ino) {
            // Same inode and the same first bytes: the same file.
            let same = c.id.fp_len <= fp_len
                && fingerprint(&f, u64::from(c.id.fp_len))
                    .map(|(h, n)| h == c.id.fp && n == c.id.fp_len)
                    .unwrap_or(false);
            if same && c.offset <= size {
                start = c.offset;
            } else {
                start = 0;
            }
        }
        let key = self.next_key;
        self.next_key += 1;
        let meta = Arc::new((self.spec.meta)(p));
        let multiline = self
            .spec
            .multiline
            .as_ref()
            .map(|r| Multiline::new(r.start.clone(), r.max_lines, r.max_bytes, r.timeout));
        // Open files count against the cap: keep it closed if the cap is reached.
        let file = if self.open < self.spec.max_open_files {
            self.open += 1;
            Some(f)
        } else {
            None
        };
        self.files.insert(
            key,
            Tracked {
                path: p.to_path_buf(),
                id,
                meta,
                file,
                size,
                read_off: start,
                committed: start,
                buf: Vec::new(),
                buf_start: start,
                skipping: false,
                decoder: Decoder::new(self.spec.format, self.spec.max_line_bytes),
                multiline,
                epoch: 0,
                gone_since: None,
                progress_at: Instant::now(),
                last_served: 0,
                tokens: self.spec.file_bytes_per_sec as f64,
            },
        );
        self.by_inode.insert(ino, key);
        self.dirty = true;
        Some(key)
    }

    /// One round: serves files with data, least recently served first, within the
    /// open-file cap and the in-flight bound. Returns bytes read.
    pub fn read_round(&mut self) -> u64 {
        self.round += 1;
        self.refill();
        if self.inflight >= self.spec.max_inflight_bytes {
            return 0;
        }
        // Sizes of every tracked file: fstat when open, stat by path when not.
        let mut want: Vec<(u64, u64)> = Vec::new();
        let mut closed_gone = Vec::new();
        for (k, t) in self.files.iter_mut() {
            let size = match &t.file {
                Some(f) => f.metadata().map(|m| m.len()).ok(),
                None => std::fs::metadata(&t.path)
                    .ok()
                    .filter(|m| (m.dev(), m.ino()) == (t.id.dev, t.id.ino))
                    .map(|m| m.len()),
            };
            let Some(size) = size else {
                if t.file.is_none() {
                    closed_gone.push(*k);
                }
                continue;
            };
            t.size = size;
            if size < t.read_off || (size < u64::from(t.id.fp_len)) {
                // Truncated in place (copytruncate) or rewritten: start over.
                self.metrics.truncations.inc();
                restart(t);
                self.dirty = true;
            }
            if size > t.read_off {
                want.push((t.last_served, *k));
            }
        }
        for k in closed_gone {
            self.close_for_good(k);
        }
        want.sort_unstable();
        let mut total = 0u64;
        let mut served = 0usize;
        for (_, k) in want {
            if served >= self.spec.max_open_files {
                break;
            }
            if self.inflight + total >= self.spec.max_inflight_bytes {
                break;
            }
            if self.spec.source_bytes_per_sec > 0 && self.source_tokens < 1.0 {
                self.metrics.throttled.inc();
                break;
            }
            if self
                .spec
                .node_bucket
                .as_ref()
                .is_some_and(|b| b.available() == 0)
            {
                self.metrics.throttled.inc();
                break;
            }
            if !self.ensure_open(k) {
                continue;
            }
            served += 1;
            total += self.serve(k);
        }
        self.close_idle();
        self.metrics.files_open.set(self.open as f64);
        total
    }

    fn refill(&mut self) {
        let dt = self.last_refill.elapsed().as_secs_f64();
        self.last_refill = Instant::now();
        if self.spec.source_bytes_per_sec > 0 {
            let r = self.spec.source_bytes_per_sec as f64;
            self.source_tokens = (self.source_tokens + dt * r).min(r);
        }
        if self.spec.file_bytes_per_sec > 0 {
            let r = self.spec.file_bytes_per_sec as f64;
            for t in self.files.values_mut() {
                t.tokens = (t.tokens + dt * r).min(r);
            }
        }
    }

    /// Opens `k` if it is closed, closing the least recently served idle file when the
    /// cap is reached. False when no descriptor could be had.
    fn ensure_open(&mut self, k: u64) -> bool {
        if self.files.get(&k).is_some_and(|t| t.file.is_some()) {
            return true;
        }
        if self.open >= self.spec.max_open_files {
            let victim = self
                .files
                .iter()
                .filter(|(kk, t)| {
                    **kk != k
                        && t.file.is_some()
                        && t.gone_since.is_none()
                        && t.last_served < self.round
                })
                .min_by_key(|(_, t)| t.last_served)
                .map(|(kk, _)| *kk);
            let Some(v) = victim else { return false };
            if let Some(t) = self.files.get_mut(&v) {
                t.file = None;
                self.open -= 1;
            }
        }
        let Some(t) = self.files.get_mut(&k) else {
            return false;
        };
        match File::open(&t.path) {
            Ok(f) => match f.metadata() {
                Ok(m) if (m.dev(), m.ino()) == (t.id.dev, t.id.ino) => {
                    t.file = Some(f);
                    self.open += 1;
                    true
                }
                _ => false,
            },
            Err(_) => false,
        }
    }

    /// Closes idle files beyond what the cap needs (files with nothing new to read and
    /// not rotated), so waiting files get descriptors next round.
    fn close_idle(&mut self) {
        if self.open <= self.spec.max_open_files / 2 {
            return;
        }
        for t in self.files.values_mut() {
            if self.open <= self.spec.max_open_files / 2 {
                break;
            }
            if t.file.is_some() && t.gone_since.is_none() && t.size <= t.read_off {
                t.file = None;
                self.open -= 1;
            }
        }
    }

    /// Reads one chunk of file `k` and decodes its lines. Returns bytes read.
    fn serve(&mut self, k: u64) -> u64 {
        let now = Instant::now();
        let round = self.round;
        let max_phys = self.spec.max_line_bytes + 1024;
        let Some(t) = self.files.get_mut(&k) else {
            return 0;
        };
        t.last_served = round;
        let Some(f) = &t.file else { return 0 };
        let mut chunk = (self.spec.read_chunk_bytes as u64).min(t.size - t.read_off);
        if self.spec.file_bytes_per_sec > 0 {
            if t.tokens < 1.0 {
                self.metrics.throttled.inc();
                return 0;
            }
            chunk = chunk.min(t.tokens as u64);
        }
        if self.spec.source_bytes_per_sec > 0 {
            chunk = chunk.min(self.source_tokens.max(1.0) as u64);
        }
        if let Some(b) = &self.spec.node_bucket {
            chunk = chunk.min(b.available().max(1));
        }
        // One read buffer for every file, kept between turns: a fresh 256 KiB buffer per
        // read would be mapped, zeroed and unmapped each time.
        let mut data = std::mem::take(&mut self.read_buf);
        if data.len() < chunk as usize {
            data.resize(chunk as usize, 0);
        }
        let n = match f.read_at(&mut data[..chunk as usize], t.read_off) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(path = %t.path.display(), error = %e, "read failed");
                self.read_buf = data;
                return 0;
            }
        };
        if n == 0 {
            self.read_buf = data;
            return 0;
        }
        let data_all = data;
        let data = &data_all[..n];
        t.tokens -= n as f64;
        t.progress_at = now;
        self.source_tokens -= n as f64;
        if let Some(b) = &self.spec.node_bucket {
            b.take(n as u64);
        }
        self.metrics.bytes_read.add(n as u64);
        // Improve a short fingerprint while the file is young, after checking the bytes
        // it covers did not change (a rewrite in place since the last look).
        if (t.id.fp_len as usize) < FINGERPRINT_BYTES && t.read_off < FINGERPRINT_BYTES as u64 {
            let same = t.id.fp_len == 0
                || fingerprint(f, u64::from(t.id.fp_len))
                    .is_ok_and(|(h, l)| h == t.id.fp && l == t.id.fp_len);
            if !same {
                self.metrics.truncations.inc();
                restart(t);
                self.dirty = true;
                return 0;
            }
            if let Ok((fp, len)) = fingerprint(f, t.read_off + n as u64) {
                t.id.fp = fp;
                t.id.fp_len = len;
            }
        }
        let base = t.read_off;
        t.read_off += n as u64;
        let mut lines: Vec<(Line, u64)> = Vec::new();
        let mut pos = 0usize;
        while pos < data.len() {
            let rest = &data[pos..];
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    let end_off = base + (pos + i + 1) as u64;
                    if t.skipping {
                        t.skipping = false;
                        t.buf.clear();
                    } else if t.buf.is_empty() {
                        let start = base + pos as u64;
                        let cut = rest[..i].len() > max_phys;
                        let raw = &rest[..i.min(max_phys)];
                        if let Some(l) = t.decoder.push(raw, start, cut) {
                            lines.push((l, start));
                        }
                    } else {
                        let room = max_phys.saturating_sub(t.buf.len());
                        let cut = i > room;
                        t.buf.extend_from_slice(&rest[..i.min(room)]);
                        let start = t.buf_start;
                        let raw = std::mem::take(&mut t.buf);
                        if let Some(l) = t.decoder.push(&raw, start, cut) {
                            lines.push((l, start));
                        }
                    }
                    pos += i + 1;
                    t.buf_start = end_off;
                }
                None => {
                    if !t.skipping {
                        if t.buf.is_empty() {
                            t.buf_start = base + pos as u64;
                        }
                        let room = max_phys.saturating_sub(t.buf.len());
                        t.buf.extend_from_slice(&rest[..rest.len().min(room)]);
                        if t.buf.len() >= max_phys {
                            // Ship what fits now, discard up to the newline.
                            let raw = std::mem::take(&mut t.buf);
                            let start = t.buf_start;
                            if let Some(l) = t.decoder.push(&raw, start, true) {
                                lines.push((l, start));
                            }
                            t.skipping = true;
                        }
                    }
                    pos = data.len();
                }
            }
        }
        let mut out = Vec::with_capacity(lines.len());
        for (l, start) in lines {
            match &mut t.multiline {
                Some(m) => m.push(l, start, now, &mut out),
                None => out.push(l),
            }
        }
        let meta = t.meta.clone();
        let safe = t.safe_offset();
        let epoch = t.epoch;
        self.read_buf = data_all;
        self.add_lines(out, &meta);
        self.marks.insert(k, (epoch, safe));
        self.record_bytes += n as u64;
        if self.records.len() >= self.spec.batch_lines {
            self.emit();
        }
        n as u64
    }

    fn add_lines(&mut self, lines: Vec<Line>, meta: &FileMeta) {
        let now = SystemTime::now();
        for l in lines {
            self.metrics.lines_read.inc();
            if l.truncated {
                self.metrics.lines_truncated.inc();
            }
            if l.unparsed {
                self.metrics.lines_unparsed.inc();
            }
            let mut attributes = Vec::with_capacity(meta.attributes.len() + 2);
            attributes.extend(meta.attributes.iter().cloned());
            if let Some(s) = l.stream {
                attributes.push(("log.iostream".into(), s.as_str().to_string()));
            }
            if l.truncated {
                attributes.push(("truncated".into(), "true".into()));
            }
            self.records.push(LogRecord {
                timestamp: l.time.unwrap_or(now),
                severity: Severity::Info,
                kind: meta.kind.clone(),
                body: l.body,
                labels: meta.labels.clone(),
                attributes,
            });
        }
    }

    /// Ships multiline records and partial lines that waited too long (or all, `force`).
    fn flush_timeouts(&mut self, force: bool) {
        let now = Instant::now();
        let keys: Vec<u64> = self
            .files
            .iter()
            .filter(|(_, t)| {
                t.multiline
                    .as_ref()
                    .is_some_and(|m| m.pending_start().is_some())
            })
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            let Some(t) = self.files.get_mut(&k) else {
                continue;
            };
            let mut out = Vec::new();
            if let Some(m) = &mut t.multiline {
                m.flush(now, force, &mut out);
            }
            if out.is_empty() {
                continue;
            }
            let meta = t.meta.clone();
            let mark = (t.epoch, t.safe_offset());
            self.add_lines(out, &meta);
            self.marks.insert(k, mark);
        }
    }

    /// Sends the lines read so far as one acknowledged batch.
    fn emit(&mut self) {
        if self.marks.is_empty() {
            return;
        }
        let marks: Vec<(u64, u64, u64)> = self.marks.drain().map(|(k, (e, o))| (k, e, o)).collect();
        let records = std::mem::take(&mut self.records);
        let lines = records.len() as u64;
        let bytes = std::mem::take(&mut self.record_bytes);
        let state = Arc::new(AtomicU8::new(0));
        let st = state.clone();
        // Wake the tailer as soon as the batch is settled, so the checkpoint follows the
        // acknowledgement within milliseconds (fewer duplicates after a crash).
        let me = std::thread::current();
        let ack = Ack::new(move |ok| {
            st.store(if ok { 1 } else { 2 }, Ordering::Release);
            me.unpark();
        });
        self.outstanding.push_back(Outstanding {
            state,
            marks,
            lines,
            bytes,
        });
        self.inflight += bytes;
        self.metrics.inflight_bytes.set(self.inflight as f64);
        if records.is_empty() {
            // Only partial lines or skipped bytes: nothing to send, nothing to wait for.
            ack.complete();
        } else {
            self.emitter
                .emit(Signal::Logs(LogBatch::with_ack(records, ack)));
        }
    }

    /// Applies completed acknowledgements in order; the first failure rewinds.
    pub fn process_acks(&mut self) {
        while let Some(front) = self.outstanding.front() {
            match front.state.load(Ordering::Acquire) {
                1 => {
                    let Some(o) = self.outstanding.pop_front() else {
                        break;
                    };
                    self.inflight = self.inflight.saturating_sub(o.bytes);
                    self.metrics.lines_shipped.add(o.lines);
                    self.metrics.bytes_shipped.add(o.bytes);
                    for (k, epoch, off) in o.marks {
                        if let Some(t) = self.files.get_mut(&k) {
                            if t.epoch == epoch && off > t.committed {
                                t.committed = off;
                                t.progress_at = Instant::now();
                                self.dirty = true;
                            }
                        }
                    }
                }
                2 => {
                    self.metrics.rewinds.inc();
                    tracing::debug!(source = %self.spec.name, "batch not acknowledged: rewinding to the checkpoints");
                    self.outstanding.clear();
                    self.inflight = 0;
                    for t in self.files.values_mut() {
                        t.rewind();
                    }
                    self.records.clear();
                    self.marks.clear();
                    self.record_bytes = 0;
                }
                _ => break,
            }
        }
        self.metrics.inflight_bytes.set(self.inflight as f64);
        // Close files that went away once read to the end and acknowledged (or at the bound).
        let now = Instant::now();
        let done: Vec<u64> = self
            .files
            .iter()
            .filter(|(_, t)| {
                t.gone_since.is_some_and(|g| {
                    let finished = t.read_off >= t.size && t.committed >= t.safe_offset();
                    let idle = t
                        .file
                        .as_ref()
                        .and_then(|f| f.metadata().ok())
                        .is_none_or(|m| m.len() <= t.read_off);
                    let stalled =
                        now.duration_since(g.max(t.progress_at)) >= self.spec.rotated_close_after;
                    (finished && idle) || stalled
                })
            })
            .map(|(k, _)| *k)
            .collect();
        for k in done {
            self.close_for_good(k);
        }
    }

    fn close_for_good(&mut self, k: u64) {
        let Some(mut t) = self.files.remove(&k) else {
            return;
        };
        self.by_inode.remove(&(t.id.dev, t.id.ino));
        if t.file.take().is_some() {
            self.open -= 1;
        }
        let left = t.size.saturating_sub(t.committed);
        if left > 0 {
            // Lines never read, or read but not acknowledged: lost with the file.
            self.metrics.dropped_file_gone.add(left);
            tracing::warn!(path = %t.path.display(), bytes = left, "file went away before its lines were shipped");
        }
        let rest = t.decoder.flush();
        if !rest.is_empty() {
            let meta = t.meta.clone();
            self.add_lines(rest, &meta);
        }
        self.dirty = true;
        self.metrics.files_tracked.set(self.files.len() as f64);
        self.metrics.files_open.set(self.open as f64);
    }

    fn state(&self) -> State {
        State {
            files: self
                .files
                .values()
                .map(|t| FileCheckpoint {
                    path: t.path.clone(),
                    id: t.id,
                    offset: t.committed,
                })
                .collect(),
            kmsg_seq: None,
            boot_id: None,
        }
    }

    fn save_if_dirty(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let t0 = Instant::now();
        match self.store.save(&self.state()) {
            Ok(n) => {
                self.metrics.checkpoint_writes.inc();
                self.metrics.checkpoint_bytes.set(n as f64);
            }
            Err(e) => {
                self.metrics.checkpoint_errors.inc();
                tracing::warn!(source = %self.spec.name, error = %e, "cannot write the checkpoint");
                self.dirty = true;
            }
        }
        self.metrics
            .checkpoint_seconds
            .add(t0.elapsed().as_secs_f64());
    }

    fn publish_status(&self) {
        let mut lag = 0u64;
        let mut max = 0u64;
        let list: Vec<FileStatus> = self
            .files
            .values()
            .map(|t| {
                let l = t.size.saturating_sub(t.committed);
                lag += l;
                max = max.max(l);
                FileStatus {
                    source: self.spec.name.clone(),
                    path: t.path.clone(),
                    size: t.size,
                    read_offset: t.read_off,
                    checkpoint: t.committed,
                    lag_bytes: l,
                    open: t.file.is_some(),
                    rotated: t.gone_since.is_some(),
                }
            })
            .collect();
        self.metrics.lag_bytes.set(lag as f64);
        self.metrics.lag_max_bytes.set(max as f64);
        if let Some(b) = &self.board {
            b.lock().insert(self.spec.name.clone(), list);
        }
    }
}

/// The file was truncated or rewritten in place: read it again from the start.
fn restart(t: &mut Tracked) {
    t.epoch += 1;
    t.committed = 0;
    t.rewind();
    t.id.fp_len = 0;
    t.id.fp = fnv1a(&[]);
}

/// A file in `path`'s directory with the given device and inode (a renamed file).
fn find_by_inode(path: &Path, dev: u64, ino: u64) -> Option<PathBuf> {
    let dir = path.parent()?;
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .take(10_000)
        .find(|e| {
            e.metadata()
                .is_ok_and(|m| m.is_file() && m.dev() == dev && m.ino() == ino)
        })
        .map(|e| e.path())
}
