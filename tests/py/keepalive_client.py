"""A keep-alive HTTP/1.1 client: sends one request, prints its 4-tuple, then
waits for a line on stdin before sending more requests on the SAME
connection (the agent is started in between). Usage: PORT N_AFTER"""
import json
import socket
import sys

port, n_after = int(sys.argv[1]), int(sys.argv[2])
sock = socket.create_connection(("127.0.0.1", port))
reader = sock.makefile("rb")


def request(path):
    sock.sendall(("GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n" % path).encode())
    status = reader.readline()
    length = 0
    while True:
        line = reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    reader.read(length)
    return status.decode().strip()


request("/before")
local, remote = sock.getsockname(), sock.getpeername()
print(json.dumps({"local": "%s:%d" % local, "remote": "%s:%d" % remote}), flush=True)
sys.stdin.readline()
statuses = [request("/after-%d" % i) for i in range(n_after)]
print(json.dumps({"statuses": statuses}), flush=True)
