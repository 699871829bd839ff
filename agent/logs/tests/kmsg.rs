//! The kernel log source against the real `/dev/kmsg` (root): lines the test writes come
//! back with their priority, facility and a wall-clock time near now; a restart resumes
//! after the last acknowledged sequence number.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nodescope_logs::kmsgsource::{KmsgSource, KmsgSpec};
use nodescope_logs::metrics::SourceMetrics;
use nodescope_model::selfmetrics::SelfMetrics;
use nodescope_model::{Emitter, LogRecord, Severity, Signal};

fn run_once(state: &std::path::Path, want: &str, n: usize) -> Vec<LogRecord> {
    let (emitter, mut rx) = Emitter::for_test(64);
    let spec = KmsgSpec {
        path: "/dev/kmsg".into(),
        boot_id_path: "/proc/sys/kernel/random/boot_id".into(),
        checkpoint_dir: state.to_path_buf(),
        node_name: Some("n1".into()),
        batch_lines: 1000,
        max_inflight_batches: 8,
    };
    let src = KmsgSource::new(
        spec,
        emitter,
        SourceMetrics::register(&SelfMetrics::new(), "kmsg"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let t = std::thread::spawn(move || src.run(|| s.load(Ordering::SeqCst)));
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < n && Instant::now() < deadline {
        match rx.try_recv() {
            Ok(Signal::Logs(mut b)) => {
                got.extend(b.iter().filter(|r| r.body.contains(want)).cloned());
                if let Some(a) = b.ack.take() {
                    a.complete();
                }
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    // Let the checkpoint follow the last acknowledgement, then stop.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    while let Ok(Signal::Logs(mut b)) = rx.try_recv() {
        got.extend(b.iter().filter(|r| r.body.contains(want)).cloned());
        if let Some(a) = b.ack.take() {
            a.complete();
        }
    }
    t.join().unwrap();
    got
}

#[test]
fn lines_written_to_dev_kmsg_come_back_with_their_priority_and_resume_works() {
    if !nodescope_testsupport::require_root("kmsg_roundtrip") {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let tag = format!("nodescope-kmsg-test-{}", std::process::id());
    let mut k = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .unwrap();
    // <3> err, <4> warning, facility user (the kernel's default for writes).
    k.write_all(format!("<3>{tag} first\n").as_bytes()).unwrap();
    k.write_all(format!("<4>{tag} second\n").as_bytes())
        .unwrap();
    let got = run_once(state.path(), &tag, 2);
    assert_eq!(got.len(), 2, "{got:?}");
    let attr = |r: &LogRecord, k: &str| {
        r.attributes
            .iter()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(got[0].severity, Severity::Error);
    assert_eq!(attr(&got[0], "priority"), "err");
    assert_eq!(attr(&got[0], "facility"), "user");
    assert_eq!(got[1].severity, Severity::Warn);
    assert_eq!(attr(&got[1], "priority"), "warning");
    let age = SystemTime::now()
        .duration_since(got[0].timestamp)
        .unwrap_or_default();
    assert!(
        age < Duration::from_secs(30),
        "monotonic to wall: {age:?} old"
    );
    let s0: u64 = attr(&got[0], "seq").parse().unwrap();
    let s1: u64 = attr(&got[1], "seq").parse().unwrap();
    assert!(s1 > s0);
    // Restart: the two lines are not read again; a new one is.
    k.write_all(format!("<6>{tag} third\n").as_bytes()).unwrap();
    let again = run_once(state.path(), &tag, 1);
    assert_eq!(again.len(), 1, "{again:?}");
    assert!(again[0].body.ends_with("third"));
}
