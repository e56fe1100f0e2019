#!/usr/bin/env python3
"""The agent under overload stays bounded and never blocks what it traces.

Three cases, each an A/B pair (nginx + wrk without, then with the agent):
  small-ring     full keep-alive load with a 256 KiB ring buffer: records
                 must be dropped (counted by reason);
  endpoint-down  full keep-alive load exporting to an OTLP endpoint that
                 refuses every connection for the whole run;
  short-conns    at least 100,000 short connections (wrk with
                 "Connection: close").
For each: requests/s without and with the agent (the traced server is
never blocked: the agent only ever drops), the agent's peak RSS, and the
anomalies it reported. Exits 1 when a peak RSS is above --max-rss-mib
(default 128), or when fewer than 100,000 short connections were made.

    sudo bench/overload.py [--seconds 10] [--max-rss-mib 128]
"""
import argparse
import re
import sys

from agentproc import TRACER, Agent
from overhead import Nginx, OtlpSink, free_port, wrk


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--exe", default=TRACER, help="the agent binary (A/B against another build)")
    ap.add_argument("--max-rss-mib", type=float, default=128)
    args = ap.parse_args()
    # A loopback port nothing listens on.
    down = "http://127.0.0.1:%d" % free_port()
    cases = [
        ("small-ring", ["--ring-buffer-size", str(256 << 10), "--wakeup-bytes", str(64 << 10),
                        "--otlp-endpoint", "{sink}", "--otlp-protocol", "http/protobuf"], False),
        ("endpoint-down", ["--otlp-endpoint", down, "--otlp-protocol", "http/protobuf"], False),
        ("short-conns", ["--otlp-endpoint", "{sink}", "--otlp-protocol", "http/protobuf"], True),
    ]
    nginx = Nginx("1")
    sink = OtlpSink()
    failed = False
    try:
        wrk(nginx.port, 2, 50)
        for name, flags, close in cases:
            flags = [f.replace("{sink}", "http://127.0.0.1:%d" % sink.port) for f in flags]
            seconds = args.seconds
            base_rps, _, _ = wrk(nginx.port, seconds, 50, close)
            if close:
                # Long enough for 100,000 connections even if the agent
                # cut the rate to a third (it has cut it to 0.4 here).
                seconds = max(seconds, int(3 * 100_000 / base_rps) + 1)
            agent = Agent(flags, exe=args.exe)
            rps, total, _ = wrk(nginx.port, seconds, 50, close)
            rss = agent.peak_rss_kib() / 1024
            summary = agent.stop()
            anomalies = re.search(r"anomalies: (.*)", summary)
            export = re.search(r"^\s*export\s+(.*)$", summary, re.M)
            bad = rss > args.max_rss_mib
            failed |= bad
            print("%-14s without %8.0f req/s, with %8.0f req/s (ratio %.2f, %d requests); "
                  "agent peak RSS %6.1f MiB %s" % (
                      name, base_rps, rps, rps / base_rps, total, rss,
                      "ABOVE %.0f MiB" % args.max_rss_mib if bad else "ok"))
            if close:
                few = total < 100_000
                failed |= few
                print("%-14s %d connections opened with the agent %s" % (
                    "", total, "FEWER than 100,000" if few else "ok"))
            print("%-14s memory: %s" % ("", agent.memory.describe()))
            heap = re.findall(r"heap_bytes\{(\w+)\}=([0-9.e+]+)", summary)
            print("%-14s correlator heap (peak capacities): %s" % ("", ", ".join(
                "%s %.1f MiB" % (part, float(b) / 2**20) for part, b in heap) or "?"))
            print("%-14s anomalies: %s" % ("", anomalies.group(1) if anomalies else "?"))
            print("%-14s export: %s" % ("", export.group(1)[:300] if export else "?"), flush=True)
    finally:
        sink.stop()
        nginx.stop()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
