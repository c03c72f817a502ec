"""Reload (SIGHUP): new requests get the new configuration, nothing open is dropped.

Each test runs the real proxy from a file, keeps a WebSocket session open and
echoing across the reload, and checks where new requests go afterwards.  The
last one sends real SIGHUPs to a ``wsproxy serve`` process.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.support.http_backends import aiohttp_backend, named_app
from tests.support.process import free_port, spawn
from wsproxy.config import load_config
from wsproxy.server import ProxyServer


@contextlib.asynccontextmanager
async def two_backends() -> AsyncIterator[tuple[int, int]]:
    async with (
        aiohttp_backend(named_app("one")) as one,
        aiohttp_backend(named_app("two")) as two,
    ):
        yield one, two


def text(
    upstream_port: int,
    *,
    listen: tuple[int, ...] = (0,),
    routes: str = "  - path_prefix: /\n    upstream: app\n",
    admin_port: int = 0,
) -> str:
    listeners = "".join(f"  - host: 127.0.0.1\n    port: {port}\n" for port in listen)
    return (
        f"listen:\n{listeners}admin:\n  host: 127.0.0.1\n  port: {admin_port}\n"
        f'upstreams:\n  app:\n    servers: ["127.0.0.1:{upstream_port}"]\n'
        f"routes:\n{routes}shutdown:\n  grace_period: 1s\n"
    )


@contextlib.asynccontextmanager
async def proxy_from(path: Path) -> AsyncIterator[ProxyServer]:
    server = ProxyServer(load_config(path))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def get(http: aiohttp.ClientSession, port: int, path: str = "/") -> tuple[int, str]:
    async with http.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, await response.text()


async def echo(ws: aiohttp.ClientWebSocketResponse, message: str) -> str:
    await ws.send_str(message)
    return await ws.receive_str(timeout=5)


def reloads(server: ProxyServer, result: str) -> float:
    return server.observability.metrics.reloads.labels(result)._value.get()


async def test_new_routes_and_upstreams_for_new_requests_while_a_session_echoes_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "proxy.yaml"
    async with two_backends() as (one, two), aiohttp.ClientSession() as http:
        path.write_text(text(one))
        async with proxy_from(path) as server:
            port = server.addresses[0][1]
            # A keep-alive client connection opened before the reload.
            connector = aiohttp.TCPConnector(limit=1)
            async with (
                aiohttp.ClientSession(connector=connector) as kept,
                http.ws_connect(f"http://127.0.0.1:{port}/ws") as ws,
            ):
                assert await get(kept, port) == (200, "one /")
                assert await echo(ws, "before") == "one: before"
                [tunnel] = server.sessions
                routes = (
                    "  - path_prefix: /\n    upstream: app\n"
                    "  - path_prefix: /new\n    upstream: app\n"
                )
                path.write_text(text(two, routes=routes))
                assert await server.reload_from(str(path)) is True
                # The session goes on, on its old upstream connection.
                assert await echo(ws, "after") == "one: after"
                assert list(server.sessions) == [tunnel]
                assert await get(http, port, "/new/x") == (200, "two /new/x")
                assert await get(kept, port) == (200, "two /")  # same connection, new route
                assert server.observability.metrics.sessions.routes == ("/", "/new")
            assert reloads(server, "success") == 1
            gauge = server.observability.metrics.upstream_up
            assert ("app", f"127.0.0.1:{one}") not in server.observability.metrics.servers
            assert gauge.labels("app", f"127.0.0.1:{two}")._value.get() == 1


async def test_a_broken_file_keeps_the_configuration_in_force(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wsproxy")
    path = tmp_path / "proxy.yaml"
    async with two_backends() as (one, _two), aiohttp.ClientSession() as http:
        path.write_text(text(one))
        async with proxy_from(path) as server:
            port = server.addresses[0][1]
            async with http.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                path.write_text(text(one).replace("upstream: app", "upstream: ap"))
                assert await server.reload_from(str(path)) is False
                assert await echo(ws, "still") == "one: still"
                assert await get(http, port) == (200, "one /")
                path.unlink()
                assert await server.reload_from(str(path)) is False
            assert reloads(server, "failure") == 2
            assert reloads(server, "success") == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors[0].startswith(
        f"reload: {path}:12:15: routes[0].upstream: unknown upstream 'ap' (known: app)"
    )
    assert errors[1] == f"reload: {path} has 1 error(s); kept the configuration in force"
    assert errors[2] == f"reload: {path}: cannot read: No such file or directory"


async def test_listener_changes_take_effect_without_refusing_anyone(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    first, second = free_port(), free_port()
    async with two_backends() as (one, _two), aiohttp.ClientSession() as http:
        path.write_text(text(one, listen=(first,)))
        async with proxy_from(path) as server:
            connector = aiohttp.TCPConnector(limit=1)
            async with aiohttp.ClientSession(connector=connector) as kept:
                assert await get(kept, first) == (200, "one /")
                path.write_text(text(one, listen=(first, second)))
                assert await server.reload_from(str(path))
                assert await get(http, first) == (200, "one /")
                assert await get(http, second) == (200, "one /")
                path.write_text(text(one, listen=(second,)))
                assert await server.reload_from(str(path))
                with pytest.raises(ConnectionRefusedError):
                    await asyncio.open_connection("127.0.0.1", first)
                # A connection accepted on the removed listener goes on.
                assert await get(kept, first) == (200, "one /")
                assert await get(http, second) == (200, "one /")


async def test_a_listener_that_cannot_bind_fails_the_reload_and_changes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "proxy.yaml"
    async with two_backends() as (one, two), aiohttp.ClientSession() as http:
        path.write_text(text(one))
        async with proxy_from(path) as server:
            port = server.addresses[0][1]
            busy = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
            taken = busy.sockets[0].getsockname()[1]
            try:
                path.write_text(text(two, listen=(0, taken)))
                assert await server.reload_from(str(path)) is False
            finally:
                busy.close()
            assert await get(http, port) == (200, "one /")
            assert len(server.addresses) == 1
            assert reloads(server, "failure") == 1


async def test_sighup_reloads_a_running_process(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    port, admin = free_port(), free_port()
    async with two_backends() as (one, two), aiohttp.ClientSession() as http:
        path.write_text(text(one, listen=(port,), admin_port=admin))
        async with spawn(
            [sys.executable, "-m", "wsproxy"], "serve", "-c", str(path), stderr=tmp_path / "err"
        ) as proxy:
            await proxy.wait_listening(port)
            async with http.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                assert await echo(ws, "a") == "one: a"
                path.write_text("routes: [")
                proxy.process.send_signal(signal.SIGHUP)
                await wait_for_text(proxy.stderr, "kept the configuration in force")
                assert await echo(ws, "b") == "one: b"
                path.write_text(text(two, listen=(port,), admin_port=admin))
                proxy.process.send_signal(signal.SIGHUP)
                await wait_for_text(proxy.stderr, "reloaded")
                assert await echo(ws, "c") == "one: c"
                assert await get(http, port) == (200, "two /")
                async with http.get(f"http://127.0.0.1:{admin}/metrics") as response:
                    metrics = await response.text()
                assert 'wsproxy_config_reloads_total{result="success"} 1.0' in metrics
                assert 'wsproxy_config_reloads_total{result="failure"} 1.0' in metrics
            status = await proxy.stop(signal.SIGTERM)
            stderr = proxy.stderr()
    assert status == 0, stderr
    assert "Traceback" not in stderr


async def wait_for_text(read: object, needle: str, timeout: float = 5.0) -> None:
    """Poll a process's stderr until ``needle`` shows up."""
    async with asyncio.timeout(timeout):
        while needle not in read():  # type: ignore[operator]  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_a_session_on_a_removed_route_and_upstream_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    async with two_backends() as (one, two), aiohttp.ClientSession() as http:
        routes = "  - path_prefix: /\n    upstream: app\n  - path_prefix: /ws\n    upstream: old\n"
        first = text(two, routes=routes).replace(
            "routes:", f'  old:\n    servers: ["127.0.0.1:{one}"]\nroutes:'
        )
        path.write_text(first)
        async with proxy_from(path) as server:
            port = server.addresses[0][1]
            async with http.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                assert await echo(ws, "before") == "one: before"
                path.write_text(text(two))  # no /ws route, no upstream "old"
                assert await server.reload_from(str(path))
                for index in range(3):
                    assert await echo(ws, f"after {index}") == f"one: after {index}"
                [info] = server.sessions.values()
                assert info.route == "/ws"
            # New handshakes on that path follow the new routes.
            async with http.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                assert await echo(ws, "new") == "two: new"


async def test_a_kept_alive_connection_follows_the_new_trusted_proxies(tmp_path: Path) -> None:
    """The client info a connection caches (whose X-Forwarded-For is believed)
    is made again from the new configuration."""
    seen: list[str] = []

    async def forwarded(request: web.Request) -> web.Response:
        seen.append(request.headers.get("X-Forwarded-For", ""))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", forwarded)
    path = tmp_path / "proxy.yaml"
    async with aiohttp_backend(app) as port_:
        trusting = text(port_) + "proxy:\n  trusted_proxies: [127.0.0.1]\n"
        path.write_text(trusting)
        async with proxy_from(path) as server:
            port = server.addresses[0][1]
            connector = aiohttp.TCPConnector(limit=1)
            headers = {"X-Forwarded-For": "203.0.113.9"}
            async with aiohttp.ClientSession(connector=connector, headers=headers) as kept:
                assert await get(kept, port) == (200, "ok")
                path.write_text(text(port_))  # nobody is trusted any more
                assert await server.reload_from(str(path))
                assert await get(kept, port) == (200, "ok")
    assert seen == ["203.0.113.9, 127.0.0.1", "127.0.0.1"]


async def test_a_reload_that_fails_midway_is_undone_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New listeners bound, then the switch of a kept one fails (no file
    descriptors left): nothing of the new configuration stays."""
    path = tmp_path / "proxy.yaml"
    first, extra = free_port(), free_port()
    async with two_backends() as (one, two), aiohttp.ClientSession() as http:
        limited = text(one, listen=(first,)).replace(
            f"    port: {first}\n", f"    port: {first}\n    max_connections: 5\n"
        )
        path.write_text(limited)
        async with proxy_from(path) as server:
            path.write_text(text(two, listen=(first, extra)))  # no limit, one more listener

            real_dup = socket.socket.dup
            calls: list[int] = []

            def dup_once(self: socket.socket) -> socket.socket:
                # The added listener gets its descriptor; switching the kept
                # one to accepting without a limit does not.
                calls.append(1)
                if len(calls) > 1:
                    raise OSError(errno.EMFILE, "Too many open files")
                return real_dup(self)

            monkeypatch.setattr(socket.socket, "dup", dup_once)
            assert await server.reload_from(str(path)) is False
            monkeypatch.undo()
            assert [listen.port for listen in server.config.listen] == [first]
            assert server.addresses == [("127.0.0.1", first)]
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", extra)
            assert await get(http, first) == (200, "one /")
            assert reloads(server, "failure") == 1
            # And the same file, with descriptors again, applies.
            assert await server.reload_from(str(path))
            assert await get(http, extra) == (200, "two /")
