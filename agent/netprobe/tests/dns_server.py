#!/usr/bin/env python3
"""A DNS server under the test's control (agent/netprobe/tests/dns.rs), built on dnslib.

It answers on UDP and TCP and logs every query it receives, one JSON line each, to the
--log file: that log is the capture the tests compare the probe's counts with.

The answer depends on the first label of the question name:
  fast      A 10.1.0.1 / AAAA fd00::1, at once
  slow30    the same, 30 ms later          slow120   the same, 120 ms later
  nx        NXDOMAIN                       fail      SERVFAIL
  refused   REFUSED                        drop      no answer at all
  tc        over UDP an empty answer with TC set; over TCP A 10.1.0.2
  srch      NXDOMAIN, except srch.b.test (A 10.1.0.3; AAAA: no records)
  anything else: NXDOMAIN
"""
import argparse
import heapq
import json
import socket
import struct
import sys
import threading
import time

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord

LOCK = threading.Lock()


def log(out, transport, peer, q):
    with LOCK:
        out.write(
            json.dumps(
                {
                    "t": time.monotonic(),
                    "transport": transport,
                    "client_port": peer[1],
                    "id": q.header.id,
                    "name": str(q.q.qname).rstrip(".").lower(),
                    "qtype": QTYPE.get(q.q.qtype),
                }
            )
            + "\n"
        )
        out.flush()


def answer(q, transport):
    """(reply DNSRecord or None to drop, delay seconds)."""
    name = str(q.q.qname).rstrip(".").lower()
    first = name.split(".")[0]
    r = q.reply()
    qt = q.q.qtype

    def addr(v4, v6):
        if qt == QTYPE.A:
            r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A(v4), ttl=1))
        elif qt == QTYPE.AAAA and v6:
            r.add_answer(RR(q.q.qname, QTYPE.AAAA, rdata=AAAA(v6), ttl=1))

    if first == "fast":
        addr("10.1.0.1", "fd00::1")
        return r, 0.0
    if first == "slow30":
        addr("10.1.0.1", "fd00::1")
        return r, 0.030
    if first == "slow120":
        addr("10.1.0.1", "fd00::1")
        return r, 0.120
    if first == "fail":
        r.header.rcode = RCODE.SERVFAIL
        return r, 0.0
    if first == "refused":
        r.header.rcode = RCODE.REFUSED
        return r, 0.0
    if first == "drop":
        return None, 0.0
    if first == "tc":
        if transport == "udp":
            r.header.tc = 1
        else:
            addr("10.1.0.2", None)
        return r, 0.0
    if name == "srch.b.test":
        addr("10.1.0.3", None)
        return r, 0.0
    r.header.rcode = RCODE.NXDOMAIN
    return r, 0.0


class Delayed:
    """Sends delayed answers from one thread, each at (receive time + delay): the
    injected delay does not include the time spent parsing and building the answer."""

    def __init__(self, sock):
        self.sock = sock
        self.heap = []
        self.seq = 0
        self.cv = threading.Condition()
        threading.Thread(target=self.run, daemon=True).start()

    def put(self, when, payload, to):
        with self.cv:
            self.seq += 1
            heapq.heappush(self.heap, (when, self.seq, payload, to))
            self.cv.notify()

    def run(self):
        while True:
            with self.cv:
                while not self.heap:
                    self.cv.wait()
                when, _, payload, to = self.heap[0]
                now = time.monotonic()
                if when > now:
                    self.cv.wait(when - now)
                    continue
                heapq.heappop(self.heap)
            self.sock.sendto(payload, to)


def serve_udp(sock, out):
    delayed = Delayed(sock)
    while True:
        data, peer = sock.recvfrom(4096)
        t0 = time.monotonic()
        try:
            q = DNSRecord.parse(data)
        except Exception:  # noqa: BLE001 - a test server: ignore garbage
            continue
        log(out, "udp", peer, q)
        r, delay = answer(q, "udp")
        if r is None:
            continue
        if delay:
            delayed.put(t0 + delay, r.pack(), peer)
        else:
            sock.sendto(r.pack(), peer)


def handle_tcp(conn, peer, out):
    with conn:
        while True:
            hdr = conn.recv(2, socket.MSG_WAITALL)
            if len(hdr) < 2:
                return
            (n,) = struct.unpack("!H", hdr)
            data = conn.recv(n, socket.MSG_WAITALL)
            if len(data) < n:
                return
            t0 = time.monotonic()
            q = DNSRecord.parse(data)
            log(out, "tcp", peer, q)
            r, delay = answer(q, "tcp")
            if r is None:
                continue
            if delay:
                time.sleep(max(0.0, t0 + delay - time.monotonic()))
            p = r.pack()
            conn.sendall(struct.pack("!H", len(p)) + p)


def serve_tcp(sock, out):
    while True:
        conn, peer = sock.accept()
        threading.Thread(target=handle_tcp, args=(conn, peer, out), daemon=True).start()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--port", type=int, default=53)
    ap.add_argument("--log", required=True)
    a = ap.parse_args()
    fam = socket.AF_INET6 if ":" in a.addr else socket.AF_INET
    out = open(a.log, "a", encoding="utf-8")
    u = socket.socket(fam, socket.SOCK_DGRAM)
    u.bind((a.addr, a.port))
    t = socket.socket(fam, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((a.addr, a.port))
    t.listen(64)
    threading.Thread(target=serve_tcp, args=(t, out), daemon=True).start()
    print("ready", flush=True)
    serve_udp(u, out)


if __name__ == "__main__":
    sys.exit(main())
