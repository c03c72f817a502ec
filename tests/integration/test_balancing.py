"""Balancing and health over real sockets: who gets each request, and who never does.

Every backend here is a small aiohttp app that answers with its own name
(plain HTTP and WebSocket), so a test counts where requests went by reading
the answers, and switches a backend's health check between 200 and 503.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from tests.support.http_backends import aiohttp_backend
from tests.support.observe_helpers import Observed, eventually, observed_proxy
from tests.support.process import free_port
from tests.support.proxy import LISTENERS_ON_PORT_0


@dataclass
class Backend:
    """A named backend: its port, whether its health check passes, what it served."""

    name: str
    port: int = 0
    healthy: bool = True
    checks: int = 0
    served: int = 0
    sockets: set[web.WebSocketResponse] = field(default_factory=set)


def app_for(backend: Backend) -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        backend.served += 1
        return web.Response(text=backend.name)

    async def healthz(request: web.Request) -> web.Response:
        backend.checks += 1
        return web.Response(status=200 if backend.healthy else 503, text="health")

    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket_ = web.WebSocketResponse()
        await socket_.prepare(request)
        backend.sockets.add(socket_)
        try:
            await socket_.send_str(backend.name)
            async for message in socket_:
                if message.type is WSMsgType.TEXT:
                    await socket_.send_str(message.data)
        finally:
            backend.sockets.discard(socket_)
        return socket_

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ws", ws)
    app.router.add_get("/{tail:.*}", hello)
    return app


@contextlib.asynccontextmanager
async def backends(*names: str) -> AsyncIterator[list[Backend]]:
    async with contextlib.AsyncExitStack() as stack:
        started = []
        for name in names:
            backend = Backend(name)
            backend.port = await stack.enter_async_context(aiohttp_backend(app_for(backend)))
            started.append(backend)
        yield started


def config(servers: list[str], upstream: str = "", extra: str = "") -> str:
    listed = "".join(f"      - {server}\n" for server in servers)
    return (
        f"{LISTENERS_ON_PORT_0}upstreams:\n  app:\n    servers:\n{listed}{upstream}"
        f"routes:\n  - path_prefix: /\n    upstream: app\n"
        f"shutdown:\n  grace_period: 1s\n{extra}"
    )


async def get(http: aiohttp.ClientSession, port: int, headers: dict[str, str] | None = None) -> str:
    async with http.get(f"http://127.0.0.1:{port}/", headers=headers) as response:
        assert response.status == 200, await response.text()
        return await response.text()


async def names_of(obs: Observed, count: int, **kwargs: dict[str, str]) -> list[str]:
    return [await get(obs.http, obs.port, **kwargs) for _ in range(count)]


def up_gauge(scrape_text: object, server: str) -> float | None:
    return scrape_text.value("wsproxy_upstream_server_up", upstream="app", server=server)  # type: ignore[attr-defined]


async def test_a_dead_server_among_live_ones_costs_clients_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Plain requests and handshakes that meet the dead server go to the next
    one; the dead server is tried once, then left alone for fail_timeout."""
    caplog.set_level(logging.INFO, logger="wsproxy")
    dead = f"127.0.0.1:{free_port()}"
    async with backends("a", "b") as (a, b):
        servers = [f'"127.0.0.1:{a.port}"', f'"{dead}"', f'"127.0.0.1:{b.port}"']
        async with observed_proxy(config(servers)) as obs:
            names = await names_of(obs, 30)
            assert set(names) == {"a", "b"}
            for _ in range(6):
                async with obs.http.ws_connect(f"http://127.0.0.1:{obs.port}/ws") as ws:
                    assert (await ws.receive_str(timeout=5)) in ("a", "b")
            scrape = await obs.scrape()
            assert scrape.series("wsproxy_upstream_errors_total") == {
                frozenset({("upstream", "app"), ("server", dead), ("kind", "refused")}): 1.0
            }
            assert up_gauge(scrape, dead) == 0
            assert (await obs.get("/readyz"))[0] == 200  # two of three are up
            status = await obs.status_json()
            assert status["upstreams"]["app"][dead] == "down"
    down_lines = [r.getMessage() for r in caplog.records if "is down" in r.getMessage()]
    assert down_lines == [
        f"upstream app server {dead} is down: attempt failed (refused: connection refused "
        "(ECONNREFUSED: Connection refused)); out for 10s, then one trial request"
    ]


async def test_every_server_dead_is_one_502_after_each_was_tried_once() -> None:
    dead = [f'"127.0.0.1:{free_port()}"' for _ in range(3)]
    async with observed_proxy(config(dead)) as obs:
        async with obs.http.get(f"http://127.0.0.1:{obs.port}/") as response:
            assert response.status == 502
        scrape = await obs.scrape()
        assert sum(scrape.series("wsproxy_upstream_errors_total").values()) == 3
        assert (await obs.get("/readyz"))[0] == 503


async def test_weights_share_requests_in_proportion() -> None:
    async with backends("heavy", "light") as (heavy, light):
        servers = [
            f'{{address: "127.0.0.1:{heavy.port}", weight: 3}}',
            f'"http://127.0.0.1:{light.port}"',
        ]
        async with observed_proxy(config(servers)) as obs:
            names = await names_of(obs, 40)
    assert collections.Counter(names) == {"heavy": 30, "light": 10}
    assert "heavy heavy heavy heavy" not in " ".join(names)  # interleaved, not in bursts


async def test_least_conn_sends_requests_away_from_the_server_with_open_tunnels() -> None:
    async with backends("a", "b") as (a, b):
        servers = [f'"127.0.0.1:{a.port}"', f'"127.0.0.1:{b.port}"']
        async with observed_proxy(config(servers, "    balance: least_conn\n")) as obs:
            url = f"http://127.0.0.1:{obs.port}/ws"
            async with contextlib.AsyncExitStack() as stack:
                first = []
                for _ in range(3):
                    ws = await stack.enter_async_context(obs.http.ws_connect(url))
                    first.append(await ws.receive_str(timeout=5))
                # The tunnels alternate: two on one server, one on the other.
                counts = collections.Counter(first)
                assert sorted(counts.values()) == [1, 2]
                lighter = min(counts, key=counts.__getitem__)
                assert await names_of(obs, 10) == [lighter] * 10
            # Every tunnel closed: the load is even again, and so is the choice.
            await obs.sessions_ended()
            assert sorted(collections.Counter(await names_of(obs, 10)).values()) == [5, 5]


async def test_ip_hash_keeps_each_client_on_one_server() -> None:
    """The resolved client address decides: a trusted proxy's X-Forwarded-For,
    the peer's own address otherwise."""
    async with backends("a", "b", "c") as trio:
        servers = [f'"127.0.0.1:{b.port}"' for b in trio]
        extra = "proxy:\n  trusted_proxies: [127.0.0.1]\n"
        async with observed_proxy(config(servers, "    balance: ip_hash\n", extra)) as obs:
            clients = [f"198.51.100.{i}" for i in range(24)]
            first = {}
            for client in clients:
                headers = {"X-Forwarded-For": f"{client}, 127.0.0.1"}
                first[client] = await get(obs.http, obs.port, headers)
            assert len(set(first.values())) == 3  # spread over all three
            for client in reversed(clients):
                headers = {"X-Forwarded-For": client}
                assert await get(obs.http, obs.port, headers) == first[client]
    async with backends("a", "b", "c") as trio:
        servers = [f'"127.0.0.1:{b.port}"' for b in trio]
        async with observed_proxy(config(servers, "    balance: ip_hash\n")) as obs:
            # From an untrusted peer the header is ignored: one address, one server.
            names = {
                await get(obs.http, obs.port, {"X-Forwarded-For": f"198.51.100.{i}"})
                for i in range(12)
            }
            assert len(names) == 1


async def test_active_checks_take_a_server_out_and_bring_it_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="wsproxy")
    async with backends("a", "b") as (a, b):
        servers = [f'"127.0.0.1:{a.port}"', f'"127.0.0.1:{b.port}"']
        health = "    health:\n      path: /healthz\n      interval: 100ms\n      timeout: 100ms\n"
        health += "      fails: 2\n      passes: 2\n"
        async with observed_proxy(config(servers, health)) as obs:
            label = f"127.0.0.1:{b.port}"

            async def gauge_is(value: float) -> bool | None:
                return True if up_gauge(await obs.scrape(), label) == value else None

            b.healthy = False
            await eventually(lambda: gauge_is(0), "b to be taken out", timeout=3)
            assert b.checks >= 2
            served = b.served
            assert set(await names_of(obs, 10)) == {"a"}
            assert b.served == served
            b.healthy = True
            await eventually(lambda: gauge_is(1), "b to come back", timeout=3)
            assert set(await names_of(obs, 10)) == {"a", "b"}
    messages = [r.getMessage() for r in caplog.records if label in r.getMessage()]
    assert f"upstream app server {label} is down: 2 checks in a row failed (status 503)" in (
        messages
    )
    assert f"upstream app server {label} is up: 2 checks in a row passed" in messages


async def test_an_ipv6_listener_in_front_of_an_ipv6_server() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {request.remote}")

    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "::1", 0)
        try:
            await site.start()
        except OSError as exc:
            pytest.skip(f"cannot listen on ::1: {exc}")
        port = runner.addresses[0][1]
        text = (
            f'listen:\n  - host: "::1"\n    port: 0\nadmin:\n  host: 127.0.0.1\n  port: 0\n'
            f'upstreams:\n  app:\n    servers: ["[::1]:{port}"]\n'
            "routes:\n  - upstream: app\n"
        )
        async with observed_proxy(text) as obs:
            assert obs.server.addresses[0][0] == "::1"
            async with obs.http.get(f"http://[::1]:{obs.port}/") as response:
                assert response.status == 200
                assert await response.text() == "hello ::1"
            [record] = obs.log_records()
            assert record["client"].startswith("[::1]:")
            assert record["upstream"] == f"[::1]:{port}"
    finally:
        await runner.cleanup()


async def test_a_host_name_is_resolved_again_for_each_new_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A DNS change reaches new connections (nginx resolves once at start)."""
    async with backends("first", "second") as (first, second):
        addresses = {"backend.test": ("127.0.0.1", first.port)}
        real = socket.getaddrinfo

        def resolve(host: object, port: object, *args: object, **kwargs: object) -> object:
            if host == "backend.test":
                ip, real_port = addresses["backend.test"]
                return real(ip, real_port, *args, **kwargs)  # type: ignore[arg-type]
            return real(host, port, *args, **kwargs)  # type: ignore[arg-type]

        if not isinstance(asyncio.get_running_loop(), asyncio.BaseEventLoop):
            pytest.skip("uvloop resolves names in libuv, not through socket.getaddrinfo")
        monkeypatch.setattr(socket, "getaddrinfo", resolve)
        text = config(['"backend.test:80"'], "    keepalive_timeout: 0s\n")
        async with observed_proxy(text) as obs:
            assert await get(obs.http, obs.port) == "first"
            addresses["backend.test"] = ("127.0.0.1", second.port)
            assert await get(obs.http, obs.port) == "second"


async def test_a_stale_connection_then_a_refused_connect_goes_on_to_the_next_server() -> None:
    """A backend going away: its pooled connection is closed as the request is
    sent, and its port refuses the fresh connect; the next server answers."""
    going_away: asyncio.Server | None = None
    answered = 0

    async def leaving(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while await reader.readuntil(b"\r\n\r\n"):
                if answered:
                    assert going_away is not None
                    going_away.close()  # the port refuses from now on
                    writer.transport.close()
                    return
                answered += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA")

    going_away = await asyncio.start_server(leaving, "127.0.0.1", 0)
    leaving_port = going_away.sockets[0].getsockname()[1]
    async with backends("b") as (b,):
        servers = [f'"127.0.0.1:{leaving_port}"', f'"127.0.0.1:{b.port}"']
        async with observed_proxy(config(servers)) as obs:
            assert await names_of(obs, 3) == ["A", "b", "b"]
            scrape = await obs.scrape()
            assert scrape.series("wsproxy_upstream_errors_total", kind="refused")
