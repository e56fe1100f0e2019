#!/usr/bin/env python3
"""Records real HTTP/2 traffic for the golden corpus of protocols/.

Each case runs a real server (nghttpd, Python grpcio) and a real client
(nghttp, curl, grpcio) on loopback through a recording TCP relay, and
writes the raw bytes of each direction of each connection to
tests/data/h2/<case>/<n>.c2s.bin and <n>.s2c.bin (client to server,
server to client). Nothing is hand-written: rerun to regenerate
(needs apt nghttp2-client nghttp2-server curl, and grpcio from
tests/requirements.txt, e.g. target/pyenv/bin/python).

    target/pyenv/bin/python protocols/tests/capture_h2.py
"""
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "data", "h2")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Relay:
    """Accepts connections, forwards them to the server, records bytes."""

    def __init__(self, target_port):
        self.target = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []  # (c2s bytearray, s2c bytearray)
        self.threads = []
        self.stop = False
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while not self.stop:
            r, _, _ = select.select([self.sock], [], [], 0.1)
            if not r:
                continue
            c, _ = self.sock.accept()
            s = socket.create_connection(("127.0.0.1", self.target))
            rec = (bytearray(), bytearray())
            self.conns.append(rec)
            t = threading.Thread(target=self.pump, args=(c, s, rec), daemon=True)
            t.start()
            self.threads.append(t)

    def pump(self, c, s, rec):
        peers = {c: (s, rec[0]), s: (c, rec[1])}
        open_ = {c, s}
        while open_:
            r, _, _ = select.select(list(open_), [], [], 0.5)
            for x in r:
                d = x.recv(65536)
                dst, buf = peers[x]
                if not d:
                    open_.discard(x)
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    continue
                buf += d
                dst.sendall(d)
        c.close()
        s.close()

    def save(self, case):
        self.stop = True
        for t in self.threads:
            t.join(5)
        d = os.path.join(OUT, case)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        for i, (a, b) in enumerate(self.conns):
            with open(os.path.join(d, f"{i}.c2s.bin"), "wb") as f:
                f.write(a)
            with open(os.path.join(d, f"{i}.s2c.bin"), "wb") as f:
                f.write(b)
        print(f"{case}: {len(self.conns)} connection(s)", file=sys.stderr)


def wait_port(port):
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def nghttp_cases(docroot):
    for name in ["a.txt", "b.txt"]:
        with open(os.path.join(docroot, name), "w") as f:
            f.write(name * 10)
    with open(os.path.join(docroot, "big.bin"), "wb") as f:
        f.write(os.urandom(200_000))
    upload = os.path.join(docroot, "upload.bin")
    with open(upload, "wb") as f:
        f.write(os.urandom(100_000))
    cases = [
        # (case, nghttpd options, client command with {url})
        ("nghttp_get", [], ["nghttp", "-n", "{url}/a.txt", "{url}/b.txt"]),
        # 20 KB of headers: the block spans HEADERS and CONTINUATION.
        ("nghttp_continuation", [],
         ["nghttp", "-n", "-H", "x-big: " + "v" * 20000, "-H", "x-big2: " + "w" * 20000,
          "{url}/a.txt", "{url}/b.txt"]),
        # The server's decoder table is 256 bytes: the client's encoder
        # sends a size update, then evicts.
        ("nghttp_small_table", ["-c", "256"],
         ["nghttp", "-n"] + [a for i in range(8) for a in ("-H", f"x-h{i}: value-{i}-" + "z" * 30)]
         + ["{url}/a.txt", "{url}/b.txt", "{url}/a.txt?x=1", "{url}/b.txt?y=2"]),
        # 50 streams on one connection.
        ("nghttp_50_streams", [], ["nghttp", "-n", "-m", "50", "{url}/a.txt"]),
        # Large DATA both ways, then more requests.
        ("nghttp_large_data", [],
         ["nghttp", "-n", "-d", upload, "{url}/big.bin", "{url}/a.txt"]),
        ("curl_prior_knowledge", [],
         ["curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "{url}/a.txt"]),
    ]
    for case, sopts, cmd in cases:
        port = free_port()
        srv = subprocess.Popen(["nghttpd", "--no-tls", "-d", docroot] + sopts + [str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port)
            relay = Relay(port)
            url = f"http://127.0.0.1:{relay.port}"
            subprocess.run([c.replace("{url}", url) for c in cmd], check=True, timeout=30,
                           stdout=subprocess.DEVNULL)
            time.sleep(0.3)
            relay.save(case)
        finally:
            srv.terminate()
            srv.wait()


def upgrade_case(docroot):
    """HTTP/1.1 Upgrade: h2c, by nghttp -u to nghttpx (nghttpd does not
    upgrade) in front of nghttpd."""
    back, front = free_port(), free_port()
    srv = subprocess.Popen(["nghttpd", "--no-tls", "-d", docroot, str(back)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = subprocess.Popen(["nghttpx", f"-f127.0.0.1,{front};no-tls",
                              f"-b127.0.0.1,{back};;proto=h2", "--workers=1",
                              "--conf=/dev/null", "--no-ocsp", "--single-process"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(back)
        wait_port(front)
        relay = Relay(front)
        url = f"http://127.0.0.1:{relay.port}"
        subprocess.run(["nghttp", "-n", "-u", f"{url}/a.txt", f"{url}/b.txt"], check=True,
                       timeout=30, stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        relay.save("nghttp_upgrade")
    finally:
        for p in (proxy, srv):
            p.terminate()
            p.wait()


def grpc_cases():
    import grpc
    from concurrent import futures

    def echo(req, ctx):
        if req == b"notfound":
            ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        if req == b"slow":
            time.sleep(1.0)
        return b"echo:" + req[:64] + (b"x" * (1 << 20) if req.startswith(b"big") else b"")

    def listing(req, ctx):
        for i in range(3):
            yield b"part%d" % i

    def upload(it, ctx):
        return b"got%d" % sum(1 for _ in it)

    def chat(it, ctx):
        for m in it:
            yield b"re:" + m

    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "List": grpc.unary_stream_rpc_method_handler(listing),
        "Upload": grpc.stream_unary_rpc_method_handler(upload),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
    }
    opts = [("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", 8 << 20)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64), options=opts)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("demo.Demo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    def run(case, body):
        relay = Relay(port)
        ch = grpc.insecure_channel(f"127.0.0.1:{relay.port}", options=opts)
        body(ch)
        ch.close()
        time.sleep(0.3)
        relay.save(case)

    def calls(ch):
        echo_ = ch.unary_unary("/demo.Demo/Echo")
        for i in range(3):
            echo_(b"hello%d" % i)
        list(ch.unary_stream("/demo.Demo/List")(b"q"))
        ch.stream_unary("/demo.Demo/Upload")(iter([b"a", b"b", b"c"]))
        list(ch.stream_stream("/demo.Demo/Chat")(iter([b"x", b"y"])))
        for req in [b"notfound", b"slow"]:
            try:
                echo_(req, timeout=0.3 if req == b"slow" else None)
            except grpc.RpcError:
                pass
        # 1 MiB each way, then more calls behind it.
        echo_(b"big" + b"y" * (1 << 20))
        for i in range(3):
            echo_(b"after%d" % i)

    def concurrent(ch):
        echo_ = ch.unary_unary("/demo.Demo/Echo")
        echo_(b"warm")
        fs = [echo_.future(b"call-%02d" % i) for i in range(50)]
        for f in fs:
            f.result()

    run("grpcio_calls", calls)
    run("grpcio_50_concurrent", concurrent)
    server.stop(0)


def main():
    os.makedirs(OUT, exist_ok=True)
    docroot = tempfile.mkdtemp()
    try:
        nghttp_cases(docroot)
        upgrade_case(docroot)
    finally:
        shutil.rmtree(docroot)
    grpc_cases()


if __name__ == "__main__":
    main()
