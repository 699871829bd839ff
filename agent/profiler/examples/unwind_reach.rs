//! Profiles one pid for a few seconds through the on-demand path (as
//! `/debug/pprof/profile?pid=` does, DWARF unwinding on) and prints the share of samples
//! whose user stack contains `--want` (e.g. `main` or `_start`), for
//! scripts/bench-unwind.sh.
//!
//! Usage: unwind_reach --pid N [--seconds S] [--hz H] --want NAME

use std::path::PathBuf;

use nodescope_model::selfmetrics::SelfMetrics;
use nodescope_model::signal::Emitter;
use nodescope_model::status::StatusRegistry;
use nodescope_profiler::request::{ProfileRequest, Target};
use nodescope_profiler::{Format, ProfilerContext, ProfilingConfig};
use tokio_util::sync::CancellationToken;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let pid: u32 = arg("--pid").and_then(|v| v.parse().ok()).expect("--pid N");
    let seconds: u64 = arg("--seconds").and_then(|v| v.parse().ok()).unwrap_or(5);
    let hz: u32 = arg("--hz").and_then(|v| v.parse().ok()).unwrap_or(99);
    let want = arg("--want").expect("--want NAME");
    let (emitter, _rx) = Emitter::for_test(4);
    let svc = ProfilingConfig {
        continuous: false,
        ..Default::default()
    }
    .build(ProfilerContext {
        emitter,
        status: StatusRegistry::default(),
        self_metrics: SelfMetrics::new(),
        pods: None,
        host_proc: PathBuf::from("/proc"),
        services: Default::default(),
        emit_profiles: false,
    });
    let r = svc
        .profile(
            ProfileRequest {
                target: Target::Pid(pid),
                seconds,
                hz,
                format: Format::Folded,
                kind: Default::default(),
            },
            CancellationToken::new(),
        )
        .await
        .expect("profile");
    let text = String::from_utf8_lossy(&r.body);
    let (mut total, mut hit) = (0u64, 0u64);
    for l in text.lines() {
        let Some((stack, n)) = l.rsplit_once(' ') else {
            continue;
        };
        let n: u64 = n.parse().unwrap_or(0);
        total += n;
        if stack
            .split(';')
            .skip(1)
            .filter(|f| !f.ends_with("_[k]"))
            .any(|f| f == want || f.starts_with(&format!("{want}(")))
        {
            hit += n;
        }
    }
    println!(
        "nodescope pid={pid} samples={total} reach_{want}={hit} share={:.2}%",
        hit as f64 * 100.0 / total.max(1) as f64
    );
}
