"""Limits: connections per listener, WebSocket sessions per client address."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.http_backends import RecordingBackend, read_response
from tests.support.http_backends import request_bytes as http_request
from tests.support.observe_helpers import observed_proxy
from tests.support.process import free_port
from tests.support.proxy import config_text
from tests.support.wire import handshake_request, read_head
from tests.support.ws_helpers import (
    LOOPBACK,
    Session,
    handshake,
    raw_client,
    scripted,
    wait_until,
)
from wsproxy.config import load_config
from wsproxy.server import ProxyServer

#: How long a connection past the limit is watched for an answer that must not come.
QUIET = 0.3


async def hold_open(session: Session) -> None:
    """A WebSocket backend that accepts and keeps the session until the client leaves."""
    if (session.head.get("Upgrade") or "").lower() != "websocket":
        session.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await session.writer.drain()
        return
    await session.accept()
    await session.read_to_eof()


def listen_limit(limit: int) -> str:
    return f"listen:\n  - host: 127.0.0.1\n    port: 0\n    max_connections: {limit}\n"


async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(http_request("GET", "/", [("Host", "h")]))
    head, body = await asyncio.wait_for(read_response(reader), 5)
    assert (head.status, body) == (200, b"ok")


async def test_past_max_connections_a_connection_waits_until_one_closes() -> None:
    """Two slots: a kept-alive connection and a WebSocket session hold them; the
    third connection is not accepted (no answer, not dropped) until one ends."""
    backend, _sessions = scripted(hold_open)
    async with backend:
        text = config_text(backend.port).replace(
            "listen:\n  - host: 127.0.0.1\n    port: 0\n", listen_limit(2), 1
        )
        async with (
            observed_proxy(text) as obs,
            raw_client(obs.port) as (kept_reader, kept_writer),
            raw_client(obs.port) as (ws_reader, ws_writer),
            raw_client(obs.port) as (third_reader, third_writer),
        ):
            await ok(kept_reader, kept_writer)
            await handshake(ws_reader, ws_writer, obs.port)
            await obs.sessions_open(1)
            # The kernel completed the third TCP handshake (backlog), but the
            # proxy has not accepted it: its request waits.
            third_writer.write(http_request("GET", "/", [("Host", "h")]))
            answer = asyncio.ensure_future(read_response(third_reader))
            done, _ = await asyncio.wait([answer], timeout=QUIET)
            assert not done, "a connection past max_connections was served"
            # The session ends: its slot goes to the waiting connection.
            ws_writer.transport.abort()
            head, body = await asyncio.wait_for(answer, 5)
            assert (head.status, body) == (200, b"ok")
            await ok(kept_reader, kept_writer)  # the first one was never disturbed


async def test_a_reload_sets_max_connections_without_refusing_anyone(tmp_path: Path) -> None:
    backend, _sessions = scripted(hold_open)
    async with backend:
        path = tmp_path / "proxy.yaml"
        port = free_port()
        plain = config_text(backend.port).replace("    port: 0\n", f"    port: {port}\n", 1)
        limited = plain.replace(
            f"    port: {port}\n", f"    port: {port}\n    max_connections: 1\n"
        )
        path.write_text(plain)
        server = ProxyServer(load_config(path))
        await server.start()
        try:
            async with contextlib.AsyncExitStack() as stack:
                first = await stack.enter_async_context(raw_client(port))
                await ok(*first)
                path.write_text(limited)
                assert await server.reload_from(str(path))
                assert server.addresses[0][1] == port
                second = await stack.enter_async_context(raw_client(port))
                second[1].write(http_request("GET", "/", [("Host", "h")]))
                answer = asyncio.ensure_future(read_response(second[0]))
                done, _ = await asyncio.wait([answer], timeout=QUIET)
                assert not done
                await ok(*first)  # the connection from before the reload goes on
                first[1].transport.abort()
                head, _body = await asyncio.wait_for(answer, 5)
                assert head.status == 200
                # Back to no limit: the sockets are the same, nothing refused.
                path.write_text(plain)
                assert await server.reload_from(str(path))
                third = await stack.enter_async_context(raw_client(port))
                await ok(*third)
                await ok(*second)
        finally:
            await server.stop()


@contextlib.asynccontextmanager
async def sessions_from(port: int, count: int, **headers: str) -> AsyncIterator[list[object]]:
    async with contextlib.AsyncExitStack() as stack:
        opened = []
        for _ in range(count):
            reader, writer = await stack.enter_async_context(raw_client(port))
            extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            request = handshake_request(LOOPBACK, port).replace(
                b"\r\n\r\n", f"\r\n{extra}\r\n".encode()
            )
            writer.write(request)
            head = await asyncio.wait_for(read_head(reader), 5)
            opened.append((head, reader, writer))
        yield opened


async def test_websocket_sessions_per_client_address_past_the_limit_get_429() -> None:
    backend, _sessions = scripted(hold_open)
    extra = "proxy:\n  max_websockets_per_client: 2\n  trusted_proxies: [127.0.0.1]\n"
    async with backend, observed_proxy(config_text(backend.port, extra=extra)) as obs:
        async with sessions_from(obs.port, 3, **{"X-Forwarded-For": "198.51.100.7"}) as first:
            statuses = [head.status for head, _r, _w in first]  # type: ignore[attr-defined]
            assert statuses == [101, 101, 429]
            refused = first[2][0]  # type: ignore[index]
            assert refused.get("Retry-After") == "10"
            # Another client behind the same trusted proxy has its own count.
            async with sessions_from(obs.port, 1, **{"X-Forwarded-For": "198.51.100.8"}) as other:
                assert other[0][0].status == 101  # type: ignore[index]
            # One of the first client's sessions ends: it may open another.
            first[0][2].transport.abort()  # type: ignore[index]
            await obs.sessions_open(1)
            async with sessions_from(obs.port, 1, **{"X-Forwarded-For": "198.51.100.7"}) as again:
                assert again[0][0].status == 101  # type: ignore[index]
        scrape = await obs.scrape()
        assert (
            scrape.value("wsproxy_websocket_upgrades_total", route="/", result="bad_handshake") == 1
        )
        assert scrape.value("wsproxy_websocket_upgrades_total", route="/", result="accepted") == 4
        [refusal] = [r for r in obs.log_records() if r.get("status") == 429]
        assert refusal["error"] == "more than 2 WebSocket sessions from this address"


async def test_a_refused_handshake_gives_its_count_back() -> None:
    """A handshake the upstream refuses (403) or cannot take (502) counts only
    while it is in flight."""

    async def refuse(received: object) -> bytes:
        return b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"

    extra = "proxy:\n  max_websockets_per_client: 1\n"
    async with (
        RecordingBackend(refuse) as backend,
        observed_proxy(config_text(backend.port, extra=extra)) as obs,
    ):
        for _ in range(3):
            async with sessions_from(obs.port, 1) as opened:
                assert opened[0][0].status == 403  # type: ignore[index]
        assert obs.server._per_client == {}


async def test_the_limit_holds_across_every_socket_of_a_listener() -> None:
    """A listen host that resolves to two addresses has two sockets and one limit."""
    from wsproxy.listeners import Arrival, Gate, Listener, bind

    accepted: list[asyncio.Protocol] = []

    class Held(asyncio.Protocol):
        def __init__(self, gate: Gate, _arrival: Arrival) -> None:
            self.gate = gate
            accepted.append(self)

        def connection_lost(self, exc: BaseException | None) -> None:
            self.gate.release()

    port = free_port()
    try:
        sockets = bind("127.0.0.1", port) + bind("::1", port)
    except OSError as exc:
        pytest.skip(f"cannot listen on ::1: {exc}")
    listener = Listener(sockets, Held, 1)
    await listener.start()
    try:
        writers = []
        for host in ("127.0.0.1", "::1"):
            _reader, writer = await asyncio.open_connection(host, port)
            writers.append(writer)
        await wait_until(lambda: len(accepted) == 1, 2, "one connection accepted")
        await asyncio.sleep(QUIET)  # the other must stay waiting this long
        assert (len(accepted), listener.gate.open) == (1, 1)
        for writer in writers:
            writer.transport.abort()  # whichever was accepted goes; the other is let in
        await wait_until(lambda: len(accepted) == 2, 2, "the waiting connection accepted")
        for writer in writers:
            writer.close()
    finally:
        listener.close()
        await listener.wait_closed()


async def test_a_forged_x_forwarded_for_does_not_escape_the_per_client_limit() -> None:
    """From a peer that is not a trusted proxy the header is ignored: every
    handshake counts against the peer's own address, whatever it claims."""
    backend, _sessions = scripted(hold_open)
    extra = "proxy:\n  max_websockets_per_client: 1\n"
    async with (
        backend,
        observed_proxy(config_text(backend.port, extra=extra)) as obs,
        sessions_from(obs.port, 1, **{"X-Forwarded-For": "198.51.100.1"}) as first,
        sessions_from(obs.port, 1, **{"X-Forwarded-For": "198.51.100.2"}) as second,
    ):
        assert first[0][0].status == 101  # type: ignore[index]
        assert second[0][0].status == 429  # type: ignore[index]
