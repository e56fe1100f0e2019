"""Kernel cost of the agent's eBPF programs, from the kernel's own counters.

With `kernel.bpf_stats_enabled=1` the kernel times every run of every
program (`run_time_ns`, `run_cnt` in `bpftool prog show`). The time is the
program's own execution, measured around it with two clock reads, so it is
little disturbed by other load on the machine; it does not include the
tracepoint or cgroup dispatch around the program.
"""
import json
import subprocess


class BpfStats:
    """Enables the counters for the lifetime of the object (restoring the
    previous setting on close) and snapshots the programs given by id."""

    def __init__(self):
        with open("/proc/sys/kernel/bpf_stats_enabled") as f:
            self.previous = f.read().strip()
        self._set("1")

    @staticmethod
    def _set(value):
        with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
            f.write(value)

    def close(self):
        self._set(self.previous)

    @staticmethod
    def snapshot(ids):
        """{program name: (run_time_ns, run_cnt)} for the programs `ids`
        (programs of the same name are summed)."""
        out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                             check=True).stdout
        want = set(ids)
        snap = {}
        for p in json.loads(out):
            if p.get("id") in want:
                ns, cnt = snap.get(p["name"], (0, 0))
                snap[p["name"]] = (ns + p.get("run_time_ns", 0), cnt + p.get("run_cnt", 0))
        return snap

    @staticmethod
    def diff(before, after):
        """{name: (ns, runs)} of what ran between two snapshots."""
        return {name: (ns - before.get(name, (0, 0))[0], cnt - before.get(name, (0, 0))[1])
                for name, (ns, cnt) in after.items()}


def per_request(delta, requests):
    """(total ns per request, {name: (ns per run, runs per request, ns per request)})."""
    rows = {}
    total = 0.0
    for name, (ns, cnt) in sorted(delta.items()):
        if cnt == 0:
            continue
        per_req = ns / max(requests, 1)
        rows[name] = (ns / cnt, cnt / max(requests, 1), per_req)
        total += per_req
    return total, rows


def format_rows(rows):
    return ", ".join("%s %.0f ns x %.2f" % (name, ns_run, runs) for name, (ns_run, runs, _) in rows.items())
