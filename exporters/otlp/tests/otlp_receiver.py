#!/usr/bin/env python3
"""OTLP receiver for nodescope's tests, built on the official OTLP protos (PyPI
opentelemetry-proto) and grpcio. It serves OTLP/gRPC and OTLP/HTTP (protobuf, optionally
gzip) and prints one JSON line per request on stdout:
{"transport": "grpc"|"http", "signal": "metrics"|"logs", "headers": {...}, "request": <MessageToDict>}
It prints READY once both listeners are up. With --cert/--key/--client-ca the gRPC
listener requires TLS with a client certificate signed by that CA.
"""
import argparse
import gzip
import json
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

LOCK = threading.Lock()


def emit(transport, signal, headers, msg):
    line = json.dumps({
        "transport": transport,
        "signal": signal,
        "headers": headers,
        "request": MessageToDict(msg),
    })
    with LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def Export(self, request, context):
        emit("grpc", "metrics", {k: v for k, v in context.invocation_metadata()}, request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def Export(self, request, context):
        emit("grpc", "logs", {k: v for k, v in context.invocation_metadata()}, request)
        return logs_service_pb2.ExportLogsServiceResponse()


class Http(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        headers = {k.lower(): v for k, v in self.headers.items()}
        if self.path == "/v1/metrics":
            req = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
            emit("http", "metrics", headers, req)
            resp = metrics_service_pb2.ExportMetricsServiceResponse()
        elif self.path == "/v1/logs":
            req = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
            emit("http", "logs", headers, req)
            resp = logs_service_pb2.ExportLogsServiceResponse()
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
    a = ap.parse_args()
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
    else:
        server.add_insecure_port(addr)
    server.start()
    httpd = ThreadingHTTPServer(("127.0.0.1", a.http_port), Http)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print("READY", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
