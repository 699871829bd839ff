#!/usr/bin/env bash
# CPU-profiler overhead benchmark (issue 4). Root only (eBPF, perf -a).
#
# In one run, with both cores kept busy by two spinning workers, alternates ROUNDS times
# (rotating the order each round) between:
#   none    no profiler
#   ns19    nodescope continuous profiler at 19 Hz (examples/continuous_bench: the same
#           ProfilingConfig::build + ProfilerService::spawn path the agent runs)
#   ns99    the same at 99 Hz
#   perf99  perf record -F 99 -a --call-graph dwarf (the anchor of issue 11)
# and reports per mode the medians of: profiler process CPU (% of one core, utime+stime),
# in-kernel BPF program time (% of one core, kernel.bpf_stats_enabled), worker throughput
# relative to `none`, and for nodescope the RSS (VmHWM) and BPF map memory (memlock).
#
# The nodescope phases warm up for WARMUP seconds first (default 16: past the first 15 s
# interval, whose first symbolization of every binary on the node is a one-off), so the
# measured window is the steady state and holds two continuous-profile emissions.
#
# Usage: scripts/bench-profiling.sh [ROUNDS=10] [MEASURE_SECS=30] [WARMUP_SECS=16]
#
# Peak-RSS mode (symbolizing huge binaries):
#   scripts/bench-profiling.sh peak-rss [ROUNDS=10] [SECS=47] [OTHER_CONTINUOUS_BENCH]
# keeps both cores busy with processes that map huge binaries: a dev-profile build of
# examples/busy_target (~100 MB, full DWARF, CPU spread over many crates) and a loop of
# `rustc -O` compiles of a generated file (librustc_driver ~150 MB, libLLVM ~200 MB, symbol
# tables only). Each round starts a fresh continuous profiler (19 Hz, 15 s interval, so
# SECS=47 holds three symbolization passes, the first one opening every binary) for each
# variant, in rotated order: `debug_info=1` (default `debug_info_max_binary_mb`), one
# variant per value in the environment variable PEAK_RSS_MAX_MB (e.g. "8 65536"),
# `debug_info=0` and, when given, another build of continuous_bench (e.g. the code before
# a change) with `debug_info=1`. Per round it prints VmHWM, the highest RssFile/RssAnon
# seen (polled at 10 Hz) and the counters.
set -euo pipefail
if [ "${1:-}" = peak-rss ]; then
	ROUNDS=${2:-10}
	SECS=${3:-47}
	OTHER=${4:-}
	cd "$(dirname "$0")/.."
	[ "$(id -u)" = 0 ] || { echo "bench-profiling: needs root (eBPF)" >&2; exit 1; }
	cargo build --release -q -p nodescope-profiler --example continuous_bench
	cargo build -q -p nodescope-profiler --example busy_target
	TD=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
	WORK=$(mktemp -d)
	trap 'rm -rf "$WORK"' EXIT
	python3 - "$TD" "$WORK" "$ROUNDS" "$SECS" "$OTHER" "${PEAK_RSS_MAX_MB:-}" <<'PY'
import os, signal, statistics, subprocess, sys, time
td, work, rounds, secs, other = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
max_mbs = sys.argv[6].split()
# A Rust file that takes rustc -O some seconds: the compiler runs in librustc_driver/libLLVM.
with open(f"{work}/big.rs", "w") as f:
    f.write("use std::collections::HashMap;\n")
    for i in range(400):
        f.write(f"#[inline(never)] pub fn f{i}(v: &[u64], m: &mut HashMap<u64, String>) -> u64 {{ let mut a = {i}u64; "
                f"for (j, x) in v.iter().enumerate() {{ a = a.wrapping_mul(31).wrapping_add(*x ^ j as u64); "
                f"if a % 7 == {i % 7} {{ m.insert(a, format!(\"{{}}-{{}}\", a, j)); }} }} "
                f"let s: Vec<String> = m.values().filter(|s| s.len() > {i % 5}).cloned().collect(); "
                f"a + s.iter().map(|x| x.len() as u64).sum::<u64>() }}\n")
    f.write("fn main() { let mut m = HashMap::new(); let v: Vec<u64> = (0..100).collect(); let mut t = 0;\n")
    for i in range(400):
        f.write(f" t += f{i}(&v, &mut m);\n")
    f.write(' println!("{}", t); }\n')
loop = subprocess.Popen(["bash", "-c", f"while :; do rustc -O -C codegen-units=1 {work}/big.rs -o {work}/big 2>/dev/null; done"],
                        start_new_session=True)
busy = subprocess.Popen([f"{td}/debug/examples/busy_target"], stdout=subprocess.DEVNULL)
time.sleep(2)

def status(pid):
    d = {}
    with open(f"/proc/{pid}/status") as f:
        for l in f:
            k, _, v = l.partition(":")
            if k in ("VmHWM", "RssFile", "RssAnon"):
                d[k] = int(v.split()[0]) / 1024
    return d

cb = f"{td}/release/examples/continuous_bench"
variants = [("dwarf", [cb, "--debug-info", "1"])]
variants += [(f"dwarf-max{m}", [cb, "--debug-info", "1", "--debug-info-max-mb", m]) for m in max_mbs]
variants.append(("nodwarf", [cb, "--debug-info", "0"]))
if other:
    variants.append(("other-dwarf", [other, "--debug-info", "1"]))
res = {v[0]: [] for v in variants}
try:
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for name, cmd in order:
            p = subprocess.Popen(cmd + ["--hz", "19", "--interval", "15"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            t0, mf, ma = time.monotonic(), 0.0, 0.0
            while time.monotonic() - t0 < secs:
                d = status(p.pid)
                mf, ma = max(mf, d["RssFile"]), max(ma, d["RssAnon"])
                time.sleep(0.1)
            hwm = status(p.pid)["VmHWM"]
            p.send_signal(signal.SIGTERM)
            out, _ = p.communicate(timeout=60)
            ctr = {l.split("{")[0]: l.split()[-1] for l in out.splitlines()}
            res[name].append(hwm)
            print(f"round {r+1}/{rounds} {name:14s} VmHWM={hwm:6.1f} MB  max RssFile={mf:6.1f}  max RssAnon={ma:5.1f}  "
                  f"samples={ctr.get('nodescope_profiler_samples_total', '?')} misses={ctr.get('nodescope_symbolizer_cache_misses_total', '?')} "
                  f"debuginfo_skipped={ctr.get('nodescope_profiler_debuginfo_skipped_total', '-')} unmaps={ctr.get('nodescope_symbolizer_unmaps_total', '-')}",
                  flush=True)
finally:
    os.killpg(loop.pid, signal.SIGKILL)
    loop.wait()
    busy.kill()
    busy.wait()
print()
print("| variant | VmHWM median (MB) | VmHWM max (MB) | rounds |")
print("|---|---|---|---|")
for name, v in res.items():
    print(f"| {name} | {statistics.median(v):.1f} | {max(v):.1f} | {len(v)} |")
PY
	exit 0
fi
ROUNDS=${1:-10}
MEASURE=${2:-30}
WARMUP=${3:-16}
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-profiling: needs root (eBPF, perf -a)" >&2; exit 1; }
command -v perf >/dev/null || { echo "bench-profiling: perf not installed (linux-perf)" >&2; exit 1; }
command -v bpftool >/dev/null || { echo "bench-profiling: bpftool not installed" >&2; exit 1; }

cargo build --release -q -p nodescope-profiler --example continuous_bench
BIN=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/examples/continuous_bench

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cat >"$WORK/spin.c" <<'EOF'
/* Busy worker: counts units of work into a shared file so throughput can be compared. */
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>
__attribute__((noinline)) static uint64_t unit(uint64_t x) {
	for (int i = 0; i < 20000; i++) x = x * 6364136223846793005ULL + 1442695040888963407ULL;
	return x;
}
int main(int argc, char **argv) {
	int fd = open(argv[1], O_RDWR | O_CREAT, 0600);
	if (fd < 0 || ftruncate(fd, 16)) return 1;
	volatile uint64_t *c = mmap(0, 16, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (c == MAP_FAILED) return 1;
	uint64_t x = 1;
	/* c[1] = x keeps the work observable (no dead-code elimination of unit()). */
	for (;;) { x = unit(x); c[1] = x; c[0]++; }
}
EOF
cc -O1 -fno-omit-frame-pointer -o "$WORK/spin" "$WORK/spin.c"

OLD_STATS=$(sysctl -n kernel.bpf_stats_enabled)
sysctl -qw kernel.bpf_stats_enabled=1
restore() { sysctl -qw kernel.bpf_stats_enabled="$OLD_STATS"; rm -rf "$WORK"; }
trap restore EXIT

python3 - "$BIN" "$WORK" "$ROUNDS" "$MEASURE" "$WARMUP" <<'PY'
import json, os, signal, statistics, struct, subprocess, sys, time
binp, work, rounds, measure, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
tck = os.sysconf("SC_CLK_TCK")
workers = [subprocess.Popen([f"{work}/spin", f"{work}/ctr{i}"]) for i in range(2)]
time.sleep(0.5)

def counters():
    out = 0
    for i in range(2):
        with open(f"{work}/ctr{i}", "rb") as f:
            out += struct.unpack("<Q", f.read(8))[0]
    return out

def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    # fields 14,15 (utime, stime) are rest[11], rest[12]
    return (int(rest[11]) + int(rest[12])) / tck

def bpf_stats():
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True).stdout
    progs = [p for p in json.loads(out or "[]") if p.get("name") == "nodescope_profile"]
    return sum(p.get("run_time_ns", 0) for p in progs), sum(p.get("run_cnt", 0) for p in progs)

def bpf_ns():
    return bpf_stats()[0]

def status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for l in f:
            if l.startswith(key + ":"):
                return int(l.split()[1])
    return 0

def map_memlock(pid):
    total = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            info = open(f"/proc/{pid}/fdinfo/{fd}").read()
        except OSError:
            continue
        if "map_type:" in info:
            for l in info.splitlines():
                if l.startswith("memlock:"):
                    total += int(l.split()[1])
    return total

def start(mode):
    if mode == "none":
        return None
    if mode.startswith("ns"):
        return subprocess.Popen([binp, "--hz", mode[2:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The anchor: perf's own DWARF unwinding (copies 8 KiB of user stack per sample and
    # unwinds when reporting), node-wide at the same rate.
    return subprocess.Popen(["perf", "record", "-F", "99", "-a", "--call-graph", "dwarf", "-o", f"{work}/perf.data", "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

def stop(p, mode):
    if p is None:
        return
    p.send_signal(signal.SIGINT if mode == "perf99" else signal.SIGTERM)
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill(); p.wait()

modes = ["none", "ns19", "ns99", "perf99"]
res = {m: {"cpu": [], "bpf": [], "thr": [], "rss_mb": [], "anon_mb": [], "maps_mb": [], "ns_per_sample": [], "perf_mb": []} for m in modes}
for r in range(rounds):
    order = modes[r % 4:] + modes[:r % 4]
    for m in order:
        p = start(m)
        time.sleep(warmup if m.startswith("ns") else (2 if m == "perf99" else 0))
        c0, (b0, n0), t0 = counters(), bpf_stats(), time.monotonic()
        cpu0 = cpu_secs(p.pid) if p else 0.0
        time.sleep(measure)
        c1, (b1, n1), t1 = counters(), bpf_stats(), time.monotonic()
        if m.startswith("ns") and n1 > n0:
            res[m]["ns_per_sample"].append((b1 - b0) / (n1 - n0))
        cpu1 = cpu_secs(p.pid) if p else 0.0
        dt = t1 - t0
        res[m]["thr"].append((c1 - c0) / dt)
        res[m]["cpu"].append(100.0 * (cpu1 - cpu0) / dt)
        res[m]["bpf"].append(100.0 * (b1 - b0) / 1e9 / dt if m.startswith("ns") else 0.0)
        if p and m.startswith("ns"):
            res[m]["rss_mb"].append(status_kb(p.pid, "VmHWM") / 1024)
            res[m]["anon_mb"].append(status_kb(p.pid, "RssAnon") / 1024)
            res[m]["maps_mb"].append(map_memlock(p.pid) / 2**20)
        stop(p, m)
        if m == "perf99" and os.path.exists(f"{work}/perf.data"):
            res[m]["perf_mb"].append(os.path.getsize(f"{work}/perf.data") / 2**20)
        print(f"round {r+1}/{rounds} {m:6s} cpu={res[m]['cpu'][-1]:.3f}% bpf={res[m]['bpf'][-1]:.3f}% thr={res[m]['thr'][-1]:.0f}/s", flush=True)
for w in workers:
    w.kill(); w.wait()

med = lambda xs: statistics.median(xs) if xs else float("nan")
base = med(res["none"]["thr"])
print()
print(f"rounds={rounds} measure={measure:.0f}s warmup={warmup:.0f}s (nodescope; perf 2s), both cores busy (2 spinning workers)")
print("| mode | profiler CPU (% of one core) | BPF program CPU (% of one core) | total | worker throughput vs none | peak RSS VmHWM (MB) | RssAnon at end (MB) | BPF maps (MB) |")
print("|---|---|---|---|---|---|---|---|")
for m in modes:
    c, b = med(res[m]["cpu"]), med(res[m]["bpf"])
    thr = med(res[m]["thr"]) / base if base else float("nan")
    rss = f"{med(res[m]['rss_mb']):.1f}" if res[m]["rss_mb"] else "-"
    maps = f"{med(res[m]['maps_mb']):.1f}" if res[m]["maps_mb"] else "-"
    anon = f"{med(res[m]['anon_mb']):.1f}" if res[m]["anon_mb"] else "-"
    print(f"| {m} | {c:.3f} | {b:.3f} | {c+b:.3f} | {thr:.4f} | {rss} | {anon} | {maps} |")
for m in ("ns19", "ns99"):
    if res[m]["ns_per_sample"]:
        print(f"{m}: BPF time per sample (bpf_stats, median over rounds): {med(res[m]['ns_per_sample']):.0f} ns")
if res["perf99"]["perf_mb"]:
    print(f"perf99 (--call-graph dwarf): perf.data {med(res['perf99']['perf_mb']):.1f} MB per {measure:.0f}s round (median)")
for m in ("ns19", "ns99"):
    if res[m]["rss_mb"]:
        print(f"{m}: max over rounds: peak RSS {max(res[m]['rss_mb']):.1f} MB, profiler CPU {max(res[m]['cpu']):.3f}%, BPF {max(res[m]['bpf']):.3f}%")
PY
