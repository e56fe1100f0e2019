#!/usr/bin/env python3
"""A real OTLP trace receiver for the end-to-end tests.

    otlp_receiver.py (--grpc-port P | --http-port P) --out FILE [--fail-until-file PATH]
                     [--retry-after SECS] [--reject-prefix NAME]

Serves TraceService/Export over gRPC, or POST /v1/traces over HTTP
(application/x-protobuf, or application/json in the OTLP/JSON encoding;
gzip-compressed bodies too),
decodes every request and appends one JSON line per span to FILE, flushed
after each request:

    {"trace_id": hex, "span_id": hex, "parent_span_id": hex or "",
     "name", "kind": "SERVER"|"CLIENT"|..., "start_time_unix_nano",
     "end_time_unix_nano", "status_code": "UNSET"|"OK"|"ERROR",
     "status_message", "flags", "trace_state", "attributes": {k: v},
     "resource": {k: v}, "scope": name,
     "headers": {k: v} (the request's x-* headers),
     "compressed": bool (HTTP: Content-Encoding gzip; gRPC does not tell)}

Prints "ready" on stdout once listening. While the --fail-until-file PATH
exists, every request is answered UNAVAILABLE (gRPC) or 503 (HTTP) and
nothing is recorded: tests use it to simulate a backend outage; with
--retry-after SECS those answers ask for that delay (gRPC RetryInfo in
grpc-status-details-bin, HTTP Retry-After). With --reject-prefix NAME,
spans whose name starts with NAME are refused in a partial success
(rejected_spans, error_message) and not recorded.
Runs until killed (SIGTERM/SIGINT).
"""
import argparse
import base64
import gzip
import json
import os
import signal
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)
from opentelemetry.proto.trace.v1 import trace_pb2

KINDS = {
    trace_pb2.Span.SPAN_KIND_UNSPECIFIED: "UNSPECIFIED",
    trace_pb2.Span.SPAN_KIND_INTERNAL: "INTERNAL",
    trace_pb2.Span.SPAN_KIND_SERVER: "SERVER",
    trace_pb2.Span.SPAN_KIND_CLIENT: "CLIENT",
    trace_pb2.Span.SPAN_KIND_PRODUCER: "PRODUCER",
    trace_pb2.Span.SPAN_KIND_CONSUMER: "CONSUMER",
}
STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


def any_value(v):
    """An AnyValue as a plain JSON value."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, which)


def attrs(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


def span_lines(request, headers, compressed, reject_prefix):
    """One dict per span of an ExportTraceServiceRequest that is not
    rejected."""
    for rs in request.resource_spans:
        resource = attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                if reject_prefix is not None and s.name.startswith(reject_prefix):
                    continue
                yield {
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "name": s.name,
                    "kind": KINDS.get(s.kind, str(s.kind)),
                    "start_time_unix_nano": s.start_time_unix_nano,
                    "end_time_unix_nano": s.end_time_unix_nano,
                    "status_code": STATUS.get(s.status.code, str(s.status.code)),
                    "status_message": s.status.message,
                    "flags": s.flags,
                    "trace_state": s.trace_state,
                    "attributes": attrs(s.attributes),
                    "resource": resource,
                    "scope": ss.scope.name,
                    "headers": headers,
                    "compressed": compressed,
                }


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(num, payload):
    """A length-delimited protobuf field."""
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def retry_info_status(code, message, seconds):
    """google.rpc.Status{code, message, details: [Any(RetryInfo{delay})]},
    written by hand (the google.rpc protos are not installed)."""
    duration = varint(1 << 3) + varint(seconds)
    retry_info = field(1, duration)
    any_msg = field(1, b"type.googleapis.com/google.rpc.RetryInfo") + field(2, retry_info)
    return varint(1 << 3) + varint(code) + field(2, message.encode()) + field(3, any_msg)


class Recorder:
    def __init__(self, out, fail_until, retry_after, reject_prefix):
        self.out = open(out, "a", encoding="utf-8")
        self.fail_until = fail_until
        self.retry_after = retry_after
        self.reject_prefix = reject_prefix
        self.lock = threading.Lock()

    def failing(self):
        return self.fail_until is not None and os.path.exists(self.fail_until)

    def record(self, request, headers, compressed):
        """Records the accepted spans; returns the response (a partial
        success when spans were rejected)."""
        lines = [json.dumps(d, sort_keys=True) + "\n"
                 for d in span_lines(request, headers, compressed, self.reject_prefix)]
        with self.lock:
            self.out.writelines(lines)
            self.out.flush()
        total = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        response = trace_service_pb2.ExportTraceServiceResponse()
        if total > len(lines):
            response.partial_success.rejected_spans = total - len(lines)
            response.partial_success.error_message = "rejected by the test"
        return response


class AbortStatus(grpc.Status):
    def __init__(self, code, details, trailing_metadata):
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, recorder):
        self.recorder = recorder

    def Export(self, request, context):
        message = "outage simulated by the test"
        if self.recorder.failing():
            if self.recorder.retry_after is not None:
                details = retry_info_status(14, message, self.recorder.retry_after)
                context.abort_with_status(AbortStatus(
                    grpc.StatusCode.UNAVAILABLE, message, (("grpc-status-details-bin", details),)))
            context.abort(grpc.StatusCode.UNAVAILABLE, message)
        md = dict(context.invocation_metadata())
        headers = {k: v for k, v in md.items() if k.startswith("x-")}
        return self.recorder.record(request, headers, None)


def hex_ids_to_base64(obj):
    """OTLP/JSON writes ids as hex; protobuf's JSON mapping wants base64."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str):
                obj[k] = base64.b64encode(bytes.fromhex(v)).decode()
            else:
                hex_ids_to_base64(v)
    elif isinstance(obj, list):
        for v in obj:
            hex_ids_to_base64(v)
    return obj


def http_handler(recorder):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def reply(self, code, body=b"", ctype="application/x-protobuf", extra=()):
            self.send_response(code)
            for k, v in extra:
                self.send_header(k, v)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if self.path.split("?")[0] != "/v1/traces":
                return self.reply(404, b"not found", "text/plain")
            if recorder.failing():
                extra = []
                if recorder.retry_after is not None:
                    extra.append(("Retry-After", str(recorder.retry_after)))
                return self.reply(503, b"outage simulated by the test", "text/plain", extra)
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            request = trace_service_pb2.ExportTraceServiceRequest()
            compressed = (self.headers.get("Content-Encoding") or "").strip() == "gzip"
            headers = {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("x-")}
            try:
                if compressed:
                    body = gzip.decompress(body)
                if ctype == "application/json":
                    json_format.ParseDict(hex_ids_to_base64(json.loads(body)), request)
                else:
                    request.ParseFromString(body)
            except Exception as e:  # a bad body is the client's fault
                return self.reply(400, str(e).encode(), "text/plain")
            response = recorder.record(request, headers, compressed)
            if ctype == "application/json":
                return self.reply(200, json_format.MessageToJson(response).encode(), "application/json")
            return self.reply(200, response.SerializeToString())

        def log_message(self, *args):
            pass

    return Handler


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--grpc-port", type=int)
    g.add_argument("--http-port", type=int)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--out", required=True)
    p.add_argument("--fail-until-file")
    p.add_argument("--retry-after", type=int)
    p.add_argument("--reject-prefix")
    a = p.parse_args()

    recorder = Recorder(a.out, a.fail_until_file, a.retry_after, a.reject_prefix)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    if a.grpc_port is not None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(recorder), server)
        if server.add_insecure_port(f"{a.host}:{a.grpc_port}") == 0:
            sys.exit(f"cannot listen on {a.host}:{a.grpc_port}")
        server.start()
        print("ready", flush=True)
        stop.wait()
        server.stop(grace=1).wait()
    else:
        httpd = ThreadingHTTPServer((a.host, a.http_port), http_handler(recorder))
        httpd.daemon_threads = True
        t = threading.Thread(target=httpd.serve_forever, daemon=True)
        t.start()
        print("ready", flush=True)
        stop.wait()
        httpd.shutdown()


if __name__ == "__main__":
    main()
