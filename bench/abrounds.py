"""The A/B round loop shared by h2_overhead.py and tls_overhead.py: every
condition once per round, the order rotated every round, the agent's CPU
and the kernel cost of its eBPF programs measured around each load."""
import statistics

from agentproc import Agent
from bpfstats import format_rows, per_request


def run_rounds(conditions, pairs, load, sink, stats, extra, prefix="", width=10, exes=None):
    """conditions: [(name, agent flags, None or a fixture)], "{otlp}" in a
    flag is the sink's URL; a fixture (start(), stop()) is set up around
    the load instead of an agent. load() returns (requests/s, requests);
    extra(stderr of the agent) the counters printed on the round's line;
    exes: {name: agent executable} for conditions run by another build.
    Returns {name: [round]}."""
    results = {n: [] for n, _ in conditions}
    for r in range(pairs):
        k = r % len(conditions)
        for name, args in conditions[k:] + conditions[:k]:
            agent = None
            fixture = args if hasattr(args, "start") else None
            if fixture:
                fixture.start()
            elif args is not None:
                agent = Agent([x.replace("{otlp}", "http://127.0.0.1:%d" % sink.port) for x in args],
                              **({"exe": exes[name]} if exes and name in exes else {}))
            cpu0 = agent.cpu_seconds() if agent else 0
            bpf0 = stats.snapshot(agent.program_ids) if agent else {}
            try:
                rps, total = load()
            finally:
                if fixture:
                    fixture.stop()
            bpf1 = stats.snapshot(agent.program_ids) if agent else {}
            cpu = (agent.cpu_seconds() - cpu0) if agent else 0
            kns, rows = per_request(stats.diff(bpf0, bpf1), total)
            text = ""
            if agent:
                text = extra(agent.stop())
            results[name].append({"rps": rps, "total": total, "cpu": cpu, "kns": kns, "rows": rows})
            print("  %sround %d %-*s %8.0f req/s  kernel %5.0f ns/req  %s  %s" % (
                prefix, r + 1, width, name, rps, kns, text, format_rows(rows)), flush=True)
    return results


def print_conditions(conditions, results, indent="", width=10):
    """Per condition: median requests/s, ratio to "none", agent CPU and
    kernel cost per request."""
    base = results["none"]
    for name, _ in conditions:
        rows = results[name]
        ratios = [x["rps"] / b["rps"] for x, b in zip(rows, base)]
        print("%s%-*s %9.0f req/s  ratio %.3f (min %.3f max %.3f)  agent CPU %.2f us/req  kernel %4.0f ns/req" % (
            indent, width, name, statistics.median(x["rps"] for x in rows), statistics.median(ratios),
            min(ratios), max(ratios), statistics.median(x["cpu"] / x["total"] * 1e6 for x in rows),
            statistics.median(x["kns"] for x in rows)))
