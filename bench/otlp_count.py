#!/usr/bin/env python3
"""A real OTLP/HTTP trace receiver that only counts: every request is decoded
with the OpenTelemetry protobuf definitions (opentelemetry-proto) and its
spans are counted by kind. For benchmarks, where writing every span out (as
tests/py/otlp_receiver.py does) would cost more than the agent under test.

    otlp_count.py PORT

Prints "ready" once listening. On SIGTERM/SIGINT prints one JSON object
{"SERVER": n, "CLIENT": n, ..., "requests": n, "bad_requests": n} and exits.
"""
import gzip
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

KINDS = {v: k.replace("SPAN_KIND_", "") for k, v in trace_pb2.Span.SpanKind.items()}
counts = {"requests": 0, "bad_requests": 0}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        req = trace_service_pb2.ExportTraceServiceRequest()
        try:
            req.ParseFromString(body)
        except Exception:
            with lock:
                counts["bad_requests"] += 1
            self.send_response(400)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        local = {}
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    k = KINDS.get(span.kind, str(span.kind))
                    local[k] = local.get(k, 0) + 1
        with lock:
            counts["requests"] += 1
            for k, n in local.items():
                counts[k] = counts.get(k, 0) + n
        out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)

    def stop(*_):
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("ready", flush=True)
    server.serve_forever()
    with lock:
        print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
