"""Helpers for the WebSocket integration tests: raw clients, frames, scripted backends.

Everything here works on real loopback sockets.  Frames are decoded by hand
(never by a library) so a test sees exactly the bytes the proxy delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from tests.support.backends import RawBackend, switching_protocols
from tests.support.wire import Head, accept_for, handshake_request, new_key, read_head

LOOPBACK = "127.0.0.1"
LINGER_RESET = struct.pack("ii", 1, 0)
#: A close frame's payload with code 1001 Going Away and no reason.
GOING_AWAY = (1001).to_bytes(2, "big")


# --- waiting -----------------------------------------------------------------


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 5 ms; fail with ``what`` after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            # The condition is state in another object, with no event to wait on.
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


# --- raw clients -------------------------------------------------------------


@contextlib.asynccontextmanager
async def raw_client(
    port: int, *, limit: int = 2**24
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A plain TCP connection to ``port``, always closed (and awaited) at exit."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port, limit=limit)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


def reset_on_close(writer: asyncio.StreamWriter) -> None:
    """Make the next close of ``writer``'s socket send RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)


def request_bytes(start_line: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    """An HTTP request written exactly as given (no header is added or fixed)."""
    lines = [start_line] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def ws_headers(port: int, **overrides: str | None) -> list[tuple[str, str]]:
    """A valid handshake's headers; an override of None drops that header."""
    headers = {
        "Host": f"{LOOPBACK}:{port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": new_key(),
        "Sec-WebSocket-Version": "13",
    }
    for name, value in overrides.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    return list(headers.items())


async def read_body(reader: asyncio.StreamReader, head: Head) -> bytes:
    """The body that follows a response head: length, chunked, or until close."""
    if head.status < 200 or head.status in (204, 304):
        return b""
    if "chunked" in (head.get("Transfer-Encoding") or "").lower():
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                return bytes(body)
            body += await reader.readexactly(size)
            assert await reader.readexactly(2) == b"\r\n"
    length = head.get("Content-Length")
    if length is not None:
        return await reader.readexactly(int(length))
    return await reader.read()


async def read_response(reader: asyncio.StreamReader, timeout: float = 5.0) -> tuple[Head, bytes]:
    async with asyncio.timeout(timeout):
        head = await read_head(reader)
        return head, await read_body(reader, head)


# --- frames ------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    fin: bool
    rsv1: bool
    opcode: int
    masked: bool
    payload: bytes


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """One WebSocket frame decoded by hand from the wire (RFC 6455 §5.2)."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    key = await reader.readexactly(4) if second & 0x80 else b""
    payload = await reader.readexactly(length)
    if key:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return Frame(
        fin=bool(first & 0x80),
        rsv1=bool(first & 0x40),
        opcode=first & 0x0F,
        masked=bool(key),
        payload=payload,
    )


async def handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
    """Send a WebSocket handshake on a raw connection; expect a valid ``101``."""
    key = new_key()
    writer.write(handshake_request(LOOPBACK, port, key=key))
    async with asyncio.timeout(5):
        head = await read_head(reader)
    assert head.status == 101, head.start_line
    assert head.get("Sec-WebSocket-Accept") == accept_for(key)


async def frames_until_close(reader: asyncio.StreamReader) -> list[Frame]:
    """Every frame up to and including the first close frame."""
    frames: list[Frame] = []
    async with asyncio.timeout(10):
        while not frames or frames[-1].opcode != 0x8:
            frames.append(await read_frame(reader))
    return frames


# --- scripted backends -------------------------------------------------------


@dataclass
class Session:
    """One backend connection driven by a script, and what it observed."""

    head: Head
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    received: bytearray = field(default_factory=bytearray)
    written: int = 0
    saw_eof: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    error: BaseException | None = None
    ended_at: float | None = None

    async def accept(self, tail: bytes = b"", extra: str = "") -> None:
        """Answer ``101``; ``tail`` goes out in the same write as the head."""
        self.writer.write(switching_protocols(self.head, extra) + tail)
        await self.writer.drain()

    async def read_to_eof(self) -> None:
        while data := await self.reader.read(65536):
            self.received += data
        self.saw_eof.set()

    def reset(self) -> None:
        reset_on_close(self.writer)
        self.writer.transport.abort()


Script = Callable[[Session], Awaitable[None]]


def scripted(script: Script) -> tuple[RawBackend, list[Session]]:
    """A backend that runs ``script`` for each request and records how it ended.

    A connection error inside the script is recorded (``error``), not raised,
    so a reset is an observation rather than a crash in the server callback.
    """
    sessions: list[Session] = []

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: Head
    ) -> bool:
        session = Session(head, reader, writer)
        sessions.append(session)
        try:
            await script(session)
        except (ConnectionError, OSError) as exc:
            session.error = exc
        finally:
            session.ended_at = time.monotonic()
            session.ended.set()
        return False

    return RawBackend(handler), sessions


async def open_sessions(
    port: int, count: int
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``count`` raw WebSocket sessions through the proxy on ``port``, one
    after the other (so they start in this order); the caller closes them."""
    sessions = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        sessions.append((reader, writer))
        await handshake(reader, writer, port)
    return sessions
