#!/usr/bin/env python3
"""Agent settings or builds against span loss and overhead at full load, A/B
interleaved in one run.

Each round runs, in an order that rotates every round: nginx (one worker,
keep-alive, small static file) under wrk with no agent, then with the
default product (spans over OTLP/HTTP to a counting receiver, profiling at
its default) in each condition given: a name, extra agent flags and
optionally another agent binary. Prints per condition the medians of:
requests/s, its ratio to the no-agent run of the same round, the share of
requests whose SERVER (nginx) and CLIENT (wrk) spans reached the receiver,
the agent's CPU per request and its peak RSS.

    sudo bench/loss_ab.py [--rounds 3] [--seconds 8] \
        --cond 'nice0=--nice 0' --cond 'nice-10=--nice -10' \
        [--cond 'old=@/path/to/tracer']   # flags after '@EXE ' if any
"""
import argparse
import statistics

from agentproc import COND_HELP, TRACER, parse_conds
from no_loss import cpu_us, measure, share


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--cond", action="append", default=[],
                    help=COND_HELP + "; default: the default product only")
    args = ap.parse_args()

    agents = parse_conds(args.cond) or {"default": (TRACER, [])}
    conditions = ["none"] + list(agents)
    rows = {c: [] for c in conditions}
    for r in range(args.rounds):
        order = conditions[r % len(conditions):] + conditions[:r % len(conditions)]
        runs = {}
        for c in order:
            exe, flags = agents.get(c, (TRACER, None))
            runs[c] = measure(args.seconds, args.conns, flags, exe)
        base = runs["none"]["rps"]
        for c, m in runs.items():
            m["ratio"] = m["rps"] / base
            rows[c].append(m)
            line = "round %d  %-12s %8.0f req/s  ratio %.3f" % (r + 1, c, m["rps"], m["ratio"])
            if "counts" in m:
                line += "  server %.4f  client %.4f  %.2f us/req  %.0f MiB" % (
                    share(m, "SERVER"), share(m, "CLIENT"), cpu_us(m), m["rss"] / 1024)
            print(line, flush=True)

    print("\nmedians of %d rounds of %d s" % (args.rounds, args.seconds))
    print("| condition | req/s | ratio to none | SERVER spans received | CLIENT spans received"
          " | agent CPU / request | agent peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for c in conditions:
        ms = rows[c]
        med = lambda f: statistics.median(f(m) for m in ms)  # noqa: E731
        if c == "none":
            print("| none | %.0f | 1.000 | – | – | – | – |" % med(lambda m: m["rps"]))
            continue
        print("| %s | %.0f | %.3f | %.4f | %.4f | %.2f µs | %.0f MiB |" % (
            c, med(lambda m: m["rps"]), med(lambda m: m["ratio"]),
            med(lambda m: share(m, "SERVER")), med(lambda m: share(m, "CLIENT")),
            med(cpu_us), med(lambda m: m["rss"] / 1024)))


if __name__ == "__main__":
    main()
