#!/usr/bin/env bash
# Copies the npm packages pinned in package.json / package-lock.json (integrity-checked by
# `npm ci`) into agent/ui/vendor/<package>/, each with its license files. The agent embeds
# these files (agent/ui/src/assets.rs); nothing is fetched at run time.
#   bash agent/ui/vendor/sync.sh           # refresh the vendored files
#   bash agent/ui/vendor/sync.sh --check   # fail if they differ from the pinned packages
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/nodescope-ui-vendor.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp "$here/package.json" "$here/package-lock.json" "$work/"
(cd "$work" && npm ci --silent --no-audit --no-fund --ignore-scripts)
m="$work/node_modules"
# package-dir:source-file (relative to the package) pairs; the file keeps its base name.
files=(
  "uplot:dist/uPlot.iife.min.js"
  "uplot:dist/uPlot.min.css"
  "uplot:LICENSE"
  "pprof-format:dist/esm/index.js"
  "pprof-format:LICENSE"
  "pprof-format:NOTICE"
  "pprof-format:LICENSE-3rdparty.csv"
)
out="$work/out"
for f in "${files[@]}"; do
  pkg=${f%%:*}
  src=${f#*:}
  mkdir -p "$out/$pkg"
  cp "$m/$pkg/$src" "$out/$pkg/$(basename "$src")"
done
if [ "${1:-}" = "--check" ]; then
  for f in "${files[@]}"; do
    pkg=${f%%:*}
    name=$(basename "${f#*:}")
    cmp -s "$out/$pkg/$name" "$here/$pkg/$name" || { echo "vendor: $pkg/$name differs from the pinned package" >&2; exit 1; }
  done
  echo "vendor: up to date"
else
  for pkg in uplot pprof-format; do
    rm -rf "${here:?}/$pkg"
    cp -r "$out/$pkg" "$here/$pkg"
  done
  echo "vendor: copied into $here"
fi
