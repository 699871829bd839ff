#!/usr/bin/env bash
# Logs benchmark (issue 12): nodescope's tailer into the Loki encoder against rsyslog's imfile
# (wildcard tailing, inotify) writing to a local file, on the same generated CRI files.
#   bash scripts/bench-logs.sh [ROUNDS] [MIB] [STEADY_SECONDS] [MEMORY_SECONDS]
# 1. throughput: MIB MiB of CRI lines in 4 pod files, read from the start; CPU seconds of
#    each process (utime+stime) until every byte is through; sides alternate ROUNDS times.
# 2. steady cost: 10,000 lines/s appended for STEADY_SECONDS; CPU of each process over the
#    window (3 rounds alternating).
# 3. memory: 1,000 files appended at 10,000 lines/s, backend down (batches encoded and held,
#    never acknowledged) for MEMORY_SECONDS; VmHWM of the process.
# BENCH_LOGS_PARTS="throughput steady memory" (the default) picks the parts to run.
# Needs: rsyslog (scripts/install-test-deps.sh). Prints one line per measurement and medians.
set -euo pipefail
ROUNDS=${1:-10}
MIB=${2:-128}
STEADY=${3:-20}
MEMSECS=${4:-60}
cd "$(dirname "$0")/.."
cargo build --release -q -p nodescope-logs --example logs_bench
BIN=target/release/examples/logs_bench
command -v rsyslogd >/dev/null || { echo "rsyslogd missing: bash scripts/install-test-deps.sh"; exit 1; }
W=$(mktemp -d /tmp/bench-logs.XXXXXX)
trap 'rm -rf "$W"' EXIT
TCK=$(getconf CLK_TCK)
PARTS=" ${BENCH_LOGS_PARTS:-throughput steady memory} "
want() { [[ $PARTS == *" $1 "* ]]; }

cpu_of() { awk -v t="$TCK" '{print ($14+$15)/t}' "/proc/$1/stat"; }
hwm_of() { awk '/VmHWM/{print $2}' "/proc/$1/status"; }

start_rsyslog() { # DIR OUTDIR
  mkdir -p "$2/work"
  cat > "$2/rsyslog.conf" <<CONF
global(workDirectory="$2/work")
module(load="imfile")
template(name="m" type="string" string="%msg%\n")
ruleset(name="out") { action(type="omfile" file="$2/out.log" template="m") }
input(type="imfile" File="$1/*/*/*.log" Tag="pods" ruleset="out" freshStartTail="off")
CONF
  rsyslogd -n -f "$2/rsyslog.conf" -i "$2/pid" &
  RS_PID=$!
}
stop_rsyslog() { kill "$RS_PID" 2>/dev/null || true; wait "$RS_PID" 2>/dev/null || true; }

med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
if want throughput; then
echo "== throughput: $MIB MiB of CRI lines, $ROUNDS rounds alternating"
DATA=$W/data
LINES=$($BIN gen "$DATA" 4 "$MIB")
BYTES=$(cat "$DATA"/*/*/*.log | wc -c)
echo "generated $LINES lines, $BYTES bytes"
NS=(); RS=()
for r in $(seq 1 "$ROUNDS"); do
  rm -rf "$W/state"; mkdir -p "$W/state"
  out=$($BIN tail "$DATA" "$W/state" "$LINES")
  v=$(echo "$out" | sed 's/.*"mib_per_cpu_s":\([0-9.]*\).*/\1/')
  NS+=("$v"); echo "round $r nodescope $out"
  rm -rf "$W/rs"; mkdir -p "$W/rs"
  t0=$(date +%s.%N)
  start_rsyslog "$DATA" "$W/rs"
  while :; do
    s=$(stat -c %s "$W/rs/out.log" 2>/dev/null || echo 0)
    [ "$s" -ge "$BYTES" ] && break
    sleep 0.05
  done
  c=$(cpu_of "$RS_PID"); t1=$(date +%s.%N)
  stop_rsyslog
  v=$(awk -v b="$BYTES" -v c="$c" 'BEGIN{printf "%.1f", b/1048576/c}')
  RS+=("$v"); echo "round $r rsyslog cpu_s $c wall_s $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}') mib_per_cpu_s $v"
done
mn=$(med "${NS[@]}"); mr=$(med "${RS[@]}")
echo "MEDIAN throughput MiB per CPU-second: nodescope $mn, rsyslog $mr, ratio $(awk -v a="$mn" -v b="$mr" 'BEGIN{printf "%.2f", a/b}')"

fi

if want steady; then
echo "== steady: 10000 lines/s for ${STEADY}s, 3 rounds alternating"
NSC=(); RSC=()
for r in 1 2 3; do
  rm -rf "$W/s" "$W/state"; mkdir -p "$W/s" "$W/state"
  $BIN append "$W/s" 10 1 1 >/dev/null   # files exist before the tailer starts
  $BIN follow "$W/s" "$W/state" "$((STEADY + 2))" > "$W/follow.json" &
  F=$!
  sleep 1
  $BIN append "$W/s" 10 10000 "$STEADY" >/dev/null
  wait "$F"
  c=$(sed 's/.*"cpu_s":\([0-9.]*\).*/\1/' "$W/follow.json")
  p=$(awk -v c="$c" -v s="$((STEADY + 2))" 'BEGIN{printf "%.2f", 100*c/s}')
  NSC+=("$p"); echo "round $r nodescope $(cat "$W/follow.json") cpu_percent $p"
  rm -rf "$W/s" "$W/rs"; mkdir -p "$W/s" "$W/rs"
  $BIN append "$W/s" 10 1 1 >/dev/null
  start_rsyslog "$W/s" "$W/rs"
  sleep 1
  c0=$(cpu_of "$RS_PID")
  $BIN append "$W/s" 10 10000 "$STEADY" >/dev/null
  sleep 2
  c1=$(cpu_of "$RS_PID")
  stop_rsyslog
  p=$(awk -v a="$c0" -v b="$c1" -v s="$((STEADY + 2))" 'BEGIN{printf "%.2f", 100*(b-a)/s}')
  RSC+=("$p"); echo "round $r rsyslog cpu_percent $p"
done
echo "MEDIAN CPU % of one core at 10k lines/s: nodescope $(med "${NSC[@]}"), rsyslog $(med "${RSC[@]}")"

fi

if want memory; then
echo "== memory: 1000 files, 10000 lines/s, backend down (nothing acknowledged) for ${MEMSECS}s"
rm -rf "$W/m" "$W/state"; mkdir -p "$W/m" "$W/state"
$BIN append "$W/m" 1000 1000 1 >/dev/null
$BIN hold "$W/m" "$W/state" "$((MEMSECS + 2))" > "$W/hold.json" &
H=$!
$BIN append "$W/m" 1000 10000 "$MEMSECS" >/dev/null
wait "$H"
echo "nodescope $(cat "$W/hold.json")"
fi
