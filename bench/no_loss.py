#!/usr/bin/env python3
"""No span lost at full load: nginx (one worker, keep-alive, small static
file) driven by wrk at full speed while the agent (the default product:
spans over OTLP/HTTP, profiling at its default) exports to a real OTLP
receiver that counts what it gets. Afterwards the spans received per kind
are compared with nginx's access log: one SERVER span (nginx) and one
CLIENT span (wrk) per request served.

    sudo bench/no_loss.py [--seconds 10] [--conns 50] [--need 0.999] [--max-rss-mib 64]

Exits 1 when either kind is below --need of the requests served, or when
the agent's peak RSS (VmHWM: everything resident, the capture lanes
mapped from the kernel included) is above --max-rss-mib. The RSS is also
broken down by mapping at its sampled peak (lanes, heap, file).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

from agentproc import TRACER, Agent
from overhead import Nginx, free_port, wrk

HERE = os.path.dirname(os.path.abspath(__file__))


def python():
    venv = os.path.join(os.path.dirname(HERE), "target", "pyenv", "bin", "python")
    return venv if os.path.exists(venv) else sys.executable


def measure(seconds, conns, agent_args, exe=TRACER):
    """One run: nginx served by wrk for `seconds` while the agent (None: no
    agent) exports to a counting receiver. Returns a dict: rps, served, and
    with an agent cpu, rss (KiB), memory, counts (spans per kind), summary."""
    nginx = Nginx("1", access_log=True)
    if agent_args is None:
        try:
            rps, _, _ = wrk(nginx.port, seconds, conns)
            nginx.quit()
            return {"rps": rps, "served": served_in(nginx.access_log)}
        finally:
            nginx.stop()
    rport = free_port()
    receiver = subprocess.Popen([python(), os.path.join(HERE, "otlp_count.py"), str(rport)],
                                stdout=subprocess.PIPE, text=True)
    try:
        if receiver.stdout.readline().strip() != "ready":
            raise SystemExit("the OTLP receiver did not start")
        agent = Agent(["--otlp-endpoint", "http://127.0.0.1:%d" % rport,
                       "--otlp-protocol", "http/protobuf"] + agent_args, exe=exe)
        rps, _, _ = wrk(nginx.port, seconds, conns)
        time.sleep(2)  # the last spans settle (one reorder window) and leave
        cpu = agent.cpu_seconds()
        rss = agent.peak_rss_kib()
        summary = agent.stop()
        receiver.send_signal(signal.SIGTERM)
        counts = json.loads(receiver.stdout.readline())
        nginx.quit()
        served = served_in(nginx.access_log)
    finally:
        if receiver.poll() is None:
            receiver.kill()
        nginx.stop()
    return {"rps": rps, "served": served, "cpu": cpu, "rss": rss, "memory": agent.memory,
            "counts": counts, "summary": summary}


def served_in(access_log):
    with open(access_log) as f:
        return sum(1 for line in f if "GET /index.html" in line)


def share(m, kind):
    """Spans of `kind` received per request served, of a measure() result."""
    return m["counts"].get(kind, 0) / max(m["served"], 1)


def cpu_us(m):
    """The agent's CPU per request served, in microseconds."""
    return m["cpu"] / max(m["served"], 1) * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--exe", default=TRACER, help="the agent binary (A/B against another build)")
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--need", type=float, default=0.999)
    ap.add_argument("--max-rss-mib", type=float, default=64,
                    help="fail when the agent's peak RSS is above this (the issue's full-load bound)")
    ap.add_argument("agent_args", nargs="*", help="extra agent flags (after --)")
    args = ap.parse_args()

    r = measure(args.seconds, args.conns, args.agent_args, args.exe)
    rss, counts, summary = r["rss"], r["counts"], r["summary"]

    print("wrk -t2 -c%d, %d s: %.0f req/s; nginx served %d requests" % (
        args.conns, args.seconds, r["rps"], r["served"]))
    ok = rss / 1024 <= args.max_rss_mib
    print("agent: %.2f s CPU (%.2f us per request), peak RSS %.1f MiB %s: %s" % (
        r["cpu"], cpu_us(r), rss / 1024,
        "ok" if ok else "ABOVE %.0f MiB" % args.max_rss_mib, r["memory"].describe()))
    for kind in ("SERVER", "CLIENT"):
        good = share(r, kind) >= args.need
        ok &= good
        print("%-6s spans received: %9d  = %.4f of requests served  %s" % (
            kind, counts.get(kind, 0), share(r, kind), "ok" if good else "BELOW %.3f" % args.need))
    print("receiver: %d requests, %d undecodable" % (counts["requests"], counts["bad_requests"]))
    tail = summary[summary.find("tracer: counters"):] if "tracer: counters" in summary else summary
    print(tail.strip())
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
