//! Pod logs end to end: generators write sequence-numbered CRI lines (partial lines, rename
//! rotation) into `<host_root>/root/var/log/pods`; the real agent ships them to a Loki
//! receiver that decodes with Loki's official push.proto; the agent is killed with SIGKILL
//! 20 times at random moments, with the backend up, down, and down for a 60 s outage
//! across three kills. Every sequence number must arrive; duplicates are counted and
//! reported.

mod common;
#[path = "../../../exporters/loki/tests/common/mod.rs"]
mod loki_recv;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Writes `pod-<i>`'s lines: `seq=<n> ...`, every 7th split into CRI partial lines, the
/// file renamed away (kubelet's rotation) every 256 KiB.
fn generator(dir: PathBuf, pod: usize, stop: Arc<AtomicBool>, next: Arc<AtomicU64>, per_sec: u64) {
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("0.log");
    let mut f = std::fs::File::create(&path).unwrap();
    let mut written = 0usize;
    let mut rotations = 0;
    let start = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let due = (start.elapsed().as_secs_f64() * per_sec as f64) as u64;
        while sent < due {
            let seq = next.fetch_add(1, Ordering::SeqCst);
            let ts = rfc3339(SystemTime::now());
            let body = format!("seq={seq} pod={pod} {}", "p".repeat((seq % 97) as usize));
            let mut out = String::new();
            if seq.is_multiple_of(7) {
                let (a, b) = body.split_at(body.len() / 2);
                out.push_str(&format!("{ts} stdout P {a}\n{ts} stdout F {b}\n"));
            } else {
                out.push_str(&format!("{ts} stderr F {body}\n"));
            }
            f.write_all(out.as_bytes()).unwrap();
            written += out.len();
            sent += 1;
            if written > 256 * 1024 {
                rotations += 1;
                std::fs::rename(&path, dir.join(format!("0.log.{rotations}"))).unwrap();
                f = std::fs::File::create(&path).unwrap();
                written = 0;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn agent_toml(host_root: &Path, state: &Path, loki: &str) -> String {
    format!(
        "host_root = \"{}\"\nshutdown_timeout = \"2s\"\n\n\
         [host]\nenabled = false\n[network]\nenabled = false\n[profiling]\nenabled = false\n[ui]\nenabled = false\n\n\
         [logs]\nstate_dir = \"{}\"\npoll_interval = \"50ms\"\ndiscover_interval = \"200ms\"\nbatch_lines = 500\n\
         [logs.kmsg]\nenabled = false\n\n\
         [exporters.loki]\nenabled = true\nendpoint = \"{loki}\"\n\
         [exporters.loki.batch]\ntimeout = \"100ms\"\n\
         [exporters.loki.retry]\ninitial_backoff = \"100ms\"\nmax_backoff = \"500ms\"\nrequest_timeout = \"3s\"\n",
        host_root.display(),
        state.display()
    )
}

fn seq_of(line: &str) -> Option<u64> {
    line.strip_prefix("seq=")?.split(' ').next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_twenty_times_with_loki_up_and_down_loses_no_line() {
    let test = "kill_9_twenty_times_with_loki_up_and_down_loses_no_line";
    if !require_root(test) {
        return;
    }
    let host = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/proc", host.path().join("proc")).unwrap();
    std::os::unix::fs::symlink("/sys", host.path().join("sys")).unwrap();
    let pods = host.path().join("root/var/log/pods");
    std::fs::create_dir_all(&pods).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut sink = loki_recv::Sink::start().await;
    let toml = agent_toml(host.path(), state.path(), &sink.url());

    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let mut gens = Vec::new();
    for i in 0..3 {
        let dir = pods.join(format!("shop_pod-{i}_uid-{i}/app"));
        let (s, n) = (stop.clone(), next.clone());
        gens.push(std::thread::spawn(move || generator(dir, i, s, n, 700)));
    }

    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move |lo: u64, hi: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        lo + rng % (hi - lo)
    };
    let mut down = false;
    let mut kills = Vec::new();
    for k in 0..20 {
        // Kills 6-9 happen with the backend down; kills 13-15 span a 60 s outage.
        let want_down = (6..10).contains(&k) || (13..16).contains(&k);
        if want_down && !down {
            sink.down().await;
            down = true;
        } else if !want_down && down {
            sink.up().await;
            down = false;
        }
        let t = toml.clone();
        let agent = tokio::task::spawn_blocking(move || start_agent(&t))
            .await
            .unwrap();
        let run = if (13..16).contains(&k) {
            rand(19_500, 20_500)
        } else {
            rand(300, 1800)
        };
        tokio::time::sleep(Duration::from_millis(run)).await;
        let mut agent = agent;
        let before = sink.accepted_entries().len();
        agent.proc.child.kill().unwrap(); // SIGKILL
        let _ = agent.proc.child.wait();
        kills.push((k, down, run, before));
    }
    if down {
        sink.up().await;
    }
    let t = toml.clone();
    let agent = tokio::task::spawn_blocking(move || start_agent(&t))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for g in gens {
        g.join().unwrap();
    }
    let total = next.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut counts: HashMap<u64, u32>;
    loop {
        counts = HashMap::new();
        for (_, e) in sink.accepted_entries() {
            if let Some(s) = seq_of(&e.line) {
                *counts.entry(s).or_default() += 1;
            }
        }
        if counts.len() as u64 >= total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, metrics) = tokio::task::spawn_blocking({
        let u = agent.url("/metrics");
        move || http_get(&u).unwrap()
    })
    .await
    .unwrap();
    drop(agent);
    let missing: Vec<u64> = (0..total).filter(|s| !counts.contains_key(s)).collect();
    let dups: u64 = counts.values().map(|&c| u64::from(c - 1)).sum();
    let entries = sink.accepted_entries();
    // Per-stream order: within each push request a stream's entries never go back in time,
    // and nothing is older than its stream's newest entry by Loki's 1 h window.
    let mut newest: HashMap<String, i128> = HashMap::new();
    for r in sink.requests().iter().filter(|r| r.status == 200) {
        for s in &r.streams {
            let mut prev = i128::MIN;
            for e in &s.entries {
                assert!(
                    e.ts_nanos >= prev,
                    "entries out of order within a push of {}",
                    s.labels
                );
                prev = e.ts_nanos;
                let n = newest.entry(s.labels.clone()).or_insert(e.ts_nanos);
                assert!(
                    *n - e.ts_nanos < 3_600_000_000_000,
                    "entry too far behind in {}",
                    s.labels
                );
                *n = (*n).max(e.ts_nanos);
            }
        }
    }
    let labels_ok = entries.iter().all(|(l, _)| {
        l.contains("namespace=\"shop\"")
            && l.contains("container=\"app\"")
            && l.contains("job=\"shop/app\"")
    });
    eprintln!(
        "lines {total}, received {} entries, unique {}, missing {}, duplicates {dups} over {} kills; kills (index, backend down, ms alive, entries before): {kills:?}",
        entries.len(),
        counts.len(),
        missing.len(),
        kills.len()
    );
    for l in metrics
        .lines()
        .filter(|l| l.starts_with("nodescope_logs_") && l.contains("source=\"pods\""))
    {
        eprintln!("{l}");
    }
    assert!(
        missing.is_empty(),
        "lost lines: first {:?}",
        &missing[..missing.len().min(20)]
    );
    assert!(labels_ok, "stream labels");
    // Duplicates only of what was in flight at each kill: at most one push request (the
    // exporter's one payload in flight) per kill.
    let mut sizes: Vec<usize> = sink
        .requests()
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.streams.iter().map(|s| s.entries.len()).sum())
        .collect();
    sizes.sort_unstable();
    let largest = sizes.last().copied().unwrap_or(0);
    eprintln!(
        "duplicates per kill {:.0}; push requests {}, entries per request median {} max {largest}",
        dups as f64 / kills.len() as f64,
        sizes.len(),
        sizes.get(sizes.len() / 2).copied().unwrap_or(0)
    );
    assert!(
        dups <= kills.len() as u64 * largest as u64,
        "{dups} duplicates"
    );
}
