"""Opening an upstream connection for a WebSocket handshake and reading its answer.

The handshake goes to the upstream *before* the client gets any answer, so the
client sees the upstream's real verdict: ``101`` only when the upstream said
``101``, its own ``401``/``403``/``404`` otherwise (docs/design.md, "upstream
first").

The upstream side is a plain ``asyncio.Protocol`` on a connection of our own
(not aiohttp's client): after ``101`` the tunnel re-points this transport at
itself with ``set_protocol`` and nothing of an HTTP client stays in the path.
HTTP/1.1 framing of the handshake and of a non-101 answer (content-length,
chunked, or until close) is h11's job, a sans-IO parser that validates what it
reads, so a malformed answer becomes a clean ``502``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import cast

import h11

from wsproxy.config import Address
from wsproxy.errors import UpstreamFailure, classify, parser_reason

#: Longest upstream response head accepted (status line plus headers).
MAX_RESPONSE_HEAD = 64 * 1024


class UpstreamHandshake(asyncio.Protocol):
    """Speaks HTTP/1.1 with the upstream until ``101`` or the end of a refusal.

    Reading is paused after every chunk and resumed only when the parser
    needs more, so a refusal's body never piles up in memory, and the bytes
    that follow a ``101`` stay in h11's buffer (``trailing_data``) until the
    tunnel is ready to forward them.
    """

    def __init__(self) -> None:
        self.http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None
        self.is_lost = False
        self._waiter: asyncio.Future[None] | None = None

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass: no isinstance.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.http.receive_data(data)
        assert self.transport is not None
        self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.http.receive_data(b"")
        self._wake()
        return True  # keep the write side open; the tunnel decides

    def connection_lost(self, exc: BaseException | None) -> None:
        self.is_lost = True
        self.lost = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # used by the handler

    def send_request(self, method: str, target: str, headers: Sequence[tuple[str, str]]) -> None:
        """Write the request head; raises h11.LocalProtocolError on bad input."""
        assert self.transport is not None
        data = self.http.send(h11.Request(method=method, target=target, headers=list(headers)))
        data = (data or b"") + (self.http.send(h11.EndOfMessage()) or b"")
        self.transport.write(data)

    async def next_event(self, timeout: float) -> h11.Event:
        """The next response event, waiting at most ``timeout`` for bytes."""
        while True:
            try:
                event = self.http.next_event()
            except h11.RemoteProtocolError as exc:
                reason = parser_reason(str(exc))
                raise UpstreamFailure("protocol", f"invalid response ({reason})") from exc
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            if self.is_lost:
                if self.lost is not None:
                    raise classify(self.lost)
                raise UpstreamFailure("reset", "upstream closed the connection before answering")
            if self.http.their_state is h11.CLOSED:
                raise UpstreamFailure("reset", "upstream closed the connection before answering")
            assert self.transport is not None
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            self.transport.resume_reading()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            except TimeoutError as exc:
                raise UpstreamFailure("timeout", "no response in time") from exc
            finally:
                self._waiter = None

    def trailing_data(self) -> bytes:
        """Bytes the upstream sent after the ``101`` head (already read)."""
        data, _closed = self.http.trailing_data
        return bytes(data)

    def saw_eof(self) -> bool:
        return bool(self.http.trailing_data[1])

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_handshake(server: Address, connect_timeout: float) -> UpstreamHandshake:
    """Connect to ``server``; a failure comes back as :class:`UpstreamFailure`."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(connect_timeout):
            _transport, protocol = await loop.create_connection(
                UpstreamHandshake, server.host, server.port
            )
    except TimeoutError as exc:
        raise UpstreamFailure("timeout", "connect timed out") from exc
    except OSError as exc:
        raise classify(exc) from exc
    return protocol
