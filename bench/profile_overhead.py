#!/usr/bin/env python3
"""Cost of CPU profiling, in one run (as root, after building the agent):

1. Wall time of a CPU-bound program (C, built without frame pointers) with
   and without the agent sampling at the default 99 Hz, A/B interleaved;
   prints the median ratio (target: <= 1 % slowdown).
2. The agent profiling 20 busy processes (Python pbkdf2 loops, C, node) for
   10 s: samples, frames unwound and symbolized per second of the agent's
   profiling work, the agent's CPU time and peak RSS.

  bench/profile_overhead.py [--pairs 7]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from agentproc import Agent, counter

SPIN_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static volatile unsigned long sink;
__attribute__((noinline)) static unsigned long leaf(unsigned long x) {
    for (int i = 0; i < 1000; i++) x = x * 6364136223846793005UL + 1442695040888963407UL;
    return x;
}
__attribute__((noinline)) static unsigned long middle(unsigned long x) { return leaf(x) ^ (x >> 7); }
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 200000;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    unsigned long x = 1;
    for (long i = 0; i < n; i++) x = middle(x);
    sink = x;
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.6f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    return 0;
}
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--iterations", type=int, default=400000, help="work of the CPU-bound program")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    work = tempfile.mkdtemp(prefix="profbench-")
    try:
        src = os.path.join(work, "spin.c")
        exe = os.path.join(work, "spin")
        with open(src, "w") as f:
            f.write(SPIN_C)
        subprocess.run(["gcc", "-O2", "-fomit-frame-pointer", "-o", exe, src], check=True)

        def run_spin():
            return float(subprocess.run([exe, str(args.iterations)], capture_output=True, text=True,
                                        check=True).stdout)

        run_spin()  # warm-up
        ratios, base, prof = [], [], []
        for r in range(args.pairs):
            order = [False, True] if r % 2 == 0 else [True, False]
            times = {}
            for with_agent in order:
                agent = Agent(["--no-spans", "--profile-hz", "99"]) if with_agent else None
                times[with_agent] = run_spin()
                if agent:
                    agent.stop()
            base.append(times[False])
            prof.append(times[True])
            ratios.append(times[True] / times[False])
            print("  pair %d: without %.3f s  with profiling %.3f s  ratio %.4f"
                  % (r + 1, times[False], times[True], ratios[-1]), flush=True)
        print("\nCPU-bound program, %d pairs: median %.3f s without, %.3f s with 99 Hz profiling; "
              "median ratio %.4f (slowdown %+.2f %%)"
              % (args.pairs, statistics.median(base), statistics.median(prof),
                 statistics.median(ratios), (statistics.median(ratios) - 1) * 100))

        # 20 profiled processes.
        procs = []
        for i in range(20):
            if i % 4 in (0, 1):
                cmd = ["/usr/bin/python3", "-c",
                       "import hashlib,json\nwhile True:\n hashlib.pbkdf2_hmac('sha256', b'x', b'y', 20000); "
                       "json.dumps(list(range(2000)))"]
            elif i % 4 == 2 and shutil.which("node"):
                cmd = ["node", "--perf-basic-prof", "-e",
                       "function hot(n){let s=0;for(let i=0;i<n;i++)s+=Math.sqrt(i);return s}"
                       "while(true)hot(1e6)"]
            else:
                cmd = [exe, "100000000000"]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work))
        time.sleep(1)
        agent = Agent(["--no-spans", "--profile-hz", "99"])
        cpu0 = agent.cpu_seconds()
        time.sleep(10)
        cpu = agent.cpu_seconds() - cpu0
        rss = agent.peak_rss_kib()
        err = agent.stop()
        for p in procs:
            p.kill()
            p.wait()
        # The sampling stage's counters: the profiles row also has the
        # unwinder's frames/truncated and the aggregator's samples after them,
        # and counter() reads the first of a name in the row.
        samples = counter(err, "profiles.samples")
        frames = counter(err, "profiles.frames")
        total_ns = counter(err, "profiles.total_ns")
        truncated = counter(err, "profiles.truncated")
        print("\n20 busy processes, 10 s at 99 Hz on %d CPUs: %d samples (%d truncated), %d frames"
              % (os.cpu_count(), samples, truncated, frames))
        if total_ns:
            print("unwinding + symbolization: %.0f frames/s of profiling work (%.1f us per sample, cold caches included)"
                  % (frames / (total_ns / 1e9), total_ns / 1e3 / max(samples, 1)))
        print("agent: %.2f s of CPU over the 10 s (%.1f %% of one CPU), peak RSS %.1f MiB"
              % (cpu, cpu * 10, rss / 1024))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
