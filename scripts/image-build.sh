#!/usr/bin/env bash
# Builds the nodescope image from deploy/Dockerfile without any container registry, as root:
#   bash scripts/image-build.sh <nodescope-binary> [image-name]    (prints the image name)
# The binary (any cargo profile) is split by deploy/split-debug.sh into the stripped binary and
# its debug file under ${NODESCOPE_IMAGE_CACHE:-target/image-test}/ctx/out/, then buildah builds
# the Dockerfile's runtime stage (BINARY_FROM=prebuilt) on the debootstrapped bookworm base of
# scripts/image-base.sh. Also writes $cache/containers.conf: podman/buildah read it through
# CONTAINERS_CONF (runc, and default_ulimits this machine's hard limits allow: the built-in
# nofile=1048576 is refused here). Used by agent/nodescope/tests/image.rs and
# scripts/bench-image-memory.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:?usage: image-build.sh <nodescope-binary> [image-name]}
name=${2:-localhost/nodescope:test}
cache=${NODESCOPE_IMAGE_CACHE:-$PWD/target/image-test}
mkdir -p "$cache"
nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] && nofile=1048576
nproc=$(ulimit -Hu)
{ [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
cat >"$cache/containers.conf" <<CONF
# Written by scripts/image-build.sh for the image test (CONTAINERS_CONF).
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF=$cache/containers.conf
base=$(bash scripts/image-base.sh)
rm -rf "$cache/ctx"
mkdir -p "$cache/ctx/out"
sh deploy/split-debug.sh "$bin" "$cache/ctx/out"
untagged() { podman images --format '{{.ID}} {{.Repository}}' | awk '$2 == "<none>" { print $1 }' | sort -u; }
before=$(untagged)
buildah bud --quiet --layers=false --pull=never \
  --build-arg BASE="$base" --build-arg BINARY_FROM=prebuilt \
  -f deploy/Dockerfile --target runtime -t "$name" "$cache/ctx" >"$cache/build.log" 2>&1 \
  || { tail -30 "$cache/build.log" >&2; echo "image-build: buildah bud failed (log: $cache/build.log)" >&2; exit 1; }
# The build's intermediate stage images and the image this tag replaced: removed, or every
# run would leave ~120 MB behind.
comm -13 <(echo "$before") <(untagged) | xargs -r podman rmi -f >/dev/null 2>&1 || true
echo "image-build: $name, $(podman image inspect -f '{{.Size}}' "$name") bytes" >&2
echo "$name"
