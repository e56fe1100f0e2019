#!/usr/bin/env python3
"""Cost of TLS plaintext capture on a real HTTPS server, A/B interleaved.

wrk over HTTPS (keep-alive) against nginx with TLS, or with --server go
against tests/go/tls_server.go (net/http, HTTP/1.1, built here with the
host's Go: Go crypto/tls probes, one at the start of Write, one at the
start of Read and one on Read's call to memmove), certificates made with the openssl
CLI, in seven conditions per round, their order rotated every round: no
agent; bare uprobes (tracefs probes where the agent probes, no eBPF
program behind them, tracing off: what the traps alone cost, the floor of
any uprobe-based capture: entry probes and uretprobes on OpenSSL's inner
read and write functions where the agent probes them, see
tracer/src/tls/inner.rs; Go's entries and Read's call to memmove, see
bench/bare_uprobes.py); the agent's hooks attached
but returning at once (--hooks-only --tls-snap-len 0); capture only
(--no-spans), with TLS capture off and on (the uprobes' cost without the
span work it feeds); the whole product with TLS capture off
(--tls-snap-len 0: the ciphertext is recognised and silenced, no uprobe);
the whole product with TLS capture on (uprobes and uretprobes on
SSL_read/SSL_write/_ex of libssl.so.3, which nginx and wrk both use).
Prints requests/s, the ratio to no agent (median of per-round ratios),
the agent's CPU per request and the kernel cost per request of its eBPF
programs (bpf_stats; a uprobe's trap and return trampoline are not in it).

Run as root from the repository:  bench/tls_overhead.py [--server go] [--pairs 5]
  --ab OTHER_TRACER  adds "tls-on-b": the product with TLS capture on, run
                     with another build (e.g. before a change), in the
                     same rounds.
  --wrapper-floor    adds "bare-wrappers": bare uprobes on the entries of
                     OpenSSL's exported SSL_read/SSL_write/_ex themselves.
  --entry-floor      adds "bare-entries": bare uprobes at the agent's entry
                     points alone (what the return probes add, by
                     difference).
"""
import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time

from abrounds import print_conditions, run_rounds
from agentproc import counter
from bare_uprobes import BareUprobes, libraries_of
from bpfstats import BpfStats, format_rows
from overhead import Nginx, OtlpSink, free_port


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class GoServer:
    def __init__(self, workdir):
        cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", key, "-out", cert], check=True, capture_output=True)
        self.binary = binary = os.path.join(workdir, "tls_server")
        env = dict(os.environ, GO111MODULE="off", GOPATH=os.path.join(workdir, "gopath"),
                   GOCACHE=os.path.join(workdir, "gocache"), GOTOOLCHAIN="local", GOFLAGS="")
        subprocess.run(["go", "build", "-o", binary, os.path.join(ROOT, "tests/go/tls_server.go")],
                       check=True, env=env)
        self.port = free_port()
        self.proc = subprocess.Popen([binary, str(self.port), cert, key], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        time.sleep(0.2)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def wrk(port, seconds, conns):
    out = subprocess.run(["wrk", "-t2", "-c%d" % conns, "-d%ds" % seconds,
                          "https://127.0.0.1:%d/index.html" % port],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return rps, total


CONDITIONS = [
    ("none", None),
    ("hooks-only", ["--hooks-only", "--profile-hz", "0", "--tls-snap-len", "0"]),
    ("capture-tls-off", ["--no-spans", "--profile-hz", "0", "--tls-snap-len", "0"]),
    ("capture-tls-on", ["--no-spans", "--profile-hz", "0"]),
    ("tls-off", ["--otlp-endpoint", "{otlp}", "--otlp-protocol", "http/protobuf", "--profile-hz", "0",
                 "--tls-snap-len", "0"]),
    ("tls-on", ["--otlp-endpoint", "{otlp}", "--otlp-protocol", "http/protobuf", "--profile-hz", "0"]),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=20)
    ap.add_argument("--server", choices=["nginx", "go"], default="nginx")
    ap.add_argument("--ab", help="another tracer binary, run as condition tls-on-b")
    ap.add_argument("--wrapper-floor", action="store_true",
                    help="add bare uprobes on OpenSSL's exported wrappers (bare-wrappers)")
    ap.add_argument("--entry-floor", action="store_true",
                    help="add bare uprobes at the agent's entry points alone, no return probes (bare-entries)")
    a = ap.parse_args()
    conditions = list(CONDITIONS)
    exes = {}
    if a.ab:
        conditions.append(("tls-on-b", dict(CONDITIONS)["tls-on"]))
        exes["tls-on-b"] = a.ab
    with tempfile.TemporaryDirectory(prefix="tls-bench") as workdir:
        # wrk's libssl is probed in every case, as the agent probes it.
        libs = libraries_of("wrk", "libssl.so")
        probed = []
        if a.server == "go":
            server, title = GoServer(workdir), "Go net/http TLS server (GOMAXPROCS default)"
            probed += [(server.binary, "crypto/tls.(*Conn).Write"), (server.binary, "crypto/tls.(*Conn).Read")]
        else:
            server, title = Nginx(1, tls=True), "nginx TLS worker_processes 1"
            libs |= libraries_of("nginx", "libssl.so")
        probed += [(lib, sym) for lib in sorted(libs)
                   for sym in ("SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex")]
        conditions.insert(1, ("bare-uprobes", BareUprobes(probed)))
        if a.wrapper_floor:
            conditions.insert(2, ("bare-wrappers", BareUprobes(probed, as_agent=False)))
        if a.entry_floor:
            conditions.insert(2, ("bare-entries", BareUprobes(probed, returns=False)))
        sink = OtlpSink()
        stats = BpfStats()
        try:
            wrk(server.port, 2, a.connections)
            results = run_rounds(conditions, a.pairs, lambda: wrk(server.port, a.seconds, a.connections), sink,
                                 stats, lambda err: "tls.calls=%d http.messages=%d" % (
                                     counter(err, "tls.calls"), counter(err, "http.messages")),
                                 width=16, exes=exes)
            print("\n%s, wrk -t2 -c%d https, %d s per run, %d rounds" % (title, a.connections, a.seconds, a.pairs))
            print_conditions(conditions, results, width=16)
            for name in [n for n in ("tls-on", "tls-on-b") if n in results]:
                rows = sorted(results[name], key=lambda x: x["kns"])
                print("kernel cost per request, %s (median round): %s" % (
                    name, format_rows(rows[len(rows) // 2]["rows"])))
            for name in [n for n in ("tls-off", "tls-on", "tls-on-b") if n in results]:
                rel = [x["rps"] / h["rps"] for x, h in zip(results[name], results["hooks-only"])]
                print("%s / hooks-only: %.3f" % (name, statistics.median(rel)))
            for name in [n for n in ("capture-tls-on", "tls-on", "tls-on-b") if n in results]:
                rel = [x["rps"] / h["rps"] for x, h in zip(results[name], results["bare-uprobes"])]
                print("%s / bare-uprobes: %.3f" % (name, statistics.median(rel)))
        finally:
            stats.close()
            sink.stop()
            server.stop()


if __name__ == "__main__":
    main()
