"""A minimal ASGI app for hypercorn (h2c by upgrade or prior knowledge, or
over TLS): 200 "upgraded" on /up.txt and every path starting with /up,
404 elsewhere.

  hypercorn --bind 127.0.0.1:PORT asgi_hello:app   (from tests/py)
"""


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    ok = scope["path"].startswith("/up")
    body = b"upgraded\n" if ok else b"no\n"
    await send({
        "type": "http.response.start",
        "status": 200 if ok else 404,
        "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})
