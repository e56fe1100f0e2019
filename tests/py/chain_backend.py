"""A threaded HTTP/1.1 backend for the chain tests (a Python
ThreadingHTTPServer: one thread per connection).

  chain_backend.py PORT [DOWNSTREAM_BASE_URL]

Without a downstream it answers 200 (or the status given by `?status=NNN`)
with a small body (or `?size=N` bytes; `?chunked=1` sends it chunked;
`?sleep=MS` waits that long first). With one, its handler first calls
DOWNSTREAM_BASE_URL + the same path on a new connection, forwarding the
request as a reverse proxy does (its Host kept), or, with
$DOWNSTREAM_PREFIX set, calls it under the prefixed path with its own
Host (then the call does not repeat the request); then answers with what
it got. Prints "ready" once listening."""
import http.client
import os
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port = int(sys.argv[1])
downstream = urllib.parse.urlsplit(sys.argv[2]) if len(sys.argv) > 2 else None
prefix = os.environ.get("DOWNSTREAM_PREFIX", "")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        status = int(query.get("status", ["200"])[0])
        if "sleep" in query:
            time.sleep(int(query["sleep"][0]) / 1000)
        body = b"from %d: %s\n" % (port, self.path.encode())
        if downstream is not None:
            conn = http.client.HTTPConnection(downstream.hostname, downstream.port, timeout=10)
            headers = {}
            if not prefix and self.headers.get("Host"):
                headers["Host"] = self.headers["Host"]
            for name in ("x-request-id",):
                if self.headers.get(name):
                    headers[name] = self.headers[name]
            conn.request("GET", prefix + self.path, headers=headers)
            resp = conn.getresponse()
            body += resp.read()
            status = resp.status
            conn.close()
        if "size" in query:
            body = b"x" * int(query["size"][0])
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        if query.get("chunked") == ["1"]:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 4096):
                piece = body[i:i + 4096]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
server.daemon_threads = True
print("ready", flush=True)
server.serve_forever()
