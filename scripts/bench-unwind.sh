#!/usr/bin/env bash
# Root reach of nodescope's DWARF unwinding vs `perf record --call-graph dwarf` (the anchor
# of issue 11), on the same processes, alternating sides ROUNDS times:
#   split   g++ -O2 -fomit-frame-pointer program (agent/profiler/tests/workloads/split.cpp):
#           share of samples reaching `main`
#   python3 Debian's /usr/bin/python3 busy loop: share reaching `_start`
# Usage: scripts/bench-unwind.sh [ROUNDS] [SECONDS] [HZ]     (root; perf installed)
set -euo pipefail
ROUNDS=${1:-10}
SECS=${2:-4}
HZ=${3:-99}
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-unwind: needs root (eBPF, perf)" >&2; exit 1; }
command -v perf >/dev/null || { echo "bench-unwind: perf not installed (linux-perf)" >&2; exit 1; }
cargo build --release -q -p nodescope-profiler --example unwind_reach
TD=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
g++ -O2 -g -fomit-frame-pointer -o "$WORK/split" agent/profiler/tests/workloads/split.cpp
python3 - "$TD/release/examples/unwind_reach" "$WORK" "$ROUNDS" "$SECS" "$HZ" <<'PY'
import statistics, subprocess, sys
reach, work, rounds, secs, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
procs = {
    "split": (subprocess.Popen([f"{work}/split"]), "main"),
    "python3": (subprocess.Popen(["/usr/bin/python3", "-c", "while True:\n    pass"]), "_start"),
}

def perf_share(pid, want):
    data = f"{work}/perf-{pid}.data"
    subprocess.run(["perf", "record", "-q", "-F", hz, "--call-graph", "dwarf", "-p", str(pid),
                    "-o", data, "--", "sleep", secs], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = subprocess.run(["perf", "script", "-i", data, "-F", "comm,ip,sym"],
                         capture_output=True, text=True).stdout
    total = hit = 0
    for block in out.split("\n\n"):
        lines = [l.strip() for l in block.strip().splitlines()]
        if not lines:
            continue
        total += 1
        syms = [l.split()[1] for l in lines[1:] if len(l.split()) > 1]
        if any(s == want or s.startswith(want + "(") for s in syms):
            hit += 1
    return hit, total

def ns_share(pid, want):
    out = subprocess.run([reach, "--pid", str(pid), "--seconds", secs, "--hz", hz, "--want", want],
                         capture_output=True, text=True, check=True).stdout
    kv = dict(x.split("=") for x in out.split()[1:])
    return int(kv[f"reach_{want}"]), int(kv["samples"])

res = {(n, side): [] for n in procs for side in ("nodescope", "perf")}
try:
    for r in range(rounds):
        for name, (p, want) in procs.items():
            sides = [("nodescope", ns_share), ("perf", perf_share)]
            if r % 2:
                sides.reverse()
            for side, f in sides:
                hit, total = f(p.pid, want)
                res[(name, side)].append(100.0 * hit / max(total, 1))
                print(f"round {r+1}/{rounds} {name:8s} {side:9s} {hit}/{total} reach {want} ({res[(name, side)][-1]:.2f} %)", flush=True)
finally:
    for p, _ in procs.values():
        p.kill(); p.wait()
print()
print(f"| process | root | nodescope median % (min) | perf --call-graph dwarf median % (min) | rounds |")
print("|---|---|---|---|---|")
for name, (_, want) in procs.items():
    a, b = res[(name, "nodescope")], res[(name, "perf")]
    print(f"| {name} | {want} | {statistics.median(a):.2f} ({min(a):.2f}) | {statistics.median(b):.2f} ({min(b):.2f}) | {len(a)} |")
PY
