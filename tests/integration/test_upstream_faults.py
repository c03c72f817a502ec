"""Upstreams that answer wrongly: a 101 nobody asked for, a 101 that is not a
WebSocket answer, a body cut by a reset.  Each is a ``502`` with
``kind=protocol`` (or a cut connection with ``kind=reset``), the upstream
connection closed, and nothing the upstream did not send reaches the client.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from tests.support.backends import RawBackend
from tests.support.http_backends import Received, RecordingBackend, raw_request, request_bytes
from tests.support.observe_helpers import Observed, observed_proxy
from tests.support.proxy import config_text
from tests.support.wire import Head, accept_for, handshake_request, new_key, read_head
from tests.support.ws_helpers import LOOPBACK, raw_client, read_response

ERRORS = "wsproxy_upstream_errors_total"


async def _errors(obs: Observed, kind: str) -> float:
    scrape = await obs.scrape()
    return sum(scrape.series(ERRORS, kind=kind).values())


async def _read_to_end(reader: asyncio.StreamReader, into: bytearray) -> None:
    """Read until the proxy closes; a cut connection raises ConnectionResetError."""
    async with asyncio.timeout(5):
        while chunk := await reader.read(65536):
            into += chunk


def _answering(answer: bytes) -> tuple[RawBackend, asyncio.Event]:
    """A backend that writes ``answer`` to any request; the event: the proxy closed."""
    closed = asyncio.Event()

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: Head
    ) -> bool:
        writer.write(answer)
        await writer.drain()
        await reader.read()  # until the proxy closes the connection
        closed.set()
        return False

    return RawBackend(handler), closed


async def test_an_unsolicited_101_to_a_plain_request_is_502_and_the_upstream_is_dropped() -> None:
    backend, closed = _answering(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\nHELLO"
    )
    async with backend, observed_proxy(config_text(backend.port)) as obs:
        head, body = await raw_request(obs.port, request_bytes("GET", "/", [("Host", "h")]))
        assert head.status == 502
        assert b"HELLO" not in body
        assert body == b"upstream sent an invalid response\n"
        assert await _errors(obs, "protocol") == 1
        async with asyncio.timeout(5):
            await closed.wait()  # the upstream connection was closed, not pooled


def _switching(*lines: str) -> bytes:
    return ("HTTP/1.1 101 Switching Protocols\r\n" + "".join(f"{x}\r\n" for x in lines)).encode()


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(lambda key: _switching("Connection: Upgrade", f"Sec-WebSocket-Accept: {key}"),
                     id="no Upgrade"),
        pytest.param(lambda key: _switching("Upgrade: h2c", "Connection: Upgrade",
                                            f"Sec-WebSocket-Accept: {key}"), id="Upgrade h2c"),
        pytest.param(lambda key: _switching("Upgrade: websocket",
                                            f"Sec-WebSocket-Accept: {key}"), id="no Connection"),
        pytest.param(lambda key: _switching("Upgrade: websocket", "Connection: Upgrade"),
                     id="no Accept"),
        pytest.param(lambda key: _switching("Upgrade: websocket", "Connection: Upgrade",
                                            "Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
                     id="wrong Accept"),
        pytest.param(lambda key: _switching(), id="bare 101"),
    ],
)  # fmt: skip
async def test_a_101_that_is_not_a_websocket_answer_is_502(answer: object) -> None:
    closed = asyncio.Event()

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: Head
    ) -> bool:
        make = answer
        assert callable(make)
        data = make(accept_for(head.get("Sec-WebSocket-Key") or "")) + b"\r\n"
        writer.write(data)
        await writer.drain()
        await reader.read()
        closed.set()
        return False

    async with RawBackend(handler) as backend, observed_proxy(config_text(backend.port)) as obs:
        async with raw_client(obs.port) as (reader, writer):
            writer.write(handshake_request(LOOPBACK, obs.port))
            head, body = await read_response(reader)
        assert head.status == 502
        assert head.get("Upgrade") is None
        assert body == b"upstream sent an invalid response\n"
        assert await _errors(obs, "protocol") == 1
        scrape = await obs.scrape()
        upgrades = scrape.series("wsproxy_websocket_upgrades_total", result="upstream_unavailable")
        assert sum(upgrades.values()) == 1
        async with asyncio.timeout(5):
            await closed.wait()  # the upstream connection was closed


async def test_a_101_passes_with_the_upstreams_header_order_and_values() -> None:
    lines: list[str] = []

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: Head
    ) -> bool:
        lines.extend(
            [
                "X-First: 1",
                "upgrade: WebSocket",
                f"sec-websocket-accept: {accept_for(head.get('Sec-WebSocket-Key') or '')}",
                "X-Middle: two words",
                "CONNECTION: keep-alive, Upgrade",
                "Keep-Alive: timeout=5",
                "Content-Length: 0",
                "X-Last: 3",
            ]
        )
        writer.write(_switching(*lines) + b"\r\n")
        await writer.drain()
        await reader.read()
        return False

    async with (
        RawBackend(handler) as backend,
        observed_proxy(config_text(backend.port)) as obs,
        raw_client(obs.port) as (reader, writer),
    ):
        writer.write(handshake_request(LOOPBACK, obs.port, key=new_key()))
        async with asyncio.timeout(5):
            head = await read_head(reader)
    assert head.status == 101
    kept = [line for line in lines if not line.startswith(("Keep-Alive", "Content-Length"))]
    received = [f"{name}: {value}" for name, value in head.headers if name != "Date"]
    assert received == kept


async def test_a_reset_in_the_middle_of_a_body_is_kind_reset_and_the_server_stays_down() -> None:
    async def reset_mid_body(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: Head
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        return False

    async with (
        RawBackend(reset_mid_body) as backend,
        observed_proxy(config_text(backend.port)) as obs,
    ):
        received = bytearray()
        async with raw_client(obs.port) as (reader, writer):
            writer.write(request_bytes("GET", "/", [("Host", "h")]))
            with pytest.raises(ConnectionResetError):
                await _read_to_end(reader, received)
        assert received.startswith(b"HTTP/1.1 200 OK")
        assert await _errors(obs, "reset") == 1
        assert await _errors(obs, "protocol") == 0
        scrape = await obs.scrape()
        (up,) = scrape.series("wsproxy_upstream_server_up").values()
        assert up == 0  # the failure after the head is not undone by the head
        (record,) = await obs.log_has(1)
        assert '"error":"reset: connection reset (ECONNRESET' in record


async def test_an_early_fin_in_the_middle_of_a_body_is_kind_reset() -> None:
    async def fin_mid_body(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: Head
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        return False  # FIN, the chunked body unfinished

    async with (
        RawBackend(fin_mid_body) as backend,
        observed_proxy(config_text(backend.port)) as obs,
    ):
        async with raw_client(obs.port) as (reader, writer):
            writer.write(request_bytes("GET", "/", [("Host", "h")]))
            with pytest.raises(ConnectionResetError):  # cut, never ended cleanly
                await _read_to_end(reader, bytearray())
        assert await _errors(obs, "reset") == 1


async def test_plain_requests_keep_working_after_an_unsolicited_101() -> None:
    """The connection that switched is never reused from the pool."""
    calls = 0

    async def respond(received: Received) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 1:
            return (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n"
            )
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    request = request_bytes("GET", "/", [("Host", "h")])
    async with (
        RecordingBackend(respond) as backend,
        observed_proxy(config_text(backend.port)) as obs,
    ):
        first, _ = await raw_request(obs.port, request)
        second, body = await raw_request(obs.port, request)
    assert (first.status, second.status, body) == (502, 200, b"ok")
    assert backend.connections == 2


def _many_fields(count: int, size: int) -> bytes:
    return b"".join(b"X-F%d: %s\r\n" % (number, b"v" * size) for number in range(count))


@pytest.mark.parametrize(
    ("answer", "pieces"),
    [
        # One write: a 100 KiB field ends the head in the read that brought it.
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"v" * 100_000 + b"\r\nContent-Length: 2\r\n\r\nok", 1),
        # Small fields, more of them than a response may have (512).
        (b"HTTP/1.1 200 OK\r\n" + _many_fields(600, 4) + b"Content-Length: 2\r\n\r\nok", 1),
        # A head over 64 KiB in many small writes (never one big read).
        (b"HTTP/1.1 200 OK\r\n" + _many_fields(200, 400) + b"Content-Length: 2\r\n\r\nok", 100),
        # The final head behind a 100 Continue in the same write.
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"
            + _many_fields(100, 800)
            + b"Content-Length: 2\r\n\r\nok",
            1,
        ),
    ],
    ids=["one-big-field", "too-many-fields", "spread-over-writes", "behind-100-continue"],
)
async def test_a_response_head_over_the_limits_is_502_kind_protocol(
    answer: bytes, pieces: int
) -> None:
    """An upstream head over 64 KiB or 512 fields is refused however it arrives."""
    size = -(-len(answer) // pieces)

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: Head
    ) -> bool:
        for start in range(0, len(answer), size):
            writer.write(answer[start : start + size])
            await writer.drain()
            if pieces > 1:
                await asyncio.sleep(0)  # pacing: the proxy reads the pieces one by one
        await reader.read()
        return False

    async with RawBackend(handler) as backend, observed_proxy(config_text(backend.port)) as obs:
        reader, writer = await asyncio.open_connection(LOOPBACK, obs.port)
        writer.write(request_bytes("GET", "/", [("Host", "h"), ("Connection", "close")]))
        received = bytearray()
        await _read_to_end(reader, received)
        writer.close()
        # A 100 Continue is relayed as it came; the answer follows it.
        answer_head = received.removeprefix(b"HTTP/1.1 100 Continue\r\n\r\n")
        assert answer_head.startswith(b"HTTP/1.1 502 "), bytes(received[:200])
        assert b"vvvv" not in received
        assert await _errors(obs, "protocol") == 1


async def test_a_response_head_just_under_the_limits_passes() -> None:
    """The limits leave room: 500 fields in a head of about 60 KiB pass whole."""
    fields = _many_fields(500, 100)
    answer = b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\nok"
    backend, _ = _answering(answer)
    async with backend, observed_proxy(config_text(backend.port)) as obs:
        head, body = await raw_request(obs.port, request_bytes("GET", "/", [("Host", "h")]))
    assert (head.status, body) == (200, b"ok")
    assert len(head.headers) >= 500
