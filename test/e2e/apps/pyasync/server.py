"""End-to-end test app: a Python asyncio (aiohttp) HTTP/1.1 server.

Usage: /usr/bin/python3 server.py <port>

One event loop thread serves every request. Endpoints, a subset of the
other apps' (see test/e2e/doc.go): /status/<code>, /hello, /headers, and
/call?url=<target>[&delay=<ms>], which calls target on a new connection
(from a timer when delay is set) and answers the JSON hop the tests parse.
"""

import asyncio
import json
import sys

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web


def traceparent_of(request):
    values = request.headers.getall("traceparent", [])
    return (values[0] if values else ""), len(values)


def hop(request, **fields):
    tp, count = traceparent_of(request)
    fields.update(traceparent=tp, traceparent_count=count)
    return web.json_response(fields, headers={"X-Received-Traceparent": tp})


async def status(request):
    return web.Response(status=int(request.match_info["code"]))


async def hello(request):
    return web.Response(text="hello")


async def headers(request):
    merged = {}
    for k, v in request.headers.items():
        k = k.lower()
        merged[k] = merged[k] + ", " + v if k in merged else v
    return hop(request, headers=merged)


async def call(request):
    target = request.query.get("url")
    if not target:
        return web.Response(status=400, text="missing url")
    delay = int(request.query.get("delay", "0"))
    if delay > 0:
        await asyncio.sleep(delay / 1000)
    try:
        connector = TCPConnector(force_close=True)
        async with ClientSession(connector=connector, timeout=ClientTimeout(total=10)) as s:
            async with s.get(target) as down:
                body = await down.text()
                return hop(request, status=down.status, body=body)
    except Exception as e:  # noqa: BLE001 - reported in the hop
        return hop(request, status=502, error=repr(e))


async def main(port):
    app = web.Application()
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/hello", hello)
    app.router.add_get("/headers", headers)
    app.router.add_get("/call", call)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


asyncio.run(main(int(sys.argv[1])))
