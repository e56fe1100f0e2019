#!/usr/bin/env python3
"""Kernel cost per request of the agent's programs (bpf_stats), for A/B
comparisons of agent builds or flags on the nginx benchmark.

Each round runs wrk (keep-alive, small static file) against nginx once per
variant, the order rotated every round, and prints per variant and program
the ns per run and runs per request, the kernel ns per request, and the
throughput ratio to a run without agent in the same round.

  bench/kernel_cost.py --variant A=target/dist/tracer \
      --variant B=/tmp/tracer-b --args "--no-spans --profile-hz 0"

Extra arguments of the form @VAR=VALUE set an environment variable of the
agent.
"""
import argparse
import os
import shlex
import statistics
import sys

from agentproc import TRACER, Agent, lost
from bpfstats import BpfStats, format_rows, per_request
from overhead import Nginx, wrk


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=EXE[:EXTRA ARGS] (repeatable; default: this build)")
    ap.add_argument("--args", default="--no-spans --profile-hz 0", help="agent flags for every variant")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--workers", default="1")
    ap.add_argument("--no-baseline", action="store_true", help="skip the runs without agent")
    ap.add_argument("--body-kib", type=int, default=0,
                    help="request a file of this size instead of the small index.html")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    variants = []
    for v in args.variant or ["this=" + TRACER]:
        name, rest = v.split("=", 1)
        exe, _, extra = rest.partition(":")
        variants.append((name, exe, shlex.split(args.args) + shlex.split(extra)))
    envs = {}
    for i, (name, exe, flags) in enumerate(variants):
        env = {t[1:].split("=", 1)[0]: t.split("=", 1)[1] for t in flags if t.startswith("@")}
        variants[i] = (name, exe, [t for t in flags if not t.startswith("@")])
        envs[name] = env
    if not args.no_baseline:
        variants.append(("none", None, None))
    stats = BpfStats()
    nginx = Nginx(args.workers)
    path = "/index.html"
    if args.body_kib:
        path = "/body.bin"
        with open(os.path.join(nginx.dir, "root", "body.bin"), "wb") as f:
            f.write(b"x" * (args.body_kib * 1024))
    res = {name: [] for name, _, _ in variants}
    try:
        wrk(nginx.port, 2, args.connections, path=path)
        for r in range(args.rounds):
            k = r % len(variants)
            for name, exe, flags in variants[k:] + variants[:k]:
                agent = Agent(flags, exe, envs.get(name)) if exe else None
                before = stats.snapshot(agent.program_ids) if agent else {}
                rps, total, p99 = wrk(nginx.port, args.seconds, args.connections, path=path)
                after = stats.snapshot(agent.program_ids) if agent else {}
                err = agent.stop() if agent else ""
                ns, rows = per_request(stats.diff(before, after), total)
                res[name].append((rps, ns, rows))
                print("round %d %-8s %8.0f req/s  kernel %6.0f ns/req  %s" % (
                    r + 1, name, rps, ns, format_rows(rows)), flush=True)
                d = {k: v for k, v in lost(err).items() if v}
                if d:
                    print("   lost:", " ".join("%s=%d" % kv for kv in d.items()))
    finally:
        nginx.stop()
        stats.close()
    base = res.get("none")
    print()
    for name, _, _ in variants:
        rows = res[name]
        line = "%-8s req/s %8.0f  kernel ns/req %6.0f" % (
            name, statistics.median(x[0] for x in rows), statistics.median(x[1] for x in rows))
        if base and name != "none":
            line += "  ratio %.3f" % statistics.median(a[0] / b[0] for a, b in zip(rows, base))
        print(line)


if __name__ == "__main__":
    sys.exit(main())
