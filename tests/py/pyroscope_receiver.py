#!/usr/bin/env python3
"""A Pyroscope ingest endpoint for the tests.

    pyroscope_receiver.py --port P --out FILE [--fail-until-file PATH]

Serves POST /ingest?name=APP{k=v,...}&from=S&until=S&format=pprof&... (the
Pyroscope ingest API), decodes the pprof body (gzip-compressed or not) with
a profile_pb2 compiled from tests/py/profile.proto by grpcio-tools at
start-up, and appends one JSON line per accepted profile to FILE, flushed:

    {"name": the raw name, "app": name before "{", "labels": {k: v},
     "query": {other query parameters},
     "sample_types": [[type, unit], ...], "period_type": [type, unit],
     "period", "time_nanos", "duration_nanos",
     "samples": number of Sample messages, "total": [sum of each value],
     "stacks": [{"values": [...], "labels": {k: v},
                 "functions": [leaf ... root]}],
     "mappings": [file names]}

Answers 404 to another path, 400 to a request without name/from/until, with
another format, or whose body does not decode (nothing recorded). While
--fail-until-file PATH exists every request is answered 503 and nothing is
recorded (simulated outage). Prints "ready" once listening; runs until
killed (SIGTERM/SIGINT).
"""
import argparse
import atexit
import gzip
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))


def load_profile_pb2():
    """Compiles profile.proto into a temporary directory and imports it."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="pprof-proto-")
    atexit.register(shutil.rmtree, out, True)
    rc = protoc.main(
        ["protoc", f"-I{HERE}", f"--python_out={out}", os.path.join(HERE, "profile.proto")]
    )
    if rc != 0:
        sys.exit(f"protoc failed on profile.proto ({rc})")
    sys.path.insert(0, out)
    import profile_pb2  # noqa: E402

    return profile_pb2


def parse_name(name):
    """`app{k=v,k2=v2}` -> (app, {k: v})."""
    app, brace, rest = name.partition("{")
    labels = {}
    if brace:
        body = rest.rstrip("}")
        for kv in body.split(","):
            if not kv.strip():
                continue
            k, _, v = kv.partition("=")
            labels[k.strip()] = v.strip()
    return app.strip(), labels


def describe(pb, data):
    """The JSON summary of a pprof body."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    p = pb.Profile()
    p.ParseFromString(data)
    st = p.string_table

    def s(i):
        return st[i] if 0 <= i < len(st) else f"<bad string {i}>"

    functions = {f.id: s(f.name) for f in p.function}
    locations = {}
    for loc in p.location:
        # Inlined functions first, the caller last: leaf to root.
        locations[loc.id] = [functions.get(l.function_id, "?") for l in loc.line]
    stacks = []
    total = [0] * len(p.sample_type)
    for smp in p.sample:
        names = []
        for lid in smp.location_id:
            names.extend(locations.get(lid, ["<bad location>"]))
        for i, v in enumerate(smp.value):
            if i < len(total):
                total[i] += v
        stacks.append(
            {
                "values": list(smp.value),
                "labels": {
                    s(l.key): (s(l.str) if l.str else l.num) for l in smp.label
                },
                "functions": names,
            }
        )
    return {
        "sample_types": [[s(t.type), s(t.unit)] for t in p.sample_type],
        "period_type": [s(p.period_type.type), s(p.period_type.unit)],
        "period": p.period,
        "time_nanos": p.time_nanos,
        "duration_nanos": p.duration_nanos,
        "samples": len(p.sample),
        "total": total,
        "stacks": stacks,
        "mappings": [s(m.filename) for m in p.mapping],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--fail-until-file")
    args = ap.parse_args()

    pb = load_profile_pb2()
    out = open(args.out, "a", encoding="utf-8")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def answer(self, code, text=""):
            body = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length)
            url = urlsplit(self.path)
            if url.path != "/ingest":
                return self.answer(404, "not found")
            if args.fail_until_file and os.path.exists(args.fail_until_file):
                return self.answer(503, "outage simulated by the test")
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            for k in ("name", "from", "until"):
                if k not in q:
                    return self.answer(400, f"missing {k}")
            if q.get("format") != "pprof":
                return self.answer(400, f"format {q.get('format')!r} is not pprof")
            try:
                int(q["from"])
                int(q["until"])
                line = describe(pb, data)
            except Exception as e:  # noqa: BLE001
                return self.answer(400, f"bad request: {e}")
            app, labels = parse_name(q["name"])
            line.update(
                {
                    "name": q["name"],
                    "app": app,
                    "labels": labels,
                    "query": {k: v for k, v in q.items() if k != "name"},
                    "content_type": self.headers.get("Content-Type", ""),
                    "user_agent": self.headers.get("User-Agent", ""),
                    "tenant": self.headers.get("X-Scope-OrgID", ""),
                }
            )
            with lock:
                out.write(json.dumps(line, sort_keys=True) + "\n")
                out.flush()
            self.answer(200)

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
