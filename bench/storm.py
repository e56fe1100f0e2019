#!/usr/bin/env python3
"""A storm of short connections: every request on a new TCP connection.

wrk with `Connection: close` against nginx (small static file), each
request a new connection (accept, request, response, close on both ends),
as fast as the host serves them, without the agent and with it, the order
rotated every round. For each run with the agent, prints the connections per
second, what the kernel lost per record kind (all records share the per-CPU
lanes, a quarter of each kept for connection state records), what reached
the agent (state records), its peak RSS and CPU, and the spans it made. A
lane the agent is far behind on has its call and packet records passed over
(counted as shed_*) so that connection records are always read.
Fails (exit 1) when a connection record was lost.

Run as root from the repository:  bench/storm.py [--rounds 3] [--seconds 10]
"""
import argparse
import os
import shutil
import statistics
import sys

from agentproc import TRACER, Agent, counter, lost
from bpfstats import BpfStats, format_rows, per_request
from overhead import Nginx, OtlpSink, wrk

CONDITIONS = [
    ("none", None),
    ("capture", ["--no-spans", "--profile-hz", "0"]),
    ("traces", ["--otlp-endpoint", "{otlp}", "--otlp-protocol", "http/protobuf"]),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--workers", default="auto")
    ap.add_argument("--conditions", default="none,capture,traces")
    ap.add_argument("--agent-args", default="", help="extra agent flags for every condition")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (the agent attaches eBPF programs)")
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool):
            raise SystemExit("%s missing: run scripts/setup" % tool)
    if not os.path.exists(TRACER):
        raise SystemExit("build the agent first: cargo build --profile dist -p tracer")
    wanted = set(args.conditions.split(",")) | {"none"}
    conditions = [c for c in CONDITIONS if c[0] in wanted]
    nginx = Nginx(args.workers)
    sink = OtlpSink()
    stats = BpfStats()
    results = {name: [] for name, _ in conditions}
    lost_conn = 0
    try:
        wrk(nginx.port, 2, args.connections, close=True)
        for r in range(args.rounds):
            k = r % len(conditions)
            for name, flags in conditions[k:] + conditions[:k]:
                if flags is not None:
                    flags = [a.replace("{otlp}", "http://127.0.0.1:%d" % sink.port) for a in flags]
                    flags += args.agent_args.split()
                agent = Agent(flags) if flags is not None else None
                cpu0 = agent.cpu_seconds() if agent else 0
                bpf0 = stats.snapshot(agent.program_ids) if agent else {}
                rps, total, p99 = wrk(nginx.port, args.seconds, args.connections, close=True)
                bpf1 = stats.snapshot(agent.program_ids) if agent else {}
                row = {"rps": rps, "total": total}
                if agent:
                    row["cpu"] = agent.cpu_seconds() - cpu0
                    row["rss"] = agent.peak_rss_kib()
                    err = agent.stop()
                    # Records lost in the kernel (lane full) per kind, and
                    # passed over unread while the agent was behind (shed_*).
                    row["lost"] = lost(err)
                    row["state_records"] = counter(err, "opened")
                    row["spans"] = counter(err, "spans_emitted")
                    row["exported"] = counter(err, "export.exported{otlp}")
                    row["kns"], row["krows"] = per_request(stats.diff(bpf0, bpf1), total)
                    lost_conn += row["lost"].get("drops{ring_full_conn}", 0)
                    print("  round %d %-8s %8.0f conn/s  %d requests, %d connections tracked  lost %s  "
                          "RSS %.1f MiB  kernel %.0f ns/conn  %s" % (
                              r + 1, name, rps, total, row["state_records"],
                              " ".join("%s=%d" % kv for kv in row["lost"].items()),
                              row["rss"] / 1024, row["kns"], format_rows(row["krows"])), flush=True)
                else:
                    print("  round %d %-8s %8.0f conn/s" % (r + 1, name, rps), flush=True)
                results[name].append(row)
    finally:
        stats.close()
        sink.stop()
        nginx.stop()
    print("\nstorm: wrk -t2 -c%d -H 'Connection: close', nginx workers %s, %d s per run, %d rounds" % (
        args.connections, args.workers, args.seconds, args.rounds))
    base = results["none"]
    for name, _ in conditions:
        rows = results[name]
        line = "%-8s %8.0f conn/s" % (name, statistics.median(r["rps"] for r in rows))
        if name != "none":
            ratios = [a["rps"] / b["rps"] for a, b in zip(rows, base)]
            lost_all = {}
            for r in rows:
                for kind, n in r["lost"].items():
                    lost_all[kind] = lost_all.get(kind, 0) + n
            line += "  ratio %.3f  peak RSS %.1f MiB  agent CPU %.1f us/conn  kernel %.0f ns/conn" % (
                statistics.median(ratios), max(r["rss"] for r in rows) / 1024,
                statistics.median(r["cpu"] / r["total"] * 1e6 for r in rows),
                statistics.median(r["kns"] for r in rows))
            line += "\n         lost (all rounds): %s" % " ".join("%s=%d" % kv for kv in lost_all.items())
            if name == "traces":
                line += "\n         spans made %d, exported %d (all rounds)" % (
                    sum(r["spans"] for r in rows), sum(r["exported"] for r in rows))
        print(line)
    if lost_conn:
        print("FAIL: %d connection records lost" % lost_conn)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
