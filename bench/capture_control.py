#!/usr/bin/env python3
"""What copying only what the parsers need buys (issue 13), A/B interleaved.

1. iperf3 on loopback (bulk TCP that is not HTTP): no agent, the agent's
   programs returning at once (hooks-only), and the agent parsing HTTP
   (connections found not to be HTTP are silenced in the kernel).
2. nginx with wrk (keep-alive) in three request mixes: small static file;
   the same file with 4 KiB of request headers; a 1 MiB file (bodies
   skipped once the parser knows their length). Conditions: no agent,
   hooks-only, capture only (--no-spans: no parser, so no skipping) and the
   agent parsing HTTP and making spans (not exported).

Prints throughput, the ratio to no agent and to the hooks-only floor
(medians over the rounds), the kernel cost per request or per GB from
bpf_stats, and what the kernel silenced or skipped.

Run as root from the repository:  bench/capture_control.py [--rounds 5]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

from agentproc import TRACER, Agent, counter
from bpfstats import BpfStats, format_rows, per_request
from overhead import Nginx, free_port, wrk

HOOKS = ["--hooks-only", "--profile-hz", "0"]
CAPTURE = ["--no-spans", "--profile-hz", "0"]
SPANS = ["--profile-hz", "0"]


def rotate(items, r):
    k = r % len(items)
    return items[k:] + items[:k]


def summarize(title, results, unit, base_name="none", floor_name="hooks-only"):
    print("\n" + title)
    base = results[base_name]
    for name, rows in results.items():
        line = "  %-10s %10.1f %s" % (name, statistics.median(r["rate"] for r in rows), unit)
        if name != base_name:
            line += "  ratio %.3f" % statistics.median(a["rate"] / b["rate"] for a, b in zip(rows, base))
            if name != floor_name and floor_name in results:
                line += "  vs floor %.3f" % statistics.median(
                    a["rate"] / b["rate"] for a, b in zip(rows, results[floor_name]))
            line += "  kernel %.0f ns/%s" % (statistics.median(r["kns"] for r in rows), rows[0]["per"])
            extra = rows[-1].get("note")
            if extra:
                line += "  (%s)" % extra
        print(line)


def run_iperf(rounds, seconds, stats):
    port = free_port()
    server = subprocess.Popen(["iperf3", "-s", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    conds = [("none", None), ("hooks-only", HOOKS), ("agent", SPANS)]
    results = {name: [] for name, _ in conds}
    try:
        import time
        time.sleep(0.5)
        for r in range(rounds):
            for name, flags in rotate(conds, r):
                agent = Agent(flags) if flags is not None else None
                bpf0 = stats.snapshot(agent.program_ids) if agent else {}
                out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"],
                                     capture_output=True, text=True, check=True).stdout
                end = json.loads(out)["end"]["sum_sent"]
                gbit = end["bits_per_second"] / 1e9
                gbytes = end["bytes"] / 1e9
                bpf1 = stats.snapshot(agent.program_ids) if agent else {}
                row = {"rate": gbit, "kns": 0, "per": "GB"}
                if agent:
                    err = agent.stop()
                    ns, _ = per_request(stats.diff(bpf0, bpf1), 1)
                    row["kns"] = ns / max(gbytes, 1e-9)
                    row["note"] = "silenced %d sockets, %d calls, %.1f GB not copied" % (
                        counter(err, "silenced_not_parsed") + counter(err, "silenced_tls"),
                        counter(err, "silenced_calls"), counter(err, "silenced_bytes") / 1e9)
                results[name].append(row)
                print("  round %d iperf3 %-10s %6.2f Gbit/s" % (r + 1, name, gbit), flush=True)
    finally:
        server.terminate()
        server.wait()
    summarize("iperf3 -c 127.0.0.1 -t %d, %d rounds" % (seconds, rounds), results, "Gbit/s")


def run_nginx(rounds, seconds, conns, stats):
    nginx = Nginx("1")
    root = os.path.join(nginx.dir, "root")
    with open(os.path.join(root, "1m.bin"), "wb") as f:
        f.write(bytes(range(256)) * 4096)
    cookie = "Cookie: " + "; ".join("c%02d=%s" % (i, "v" * 120) for i in range(32))
    mixes = [
        ("small", "/index.html", []),
        ("4k-headers", "/index.html", [cookie]),
        ("1m-bodies", "/1m.bin", []),
    ]
    conds = [("none", None), ("hooks-only", HOOKS), ("capture", CAPTURE), ("spans", SPANS)]
    try:
        for mix, path, headers in mixes:
            wrk(nginx.port, 2, conns, path=path, headers=headers)
            results = {name: [] for name, _ in conds}
            for r in range(rounds):
                for name, flags in rotate(conds, r):
                    agent = Agent(flags) if flags is not None else None
                    bpf0 = stats.snapshot(agent.program_ids) if agent else {}
                    rps, total, _ = wrk(nginx.port, seconds, conns, path=path, headers=headers)
                    bpf1 = stats.snapshot(agent.program_ids) if agent else {}
                    row = {"rate": rps, "kns": 0, "per": "req"}
                    if agent:
                        err = agent.stop()
                        row["kns"], rows = per_request(stats.diff(bpf0, bpf1), total)
                        row["note"] = "skipped %.1f MB, heads cut %d; %s" % (
                            counter(err, "skipped_bytes") / 1e6, counter(err, "heads_cut"),
                            format_rows(rows))
                    results[name].append(row)
                    print("  round %d %-10s %-10s %9.0f req/s" % (r + 1, mix, name, rps), flush=True)
            summarize("nginx workers 1, wrk -t2 -c%d, %s (%s), %d s per run, %d rounds" % (
                conns, mix, path, seconds, rounds), results, "req/s")
    finally:
        nginx.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--only", choices=["iperf3", "nginx"], help="run one part")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (the agent attaches eBPF programs)")
    for tool in ("nginx", "wrk", "iperf3"):
        if not shutil.which(tool):
            raise SystemExit("%s missing: run scripts/setup" % tool)
    if not os.path.exists(TRACER):
        raise SystemExit("build the agent first: cargo build --profile dist -p tracer")
    stats = BpfStats()
    try:
        if args.only in (None, "iperf3"):
            run_iperf(args.rounds, args.seconds, stats)
        if args.only in (None, "nginx"):
            run_nginx(args.rounds, args.seconds, args.connections, stats)
    finally:
        stats.close()


if __name__ == "__main__":
    sys.exit(main())
