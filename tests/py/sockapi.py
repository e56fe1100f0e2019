"""Moves a unique payload over TCP loopback with each pair of socket calls
(write/read, writev/readv, sendmsg/recvmsg, sendto/recvfrom, send/recv), the
sender and the receiver on their own threads. Prints one JSON line per pair
with the payload, both thread ids and both ports, for the capture test."""
import json
import os
import secrets
import socket
import threading


def recv_exact(method, sock, n):
    got = b""
    while len(got) < n:
        want = n - len(got)
        if method == "read":
            chunk = os.read(sock.fileno(), want)
        elif method == "readv":
            buf = bytearray(want)
            k = os.readv(sock.fileno(), [buf])
            chunk = bytes(buf[:k])
        elif method == "recvmsg":
            chunk = sock.recvmsg(want)[0]
        elif method == "recvfrom":
            chunk = sock.recvfrom(want)[0]
        else:
            chunk = sock.recv(want)
        if not chunk:
            raise RuntimeError("peer closed early")
        got += chunk
    return got


def send_all(method, sock, data):
    if method == "write":
        n = os.write(sock.fileno(), data)
    elif method == "writev":
        half = len(data) // 2
        n = os.writev(sock.fileno(), [data[:half], data[half:]])
    elif method == "sendmsg":
        n = sock.sendmsg([data])
    elif method == "sendto":
        n = sock.sendto(data, sock.getpeername())
    else:
        n = sock.send(data)
    assert n == len(data), (method, n)


PAIRS = [("write", "read"), ("writev", "readv"), ("sendmsg", "recvmsg"),
         ("sendto", "recvfrom"), ("send", "recv")]

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(8)
server_port = listener.getsockname()[1]

for send_m, recv_m in PAIRS:
    payload = ("%s-%s:%s" % (send_m, recv_m, secrets.token_hex(24))).encode()
    result = {}

    def receiver():
        conn, _ = listener.accept()
        result["recv_tid"] = threading.get_native_id()
        result["got"] = recv_exact(recv_m, conn, len(payload)).decode()
        conn.close()

    t = threading.Thread(target=receiver)
    t.start()
    client = socket.create_connection(("127.0.0.1", server_port))

    def sender():
        result["send_tid"] = threading.get_native_id()
        send_all(send_m, client, payload)

    s = threading.Thread(target=sender)
    s.start()
    s.join()
    t.join()
    client_port = client.getsockname()[1]
    client.close()
    assert result["got"] == payload.decode()
    print(json.dumps({"send": send_m, "recv": recv_m, "payload": payload.decode(),
                      "send_tid": result["send_tid"], "recv_tid": result["recv_tid"],
                      "client_port": client_port, "server_port": server_port,
                      "pid": os.getpid()}), flush=True)
