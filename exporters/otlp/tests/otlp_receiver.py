#!/usr/bin/env python3
"""OTLP receiver for nodescope's tests, built on the official OTLP protos (PyPI
opentelemetry-proto) and grpcio. It serves OTLP/gRPC and OTLP/HTTP (protobuf, optionally
gzip) and prints one JSON line per request on stdout:
{"transport": "grpc"|"http", "signal": "metrics"|"logs", "headers": {...},
 "items": <data points or log records in the request>, "rejected": <n>, "request": <MessageToDict>}
It prints READY once both listeners are up. With --cert/--key/--client-ca the gRPC
listener requires TLS with a client certificate signed by that CA.

With --reject-points N / --reject-logs N it answers every export with an OTLP partial
success rejecting min(N, items) data points / log records, with the error_message
"<--reject-message> (<transport> <signal>)".

grpcio does not show a servicer the request's grpc-encoding, so without TLS the gRPC port
is a pass-through tap in front of grpcio that reads the client's HTTP/2 DATA frames and
prints, for every gRPC message, {"transport": "grpc-wire", "stream": id, "compressed":
<Compressed-Flag of the gRPC length prefix>, "gzip": <body is a gzip member that
decompresses>, "length": n}.
"""
import argparse
import gzip
import json
import socket
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

LOCK = threading.Lock()
ARGS = None


def write(obj):
    line = json.dumps(obj)
    with LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def data_points(req):
    n = 0
    for rm in req.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                if kind:
                    n += len(getattr(m, kind).data_points)
    return n


def log_records(req):
    return sum(len(sl.log_records) for rl in req.resource_logs for sl in rl.scope_logs)


def respond(transport, signal, headers, req):
    """Prints the request and builds the response (a partial success when configured)."""
    if signal == "metrics":
        items, limit = data_points(req), ARGS.reject_points
        resp = metrics_service_pb2.ExportMetricsServiceResponse()
    else:
        items, limit = log_records(req), ARGS.reject_logs
        resp = logs_service_pb2.ExportLogsServiceResponse()
    rejected = min(limit, items)
    if limit > 0:
        ps = resp.partial_success
        if signal == "metrics":
            ps.rejected_data_points = rejected
        else:
            ps.rejected_log_records = rejected
        ps.error_message = f"{ARGS.reject_message} ({transport} {signal})"
    write({
        "transport": transport,
        "signal": signal,
        "headers": headers,
        "items": items,
        "rejected": rejected,
        "request": MessageToDict(req),
    })
    return resp


class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def Export(self, request, context):
        md = {k: v for k, v in context.invocation_metadata()}
        return respond("grpc", "metrics", md, request)


class Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def Export(self, request, context):
        md = {k: v for k, v in context.invocation_metadata()}
        return respond("grpc", "logs", md, request)


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class H2Tap:
    """Parses the client side of an HTTP/2 (prior knowledge) connection: DATA frames,
    reassembled per stream into gRPC length-prefixed messages."""

    def __init__(self):
        self.buf = b""
        self.preface = False
        self.broken = False
        self.streams = {}

    def feed(self, data):
        if self.broken:
            return
        self.buf += data
        if not self.preface:
            if len(self.buf) < len(PREFACE):
                return
            if not self.buf.startswith(PREFACE):
                write({"transport": "grpc-wire", "error": "no HTTP/2 preface"})
                self.broken = True
                return
            self.buf = self.buf[len(PREFACE):]
            self.preface = True
        while len(self.buf) >= 9:
            length = int.from_bytes(self.buf[0:3], "big")
            ftype, flags = self.buf[3], self.buf[4]
            sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
            if len(self.buf) < 9 + length:
                return
            payload = self.buf[9:9 + length]
            self.buf = self.buf[9 + length:]
            if ftype == 0x0:  # DATA
                if flags & 0x8:  # PADDED
                    pad = payload[0]
                    payload = payload[1:len(payload) - pad]
                self.data(sid, payload)

    def data(self, sid, payload):
        b = self.streams.pop(sid, b"") + payload
        while len(b) >= 5:
            n = int.from_bytes(b[1:5], "big")
            if len(b) < 5 + n:
                break
            flag, msg, b = b[0], b[5:5 + n], b[5 + n:]
            is_gzip = False
            if msg[:2] == b"\x1f\x8b":
                try:
                    gzip.decompress(msg)
                    is_gzip = True
                except Exception:
                    pass
            write({"transport": "grpc-wire", "stream": sid, "compressed": flag == 1,
                   "gzip": is_gzip, "length": n})
        if b:
            self.streams[sid] = b


def pump(src, dst, tap):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if tap is not None:
                tap.feed(data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (dst, src):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve_tap(listener, upstream_port):
    while True:
        client, _ = listener.accept()
        try:
            upstream = socket.create_connection(("127.0.0.1", upstream_port))
        except OSError:
            client.close()
            continue
        threading.Thread(target=pump, args=(client, upstream, H2Tap()), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client, None), daemon=True).start()


class Http(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        headers = {k.lower(): v for k, v in self.headers.items()}
        if self.path == "/v1/metrics":
            req = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
            resp = respond("http", "metrics", headers, req)
        elif self.path == "/v1/logs":
            req = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
            resp = respond("http", "logs", headers, req)
        else:
            self.send_response(404)
            self.end_headers()
            return
        out = resp.SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--client-ca")
    ap.add_argument("--reject-points", type=int, default=0)
    ap.add_argument("--reject-logs", type=int, default=0)
    ap.add_argument("--reject-message", default="rejected by the test receiver")
    a = ap.parse_args()
    global ARGS
    ARGS = a
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), server)
    addr = f"127.0.0.1:{a.grpc_port}"
    if a.cert:
        creds = grpc.ssl_server_credentials(
            [(open(a.key, "rb").read(), open(a.cert, "rb").read())],
            root_certificates=open(a.client_ca, "rb").read(),
            require_client_auth=True,
        )
        server.add_secure_port(addr, creds)
        server.start()
    else:
        inner = server.add_insecure_port("127.0.0.1:0")
        server.start()
        listener = socket.create_server(("127.0.0.1", a.grpc_port))
        threading.Thread(target=serve_tap, args=(listener, inner), daemon=True).start()
    httpd = ThreadingHTTPServer(("127.0.0.1", a.http_port), Http)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print("READY", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
