#!/usr/bin/env python3
"""Flight recorder benchmarks (docs/benchmarks.md "Flight recorder"), as root:

    python3 scripts/bench_recorder.py [--rounds 10] [--seconds 10] [--bundle-age 1860]

1. Cost: two release agents run side by side on free loopback ports, identical but for
   `[recorder] enabled`. Each round measures one agent's CPU (utime + stime of
   /proc/<pid>/stat) for --seconds, then the other's (the order flips every round), first
   with the node idle, then under a connect storm to a closed port (a thread of this
   script). Reported: the median CPU of each side in % of one core, their ratio and
   difference, and the recorder's own accounting (/api/v1/recorder/status cpu_seconds).
2. Memory: the recorder's accounted bytes (nodescope_recorder_memory_bytes) and both
   agents' RSS at the end.
3. Bundle: once the recorder-on agent has run --bundle-age seconds (by default long enough
   for 15 min before the trigger plus a 15.5 min baseline), POST an incident with
   before=15m after=30s and report how long after the after window the bundle was ready
   and its size.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def start(binary, port, recorder, tmp):
    spool = os.path.join(tmp, f"spool-{port}")
    cfg = os.path.join(tmp, f"agent-{port}.toml")
    with open(cfg, "w") as f:
        f.write(f'[agent]\nlisten = "127.0.0.1:{port}"\n[recorder]\nenabled = {"true" if recorder else "false"}\nspool_dir = "{spool}"\n')
    log = open(os.path.join(tmp, f"agent-{port}.log"), "w")
    p = subprocess.Popen([binary, "run", "--config", cfg], stdout=log, stderr=log, env={**os.environ, "RUST_LOG": "warn"})
    for _ in range(200):
        try:
            get(f"http://127.0.0.1:{port}/readyz")
            return p
        except Exception:
            time.sleep(0.1)
    sys.exit(f"agent on {port} did not start (see {log.name})")


def storm(stop, port):
    while not stop.is_set():
        s = socket.socket()
        s.settimeout(0.2)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            pass
        s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--bundle-age", type=float, default=1860.0)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--skip-cost", action="store_true", help="only the memory and bundle parts")
    a = ap.parse_args()
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "nodescope"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "nodescope")
    tmp = tempfile.mkdtemp(prefix="nsrec-bench.")
    on_port, off_port = free_port(), free_port()
    on = start(binary, on_port, True, tmp)
    off = start(binary, off_port, False, tmp)
    started = time.time()
    sides = {"on": on, "off": off}
    print(f"# {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; recorder on :{on_port}, off :{off_port}")
    try:
        time.sleep(15)
        rec = lambda: json.loads(get(f"http://127.0.0.1:{on_port}/api/v1/recorder/status"))
        for scenario in [] if a.skip_cost else ["idle", "connect storm"]:
            stop = threading.Event()
            threads = []
            if scenario != "idle":
                closed = free_port()
                threads = [threading.Thread(target=storm, args=(stop, closed), daemon=True) for _ in range(2)]
                for t in threads:
                    t.start()
                time.sleep(2)
            samples = {"on": [], "off": []}
            own0, t0 = rec()["cpu_seconds"], time.time()
            for r in range(a.rounds):
                order = ["on", "off"] if r % 2 == 0 else ["off", "on"]
                for side in order:
                    pid = sides[side].pid
                    c0, w0 = cpu_seconds(pid), time.time()
                    time.sleep(a.seconds)
                    samples[side].append((cpu_seconds(pid) - c0) / (time.time() - w0) * 100)
            own = (rec()["cpu_seconds"] - own0) / (time.time() - t0) * 100
            stop.set()
            for t in threads:
                t.join()
            m_on, m_off = statistics.median(samples["on"]), statistics.median(samples["off"])
            print(f"{scenario}: agent CPU % of one core, median of {a.rounds} rounds: recorder on {m_on:.3f} "
                  f"(min {min(samples['on']):.3f}, max {max(samples['on']):.3f}), off {m_off:.3f} "
                  f"(min {min(samples['off']):.3f}, max {max(samples['off']):.3f}); ratio {m_on / m_off if m_off else float('nan'):.3f}, "
                  f"difference {m_on - m_off:+.3f} points; recorder's own accounting {own:.3f} %")
        wait = a.bundle_age - (time.time() - started)
        if wait > 0:
            print(f"waiting {wait:.0f} s for {a.bundle_age:.0f} s of recording before the bundle", flush=True)
            time.sleep(wait)
        st = rec()
        print(f"memory: recorder accounts {st['memory_bytes'] / 2**20:.1f} MiB of its {st['memory_cap_bytes'] / 2**20:.0f} MiB cap; "
              f"RSS recorder on {rss_mib(on.pid):.1f} MiB, off {rss_mib(off.pid):.1f} MiB; own CPU {st['cpu_seconds']:.2f} s "
              f"in {time.time() - started:.0f} s ({st['cpu_seconds'] / (time.time() - started) * 100:.3f} % of a core)")
        req = urllib.request.Request(f"http://127.0.0.1:{on_port}/api/v1/incidents", data=b'{"before":"15m","after":"30s","reason":"benchmark"}',
                                     headers={"content-type": "application/json"}, method="POST")
        r = json.loads(urllib.request.urlopen(req).read())
        while True:
            time.sleep(0.2)
            l = json.loads(get(f"http://127.0.0.1:{on_port}/api/v1/incidents"))["incidents"]
            i = next(x for x in l if x["id"] == r["id"])
            if i["state"] in ("ready", "failed"):
                break
        print(f"bundle: {i['state']}, ready {i['ready_after_window_seconds']} s after the after window, "
              f"{i['bytes'] / 1e6:.2f} MB for 15 min before (+30 s after, baseline {i['baseline']['to'] - i['baseline']['from']:.0f} s); "
              f"top finding: {i['top_finding']}")
        m = json.loads(get(f"http://127.0.0.1:{on_port}/api/v1/incidents/{r['id']}/files/manifest.json"))
        for f in m["files"]:
            print(f"  {f['name']}: {f['bytes']} bytes")
    finally:
        for p in (on, off):
            p.terminate()
            p.wait()
    print(f"# load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
