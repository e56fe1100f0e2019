#!/usr/bin/env python3
"""Overhead of the agent on a real server, A/B interleaved in one run.

wrk (keep-alive, small static file) against nginx, for each nginx
worker setting, in four conditions per round, their order rotated every
round: no agent; the agent's programs attached but returning at once
(--hooks-only: the floor of this design); the agent capturing everything
and rebuilding the streams (--no-spans); the whole product, with HTTP
spans exported over OTLP to a local endpoint that discards them.
Prints requests/s, the ratio to no agent (median of the per-round ratios),
p99 latency, the agent's CPU per request, its peak RSS and the kernel cost
per request of its eBPF programs (bpf_stats: run time of every program over
the run divided by the requests wrk completed, and per program the ns per
run and runs per request); then the cost per
call of a tight file write loop and socket write loop with and without the
agent.

Run as root from the repository:  sudo bench/overhead.py [--pairs 5]
"""
import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from agentproc import ROOT, TRACER, Agent, lost
from bpfstats import BpfStats, format_rows, per_request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("nothing listens on port %d" % port)


class Nginx:
    """nginx serving a small static file on a free loopback port.
    `access_log`: log every request (buffered) to the file `self.access_log`,
    written in full once quit() returns. `tls`: HTTPS, with a self-signed
    certificate made with the openssl CLI."""

    def __init__(self, workers, access_log=False, tls=False):
        self.dir = tempfile.mkdtemp(prefix="bench-tls-nginx-" if tls else "bench-nginx-")
        self.port = free_port()
        listen = "listen 127.0.0.1:%d;" % self.port
        if tls:
            cert, key = os.path.join(self.dir, "cert.pem"), os.path.join(self.dir, "key.pem")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                            "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
                           check=True, capture_output=True)
            listen = "listen 127.0.0.1:%d ssl; ssl_certificate %s; ssl_certificate_key %s;" % (self.port, cert, key)
        root = os.path.join(self.dir, "root")
        os.makedirs(root)
        os.makedirs(os.path.join(self.dir, "logs"))
        with open(os.path.join(root, "index.html"), "w") as f:
            f.write("<html><body>" + "hello " * 100 + "</body></html>\n")
        self.access_log = os.path.join(self.dir, "logs", "access.log") if access_log else None
        log = "%s combined buffer=256k flush=1s" % self.access_log if access_log else "off"
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write("""worker_processes %s;
error_log %s/logs/error.log;
pid %s/nginx.pid;
daemon off;
user root;
events { worker_connections 4096; }
http {
  access_log %s;
  keepalive_requests 1000000;
  server { %s root %s; }
}
""" % (workers, self.dir, self.dir, log, listen, root))
        self.proc = subprocess.Popen(["nginx", "-p", self.dir, "-c", conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def quit(self):
        """Graceful shutdown: the buffered access log is written."""
        self.proc.send_signal(signal.SIGQUIT)
        self.proc.wait(timeout=10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def wrk(port, seconds, conns, close=False, path="/index.html", headers=(), script=None):
    """Runs wrk; returns (requests/s, requests, p99 ms). `close`: every
    request on a new connection; `headers`: extra request headers;
    `script`: a wrk Lua script."""
    cmd = ["wrk", "-t2", "-c%d" % conns, "-d%ds" % seconds, "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    if script:
        cmd += ["-s", script]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + ["http://127.0.0.1:%d%s" % (port, path)],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)]
    return rps, total, float(p99.group(1)) * scale


SINK_CODE = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
s = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("ready", flush=True)
s.serve_forever()
"""


class OtlpSink:
    """An OTLP/HTTP endpoint that accepts and discards (the cheapest possible
    backend, so the figure is the agent's cost, not the backend's)."""

    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-c", SINK_CODE, str(self.port)],
                                     stdout=subprocess.PIPE, text=True)
        self.proc.stdout.readline()

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


# (name, agent flags; None = no agent). "capture" is the foundation's agent:
# every TCP payload captured and its streams rebuilt, no protocol parsing, no
# CPU sampling. "traces" is the whole product: HTTP parsed, spans correlated
# and exported over OTLP/HTTP to a local discard endpoint ({otlp} is filled
# in), CPU profiles at 99 Hz joined to them.
CONDITIONS = [
    ("none", None),
    ("hooks-only", ["--hooks-only", "--profile-hz", "0"]),
    ("capture", ["--no-spans", "--profile-hz", "0"]),
    ("traces", ["--otlp-endpoint", "{otlp}", "--otlp-protocol", "http/protobuf"]),
]


def run_server_bench(workers, pairs, seconds, conns, conditions, exes=None):
    nginx = Nginx(workers)
    sink = OtlpSink()
    stats = BpfStats()
    try:
        wrk(nginx.port, 2, conns)  # warm-up
        results = {name: [] for name, _ in conditions}
        drops = []
        for r in range(pairs):
            k = r % len(conditions)
            order = conditions[k:] + conditions[:k]
            for name, args in order:
                if args is not None:
                    args = [a.replace("{otlp}", "http://127.0.0.1:%d" % sink.port) for a in args]
                exe = (exes or {}).get(name, TRACER)
                agent = Agent(args, exe=exe) if args is not None else None
                cpu0 = agent.cpu_seconds() if agent else 0
                bpf0 = stats.snapshot(agent.program_ids) if agent else {}
                rps, total, p99 = wrk(nginx.port, seconds, conns)
                bpf1 = stats.snapshot(agent.program_ids) if agent else {}
                cpu = (agent.cpu_seconds() - cpu0) if agent else 0
                kns, krows = per_request(stats.diff(bpf0, bpf1), total)
                rss = agent.peak_rss_kib() if agent else 0
                if agent:
                    err = agent.stop()
                    if name != "hooks-only":
                        drops.append(sum(lost(err).values()))
                results[name].append({"rps": rps, "total": total, "p99": p99, "cpu": cpu, "rss": rss,
                                      "kns": kns, "krows": krows})
                print("  workers=%s round %d %-10s %9.0f req/s  p99 %7.2f ms  kernel %5.0f ns/req  %s" % (
                    workers, r + 1, name, rps, p99, kns, format_rows(krows)), flush=True)
        print("\nnginx worker_processes %s, wrk -t2 -c%d, %d s per run, %d rounds" % (workers, conns, seconds, pairs))
        print("%-11s %12s %16s %12s %18s %14s %16s" % ("condition", "req/s (med)", "ratio (med, IQR)", "p99 ms",
                                                    "agent CPU/req", "agent peak RSS", "kernel ns/req"))
        base = results["none"]
        for name, _ in conditions:
            rows = results[name]
            ratios = [row["rps"] / b["rps"] for row, b in zip(rows, base)]
            q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
            cpu_per_req = statistics.median(row["cpu"] / row["total"] * 1e6 for row in rows)
            print("%-11s %12.0f %9.3f [%.2f-%.2f] %12.2f %15.2f us %11.1f MiB %13.0f ns" % (
                name, statistics.median(r["rps"] for r in rows), statistics.median(ratios), q[0], q[2],
                statistics.median(r["p99"] for r in rows), cpu_per_req,
                max(r["rss"] for r in rows) / 1024, statistics.median(r["kns"] for r in rows)))
        present = [n for n in ("capture", "traces", "traces-b") if n in results]
        for name in present:
            # Per program: the round with the median kernel cost.
            rows = sorted(results[name], key=lambda r: r["kns"])
            print("kernel cost per request, %s (bpf_stats, median round): %s" % (
                name, format_rows(rows[len(rows) // 2]["krows"])))
        for name in present if "hooks-only" in results else []:
            rel = [f["rps"] / h["rps"] for f, h in zip(results[name], results["hooks-only"])]
            print("%s / hooks-only floor: %.3f (median of rounds)" % (name, statistics.median(rel)))
        print("records lost (kernel drops and records passed over) in capture and traces runs: %s" % drops)
    finally:
        stats.close()
        sink.stop()
        nginx.stop()


def run_writeloop(pairs, calls):
    exe = os.path.join(ROOT, "target", "bench", "writeloop")
    os.makedirs(os.path.dirname(exe), exist_ok=True)
    subprocess.run(["gcc", "-O2", "-pthread", "-o", exe, os.path.join(ROOT, "bench", "writeloop.c")], check=True)
    res = {(k, a): [] for k in ("file", "socket") for a in (False, True)}
    for r in range(pairs):
        for with_agent in ([False, True] if r % 2 == 0 else [True, False]):
            agent = Agent(["--no-spans", "--profile-hz", "0"]) if with_agent else None
            for kind in ("file", "socket"):
                out = subprocess.run([exe, kind, str(calls)], capture_output=True, text=True, check=True).stdout
                res[(kind, with_agent)].append(float(out))
            if agent:
                agent.stop()
    print("\ntight write loop, 64-byte writes, %d calls, %d rounds (ns per call, median; agent: capture)" % (calls, pairs))
    for kind in ("file", "socket"):
        a, b = statistics.median(res[(kind, False)]), statistics.median(res[(kind, True)])
        print("  %-6s without agent %8.1f   with agent %8.1f   added %+7.1f ns" % (kind, a, b, b - a))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=5, help="rounds of the three conditions (default 5)")
    ap.add_argument("--seconds", type=int, default=5, help="wrk duration per run (default 5)")
    ap.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    ap.add_argument("--workers", default="1,auto", help="nginx worker_processes settings (default 1,auto)")
    ap.add_argument("--calls", type=int, default=500000, help="calls per write loop (default 500000)")
    ap.add_argument("--conditions", default=",".join(n for n, _ in CONDITIONS),
                    help="conditions to run (default: all; 'none' is always run)")
    ap.add_argument("--no-writeloop", action="store_true", help="skip the write-loop measurement")
    ap.add_argument("--ab", metavar="EXE",
                    help="A/B of two builds: adds the condition traces-b, 'traces' run by the agent EXE")
    args = ap.parse_args()
    wanted = set(args.conditions.split(",")) | {"none"}
    unknown = wanted - {n for n, _ in CONDITIONS}
    if unknown:
        raise SystemExit("unknown condition(s): %s" % ", ".join(sorted(unknown)))
    conditions = [c for c in CONDITIONS if c[0] in wanted]
    exes = {}
    if args.ab:
        conditions.append(("traces-b", dict(CONDITIONS)["traces"]))
        exes["traces-b"] = os.path.abspath(args.ab)
    if os.geteuid() != 0:
        raise SystemExit("run as root (the agent attaches eBPF programs)")
    for tool in ("nginx", "wrk", "gcc"):
        if not shutil.which(tool):
            raise SystemExit("%s missing: run scripts/setup" % tool)
    if not os.path.exists(TRACER):
        subprocess.run(["cargo", "build", "--profile", "dist", "-p", "tracer"], cwd=ROOT, check=True)
    for w in args.workers.split(","):
        run_server_bench(w, args.pairs, args.seconds, args.connections, conditions, exes)
    if not args.no_writeloop:
        run_writeloop(args.pairs, args.calls)


if __name__ == "__main__":
    sys.exit(main())
