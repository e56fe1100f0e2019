#!/usr/bin/env python3
"""Cost of the runtime hooks, A/B interleaved in one run.

wrk (keep-alive) against a reverse proxy in front of an nginx serving a
small static file: nginx proxying over kept-alive upstream connections
(`--proxy nginx`, one worker), or the Go net/http service of the parent
tests calling the backend from a new goroutine per request (`--proxy go`).
Three conditions per round, their order rotated: no agent; the whole
product with `--no-runtime-hooks`; the whole product with the hooks (and,
for Go, a fourth: with `--go-goroutine-ancestry`). Prints
requests/s, the ratio of each to no agent and of hooks to no hooks (median
of the per-round ratios), the agent's CPU per request, and the kernel cost
of the hook programs per request (bpf_stats; the uprobe trap itself is
not in bpf_stats and shows only in the throughput ratio: ~20 us a hit on
the 6.18 VM this was developed on, see bench/tls_overhead.py's
bare-uprobes condition).

Run as root from the repository:  sudo bench/hooks_cost.py [--proxy go]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from agentproc import Agent  # noqa: E402
from bpfstats import BpfStats, per_request  # noqa: E402
from overhead import Nginx, OtlpSink, free_port, wait_port, wrk  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOOK_PROGRAMS = ("ngx_upstream_init", "ngx_upstream_init_ret", "go_serve", "go_serve_ret",
                 "go_spawn", "go_spawn_ret", "go_round_trip")


class NginxProxy:
    """nginx (one worker) proxying to `backend` over kept-alive connections."""

    def __init__(self, backend):
        self.dir = tempfile.mkdtemp(prefix="bench-proxy-")
        self.port = free_port()
        os.makedirs(os.path.join(self.dir, "logs"))
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write("""worker_processes 1;
error_log %s/logs/error.log;
pid %s/nginx.pid;
daemon off;
user root;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream be { server 127.0.0.1:%d; keepalive 64; }
  server { listen 127.0.0.1:%d;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
""" % (self.dir, self.dir, backend, self.port))
        self.proc = subprocess.Popen(["nginx", "-p", self.dir, "-c", conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class GoProxy:
    """tests/go/timer_proxy.go (no poller), built with the system's go."""

    def __init__(self, backend):
        self.dir = tempfile.mkdtemp(prefix="bench-goproxy-")
        exe = os.path.join(self.dir, "timer_proxy")
        env = dict(os.environ, GO111MODULE="off",
                   GOCACHE=os.path.join(ROOT, "target", "go-cache"))
        subprocess.run(["go", "build", "-o", exe, os.path.join(ROOT, "tests", "go", "timer_proxy.go")],
                       check=True, env=env)
        self.port = free_port()
        self.proc = subprocess.Popen([exe, str(self.port), str(backend), "0"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proxy", choices=["nginx", "go"], default="nginx")
    ap.add_argument("--pairs", type=int, default=5, help="rounds (default 5)")
    ap.add_argument("--seconds", type=int, default=5, help="wrk duration per run (default 5)")
    ap.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    a = ap.parse_args()
    backend = Nginx(1)
    proxy = (NginxProxy if a.proxy == "nginx" else GoProxy)(backend.port)
    sink = OtlpSink()
    stats = BpfStats()
    base = ["--otlp-endpoint", "http://127.0.0.1:%d" % sink.port, "--otlp-protocol", "http/protobuf"]
    conditions = [("none", None), ("no-hooks", base + ["--no-runtime-hooks"]), ("hooks", base)]
    if a.proxy == "go":
        conditions.append(("ancestry", base + ["--go-goroutine-ancestry"]))
    results = {name: [] for name, _ in conditions}
    try:
        wrk(proxy.port, 1, a.connections)  # warm-up
        for r in range(a.pairs):
            k = r % len(conditions)
            order = conditions[k:] + conditions[:k]
            for name, args in order:
                agent = Agent(args) if args is not None else None
                before = stats.snapshot(agent.program_ids) if agent else {}
                cpu0 = agent.cpu_seconds() if agent else 0
                rps, total, p99 = wrk(proxy.port, a.seconds, a.connections)
                row = {"rps": rps, "p99": p99}
                if agent:
                    row["cpu_us"] = (agent.cpu_seconds() - cpu0) * 1e6 / max(total, 1)
                    delta = stats.diff(before, stats.snapshot(agent.program_ids))
                    hooks = {k: v for k, v in delta.items() if k in HOOK_PROGRAMS}
                    row["hook_ns"], row["hook_rows"] = per_request(hooks, total)
                    row["kernel_ns"], _ = per_request(delta, total)
                    agent.stop()
                results[name].append(row)
                print("round %d %-9s %8.0f req/s  p99 %.2f ms" % (r + 1, name, rps, p99), flush=True)
    finally:
        stats.close()
        sink.stop()
        proxy.stop()
        backend.stop()
    none = results["none"]
    print("\n%s proxy, wrk -c%d, %d rounds of %d s" % (a.proxy, a.connections, a.pairs, a.seconds))
    for name, _ in conditions:
        rows = results[name]
        ratio = statistics.median(x["rps"] / n["rps"] for x, n in zip(rows, none))
        line = "%-9s %8.0f req/s  ratio to no agent %.3f" % (name, statistics.median(x["rps"] for x in rows), ratio)
        if name != "none":
            line += "  agent CPU %.2f us/req  kernel %.0f ns/req  hook programs %.0f ns/req" % (
                statistics.median(x["cpu_us"] for x in rows),
                statistics.median(x["kernel_ns"] for x in rows),
                statistics.median(x["hook_ns"] for x in rows))
        print(line)
    for name in [n for n, _ in conditions if n not in ("none", "no-hooks")]:
        ab = statistics.median(h["rps"] / n["rps"] for h, n in zip(results[name], results["no-hooks"]))
        print("%s / no-hooks throughput: %.3f" % (name, ab))
    last = results["hooks"][-1]["hook_rows"]
    print("hook programs (last round): " + ", ".join(
        "%s %.0f ns x %.2f/req" % (k, ns, runs) for k, (ns, runs, _) in last.items()))


if __name__ == "__main__":
    main()
