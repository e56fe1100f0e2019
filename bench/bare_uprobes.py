"""Uprobes with no eBPF program behind them: tracefs probe events, tracing
off, so what they cost is the trap alone. bench/tls_overhead.py runs them as
the floor any uprobe-based TLS capture stands on, at the same places the
agent probes: a C function's entry and its return (a uretprobe, as the
agent's), a Go function's entry and, for Go's Read, where its end is
seen: its call to runtime.memmove, else each of its RET instructions (Go
code gets no uretprobes)."""
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


def _loads(path):
    segs = subprocess.run(["readelf", "-lW", path], capture_output=True, text=True).stdout
    return [tuple(int(x, 16) for x in m.groups()) for m in
            re.finditer(r"LOAD\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+0x[0-9a-f]+\s+(0x[0-9a-f]+)", segs)]


def _addresses(path, symbols):
    """{symbol: virtual address} of the `symbols` defined in `path` as
    functions (dynamic symbols first, then the symbol table)."""
    found = {}
    for flags in (["-D"], []):
        out = subprocess.run(["nm", *flags, "--defined-only", path], capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split(maxsplit=2)
            if len(parts) < 3 or parts[1] not in "Tt":
                continue
            name = parts[2].split("@")[0]
            if name in symbols and name not in found:
                found[name] = int(parts[0], 16)
    return found


def _disassemble(path, *which):
    """(address, mnemonic, operands) of the instructions objdump's `which`
    options select."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", *which, path],
                         capture_output=True, text=True).stdout
    return [(int(a, 16), op, arg) for a, op, arg in
            re.findall(r"^\s*([0-9a-f]+):\s+(\S+)[ \t]*(.*)$", out, re.M)]


def _instructions(path, vaddr, length):
    """(address, mnemonic, operands) of the instructions at `vaddr`."""
    return _disassemble(path, "--start-address=0x%x" % vaddr, "--stop-address=0x%x" % (vaddr + length))


def _calls(path, vaddr):
    """Targets of the direct calls from `vaddr` to the first return or jump."""
    calls = []
    for _, op, arg in _instructions(path, vaddr, 128):
        if op.startswith("ret") or op == "jmp":
            break
        target = arg.split(" ")[0]
        if op == "call" and re.fullmatch(r"[0-9a-f]+", target):
            calls.append(int(target, 16))
    return calls


def _inner(path, plain, ex):
    """The function OpenSSL's two wrappers (addresses) both call first, when it
    starts with an instruction the kernel's uprobes emulate (`push`,
    `nop`): where the agent probes instead (tracer/src/tls/inner.rs)."""
    calls = _calls(path, ex)
    if not calls or _calls(path, plain)[:1] != calls[:1]:
        return None
    first = _instructions(path, calls[0], 16)
    return calls[0] if first and first[0][1].startswith(("push", "nop")) else None


def file_offsets(path, symbols, as_agent=False):
    """{symbol: file offset} of the `symbols` found in `path`, each through
    the LOAD segment that maps it. `as_agent`: where the agent probes
    instead: OpenSSL's read and write wrappers at the inner function, where
    it does (the plain wrapper then left out), a Go function at its stack
    check's branch."""
    found = _addresses(path, set(symbols) | ({"SSL_write_ex2"} if as_agent else set()))
    if as_agent:
        pairs = [("SSL_read", "SSL_read_ex")]
        if "SSL_write_ex2" not in found:
            pairs.append(("SSL_write", "SSL_write_ex"))
        for plain, ex in pairs:
            if plain in found and ex in found:
                inner = _inner(path, found[plain], found[ex])
                if inner is not None:
                    found[ex] = inner
                    found[plain] = None
        for name in [n for n in found if "." in n and found[n] is not None]:
            # A Go function: on its stack check's jbe (tracer/src/tls/go.rs).
            at = [a for a, op, _ in _instructions(path, found[name], 24) if op == "jbe"]
            if at:
                found[name] = at[0]
    loads = _loads(path)
    out = {}
    for name, vaddr in found.items():
        if name not in symbols:
            continue
        if vaddr is None:
            out[name] = None
            continue
        out.update({name: vaddr - va + off for off, va, size in loads if va <= vaddr < va + size})
    return out


def go_read_end(path, symbol):
    """File offsets where the agent sees Go function `symbol` (Read) end, as
    tracer/src/tls/go.rs finds them: its one call to runtime.memmove, else
    each of its RET instructions."""
    insns = _disassemble(path, "--disassemble=" + symbol)
    if not insns:
        raise SystemExit("bare uprobes: %s not found in %s" % (symbol, path))
    at = [a for a, op, arg in insns if op == "call" and arg.endswith("<runtime.memmove>")]
    if len(at) != 1:
        at = [a for a, op, _ in insns if op.startswith("ret")]
    loads = _loads(path)
    return [r - va + off for r in at for off, va, size in loads if va <= r < va + size]


def libraries_of(exe, soname):
    """Resolved paths of the libraries named `soname*` that `exe` links."""
    out = subprocess.run(["ldd", shutil.which(exe) or exe], capture_output=True, text=True).stdout
    return {os.path.realpath(m.group(1)) for m in re.finditer(r"%s\S* => (\S+)" % re.escape(soname), out)}


class BareUprobes:
    """Uprobes on `targets` ([(file, symbol)]), enabled with tracing off:
    every call traps, nothing is recorded. A C function gets an entry probe
    and a uretprobe; a Go function (a dotted name) an entry probe, and Go's
    Read one where its end is seen too (`returns`: else entries alone)."""

    def __init__(self, targets, as_agent=True, returns=True):
        self.targets = []
        for path in dict.fromkeys(p for p, _ in targets):
            symbols = [sym for p, sym in targets if p == path]
            offsets = file_offsets(path, symbols, as_agent)
            for sym in symbols:
                if sym not in offsets:
                    raise SystemExit("bare uprobes: %s not found in %s" % (sym, path))
                if offsets[sym] is None:
                    continue
                self.targets.append(("p", path, offsets[sym]))
                if not returns:
                    continue
                if "." not in sym:
                    self.targets.append(("r", path, offsets[sym]))
                elif sym.endswith(").Read"):
                    self.targets += [("p", path, off) for off in go_read_end(path, sym)]

    def start(self):
        if os.path.exists(TRACEFS + "/events/" + GROUP):
            raise SystemExit("bare uprobes: %s/events/%s is left from another run; remove its probes "
                             "from uprobe_events" % (TRACEFS, GROUP))
        with open(TRACEFS + "/tracing_on") as f:
            self.tracing_was = f.read().strip()
        _write(TRACEFS + "/tracing_on", "0")
        for i, (kind, path, off) in enumerate(self.targets):
            _write(TRACEFS + "/uprobe_events", "%s:%s/p%d %s:0x%x\n" % (kind, GROUP, i, path, off), append=True)
        _write(TRACEFS + "/events/%s/enable" % GROUP, "1")

    def stop(self):
        enable = TRACEFS + "/events/%s/enable" % GROUP
        if os.path.exists(enable):
            _write(enable, "0")
        for i in range(len(self.targets)):
            _write(TRACEFS + "/uprobe_events", "-:%s/p%d\n" % (GROUP, i), append=True)
        _write(TRACEFS + "/tracing_on", self.tracing_was)
