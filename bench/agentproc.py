"""The agent as a benchmark drives it: started, waited for, measured from
/proc, stopped with SIGINT."""
import os
import re
import shlex
import signal
import subprocess
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The agent as shipped (`cargo build --profile dist -p tracer`); TRACER_BIN
# overrides.
TRACER = os.environ.get("TRACER_BIN") or os.path.join(ROOT, "target", "dist", "tracer")
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The first line of a mapping in /proc/PID/smaps; group 1 is its name.
MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$")


class Agent:
    """`tracer run --print none ARGS`, running once attached."""

    def __init__(self, args, exe=TRACER, env=None):
        if not os.path.exists(exe):
            raise SystemExit("%s missing: build the agent first (cargo build --profile dist -p tracer), "
                             "or set TRACER_BIN" % exe)
        # The full summary: every counter, as an exact number (see counter()).
        self.proc = subprocess.Popen([exe, "run", "--print", "none", "--summary", "full"] + args,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, NO_COLOR="1", RUST_LOG="info", **(env or {})))
        self.program_ids = []
        for line in self.proc.stderr:
            if "attached: capturing" in line:
                m = re.search(r"programs=\[([\d, ]*)\]", line)
                if m:
                    self.program_ids = [int(x) for x in m.group(1).split(",") if x.strip()]
                break
        else:
            raise SystemExit("agent failed to start")
        self.memory = MemoryWatch(self.proc.pid)

    def cpu_seconds(self):
        """User + system CPU time so far."""
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def peak_rss_kib(self):
        """VmHWM."""
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        """SIGINT; returns what the agent wrote on stderr after attaching."""
        self.memory.stop()
        self.proc.send_signal(signal.SIGINT)
        err = self.proc.stderr.read()
        self.proc.wait()
        return err


def rss_by_mapping(pid):
    """Resident KiB of the process now, by kind of mapping (smaps):
    `lanes` the kernel's capture lanes and rings (BPF maps mapped in),
    `heap` anonymous memory (malloc arenas, the main heap, thread stacks),
    `file` the executable and libraries; `total` is their sum."""
    out = {"lanes": 0, "heap": 0, "file": 0}
    kind = None
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            head = MAPPING.match(line)
            if head:
                name = head.group(1).strip()
                kind = "lanes" if "bpf" in name else "file" if name.startswith("/") else "heap"
            elif line.startswith("Rss:"):
                out[kind] += int(line.split()[1])
    out["total"] = sum(out.values())
    return out


class MemoryWatch:
    """Samples rss_by_mapping every `period` seconds on a thread and keeps
    the sample of the highest total (the peak's breakdown)."""

    def __init__(self, pid, period=0.25):
        self.pid = pid
        self.peak = {"lanes": 0, "heap": 0, "file": 0, "total": 0}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(period,), daemon=True)
        self.thread.start()

    def _run(self, period):
        while not self.done.wait(period):
            try:
                now = rss_by_mapping(self.pid)
            except (OSError, ValueError, IndexError):
                return
            if now["total"] > self.peak["total"]:
                self.peak = now

    def stop(self):
        self.done.set()
        self.thread.join()

    def describe(self):
        """'lanes X + heap Y + file Z MiB' at the sampled peak."""
        p = self.peak
        return "lanes %.1f + heap %.1f + file %.1f MiB (sampled peak %.1f MiB)" % (
            p["lanes"] / 1024, p["heap"] / 1024, p["file"] / 1024, p["total"] / 1024)


COND_HELP = "NAME=FLAGS or NAME=@EXE FLAGS (repeatable)"


def parse_conds(conds):
    """{name: (exe, flags)} of `--cond` values: NAME=FLAGS, or NAME=@EXE
    FLAGS to run another agent binary; None when none were given."""
    if not conds:
        return None
    out = {}
    for c in conds:
        name, _, rest = c.partition("=")
        words = shlex.split(rest)
        exe = words.pop(0)[1:] if words and words[0].startswith("@") else TRACER
        out[name] = (exe, words)
    return out


def counters(summary):
    """(stage, name, value) of every counter in the exit summary of an agent
    started by Agent (which prints it in full)."""
    out = []
    for line in summary.split("tracer: counters at exit", 1)[-1].splitlines():
        words = line.split()
        if len(words) < 2 or words[0] == "anomalies:" or "=" in words[0]:
            continue
        for kv in words[1:]:
            k, _, v = kv.partition("=")
            try:
                out.append((words[0], k, int(float(v))))
            except ValueError:
                pass
    return out


def counter(summary, name):
    """The value of counter `name` (`stage.name`, or a bare name: its first
    stage) in such a summary; 0 when absent."""
    stage, _, bare = name.rpartition(".")
    return next((v for st, k, v in counters(summary) if k == bare and stage in ("", st)), 0)


def lost(summary):
    """Records the kernel dropped and the reader passed over, by name."""
    return {k: v for st, k, v in counters(summary)
            if (st == "kernel" and k.startswith("drops{")) or k in ("shed_op", "shed_segment")}
