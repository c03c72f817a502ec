"""``wsproxy demo``: the proxy in front of a built-in echo backend, for a first look.

The backend is an ordinary aiohttp application (its WebSocket echo may use
aiohttp's WebSocket support: it is the backend, not the proxy).  The proxy in
front of it is the real one, built from a configuration parsed like any file.
"""

from __future__ import annotations

import logging
from importlib import resources

from aiohttp import WSMsgType, web

from wsproxy.config import parse_config
from wsproxy.server import ProxyServer, stop_signals

log = logging.getLogger("wsproxy.demo")


def backend_app() -> web.Application:
    """Echo backend: a page, a WebSocket echo, and what it saw of a request."""
    page = resources.files("wsproxy").joinpath("static/demo.html").read_text("utf-8")

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                await ws.send_str(message.data)
            elif message.type is WSMsgType.BINARY:
                await ws.send_bytes(message.data)
        return ws

    async def seen(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "http_version": f"{request.version.major}.{request.version.minor}",
                "host": request.headers.get("Host"),
                "x_forwarded_for": request.headers.get("X-Forwarded-For"),
                "x_forwarded_proto": request.headers.get("X-Forwarded-Proto"),
            }
        )

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/ws", echo)
    app.router.add_get("/api/seen", seen)
    return app


def demo_config(host: str, port: int, backend_port: int) -> str:
    return f"""\
listen:
  - host: {host}
    port: {port}
admin:
  host: 127.0.0.1
  port: 0
upstreams:
  echo:
    servers: ["127.0.0.1:{backend_port}"]
routes:
  - path_prefix: /
    upstream: echo
"""


async def run_demo(host: str, port: int) -> None:
    with stop_signals() as stop:
        runner = web.AppRunner(backend_app(), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            backend_port = int(runner.addresses[0][1])
            config = parse_config(demo_config(host, port, backend_port), "<demo>")
            proxy = ProxyServer(config)
            try:
                await proxy.start()
                proxy_host, proxy_port = proxy.addresses[0]
                shown = "localhost" if proxy_host in ("127.0.0.1", "::1") else proxy_host
                print(f"wsproxy demo: open http://{shown}:{proxy_port}/")
                admin_port = proxy.admin_address[1]
                print(
                    f"(status page on http://localhost:{admin_port}/; echo backend on "
                    f"127.0.0.1:{backend_port}; Ctrl-C stops)",
                    flush=True,
                )
                await stop.wait()
            finally:
                await proxy.stop()
        finally:
            await runner.cleanup()
