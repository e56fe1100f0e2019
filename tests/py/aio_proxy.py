"""An asyncio service for the parent tests (aiohttp server and
aiohttp.ClientSession on one event loop):

  aio_proxy.py PORT BACKEND_PORT [--poll-ms MS] [--poll-path P]
               [--delay-ms MS] [--prefix P] [--propagate-id]
               [--cert CERT --key KEY] [--backend-tls]

Each request's handler calls the backend on 127.0.0.1:BACKEND_PORT with
the same method, path and Host, as a reverse proxy does (with --prefix,
the path is prefixed: the call no longer repeats the request), after
--delay-ms, and answers with what it got; --propagate-id passes the
request's x-request-id on. With --poll-ms, a task on the same event loop
polls the backend at /poll/N that often (at --poll-path, if given, every
time: the very path clients may be requesting). With --cert and --key it
serves HTTPS, with --backend-tls it calls the backend over HTTPS
(certificate not verified): asyncio's TLS, memory BIOs on both sides.
Prints "ready" once listening."""
import argparse
import asyncio
import ssl

from aiohttp import ClientSession, web

args = argparse.ArgumentParser()
args.add_argument("port", type=int)
args.add_argument("backend", type=int)
args.add_argument("--poll-ms", type=int, default=0)
args.add_argument("--poll-path", default="")
args.add_argument("--delay-ms", type=int, default=0)
args.add_argument("--prefix", default="")
args.add_argument("--propagate-id", action="store_true")
args.add_argument("--cert", default="")
args.add_argument("--key", default="")
args.add_argument("--backend-tls", action="store_true")
a = args.parse_args()
base = f"{'https' if a.backend_tls else 'http'}://127.0.0.1:{a.backend}"


async def poll(session):
    n = 0
    while True:
        await asyncio.sleep(a.poll_ms / 1000)
        try:
            path = a.poll_path or f"/poll/{n}"
            async with session.get(base + path, ssl=False if a.backend_tls else None) as r:
                await r.read()
        except Exception:
            pass
        n += 1


async def handle(request):
    session = request.app["session"]
    headers = {"Host": request.host}
    if a.propagate_id and "x-request-id" in request.headers:
        headers["x-request-id"] = request.headers["x-request-id"]
    body = await request.read()
    if a.delay_ms:
        await asyncio.sleep(a.delay_ms / 1000)
    async with session.request(
        request.method,
        base + a.prefix + request.path_qs,
        headers=headers,
        data=body or None,
        ssl=False if a.backend_tls else None,
    ) as r:
        got = await r.read()
        return web.Response(status=r.status, body=got)


async def main():
    app = web.Application()
    app["session"] = ClientSession()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    served = None
    if a.cert:
        served = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        served.load_cert_chain(a.cert, a.key)
    await web.TCPSite(runner, "127.0.0.1", a.port, ssl_context=served).start()
    if a.poll_ms:
        asyncio.ensure_future(poll(app["session"]))
    print("ready", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
