#!/bin/sh
# Splits a release binary into what the image ships and its debug info:
#   deploy/split-debug.sh <binary> <out-dir>
# <out-dir>/nodescope                    stripped (no symbol table, no DWARF), with a
#                                        .gnu_debuglink naming the debug file
# <out-dir>/debug/usr/lib/debug/.build-id/<xx>/<rest>.debug
#                                        symbol table + DWARF (zlib-compressed sections),
#                                        the separate artifact (image target `debug`)
# The profiler (agent/profiler/src/symbolize.rs) finds the debug file by build id under
# /usr/lib/debug of the agent's own file system or of the host (/host/proc/1/root/usr/lib/debug),
# so a profile of the agent itself is symbolized wherever the debug file is installed.
# POSIX sh + binutils (objcopy, readelf): runs in the rust:1-bookworm build stage and in CI.
set -eu
bin=$1
out=$2
id=$(readelf -n "$bin" | sed -n 's/^ *Build ID: *\([0-9a-f]*\)$/\1/p')
if [ "${#id}" -lt 16 ]; then
  echo "split-debug: $bin has no GNU build id (link with --build-id)" >&2
  exit 1
fi
dir=$(echo "$id" | cut -c1-2)
rest=$(echo "$id" | cut -c3-)
dbg=$out/debug/usr/lib/debug/.build-id/$dir/$rest.debug
mkdir -p "$(dirname "$dbg")"
objcopy --only-keep-debug --compress-debug-sections=zlib "$bin" "$dbg"
chmod 0644 "$dbg"
objcopy --strip-all --remove-section=.gnu_debuglink --add-gnu-debuglink="$dbg" "$bin" "$out/nodescope.tmp"
mv "$out/nodescope.tmp" "$out/nodescope"
chmod 0755 "$out/nodescope"
echo "split-debug: $out/nodescope ($(wc -c <"$out/nodescope") bytes), build id $id, debug file $(wc -c <"$dbg") bytes" >&2
