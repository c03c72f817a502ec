"""Backends and raw clients for the plain-HTTP integration tests.

:class:`RecordingBackend` is a raw asyncio HTTP/1.1 server: it records every
request exactly as it arrived (request line, header list in order, body, which
TCP connection carried it) and answers with bytes the test chose, so a test
sees what the proxy really sent and controls what it gets back.  The raw
client helpers do the same on the client side.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import WSMsgType, web

from tests.support.wire import Head, read_head


@dataclass
class Received:
    """One request as the backend read it off the wire."""

    connection: int  # which TCP connection, numbered in accept order from 0
    index: int  # position of this request on its connection, from 0
    head: Head
    body: bytes

    @property
    def names(self) -> list[str]:
        """Header names, lower-cased, in the order they arrived."""
        return [name.lower() for name, _ in self.head.headers]


#: Answers one request with raw response bytes; None closes without answering.
Responder = Callable[[Received], Awaitable[bytes | None]]


def reply(
    status: int = 200,
    reason: str = "OK",
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    content_length: bool = True,
) -> bytes:
    """A raw HTTP/1.1 response; ``Content-Length`` is added unless told not to."""
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if content_length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(*pieces: bytes) -> bytes:
    """``pieces`` in chunked transfer coding, with the final zero chunk."""
    out = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces if piece)
    return out + b"0\r\n\r\n"


async def ok(received: Received) -> bytes:
    return reply(body=b"ok")


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    """Decode a chunked body (RFC 9112 §7.1), trailers discarded."""
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


def is_chunked(head: Head) -> bool:
    return any("chunked" in value.lower() for value in head.get_all("Transfer-Encoding"))


async def read_request_body(reader: asyncio.StreamReader, head: Head) -> bytes:
    if is_chunked(head):
        return await read_chunked(reader)
    length = head.get("Content-Length")
    return await reader.readexactly(int(length)) if length else b""


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> tuple[Head, bytes]:
    """One response (interim ``1xx`` ones included) with its body, framed per RFC 9112 §6.3."""
    head = await read_head(reader)
    if method == "HEAD" or head.status in (204, 304) or 100 <= head.status < 200:
        return head, b""
    if is_chunked(head):
        return head, await read_chunked(reader)
    length = head.get("Content-Length")
    if length is not None:
        return head, await reader.readexactly(int(length))
    return head, await reader.read()  # close-delimited


class RecordingBackend:
    """A raw HTTP/1.1 server that records requests and answers via ``respond``."""

    def __init__(self, respond: Responder = ok, *, continue_for_expect: bool = True) -> None:
        self.respond = respond
        #: Answer ``Expect: 100-continue`` with ``100`` before reading the body.
        self.continue_for_expect = continue_for_expect
        self.requests: list[Received] = []
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> RecordingBackend:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=2**24)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        connection = self.connections
        self.connections += 1
        try:
            for index in range(1_000_000):
                try:
                    head = await read_head(reader)
                    if self.continue_for_expect and head.get("Expect") == "100-continue":
                        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # as origin servers do
                    body = await read_request_body(reader, head)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                received = Received(connection, index, head, body)
                self.requests.append(received)
                answer = await self.respond(received)
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def aiohttp_backend(app: web.Application) -> AsyncIterator[int]:
    """Serve ``app`` on 127.0.0.1 port 0; yields the port."""
    # A short shutdown timeout: a handler stuck on a failed test must not hold
    # the test run for aiohttp's default minute.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


async def raw_request(
    port: int, request: bytes, method: str = "GET", timeout: float = 5.0
) -> tuple[Head, bytes]:
    """Send ``request`` on a fresh connection to 127.0.0.1 and read one response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**24)
    try:
        async with asyncio.timeout(timeout):
            writer.write(request)
            await writer.drain()
            return await read_response(reader, method)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def request_bytes(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    version: str = "HTTP/1.1",
) -> bytes:
    """A raw request, headers exactly as given (nothing added)."""
    lines = [f"{method} {target} {version}"] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def named_app(name: str) -> web.Application:
    """Answers plain requests with its name; a WebSocket echo prefixed with it."""

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"{name} {request.path}")

    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket_ = web.WebSocketResponse()
        await socket_.prepare(request)
        async for message in socket_:
            if message.type is WSMsgType.TEXT:
                await socket_.send_str(f"{name}: {message.data}")
        return socket_

    app = web.Application()
    app.router.add_get("/ws", ws)
    app.router.add_get("/{tail:.*}", hello)
    return app
