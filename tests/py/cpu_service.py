"""An HTTP service with a CPU-bound route and a sleeping one, for the
profiling tests (a Python ThreadingHTTPServer: one thread per connection).

  cpu_service.py PORT      /cpu?n=N  runs hashlib.pbkdf2_hmac (OpenSSL's
                           libcrypto) with N iterations; /sleep?ms=M sleeps.
Prints "ready" once listening."""
import hashlib
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qs(url.query)
        if url.path == "/cpu":
            t0 = time.process_time()
            hashlib.pbkdf2_hmac("sha256", b"password", b"salt", int(q.get("n", ["200000"])[0]))
            body = b"cpu %.6f\n" % (time.process_time() - t0)
        elif url.path == "/sleep":
            time.sleep(int(q.get("ms", ["100"])[0]) / 1000)
            body = b"slept\n"
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
server.daemon_threads = True
print("ready", flush=True)
server.serve_forever()
