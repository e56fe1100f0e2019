#!/usr/bin/env python3
"""What finding and attaching TLS libraries costs the agent.

1. Attach: the agent starts while K idle processes map libssl.so.3
   (`sleep` with libssl preloaded: one shared file, as 100 services using
   the distribution's OpenSSL), K = 0 and K = --processes, alternated for
   --rounds rounds. Reported: the agent's own figure for the lookup of the
   running processes ("TLS libraries looked up in running processes ...
   ms=") and the time from spawning the agent to "attached".
2. Churn: with the agent running, processes that map libssl.so.3 start at
   --rate per second and live --life seconds each (the /proc scan every
   500 ms finds them, the file is already attached); the agent's CPU over
   --seconds against the same window without churn, alternated.
   `--ab EXE`: the churn windows also run with agent EXE, interleaved (A/B
   of two builds in one run).

Run as root from the repository:  bench/tls_attach_cost.py [--processes 100]
"""
import argparse
import os
import re
import signal
import statistics
import subprocess
import time

from agentproc import CLK_TCK, TRACER

LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"


def holder(seconds):
    """A process that maps libssl.so.3 and sleeps."""
    return subprocess.Popen(["sleep", str(seconds)], env=dict(os.environ, LD_PRELOAD=LIBSSL))


def start_agent(exe=TRACER):
    """(process, lookup ms as the agent logs it, seconds until attached)."""
    t0 = time.monotonic()
    p = subprocess.Popen([exe, "run", "--print", "none", "--profile-hz", "0"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, NO_COLOR="1", RUST_LOG="info"))
    lookup = None
    for line in p.stderr:
        m = re.search(r"looked up in running processes.*processes=(\d+).* ms=(\d+)", line)
        if m:
            lookup = (int(m.group(1)), int(m.group(2)))
        if "attached: capturing" in line:
            return p, lookup, time.monotonic() - t0
    raise SystemExit("agent failed to start")


def stop_agent(p):
    p.send_signal(signal.SIGINT)
    p.stderr.read()
    p.wait()


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def churn(seconds, rate, life):
    """Starts `rate` libssl processes a second for `seconds`; returns how
    many were started."""
    procs, n = [], 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        procs.append(holder(life))
        n += 1
        next_at = t0 + n / rate
        time.sleep(max(0.0, next_at - time.monotonic()))
        procs = [p for p in procs if p.poll() is None]
    for p in procs:
        p.wait()
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--life", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--ab", metavar="EXE", help="another agent build, its churn windows interleaved")
    a = ap.parse_args()

    attach = {0: [], a.processes: []}
    for r in range(a.rounds):
        for k in ([0, a.processes] if r % 2 == 0 else [a.processes, 0]):
            held = [holder(3600) for _ in range(k)]
            time.sleep(0.5)
            p, lookup, ready = start_agent()
            stop_agent(p)
            for h in held:
                h.kill()
                h.wait()
            attach[k].append((lookup, ready))
            print("  round %d, %3d libssl processes: lookup %s ms over %s processes, attached after %.2f s" % (
                r + 1, k, lookup and lookup[1], lookup and lookup[0], ready), flush=True)

    # Keyed by the suffix of their windows' names.
    exes = {"": TRACER}
    if a.ab:
        exes["-b"] = os.path.abspath(a.ab)
    cpu = {}
    for r in range(a.rounds):
        for build in (list(exes) if r % 2 == 0 else list(reversed(exes))):
            p, _, _ = start_agent(exes[build])
            try:
                for name in (["idle", "churn"] if r % 2 == 0 else ["churn", "idle"]):
                    c0 = cpu_seconds(p.pid)
                    if name == "churn":
                        n = churn(a.seconds, a.rate, a.life)
                    else:
                        n = 0
                        time.sleep(a.seconds)
                    used = cpu_seconds(p.pid) - c0
                    cpu.setdefault(name + build, []).append(used)
                    print("  round %d %-7s %4d processes started, agent CPU %.3f s over %.0f s (%.1f %%)" % (
                        r + 1, name + build, n, used, a.seconds, 100 * used / a.seconds), flush=True)
            finally:
                stop_agent(p)

    print("\nattach (median of %d rounds):" % a.rounds)
    for k, rows in attach.items():
        ms = statistics.median(x[0][1] for x in rows if x[0])
        ready = statistics.median(x[1] for x in rows)
        print("  %3d libssl processes running: lookup %d ms, attached after %.2f s" % (k, ms, ready))
    for build, exe in exes.items():
        print("churn, %.0f processes/s living %.1f s%s: agent CPU %.1f %% of a core (idle %.1f %%)" % (
            a.rate, a.life, " (%s)" % exe if a.ab else "",
            100 * statistics.median(cpu["churn" + build]) / a.seconds,
            100 * statistics.median(cpu["idle" + build]) / a.seconds))


if __name__ == "__main__":
    main()
