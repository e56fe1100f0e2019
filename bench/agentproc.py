"""The agent as a benchmark drives it: started, waited for, measured from
/proc, stopped with SIGINT."""
import os
import re
import signal
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRACER = os.path.join(ROOT, "target", "release", "tracer")
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Agent:
    """`tracer run --print none ARGS`, running once attached."""

    def __init__(self, args, exe=TRACER, env=None):
        self.proc = subprocess.Popen([exe, "run", "--print", "none"] + args,
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
        self.proc.send_signal(signal.SIGINT)
        err = self.proc.stderr.read()
        self.proc.wait()
        return err
