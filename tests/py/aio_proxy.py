"""An asyncio service for the parent tests (aiohttp server and
aiohttp.ClientSession on one event loop):

  aio_proxy.py PORT BACKEND_PORT [--poll-ms MS] [--prefix P] [--propagate-id]

Each request's handler calls the backend on 127.0.0.1:BACKEND_PORT with
the same method and path (with --prefix, the path is prefixed: the call no
longer repeats the request) and answers with what it got; --propagate-id
passes the request's x-request-id on. With --poll-ms, a task on the same
event loop polls the backend at /poll/N that often. Prints "ready" once
listening."""
import argparse
import asyncio

from aiohttp import ClientSession, web

args = argparse.ArgumentParser()
args.add_argument("port", type=int)
args.add_argument("backend", type=int)
args.add_argument("--poll-ms", type=int, default=0)
args.add_argument("--prefix", default="")
args.add_argument("--propagate-id", action="store_true")
a = args.parse_args()
base = f"http://127.0.0.1:{a.backend}"


async def poll(session):
    n = 0
    while True:
        await asyncio.sleep(a.poll_ms / 1000)
        try:
            async with session.get(f"{base}/poll/{n}") as r:
                await r.read()
        except Exception:
            pass
        n += 1


async def handle(request):
    session = request.app["session"]
    headers = {}
    if a.propagate_id and "x-request-id" in request.headers:
        headers["x-request-id"] = request.headers["x-request-id"]
    body = await request.read()
    async with session.request(
        request.method, base + a.prefix + request.path_qs, headers=headers, data=body or None
    ) as r:
        got = await r.read()
        return web.Response(status=r.status, body=got)


async def main():
    app = web.Application()
    app["session"] = ClientSession()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", a.port).start()
    if a.poll_ms:
        asyncio.ensure_future(poll(app["session"]))
    print("ready", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
