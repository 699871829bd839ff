#!/usr/bin/env bash
# Web UI benchmarks (docs/benchmarks.md "Web UI", details in docs/bench/ui.md), as root:
#   bash scripts/bench-ui.sh [runs] [seconds-per-cost-round]
# 1. JS + CSS bytes the browser transfers for /ui/ (gzip), budget 150 KB;
# 2. first render of the Profiles page with a 20,000-node flame graph (Performance API),
#    alternated with the anchor, d3-flame-graph 5 drawing the same tree;
# 3. the agent's CPU time (utime + stime of /proc/<pid>/stat) while the Node (then the Network) page
#    auto-refreshes, vs no page open, alternated.
# Uses the release agent on a free loopback port and Debian's chromium.
# BENCH_PARTS="assets flame cost" (default all) picks parts.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
secs=${2:-30}
(cd agent/ui/bench && npm ci --silent --no-audit --no-fund)
cargo build --release -q -p nodescope
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d "${TMPDIR:-/tmp}/nsui-bench.XXXXXX")
printf '[agent]\nlisten = "127.0.0.1:%s"\n' "$port" > "$dir/nodescope.toml"
RUST_LOG=warn target/release/nodescope run --config "$dir/nodescope.toml" > "$dir/agent.log" 2>&1 &
agent=$!
trap 'kill $agent 2>/dev/null; wait $agent 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
url="http://127.0.0.1:$port"
echo "# $(date -u +%FT%TZ) $(nproc) CPUs, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
parts=" ${BENCH_PARTS:-assets flame cost} "
[[ $parts == *" assets "* ]] && node agent/ui/bench/bench.mjs assets "$url"
[[ $parts == *" flame "* ]] && node agent/ui/bench/bench.mjs flame "$url" "$runs"
if [[ $parts == *" cost "* ]]; then
  node agent/ui/bench/bench.mjs cost "$url" "$agent" "$runs" "$secs" node
  node agent/ui/bench/bench.mjs cost "$url" "$agent" "$runs" "$secs" network
fi
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
