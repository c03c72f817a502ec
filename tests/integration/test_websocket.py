"""WebSocket sessions through the real proxy, against real backends and clients.

Every test runs on loopback with the proxy started in-process on port 0.  Bytes
are compared exactly: the tunnel promises to pass frames as they are.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import socket
import time

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from tests.support.backends import connection_tokens, recording, swoole_like
from tests.support.process import free_port
from tests.support.proxy import config_text, running_proxy
from tests.support.wire import (
    accept_for,
    encode_frame,
    handshake_request,
    new_key,
    parse_head,
    read_head,
    read_until_closed,
)
from tests.support.ws_helpers import (
    LOOPBACK,
    Frame,
    Session,
    raw_client,
    read_frame,
    read_response,
    request_bytes,
    reset_on_close,
    scripted,
    wait_until,
    ws_headers,
)
from wsproxy.tunnel import Tunnel

MIB = 1 << 20
TEXT, BINARY, CONTINUATION, PING = 0x1, 0x2, 0x0, 0x9


async def _echo_once(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, text: bytes
) -> None:
    """Send one masked text frame and check the unmasked echo, decoded by hand."""
    writer.write(encode_frame(TEXT, text))
    async with asyncio.timeout(2):
        frame = await read_frame(reader)
    assert frame == Frame(fin=True, rsv1=False, opcode=TEXT, masked=False, payload=text)


async def _switch(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    port: int,
    *,
    version: str = "HTTP/1.1",
    connection: str = "Upgrade",
    extra: list[tuple[str, str]] | None = None,
    first: bytes = b"",
) -> None:
    """Send a handshake (plus ``first`` in the same write) and expect a valid ``101``."""
    key = new_key()
    writer.write(
        handshake_request(
            LOOPBACK, port, version=version, key=key, connection=connection, extra=extra
        )
        + first
    )
    async with asyncio.timeout(2):
        head = await read_head(reader)
    assert head.status == 101, head.start_line
    assert head.get("Sec-WebSocket-Accept") == accept_for(key)


# --- 1. the Swoole failure, shown and removed -------------------------------


async def test_swoole_like_backend_drops_http10_handshake_right_after_101() -> None:
    """Guards the reproduction: a direct HTTP/1.0 handshake gets 101 then an instant FIN."""
    async with swoole_like() as backend, raw_client(backend.port) as (reader, writer):
        writer.write(handshake_request(LOOPBACK, backend.port, version="HTTP/1.0"))
        async with asyncio.timeout(2):
            head = await read_head(reader)
        assert head.status == 101
        assert await read_until_closed(reader, timeout=2) == b""
        seen = backend.seen[0]
        assert seen.switched_at is not None
        assert seen.closed_at is not None
        assert seen.closed_at - seen.switched_at < 0.05


async def test_http10_handshake_through_proxy_reaches_swoole_as_http11_and_stays_open() -> None:
    """Guards against forwarding HTTP/1.0 (the nginx default) and the post-101 close."""
    async with (
        swoole_like() as backend,
        running_proxy(config_text(backend.port)) as (server, port),
        raw_client(port) as (reader, writer),
    ):
        await _switch(reader, writer, port, version="HTTP/1.0")
        seen = backend.seen[0]
        assert seen.head.start_line == "GET /ws HTTP/1.1"
        assert connection_tokens(seen.head) == {"upgrade"}
        assert seen.head.get_all("Upgrade") == ["websocket"]
        await _echo_once(reader, writer, b"hello from an HTTP/1.0 client")
        await _echo_once(reader, writer, b"and again")
        assert seen.closed_at is None
        assert len(server.sessions) == 1


async def test_firefox_keep_alive_upgrade_handshake_through_proxy_works() -> None:
    """Guards against mishandling Firefox's `Connection: keep-alive, Upgrade`."""
    async with (
        swoole_like() as backend,
        running_proxy(config_text(backend.port)) as (server, port),
        raw_client(port) as (reader, writer),
    ):
        await _switch(reader, writer, port, connection="keep-alive, Upgrade")
        seen = backend.seen[0]
        assert seen.head.start_line == "GET /ws HTTP/1.1"
        assert connection_tokens(seen.head) == {"upgrade"}
        assert seen.head.get_all("Upgrade") == ["websocket"]
        await _echo_once(reader, writer, b"firefox says hi")
        assert seen.closed_at is None
        assert len(server.sessions) == 1


@pytest.mark.parametrize(
    ("connection", "field", "seen"),
    [
        # A field the client's Connection names is this hop's: dropped.
        ("Upgrade, X-Secret", ("X-Secret", "hop-by-hop"), ("X-Secret", [])),
        # Forged forwarding fields are replaced by this hop's own.
        ("Upgrade", ("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", [LOOPBACK])),
        ("Upgrade", ("X-Forwarded-Host", "evil.test"), ("X-Forwarded-Host", ["PORT"])),
        ("Upgrade", ("Keep-Alive", "timeout=5"), ("Keep-Alive", [])),
        # The underscore spelling a CGI or Swoole backend reads as the real one.
        ("Upgrade", ("X_Forwarded_For", "7.7.7.7"), ("X_Forwarded_For", [])),
    ],
    ids=["connection-named", "forged-for", "forged-host", "keep-alive", "underscore"],
)
async def test_a_handshakes_forged_and_hop_by_hop_fields_never_reach_the_backend(
    connection: str, field: tuple[str, str], seen: tuple[str, list[str]]
) -> None:
    """A browser's handshake takes a short way to its upstream head
    (headers.untouched_upgrade); one that also carries any of these must
    not: the backend sees this hop's own fields, and the client's others."""
    async with (
        swoole_like() as backend,
        running_proxy(config_text(backend.port)) as (_server, port),
        raw_client(port) as (reader, writer),
    ):
        extra = [field, ("Cookie", "kept=1")]
        await _switch(reader, writer, port, connection=connection, extra=extra)
        head = backend.seen[0].head
        assert connection_tokens(head) == {"upgrade"}
        assert head.get_all("Upgrade") == ["websocket"]
        name, values = seen
        expected = [f"{LOOPBACK}:{port}"] if values == ["PORT"] else values
        assert head.get_all(name) == expected
        assert head.get_all("Cookie") == ["kept=1"]
        await _echo_once(reader, writer, b"still a working session")


# --- 2. transparency both ways ----------------------------------------------


def _client_frames() -> list[bytes]:
    """Masked client frames, including ones a frame-aware proxy might be tempted to fix."""
    return [
        encode_frame(TEXT, b"sent with the handshake"),
        encode_frame(TEXT, "plain text ✓".encode()),
        encode_frame(BINARY, os.urandom(300), rsv1=True),  # as permessage-deflate sends
        encode_frame(TEXT, b"fragment one, ", fin=False),
        encode_frame(CONTINUATION, b"two, ", fin=False),
        encode_frame(CONTINUATION, b"three"),
        encode_frame(PING, b"are you there"),
        encode_frame(0x3, b"reserved opcode"),  # malformed: opcode 0x3 is reserved
        encode_frame(TEXT, b"unmasked from a client", mask=False),  # malformed
        encode_frame(BINARY, os.urandom(70_000)),
    ]


def _server_frames() -> list[bytes]:
    """Unmasked server frames, plus malformed ones that must still pass untouched."""
    return [
        encode_frame(TEXT, b"sent with the 101", mask=False),
        encode_frame(BINARY, os.urandom(500), rsv1=True, mask=False),
        encode_frame(TEXT, b"fragment one, ", fin=False, mask=False),
        encode_frame(CONTINUATION, b"two", mask=False),
        encode_frame(PING, b"heartbeat", mask=False),
        encode_frame(0xB, b"reserved control opcode", mask=False),  # malformed
        encode_frame(TEXT, b"masked from a server"),  # malformed: servers never mask
        encode_frame(BINARY, os.urandom(70_000), mask=False),
    ]


async def test_client_bytes_reach_backend_exactly_including_those_sent_with_handshake() -> None:
    """Guards against dropping, re-framing or fixing client bytes (handshake tail included)."""
    deflate = "Sec-WebSocket-Extensions: permessage-deflate\r\n"
    frames = _client_frames()
    async with (
        recording(extra=deflate) as backend,
        running_proxy(config_text(backend.port)) as (_server, port),
        raw_client(port) as (reader, writer),
    ):
        offer = [("Sec-WebSocket-Extensions", "permessage-deflate")]
        await _switch(reader, writer, port, extra=offer, first=frames[0])
        for frame in frames[1:]:
            writer.write(frame)
            await writer.drain()
        writer.write_eof()
        expected = b"".join(frames)
        await wait_until(
            lambda: bool(backend.seen) and backend.seen[0].closed_at is not None,
            5,
            "the backend to read the client's FIN",
        )
        assert bytes(backend.seen[0].received) == expected
        assert await read_until_closed(reader, timeout=2) == b""


async def test_backend_bytes_reach_client_exactly_including_those_sent_with_101() -> None:
    """Guards against dropping bytes that share a read with the 101, or altering any later."""
    frames = _server_frames()

    async def script(session: Session) -> None:
        await session.accept(
            tail=frames[0], extra="Sec-WebSocket-Extensions: permessage-deflate\r\n"
        )
        for frame in frames[1:]:
            session.writer.write(frame)
            await session.writer.drain()
        session.writer.write_eof()
        await session.read_to_eof()

    backend, _sessions = scripted(script)
    async with (
        backend,
        running_proxy(config_text(backend.port)) as (_server, port),
        raw_client(port) as (reader, writer),
    ):
        offer = [("Sec-WebSocket-Extensions", "permessage-deflate")]
        await _switch(reader, writer, port, extra=offer)
        assert await read_until_closed(reader, timeout=5) == b"".join(frames)


# --- 3. byte-exact echo with the websockets library at both ends -----------

ECHO_SIZES = [0, 1, 125, 126, 65535, 65536, MIB, 16 * MIB]


async def test_websockets_library_echo_is_byte_exact_with_deflate_and_subprotocol() -> None:
    """Guards against breaking end-to-end negotiation or any message size through the tunnel."""
    backend_connections: list[ServerConnection] = []

    async def echo(ws: ServerConnection) -> None:
        backend_connections.append(ws)
        async for message in ws:
            await ws.send(message)

    async with (
        asyncio.timeout(40),
        serve(
            echo,
            LOOPBACK,
            0,
            max_size=None,
            compression="deflate",
            subprotocols=[Subprotocol("chat"), Subprotocol("superchat")],
        ) as ws_server,
    ):
        backend_port = ws_server.sockets[0].getsockname()[1]
        async with (
            running_proxy(config_text(backend_port)) as (_server, port),
            connect(
                f"ws://{LOOPBACK}:{port}/echo",
                max_size=None,
                compression="deflate",
                subprotocols=[Subprotocol("superchat")],
            ) as client,
        ):
            assert client.subprotocol == "superchat"
            assert [e.name for e in client.protocol.extensions] == ["permessage-deflate"]
            backend_ws = backend_connections[0]
            assert backend_ws.subprotocol == "superchat"
            assert [e.name for e in backend_ws.protocol.extensions] == ["permessage-deflate"]
            for size in ECHO_SIZES:
                payload = os.urandom(size)
                await client.send(payload)
                assert await client.recv() == payload, f"binary message of {size} bytes"
            text = "WebSocket ✓ text, ünïcödé and all " * 3000
            await client.send(text)
            assert await client.recv() == text
            await client.send([b"fragment one, ", b"two, ", b"three"])
            assert await client.recv() == b"fragment one, two, three"
            await client.send(["text ", "in ", "fragments"])
            assert await client.recv() == "text in fragments"


# --- 4. slow reader, bounded memory -----------------------------------------

PUSH_CHUNKS = 256  # 256 MiB in 1 MiB writes, each filled with its counter byte
TUNNEL_BUFFER = 64 * 1024
ONE_READ = 256 * 1024  # asyncio's largest single socket read


def _buffered(tunnel: Tunnel) -> int:
    """What the proxy holds for this session in user space (both write buffers)."""
    assert tunnel.client_transport is not None
    client = tunnel.client_transport.get_write_buffer_size()
    return client + tunnel.upstream_transport.get_write_buffer_size()


async def test_slow_client_pauses_backend_and_proxy_buffers_stay_bounded() -> None:
    """Guards against unbounded buffering when the client reads slower than the backend writes."""
    total = PUSH_CHUNKS * MIB

    async def script(session: Session) -> None:
        await session.accept()
        for i in range(PUSH_CHUNKS):
            session.writer.write(bytes([i]) * MIB)
            await session.writer.drain()
            session.written += MIB
        session.writer.write_eof()
        await session.read_to_eof()

    expected = hashlib.sha256()
    for i in range(PUSH_CHUNKS):
        expected.update(bytes([i]) * MIB)

    backend, sessions = scripted(script)
    extra = "proxy:\n  tunnel_buffer: 64KiB\n"
    loop = asyncio.get_running_loop()
    async with backend, running_proxy(config_text(backend.port, extra=extra)) as (server, port):
        with socket.socket() as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, (LOOPBACK, port))
            await loop.sock_sendall(sock, handshake_request(LOOPBACK, port))
            data = b""
            async with asyncio.timeout(2):
                while b"\r\n\r\n" not in data:
                    chunk = await loop.sock_recv(sock, 4096)
                    assert chunk, "connection closed before the 101"
                    data += chunk
            head, _, early = data.partition(b"\r\n\r\n")
            assert parse_head(head).status == 101
            await wait_until(lambda: bool(server.sessions and sessions), 2, "the tunnel")
            tunnel = next(iter(server.sessions))
            session = sessions[0]

            # Not reading: sample the proxy's buffers until the backend is held back.
            peak = 0
            last_written, last_change = -1, loop.time()
            async with asyncio.timeout(20):
                while True:
                    peak = max(peak, _buffered(tunnel))
                    if session.written != last_written:
                        last_written, last_change = session.written, loop.time()
                    elif loop.time() - last_change > 0.3 or session.written == total:
                        break
                    await asyncio.sleep(0.005)
            bound = 2 * TUNNEL_BUFFER + ONE_READ
            assert peak <= bound, f"proxy buffered {peak} bytes (bound {bound})"
            assert session.written < total, "the backend was never paused"

            # Now read everything, still watching the buffers.
            digest = hashlib.sha256(early)
            received = len(early)
            buf = bytearray(MIB)
            async with asyncio.timeout(40):
                while received < total:
                    n = await loop.sock_recv_into(sock, buf)
                    assert n, f"EOF after {received} of {total} bytes"
                    digest.update(memoryview(buf)[:n])
                    received += n
                    if server.sessions:
                        peak = max(peak, _buffered(tunnel))
                assert await loop.sock_recv(sock, 1) == b""  # then the backend's FIN
            assert received == total
            assert digest.hexdigest() == expected.hexdigest()
            assert peak <= bound, f"proxy buffered {peak} bytes while draining (bound {bound})"


# --- 5. half-close and reset ------------------------------------------------


async def test_upstream_fin_half_closes_client_which_can_still_send() -> None:
    """Guards against turning an upstream FIN into a full close of the client connection."""

    async def script(session: Session) -> None:
        await session.accept(tail=b"last words")
        session.writer.write_eof()
        await session.read_to_eof()

    backend, sessions = scripted(script)
    async with (
        backend,
        running_proxy(config_text(backend.port)) as (server, port),
        raw_client(port) as (reader, writer),
    ):
        await _switch(reader, writer, port)
        assert await read_until_closed(reader, timeout=2) == b"last words"
        late = encode_frame(TEXT, b"sent after the upstream's FIN")
        writer.write(late)
        await wait_until(lambda: bytes(sessions[0].received) == late, 2, "the late bytes")
        assert len(server.sessions) == 1
        writer.write_eof()
        async with asyncio.timeout(2):
            await sessions[0].ended.wait()
        assert sessions[0].error is None
        await wait_until(lambda: not server.sessions, 2, "the tunnel to end")


async def test_client_fin_reaches_backend_which_can_still_send() -> None:
    """Guards against dropping a client FIN or closing the backend's direction with it."""

    async def script(session: Session) -> None:
        await session.accept()
        await session.read_to_eof()
        session.writer.write(b"reply after your FIN: " + bytes(session.received))
        await session.writer.drain()

    backend, sessions = scripted(script)
    async with (
        backend,
        running_proxy(config_text(backend.port)) as (server, port),
        raw_client(port) as (reader, writer),
    ):
        await _switch(reader, writer, port)
        frame = encode_frame(TEXT, b"goodbye")
        writer.write(frame)
        writer.write_eof()
        reply = await read_until_closed(reader, timeout=2)
        assert reply == b"reply after your FIN: " + frame
        assert sessions[0].saw_eof.is_set()
        await wait_until(lambda: not server.sessions, 2, "the tunnel to end")


async def test_client_reset_ends_backend_connection_and_tunnel() -> None:
    """Guards against a reset client leaving the backend connection (and tunnel) open."""

    async def script(session: Session) -> None:
        await session.accept()
        await session.read_to_eof()

    backend, sessions = scripted(script)
    frame = encode_frame(TEXT, b"before the reset")
    async with backend, running_proxy(config_text(backend.port)) as (server, port):
        async with raw_client(port) as (reader, writer):
            await _switch(reader, writer, port)
            writer.write(frame)
            await wait_until(lambda: bytes(sessions[0].received) == frame, 2, "the frame")
            reset_on_close(writer)
        reset_at = time.monotonic()
        async with asyncio.timeout(1):
            await sessions[0].ended.wait()
        assert sessions[0].ended_at is not None
        assert sessions[0].ended_at - reset_at < 1
        ended_cleanly = sessions[0].saw_eof.is_set()
        assert ended_cleanly or isinstance(sessions[0].error, ConnectionResetError)
        await wait_until(lambda: not server.sessions, 1, "the tunnel to end")


async def test_upstream_reset_ends_client_connection_and_tunnel() -> None:
    """Guards against a reset backend leaving the client connection (and tunnel) open."""
    frame = encode_frame(TEXT, b"please reset")

    async def script(session: Session) -> None:
        await session.accept()
        session.received += await session.reader.readexactly(len(frame))
        session.reset()

    backend, _sessions = scripted(script)
    async with (
        backend,
        running_proxy(config_text(backend.port)) as (server, port),
        raw_client(port) as (reader, writer),
    ):
        await _switch(reader, writer, port)
        writer.write(frame)
        with contextlib.suppress(ConnectionResetError):  # a reset, or at least an EOF
            assert await read_until_closed(reader, timeout=1) == b""
        await wait_until(lambda: not server.sessions, 1, "the tunnel to end")


# --- 6. handshake validation ------------------------------------------------


async def _rejected(request: bytes) -> tuple[int, list[tuple[str, str]]]:
    """Send ``request`` through the proxy; return the answer and check no backend saw it."""
    async with (
        recording() as backend,
        running_proxy(config_text(backend.port)) as (_server, port),
        raw_client(port) as (reader, writer),
    ):
        writer.write(request)
        head, _body = await read_response(reader, timeout=2)
        assert not backend.new_connection.is_set()
        assert backend.seen == []
        return head.status, head.headers


async def test_unsupported_websocket_version_gets_426_naming_version_13() -> None:
    """Guards against forwarding (or 400-ing) a handshake for a WebSocket version we lack."""
    request = request_bytes("GET /ws HTTP/1.1", ws_headers(0, Sec_WebSocket_Version="8"))
    status, headers = await _rejected(request)
    assert status == 426
    assert [v for n, v in headers if n.lower() == "sec-websocket-version"] == ["13"]


@pytest.mark.parametrize(
    "key",
    [
        None,
        "",
        "not base64 at all!",
        base64.b64encode(b"15 bytes only..").decode(),
        base64.b64encode(b"seventeen bytes!!").decode(),
    ],
    ids=["missing", "empty", "not-base64", "15-bytes", "17-bytes"],
)
async def test_missing_or_invalid_websocket_key_gets_400(key: str | None) -> None:
    """Guards against forwarding a handshake whose Sec-WebSocket-Key is absent or malformed."""
    request = request_bytes("GET /ws HTTP/1.1", ws_headers(0, Sec_WebSocket_Key=key))
    status, _headers = await _rejected(request)
    assert status == 400


async def test_post_with_websocket_upgrade_gets_400() -> None:
    """Guards against treating a non-GET request as a WebSocket handshake."""
    headers = [*ws_headers(0), ("Content-Length", "0")]
    status, _headers = await _rejected(request_bytes("POST /ws HTTP/1.1", headers))
    assert status == 400


async def test_upgrade_without_upgrade_in_connection_gets_400() -> None:
    """Guards against accepting `Upgrade: websocket` when Connection lacks the upgrade token."""
    request = request_bytes("GET /ws HTTP/1.1", ws_headers(0, Connection="keep-alive"))
    status, _headers = await _rejected(request)
    assert status == 400


# --- 7. upstream first ------------------------------------------------------

FORBIDDEN_BODY = b"go away, you are not on the list\n"
FORBIDDEN = (
    b"HTTP/1.1 403 Forbidden\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"X-Request-Id: abc123\r\n"
    b"Set-Cookie: a=1\r\n"
    b"Set-Cookie: b=2\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"Connection: keep-alive, X-Hop\r\n"
    b"X-Hop: connection-specific\r\n"
    b"Content-Length: " + str(len(FORBIDDEN_BODY)).encode() + b"\r\n"
    b"\r\n" + FORBIDDEN_BODY
)
UNAUTHORIZED = (
    b"HTTP/1.1 401 Unauthorized\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
    b'WWW-Authenticate: Basic realm="ws"\r\n'
    b"Content-Type: text/plain\r\n"
    b"Connection: X-Hop\r\n"
    b"X-Hop: connection-specific\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"\r\n"
    b"6\r\nlog in\r\n"
    b"6\r\n first\r\n"
    b"1\r\n\n\r\n"
    b"0\r\n\r\n"
)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "x-hop"}


def _end_to_end(headers: list[tuple[str, str]], ignore: set[str]) -> list[tuple[str, str]]:
    """Headers without ``ignore`` (lower-case names), sorted by name, same-name order kept."""
    kept = [(name.lower(), value) for name, value in headers if name.lower() not in ignore]
    return sorted(kept, key=lambda item: item[0])


async def _refused_by_backend(answer: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
    async def script(session: Session) -> None:
        session.writer.write(answer)
        await session.writer.drain()
        await session.read_to_eof()

    backend, sessions = scripted(script)
    async with (
        backend,
        running_proxy(config_text(backend.port)) as (server, port),
        raw_client(port) as (reader, writer),
    ):
        writer.write(handshake_request(LOOPBACK, port))
        head, body = await read_response(reader, timeout=2)
        assert len(sessions) == 1, "the backend must have been asked first"
        async with asyncio.timeout(2):
            await sessions[0].ended.wait()  # the proxy does not keep the refused connection
        assert not server.sessions
        return head.status, head.start_line, head.headers, body


async def test_backend_403_with_body_reaches_client_as_is() -> None:
    """Guards against answering 101 (or a generic error) when the backend refused with 403."""
    status, start_line, headers, body = await _refused_by_backend(FORBIDDEN)
    assert status == 403
    assert start_line == "HTTP/1.1 403 Forbidden"
    assert body == FORBIDDEN_BODY
    sent = parse_head(FORBIDDEN.split(b"\r\n\r\n")[0]).headers
    # Only the proxy's own Connection may be added; Keep-Alive and X-Hop must be gone.
    assert _end_to_end(headers, {"connection"}) == _end_to_end(sent, HOP_BY_HOP)


async def test_backend_chunked_401_reaches_client_as_is() -> None:
    """Guards against losing a chunked refusal body or its headers."""
    status, start_line, headers, body = await _refused_by_backend(UNAUTHORIZED)
    assert status == 401
    assert start_line == "HTTP/1.1 401 Unauthorized"
    assert body == b"log in first\n"
    sent = parse_head(UNAUTHORIZED.split(b"\r\n\r\n")[0]).headers
    framing = {"connection", "transfer-encoding", "content-length"}  # the proxy's own framing
    assert _end_to_end(headers, framing) == _end_to_end(sent, HOP_BY_HOP)


async def test_dead_upstream_gets_502_quickly() -> None:
    """Guards against hanging or answering 101 when nothing listens upstream."""
    async with (
        running_proxy(config_text(free_port())) as (server, port),
        raw_client(port) as (reader, writer),
    ):
        writer.write(handshake_request(LOOPBACK, port))
        head, _body = await read_response(reader, timeout=1)
        assert head.status == 502
        assert not server.sessions


def _silent_upstream_config(upstream_port: int) -> str:
    return config_text(upstream_port, upstream_extra="    read_timeout: 300ms\n")


async def test_upstream_that_never_answers_gets_504_after_read_timeout() -> None:
    """Guards against waiting forever (or 502-ing) on an upstream that accepts but is silent."""

    async def script(session: Session) -> None:
        await session.read_to_eof()  # never answers

    backend, sessions = scripted(script)
    async with (
        backend,
        running_proxy(_silent_upstream_config(backend.port)) as (_server, port),
        raw_client(port) as (reader, writer),
    ):
        sent_at = time.monotonic()
        writer.write(handshake_request(LOOPBACK, port))
        head, _body = await read_response(reader, timeout=2)
        elapsed = time.monotonic() - sent_at
        assert head.status == 504
        assert 0.25 <= elapsed < 1.5, elapsed
        assert len(sessions) == 1
        async with asyncio.timeout(1):
            await sessions[0].ended.wait()  # and the upstream connection is let go


# --- 8. strict mode ---------------------------------------------------------


async def test_strict_mode_forwards_http10_handshake_as_plain_request() -> None:
    """Guards against upgrading an HTTP/1.0 request when http10_upgrade is `ignore`."""
    extra = "proxy:\n  http10_upgrade: ignore\n"
    async with (
        swoole_like() as backend,
        running_proxy(config_text(backend.port, extra=extra)) as (server, port),
        raw_client(port) as (reader, writer),
    ):
        writer.write(handshake_request(LOOPBACK, port, version="HTTP/1.0"))
        head, body = await read_response(reader, timeout=2)
        assert head.status == 200
        assert body == b"version=HTTP/1.1\n"
        assert head.get("Upgrade") is None
        assert head.get("Sec-WebSocket-Accept") is None
        seen = backend.seen[0]
        assert seen.head.get("Upgrade") is None
        assert "upgrade" not in connection_tokens(seen.head)
        assert not server.sessions


# --- 9. idle timeout --------------------------------------------------------

IDLE_ROUTE = "    websocket:\n      idle_timeout: 200ms\n"


async def test_quiet_tunnel_is_closed_after_idle_timeout() -> None:
    """Guards against idle_timeout never firing (or firing early) on a quiet session."""
    async with (
        swoole_like() as backend,
        running_proxy(config_text(backend.port, route_extra=IDLE_ROUTE)) as (server, port),
        raw_client(port) as (reader, writer),
    ):
        await _switch(reader, writer, port)
        switched_at = time.monotonic()
        assert await read_until_closed(reader, timeout=1) == b""
        assert time.monotonic() - switched_at >= 0.19
        await wait_until(lambda: backend.seen[0].closed_at is not None, 1, "the backend to end")
        await wait_until(lambda: not server.sessions, 1, "the tunnel to end")


async def test_busy_tunnel_outlives_idle_timeout() -> None:
    """Guards against idle_timeout closing a session that keeps exchanging frames."""
    async with (
        swoole_like() as backend,
        running_proxy(config_text(backend.port, route_extra=IDLE_ROUTE)) as (server, port),
        raw_client(port) as (reader, writer),
    ):
        await _switch(reader, writer, port)
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < 0.6:
            await _echo_once(reader, writer, f"keepalive {n}".encode())
            n += 1
            await asyncio.sleep(0.05)  # the traffic pattern under test, not synchronization
        await _echo_once(reader, writer, b"still here")
        assert backend.seen[0].closed_at is None
        assert len(server.sessions) == 1
