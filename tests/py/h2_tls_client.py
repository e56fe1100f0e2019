"""HTTP/2 over TLS with the h2 package on Python's ssl (ALPN h2, the
server's certificate is made for the test, checks off). Usage:
  h2_tls_client.py HOST PORT PREFIX N   N GET streams PREFIX0..PREFIX{N-1}
                                        on ONE connection, one at a time"""
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events

host, port, prefix, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"])
sock = ctx.wrap_socket(socket.create_connection((host, port)), server_hostname=host)
assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
conn.initiate_connection()
sock.sendall(conn.data_to_send())
for i in range(n):
    sid = conn.get_next_available_stream_id()
    conn.send_headers(
        sid,
        [(":method", "GET"), (":scheme", "https"), (":authority", host),
         (":path", "%s%d" % (prefix, i))],
        end_stream=True,
    )
    sock.sendall(conn.data_to_send())
    status, ended = None, False
    while not ended:
        data = sock.recv(65536)
        assert data, "connection closed"
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                status = dict(ev.headers).get(b":status")
            elif isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                ended = True
        pending = conn.data_to_send()
        if pending:
            sock.sendall(pending)
    assert status == b"200", status
conn.close_connection()
sock.sendall(conn.data_to_send())
sock.close()
print("done", flush=True)
