//! The per-exporter disk write-ahead log.
//!
//! Layout: `<dir>/<16 hex digits>.seg` segment files, each starting with the 8-byte magic
//! [`SEGMENT_MAGIC`], followed by records:
//!
//! ```text
//! u32 LE  len      length of `data`
//! u32 LE  crc32    CRC-32 (IEEE) of `data`
//! data:   u32 LE items | u32 LE meta_len | meta | body
//! ```
//!
//! plus a `cursor` file (`u64 seq | u64 offset | u32 crc32`) naming the first record not yet
//! acknowledged by the backend. Invariants:
//! - a record is acknowledged only after the backend accepted it, so a crash re-sends at
//!   most the records read but not yet acknowledged (one batch: the sender keeps one in
//!   flight) — at-least-once with duplicates bounded to batches in flight;
//! - a corrupt or truncated record never panics: it is counted (`corrupt`) and the rest of
//!   its segment is skipped (records carry no resync marker, so nothing after a bad length
//!   can be trusted);
//! - the total size on disk stays under `max_bytes`: the oldest segment is deleted and the
//!   items in it that were never sent are reported to the caller, who counts them.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::{FsyncPolicy, WalConfig};
use crate::Payload;

pub const SEGMENT_MAGIC: &[u8; 8] = b"NSWAL01\n";
const HDR: u64 = SEGMENT_MAGIC.len() as u64;
const REC_HDR: usize = 8;
/// Sanity bound on one record; anything larger is treated as corruption.
pub const MAX_RECORD: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("WAL record of {0} bytes is larger than the {MAX_RECORD}-byte limit")]
    TooLarge(usize),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Serialises one payload as a WAL record, appending to `out`.
pub fn encode_record(p: &Payload, out: &mut Vec<u8>) {
    let data_len = 8 + p.meta.len() + p.body.len();
    out.reserve(REC_HDR + data_len);
    let start = out.len();
    out.extend_from_slice(&(data_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&p.items.to_le_bytes());
    out.extend_from_slice(&(p.meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&p.meta);
    out.extend_from_slice(&p.body);
    let crc = crc32fast::hash(&out[start + REC_HDR..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Result of decoding the record at the start of a buffer.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// A valid record and the number of bytes it occupies.
    Record(Payload, usize),
    /// The buffer is empty: a clean end of segment.
    End,
    /// The bytes are not a valid record (bad length, checksum, truncation).
    Corrupt(&'static str),
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map(u32::from_le_bytes)
}

/// Validates a record header; returns `data` length and crc.
fn parse_header(b: &[u8]) -> Result<(usize, u32), &'static str> {
    let (Some(len), Some(crc)) = (u32_at(b, 0), u32_at(b, 4)) else {
        return Err("truncated record header");
    };
    let len = len as usize;
    if !(8..=MAX_RECORD).contains(&len) {
        return Err("record length out of range");
    }
    Ok((len, crc))
}

/// Validates `data` against its crc and splits it into a payload.
fn parse_data(data: &[u8], crc: u32) -> Result<Payload, &'static str> {
    if crc32fast::hash(data) != crc {
        return Err("checksum mismatch");
    }
    let (Some(items), Some(meta_len)) = (u32_at(data, 0), u32_at(data, 4)) else {
        return Err("short record");
    };
    let meta_end = 8usize
        .checked_add(meta_len as usize)
        .filter(|&e| e <= data.len())
        .ok_or("metadata length out of range")?;
    Ok(Payload {
        items,
        meta: data[8..meta_end].to_vec(),
        body: data[meta_end..].to_vec(),
    })
}

/// Decodes the record at the start of `buf`.
pub fn decode_record(buf: &[u8]) -> Decoded {
    if buf.is_empty() {
        return Decoded::End;
    }
    let (len, crc) = match parse_header(buf) {
        Ok(h) => h,
        Err(e) => return Decoded::Corrupt(e),
    };
    let Some(data) = buf.get(REC_HDR..REC_HDR + len) else {
        return Decoded::Corrupt("truncated record");
    };
    match parse_data(data, crc) {
        Ok(p) => Decoded::Record(p, REC_HDR + len),
        Err(e) => Decoded::Corrupt(e),
    }
}

/// What a whole segment's bytes hold.
#[derive(Debug, Default)]
pub struct SegmentScan {
    pub records: Vec<Payload>,
    /// Bytes (from the start of the segment) up to the end of the last valid record.
    pub valid_len: usize,
    /// The segment has a bad magic or a bad record after `valid_len`.
    pub corrupt: bool,
}

/// Decodes every record of a segment, stopping at the first corrupt one.
pub fn scan_segment(bytes: &[u8]) -> SegmentScan {
    let mut out = SegmentScan::default();
    if bytes.len() < HDR as usize || &bytes[..HDR as usize] != SEGMENT_MAGIC {
        out.corrupt = true;
        return out;
    }
    let mut at = HDR as usize;
    out.valid_len = at;
    loop {
        match decode_record(&bytes[at..]) {
            Decoded::Record(p, n) => {
                out.records.push(p);
                at += n;
                out.valid_len = at;
            }
            Decoded::End => return out,
            Decoded::Corrupt(_) => {
                out.corrupt = true;
                return out;
            }
        }
    }
}

/// A position in the log: segment sequence number and byte offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub seq: u64,
    pub off: u64,
}

#[derive(Clone, Copy, Debug)]
struct Seg {
    seq: u64,
    bytes: u64,
}

/// Counts reported by WAL operations, which the caller turns into self metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalEvents {
    /// Unsent items deleted with the oldest segment because of the size cap.
    pub dropped_items: u64,
    /// Corrupt regions skipped.
    pub corrupt: u64,
}

pub struct Wal {
    dir: PathBuf,
    cfg: WalConfig,
    segments: VecDeque<Seg>,
    writer: File,
    read: Pos,
    reader: Option<(u64, File)>,
    total_bytes: u64,
    unsynced: bool,
    last_sync: Instant,
    events: WalEvents,
    buf: Vec<u8>,
}

fn seg_name(seq: u64) -> String {
    format!("{seq:016x}.seg")
}

fn parse_seg_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

impl Wal {
    /// Opens (or creates) the WAL in `dir`, resuming after the last acknowledged record.
    /// A torn tail from a crash mid-write is truncated and counted as corrupt.
    pub fn open(dir: &Path, cfg: &WalConfig) -> Result<Wal, WalError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let mut events = WalEvents::default();
        let mut seqs: Vec<u64> = fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(parse_seg_name))
            .collect();
        seqs.sort_unstable();
        let cursor = read_cursor(&dir.join("cursor"));
        let mut segments = VecDeque::new();
        let last = seqs.last().copied();
        for seq in seqs {
            let path = dir.join(seg_name(seq));
            if cursor.is_some_and(|c| seq < c.seq) {
                let _ = fs::remove_file(&path);
                continue;
            }
            let bytes = fs::metadata(&path).map_err(io(&path))?.len();
            if Some(seq) == last {
                // The segment that was being written when the agent stopped: keep only
                // its valid prefix so a torn record cannot poison later reads.
                let data = fs::read(&path).map_err(io(&path))?;
                let scan = scan_segment(&data);
                if scan.corrupt {
                    events.corrupt += 1;
                    if scan.valid_len < HDR as usize {
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io(&path))?;
                    f.set_len(scan.valid_len as u64).map_err(io(&path))?;
                    f.sync_all().map_err(io(&path))?;
                }
                segments.push_back(Seg {
                    seq,
                    bytes: scan.valid_len as u64,
                });
            } else {
                segments.push_back(Seg { seq, bytes });
            }
        }
        let next_seq = last.map_or(1, |s| s + 1);
        let read = match (cursor, segments.front()) {
            (Some(c), Some(first))
                if c.seq == first.seq && c.off >= HDR && c.off <= first.bytes =>
            {
                c
            }
            (_, Some(first)) => Pos {
                seq: first.seq,
                off: HDR,
            },
            (_, None) => Pos {
                seq: next_seq,
                off: HDR,
            },
        };
        let writer = create_segment(dir, next_seq)?;
        segments.push_back(Seg {
            seq: next_seq,
            bytes: HDR,
        });
        let total_bytes = segments.iter().map(|s| s.bytes).sum();
        Ok(Wal {
            dir: dir.to_path_buf(),
            cfg: cfg.clone(),
            segments,
            writer,
            read,
            reader: None,
            total_bytes,
            unsynced: false,
            last_sync: Instant::now(),
            events,
            buf: Vec::new(),
        })
    }

    /// Bytes on disk (segments).
    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Segments on disk, including the active one.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Takes the counts accumulated since the last call.
    pub fn take_events(&mut self) -> WalEvents {
        std::mem::take(&mut self.events)
    }

    /// True when every record written has been read.
    pub fn is_drained(&self) -> bool {
        self.segments
            .back()
            .is_some_and(|s| self.read.seq == s.seq && self.read.off >= s.bytes)
    }

    fn active(&self) -> Seg {
        *self
            .segments
            .back()
            .expect("the WAL always has an active segment")
    }

    fn roll(&mut self) -> Result<(), WalError> {
        if self.cfg.fsync != FsyncPolicy::Never {
            let p = self.dir.join(seg_name(self.active().seq));
            self.writer.sync_data().map_err(io(&p))?;
        }
        let seq = self.active().seq + 1;
        self.writer = create_segment(&self.dir, seq)?;
        self.segments.push_back(Seg { seq, bytes: HDR });
        self.total_bytes += HDR;
        Ok(())
    }

    /// Appends a payload. May delete the oldest segment to stay under `max_bytes`.
    pub fn append(&mut self, p: &Payload) -> Result<(), WalError> {
        self.buf.clear();
        encode_record(p, &mut self.buf);
        let len = self.buf.len() as u64;
        if len as usize > MAX_RECORD {
            return Err(WalError::TooLarge(len as usize));
        }
        let act = self.active();
        if act.bytes > HDR && act.bytes + len > self.cfg.segment_bytes {
            self.roll()?;
        }
        while self.total_bytes + len > self.cfg.max_bytes && self.segments.len() > 1 {
            self.drop_oldest()?;
        }
        let act = self.active();
        let path = self.dir.join(seg_name(act.seq));
        self.writer
            .write_all_at(&self.buf, act.bytes)
            .map_err(io(&path))?;
        if let Some(s) = self.segments.back_mut() {
            s.bytes += len;
        }
        self.total_bytes += len;
        match self.cfg.fsync {
            FsyncPolicy::Always => self.writer.sync_data().map_err(io(&path))?,
            _ => self.unsynced = true,
        }
        Ok(())
    }

    /// Syncs when the `interval` policy says it is time (called periodically).
    pub fn maybe_sync(&mut self) -> Result<(), WalError> {
        if self.cfg.fsync == FsyncPolicy::Interval
            && self.unsynced
            && self.last_sync.elapsed() >= self.cfg.fsync_interval
        {
            self.sync()?;
        }
        Ok(())
    }

    /// Flushes the active segment to stable storage.
    pub fn sync(&mut self) -> Result<(), WalError> {
        let p = self.dir.join(seg_name(self.active().seq));
        self.writer.sync_data().map_err(io(&p))?;
        self.unsynced = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn drop_oldest(&mut self) -> Result<(), WalError> {
        let Some(seg) = self.segments.pop_front() else {
            return Ok(());
        };
        let path = self.dir.join(seg_name(seg.seq));
        if self.read.seq <= seg.seq {
            let from = if self.read.seq == seg.seq {
                self.read.off
            } else {
                HDR
            };
            if let Ok(data) = fs::read(&path) {
                let mut at = from as usize;
                while let Some(rest) = data.get(at..) {
                    match decode_record(rest) {
                        Decoded::Record(p, n) => {
                            self.events.dropped_items += u64::from(p.items);
                            at += n;
                        }
                        _ => break,
                    }
                }
            }
            if let Some(next) = self.segments.front() {
                self.read = Pos {
                    seq: next.seq,
                    off: HDR,
                };
            }
            self.reader = None;
        }
        self.total_bytes = self.total_bytes.saturating_sub(seg.bytes);
        fs::remove_file(&path).map_err(io(&path))?;
        Ok(())
    }

    fn reader_for(&mut self, seq: u64) -> Result<&File, WalError> {
        if self.reader.as_ref().map(|r| r.0) != Some(seq) {
            let path = self.dir.join(seg_name(seq));
            let f = File::open(&path).map_err(io(&path))?;
            self.reader = Some((seq, f));
        }
        Ok(&self.reader.as_ref().expect("reader just set").1)
    }

    /// Reads the next unread record. Returns it and the position just after it (to pass to
    /// [`Wal::ack`] once the backend accepted it), or `None` when everything was read.
    pub fn read_next(&mut self) -> Result<Option<(Payload, Pos)>, WalError> {
        loop {
            let Some(idx) = self.segments.iter().position(|s| s.seq == self.read.seq) else {
                match self.segments.front() {
                    Some(first) if first.seq > self.read.seq => {
                        self.read = Pos {
                            seq: first.seq,
                            off: HDR,
                        };
                        continue;
                    }
                    _ => return Ok(None),
                }
            };
            let seg = self.segments[idx];
            let is_active = idx + 1 == self.segments.len();
            if self.read.off >= seg.bytes {
                if is_active {
                    return Ok(None);
                }
                self.read = Pos {
                    seq: self.segments[idx + 1].seq,
                    off: HDR,
                };
                continue;
            }
            let path = self.dir.join(seg_name(seg.seq));
            let off = self.read.off;
            let avail = seg.bytes - off;
            let mut hdr = [0u8; REC_HDR];
            let parsed = if avail < REC_HDR as u64 {
                Err("truncated record header")
            } else {
                self.reader_for(seg.seq)?
                    .read_exact_at(&mut hdr, off)
                    .map_err(io(&path))?;
                parse_header(&hdr).and_then(|(len, crc)| {
                    if (REC_HDR + len) as u64 > avail {
                        Err("truncated record")
                    } else {
                        Ok((len, crc))
                    }
                })
            };
            let result = match parsed {
                Ok((len, crc)) => {
                    let mut data = vec![0u8; len];
                    self.reader_for(seg.seq)?
                        .read_exact_at(&mut data, off + REC_HDR as u64)
                        .map_err(io(&path))?;
                    parse_data(&data, crc).map(|p| (p, (REC_HDR + len) as u64))
                }
                Err(e) => Err(e),
            };
            match result {
                Ok((p, n)) => {
                    self.read.off += n;
                    return Ok(Some((p, self.read)));
                }
                Err(reason) => {
                    tracing::warn!(segment = %path.display(), offset = off, reason, "skipping corrupt WAL segment tail");
                    self.events.corrupt += 1;
                    if is_active {
                        self.roll()?;
                    }
                    let next = self.segments[idx + 1].seq;
                    self.read = Pos {
                        seq: next,
                        off: HDR,
                    };
                }
            }
        }
    }

    /// Records that everything before `pos` was delivered: persists the cursor and deletes
    /// segments that are fully delivered.
    pub fn ack(&mut self, pos: Pos) -> Result<(), WalError> {
        let mut pos = pos;
        while self.segments.len() > 1 {
            let first = self.segments[0];
            let fully_done =
                first.seq < pos.seq || (first.seq == pos.seq && pos.off >= first.bytes);
            if !fully_done {
                break;
            }
            self.segments.pop_front();
            self.total_bytes = self.total_bytes.saturating_sub(first.bytes);
            let p = self.dir.join(seg_name(first.seq));
            if self.reader.as_ref().is_some_and(|r| r.0 == first.seq) {
                self.reader = None;
            }
            fs::remove_file(&p).map_err(io(&p))?;
            if first.seq == pos.seq {
                pos = Pos {
                    seq: self.segments[0].seq,
                    off: HDR,
                };
            }
        }
        write_cursor(&self.dir, pos, self.cfg.fsync == FsyncPolicy::Always)
    }
}

fn create_segment(dir: &Path, seq: u64) -> Result<File, WalError> {
    let path = dir.join(seg_name(seq));
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .read(true)
        .open(&path)
        .map_err(io(&path))?;
    f.write_all(SEGMENT_MAGIC).map_err(io(&path))?;
    Ok(f)
}

fn read_cursor(path: &Path) -> Option<Pos> {
    let b = fs::read(path).ok()?;
    if b.len() != 20 {
        return None;
    }
    let crc = u32::from_le_bytes(b[16..20].try_into().ok()?);
    if crc32fast::hash(&b[..16]) != crc {
        return None;
    }
    Some(Pos {
        seq: u64::from_le_bytes(b[0..8].try_into().ok()?),
        off: u64::from_le_bytes(b[8..16].try_into().ok()?),
    })
}

fn write_cursor(dir: &Path, pos: Pos, sync: bool) -> Result<(), WalError> {
    let mut b = Vec::with_capacity(20);
    b.extend_from_slice(&pos.seq.to_le_bytes());
    b.extend_from_slice(&pos.off.to_le_bytes());
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join("cursor.tmp");
    let dst = dir.join("cursor");
    {
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&b).map_err(io(&tmp))?;
        if sync {
            f.sync_data().map_err(io(&tmp))?;
        }
    }
    fs::rename(&tmp, &dst).map_err(io(&dst))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(max: u64, seg: u64) -> WalConfig {
        WalConfig {
            enabled: true,
            max_bytes: max,
            segment_bytes: seg,
            fsync: FsyncPolicy::Never,
            ..WalConfig::default()
        }
    }

    fn p(i: u32, size: usize) -> Payload {
        Payload {
            items: i,
            meta: format!("m{i}").into_bytes(),
            body: vec![i as u8; size],
        }
    }

    #[test]
    fn append_read_ack_resume() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(1 << 20, 1 << 16);
        {
            let mut w = Wal::open(d.path(), &c).unwrap();
            for i in 1..=100 {
                w.append(&p(i, 1000)).unwrap();
            }
            assert!(w.segment_count() > 1);
            for i in 1..=40 {
                let (got, pos) = w.read_next().unwrap().unwrap();
                assert_eq!(got, p(i, 1000));
                w.ack(pos).unwrap();
            }
            // read but not acknowledged: must come back after a restart
            let _ = w.read_next().unwrap().unwrap();
        }
        let mut w = Wal::open(d.path(), &c).unwrap();
        for i in 41..=100 {
            let (got, pos) = w.read_next().unwrap().unwrap();
            assert_eq!(got.items, i);
            w.ack(pos).unwrap();
        }
        assert!(w.read_next().unwrap().is_none());
        assert!(w.is_drained());
        assert_eq!(w.take_events(), WalEvents::default());
        // fully delivered segments are gone: only the active one (and maybe a tail) remain
        assert!(w.segment_count() <= 2, "{}", w.segment_count());
    }

    #[test]
    fn cap_drops_oldest_and_counts_items() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(200_000, 65_536);
        let mut w = Wal::open(d.path(), &c).unwrap();
        for i in 0..1000 {
            w.append(&p(1, 1000)).unwrap();
            assert!(w.bytes() <= c.max_bytes, "at {i}: {}", w.bytes());
        }
        let ev = w.take_events();
        let mut left = 0;
        while let Some((q, pos)) = w.read_next().unwrap() {
            left += q.items as u64;
            w.ack(pos).unwrap();
        }
        assert_eq!(ev.dropped_items + left, 1000);
        assert!(ev.dropped_items > 700);
    }

    #[test]
    fn torn_tail_is_truncated_and_counted() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(1 << 20, 1 << 18);
        {
            let mut w = Wal::open(d.path(), &c).unwrap();
            for i in 1..=3 {
                w.append(&p(i, 100)).unwrap();
            }
        }
        // simulate a crash mid-write: append half a record to the last segment
        let seg = d.path().join(seg_name(1));
        let mut rec = Vec::new();
        encode_record(&p(9, 100), &mut rec);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&rec[..rec.len() / 2]).unwrap();
        drop(f);
        let mut w = Wal::open(d.path(), &c).unwrap();
        assert_eq!(w.take_events().corrupt, 1);
        let mut got = vec![];
        while let Some((q, pos)) = w.read_next().unwrap() {
            got.push(q.items);
            w.ack(pos).unwrap();
        }
        assert_eq!(got, vec![1, 2, 3]);
        w.append(&p(4, 10)).unwrap();
        assert_eq!(w.read_next().unwrap().unwrap().0.items, 4);
    }

    #[test]
    fn corrupt_byte_mid_segment_skips_rest_and_continues() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(1 << 20, 4096 * 4 + 100);
        {
            let mut w = Wal::open(d.path(), &c).unwrap();
            for i in 1..=20 {
                w.append(&p(i, 1000)).unwrap();
            }
        }
        // flip a byte inside the 2nd record of segment 1
        let seg = d.path().join(seg_name(1));
        let mut data = fs::read(&seg).unwrap();
        data[8 + 1016 + 100] ^= 0xff;
        fs::write(&seg, &data).unwrap();
        let mut w = Wal::open(d.path(), &c).unwrap();
        let mut got = vec![];
        while let Some((q, pos)) = w.read_next().unwrap() {
            got.push(q.items);
            w.ack(pos).unwrap();
        }
        assert_eq!(w.take_events().corrupt, 1);
        assert_eq!(got[0], 1);
        assert!(!got.contains(&2));
        assert_eq!(*got.last().unwrap(), 20);
    }

    proptest! {
        #[test]
        fn decoder_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode_record(&bytes);
            let mut seg = SEGMENT_MAGIC.to_vec();
            seg.extend_from_slice(&bytes);
            let s = scan_segment(&seg);
            prop_assert!(s.valid_len <= seg.len());
        }

        #[test]
        fn corrupted_segments_keep_a_valid_prefix(
            sizes in proptest::collection::vec(0usize..300, 1..12),
            cut in any::<proptest::sample::Index>(),
            flip in any::<proptest::sample::Index>(),
            do_flip in any::<bool>(),
        ) {
            let mut seg = SEGMENT_MAGIC.to_vec();
            let mut ends = vec![];
            for (i, s) in sizes.iter().enumerate() {
                encode_record(&p(i as u32, *s), &mut seg);
                ends.push(seg.len());
            }
            let full = scan_segment(&seg);
            prop_assert!(!full.corrupt);
            prop_assert_eq!(full.records.len(), sizes.len());
            let mut bad = seg.clone();
            if do_flip {
                let at = HDR as usize + flip.index(bad.len() - HDR as usize);
                bad[at] ^= 0x5a;
            } else {
                bad.truncate(cut.index(seg.len()));
            }
            let s = scan_segment(&bad);
            // every record returned is one that was written, in order
            for (i, r) in s.records.iter().enumerate() {
                prop_assert_eq!(r, &p(i as u32, sizes[i]));
            }
            if !do_flip {
                let whole = ends.iter().filter(|&&e| e <= bad.len()).count();
                prop_assert_eq!(s.records.len(), whole);
                prop_assert_eq!(s.corrupt, bad.len() < HDR as usize || (bad.len() != s.valid_len));
            } else {
                prop_assert!(s.corrupt || s.records.len() == sizes.len());
            }
        }
    }
}
