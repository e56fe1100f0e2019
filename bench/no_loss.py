#!/usr/bin/env python3
"""No span lost at full load: nginx (one worker, keep-alive, small static
file) driven by wrk at full speed while the agent (the default product:
spans over OTLP/HTTP, profiling at its default) exports to a real OTLP
receiver that counts what it gets. Afterwards the spans received per kind
are compared with nginx's access log: one SERVER span (nginx) and one
CLIENT span (wrk) per request served.

    sudo bench/no_loss.py [--seconds 10] [--conns 50] [--need 0.999]

Exits 1 when either kind is below --need of the requests served.
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from agentproc import Agent
from overhead import free_port, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))


def python():
    venv = os.path.join(os.path.dirname(HERE), "target", "pyenv", "bin", "python")
    return venv if os.path.exists(venv) else sys.executable


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--need", type=float, default=0.999)
    ap.add_argument("agent_args", nargs="*", help="extra agent flags (after --)")
    args = ap.parse_args()

    d = tempfile.mkdtemp(prefix="bench-noloss-")
    root = os.path.join(d, "root")
    os.makedirs(root)
    os.makedirs(os.path.join(d, "logs"))
    with open(os.path.join(root, "index.html"), "w") as f:
        f.write("<html><body>" + "hello " * 100 + "</body></html>\n")
    port = free_port()
    log = os.path.join(d, "logs", "access.log")
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write("""worker_processes 1;
error_log %s/logs/error.log;
pid %s/nginx.pid;
daemon off;
user root;
events { worker_connections 4096; }
http {
  access_log %s combined buffer=256k flush=1s;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:%d; root %s; }
}
""" % (d, d, log, port, root))
    nginx = subprocess.Popen(["nginx", "-p", d, "-c", conf],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rport = free_port()
    receiver = subprocess.Popen([python(), os.path.join(HERE, "otlp_count.py"), str(rport)],
                                stdout=subprocess.PIPE, text=True)
    try:
        wait_port(port)
        if receiver.stdout.readline().strip() != "ready":
            raise SystemExit("the OTLP receiver did not start")
        agent = Agent(["--otlp-endpoint", "http://127.0.0.1:%d" % rport,
                       "--otlp-protocol", "http/protobuf"] + args.agent_args)
        out = subprocess.run(["wrk", "-t2", "-c%d" % args.conns, "-d%ds" % args.seconds,
                              "http://127.0.0.1:%d/index.html" % port],
                             capture_output=True, text=True, check=True).stdout
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        time.sleep(2)  # the last spans settle (one reorder window) and leave
        cpu = agent.cpu_seconds()
        rss = agent.peak_rss_kib()
        summary = agent.stop()
        receiver.send_signal(signal.SIGTERM)
        counts = json.loads(receiver.stdout.readline())
        nginx.send_signal(signal.SIGQUIT)  # graceful: the log buffer is written
        nginx.wait(timeout=10)
        with open(log) as f:
            served = sum(1 for line in f if "GET /index.html" in line)
    finally:
        for p in (receiver, nginx):
            if p.poll() is None:
                p.kill()
        shutil.rmtree(d, ignore_errors=True)

    print("wrk -t2 -c%d, %d s: %.0f req/s; nginx served %d requests" % (
        args.conns, args.seconds, rps, served))
    print("agent: %.2f s CPU (%.2f us per request), peak RSS %.1f MiB" % (
        cpu, cpu / max(served, 1) * 1e6, rss / 1024))
    ok = True
    for kind in ("SERVER", "CLIENT"):
        n = counts.get(kind, 0)
        share = n / max(served, 1)
        good = share >= args.need
        ok &= good
        print("%-6s spans received: %9d  = %.4f of requests served  %s" % (
            kind, n, share, "ok" if good else "BELOW %.3f" % args.need))
    print("receiver: %d requests, %d undecodable" % (counts["requests"], counts["bad_requests"]))
    tail = summary[summary.find("tracer: counters"):] if "tracer: counters" in summary else summary
    print(tail.strip())
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
