"""Gateway for the socket-health tests: an asyncio (aiohttp) server that
forwards every request to the backend on 127.0.0.1 through one pooled
keep-alive ClientSession.

Usage: /usr/bin/python3 gw_aiohttp.py <port> <backend port>
"""

import asyncio
import sys

from aiohttp import ClientSession, TCPConnector, web

PORT = int(sys.argv[1])
BACKEND = int(sys.argv[2])


async def forward(request):
    session = request.app["session"]
    url = "http://127.0.0.1:%d%s" % (BACKEND, request.path_qs)
    try:
        async with session.request(request.method, url, data=await request.read()) as up:
            body = await up.read()
            return web.Response(status=up.status, body=body, content_type=up.content_type)
    except Exception as e:  # noqa: BLE001 - the client sees it as a 502
        return web.Response(status=502, text="gateway: %r" % e)


async def main():
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    app["session"] = ClientSession(connector=TCPConnector(limit=16), auto_decompress=False)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", PORT).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
