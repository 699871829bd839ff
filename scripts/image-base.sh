#!/usr/bin/env bash
# Builds (once) and imports a Debian bookworm base image without any container registry:
#   bash scripts/image-base.sh [image-name]     (as root; prints the image name)
# debootstrap's minbase variant, trimmed like the official bookworm-slim (no docs, man pages,
# locales; dpkg told to keep them out), is cached as a tarball under
# ${NODESCOPE_IMAGE_CACHE:-target/image-test} and reused while present. The tarball is then
# imported into podman's local storage (also reused when the image exists and is newer).
# Used by the image test (agent/nodescope/tests/image.rs) and scripts/bench-image-memory.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:-localhost/nodescope-test/bookworm:base}
cache=${NODESCOPE_IMAGE_CACHE:-$PWD/target/image-test}
mirror=${NODESCOPE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
tarball=$cache/bookworm-base.tar
mkdir -p "$cache"
if [ ! -s "$tarball" ]; then
  root=$(mktemp -d "$cache/rootfs.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  start=$(date +%s)
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log" >&2; echo "image-base: debootstrap failed (log: $cache/debootstrap.log)" >&2; exit 1; }
  # What bookworm-slim leaves out (docker-debian-artifacts' slimify), now and for later dpkg runs.
  cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
CFG
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$root"/usr/share/{man,groff,info,lintian,linda,locale}/* \
    "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/var/log/apt/* "$root"/var/log/dpkg.log "$root"/var/log/bootstrap.log "$root"/var/cache/debconf/*-old
  # Same sources as the official image (the build's apt layer reads them).
  echo "deb $mirror bookworm main" >"$root/etc/apt/sources.list"
  tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  echo "image-base: debootstrapped $tarball in $(( $(date +%s) - start )) s" >&2
fi
if ! podman image exists "$name" || [ "$(stat -c %Y "$tarball")" -gt "$(podman image inspect -f '{{.Created.Unix}}' "$name")" ]; then
  podman import -q --change 'CMD ["/bin/bash"]' "$tarball" "$name" >/dev/null
  echo "image-base: imported $name" >&2
fi
echo "$name"
