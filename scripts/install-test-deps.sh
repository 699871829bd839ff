#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian 12 machine (run as root).
# Idempotent: packages already present are left alone. Used by `make test` / .ci/run.
set -euo pipefail

DEBS=(
  prometheus                 # real scraper / remote-write receiver, promtool
  prometheus-node-exporter   # the anchor for value and family comparisons
  golang-go                  # go tool pprof
  clang-19 llvm-19 libbpf-dev bpftool   # eBPF objects: rebuild + staleness check
  linux-perf                 # profiler benchmark anchor (perf record --call-graph dwarf)
  g++ python3                # DWARF unwinding tests: g++ -O2 -fomit-frame-pointer, Debian's /usr/bin/python3
  iproute2 iptables nftables # netns/veth ground-truth network tests, recorder fault injection
  bind9-dnsutils             # DNS probe tests: dig as the client (the test server logs what it receives)
  python3-pip python3-venv
  systemd                    # systemd-analyze verify of deploy/systemd/nodescope.service
  chromium fonts-dejavu-core # the web UI's browser tests (driven by playwright-core)
  # the image test (agent/nodescope/tests/image.rs): debootstrapped base, buildah build,
  # podman + runc run; objcopy/readelf (binutils) split the debug info
  debootstrap buildah podman runc containernetworking-plugins binutils
  rsyslog                    # the logs benchmark's anchor (imfile wildcard tailing, omfile sink)
  dnsmasq-base               # the network benchmark's real DNS server (BENCH_DNS_SERVER=dnsmasq)
)
PIP=(opentelemetry-proto grpcio protobuf kubernetes-validate cramjam pyyaml dnslib==0.9.26)

missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-test-deps: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts daemons on install; tests start their own instances on free ports.
for svc in prometheus prometheus-node-exporter rsyslog; do
  systemctl stop "$svc" 2>/dev/null || true
  pkill -x "${svc/rsyslog/rsyslogd}" 2>/dev/null || true
done

py=${PYTHON:-python3}
if ! "$py" -c 'import opentelemetry.proto, grpc, kubernetes_validate, cramjam, yaml, dnslib' 2>/dev/null; then
  echo "install-test-deps: installing PyPI packages: ${PIP[*]}"
  "$py" -m pip install -q --disable-pip-version-check "${PIP[@]}"
fi
# The PodMonitor/ServiceMonitor manifests are validated against prometheus-operator's CRD
# schemas, which ship in this npm package (no Kubernetes cluster here to hold the CRDs).
NPM_PREFIX=${NODESCOPE_TEST_NPM_PREFIX:-/usr/local/lib/nodescope-test-npm}
# node and npm come with the machine image (nodesource build); Debian's npm would conflict.
if ! command -v npm >/dev/null; then
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if [ ! -d "$NPM_PREFIX/node_modules/@kubernetes-models/prometheus-operator" ]; then
  echo "install-test-deps: installing npm @kubernetes-models/prometheus-operator into $NPM_PREFIX"
  npm install --silent --no-audit --no-fund --prefix "$NPM_PREFIX" @kubernetes-models/prometheus-operator@6.0.0
fi
# The web UI's browser tests: playwright-core pinned in agent/ui/tests/browser/package-lock.json
# (it drives Debian's chromium; Playwright's own browser download is never used).
UI_TESTS=agent/ui/tests/browser
want=$(cd "$UI_TESTS" && node -p "require('./package-lock.json').packages['node_modules/playwright-core'].version")
have=$(cd "$UI_TESTS" && node -p "require('./node_modules/playwright-core/package.json').version" 2>/dev/null || true)
if [ "$want" != "$have" ]; then
  echo "install-test-deps: npm ci in $UI_TESTS"
  (cd "$UI_TESTS" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --silent --no-audit --no-fund)
fi
echo "install-test-deps: ok"
