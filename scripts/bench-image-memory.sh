#!/usr/bin/env bash
# Container memory benchmark (docs/benchmarks.md "Container memory"), as root:
#   bash scripts/bench-image-memory.sh [runs] [warmup-seconds] [measure-seconds]
# Builds the release binary and the image (scripts/image-build.sh), then runs it as the
# `full` overlay under a steady load (agent/nodescope/tests/image.rs, image_memory_bench):
# alternately with the agent's malloc settings (agent/nodescope/src/memory.rs) and with glibc's
# defaults (NODESCOPE_MALLOC=glibc), `runs` times each.
# Prints each run's steady VmRSS (median over the measure window), VmHWM and CPU, then the
# medians and their ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
export NODESCOPE_BENCH_WARMUP=${2:-120} NODESCOPE_BENCH_MEASURE=${3:-60}
cargo build --release --locked -q -p nodescope
export NODESCOPE_STRICT_TESTS=1
img=$(bash scripts/image-build.sh target/release/nodescope localhost/nodescope:bench)
export NODESCOPE_IMAGE_NAME=$img
cargo test -q --locked -p nodescope --test image --no-run 2>/dev/null
defaults="NODESCOPE_MALLOC=glibc"
log=$(mktemp "${TMPDIR:-/tmp}/nsmem-bench.XXXXXX")
echo "# $(date -u +%FT%TZ) $(nproc) CPUs, load average: $(cut -d' ' -f1-3 /proc/loadavg); log $log"
for i in $(seq "$runs"); do
  for side in tuned defaults; do
    env=""
    [ "$side" = defaults ] && env=$defaults
    line=$(NODESCOPE_BENCH_ENV="$env" cargo test -q --locked -p nodescope --test image image_memory_bench \
      -- --ignored --nocapture 2>>"$log" | tee -a "$log" | grep '^image_memory_bench:')
    echo "$side $i $line"
  done
done | tee -a "$log" | awk '
  { print }
  /^(tuned|defaults) / { match($0, /steady VmRSS [0-9.]+/); v=substr($0, RSTART+13, RLENGTH-13); a[$1]=a[$1]" "v;
    match($0, /VmHWM [0-9.]+/); h[$1]=h[$1]" "substr($0, RSTART+6, RLENGTH-6) }
  function med(s,   n, x, i, j, t) { n=split(s, x, " "); for(i=1;i<=n;i++) for(j=i+1;j<=n;j++) if (x[j]+0<x[i]+0) {t=x[i];x[i]=x[j];x[j]=t}
    return n%2 ? x[(n+1)/2] : (x[n/2]+x[n/2+1])/2 }
  END { t=med(a["tuned"]); d=med(a["defaults"]);
    printf "median steady VmRSS: tuned %.1f MB, glibc defaults %.1f MB, ratio %.2f; median VmHWM: tuned %.1f MB, defaults %.1f MB\n", t, d, t/d, med(h["tuned"]), med(h["defaults"]) }'
