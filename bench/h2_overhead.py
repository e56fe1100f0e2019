#!/usr/bin/env python3
"""Cost of HTTP/2 and gRPC tracing, A/B interleaved.

Two loads, each in three conditions per round, their order rotated every
round: no agent; the agent's hooks attached but returning at once
(--hooks-only: the floor); the whole product exporting OTLP to a sink.
- h2: h2load (prior-knowledge h2c, -c conns -m streams) against nghttpd
  --no-tls serving a small file.
- grpc: a grpcio client (tests/py/grpc_calls.py `load`, one channel,
  THREADS threads calling back to back) against the grpcio server of the
  same script.
Prints requests/s, the ratio to no agent (median of per-round ratios), the
ratio of the product to the hooks-only floor, the agent's CPU per request
and the kernel cost per request of its eBPF programs (bpf_stats).
--ab EXE adds a condition, product-b: the product run by another build
(e.g. one without the HTTP/2 frame walk), in the same rounds; --snap-len N
one more, product-snapN: the product copying N bytes of every packet (the
alternative to walking frames). --grpc-bytes sets the size of each gRPC
request and reply (1 MiB: messages of ~16 64 KiB packets).

Run as root from the repository, under the e2e lock:
  flock -o /work/e2e.lock bench/h2_overhead.py [--pairs 3] [--seconds 5] [--ab EXE]
      [--snap-len N] [--grpc-bytes N] [--loads h2,grpc]
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile

from abrounds import print_conditions, run_rounds
from agentproc import counter, lost
from bpfstats import BpfStats, format_rows
from overhead import OtlpSink, free_port, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = os.path.join(ROOT, "target", "pyenv", "bin", "python")
CALLS = os.path.join(ROOT, "tests", "py", "grpc_calls.py")


class Nghttpd:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="bench-nghttpd-")
        with open(os.path.join(self.dir, "index.html"), "w") as f:
            f.write("<html><body>" + "hello " * 100 + "</body></html>\n")
        self.port = free_port()
        self.proc = subprocess.Popen(["nghttpd", "--no-tls", "-d", self.dir, str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def run(self, seconds, conns, streams):
        out = subprocess.run(["h2load", "-D", str(seconds), "-c", str(conns), "-m", str(streams),
                              "-t", "1", "http://127.0.0.1:%d/index.html" % self.port],
                             capture_output=True, text=True, check=True).stdout
        m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
        done = int(m.group(2))
        return done / seconds, done

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Grpc:
    def __init__(self, threads, size):
        self.port = free_port()
        self.threads = threads
        self.size = size
        self.server = subprocess.Popen([PYTHON, CALLS, "server", str(self.port)],
                                       stdout=subprocess.PIPE, text=True)
        self.server.stdout.readline()

    def run(self, seconds):
        # A fresh client (and connection) per run: the agent of the run
        # sees the connection from its first frame.
        c = subprocess.Popen([PYTHON, CALLS, "client", str(self.port)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        c.stdout.readline()
        c.stdin.write("load %s %d %d\nquit\n" % (seconds, self.threads, self.size))
        c.stdin.flush()
        n = int(c.stdout.readline().split()[1])
        c.wait()
        return n / seconds, n

    def stop(self):
        self.server.terminate()
        self.server.wait()


CONDITIONS = [
    ("none", None),
    ("hooks-only", ["--hooks-only", "--profile-hz", "0"]),
    ("product", ["--otlp-endpoint", "{otlp}", "--otlp-protocol", "http/protobuf", "--profile-hz", "0"]),
]


def bench(label, load, pairs, sink, stats, conditions, exes):
    return run_rounds(conditions, pairs, load, sink, stats, lambda err: "http.messages=%d spans=%d lost=%s walk_lost=%s" % (
        counter(err, "http.messages"), counter(err, "spans_submitted"), lost(err),
        counter(err, "kernel.h2_sync_lost")), prefix=label + " ", width=16, exes=exes)


def report(label, results, conditions):
    print("\n%s" % label)
    print_conditions(conditions, results, indent="  ", width=16)
    rel = [x["rps"] / h["rps"] for x, h in zip(results["product"], results["hooks-only"])]
    print("  product / hooks-only: %.3f" % statistics.median(rel))
    for name, _ in conditions[2:]:
        rows = sorted(results[name], key=lambda x: x["kns"])
        print("  kernel cost per request, %s (median round): %s" % (name, format_rows(rows[len(rows) // 2]["rows"])))
    if "product-b" in results:
        rel = [x["rps"] / b["rps"] for x, b in zip(results["product"], results["product-b"])]
        print("  product / product-b: %.3f (min %.3f max %.3f)" % (statistics.median(rel), min(rel), max(rel)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--streams", type=int, default=10, help="h2load -m: concurrent streams per connection")
    ap.add_argument("--grpc-threads", type=int, default=4)
    ap.add_argument("--grpc-bytes", type=int, default=0, help="bytes in each gRPC request and reply")
    ap.add_argument("--loads", default="h2,grpc", help="loads to run (default h2,grpc)")
    ap.add_argument("--ab", metavar="EXE", help="adds the condition product-b: the product run by the agent EXE")
    ap.add_argument("--snap-len", type=int, help="adds the condition product-snapN: the product with --snap-len N")
    a = ap.parse_args()
    conditions, exes = list(CONDITIONS), {}
    if a.ab:
        conditions.append(("product-b", dict(CONDITIONS)["product"]))
        exes["product-b"] = os.path.abspath(a.ab)
    if a.snap_len:
        conditions.append(("product-snap%d" % a.snap_len, dict(CONDITIONS)["product"] + ["--snap-len", str(a.snap_len)]))
    loads = a.loads.split(",")
    sink = OtlpSink()
    stats = BpfStats()
    nghttpd = Nghttpd()
    grpc = Grpc(a.grpc_threads, a.grpc_bytes)
    try:
        nghttpd.run(1, a.connections, a.streams)
        grpc.run(1)
        if "h2" in loads:
            h2 = bench("h2", lambda: nghttpd.run(a.seconds, a.connections, a.streams), a.pairs, sink, stats,
                       conditions, exes)
        if "grpc" in loads:
            g = bench("grpc", lambda: grpc.run(a.seconds), a.pairs, sink, stats, conditions, exes)
        if "h2" in loads:
            report("h2load -c%d -m%d -t1 against nghttpd --no-tls, %d s per run, %d rounds" % (
                a.connections, a.streams, a.seconds, a.pairs), h2, conditions)
        if "grpc" in loads:
            report("grpcio unary, one channel, %d client threads, %d B each way, %d s per run, %d rounds" % (
                a.grpc_threads, a.grpc_bytes, a.seconds, a.pairs), g, conditions)
    finally:
        grpc.stop()
        nghttpd.stop()
        stats.close()
        sink.stop()


if __name__ == "__main__":
    main()
