"""``routes[].rewrite`` over real sockets: the prefix stripped, Host
overridden, fields set and removed each way, for plain HTTP and for the
WebSocket handshake; the hop-by-hop rules still hold after a rewrite."""

from __future__ import annotations

import asyncio
import json

from aiohttp import WSMsgType, web

from tests.support.http_backends import aiohttp_backend
from tests.support.observe_helpers import observed_proxy
from tests.support.proxy import config_text
from tests.support.wire import read_head

REWRITE = """\
    rewrite:
      strip_prefix: true
      host: app.internal
      request_headers:
        set: {X-Env: prod, X-Internal-Auth: secret-from-operator}
        remove: [Cookie]
      response_headers:
        set: {X-Frame-Options: DENY}
        remove: [Server, X-Powered-By]
"""


def echo_app() -> web.Application:
    """Answers with the path and headers it received, as JSON; a WebSocket
    echo that sends them first."""

    def seen(request: web.Request) -> dict[str, object]:
        return {"path": request.path_qs, "headers": list(request.headers.items())}

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.send_str(json.dumps(seen(request)))
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    await ws.send_str(message.data)
            return ws
        return web.json_response(
            seen(request), headers={"X-Powered-By": "php", "X-Frame-Options": "SAMEORIGIN"}
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def _fields(headers: list[list[str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name.lower()]


async def test_a_rewritten_plain_request_and_its_response() -> None:
    async with aiohttp_backend(echo_app()) as port:
        text = config_text(port, route_extra=REWRITE, path_prefix="/api/")
        async with observed_proxy(text) as obs:
            response = await obs.http.get(
                f"http://127.0.0.1:{obs.port}/api/users?page=2",
                headers={
                    "Cookie": "session=1",
                    "X-Env": "client's",
                    # The trick to make a proxy strip a field it adds: our
                    # X-Internal-Auth still goes upstream, the client's never.
                    "Connection": "keep-alive, X-Internal-Auth",
                    "X-Internal-Auth": "forged",
                },
            )
            assert response.status == 200
            body = await response.json()
            assert "Server" not in response.headers
            assert "X-Powered-By" not in response.headers
            assert response.headers.getall("X-Frame-Options") == ["DENY"]
        assert body["path"] == "/users?page=2"
        headers = body["headers"]
        assert _fields(headers, "Host") == ["app.internal"]
        assert _fields(headers, "X-Forwarded-Host") == [f"127.0.0.1:{obs.port}"]
        assert _fields(headers, "X-Env") == ["prod"]
        assert _fields(headers, "X-Internal-Auth") == ["secret-from-operator"]
        assert _fields(headers, "Cookie") == []
        assert _fields(headers, "Connection") == []  # hop-by-hop: never forwarded


async def test_a_rewritten_websocket_handshake() -> None:
    async with aiohttp_backend(echo_app()) as port:
        text = config_text(port, route_extra=REWRITE, path_prefix="/api/")
        async with (
            observed_proxy(text) as obs,
            obs.http.ws_connect(
                f"ws://127.0.0.1:{obs.port}/api/live", headers={"Cookie": "session=1"}
            ) as ws,
        ):
            assert "Server" not in ws._response.headers
            assert ws._response.headers.getall("X-Frame-Options") == ["DENY"]
            seen = json.loads(await ws.receive_str())
            await ws.send_str("still a session")
            assert await ws.receive_str() == "still a session"
        assert seen["path"] == "/live"
        headers = seen["headers"]
        assert _fields(headers, "Host") == ["app.internal"]
        assert _fields(headers, "Cookie") == []
        assert _fields(headers, "Upgrade") == ["websocket"]
        assert _fields(headers, "Connection") == ["upgrade"]


async def test_a_prefix_matched_only_leniently_is_refused_not_forwarded() -> None:
    async with aiohttp_backend(echo_app()) as port:
        text = config_text(port, route_extra=REWRITE, path_prefix="/api/")
        async with observed_proxy(text) as obs:
            for target in ("//api/users", "/api%2Fusers"):
                reader, writer = await asyncio.open_connection("127.0.0.1", obs.port)
                writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                head = await asyncio.wait_for(read_head(reader), 5)
                writer.close()
                assert head.status == 400, (target, head.status)
            records = obs.log_records()
            assert [record["status"] for record in records] == [400, 400]


async def test_without_a_rewrite_nothing_changes() -> None:
    async with aiohttp_backend(echo_app()) as port:
        text = config_text(port, path_prefix="/api/")
        async with observed_proxy(text) as obs:
            response = await obs.http.get(f"http://127.0.0.1:{obs.port}/api/users")
            body = await response.json()
            assert response.headers.getall("X-Frame-Options") == ["SAMEORIGIN"]
        assert body["path"] == "/api/users"
        assert _fields(body["headers"], "Host") == [f"127.0.0.1:{obs.port}"]
