"""An HTTPS backend: Python's http.server (HTTP/1.1, keep-alive) wrapped
with ssl. Usage: tls_backend.py PORT CERT KEY [lazy]; answers 200 "backend
PATH" to every GET; prints "ready" once listening. With "lazy", accepting
does not shake hands: each connection's first read does."""
import http.server
import ssl
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = ("backend %s\n" % self.path).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
lazy = sys.argv[4:] == ["lazy"]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=not lazy)
print("ready", flush=True)
server.serve_forever()
