//! The kernel log source: reads `/dev/kmsg` (non-blocking, polled), resumes after the
//! last acknowledged sequence number of the same boot, counts ring overruns (`EPIPE`) and
//! sequence gaps, converts the monotonic timestamp to wall-clock time and tags the events
//! the flight recorder keeps (attribute `kind`).

use std::collections::VecDeque;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nodescope_model::{Ack, Emitter, LogBatch, LogRecord, Severity, Signal};

use crate::checkpoint::{State, Store};
use crate::kmsg::{self, KernelEvent, KmsgRecord, SeqTracker};
use crate::metrics::SourceMetrics;

pub struct KmsgSpec {
    pub path: PathBuf,
    pub boot_id_path: PathBuf,
    pub checkpoint_dir: PathBuf,
    pub node_name: Option<String>,
    pub batch_lines: usize,
    pub max_inflight_batches: usize,
}

struct Outstanding {
    state: Arc<AtomicU8>,
    last_seq: u64,
    lines: u64,
    bytes: u64,
}

pub struct KmsgSource {
    spec: KmsgSpec,
    emitter: Emitter,
    metrics: SourceMetrics,
    store: Store,
    boot_id: Option<String>,
    /// Last acknowledged sequence number.
    committed: Option<u64>,
    tracker: SeqTracker,
    /// Wall-clock time of boot (realtime minus monotonic).
    boot_wall: SystemTime,
    records: Vec<LogRecord>,
    batch_last_seq: Option<u64>,
    batch_bytes: u64,
    outstanding: VecDeque<Outstanding>,
    dirty: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct OpenError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn open_nonblocking(p: &Path) -> Result<OwnedFd, OpenError> {
    let err = |source| OpenError {
        path: p.to_path_buf(),
        source,
    };
    let c = CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| err(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    // SAFETY: a valid NUL-terminated path; the returned descriptor is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Wall-clock time of boot, as the kernel log's timestamps count from it.
pub fn boot_wall_time() -> SystemTime {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the provided timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let mono = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
    SystemTime::now() - mono
}

/// Checks the device can be opened (for validation).
pub fn check_readable(p: &Path) -> Result<(), OpenError> {
    open_nonblocking(p).map(drop)
}

impl KmsgSource {
    pub fn new(spec: KmsgSpec, emitter: Emitter, metrics: SourceMetrics) -> Self {
        let store = Store::new(&spec.checkpoint_dir, "kmsg");
        let boot_id = std::fs::read_to_string(&spec.boot_id_path)
            .ok()
            .map(|s| s.trim().to_string());
        let saved = match store.load() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot load the kmsg checkpoint");
                None
            }
        };
        // A sequence number only means something within the boot it was read in.
        let committed = saved
            .filter(|s| s.boot_id.is_some() && s.boot_id == boot_id)
            .and_then(|s| s.kmsg_seq);
        KmsgSource {
            spec,
            emitter,
            metrics,
            store,
            boot_id,
            committed,
            tracker: SeqTracker::new(committed),
            boot_wall: boot_wall_time(),
            records: Vec::new(),
            batch_last_seq: None,
            batch_bytes: 0,
            outstanding: VecDeque::new(),
            dirty: false,
        }
    }

    pub fn committed(&self) -> Option<u64> {
        self.committed
    }

    /// Handles one record as read from the device.
    pub fn handle(&mut self, raw: &[u8]) {
        self.metrics.bytes_read.add(raw.len() as u64);
        let r = match kmsg::parse(raw) {
            Ok(r) => r,
            Err(e) => {
                self.metrics.lines_unparsed.inc();
                tracing::debug!(error = %e, "unparsable kmsg record");
                return;
            }
        };
        let (gap, seen) = self.tracker.observe(r.seq);
        if seen {
            return;
        }
        if gap > 0 {
            self.metrics.kmsg_gaps.add(gap);
            tracing::warn!(
                missed = gap,
                seq = r.seq,
                "kernel log records were overwritten before they were read"
            );
        }
        self.metrics.lines_read.inc();
        self.batch_last_seq = Some(r.seq);
        self.batch_bytes += raw.len() as u64;
        let rec = self.record(r);
        self.records.push(rec);
    }

    fn record(&self, r: KmsgRecord) -> LogRecord {
        let severity = match r.level {
            0..=3 => Severity::Error,
            4 => Severity::Warn,
            5 | 6 => Severity::Info,
            _ => Severity::Debug,
        };
        let mut attributes: nodescope_model::Labels = vec![
            ("priority".into(), kmsg::level_name(r.level).to_string()),
            (
                "facility".into(),
                kmsg::facility_name(r.facility).to_string(),
            ),
            ("seq".into(), r.seq.to_string()),
        ];
        if let Some(ev) = KernelEvent::classify(&r.message) {
            attributes.push(("kind".into(), ev.as_str().to_string()));
        }
        for (k, v) in r.dict {
            if k == "SUBSYSTEM" || k == "DEVICE" {
                attributes.push((k.to_ascii_lowercase().into(), v));
            }
        }
        let mut labels: nodescope_model::Labels = vec![("job".into(), "kernel".into())];
        if let Some(n) = &self.spec.node_name {
            labels.push(("node_name".into(), n.clone()));
        }
        LogRecord {
            timestamp: self.boot_wall + Duration::from_micros(r.usec),
            severity,
            kind: "kernel".into(),
            body: r.message,
            labels,
            attributes,
        }
    }

    /// Sends what was read as one acknowledged batch.
    pub fn emit(&mut self) {
        let Some(last_seq) = self.batch_last_seq.take() else {
            return;
        };
        let records = std::mem::take(&mut self.records);
        let state = Arc::new(AtomicU8::new(0));
        let st = state.clone();
        let ack = Ack::new(move |ok| st.store(if ok { 1 } else { 2 }, Ordering::Release));
        self.outstanding.push_back(Outstanding {
            state,
            last_seq,
            lines: records.len() as u64,
            bytes: std::mem::take(&mut self.batch_bytes),
        });
        self.emitter
            .emit(Signal::Logs(LogBatch::with_ack(records, ack)));
    }

    /// Applies acknowledgements in order. Returns true when a batch failed (the caller
    /// reopens the device and skips what was acknowledged).
    pub fn process_acks(&mut self) -> bool {
        while let Some(f) = self.outstanding.front() {
            match f.state.load(Ordering::Acquire) {
                1 => {
                    let Some(o) = self.outstanding.pop_front() else {
                        break;
                    };
                    self.committed = Some(o.last_seq);
                    self.metrics.lines_shipped.add(o.lines);
                    self.metrics.bytes_shipped.add(o.bytes);
                    self.dirty = true;
                }
                2 => {
                    self.metrics.rewinds.inc();
                    self.outstanding.clear();
                    self.records.clear();
                    self.batch_last_seq = None;
                    self.batch_bytes = 0;
                    self.tracker = SeqTracker::new(self.committed);
                    return true;
                }
                _ => break,
            }
        }
        false
    }

    pub fn save_if_dirty(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let t0 = Instant::now();
        let st = State {
            files: vec![],
            kmsg_seq: self.committed,
            boot_id: self.boot_id.clone(),
        };
        match self.store.save(&st) {
            Ok(n) => {
                self.metrics.checkpoint_writes.inc();
                self.metrics.checkpoint_bytes.set(n as f64);
            }
            Err(e) => {
                self.metrics.checkpoint_errors.inc();
                self.dirty = true;
                tracing::warn!(error = %e, "cannot write the kmsg checkpoint");
            }
        }
        self.metrics
            .checkpoint_seconds
            .add(t0.elapsed().as_secs_f64());
    }

    /// Reads the device until `stop`; reopens it after a failed batch.
    pub fn run(mut self, stop: impl Fn() -> bool) {
        let mut fd = match open_nonblocking(&self.spec.path) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!(error = %e, "cannot open the kernel log; kmsg source stopped");
                return;
            }
        };
        let mut buf = vec![0u8; 16 * 1024];
        while !stop() {
            if self.process_acks() {
                match open_nonblocking(&self.spec.path) {
                    Ok(f) => fd = f,
                    Err(e) => tracing::warn!(error = %e, "cannot reopen the kernel log"),
                }
            }
            self.save_if_dirty();
            if self.outstanding.len() >= self.spec.max_inflight_batches {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 200) };
            loop {
                // SAFETY: reads into our buffer; one record per read.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n > 0 {
                    self.handle(&buf[..n as usize]);
                    if self.records.len() >= self.spec.batch_lines {
                        self.emit();
                    }
                    continue;
                }
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    // The ring overwrote records we had not read: the next read returns the
                    // oldest record still there; the sequence gap counts what was lost.
                    Some(libc::EPIPE) => {
                        self.metrics.dropped_kmsg_overrun.inc();
                        continue;
                    }
                    Some(libc::EINTR) => continue,
                    _ => break,
                }
            }
            self.emit();
        }
        let until = Instant::now() + Duration::from_secs(1);
        while !self.outstanding.is_empty() && Instant::now() < until {
            self.process_acks();
            std::thread::sleep(Duration::from_millis(10));
        }
        self.process_acks();
        self.save_if_dirty();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodescope_model::selfmetrics::SelfMetrics;

    fn source(
        dir: &Path,
    ) -> (
        KmsgSource,
        tokio::sync::mpsc::Receiver<Signal>,
        SourceMetrics,
    ) {
        let (e, rx) = Emitter::for_test(16);
        let m = SourceMetrics::register(&SelfMetrics::new(), "kmsg");
        let boot = dir.join("boot_id");
        std::fs::write(&boot, "b1\n").unwrap();
        let spec = KmsgSpec {
            path: "/dev/null".into(),
            boot_id_path: boot,
            checkpoint_dir: dir.to_path_buf(),
            node_name: Some("n1".into()),
            batch_lines: 100,
            max_inflight_batches: 4,
        };
        (KmsgSource::new(spec, e, m.clone()), rx, m)
    }

    #[test]
    fn gaps_tags_acks_and_resume() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, mut rx, m) = source(d.path());
        s.handle(b"4,10,1000,-;Out of memory: Killed process 77 (x)\n");
        s.handle(b"6,11,2000,-;hello\n");
        s.handle(b"6,15,3000,-;after a gap\n");
        assert_eq!(m.kmsg_gaps.get(), 3);
        s.emit();
        let Some(Signal::Logs(mut b)) = rx.try_recv().ok() else {
            panic!("no batch")
        };
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].severity, Severity::Warn);
        assert!(b[0]
            .attributes
            .iter()
            .any(|(k, v)| k == "kind" && v == "kernel_oom_kill"));
        let wall = b[1].timestamp.duration_since(b[0].timestamp).unwrap();
        assert_eq!(wall, Duration::from_millis(1));
        // Not acknowledged yet: nothing committed.
        assert!(!s.process_acks());
        assert_eq!(s.committed(), None);
        b.ack.take().unwrap().complete();
        assert!(!s.process_acks());
        assert_eq!(s.committed(), Some(15));
        s.save_if_dirty();
        drop(s);
        // A restart in the same boot skips what was acknowledged.
        let (mut s, mut rx, _) = source(d.path());
        assert_eq!(s.committed(), Some(15));
        s.handle(b"6,15,3000,-;after a gap\n");
        s.handle(b"6,16,3000,-;new\n");
        s.emit();
        let Some(Signal::Logs(b)) = rx.try_recv().ok() else {
            panic!("no batch")
        };
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].body, "new");
        // Dropped = not acknowledged: the source asks to rewind.
        drop(b);
        assert!(s.process_acks());
        assert_eq!(s.committed(), Some(15));
    }
}
