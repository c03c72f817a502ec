"""Real backends on loopback, written for what each test needs to observe."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from tests.support.wire import Head, accept_for, read_head

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Head], Awaitable[bool]]


@dataclass
class Seen:
    """What one backend connection received and when it ended."""

    head: Head
    received: bytearray = field(default_factory=bytearray)
    switched_at: float | None = None
    closed_at: float | None = None
    writer: asyncio.StreamWriter | None = None


class RawBackend:
    """An asyncio server that hands every request head to ``handler``."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        #: Serve over TLS with this context (an ``https://`` upstream).
        self.tls = tls
        self.server: asyncio.Server | None = None
        self.port = 0
        self.seen: list[Seen] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.new_connection = asyncio.Event()

    async def __aenter__(self) -> RawBackend:
        self.server = await asyncio.start_server(
            self._serve, "127.0.0.1", 0, limit=2**24, ssl=self.tls
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            while True:
                try:
                    head = await read_head(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.new_connection.set()
                keep = await self.handler(reader, writer, head)
                if not keep:
                    return
        finally:
            self.tasks.discard(task)
            writer.close()


def is_upgrade(head: Head) -> bool:
    return (head.get("Upgrade") or "").lower() == "websocket"


def connection_tokens(head: Head) -> set[str]:
    return {t.strip().lower() for v in head.get_all("Connection") for t in v.split(",")}


def swoole_keeps_alive(head: Head) -> bool:
    """Swoole's rule: HTTP/1.1 keeps unless ``close``; HTTP/1.0 closes unless ``keep-alive``."""
    tokens = connection_tokens(head)
    if head.version == "HTTP/1.1":
        return "close" not in tokens
    return "keep-alive" in tokens


def switching_protocols(head: Head, extra: str = "") -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_for(head.get('Sec-WebSocket-Key') or '')}\r\n"
        f"{extra}\r\n"
    ).encode()


async def echo_frames(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen
) -> None:
    """A WebSocket echo server on an already switched connection (wsproto)."""
    ws = Connection(ConnectionType.SERVER)
    while True:
        data = await reader.read(65536)
        if not data:
            return
        seen.received += data
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                writer.write(
                    ws.send(type(event)(data=event.data, message_finished=event.message_finished))
                )
            elif isinstance(event, Ping):
                writer.write(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                writer.write(ws.send(event.response()))
                await writer.drain()
                return
        await writer.drain()


def swoole_like(tls: ssl.SSLContext | None = None) -> RawBackend:
    """Answers ``101`` and then applies Swoole's keep-alive rule to the handshake.

    With HTTP/1.0 and no ``Connection: keep-alive`` it closes the connection
    right after ``101``: the failure in PRODUCT.md.  Otherwise it echoes frames.
    """
    backend: RawBackend

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: Head
    ) -> bool:
        seen = Seen(head, writer=writer)
        backend.seen.append(seen)
        if not is_upgrade(head):
            body = f"version={head.version}\n".encode()
            keep = swoole_keeps_alive(head)
            writer.write(
                f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n".encode()
                + (b"" if keep else b"Connection: close\r\n")
                + b"\r\n"
                + body
            )
            await writer.drain()
            return keep
        writer.write(switching_protocols(head))
        await writer.drain()
        seen.switched_at = time.monotonic()
        if not swoole_keeps_alive(head):
            seen.closed_at = time.monotonic()
            return False
        try:
            await echo_frames(reader, writer, seen)
        finally:
            seen.closed_at = time.monotonic()
        return False

    backend = RawBackend(handler, tls)
    return backend


def recording(
    after_switch: Callable[[Seen], Awaitable[None]] | None = None, extra: str = ""
) -> RawBackend:
    """Answers ``101`` and records every byte received after it.

    ``after_switch`` may write to ``seen.writer``; the default only records.
    """
    backend: RawBackend

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: Head
    ) -> bool:
        seen = Seen(head, writer=writer)
        backend.seen.append(seen)
        writer.write(switching_protocols(head, extra))
        await writer.drain()
        seen.switched_at = time.monotonic()
        if after_switch is not None:
            await after_switch(seen)
        while data := await reader.read(65536):
            seen.received += data
        seen.closed_at = time.monotonic()
        return False

    backend = RawBackend(handler)
    return backend
