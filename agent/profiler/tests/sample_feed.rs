//! The profiler's feed to the flight recorder: timestamped, symbolized samples offered to
//! a `dyn SampleSink` found in the services registry, and `dyn ProfilerControl` (rate
//! boost), with no exporter taking profiles.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use nodescope_model::feeds::{ProfilerControl, SampleBatch, SampleKind, SampleSink};
use nodescope_model::services::Services;
use nodescope_profiler::ProfilingConfig;
use nodescope_testsupport::require_root;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Collect(Mutex<Vec<SampleBatch>>);

impl SampleSink for Collect {
    fn offer(&self, batch: SampleBatch) {
        self.0.lock().push(batch);
    }
}

/// (samples, samples in burn_hot_75, samples under main, batch hz) of `pid` taken in [from, to].
fn ours(
    batches: &[SampleBatch],
    pid: u32,
    from: SystemTime,
    to: SystemTime,
) -> (u64, u64, u64, u32) {
    let (mut n, mut hot, mut main, mut hz) = (0, 0, 0, 0);
    for b in batches {
        for s in b
            .samples
            .iter()
            .filter(|s| s.pid == pid && s.time >= from && s.time <= to)
        {
            n += 1;
            hz = b.hz;
            let st = &b.stacks[s.stack as usize];
            assert_eq!(&*st.process, "burn");
            if st.frames.iter().any(|f| &*f.function == "burn_hot_75") {
                hot += 1;
            }
            // Frame pointers skip `main` when the leaf has no frame of its own: the
            // root is glibc's caller of main.
            if st
                .frames
                .iter()
                .any(|f| &*f.function == "main" || &*f.function == "__libc_start_call_main")
            {
                main += 1;
            }
        }
    }
    (n, hot, main, hz)
}

/// CPU time of a process so far (utime + stime), from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &st[st.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no memory-safety preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Measures `secs` of the workload: (samples of it timestamped inside the window, the
/// samples its CPU time predicts at `hz`, hot, main, batch hz).
async fn window(sink: &Collect, pid: u32, hz: u32, secs: u64) -> (u64, f64, u64, u64, u32) {
    let (t0, c0) = (SystemTime::now(), cpu_seconds(pid));
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (t1, c1) = (SystemTime::now(), cpu_seconds(pid));
    // Wait until every sample of the window has reached the sink (drains every 500 ms,
    // then symbolization): a sample taken after `t1` has arrived.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = sink
            .0
            .lock()
            .iter()
            .any(|b| b.samples.iter().any(|s| s.time > t1));
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no sample after the window within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (n, hot, main, bhz) = ours(&sink.0.lock(), pid, t0, t1);
    (n, (c1 - c0) * hz as f64, hot, main, bhz)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_sink_gets_timestamped_batches_and_boost_raises_the_rate() {
    const T: &str = "sample_sink_gets_timestamped_batches_and_boost_raises_the_rate";
    if !require_root(T) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = build_workload(T, "burn", dir.path()) else {
        return;
    };
    let w = Workload::spawn(&bin);
    let sink = Arc::new(Collect::default());
    let services = Services::default();
    services.provide::<dyn SampleSink>(sink.clone());
    // No exporter takes profiles: continuous sampling runs for the sink alone.
    let mut h = serve_with(
        ProfilingConfig {
            continuous: true,
            hz: 19,
            interval_secs: 60,
            drain_interval_ms: 500,
            ..Default::default()
        },
        services,
        false,
    )
    .await;
    let control = h.svc.control();
    let shutdown = CancellationToken::new();
    h.svc.spawn(shutdown.clone());
    // Wait for the first batch (loading and the first symbolization take a while).
    // (Generous deadlines: a debug build symbolizing every process of a busy node.)
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink.0.lock().is_empty() {
        assert!(Instant::now() < deadline, "no batch within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(control.current_hz(), 19);
    let (n, want, hot, main, hz) = window(&sink, w.pid(), 19, 4).await;
    eprintln!("19 Hz: {n} samples, {want:.1} predicted by CPU time, {hot} hot, {main} under main");
    assert_eq!(hz, 19);
    assert!(
        want >= 10.0,
        "workload got too little CPU ({want} samples' worth)"
    );
    assert!(
        (n as f64) >= want * 0.7 && (n as f64) <= want * 1.3,
        "{n} samples vs {want:.1} predicted"
    );
    assert!(hot * 100 / n >= 50, "{hot}/{n} in burn_hot_75");
    assert!(main * 100 / n >= 90, "{main}/{n} reach main or its caller");
    {
        let b = sink.0.lock();
        let cpus = std::thread::available_parallelism().unwrap().get() as u32;
        for s in b.iter().flat_map(|b| b.samples.iter()) {
            assert!(s.cpu < cpus, "cpu {}", s.cpu);
            assert_eq!(s.kind, SampleKind::OnCpu);
        }
    }
    // No profile goes to the pipeline.
    assert!(h.rx.try_recv().is_err());

    // Boost to 97 Hz for a while: the rate in force rises, then falls back.
    control
        .boost(97, SystemTime::now() + Duration::from_secs(30))
        .unwrap();
    // The next drain tick (500 ms) closes the window and loads a new sampler.
    let t_boost = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(25);
    while control.current_hz() != 97 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(control.current_hz(), 97);
    eprintln!("boost took effect after {:?}", t_boost.elapsed());
    let (nb, wantb, _, _, hzb) = window(&sink, w.pid(), 97, 2).await;
    eprintln!("97 Hz: {nb} samples, {wantb:.1} predicted by CPU time");
    assert_eq!(hzb, 97);
    assert!(
        (nb as f64) >= wantb * 0.7 && (nb as f64) <= wantb * 1.3,
        "{nb} samples vs {wantb:.1} predicted at 97 Hz"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while control.current_hz() != 19 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(control.current_hz(), 19);
    assert!(control.boost(5000, SystemTime::now()).is_err());
    shutdown.cancel();
    drop(w);
}

/// With continuous profiling off, the status still says whether eBPF works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_has_ebpf_detail_with_continuous_off() {
    const T: &str = "status_has_ebpf_detail_with_continuous_off";
    if !require_root(T) {
        return;
    }
    let h = serve(on_demand_only()).await;
    let shutdown = CancellationToken::new();
    let j = h.svc.spawn(shutdown.clone()).expect("startup check thread");
    j.join().unwrap();
    let st = h.status.snapshot();
    let s = st.iter().find(|s| s.name == "profiler").unwrap();
    assert_eq!(
        s.details.get("ebpf").map(String::as_str),
        Some("up"),
        "{s:?}"
    );
    assert!(h.svc.control().boost(99, SystemTime::now()).is_err());
    assert_eq!(h.svc.control().current_hz(), 0);
}
