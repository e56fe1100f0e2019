"""gRPC peer of the HTTP/2 end-to-end tests (grpcio, helloworld.proto).

  grpc_hello.py server PORT        serves Greeter/SayHello; prints "ready"
  grpc_hello.py client PORT        reads commands from stdin, one a line,
                                   over ONE channel, and answers each with
                                   "ok STATUS" once the call is done:
      call NAME [REQ_BYTES [REPLY_BYTES]]
      quit

A name starting with "notfound" is answered with NOT_FOUND. The .proto is
compiled into a temporary folder at start (grpcio-tools), so nothing
generated is kept in the repository.
"""
import os
import sys
import tempfile
from concurrent import futures

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))


def load():
    out = tempfile.mkdtemp(prefix="grpc-hello-")
    rc = protoc.main([
        "protoc", f"-I{HERE}", f"--python_out={out}", f"--grpc_python_out={out}",
        os.path.join(HERE, "helloworld.proto"),
    ])
    if rc != 0:
        raise SystemExit(f"protoc failed: {rc}")
    sys.path.insert(0, out)
    import helloworld_pb2
    import helloworld_pb2_grpc
    return helloworld_pb2, helloworld_pb2_grpc


pb, pb_grpc = load()
MAX = 8 * 1024 * 1024
OPTS = [("grpc.max_send_message_length", MAX), ("grpc.max_receive_message_length", MAX)]


class Greeter(pb_grpc.GreeterServicer):
    def SayHello(self, request, context):
        if request.name.startswith("notfound"):
            context.abort(grpc.StatusCode.NOT_FOUND, "no such name")
        msg = "hello " + request.name[:64]
        if request.reply_size:
            msg += "x" * request.reply_size
        return pb.HelloReply(message=msg)


def server(port):
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=OPTS)
    pb_grpc.add_GreeterServicer_to_server(Greeter(), s)
    s.add_insecure_port(f"127.0.0.1:{port}")
    s.start()
    print("ready", flush=True)
    s.wait_for_termination()


def client(port):
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTS) as ch:
        stub = pb_grpc.GreeterStub(ch)
        print("ready", flush=True)
        for line in sys.stdin:
            words = line.split()
            if not words or words[0] == "quit":
                break
            name = words[1]
            req_bytes = int(words[2]) if len(words) > 2 else 0
            reply = int(words[3]) if len(words) > 3 else 0
            try:
                stub.SayHello(pb.HelloRequest(name=name + "x" * req_bytes, reply_size=reply),
                              timeout=30)
                print("ok OK", flush=True)
            except grpc.RpcError as e:
                print(f"ok {e.code().name}", flush=True)


if __name__ == "__main__":
    {"server": server, "client": client}[sys.argv[1]](int(sys.argv[2]))
