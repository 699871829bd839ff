//! Benchmark driver for docs/benchmarks.md (run by scripts/bench-logs.sh):
//!
//! - `gen <dir> <pods> <mib>`: writes `<dir>/ns_pod-<i>_uid-<i>/c/0.log` CRI files (every
//!   10th line split into P/F partials), `<mib>` MiB in total; prints the line count.
//! - `tail <dir> <state> <lines>`: the tailer (pods layout) into the Loki encoder, every
//!   batch encoded (protobuf + snappy) and acknowledged; stops when `<lines>` lines were
//!   encoded; prints wall and CPU seconds (getrusage of this process) as JSON.
//! - `follow <dir> <state> <seconds>`: the same for a fixed time (steady-state cost).
//! - `append <dir> <pods> <lines_per_sec> <seconds>`: appends CRI lines at a fixed rate.
//! - `hold <dir> <state> <seconds>`: the backend is down: batches are encoded and held with
//!   their acknowledgements (as an exporter's memory backlog would), never acknowledged;
//!   prints the peak RSS (VmHWM).

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nodescope_delivery::Encoder;
use nodescope_exporter_loki::LokiEncoder;
use nodescope_logs::format::Format;
use nodescope_logs::glob::Glob;
use nodescope_logs::meta::{parse_pod_path, FileMeta};
use nodescope_logs::metrics::SourceMetrics;
use nodescope_logs::tailer::{StartAt, Tailer, TailerSpec};
use nodescope_logs::time::format_rfc3339;
use nodescope_model::selfmetrics::SelfMetrics;
use nodescope_model::{Emitter, Signal};

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn line(seq: u64, pod: usize) -> String {
    let ts = format_rfc3339(SystemTime::now());
    let body = format!(
        "seq={seq} pod={pod} level=info msg=\"request served\" path=/api/v1/items/{} status=200 duration_ms={} user_agent=\"Mozilla/5.0 (X11; Linux x86_64)\"",
        seq % 10_000,
        seq % 250
    );
    if seq.is_multiple_of(10) {
        let (a, b) = body.split_at(body.len() / 2);
        format!("{ts} stdout P {a}\n{ts} stdout F {b}\n")
    } else {
        format!("{ts} stdout F {body}\n")
    }
}

fn gen(dir: &Path, pods: usize, mib: u64) {
    let per = (mib << 20) / pods as u64;
    let mut lines = 0u64;
    for p in 0..pods {
        let d = dir.join(format!("ns_pod-{p}_uid-{p}/c"));
        std::fs::create_dir_all(&d).unwrap();
        let mut f = std::io::BufWriter::new(std::fs::File::create(d.join("0.log")).unwrap());
        let mut n = 0u64;
        let mut seq = 0u64;
        while n < per {
            let l = line(seq, p);
            n += l.len() as u64;
            f.write_all(l.as_bytes()).unwrap();
            seq += 1;
        }
        lines += seq;
    }
    println!("{lines}");
}

fn spec(dir: &Path, state: &Path) -> TailerSpec {
    TailerSpec {
        name: "bench".into(),
        include: vec![Glob::new(&format!("{}/*/*/*.log", dir.display())).unwrap()],
        exclude: vec![],
        follow_links: false,
        format: Format::Auto,
        multiline: None,
        meta: Arc::new(|p: &Path| match parse_pod_path(p) {
            Some(pp) => FileMeta::for_pod(&pp, p, Some("node1"), None),
            None => FileMeta::for_file(p, "bench", None),
        }),
        start_at: StartAt::Beginning,
        max_open_files: 256,
        max_tracked_files: 10_000,
        max_line_bytes: 256_000,
        read_chunk_bytes: 256 * 1024,
        max_inflight_bytes: 16 << 20,
        batch_lines: 2000,
        poll_interval: Duration::from_millis(250),
        discover_interval: Duration::from_secs(1),
        rotated_close_after: Duration::from_secs(60),
        file_bytes_per_sec: 0,
        source_bytes_per_sec: 0,
        node_bucket: None,
        checkpoint_dir: state.to_path_buf(),
    }
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs the tailer and an encoding consumer until `done(lines)`; with `hold`, payloads
/// and acknowledgements are kept (backend down) instead of acknowledged.
fn run(dir: &Path, state: &Path, hold: bool, done: impl Fn(u64, Instant) -> bool) {
    let (emitter, mut rx) = Emitter::for_test(64);
    let sm = SelfMetrics::new();
    let m = SourceMetrics::register(&sm, "pods");
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let sp = spec(dir, state);
    let (m2, t0, c0) = (m.clone(), Instant::now(), cpu_seconds());
    let tailer = std::thread::spawn(move || {
        Tailer::new(sp, emitter, m2).run(|| s.load(Ordering::SeqCst), Duration::from_secs(1))
    });
    let mut enc = LokiEncoder::new(vec![("job".into(), "nodescope".into())]);
    let (mut lines, mut payload_bytes) = (0u64, 0u64);
    let mut held = Vec::new();
    let mut held_acks = Vec::new();
    while !done(lines, t0) {
        match rx.try_recv() {
            Ok(Signal::Logs(mut b)) => {
                let ack = b.ack.take();
                lines += b.len() as u64;
                for p in enc.encode(&[Signal::Logs(b)]).unwrap() {
                    payload_bytes += p.body.len() as u64;
                    if hold {
                        held.push(p);
                    }
                }
                if let Some(a) = ack {
                    if hold {
                        held_acks.push(a);
                    } else {
                        a.complete();
                    }
                }
            }
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let hwm = vm_hwm_kib();
    let held_bytes: usize = held
        .iter()
        .map(|p: &nodescope_delivery::Payload| p.body.len())
        .sum();
    let tracked = m.files_tracked.get();
    let cpu = cpu_seconds() - c0;
    stop.store(true, Ordering::SeqCst);
    tailer.join().unwrap();
    drop(held_acks);
    let bytes = m.bytes_read.get();
    println!(
        "{{\"vm_hwm_kib\":{},\"held_payload_bytes\":{},\"files_tracked\":{},\"lines\":{lines},\"bytes\":{bytes},\"payload_bytes\":{payload_bytes},\"wall_s\":{wall:.3},\"cpu_s\":{cpu:.3},\"mib_per_cpu_s\":{:.1},\"checkpoint_writes\":{},\"checkpoint_s\":{:.4}}}",
        hwm,
        held_bytes,
        tracked,
        bytes as f64 / (1 << 20) as f64 / cpu.max(1e-9),
        m.checkpoint_writes.get(),
        m.checkpoint_seconds.get()
    );
}

fn append(dir: &Path, pods: usize, rate: u64, secs: u64) {
    let mut files: Vec<_> = (0..pods)
        .map(|p| {
            let d = dir.join(format!("ns_pod-{p}_uid-{p}/c"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(d.join("0.log"))
                .unwrap()
        })
        .collect();
    let t0 = Instant::now();
    let mut sent = 0u64;
    while t0.elapsed() < Duration::from_secs(secs) {
        let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let p = (sent % pods as u64) as usize;
            files[p].write_all(line(sent, p).as_bytes()).unwrap();
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("{sent}");
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let arg = |i: usize| a.get(i).cloned().unwrap_or_default();
    match arg(1).as_str() {
        "gen" => gen(
            Path::new(&arg(2)),
            arg(3).parse().unwrap(),
            arg(4).parse().unwrap(),
        ),
        "tail" => {
            let want: u64 = arg(4).parse().unwrap();
            run(Path::new(&arg(2)), Path::new(&arg(3)), false, |n, _| {
                n >= want
            })
        }
        "follow" => {
            let secs: u64 = arg(4).parse().unwrap();
            run(Path::new(&arg(2)), Path::new(&arg(3)), false, |_, t0| {
                t0.elapsed() >= Duration::from_secs(secs)
            })
        }
        "hold" => {
            let secs: u64 = arg(4).parse().unwrap();
            run(Path::new(&arg(2)), Path::new(&arg(3)), true, |_, t0| {
                t0.elapsed() >= Duration::from_secs(secs)
            })
        }
        "append" => append(
            Path::new(&arg(2)),
            arg(3).parse().unwrap(),
            arg(4).parse().unwrap(),
            arg(5).parse().unwrap(),
        ),
        _ => eprintln!("usage: logs_bench gen|tail|follow|hold|append ..."),
    }
}
