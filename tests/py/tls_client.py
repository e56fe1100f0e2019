"""HTTPS requests with Python's ssl module (certificate checks off: the
server's certificate is made for the test). Usage:
  tls_client.py urllib BASE PATH...     one urllib request (and connection) per path
  tls_client.py keepalive BASE PREFIX N  N requests on ONE http.client connection"""
import http.client
import ssl
import sys
import urllib.parse
import urllib.request

ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE

mode, base = sys.argv[1], sys.argv[2]
if mode == "urllib":
    for path in sys.argv[3:]:
        with urllib.request.urlopen(base + path, context=ctx) as r:
            r.read()
            assert r.status == 200, r.status
elif mode == "keepalive":
    prefix, n = sys.argv[3], int(sys.argv[4])
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx)
    for i in range(n):
        conn.request("GET", "%s%d" % (prefix, i))
        r = conn.getresponse()
        r.read()
        assert r.status == 200, r.status
    conn.close()
else:
    raise SystemExit("unknown mode " + mode)
print("done", flush=True)
