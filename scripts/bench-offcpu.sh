#!/usr/bin/env bash
# Cost of an off-CPU profile in flight during a context-switch-heavy load (pipe ping-pong):
# the agent's CPU and the load's context switches/s, alternating rounds without and with
# a type=offcpu profile, medians. Needs root (eBPF). See docs/benchmarks.md.
# Usage: scripts/bench-offcpu.sh [ROUNDS] [SECONDS] [RATIO] [ALL: 0 = the load's pid, 1 = all=true]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p nodescope-profiler --example offcpu_bench
exec target/release/examples/offcpu_bench --rounds "${1:-10}" --seconds "${2:-3}" --ratio "${3:-1}" --all "${4:-0}"
