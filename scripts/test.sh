#!/usr/bin/env bash
# The one command that passes the tests on a fresh Debian 12 machine, as root:
#   bash scripts/test.sh
# It installs what the tests need (Debian + PyPI packages), then runs formatting, lints,
# the eBPF staleness check and every test tier (unit, real-peer component tests,
# privileged eBPF tests, and the container image test: agent/nodescope/tests/image.rs builds
# deploy/Dockerfile with buildah on a debootstrapped bookworm cached in target/image-test and
# runs it with podman as the overlays' pod specs, about 1 minute). Set NODESCOPE_STRICT_TESTS=1
# (CI does) to turn any skipped privileged/tool-dependent test into a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== eBPF objects are up to date with their sources"
cargo run -q --locked -p xtask -- check-ebpf

echo "== architecture invariants (dependencies, bounded channels)"
cargo run -q --locked -p xtask -- check-arch

echo "== cargo test"
cargo test --workspace --locked --no-fail-fast
