//! Self-profiling fallback with pprof-rs (setitimer + SIGPROF, frame-pointer unwinding)
//! for when eBPF is unavailable. pprof-rs is a process-wide singleton: the service allows
//! one self profile at a time (409 otherwise). Raw instruction pointers are taken from
//! pprof-rs's unresolved report and symbolized by our own symbolizer, so the pprof output
//! has the same mappings/addresses as the eBPF path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::samples::{RawSample, StackKey};

#[derive(Debug, thiserror::Error)]
pub enum SelfProfileError {
    #[error("starting the SIGPROF profiler: {0}")]
    Start(String),
    #[error("building the SIGPROF report: {0}")]
    Report(String),
}

/// Runs pprof-rs for `duration` (or until `cancel` is set) at `hz`; blocking, call it
/// from a blocking thread.
pub fn run(
    hz: u32,
    duration: Duration,
    cancel: &AtomicBool,
) -> Result<Vec<RawSample>, SelfProfileError> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(hz as i32)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| SelfProfileError::Start(e.to_string()))?;
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline && !cancel.load(Ordering::Relaxed) {
        std::thread::sleep(
            Duration::from_millis(50).min(deadline.saturating_duration_since(Instant::now())),
        );
    }
    let report = guard
        .report()
        .build_unresolved()
        .map_err(|e| SelfProfileError::Report(e.to_string()))?;
    drop(guard);
    let pid = std::process::id();
    let mut out = Vec::with_capacity(report.data.len());
    for (frames, count) in report.data {
        if count <= 0 {
            continue;
        }
        let name_len = frames.thread_name_length.min(frames.thread_name.len());
        let comm: Arc<str> =
            Arc::from(String::from_utf8_lossy(&frames.thread_name[..name_len]).as_ref());
        let user: Vec<u64> = frames
            .frames
            .iter()
            .map(|f| f.ip as u64)
            .filter(|&ip| ip != 0)
            .collect();
        out.push(RawSample {
            key: StackKey {
                unwind: 0,
                pid,
                // pprof-rs records pthread ids, not kernel tids; keep the pid.
                tid: pid,
                cgroup_id: 0,
                comm,
                kernel: Arc::from(Vec::new()),
                user: user.into(),
            },
            count: count as u64,
        });
    }
    Ok(out)
}
