//! Runs the continuous profiler exactly as the agent does (`ProfilingConfig::build` +
//! `ProfilerService::spawn`), with a pipeline stand-in that consumes the emitted profiles,
//! until SIGTERM/SIGINT or `--seconds`. Used by scripts/bench-profiling.sh.
//!
//! Usage: continuous_bench [--hz N] [--interval SECS] [--seconds SECS] [--debug-info 0|1]
//!        [--debug-info-max-mb MB]

use std::path::PathBuf;
use std::time::Duration;

use nodescope_model::selfmetrics::SelfMetrics;
use nodescope_model::signal::{Emitter, Signal};
use nodescope_model::status::StatusRegistry;
use nodescope_profiler::{ProfilerContext, ProfilingConfig};
use tokio_util::sync::CancellationToken;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let hz = arg("--hz", 19) as u32;
    let interval = arg("--interval", 15);
    let seconds = arg("--seconds", 0);
    let debug_info = arg("--debug-info", 1) != 0;
    let defaults = ProfilingConfig::default();
    let debug_info_max_binary_mb = arg("--debug-info-max-mb", defaults.debug_info_max_binary_mb);
    let cfg = ProfilingConfig {
        continuous: true,
        hz,
        interval_secs: interval,
        debug_info,
        debug_info_max_binary_mb,
        ..defaults
    };
    let mut issues = nodescope_model::config::Issues::default();
    cfg.validate("profiling", &mut issues);
    if !issues.is_empty() {
        for i in &issues.list {
            eprintln!("config: {i}");
        }
        std::process::exit(2);
    }
    let (emitter, mut rx): (Emitter, _) = Emitter::for_test(256);
    let status = StatusRegistry::default();
    let metrics = SelfMetrics::new();
    let svc = cfg.build(ProfilerContext {
        emitter,
        status: status.clone(),
        self_metrics: metrics.clone(),
        pods: None,
        host_proc: PathBuf::from("/proc"),
        services: Default::default(),
        emit_profiles: true,
    });
    let shutdown = CancellationToken::new();
    svc.spawn(shutdown.clone());
    let consumer = tokio::spawn(async move {
        let (mut n, mut bytes) = (0u64, 0u64);
        while let Some(sig) = rx.recv().await {
            if let Signal::Profile(p) = sig {
                n += 1;
                bytes += p.pprof_gz.len() as u64;
            }
        }
        (n, bytes)
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    let limit = async {
        if seconds > 0 {
            tokio::time::sleep(Duration::from_secs(seconds)).await
        } else {
            std::future::pending::<()>().await
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = limit => {}
    }
    shutdown.cancel();
    // Let the profiler thread emit its last window and stop.
    for _ in 0..100 {
        let st = status.snapshot();
        if st.iter().all(|s| {
            !matches!(
                s.state,
                nodescope_model::ComponentState::Ok | nodescope_model::ComponentState::Starting
            )
        }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(svc);
    consumer.abort();
    let m = svc_metrics(&metrics);
    println!("{m}");
}

fn svc_metrics(m: &SelfMetrics) -> String {
    let mut out = Vec::new();
    for f in m.collect() {
        if f.name.starts_with("nodescope_profiler_") || f.name.starts_with("nodescope_symbolizer_")
        {
            for p in &f.points {
                if let nodescope_model::Value::Number(v) = p.value {
                    let l: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    out.push(format!("{}{{{}}} {v}", f.name, l.join(",")));
                }
            }
        }
    }
    out.join("\n")
}
