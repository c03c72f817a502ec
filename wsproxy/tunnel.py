"""The raw splice between a client and an upstream after ``101``.

Theory of operation
-------------------
Two transports, two small protocols, no tasks.  ``ClientSide`` is installed on
the client's transport (see aiohttp_adapter.take_over) and ``UpstreamSide`` on
the upstream's; each ``data_received`` hands the very bytes object it got to
the other transport's ``write``.  Nothing re-frames, reassembles, copies or
delays: WebSocket frames, extensions (``permessage-deflate``), subprotocols
and even malformed frames pass as they are, so the client and the backend
negotiate everything end to end.

Invariants:

* **Bounded memory.**  Each transport's write buffer has the high-water mark
  ``proxy.tunnel_buffer``.  When the client's buffer passes it, asyncio calls
  ``ClientSide.pause_writing`` and the upstream's reading is paused until
  ``resume_writing``; the same the other way round.  Per direction the proxy
  holds at most the high-water mark plus one read.
* **Half-close.**  A FIN from one side becomes ``write_eof`` on the other where
  the transport supports it (plain TCP), and the opposite direction keeps
  flowing; the tunnel ends when both sides have sent FIN.  Where it cannot
  half-close (TLS), the other side is closed after its buffer drains.
* **Resets propagate.**  A side lost with an error makes the tunnel abort the
  other side with ``SO_LINGER`` 0, so the peer sees a reset too, not a polite
  FIN that would hide the failure.
* **Idle sessions end.**  ``routes[].websocket.idle_timeout`` (default 1h, not
  a 60-second read timeout that kills quiet WebSockets) is checked by one
  timer per session; the hot path only bumps a counter.
* **Seen, not touched.**  After each write, the chunk is shown to that
  direction's passive frame observer (wsframes.py), which only counts; its
  first close frame, or else the first FIN or reset, decides ``closed_by``
  and ``how``.
* **One ending.**  Once both transports are gone, ``on_finished`` is called
  once and ``finished`` resolves.  Nothing else holds the session: the aiohttp
  handler returned when the tunnel started (aiohttp_adapter.take_over).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable
from typing import Literal

from wsproxy.wsframes import ByteCounter, FrameObserver

Side = Literal["client", "upstream", "proxy"]
#: How a session ended: the first close frame, FIN or reset of a side, or the
#: proxy's own reason (``max_lifetime`` is reserved for the limits to come).
How = Literal["close_frame", "fin", "reset", "idle_timeout", "drain", "max_lifetime", "error"]

_LINGER_RESET = struct.pack("ii", 1, 0)

#: A transport closed gently (FIN after its buffer drains) that has not
#: drained after this long is reset: a peer that stopped reading must not
#: keep a finished session, its buffers and its socket alive forever
#: (nginx's send_timeout plays this role).
CLOSE_TIMEOUT = 10.0

#: The idle timer wakes this many times per idle_timeout, so a quiet tunnel is
#: closed between idle_timeout and 1.25 x idle_timeout after its last byte.
_IDLE_CHECKS = 4


def reset_transport(transport: asyncio.Transport) -> None:
    """Close with RST instead of FIN, so the peer learns it was an error."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # A socket already closed raises OSError (asyncio) or ValueError
        # ("negative file descriptor", uvloop): then there is nothing to reset.
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


class Tunnel:
    """One WebSocket session's splice; see the module docstring."""

    __slots__ = (
        "_buffer_limit",
        "_client_lost",
        "_idle_handle",
        "_idle_seen",
        "_idle_ticks",
        "_idle_timeout",
        "_linger_handle",
        "_loop",
        "_upstream_lost",
        "c2u",
        "client_eof",
        "client_side",
        "client_transport",
        "close_code",
        "close_reason",
        "closed_at",
        "closed_by",
        "ended",
        "finished",
        "how",
        "on_finished",
        "started",
        "u2c",
        "upstream_eof",
        "upstream_side",
        "upstream_transport",
    )

    def __init__(
        self,
        upstream_transport: asyncio.Transport,
        *,
        buffer_limit: int,
        idle_timeout: float,
        observe_frames: bool = True,
        allowed_rsv: int = 0,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.upstream_transport = upstream_transport
        kind = FrameObserver if observe_frames else ByteCounter
        #: client-to-upstream and upstream-to-client observers.
        self.c2u = kind(client_side=True, allowed_rsv=allowed_rsv)
        self.u2c = kind(client_side=False, allowed_rsv=allowed_rsv)
        self.c2u.on_close = self._client_close_frame
        self.u2c.on_close = self._upstream_close_frame
        self.close_code: int | None = None
        self.close_reason = ""
        # time.monotonic, not loop.time(): uvloop's clock has millisecond steps,
        # and early closes are often sub-millisecond.
        self.started = self.ended = self.closed_at = time.monotonic()
        self.client_transport: asyncio.Transport | None = None
        self.on_finished: Callable[[Tunnel], None] | None = None
        self.client_side = ClientSide(self)
        self.upstream_side = UpstreamSide(self)
        self.finished: asyncio.Future[None] = self._loop.create_future()
        self.client_eof = False
        self.upstream_eof = False
        self._client_lost = False
        self._upstream_lost = False
        self.closed_by: Side | None = None
        self.how: How | None = None
        self._idle_timeout = idle_timeout
        self._idle_seen = -1
        self._idle_ticks = 0
        self._idle_handle: asyncio.TimerHandle | None = None
        self._linger_handle: asyncio.TimerHandle | None = None
        upstream_transport.set_write_buffer_limits(high=buffer_limit, low=buffer_limit // 4)
        self._buffer_limit = buffer_limit

    def start(
        self,
        client: asyncio.Transport,
        *,
        client_tail: bytes,
        upstream_tail: bytes,
        upstream_eof: bool,
        upstream_lost: tuple[BaseException | None] | None = None,
    ) -> None:
        """Go live: forward what each side sent early, then let bytes flow."""
        self.started = time.monotonic()
        self.client_transport = client
        client.set_write_buffer_limits(high=self._buffer_limit, low=self._buffer_limit // 4)
        self.upstream_transport.set_protocol(self.upstream_side)
        if client_tail:
            self.upstream_transport.write(client_tail)
            self.c2u.feed(client_tail)
        if upstream_tail:
            client.write(upstream_tail)
            self.u2c.feed(upstream_tail)
        if upstream_eof:
            self.on_eof("upstream")
        if upstream_lost is not None:
            # Lost while the 101 was on its way to the client: replay it.
            self.on_lost("upstream", upstream_lost[0])
        elif not self.upstream_transport.is_closing():
            self.upstream_transport.resume_reading()
        self._schedule_idle_check()

    # --- events from the two protocols ------------------------------------

    def on_eof(self, side: Literal["client", "upstream"]) -> None:
        if side == "client":
            self.client_eof = True
            peer = self.upstream_transport
        else:
            self.upstream_eof = True
            peer = self.client_transport  # type: ignore[assignment]
        self._record_end(side, "fin")
        if self.client_eof and self.upstream_eof:
            self._close_both()
        elif peer is not None and peer.can_write_eof() and not peer.is_closing():
            peer.write_eof()
        elif peer is not None:
            self._close_gently(peer)

    def on_lost(self, side: Literal["client", "upstream"], exc: BaseException | None) -> None:
        if side == "client":
            self._client_lost = True
            peer = self.upstream_transport
        else:
            self._upstream_lost = True
            peer = self.client_transport  # type: ignore[assignment]
        if exc is not None:
            self._record_end(side, "reset")
            if peer is not None and not peer.is_closing():
                reset_transport(peer)
        else:
            self._record_end(side, "fin")
            if peer is not None:
                self._close_gently(peer)
        if self._client_lost and self._upstream_lost:
            self._finish()

    def _client_close_frame(self) -> None:
        self._close_frame("client", self.c2u)

    def _upstream_close_frame(self) -> None:
        self._close_frame("upstream", self.u2c)

    def _close_frame(self, side: Side, observer: FrameObserver) -> None:
        if self.close_code is None:
            self.close_code = observer.close_code
            self.close_reason = observer.close_reason
        self._record_end(side, "close_frame")

    @property
    def activity(self) -> int:
        return self.c2u.bytes + self.u2c.bytes

    def close(self, how: How, *, reset: bool = False) -> None:
        """End the session for the proxy's own reasons."""
        self._record_end("proxy", how)
        if reset:
            self._reset_remaining()  # also what a gentle close left draining
        else:
            self._close_both()
        if self.client_transport is None:
            # Not started yet: nothing will report the client side lost.
            self._client_lost = True

    # --- internals --------------------------------------------------------

    def _record_end(self, side: Side, how: How) -> None:
        if self.closed_by is None:
            self.closed_by = side
            self.how = how
            # The session's length is up to this event, not to the teardown:
            # after an upstream FIN the client may keep its half open a while.
            self.closed_at = time.monotonic()

    def _close_both(self) -> None:
        for transport in (self.client_transport, self.upstream_transport):
            if transport is not None:
                self._close_gently(transport)

    def _close_gently(self, transport: asyncio.Transport) -> None:
        """FIN once the buffer drains; a reset if it has not within CLOSE_TIMEOUT."""
        transport.close()
        if self._linger_handle is None and not self.finished.done():
            self._linger_handle = self._loop.call_later(CLOSE_TIMEOUT, self._reset_remaining)

    def _reset_remaining(self) -> None:
        if self._linger_handle is not None:
            self._linger_handle.cancel()
            self._linger_handle = None
        if self.client_transport is not None and not self._client_lost:
            reset_transport(self.client_transport)
        if not self._upstream_lost:
            reset_transport(self.upstream_transport)

    def _finish(self) -> None:
        self.ended = time.monotonic()
        for handle in (self._idle_handle, self._linger_handle):
            if handle is not None:
                handle.cancel()
        self._idle_handle = self._linger_handle = None
        if not self.finished.done():
            self.finished.set_result(None)
            on_finished, self.on_finished = self.on_finished, None
            if on_finished is not None:
                on_finished(self)

    def _schedule_idle_check(self) -> None:
        self._idle_handle = self._loop.call_later(
            self._idle_timeout / _IDLE_CHECKS, self._check_idle
        )

    def _check_idle(self) -> None:
        if self.activity != self._idle_seen:
            self._idle_seen = self.activity
            self._idle_ticks = 0
        else:
            self._idle_ticks += 1
            if self._idle_ticks >= _IDLE_CHECKS:
                self._idle_handle = None
                self.close("idle_timeout")
                return
        self._schedule_idle_check()


class ClientSide(asyncio.Protocol):
    """Installed on the client transport: its bytes go to the upstream."""

    __slots__ = ("_observer", "_tunnel", "_upstream")

    def __init__(self, tunnel: Tunnel) -> None:
        self._tunnel = tunnel
        self._upstream = tunnel.upstream_transport
        self._observer = tunnel.c2u

    def data_received(self, data: bytes) -> None:
        self._upstream.write(data)
        self._observer.feed(data)

    def eof_received(self) -> bool:
        self._tunnel.on_eof("client")
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        self._tunnel.on_lost("client", exc)

    def pause_writing(self) -> None:
        self._upstream.pause_reading()

    def resume_writing(self) -> None:
        if not self._upstream.is_closing():
            self._upstream.resume_reading()


class UpstreamSide(asyncio.Protocol):
    """Installed on the upstream transport: its bytes go to the client."""

    __slots__ = ("_observer", "_tunnel")

    def __init__(self, tunnel: Tunnel) -> None:
        self._tunnel = tunnel
        self._observer = tunnel.u2c

    def data_received(self, data: bytes) -> None:
        self._tunnel.client_transport.write(data)  # type: ignore[union-attr]
        self._observer.feed(data)

    def eof_received(self) -> bool:
        self._tunnel.on_eof("upstream")
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        self._tunnel.on_lost("upstream", exc)

    def pause_writing(self) -> None:
        client = self._tunnel.client_transport
        if client is not None:
            client.pause_reading()

    def resume_writing(self) -> None:
        client = self._tunnel.client_transport
        if client is not None and not client.is_closing():
            client.resume_reading()
