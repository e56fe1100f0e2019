"""gRPC peer for the call-kind tests (grpcio, raw-bytes messages).

  grpc_calls.py server PORT     serves service calls.Calls; prints "ready"
  grpc_calls.py client PORT     reads commands from stdin, one a line, over
                                ONE channel, and answers each with
                                "ok STATUS[ STATUS...]" when done:
      unary METHOD [TIMEOUT_MS [SLEEP_MS]]   a unary call
      sstream N                              ServerStream: N replies
      cstream N                              ClientStream: N requests
      bidi N                                 Bidi: N requests, N replies
      many N                                 N concurrent unary calls M0..M(N-1)
      traced TRACEPARENT                     unary call Traced with that metadata
      load SECONDS THREADS [BYTES]           unary calls Load back to back from
                                             THREADS threads for SECONDS, BYTES
                                             in each request and reply; "ok N"
      quit

Messages are raw bytes (no protobuf): a request is "SLEEP_MS,REPLIES"
(or empty), or "SLEEP_MS,REPLIES,BYTES," and padding: BYTES more in the
reply. Unary methods are any name: a method whose name starts with
"NotFound" is answered NOT_FOUND; "Sleep" sleeps SLEEP_MS before replying,
so a shorter client deadline gives DEADLINE_EXCEEDED. Every method name
is visible in its spans, which is how concurrent calls are told apart.
"""
import sys
import time
from concurrent import futures

import grpc

SERVICE = "calls.Calls"


def parse(req):
    if not req:
        return 0, 1, 0
    fields = req.split(b",", 3)
    size = int(fields[2]) if len(fields) > 2 else 0
    return int(fields[0]), int(fields[1]), size


def unary(method, req, context):
    if method.startswith("NotFound"):
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    sleep_ms, _, size = parse(req)
    if sleep_ms:
        time.sleep(sleep_ms / 1000)
    return b"reply:" + method.encode() + b"x" * size


def server_stream(req, context):
    _, replies, _ = parse(req)
    for i in range(replies):
        yield b"part%d" % i


def client_stream(reqs, context):
    return b"got%d" % sum(1 for _ in reqs)


def bidi(reqs, context):
    for r in reqs:
        yield b"echo:" + r


class Handlers(grpc.GenericRpcHandler):
    """Any unary method name of the service; three fixed streaming ones."""

    def service(self, details):
        service, _, method = details.method.lstrip("/").partition("/")
        if service != SERVICE:
            return None
        if method == "ServerStream":
            return grpc.unary_stream_rpc_method_handler(server_stream)
        if method == "ClientStream":
            return grpc.stream_unary_rpc_method_handler(client_stream)
        if method == "Bidi":
            return grpc.stream_stream_rpc_method_handler(bidi)
        return grpc.unary_unary_rpc_method_handler(lambda req, ctx: unary(method, req, ctx))


def server(port):
    # Enough workers for the concurrent test: every call is in flight at once.
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=64),
                    handlers=[Handlers()], maximum_concurrent_rpcs=None)
    s.add_insecure_port(f"127.0.0.1:{port}")
    s.start()
    print("ready", flush=True)
    s.wait_for_termination()


def path(method):
    return f"/{SERVICE}/{method}"


def client(port):
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        print("ready", flush=True)
        for line in sys.stdin:
            words = line.split()
            if not words or words[0] == "quit":
                break
            try:
                print("ok " + run(ch, words), flush=True)
            except grpc.RpcError as e:
                print(f"ok {e.code().name}", flush=True)


def run(ch, words):
    cmd, args = words[0], words[1:]
    if cmd == "unary":
        timeout = int(args[1]) / 1000 if len(args) > 1 else 30
        sleep_ms = int(args[2]) if len(args) > 2 else 0
        ch.unary_unary(path(args[0]))(f"{sleep_ms},1".encode(), timeout=timeout)
        return "OK"
    if cmd == "traced":
        ch.unary_unary(path("Traced"))(b"", timeout=30, metadata=(("traceparent", args[0]),))
        return "OK"
    if cmd == "load":
        return str(load(ch, float(args[0]), int(args[1]), int(args[2]) if len(args) > 2 else 0))
    n = int(args[0])
    if cmd == "sstream":
        got = list(ch.unary_stream(path("ServerStream"))(f"0,{n}".encode(), timeout=30))
        assert len(got) == n, got
        return "OK"
    if cmd == "cstream":
        ch.stream_unary(path("ClientStream"))(iter([b"m"] * n), timeout=30)
        return "OK"
    if cmd == "bidi":
        got = list(ch.stream_stream(path("Bidi"))(iter([b"m%d" % i for i in range(n)]), timeout=30))
        assert len(got) == n, got
        return "OK"
    if cmd == "many":
        # All futures are started before any is waited for: the calls are
        # multiplexed on the channel's one connection.
        fs = [ch.unary_unary(path(f"M{i}")).future(b"20,1", timeout=60) for i in range(n)]
        codes = []
        for f in fs:
            try:
                f.result()
                codes.append("OK")
            except grpc.RpcError as e:
                codes.append(e.code().name)
        return " ".join(codes)
    raise SystemExit(f"unknown command {cmd}")


def load(ch, seconds, threads, size):
    """Calls made back to back by `threads` threads until `seconds` pass
    (the benchmark's gRPC load: one channel, calls multiplexed), with
    `size` bytes in each request and reply."""
    call = ch.unary_unary(path("Load"))
    end = time.monotonic() + seconds
    req = b"0,1,%d," % size + b"x" * size if size else b""

    def worker():
        n = 0
        while time.monotonic() < end:
            call(req, timeout=30)
            n += 1
        return n

    with futures.ThreadPoolExecutor(threads) as ex:
        return sum(ex.map(lambda _: worker(), range(threads)))


if __name__ == "__main__":
    {"server": server, "client": client}[sys.argv[1]](int(sys.argv[2]))
