"""A grpcio server and client in one process, over TLS (grpcio carries its
own BoringSSL, without symbols: the agent cannot see its plaintext).
Usage: grpc_tls.py CERT KEY N"""
import sys
import time
from concurrent import futures

import grpc

cert = open(sys.argv[1], "rb").read()
key = open(sys.argv[2], "rb").read()
n = int(sys.argv[3])

handler = grpc.method_handlers_generic_handler(
    "tlstest.Echo", {"Say": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)}
)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
server.add_generic_rpc_handlers((handler,))
port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
server.start()
creds = grpc.ssl_channel_credentials(root_certificates=cert)
# Two connections, a second apart: a process whose probes the agent
# attached only after its first connection began is judged on the next.
for round in range(2):
    with grpc.secure_channel("localhost:%d" % port, creds) as channel:
        say = channel.unary_unary("/tlstest.Echo/Say")
        for i in range(n):
            assert say(b"hello %d" % i, timeout=10) == b"hello %d" % i
    time.sleep(1)
print("done", flush=True)
# Stay a little: the agent decides once a connection's ciphertext went
# without plaintext for a while.
time.sleep(3)
server.stop(0)
