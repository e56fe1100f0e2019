#!/usr/bin/env python3
"""Whether programs starting and exiting stall the agent's event loop.

Each new Go executable the agent finds is read (symbols, function table,
DWARF) and probed, and its probes are closed when it exits; each close waits
for the kernel's grace periods. Done on the event loop, that work keeps the
rings from being drained, and the CPU sample ring (the smallest) overflows.

One round: the agent runs (its defaults: TLS probes, profiling at 99 Hz)
while one busy loop per CPU keeps samples coming, and --programs copies of a
Go program (tests/go/exec_first.go, built here; each copy is a new file to
read and probe) start one every --every seconds, spin --spin-ms and exit.
With --drop-caches the page cache is dropped before each start, so the
executable is read from disk, as a program not run lately is.

Printed per build: samples lost to a full ring (kernel.drops{ring_full_sample}),
samples taken, files attached and detached. `--ab EXE` runs another agent
build in the same rounds, interleaved.

Run as root from the repository:  bench/start_stall.py [--drop-caches] [--ab OTHER]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time

from agentproc import ROOT, TRACER, Agent, counter


def build(dir_):
    """exec_first and exec_second, built with the host's Go."""
    env = dict(os.environ, GO111MODULE="off", GOTOOLCHAIN="local", GOFLAGS="",
               GOPATH=os.path.join(dir_, "gopath"),
               GOCACHE=os.path.join(ROOT, "target", "go-cache"))
    out = []
    for name in ("exec_first", "exec_second"):
        exe = os.path.join(dir_, name)
        subprocess.run(["go", "build", "-o", exe, os.path.join(ROOT, "tests", "go", name + ".go")],
                       env=env, check=True)
        out.append(exe)
    return out


def round_(exe, first, second, args, dir_):
    """One agent run; the counters of its exit summary."""
    agent = Agent([], exe=exe)
    spinners = [subprocess.Popen(["python3", "-c", "while True: pass"])
                for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(1)
        for i in range(args.programs):
            # A new inode each time: read and probed afresh.
            copy = os.path.join(dir_, "prog-%d" % i)
            shutil.copy(first, copy)
            if args.drop_caches:
                subprocess.run(["sync"], check=True)
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("3\n")
            t0 = time.monotonic()
            subprocess.run([copy, second, str(args.spin_ms)], stdout=subprocess.DEVNULL, check=True)
            os.unlink(copy)
            time.sleep(max(0.0, args.every - (time.monotonic() - t0)))
        time.sleep(1)
    finally:
        for s in spinners:
            s.kill()
            s.wait()
    summary = agent.stop()
    return {name: counter(summary, name) for name in (
        "kernel.drops{ring_full_sample}", "profiles.samples", "tls.files_attached",
        "tls.files_detached", "tls.analysed_inline", "tls.detached_inline")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--programs", type=int, default=5, help="programs started per round")
    ap.add_argument("--every", type=float, default=1.0, help="seconds between starts")
    ap.add_argument("--spin-ms", type=int, default=300, help="CPU each program spends")
    ap.add_argument("--drop-caches", action="store_true", help="read each executable from disk")
    ap.add_argument("--ab", metavar="EXE", help="another agent build, interleaved")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    builds = [("this", TRACER)] + ([("other", args.ab)] if args.ab else [])
    results = {name: [] for name, _ in builds}
    with tempfile.TemporaryDirectory(prefix="start-stall-") as dir_:
        first, second = build(dir_)
        for r in range(args.rounds):
            for name, exe in builds:
                c = round_(exe, first, second, args, dir_)
                results[name].append(c)
                print("round %d %-5s %s" % (r + 1, name, "  ".join("%s=%d" % kv for kv in c.items())),
                      flush=True)
    print("\nmedian of %d rounds, %d programs each%s:" % (
        args.rounds, args.programs, ", read from disk" if args.drop_caches else ""))
    for name, exe in builds:
        rs = results[name]
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        print("  %-5s %s  samples lost %g of %g (max %d)  files attached %g, detached %g" % (
            name, exe, med["kernel.drops{ring_full_sample}"], med["profiles.samples"],
            max(r["kernel.drops{ring_full_sample}"] for r in rs),
            med["tls.files_attached"], med["tls.files_detached"]))


if __name__ == "__main__":
    main()
