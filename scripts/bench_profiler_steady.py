#!/usr/bin/env python3
# Steady-state cost of the continuous profiler (agent/profiler/examples/continuous_bench,
# release build): per rate, start it, wait WARMUP seconds (tables built, binaries
# symbolized), then measure the process CPU, the BPF program time (kernel.bpf_stats_enabled
# must be 1; restore it to 0 afterwards) and BPF ns per sample over MEASURE seconds.
# Usage: kernel.bpf_stats_enabled=1; python3 scripts/bench_profiler_steady.py BIN WARMUP MEASURE HZ...
# WINDOWS=N (default 1) measures N consecutive windows of MEASURE seconds per rate and
# prints each and their median.
import json, os, signal, statistics, subprocess, sys, time
binp = sys.argv[1]; warm = float(sys.argv[2]); meas = float(sys.argv[3])
tck = os.sysconf("SC_CLK_TCK")
def cpu(pid):
    rest = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / tck
def bpf():
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True).stdout
    ps = [p for p in json.loads(out or "[]") if p.get("name") == "nodescope_profile"]
    return sum(p.get("run_time_ns", 0) for p in ps), sum(p.get("run_cnt", 0) for p in ps)
def kb(pid, k):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith(k + ":"): return int(l.split()[1])
for hz in sys.argv[4:]:
    p = subprocess.Popen([binp, "--hz", hz], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(warm)
    rows = []
    for w in range(int(os.environ.get("WINDOWS", "1"))):
        c0, (b0, n0), t0 = cpu(p.pid), bpf(), time.monotonic()
        time.sleep(meas)
        c1, (b1, n1), t1 = cpu(p.pid), bpf(), time.monotonic()
        dt = t1 - t0
        a, b = 100 * (c1 - c0) / dt, 100 * (b1 - b0) / 1e9 / dt
        rows.append((a + b, a, b))
        print(f"hz={hz} warmup={warm:.0f}s window={w + 1} measure={meas:.0f}s agent={a:.3f}% bpf={b:.3f}% "
              f"ns/sample={(b1-b0)/max(n1-n0,1):.0f} VmHWM={kb(p.pid,'VmHWM')/1024:.1f}MB", flush=True)
    if len(rows) > 1:
        print(f"hz={hz} MEDIAN of {len(rows)} windows: total={statistics.median(r[0] for r in rows):.3f}% "
              f"agent={statistics.median(r[1] for r in rows):.3f}% bpf={statistics.median(r[2] for r in rows):.3f}% "
              f"max total={max(r[0] for r in rows):.3f}%", flush=True)
    p.send_signal(signal.SIGTERM); p.wait()
