#!/usr/bin/env python3
"""Host-metrics benchmark: nodescope vs Debian's node_exporter, side by side in one run.

    python3 scripts/bench_host.py [--rounds 10] [--scrapes 100]

Builds the release agent, starts it with host metrics only (eBPF parts off) and
prometheus-node-exporter on free loopback ports, then alternates between them for
--rounds rounds: each round scrapes one target --scrapes times, then the other (the order
flips every round), with Prometheus's own Accept/Accept-Encoding headers. CPU time per
scrape comes from utime+stime in /proc/<pid>/stat (whole process, exited threads
included); RSS from VmRSS after all scrapes. Reports medians over rounds and the ratio.

    --cgroups N (root) creates N empty cgroups first (cgroup v2 under /sys/fs/cgroup, or in
    the v1 cpu, cpuacct, memory, blkio and pids hierarchies) so the agent's per-workload
    pass has N more workloads to read, and removes them at the end.
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
          "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
TICK = os.sysconf("SC_CLK_TCK")
HOST_ONLY = """[host]
enabled = true
[network]
enabled = false
[profiling]
enabled = false
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def scrape(url):
    req = urllib.request.Request(url, headers={"Accept": ACCEPT, "Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()


def series_count(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return sum(1 for line in r.read().decode().splitlines() if line and not line.startswith("#"))


def wait_up(url):
    for _ in range(200):
        try:
            scrape(url)
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{url} never came up")


def make_cgroups(n):
    root = "/sys/fs/cgroup"
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        bases = [root]
    else:
        bases, seen = [], set()
        for c in ("cpu", "cpuacct", "memory", "blkio", "pids"):
            p = os.path.join(root, c)
            if os.path.isdir(p) and os.path.realpath(p) not in seen:
                seen.add(os.path.realpath(p))
                bases.append(p)
    made = []
    for i in range(n):
        for b in bases:
            d = os.path.join(b, f"nodescope-bench-host-{os.getpid()}-{i}")
            os.mkdir(d)
            made.append(d)
    return made


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--scrapes", type=int, default=100)
    ap.add_argument("--cgroups", type=int, default=0)
    ap.add_argument("--no-cgroup", action="store_true",
                    help="like for like: turn off the per-workload cgroup collector, which node_exporter lacks")
    args = ap.parse_args()

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "nodescope"], cwd=root, check=True)
    agent_bin = os.path.join(root, "target", "release", "nodescope")

    p_ns, p_ne = free_port(), free_port()
    # Like for like: node_exporter does host metrics only, so the eBPF parts are off here.
    cfg = os.path.join(tempfile.mkdtemp(), "host-only.toml")
    with open(cfg, "w") as f:
        f.write(HOST_ONLY.replace("[host]\n", '[host]\ndisabled_collectors = ["cgroup"]\n')
                if args.no_cgroup else HOST_ONLY)
    env = dict(os.environ, NODESCOPE_LISTEN=f"127.0.0.1:{p_ns}", RUST_LOG="warn")
    cgroups = make_cgroups(args.cgroups) if args.cgroups else []
    procs = {
        "nodescope": subprocess.Popen([agent_bin, "run", "--config", cfg], env=env),
        "node_exporter": subprocess.Popen(
            ["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{p_ne}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    }
    urls = {"nodescope": f"http://127.0.0.1:{p_ns}/metrics",
            "node_exporter": f"http://127.0.0.1:{p_ne}/metrics"}
    try:
        for name, url in urls.items():
            wait_up(url)
            for _ in range(10):
                scrape(url)
        per_scrape = {n: [] for n in urls}
        order = list(urls)
        for rnd in range(args.rounds):
            for name in (order if rnd % 2 == 0 else order[::-1]):
                pid = procs[name].pid
                c0 = cpu_seconds(pid)
                for _ in range(args.scrapes):
                    scrape(urls[name])
                per_scrape[name].append((cpu_seconds(pid) - c0) / args.scrapes * 1000)
        rss = {n: rss_bytes(procs[n].pid) for n in urls}
        series = {n: series_count(urls[n]) for n in urls}
    finally:
        for p in procs.values():
            p.terminate()
            p.wait()
        for d in reversed(cgroups):
            os.rmdir(d)

    med = {n: statistics.median(v) for n, v in per_scrape.items()}
    total = args.rounds * args.scrapes + 10
    print(f"rounds={args.rounds} scrapes/round={args.scrapes} (alternating), total scrapes per target={total}, "
          f"extra cgroups={args.cgroups}, cgroup collector {'off' if args.no_cgroup else 'on'}")
    print("| target | CPU ms/scrape (median) | min | max | RSS after all scrapes | series |")
    print("|---|---|---|---|---|---|")
    for n in urls:
        v = per_scrape[n]
        print(f"| {n} | {med[n]:.2f} | {min(v):.2f} | {max(v):.2f} | {rss[n] / 2**20:.1f} MiB | {series[n]} |")
    ratio = med["nodescope"] / med["node_exporter"] if med["node_exporter"] else float("nan")
    print(f"\nratio of medians (nodescope / node_exporter CPU per scrape): {ratio:.3f}")


if __name__ == "__main__":
    main()
