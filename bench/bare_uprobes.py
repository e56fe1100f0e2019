"""Uprobes with no eBPF program behind them: tracefs probe events, tracing
off, so what they cost is the trap alone. bench/tls_overhead.py runs them as
the floor any uprobe-based TLS capture stands on, on the same functions the
agent probes."""
import os
import re
import shutil
import subprocess

TRACEFS = "/sys/kernel/tracing"
GROUP = "tracer_bench_floor"


def _write(path, text, append=False):
    # Raw writes: tracefs files refuse the seek Python's append mode makes.
    fd = os.open(path, os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC))
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def file_offsets(path, symbols):
    """{symbol: file offset} of the `symbols` found in `path` (dynamic
    symbols first, then the symbol table), each through the LOAD segment
    that maps it."""
    segs = subprocess.run(["readelf", "-lW", path], capture_output=True, text=True).stdout
    loads = [tuple(int(x, 16) for x in m.groups()) for m in
             re.finditer(r"LOAD\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+0x[0-9a-f]+\s+(0x[0-9a-f]+)", segs)]
    found = {}
    for flags in (["-D"], []):
        out = subprocess.run(["nm", *flags, "--defined-only", path], capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split(maxsplit=2)
            if len(parts) < 3 or parts[1] not in "Tt":
                continue
            name = parts[2].split("@")[0]
            if name not in symbols or name in found:
                continue
            vaddr = int(parts[0], 16)
            found.update({name: vaddr - va + off for off, va, size in loads if va <= vaddr < va + size})
    return found


def libraries_of(exe, soname):
    """Resolved paths of the libraries named `soname*` that `exe` links."""
    out = subprocess.run(["ldd", shutil.which(exe) or exe], capture_output=True, text=True).stdout
    return {os.path.realpath(m.group(1)) for m in re.finditer(r"%s\S* => (\S+)" % re.escape(soname), out)}


class BareUprobes:
    """Entry uprobes on `targets` ([(file, symbol)]), enabled with tracing
    off: every call traps, nothing is recorded."""

    def __init__(self, targets):
        self.targets = []
        for path in dict.fromkeys(p for p, _ in targets):
            symbols = [sym for p, sym in targets if p == path]
            offsets = file_offsets(path, symbols)
            for sym in symbols:
                if sym not in offsets:
                    raise SystemExit("bare uprobes: %s not found in %s" % (sym, path))
                self.targets.append((path, offsets[sym]))

    def start(self):
        if os.path.exists(TRACEFS + "/events/" + GROUP):
            raise SystemExit("bare uprobes: %s/events/%s is left from another run; remove its probes "
                             "from uprobe_events" % (TRACEFS, GROUP))
        with open(TRACEFS + "/tracing_on") as f:
            self.tracing_was = f.read().strip()
        _write(TRACEFS + "/tracing_on", "0")
        for i, (path, off) in enumerate(self.targets):
            _write(TRACEFS + "/uprobe_events", "p:%s/p%d %s:0x%x\n" % (GROUP, i, path, off), append=True)
        _write(TRACEFS + "/events/%s/enable" % GROUP, "1")

    def stop(self):
        enable = TRACEFS + "/events/%s/enable" % GROUP
        if os.path.exists(enable):
            _write(enable, "0")
        for i in range(len(self.targets)):
            _write(TRACEFS + "/uprobe_events", "-:%s/p%d\n" % (GROUP, i), append=True)
        _write(TRACEFS + "/tracing_on", self.tracing_was)
