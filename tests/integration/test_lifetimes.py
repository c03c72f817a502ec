"""Session lifetimes and dead peers: ``max_lifetime`` with jitter, TCP keepalive."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from tests.support.observe_helpers import closes, observed_proxy, one_session
from tests.support.proxy import config_text
from tests.support.wire import encode_frame
from tests.support.ws_helpers import (
    GOING_AWAY,
    Session,
    frames_until_close,
    handshake,
    raw_client,
    scripted,
)
from wsproxy.config import parse_config


async def answer_close(session: Session) -> None:
    """A backend that accepts, then answers the proxy's close frame."""
    await session.accept()
    frames = await frames_until_close(session.reader)
    session.writer.write(encode_frame(0x8, frames[-1].payload, mask=False))
    await session.read_to_eof()


async def test_max_lifetime_closes_each_session_with_1001_after_a_jittered_time() -> None:
    count = 8
    lifetime = 0.5
    backend, _sessions = scripted(answer_close)
    route = f"    websocket:\n      max_lifetime: {int(lifetime * 1000)}ms\n"
    ages: list[float] = []

    async def client(port: int) -> None:
        async with raw_client(port) as (reader, writer):
            await handshake(reader, writer, port)
            opened = time.monotonic()
            [close] = await frames_until_close(reader)
            ages.append(time.monotonic() - opened)
            assert close.payload == GOING_AWAY
            writer.write(encode_frame(0x8, GOING_AWAY))
            async with asyncio.timeout(5):
                assert await reader.read() == b""

    async with backend, observed_proxy(config_text(backend.port, route_extra=route)) as obs:
        await asyncio.wait_for(asyncio.gather(*(client(obs.port) for _ in range(count))), 5)
        await obs.sessions_ended()
        assert closes(obs.server) == {("/", "proxy", "1001"): float(count)}
        records = [r for r in obs.log_records() if r["type"] == "websocket"]
        assert {(r["how"], r["early"]) for r in records} == {("max_lifetime", False)}
    # Within ±10% (and the loop's timer slack), and not all at once.
    assert all(0.9 * lifetime - 0.02 < age < 1.1 * lifetime + 0.1 for age in ages), ages
    assert max(ages) - min(ages) > 0.01, ages


@pytest.mark.parametrize(
    ("setting", "idle"),
    [("", 60), ("proxy:\n  tcp_keepalive: 15s\n", 15), ("proxy:\n  tcp_keepalive: 0s\n", 0)],
)
async def test_both_sockets_of_a_session_use_tcp_keepalive(setting: str, idle: int) -> None:
    async with one_session(answer_close, extra=setting) as (obs, _reader, _writer):
        await obs.sessions_open(1)
        [tunnel] = obs.server.sessions
        for transport in (tunnel.client_transport, tunnel.upstream_transport):
            assert transport is not None
            sock = transport.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == (1 if idle else 0)
            if idle:
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == idle
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 10
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 6


async def test_a_reload_changes_the_keepalive_of_client_connections_accepted_after_it() -> None:
    backend, _sessions = scripted(answer_close)
    async with backend, observed_proxy(config_text(backend.port, extra=KEEPALIVE_OFF)) as obs:
        await obs.server.reload(parse_config(config_text(backend.port, extra=KEEPALIVE_15S)))
        async with raw_client(obs.port) as (reader, writer):
            await handshake(reader, writer, obs.port)
            await obs.sessions_open(1)
            [tunnel] = obs.server.sessions
            assert tunnel.client_transport is not None
            sock = tunnel.client_transport.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 15
            writer.write(encode_frame(0x8, b"\x03\xe8", mask=True))
            await frames_until_close(reader)


KEEPALIVE_OFF = "proxy:\n  tcp_keepalive: 0s\n"
KEEPALIVE_15S = "proxy:\n  tcp_keepalive: 15s\n"
