"""The bug wsproxy exists to remove, reproduced with a real nginx (PRODUCT.md, "Why it exists").

nginx forwards to upstreams as HTTP/1.0 unless told ``proxy_http_version 1.1``.
A Swoole-like backend applies the HTTP/1.0 keep-alive rule to the WebSocket
handshake: it answers ``101`` and closes the connection right after.  The
browser sees "connected", then the socket dies before any data.

* the beta nginx (``Upgrade``/``Connection`` forwarded, no ``proxy_http_version``)
  reproduces the early close;
* the fixed nginx (``proxy_http_version 1.1``) keeps the session open;
* wsproxy, with no special configuration, keeps it open too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from pathlib import Path

import pytest

from tests.support.backends import RawBackend, swoole_like
from tests.support.nginx import running_nginx
from tests.support.proxy import config_text, running_proxy
from tests.support.wire import encode_frame, open_raw, read_head

#: What Chrome sends for ``new WebSocket("ws://host/ws")``.
BROWSER_HEADERS = [
    ("Pragma", "no-cache"),
    ("Cache-Control", "no-cache"),
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"),
    ("Origin", "http://localhost"),
    ("Accept-Encoding", "gzip, deflate, br"),
    ("Accept-Language", "en-US,en;q=0.9"),
    ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
]


def handshake(port: int) -> bytes:
    lines = [
        "GET /ws HTTP/1.1",
        f"Host: localhost:{port}",
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ]
    lines += [f"{name}: {value}" for name, value in BROWSER_HEADERS]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def read_server_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One unmasked frame from the server: (opcode, payload)."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    assert not second & 0x80, "a server must not mask its frames"
    return first & 0x0F, await reader.readexactly(length)


async def read_rest(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything until EOF (a reset counts as the end too)."""
    data = bytearray()
    async with asyncio.timeout(timeout):
        try:
            while chunk := await reader.read(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return bytes(data)


async def open_session(
    port: int,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, float]:
    """Send a browser's handshake; expect ``101``; return when it arrived."""
    reader, writer = await open_raw("127.0.0.1", port)
    writer.write(handshake(port))
    async with asyncio.timeout(5):
        head = await read_head(reader)
    assert head.status == 101, head.start_line
    return reader, writer, time.monotonic()


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def assert_session_echoes(port: int, backend: RawBackend) -> None:
    reader, writer, _switched = await open_session(port)
    try:
        writer.write(encode_frame(0x1, b"heartbeat"))
        async with asyncio.timeout(5):
            opcode, payload = await read_server_frame(reader)
        assert (opcode, payload) == (0x1, b"heartbeat")
        writer.write(encode_frame(0x8, struct.pack("!H", 1000)))
        async with asyncio.timeout(5):
            opcode, payload = await read_server_frame(reader)
        assert (opcode, payload) == (0x8, struct.pack("!H", 1000))
    finally:
        await close_writer(writer)
    [seen] = backend.seen
    assert seen.head.version == "HTTP/1.1", seen.head.start_line


async def test_beta_nginx_without_proxy_http_version_closes_right_after_101(
    tmp_path: Path,
) -> None:
    async with (
        swoole_like() as backend,
        running_nginx(tmp_path, backend.port, http11=False) as port,
    ):
        reader, writer, switched = await open_session(port)
        try:
            # The browser believes it is connected and sends its first message.
            try:
                writer.write(encode_frame(0x1, b"heartbeat"))
                await writer.drain()
            except ConnectionError:
                pass  # already closed: that is the bug
            rest = await read_rest(reader, timeout=5)
            ended = time.monotonic()
        finally:
            await close_writer(writer)

        assert rest == b"", f"expected EOF and no echo, got {rest!r}"
        assert ended - switched < 2.0
        [seen] = backend.seen
        # What nginx sent upstream: HTTP/1.0 with Upgrade and Connection forwarded.
        assert seen.head.version == "HTTP/1.0", seen.head.start_line
        assert seen.head.get("Upgrade") == "websocket"
        assert seen.head.get("Connection") == "upgrade"
        # The backend itself hung up right after its 101, as in the packet capture.
        assert seen.switched_at is not None
        assert seen.closed_at is not None
        assert seen.closed_at - seen.switched_at < 0.5
        assert seen.received == b""


async def test_nginx_with_proxy_http_version_11_keeps_the_session(tmp_path: Path) -> None:
    async with swoole_like() as backend, running_nginx(tmp_path, backend.port, http11=True) as port:
        await assert_session_echoes(port, backend)


async def test_wsproxy_keeps_the_session_with_no_special_configuration() -> None:
    async with swoole_like() as backend, running_proxy(config_text(backend.port)) as (_s, port):
        await assert_session_echoes(port, backend)


async def test_behind_wsproxy_an_http10_hop_is_diagnosed_as_such(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """wsproxy -> beta nginx -> Swoole: wsproxy sent HTTP/1.1, the hop behind it
    downgraded.  The warning must say what wsproxy sent and name the HTTP/1.0 hop
    as the likely cause, never "so it is not the HTTP/1.0 keep-alive rule"."""
    caplog.set_level(logging.WARNING, logger="wsproxy.early_close")
    async with (
        swoole_like() as backend,
        running_nginx(tmp_path, backend.port, http11=False) as nginx_port,
        running_proxy(config_text(nginx_port)) as (server, port),
    ):
        reader, writer, _switched = await open_session(port)
        try:
            assert await read_rest(reader, timeout=5) == b""
        finally:
            await close_writer(writer)
        async with asyncio.timeout(5):
            while server.sessions:  # noqa: ASYNC110 - state of another object
                await asyncio.sleep(0.01)
    [seen] = backend.seen
    assert seen.head.version == "HTTP/1.0"  # what nginx made of wsproxy's HTTP/1.1
    [record] = [r for r in caplog.records if r.name == "wsproxy.early_close"]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "wsproxy sent the upgrade as HTTP/1.1 with 'Connection: upgrade'" in message
    assert "signature of an HTTP/1.0 hop between wsproxy and the backend" in message
    assert "not the HTTP/1.0 keep-alive rule" not in message
    request_id = seen.head.get("X-Request-ID")
    assert request_id is not None
    assert f"request ID {request_id}" in message
