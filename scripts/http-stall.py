#!/usr/bin/env python3
"""Clients that ask for /metrics and never read it (issue 16, item 1).

usage: scripts/http-stall.py PID PORT [SECONDS] [CLIENTS]

Reads /metrics once in full, then opens CLIENTS (100) connections that send
`GET /metrics` and never read, samples the agent's RSS (VmRSS of PID) for SECONDS (30),
closes them and samples RSS for 20 s more. Standard library only.
"""
import socket
import sys
import time


def main():
    pid, port = int(sys.argv[1]), int(sys.argv[2])
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
    clients = int(sys.argv[4]) if len(sys.argv) > 4 else 100

    def rss():
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024
        return 0.0

    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    n = 0
    while True:
        b = s.recv(1 << 20)
        if not b:
            break
        n += len(b)
    s.close()
    time.sleep(1)
    base = rss()
    print(f"/metrics {n / 1e6:.1f} MB; RSS before {base:.1f} MiB", flush=True)
    conns = []
    for _ in range(clients):
        c = socket.create_connection(("127.0.0.1", port))
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        conns.append(c)
    peak, t0 = base, time.time()
    while time.time() - t0 < seconds:
        peak = max(peak, rss())
        time.sleep(0.2)
    print(f"RSS peak with {clients} clients not reading: {peak:.1f} MiB", flush=True)
    for c in conns:
        c.close()
    for i in range(10):
        time.sleep(2)
        print(f"RSS {2 * (i + 1)} s after they closed: {rss():.1f} MiB", flush=True)


if __name__ == "__main__":
    main()
