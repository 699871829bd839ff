//! What an off-CPU profile in flight costs, during a context-switch-heavy load: a child
//! process whose two threads ping-pong one byte over a pair of pipes (every round trip
//! is two voluntary context switches). Alternates rounds without and with an
//! `type=offcpu` profile of the child (the on-demand path, in this process, as the agent
//! runs it) and prints, per round and as medians: this process's CPU (user + system,
//! % of one core: the agent's share), the child's context switches per second, and the
//! child's CPU time per context switch (the BPF programs run in the child's context, so
//! their cost per switch shows there).
//! For scripts/bench-offcpu.sh.
//!
//! Usage: offcpu_bench [--rounds 10] [--seconds 3] [--ratio 1] [--all 0|1]
//!        (`--all 1`: profile the whole node, `all=true`, instead of the load's pid)
//!        offcpu_bench --load   (the child)

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nodescope_model::selfmetrics::SelfMetrics;
use nodescope_model::signal::Emitter;
use nodescope_model::status::StatusRegistry;
use nodescope_profiler::request::{ProfileKind, ProfileRequest, Target};
use nodescope_profiler::{Format, ProfilerContext, ProfilingConfig};
use tokio_util::sync::CancellationToken;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Two threads ping-ponging a byte over two pipes, forever, both pinned to the last CPU
/// (every switch is a direct hand-off: a CPU-bound, steady rate).
fn load() -> ! {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let cpu = (libc::sysconf(libc::_SC_NPROCESSORS_ONLN).max(1) - 1) as usize;
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    let mut a = [0i32; 2];
    let mut b = [0i32; 2];
    // SAFETY: pipe() writes two descriptors into the arrays we own.
    unsafe {
        assert_eq!(libc::pipe(a.as_mut_ptr()), 0);
        assert_eq!(libc::pipe(b.as_mut_ptr()), 0);
    }
    use std::os::fd::FromRawFd;
    // SAFETY: the descriptors were just created and are owned by these files alone.
    let (mut a_r, mut a_w, mut b_r, mut b_w) = unsafe {
        (
            std::fs::File::from_raw_fd(a[0]),
            std::fs::File::from_raw_fd(a[1]),
            std::fs::File::from_raw_fd(b[0]),
            std::fs::File::from_raw_fd(b[1]),
        )
    };
    std::thread::spawn(move || {
        let mut c = [0u8; 1];
        loop {
            a_r.read_exact(&mut c).expect("read a");
            b_w.write_all(&c).expect("write b");
        }
    });
    let mut c = [0u8; 1];
    loop {
        a_w.write_all(&c).expect("write a");
        b_r.read_exact(&mut c).expect("read b");
    }
}

/// On-CPU nanoseconds of every thread of `pid` (schedstat; BPF programs that run in its
/// context are charged to it).
fn task_cpu_ns(pid: u32) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in rd.flatten() {
            let s = std::fs::read_to_string(e.path().join("schedstat")).unwrap_or_default();
            n += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    n
}

/// Voluntary + involuntary context switches of every thread of `pid`.
fn switches(pid: u32) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in rd.flatten() {
            let s = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
            for l in s.lines() {
                if l.starts_with("voluntary_ctxt_switches:")
                    || l.starts_with("nonvoluntary_ctxt_switches:")
                {
                    n += l
                        .split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
        }
    }
    n
}

/// This process's user + system CPU time.
fn self_cpu() -> Duration {
    // SAFETY: getrusage writes into the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--load") {
        load();
    }
    let rounds = arg("--rounds", 10) as usize;
    let seconds = arg("--seconds", 3);
    let ratio = arg("--ratio", 1) as u32;
    let all = arg("--all", 0) != 0;
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .arg("--load")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawning the load");
    let pid = child.id();
    let (emitter, _rx) = Emitter::for_test(4);
    let svc = ProfilingConfig {
        continuous: false,
        offcpu_sample_ratio: ratio,
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
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut off: (Vec<f64>, Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new(), Vec::new());
    let mut on: (Vec<f64>, Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new(), Vec::new());
    println!("round mode    agent_cpu_%  load_switches_per_s  load_cpu_ns_per_switch");
    for r in 0..rounds * 2 {
        let profiled = r % 2 == 1;
        let (c0, s0, l0, t0) = (self_cpu(), switches(pid), task_cpu_ns(pid), Instant::now());
        if profiled {
            let res = svc
                .profile(
                    ProfileRequest {
                        target: if all { Target::All } else { Target::Pid(pid) },
                        seconds,
                        hz: 99,
                        format: Format::Pprof,
                        kind: ProfileKind::OffCpu,
                    },
                    CancellationToken::new(),
                )
                .await
                .expect("offcpu profile");
            assert!(!res.body.is_empty());
        } else {
            tokio::time::sleep(Duration::from_secs(seconds)).await;
        }
        let dt = t0.elapsed().as_secs_f64();
        let cpu = (self_cpu() - c0).as_secs_f64() / dt * 100.0;
        let n = switches(pid) - s0;
        let sw = n as f64 / dt;
        let per = (task_cpu_ns(pid) - l0) as f64 / n.max(1) as f64;
        println!(
            "{:5} {:7} {:11.2}  {:19.0}  {:22.0}",
            r / 2,
            if profiled { "offcpu" } else { "none" },
            cpu,
            sw,
            per
        );
        let side = if profiled { &mut on } else { &mut off };
        side.0.push(cpu);
        side.1.push(sw);
        side.2.push(per);
    }
    let _ = child.kill();
    let _ = child.wait();
    let (cpu_off, cpu_on) = (median(&mut off.0), median(&mut on.0));
    let (sw_off, sw_on) = (median(&mut off.1), median(&mut on.1));
    println!(
        "median agent CPU: none {cpu_off:.2} %, offcpu {cpu_on:.2} % of one core (+{:.2} points)",
        cpu_on - cpu_off
    );
    println!(
        "median load context switches/s: none {sw_off:.0}, offcpu {sw_on:.0} (ratio offcpu/none {:.3})",
        sw_on / sw_off
    );
    let (per_off, per_on) = (median(&mut off.2), median(&mut on.2));
    println!(
        "median load CPU per context switch: none {per_off:.0} ns, offcpu {per_on:.0} ns (ratio {:.3}, +{:.0} ns)",
        per_on / per_off,
        per_on - per_off
    );
}
