"""One test per aiohttp internal that wsproxy/aiohttp_adapter.py relies on.

Each goes over a real tunnel (or a real plain request), so an aiohttp upgrade
that changes ``set_parser``'s hand-over of ``_message_tail``, the keep-alive
timer's treatment of a running handler, flow control after ``set_protocol``,
``_prepare_headers``/``_write_headers`` or ``connection_lost`` bookkeeping
fails here, not in production.  Nothing checks for an attribute's existence.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import struct
import time
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

import wsproxy.server
from tests.support.backends import RawBackend, Seen, recording, swoole_like
from tests.support.proxy import config_text, running_proxy
from tests.support.wire import (
    Head,
    encode_frame,
    handshake_request,
    open_raw,
    parse_head,
    read_head,
)
from wsproxy.aiohttp_adapter import Server, stops_parsing
from wsproxy.server import ProxyServer
from wsproxy.tunnel import Tunnel

TIMEOUT = 10.0


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def read_server_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(length)


async def open_tunnel(
    port: int, *, early: bytes = b"", sock: socket.socket | None = None, limit: int = 2**24
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Handshake through the proxy (with ``early`` bytes in the same write); expect 101."""
    if sock is None:
        reader, writer = await open_raw("127.0.0.1", port)
    else:
        reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
    try:
        writer.write(handshake_request("127.0.0.1", port) + early)
        async with asyncio.timeout(TIMEOUT):
            head = await read_head(reader)
        assert head.status == 101, head.start_line
    except BaseException:
        await close_writer(writer)
        raise
    return reader, writer


async def echo_roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(encode_frame(0x1, b"still there?"))
    async with asyncio.timeout(TIMEOUT):
        assert await read_server_frame(reader) == (0x1, b"still there?")


def only_tunnel(server: ProxyServer) -> Tunnel:
    [tunnel] = server.proxy.tunnels
    return tunnel


def web_server(server: ProxyServer) -> web.Server:
    runner = server._runner
    assert runner is not None
    front = runner.server
    assert isinstance(front, web.Server)
    return front


# (a) set_parser hands over the bytes aiohttp buffered after the handshake.


async def test_bytes_in_the_same_write_as_the_handshake_reach_the_upstream() -> None:
    early = encode_frame(0x1, b"sent with the handshake") + encode_frame(0x2, bytes(range(256)))
    later = encode_frame(0x1, b"sent after the 101")
    async with recording() as backend, running_proxy(config_text(backend.port)) as (_s, port):
        _reader, writer = await open_tunnel(port, early=early)
        try:
            writer.write(later)
            await wait_for(lambda: len(backend.seen) == 1, "the backend connection")
            seen = backend.seen[0]
            await wait_for(
                lambda: len(seen.received) >= len(early + later), "the early and later bytes"
            )
            assert bytes(seen.received) == early + later
        finally:
            await close_writer(writer)


# (b) aiohttp's keep-alive timer never closes a tunnel.  The adapter calls
# keep_alive(False) for this; in aiohttp 3.14.5 the timer already spares a
# connection whose handler is running (_process_keepalive only closes one that
# waits for its next request), so this guards the behaviour, whichever does it.


async def plain_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One keep-alive GET through the proxy to the Swoole-like backend."""
    writer.write(b"GET /plain HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    async with asyncio.timeout(TIMEOUT):
        head = await read_head(reader)
        body = await reader.readexactly(int(head.get("Content-Length") or 0))
    assert head.status == 200
    assert body == b"version=HTTP/1.1\n"


@pytest.mark.parametrize("reuse", [False, True], ids=["fresh-connection", "after-keepalive-get"])
async def test_idle_tunnel_outlives_the_front_keepalive_timeout(
    monkeypatch: pytest.MonkeyPatch, reuse: bool
) -> None:
    monkeypatch.setattr(wsproxy.server, "CLIENT_KEEPALIVE_TIMEOUT", 0.2)
    async with swoole_like() as backend, running_proxy(config_text(backend.port)) as (_s, port):
        # A plain keep-alive connection, to show the short timeout is in force.
        plain_reader, plain_writer = await open_raw("127.0.0.1", port)
        reader, writer = await open_raw("127.0.0.1", port)
        try:
            await plain_get(plain_reader, plain_writer)
            if reuse:
                # The handshake comes on a connection whose keep-alive timer
                # was armed by a finished request.
                await plain_get(reader, writer)
            writer.write(handshake_request("127.0.0.1", port))
            async with asyncio.timeout(TIMEOUT):
                head = await read_head(reader)
            assert head.status == 101, head.start_line
            # Silence is the behaviour under test: both connections stay quiet
            # for five times the keep-alive timeout, so this sleep is the test,
            # not a stand-in for synchronisation.
            await asyncio.sleep(1.0)
            async with asyncio.timeout(TIMEOUT):
                assert await plain_reader.read() == b"", "aiohttp's keep-alive timer is not on"
            await echo_roundtrip(reader, writer)
        finally:
            await close_writer(writer)
            await close_writer(plain_writer)


# (c) After set_protocol, pause_writing/resume_writing reach the tunnel.


async def test_slow_client_pauses_reading_the_upstream_then_everything_arrives() -> None:
    payload = bytes(range(256)) * 256
    frame = encode_frame(0x2, payload, mask=False)  # 64 KiB a frame
    frames = 256  # 16 MiB: far more than every buffer on the way can hold
    total = len(frame) * frames
    pushed = hashlib.sha256()

    async def push(seen: Seen) -> None:
        writer = seen.writer
        assert writer is not None
        for _ in range(frames):
            writer.write(frame)
            pushed.update(frame)
            await writer.drain()

    limit = 64 * 1024
    sock = socket.socket()
    # A small receive window, and a client that buffers at most 2 x 64 KiB and
    # does not read yet, so the proxy's write buffer towards it fills.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.setblocking(False)
    extra = "proxy:\n  tunnel_buffer: 64KiB\n"
    async with (
        recording(after_switch=push) as backend,
        running_proxy(config_text(backend.port, extra=extra)) as (server, port),
    ):
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        reader, writer = await open_tunnel(port, sock=sock, limit=limit)
        try:
            await wait_for(lambda: len(server.proxy.tunnels) == 1, "the tunnel")
            tunnel = only_tunnel(server)
            await wait_for(
                lambda: not tunnel.upstream_transport.is_reading(),
                "the proxy to pause reading the upstream",
            )
            # Bounded memory: the high-water mark plus at most one read.
            assert tunnel.client_transport is not None
            assert tunnel.client_transport.get_write_buffer_size() <= limit + 256 * 1024
            received = hashlib.sha256()
            count = 0
            async with asyncio.timeout(TIMEOUT):
                while count < total:
                    chunk = await reader.read(1 << 20)
                    assert chunk, f"the tunnel closed after {count} of {total} bytes"
                    received.update(chunk)
                    count += len(chunk)
            assert count == total
            assert received.hexdigest() == pushed.hexdigest()
            await wait_for(
                lambda: tunnel.upstream_transport.is_reading(),
                "the proxy to resume reading the upstream",
            )
        finally:
            await close_writer(writer)


# (d) ProxiedResponse: _prepare_headers and _write_headers overridden.

MINIMAL_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def minimal_backend() -> RawBackend:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: Head
    ) -> bool:
        writer.write(MINIMAL_RESPONSE)
        await writer.drain()
        return True

    return RawBackend(handler)


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /minimal HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /minimal HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    ],
    ids=["http10-client", "http11-client"],
)
async def test_response_carries_only_upstream_headers_and_an_http11_status_line(
    request_head: bytes,
) -> None:
    async with minimal_backend() as backend, running_proxy(config_text(backend.port)) as (_s, port):
        reader, writer = await open_raw("127.0.0.1", port)
        try:
            writer.write(request_head)
            async with asyncio.timeout(TIMEOUT):
                raw = await reader.read()
        finally:
            await close_writer(writer)
    head_bytes, _, body = raw.partition(b"\r\n\r\n")
    head = parse_head(head_bytes)
    assert head.start_line == "HTTP/1.1 200 OK"
    names = {name.lower() for name, _value in head.headers}
    assert "content-type" not in names, head.headers
    assert "server" not in names, head.headers
    assert head.get("Content-Length") == "2"
    # An HTTP/1.1 status line on a connection that closes must say so.
    assert (head.get("Connection") or "").lower() == "close"
    assert body == b"ok"


# (e) connection_lost at the takeover: aiohttp forgets the connection at once
# (its handler returns, freeing the request), while the tunnel lives on.


async def _client_closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await close_writer(writer)


async def _upstream_closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(encode_frame(0x8, struct.pack("!H", 1000)))
    async with asyncio.timeout(TIMEOUT):
        assert await read_server_frame(reader) == (0x8, struct.pack("!H", 1000))
        assert await reader.read() == b""  # the backend hung up; the proxy followed
    await close_writer(writer)


@pytest.mark.parametrize(
    "end", [_client_closes, _upstream_closes], ids=["client-closes", "upstream-closes"]
)
async def test_aiohttp_forgets_the_connection_at_the_takeover_and_the_tunnel_lives_on(
    end: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> None:
    """Guards against aiohttp holding (or closing) a connection the tunnel owns."""
    async with (
        swoole_like() as backend,
        running_proxy(config_text(backend.port)) as (server, port),
    ):
        front = web_server(server)
        reader, writer = await open_tunnel(port)
        try:
            await echo_roundtrip(reader, writer)
            # aiohttp let go at the 101; its handler returned...
            await wait_for(lambda: not front.connections, "aiohttp to drop the connection")
            assert not [
                task
                for task in asyncio.all_tasks()
                if task.get_coro() is not None
                and "RequestHandler.start" in getattr(task.get_coro(), "__qualname__", "")
            ]
            # ...and the tunnel still works, then ends cleanly on its own.
            await echo_roundtrip(reader, writer)
            tunnel = only_tunnel(server)
            await end(reader, writer)
            await wait_for(lambda: not server.proxy.tunnels, "the session to end")
            assert tunnel.finished.done()
        finally:
            await close_writer(writer)


@pytest.mark.parametrize(
    ("head", "stops"),
    [
        (b"GET / HTTP/1.1\r\nHost: h\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\n", False),  # no Connection: upgrade
        (b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n", True),
        (b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n", True),
    ],
)
async def test_stops_parsing_reads_llhttps_upgrade_flag(head: bytes, stops: bool) -> None:
    """``stops_parsing`` reads ``request._message.upgrade``; an aiohttp that renames
    it fails here (AttributeError) instead of hanging pipelining clients."""
    seen: list[bool] = []

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        seen.append(stops_parsing(request))
        return web.Response(text="ok")

    server = web.Server(handler)
    runner = web.ServerRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        reader, writer = await open_raw("127.0.0.1", port)
        writer.write(head + b"\r\n")
        async with asyncio.timeout(TIMEOUT):
            await read_head(reader)
        await close_writer(writer)
    finally:
        await runner.cleanup()
    assert seen == [stops]


async def test_parser_errors_reach_on_bad_request_and_nothing_else_does() -> None:
    """``Server.__call__`` builds our ``RequestHandler`` subclass; its ``handle_error``
    gets parser errors (status 400, an ``HttpProcessingError``) and hands them over."""
    refused: list[str] = []

    def on_bad_request(request: web.BaseRequest, exc: Exception) -> web.StreamResponse:
        refused.append(type(exc).__name__)
        return web.Response(status=400, text="refused\n")

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(text="ok")

    runner = web.ServerRunner(Server(handler, on_bad_request=on_bad_request))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        for raw, status in (
            (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", 200),
            (b"GET / HTTP/1.1\r\nHost: h\r\nBad\x01: x\r\n\r\n", 400),
        ):
            reader, writer = await open_raw("127.0.0.1", port)
            writer.write(raw)
            async with asyncio.timeout(TIMEOUT):
                head = await read_head(reader)
            await close_writer(writer)
            assert head.status == status
    finally:
        await runner.cleanup()
    assert len(refused) == 1
