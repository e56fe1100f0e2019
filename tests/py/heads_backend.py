"""An HTTP/1.1 backend with large heads, for the capture-control tests.

  heads_backend.py PORT

GET /setcookie?kb=N answers 201 with N KiB of Set-Cookie headers and then an
x-request-id header (its value is the request's x-request-id, or "none");
any other GET answers 200 with a small body; POST reads and discards the
body and answers 200. Prints "ready" once listening."""
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port = int(sys.argv[1])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        body = b"ok\n"
        if url.path == "/setcookie":
            self.send_response(201)
            kb = int(query.get("kb", ["6"])[0])
            for i in range(kb * 1024 // 256):
                # 256 bytes per header line, values the test looks for.
                value = ("sessionsecret%03d=" % i) + "s" * (256 - 32)
                self.send_header("Set-Cookie", value)
            self.send_header("x-request-id", self.headers.get("x-request-id", "none"))
        else:
            self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            got = self.rfile.read(min(left, 1 << 20))
            if not got:
                break
            left -= len(got)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
server.daemon_threads = True
print("ready", flush=True)
server.serve_forever()
