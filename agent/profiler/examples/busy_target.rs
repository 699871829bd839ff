//! A CPU-busy target for the symbolizer peak-RSS benchmark (scripts/bench-profiling.sh
//! `peak-rss`). Built in the dev profile it is a large binary with full DWARF (well over
//! 100 MB: every dependency of this crate is linked in), like the test binaries and debug
//! builds the profiler meets on a developer's or CI node. It spends its CPU in many
//! different crates (blazesym symbolizing itself, pprof building, gzip, inferno's SVG
//! flame graph), so the profiler's samples land in many compilation units of that binary.
//!
//! Usage: busy_target [--seconds SECS]   (0 = until killed; default 0)

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nodescope_model::selfmetrics::SelfMetrics;
use nodescope_profiler::metrics::ProfilerMetrics;
use nodescope_profiler::output::{build_pprof, folded, gzip_pprof, svg, ProfileMeta};
use nodescope_profiler::samples::{RawSample, StackKey};
use nodescope_profiler::symbolize::{Symbolizer, SymbolizerLimits};

#[inline(never)]
fn own_addresses() -> Vec<u64> {
    vec![
        own_addresses as *const () as usize as u64 + 1,
        main as *const () as usize as u64 + 1,
        build_pprof as *const () as usize as u64 + 1,
        gzip_pprof as *const () as usize as u64 + 1,
        folded as *const () as usize as u64 + 1,
        svg as *const () as usize as u64 + 1,
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let pid = std::process::id();
    let start = Instant::now();
    let mut rounds = 0u64;
    while seconds == 0 || start.elapsed() < Duration::from_secs(seconds) {
        // A fresh symbolizer each round, so blazesym's parsing code runs every time.
        let s = Symbolizer::new(
            "/proc".into(),
            SymbolizerLimits {
                debug_info: true,
                ..Default::default()
            },
            ProfilerMetrics::new(&SelfMetrics::new()),
        );
        let samples: Vec<RawSample> = (0..64)
            .map(|i| RawSample {
                key: StackKey {
                    unwind: 0,
                    pid,
                    tid: pid + i,
                    cgroup_id: 0,
                    comm: format!("busy{i}").into(),
                    kernel: Arc::from(Vec::new()),
                    user: own_addresses().into(),
                },
                count: 1 + u64::from(i),
            })
            .collect();
        let resolved = s.resolve(&samples);
        let meta = ProfileMeta {
            start: SystemTime::now(),
            duration: Duration::from_secs(1),
            hz: 19,
            comments: vec!["busy_target".into()],
        };
        let p = build_pprof(&resolved, &meta);
        let gz = gzip_pprof(&p).expect("gzip");
        let f = folded(&resolved);
        let svg = svg(&resolved, "busy").expect("svg");
        rounds += 1;
        std::hint::black_box((gz.len(), f.len(), svg.len()));
    }
    println!("rounds={rounds}");
}
