#!/usr/bin/env python3
"""The agent's memory at a paced load it keeps up with, A/B of builds or flags.

At full load on a slow machine the agent falls behind and what it holds is
set by its backlog; this runs nginx (one worker) under wrk with a fixed
pause between the requests of each connection (a wrk Lua `delay()`, 2 ms by
default: ~20k requests/s with 50 connections), the default product
exporting to a local OTLP endpoint that discards, and prints per condition
and round: requests/s, the agent's CPU, its peak RSS split into lanes, heap
and mapped files, the span records the correlator held mid-run (from
`--stats-interval`), its reorder window, the share of spans linked, and the
span records its bound on their memory forced out (retained, or waiting for
a parent). `--delay-ms 0` runs it at full load.

    sudo bench/paced.py [--rounds 2] [--seconds 9] [--delay-ms 2] \\
        --cond 'new=' --cond 'old=@/path/to/tracer' --cond 'noprof=--profile-hz 0'
"""
import argparse
import re
import tempfile

from agentproc import COND_HELP, TRACER, Agent, parse_conds
from overhead import Nginx, OtlpSink, wrk


def gauge(summary, name):
    """Values of `name` in the periodic tables and the exit summary."""
    return re.findall(r"\b%s\}?[=\s]+([\d.]+)" % re.escape(name), summary)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=9)
    ap.add_argument("--delay-ms", type=int, default=2)
    ap.add_argument("--cond", action="append", default=[],
                    help=COND_HELP + "; default: this build")
    args = ap.parse_args()
    agents = parse_conds(args.cond) or {"default": (TRACER, [])}
    conds = [(name, exe, flags) for name, (exe, flags) in agents.items()]
    lua = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    lua.write("function delay()\n  return %d\nend\n" % args.delay_ms)
    lua.close()
    nginx = Nginx("1")
    sink = OtlpSink()
    try:
        for rnd in range(args.rounds):
            for name, exe, flags in conds[rnd % len(conds):] + conds[:rnd % len(conds)]:
                agent = Agent(["--otlp-endpoint", "http://127.0.0.1:%d" % sink.port,
                               "--otlp-protocol", "http/protobuf", "--stats-interval", "2"] + flags,
                              exe=exe)
                rps, _, _ = wrk(nginx.port, args.seconds, 50, script=lua.name)
                cpu = agent.cpu_seconds()
                peak = agent.peak_rss_kib() / 1024
                summary = agent.stop()
                held = gauge(summary, "held_spans")
                held_bytes = gauge(summary, "held_span_bytes")
                window = gauge(summary, "window_ms")
                linked = gauge(summary, "linked_percent")
                evicted = gauge(summary, "retained_evicted")
                overflow = gauge(summary, "span_overflow")
                print("round %d  %-10s %7.0f req/s  CPU %5.2f s  peak RSS %5.1f MiB (%s)  "
                      "held mid-run %s spans / %s bytes  window %s ms  linked %s%%  "
                      "evicted: retained %s, waiting %s" % (
                          rnd + 1, name, rps, cpu, peak, agent.memory.describe(),
                          held[0] if held else "?", held_bytes[0] if held_bytes else "?",
                          window[0] if window else "-", linked[-1] if linked else "?",
                          evicted[-1] if evicted else "0", overflow[-1] if overflow else "0"),
                      flush=True)
    finally:
        sink.stop()
        nginx.stop()


if __name__ == "__main__":
    main()
