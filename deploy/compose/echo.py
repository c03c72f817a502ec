"""The example backend of deploy/docker-compose.yml: HTTP and WebSocket echo.

It runs in the wsproxy image (aiohttp is installed there for the admin
listener), so the compose file needs no second image:

    python3 /srv/echo/echo.py [--host 0.0.0.0] [--port 8000]

Endpoints:

- ``GET /``: a small page that opens a WebSocket through the proxy and shows
  the echoes.
- ``GET /ws``: WebSocket echo (text and binary), heartbeats answered by aiohttp.
- ``GET /ws/drop``: answers ``101`` and drops the connection at once, without
  a close frame: what a backend behind an HTTP/1.0 hop does (the failure
  wsproxy exists for), so the dashboard's early-close panels and the
  WsproxyWebSocketEarlyCloses alert have something to show.
- ``GET /api/seen``: what this backend saw of the request (HTTP version,
  ``Connection``, ``X-Forwarded-*``): always HTTP/1.1 through wsproxy.
- ``GET /healthz``: ``ok`` (wsproxy's active health check).
"""

from __future__ import annotations

import argparse
import logging

from aiohttp import WSMsgType, web

PAGE = """\
<!doctype html>
<meta charset="utf-8">
<title>wsproxy compose example</title>
<h1>WebSocket echo through wsproxy</h1>
<p>Status: <span id="status">connecting</span></p>
<pre id="log"></pre>
<script>
const log = document.getElementById("log");
const status = document.getElementById("status");
const scheme = location.protocol === "https:" ? "wss:" : "ws:";
const ws = new WebSocket(scheme + "//" + location.host + "/ws");
let n = 0;
ws.onopen = () => {
  status.textContent = "open";
  setInterval(() => ws.send("hello " + ++n), 1000);
};
ws.onmessage = (event) => { log.textContent = "echo: " + event.data + "\\n" + log.textContent; };
ws.onclose = (event) => { status.textContent = "closed, code " + event.code; };
</script>
"""


async def index(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type is WSMsgType.TEXT:
            await ws.send_str(message.data)
        elif message.type is WSMsgType.BINARY:
            await ws.send_bytes(message.data)
    return ws


async def drop(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    transport = request.transport
    if transport is not None:
        transport.close()  # FIN right after 101, no close frame: code 1006
    return ws


async def seen(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "http_version": f"{request.version.major}.{request.version.minor}",
            "connection": request.headers.get("Connection"),
            "host": request.headers.get("Host"),
            "x_forwarded_for": request.headers.get("X-Forwarded-For"),
            "x_forwarded_proto": request.headers.get("X-Forwarded-Proto"),
            "x_request_id": request.headers.get("X-Request-ID"),
        }
    )


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def app() -> web.Application:
    application = web.Application()
    application.router.add_get("/", index)
    application.router.add_get("/ws", echo)
    application.router.add_get("/ws/drop", drop)
    application.router.add_get("/api/seen", seen)
    application.router.add_get("/healthz", healthz)
    return application


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # shutdown_timeout: docker stop sends SIGTERM; open WebSockets get a
    # close frame, and the process exits well within compose's stop period.
    web.run_app(
        app(), host=args.host, port=args.port, access_log=None, shutdown_timeout=5, print=None
    )


if __name__ == "__main__":
    main()
