#!/usr/bin/env python3
"""Cost of TLS plaintext capture on a real HTTPS server, A/B interleaved.

wrk over HTTPS (keep-alive) against nginx with TLS (certificate made with
the openssl CLI), in four conditions per round, their order rotated every
round: no agent; the agent's hooks attached but returning at once
(--hooks-only --tls-snap-len 0: the floor); capture only (--no-spans),
with TLS capture off and on (the uprobes' cost without the span work it
feeds); the whole product with TLS
capture off (--tls-snap-len 0: the ciphertext is recognised and silenced,
no uprobe); the whole product with TLS capture on (uprobes and uretprobes
on SSL_read/SSL_write/_ex of libssl.so.3, which nginx and wrk both use).
Prints requests/s, the ratio to no agent (median of per-round ratios),
the agent's CPU per request and the kernel cost per request of its eBPF
programs (bpf_stats; a uprobe's trap and return trampoline are not in it).

Run as root from the repository:  bench/tls_overhead.py [--pairs 5]
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile

from agentproc import Agent, counter
from bpfstats import BpfStats, format_rows, per_request
from overhead import OtlpSink, free_port, wait_port


class TlsNginx:
    def __init__(self, workers):
        self.dir = tempfile.mkdtemp(prefix="bench-tls-nginx-")
        self.port = free_port()
        cert, key = os.path.join(self.dir, "cert.pem"), os.path.join(self.dir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
                       check=True, capture_output=True)
        os.makedirs(os.path.join(self.dir, "logs"))
        root = os.path.join(self.dir, "root")
        os.makedirs(root)
        with open(os.path.join(root, "index.html"), "w") as f:
            f.write("<html><body>" + "hello " * 100 + "</body></html>\n")
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write("""worker_processes %s;
error_log %s/logs/error.log;
pid %s/nginx.pid;
daemon off;
user root;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:%d ssl; ssl_certificate %s; ssl_certificate_key %s; root %s; }
}
""" % (workers, self.dir, self.dir, self.port, cert, key, root))
        self.proc = subprocess.Popen(["nginx", "-p", self.dir, "-c", conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


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
    a = ap.parse_args()
    nginx = TlsNginx(1)
    sink = OtlpSink()
    stats = BpfStats()
    try:
        wrk(nginx.port, 2, a.connections)
        results = {n: [] for n, _ in CONDITIONS}
        for r in range(a.pairs):
            k = r % len(CONDITIONS)
            for name, args in CONDITIONS[k:] + CONDITIONS[:k]:
                agent = None
                if args is not None:
                    agent = Agent([x.replace("{otlp}", "http://127.0.0.1:%d" % sink.port) for x in args])
                cpu0 = agent.cpu_seconds() if agent else 0
                bpf0 = stats.snapshot(agent.program_ids) if agent else {}
                rps, total = wrk(nginx.port, a.seconds, a.connections)
                bpf1 = stats.snapshot(agent.program_ids) if agent else {}
                cpu = (agent.cpu_seconds() - cpu0) if agent else 0
                kns, rows = per_request(stats.diff(bpf0, bpf1), total)
                extra = ""
                if agent:
                    err = agent.stop()
                    extra = "tls.calls=%d http.messages=%d" % (counter(err, "tls.calls"),
                                                               counter(err, "http.messages"))
                results[name].append({"rps": rps, "total": total, "cpu": cpu, "kns": kns, "rows": rows})
                print("  round %d %-16s %8.0f req/s  kernel %5.0f ns/req  %s  %s" % (
                    r + 1, name, rps, kns, extra, format_rows(rows)), flush=True)
        base = results["none"]
        print("\nnginx TLS worker_processes 1, wrk -t2 -c%d https, %d s per run, %d rounds" % (
            a.connections, a.seconds, a.pairs))
        for name, _ in CONDITIONS:
            rows = results[name]
            ratios = [x["rps"] / b["rps"] for x, b in zip(rows, base)]
            print("%-16s %9.0f req/s  ratio %.3f (min %.3f max %.3f)  agent CPU %.2f us/req  kernel %4.0f ns/req" % (
                name, statistics.median(x["rps"] for x in rows), statistics.median(ratios), min(ratios),
                max(ratios), statistics.median(x["cpu"] / x["total"] * 1e6 for x in rows),
                statistics.median(x["kns"] for x in rows)))
        rows = sorted(results["tls-on"], key=lambda x: x["kns"])
        print("kernel cost per request, tls-on (median round): %s" % format_rows(rows[len(rows) // 2]["rows"]))
        for name in ("tls-off", "tls-on"):
            rel = [x["rps"] / h["rps"] for x, h in zip(results[name], results["hooks-only"])]
            print("%s / hooks-only: %.3f" % (name, statistics.median(rel)))
    finally:
        stats.close()
        sink.stop()
        nginx.stop()


if __name__ == "__main__":
    main()
