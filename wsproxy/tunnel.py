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
* **No session holds the loop.**  Observers share one
  :class:`~wsproxy.wsframes.FrameBudget` per server, refilled every loop
  turn.  A chunk with more frames than granted (a flood of tiny frames) is
  still relayed at once, but the rest of its parsing waits for later turns
  (``_catch_up``) and reading that direction stops until it is done: the
  flooder is slowed, everyone else keeps their latency.  An end event (FIN,
  reset, the proxy's own close) that arrives while a backlog is being parsed
  is held until the bytes that came before it are parsed, so a close frame
  in those bytes still counts as first.  The session is reported only once
  every byte it relayed was observed.
* **No mass close holds the loop either.**  Ends (FIN, reset, a lost
  socket) beyond :data:`END_EVENTS_PER_TURN` in one loop turn wait in order
  for the next turns (:class:`EndGate`), each with the time it happened; a
  session with an end waiting has its later ends wait behind it.
* **One ending.**  Once both transports are gone, ``on_finished`` is called
  once and ``finished`` resolves.  Nothing else holds the session: the aiohttp
  handler returned when the tunnel started (aiohttp_adapter.take_over).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from functools import partial
from typing import Literal

from wsproxy.wsframes import GOING_AWAY, ByteCounter, FrameBudget, FrameObserver, encode_close

log = logging.getLogger(__name__)

Side = Literal["client", "upstream", "proxy"]
#: How a session ended: the first close frame, FIN or reset of a side, or the
#: proxy's own reason (``drain`` and ``max_lifetime`` end with 1001: Tunnel.shutdown).
How = Literal["close_frame", "fin", "reset", "idle_timeout", "drain", "max_lifetime", "error"]

_LINGER_RESET = struct.pack("ii", 1, 0)

#: The other side of a session.
_OTHER: dict[str, Literal["client", "upstream"]] = {"client": "upstream", "upstream": "client"}

#: A transport closed gently (FIN after its buffer drains) that has not
#: drained after this long is reset: a peer that stopped reading must not
#: keep a finished session, its buffers and its socket alive forever
#: (nginx's send_timeout plays this role).
CLOSE_TIMEOUT = 10.0

#: The idle timer wakes this many times per idle_timeout, so a quiet tunnel is
#: closed between idle_timeout and 1.25 x idle_timeout after its last byte.
_IDLE_CHECKS = 4


class IdleWatch:
    """The idle checks of every session with one ``idle_timeout``, on one timer.

    A timer per session cost three objects (a timer handle, uvloop's timer,
    a bound method: 300 bytes) for as long as the session lived, and one
    timer callback per session per check.  One timer per distinct timeout
    visits its sessions in one pass instead: about 0.2 ms per thousand
    sessions, every ``idle_timeout / 4``.

    It keeps no reference to its loop of its own (the registry,
    :func:`idle_watch`, holds watches by loop weakly): once its last
    session has left, a closed loop can go.
    """

    __slots__ = ("_handle", "_sessions", "interval")

    def __init__(self, idle_timeout: float) -> None:
        self.interval = idle_timeout / _IDLE_CHECKS
        #: The sessions watched, in start order (a dict as an ordered set).
        self._sessions: dict[Tunnel, None] = {}
        self._handle: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    def add(self, tunnel: Tunnel) -> None:
        self._sessions[tunnel] = None
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self.interval, self._check)

    def discard(self, tunnel: Tunnel) -> None:
        self._sessions.pop(tunnel, None)
        if not self._sessions and self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = None
        quiet = []
        for tunnel in self._sessions:
            try:
                if tunnel.idle_check():
                    quiet.append(tunnel)
            except Exception:  # one session's failure must not stop the others' checks
                log.exception("checking an idle WebSocket session failed")
        for tunnel in quiet:
            self._sessions.pop(tunnel, None)
        if self._sessions:
            self._handle = asyncio.get_running_loop().call_later(self.interval, self._check)
        for tunnel in quiet:
            try:
                tunnel.close("idle_timeout")
            except Exception:  # one session's failure must not keep the others open
                log.exception("closing an idle WebSocket session failed")


#: Each loop's idle watches, by idle timeout (a few routes, a few timeouts).
_WATCHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, IdleWatch]] = (
    weakref.WeakKeyDictionary()
)


def idle_watch(loop: asyncio.AbstractEventLoop, idle_timeout: float) -> IdleWatch:
    """The watch for ``idle_timeout`` on ``loop`` (made on first use)."""
    watches = _WATCHES.get(loop)
    if watches is None:
        watches = _WATCHES[loop] = {}
    watch = watches.get(idle_timeout)
    if watch is None:
        watch = watches[idle_timeout] = IdleWatch(idle_timeout)
    return watch


#: Session end events (a FIN, a reset, a socket lost) handled in one turn of
#: the event loop as they come; past it they wait for the next turns (EndGate).
#: At 128, the longest /healthz answer in a mass close of 9,900 sessions was
#: 47-53 ms in three runs of five (20-35 in the others); at 64, 17-31 ms.
END_EVENTS_PER_TURN = 64

#: The kinds of end event (EndGate): a FIN, a FIN during the proxy's close
#: handshake (Tunnel.shutdown), a transport lost.
_EOF, _CLOSING_EOF, _LOST = 0, 1, 2

_EndEvent = tuple[int, Literal["client", "upstream"], BaseException | None, float]


class EndGate:
    """Bounds the session ends one loop turn handles (one gate per loop).

    A backend restart ends thousands of upstream connections within
    milliseconds, and libuv delivers every ready socket of a poll (up to
    48 x 1,024) before anything else runs.  Handling an end costs 15-40 µs
    (a FIN or close that the kernel carries to the peer over loopback in
    this process's time, a linger timer, the session's bookkeeping): 10,000
    in one poll took one turn of 232 ms of CPU at 9,900 sessions, and
    health checks and every other session's bytes waited.  Past
    ``per_turn`` in a turn, an end waits in a queue with the time it
    happened, and each later turn handles up to ``per_turn`` of those
    besides up to ``per_turn`` new ones, with I/O polled in between.  While
    one of a session's ends waits, its later ends wait behind it: each
    session sees its own events in order.  Costs nothing per session until
    ends pile up.
    """

    __slots__ = ("_drain_handle", "_queue", "_spent", "_unbounded", "deferred", "per_turn")

    def __init__(self, per_turn: int = END_EVENTS_PER_TURN) -> None:
        self.per_turn = per_turn
        self._spent = 0
        #: unbounded() in force (the server's last resets): nothing waits.
        self._unbounded = 0
        #: Sessions with ends waiting (Tunnel._pending_ends), in arrival order.
        self._queue: deque[Tunnel] = deque()
        self._drain_handle: asyncio.Handle | None = None
        #: Ends that waited for a later turn, ever (for tests and curiosity).
        self.deferred = 0

    @property
    def waiting(self) -> int:
        """Sessions with an end waiting."""
        return len(self._queue)

    def admit(self, tunnel: Tunnel) -> bool:
        """Whether an end of ``tunnel`` is handled now (else ``defer`` it)."""
        if tunnel._pending_ends is not None:
            return False
        if self._unbounded:
            return True
        if self._spent >= self.per_turn:
            return False
        if not self._spent:
            asyncio.get_running_loop().call_soon(self._refill)
        self._spent += 1
        return True

    def defer(self, tunnel: Tunnel, event: _EndEvent) -> None:
        self.deferred += 1
        pending = tunnel._pending_ends
        if pending is not None:
            pending.append(event)
            return
        tunnel._pending_ends = [event]
        self._queue.append(tunnel)
        if self._drain_handle is None:
            self._drain_handle = asyncio.get_running_loop().call_soon(self._drain)

    def resume(self, tunnel: Tunnel) -> None:
        """``tunnel``'s waiting ends were interrupted: the rest go first next."""
        self._queue.appendleft(tunnel)
        if self._drain_handle is None:
            self._drain_handle = asyncio.get_running_loop().call_soon(self._drain)

    def _refill(self) -> None:
        self._spent = 0

    def _drain(self) -> None:
        self._drain_handle = None
        queue = self._queue
        handled = 0
        try:
            while queue and handled < self.per_turn:
                handled += queue.popleft().run_pending_ends()
        finally:
            if queue and self._drain_handle is None:
                self._drain_handle = asyncio.get_running_loop().call_soon(self._drain)

    def flush(self) -> None:
        """Handle every waiting end now."""
        queue = self._queue
        while queue:
            queue.popleft().run_pending_ends()

    @contextlib.contextmanager
    def unbounded(self) -> Iterator[None]:
        """Nothing waits while this is in force, and what waited is handled
        now: the server's last resets at shutdown, which must all be
        reported before the process ends, whatever their number."""
        self._unbounded += 1
        try:
            self.flush()
            yield
        finally:
            self._unbounded -= 1


#: Each loop's end gate (EndGate); held weakly, like the idle watches.
_GATES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, EndGate] = weakref.WeakKeyDictionary()


def end_gate(loop: asyncio.AbstractEventLoop) -> EndGate:
    """The end gate of ``loop`` (made on first use)."""
    gate = _GATES.get(loop)
    if gate is None:
        gate = _GATES[loop] = EndGate()
    return gate


#: Why a transport's reading is paused; it resumes when no reason is left.
_HELD_BY_PEER = 1  # the other side's write buffer is above its high-water mark
_HELD_BY_OBSERVER = 2  # this direction's observer has a backlog to parse first
_HELD_BY_END = 4  # the other side is lost, and its loss waits for its turn (EndGate)


def turn_budget(
    loop: asyncio.AbstractEventLoop,
    *,
    per_turn: int = FrameBudget.PER_TURN,
    per_feed: int = FrameBudget.PER_FEED,
    floor: int = FrameBudget.FLOOR,
) -> FrameBudget:
    """A frame budget refilled on the event loop turn after it was first used.

    ``call_soon`` callbacks queued during one turn run at the start of the
    next, before that turn's I/O callbacks, so each turn starts full.
    """
    budget = FrameBudget(per_turn=per_turn, per_feed=per_feed, floor=floor)
    budget.on_first_spend = partial(loop.call_soon, budget.refill)
    return budget


#: Keepalive probes after the idle time, and their interval: a dead peer is
#: found idle + 6 x 10 s after the last byte (Linux's own defaults would
#: take 2 h 11 min).
KEEPALIVE_PROBES = 6
KEEPALIVE_INTERVAL = 10


def set_keepalive(transport: asyncio.BaseTransport, idle: float) -> None:
    """Turn TCP keepalive on for ``transport``'s socket (where the options exist)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError, ValueError):
        # uvloop's stand-in for the socket makes a socket object for every
        # setsockopt: one object here does the four.
        own = socket.socket(sock.family, sock.type, sock.proto, sock.fileno())
        try:
            keepalive_options(own, idle)
        finally:
            own.detach()


def keepalive_options(sock: socket.socket, idle: float) -> None:
    """Keepalive after ``idle`` seconds on ``sock`` (0: off).  On a listening
    socket, every connection it accepts starts with the same options (Linux
    copies them to the accepted socket), at no cost per connection."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1 if idle else 0)
    if idle and hasattr(socket, "TCP_KEEPIDLE"):  # Linux; macOS names it TCP_KEEPALIVE
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(idle)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)


def half_closable(transport: asyncio.BaseTransport) -> bool:
    """Whether ``eof_received`` may keep ``transport`` open: plain TCP can
    half-close; asyncio's and uvloop's TLS transports close after an EOF
    whatever the protocol returns (and log a warning when it returns True).
    Asked while the transport is open: a closed asyncio TLS transport fails
    ``get_extra_info``."""
    return transport.get_extra_info("sslcontext") is None


#: How long a TLS connection's close waits for the peer's close_notify
#: (asyncio's default, 30 s, would hold a connection slot and the drain).
TLS_SHUTDOWN_TIMEOUT = 5.0


def close_transport(transport: asyncio.BaseTransport) -> None:
    """``close()`` once: asyncio's TLS transport closed twice loses its
    protocol, and every later call on it (a reset, ``get_extra_info``) fails
    or does nothing, so the connection could be neither reset nor freed."""
    if not transport.is_closing():
        transport.close()


def reset_transport(transport: asyncio.Transport) -> None:
    """Close with RST instead of FIN, so the peer learns it was an error."""
    try:
        sock = transport.get_extra_info("socket")
    except AttributeError:  # an asyncio TLS transport closed twice: nothing to reach
        sock = None
    if sock is not None:
        # A socket already closed raises OSError (asyncio) or ValueError
        # ("negative file descriptor", uvloop): then there is nothing to reset.
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


#: No observer to wait for (Tunnel._deferred_waits): one shared empty set.
_NO_WAITS: frozenset[FrameObserver] = frozenset()


class Tunnel:
    """One WebSocket session's splice; see the module docstring."""

    __slots__ = (
        "__weakref__",
        "_buffer_limit",
        "_catching_up",
        "_client_holds",
        "_client_lost",
        "_closing",
        "_deferred_end",
        "_deferred_waits",
        "_done",
        "_end_gate",
        "_finish_pending",
        "_finished",
        "_idle_seen",
        "_idle_ticks",
        "_idle_timeout",
        "_idle_watch",
        "_late_close",
        "_lifetime_handle",
        "_linger_handle",
        "_loop",
        "_pending_ends",
        "_upstream_holds",
        "_upstream_lost",
        "c2u",
        "client_eof",
        "client_half_close",
        "client_side",
        "client_transport",
        "close_code",
        "close_reason",
        "closed_at",
        "closed_by",
        "dirty",
        "ended",
        "folded",
        "how",
        "on_finished",
        "started",
        "u2c",
        "upstream_eof",
        "upstream_half_close",
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
        budget: FrameBudget | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        upstream_half_close: bool | None = None,
    ) -> None:
        """``loop``: the running loop, when the caller has it at hand (asking
        for it is a getpid() system call); ``upstream_half_close``: whether
        the upstream transport can stay open after its EOF (not TLS), when
        known (else asked of the transport: half_closable)."""
        self._loop = loop or asyncio.get_running_loop()
        self._end_gate = end_gate(self._loop)
        #: Ends of this session waiting for a later loop turn (EndGate), in order.
        self._pending_ends: list[_EndEvent] | None = None
        self.upstream_transport = upstream_transport
        #: Each side's transport can stay open after its EOF (not TLS).
        self.upstream_half_close = (
            half_closable(upstream_transport)
            if upstream_half_close is None
            else upstream_half_close
        )
        self.client_half_close = True
        kind = FrameObserver if observe_frames else ByteCounter
        #: client-to-upstream and upstream-to-client observers.
        self.c2u = kind(client_side=True, allowed_rsv=allowed_rsv, budget=budget)
        self.u2c = kind(client_side=False, allowed_rsv=allowed_rsv, budget=budget)
        self.close_code: int | None = None
        self.close_reason = ""
        # time.monotonic, not loop.time(): uvloop's clock has millisecond steps,
        # and early closes are often sub-millisecond.
        self.started = self.ended = self.closed_at = time.monotonic()
        self.client_transport: asyncio.Transport | None = None
        #: Where this session says it has counts the metrics have not folded
        #: yet (metrics.SessionCollector.dirty), so a scrape visits only the
        #: sessions that moved; None: nobody collects (tests).
        self.dirty: set[Tunnel] | None = None
        #: The counts the metrics totals already hold of this session (None:
        #: none yet); kept here, not in a table, to cost one slot.
        self.folded: tuple[int, ...] | None = None
        self.on_finished: Callable[[Tunnel], None] | None = None
        #: The protocols installed on the two transports; dropped when the
        #: session ends (_release), with the observers' callbacks, so that
        #: reference counting frees an ended session at once: the cyclic
        #: collector would free it only in a full collection, which at
        #: thousands of sessions stalls the loop for 100 ms and more.
        self.client_side: ClientSide | None = ClientSide(self)
        self.upstream_side: UpstreamSide | None = UpstreamSide(self)
        # Each side is also its direction's close-frame callback: no bound
        # method object per observer for as long as the session lives.
        self.c2u.on_close = self.client_side
        self.u2c.on_close = self.upstream_side
        self._done = False
        #: Made when first asked for (``finished``): most sessions are never waited for.
        self._finished: asyncio.Future[None] | None = None
        self.client_eof = False
        self.upstream_eof = False
        self._client_lost = False
        self._upstream_lost = False
        self.closed_by: Side | None = None
        self.how: How | None = None
        self._idle_timeout = idle_timeout
        self._idle_seen = -1
        self._idle_ticks = 0
        #: Where this session's idle check runs, once it started (IdleWatch).
        self._idle_watch: IdleWatch | None = None
        self._lifetime_handle: asyncio.TimerHandle | None = None
        self._linger_handle: asyncio.TimerHandle | None = None
        # Reasons each transport's reading is paused (_HELD_BY_*).
        self._client_holds = 0
        self._upstream_holds = 0
        # Observers with a catch-up scheduled, and an end event held back
        # until the observers in _deferred_waits have parsed their backlog.
        # (None and _NO_WAITS: no set of its own until there is one.)
        self._catching_up: set[FrameObserver] | None = None
        self._deferred_end: tuple[Side, How, float, FrameObserver | None] | None = None
        self._deferred_waits: frozenset[FrameObserver] = _NO_WAITS
        # The first close frame read after a held-back event (its code counts
        # if that event, a FIN or reset, turns out to be the first).
        self._late_close: FrameObserver | None = None
        self._finish_pending = False
        #: The proxy's close handshake, once shutdown() began.
        self._closing: _Closing | None = None
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
        client_half_close: bool | None = None,
    ) -> None:
        """Go live: forward what each side sent early, then let bytes flow.

        ``client_half_close``: whether the client's transport can stay open
        after its EOF (not TLS), when known (else asked: half_closable)."""
        self.started = time.monotonic()
        self.client_transport = client
        self.client_half_close = (
            half_closable(client) if client_half_close is None else client_half_close
        )
        client.set_write_buffer_limits(high=self._buffer_limit, low=self._buffer_limit // 4)
        assert self.upstream_side is not None
        self.upstream_transport.set_protocol(self.upstream_side)
        if client_tail:
            self.upstream_transport.write(client_tail)
            if not self.c2u.feed(client_tail):
                self.catch_up_later(self.c2u)
        if upstream_tail:
            client.write(upstream_tail)
            if not self.u2c.feed(upstream_tail):
                self.catch_up_later(self.u2c)
        if upstream_eof:
            self.on_eof("upstream")
        if upstream_lost is not None:
            # Lost while the 101 was on its way to the client: replay it.
            self.on_lost("upstream", upstream_lost[0])
        elif not self.upstream_transport.is_closing() and not self._upstream_holds:
            self.upstream_transport.resume_reading()
        self._schedule_idle_check()

    # --- reading, paused for two reasons ------------------------------------

    def hold(self, transport: asyncio.Transport | None, reason: int) -> None:
        """Stop reading ``transport`` until ``release`` with the same reason."""
        if transport is None:
            return
        if transport is self.upstream_transport:
            held, self._upstream_holds = self._upstream_holds, self._upstream_holds | reason
        else:
            held, self._client_holds = self._client_holds, self._client_holds | reason
        if not held and not transport.is_closing():
            transport.pause_reading()

    def release(self, transport: asyncio.Transport | None, reason: int) -> None:
        if transport is None:
            return
        if transport is self.upstream_transport:
            self._upstream_holds &= ~reason
            held = self._upstream_holds
        else:
            self._client_holds &= ~reason
            held = self._client_holds
        if not held and not transport.is_closing():
            transport.resume_reading()

    # --- the observers' backlog ---------------------------------------------

    def catch_up_later(self, observer: FrameObserver) -> None:
        """``observer`` stopped with a backlog: pause its source, parse on later turns."""
        catching_up = self._catching_up
        if catching_up is None:
            catching_up = self._catching_up = set()
        elif observer in catching_up:
            return
        catching_up.add(observer)
        self.hold(self._source(observer), _HELD_BY_OBSERVER)
        self._loop.call_soon(self._catch_up, observer)

    def _source(self, observer: FrameObserver) -> asyncio.Transport | None:
        return self.client_transport if observer is self.c2u else self.upstream_transport

    def _catch_up(self, observer: FrameObserver) -> None:
        if not self._catching_up or observer not in self._catching_up:
            return  # caught up at once by shutdown()
        if not observer.resume():
            self._loop.call_soon(self._catch_up, observer)
            return
        self._caught_up(observer)

    def _caught_up(self, observer: FrameObserver) -> None:
        if self._catching_up is not None:
            self._catching_up.discard(observer)
        if observer in self._deferred_waits:
            self._deferred_waits -= {observer}
            if not self._deferred_waits and self._deferred_end is not None:
                side, how, at, deciding = self._deferred_end
                self._deferred_end = None
                self._set_end(side, how, at, deciding)
        self.release(self._source(observer), _HELD_BY_OBSERVER)
        if self._finish_pending and not self._catching_up:
            self._finish()

    # --- events from the two protocols ------------------------------------

    def end_event(
        self,
        kind: int,
        side: Literal["client", "upstream"],
        exc: BaseException | None = None,
    ) -> None:
        """A FIN (``_EOF``, ``_CLOSING_EOF``) or loss (``_LOST``) of ``side``:
        handled now, or on a later loop turn when this turn had its share
        (EndGate)."""
        if self._end_gate.admit(self):
            self._handle_end(kind, side, exc, None)
            return
        if kind == _LOST:
            # Until the loss is handled, what the other side sends would be
            # written into a transport that is gone: it waits in the kernel.
            self.hold(self._transport(_OTHER[side]), _HELD_BY_END)
        self._end_gate.defer(self, (kind, side, exc, time.monotonic()))

    def _handle_end(
        self,
        kind: int,
        side: Literal["client", "upstream"],
        exc: BaseException | None,
        at: float | None,
    ) -> None:
        if kind == _EOF:
            self.on_eof(side, at)
        elif kind == _CLOSING_EOF:
            self._closing_eof(side, at)
        else:
            if at is not None:  # it waited: the other side was held meanwhile
                self.release(self._transport(_OTHER[side]), _HELD_BY_END)
            self.on_lost(side, exc, at)

    def run_pending_ends(self) -> int:
        """Handle this session's waiting ends, in order; how many there were."""
        pending = self._pending_ends
        if pending is None:
            return 0
        count = 0
        # One at a time, and still marked pending until the last: an end
        # that an earlier one brings about must queue behind the rest.
        try:
            while pending:
                kind, side, exc, at = pending.pop(0)
                count += 1
                try:
                    self._handle_end(kind, side, exc, at)
                except Exception:  # the session's other ends, and other sessions', still run
                    log.exception("ending a WebSocket session failed")
        finally:
            if pending:
                # Stopped by a BaseException: what is left waits for the
                # next turn, not behind a list nobody drains any more.
                self._end_gate.resume(self)
            else:
                self._pending_ends = None
        return count

    def on_eof(self, side: Literal["client", "upstream"], at: float | None = None) -> None:
        """``side`` sent FIN (at ``at``, when it waited for a later turn)."""
        if side == "client":
            self.client_eof = True
            peer = self.upstream_transport
        else:
            self.upstream_eof = True
            peer = self.client_transport  # type: ignore[assignment]
        self._record_end(side, "fin", at=at)
        if self.client_eof and self.upstream_eof:
            self._close_both()
        elif peer is not None and peer.can_write_eof() and not peer.is_closing():
            peer.write_eof()
        elif peer is not None:
            self._close_gently(peer)

    def on_lost(
        self,
        side: Literal["client", "upstream"],
        exc: BaseException | None,
        at: float | None = None,
    ) -> None:
        """``side``'s transport is gone (``exc``: with an error)."""
        if side == "client":
            self._client_lost = True
            peer = self.upstream_transport
        else:
            self._upstream_lost = True
            peer = self.client_transport  # type: ignore[assignment]
        if exc is not None:
            self._record_end(side, "reset", at=at)
            if peer is not None and not peer.is_closing():
                reset_transport(peer)
        else:
            self._record_end(side, "fin", at=at)
            if peer is not None:
                if self._awaits_close(_OTHER[side]):
                    # The peer got the proxy's close and owes its own: it has
                    # CLOSE_TIMEOUT for it, not an immediate close.
                    self._arm_linger()
                else:
                    self._close_gently(peer)
        if self._client_lost and self._upstream_lost:
            self._finish()

    def _awaits_close(self, side: Literal["client", "upstream"]) -> bool:
        """During shutdown(): ``side`` has the proxy's close frame, not yet its answer."""
        closing = self._closing
        return closing is not None and side in closing.sent and side not in closing.heard

    def _client_close_frame(self) -> None:
        self._close_frame("client", self.c2u)

    def _upstream_close_frame(self) -> None:
        self._close_frame("upstream", self.u2c)

    def _close_frame(self, side: Side, observer: FrameObserver) -> None:
        # A FIN or reset that waits for its turn (EndGate) came before this.
        self.run_pending_ends()
        if self.closed_by is not None:
            # How it ended is decided; the code is still the first close frame's.
            if self.close_code is None:
                self._take_close_code(observer)
            return
        deferred = self._deferred_end
        if deferred is None:
            self._record_end(side, "close_frame", observer)
        elif observer in self._deferred_waits:
            # These bytes arrived before the held-back event: they came first.
            self._deferred_end = None
            self._deferred_waits = _NO_WAITS
            self._set_end(side, "close_frame", deferred[2], observer)
        elif self._late_close is None:
            # Arrived after the held-back event: the first close frame after it.
            self._late_close = observer

    def _take_close_code(self, observer: FrameObserver) -> None:
        self.close_code = observer.close_code
        self.close_reason = observer.close_reason

    @property
    def activity(self) -> int:
        return self.c2u.bytes + self.u2c.bytes

    def expire_after(self, seconds: float) -> None:
        """``routes[].websocket.max_lifetime``: shut down (``1001``) in ``seconds``."""
        if self._lifetime_handle is not None:
            self._lifetime_handle.cancel()
        self._lifetime_handle = self._loop.call_later(seconds, self.shutdown, "max_lifetime")

    def keep_alive(self, idle: float) -> None:
        """TCP keepalive on the upstream socket: a peer that vanished (a
        pulled cable, a NAT that forgot the flow) ends the session within
        minutes instead of never, since a quiet WebSocket sends nothing to
        find out.  The client's socket has it from its listener
        (listeners.Listener.set_keepalive)."""
        set_keepalive(self.upstream_transport, idle)

    def shutdown(self, how: How = "drain") -> None:
        """End the session for the proxy's own reason with ``1001 Going Away``.

        Each direction goes on until the frame in progress ends (a 1 MiB
        frame half through is finished first), then carries one close frame
        of the proxy's: unmasked to the client, masked to the upstream (RFC
        6455 §5.1).  From there that direction's bytes are no longer relayed
        but watched for the peer's own close frame; a side that has both
        received the proxy's close and sent its own is closed (the close
        handshake, §7.1.2).  The caller resets what is left after its grace
        period.

        Where no frame boundary can be known (the observer off, or it met a
        protocol violation) the session ends with FIN instead; where a close
        handshake is already under way it is left to finish.
        """
        self.run_pending_ends()  # what happened before this comes first
        if self._done or self._closing is not None:
            return
        for observer in list(self._catching_up or ()):
            # The bytes relayed before now must be parsed to know where
            # their frames end (at most one chunk each).
            while not observer.resume():
                pass
            self._caught_up(observer)
        if self.closed_by is not None or self.c2u.saw_close or self.u2c.saw_close:
            if not (self.c2u.saw_close or self.u2c.saw_close):
                self.close(how)  # a half-closed session: no handshake to wait for
            return
        client = self.client_transport
        if (
            client is None
            or type(self.c2u) is ByteCounter
            or self.c2u.error is not None
            or self.u2c.error is not None
        ):
            self.close(how)
            return
        self._record_end("proxy", how)
        self.close_code, self.close_reason = GOING_AWAY, ""
        self._closing = _Closing()
        client.set_protocol(ClosingSide(self, "client"))
        self.upstream_transport.set_protocol(ClosingSide(self, "upstream"))
        for source in ("client", "upstream"):
            self._closing_data(source, b"")  # at a boundary already: the close goes now

    def close(self, how: How, *, reset: bool = False) -> None:
        """End the session for the proxy's own reasons."""
        self.run_pending_ends()  # what happened before this comes first
        self._record_end("proxy", how)
        if reset:
            self._reset_remaining()  # also what a gentle close left draining
        else:
            self._close_both()
        if self.client_transport is None:
            # Not started yet: nothing will report the client side lost.
            self._client_lost = True

    # --- the proxy's close handshake (shutdown) ----------------------------

    def _closing_data(self, source: Literal["client", "upstream"], data: bytes) -> None:
        """``data`` from ``source`` once shutdown() began (ClosingSide)."""
        if self.dirty is not None:
            self.dirty.add(self)
        closing = self._closing
        assert closing is not None
        dest: asyncio.Transport | None
        dest_side: Literal["client", "upstream"]
        if source == "client":
            observer, dest, dest_side = self.c2u, self.upstream_transport, "upstream"
        else:
            observer, dest, dest_side = self.u2c, self.client_transport, "client"
        assert dest is not None
        if dest_side not in closing.sent:
            # Relay up to the end of the frame in progress, then the close.
            taken = observer.feed_to_boundary(data)
            if taken and not dest.is_closing():
                dest.write(data[:taken] if taken < len(data) else data)
            if observer.error is not None:
                self.close(self.how or "drain")  # no boundary to be found any more
                return
            if observer.in_frame:
                return
            data = data[taken:]
            if observer.saw_close:
                # The source's own close frame went through just now: the
                # destination has its close, and the source is done.
                closing.heard.add(source)
            elif not dest.is_closing():
                mask = os.urandom(4) if dest_side == "upstream" else None
                dest.write(encode_close(GOING_AWAY, mask))
            closing.sent.add(dest_side)
            self._closing_done(dest_side)
        if data and source not in closing.heard:
            watcher = closing.watcher(source, observer)
            watcher.feed(data)
            # Its close frame; or a framing violation, after which no close
            # frame of its can be recognised any more.
            if watcher.saw_close or watcher.error is not None:
                closing.heard.add(source)
        self._closing_done(source)

    def _transport(self, side: Literal["client", "upstream"]) -> asyncio.Transport | None:
        return self.client_transport if side == "client" else self.upstream_transport

    def _closing_eof(self, side: Literal["client", "upstream"], at: float | None = None) -> None:
        """A FIN from ``side`` once shutdown() began: it will send nothing more."""
        closing = self._closing
        # Still there if this FIN waited (EndGate): the session's losses,
        # which end it and drop _closing, wait behind it.
        assert closing is not None
        closing.heard.add(side)
        self.on_eof(side, at)
        self._closing_done(side)

    def _closing_done(self, side: Literal["client", "upstream"]) -> None:
        """Close ``side`` once it got the proxy's close and sent its own.

        The other side, if it got the proxy's close but has not answered,
        gets a FIN behind it (half-close): nothing will be relayed to it any
        more, and a peer that ignores close frames still sees the end.
        """
        closing = self._closing
        assert closing is not None
        if side not in closing.sent or side not in closing.heard:
            return
        transport = self._transport(side)
        if transport is None:
            return
        self._close_gently(transport)
        other = _OTHER[side]
        peer = self._transport(other)
        if (
            peer is not None
            and other in closing.sent
            and other not in closing.heard
            and peer.can_write_eof()
            and not peer.is_closing()
        ):
            peer.write_eof()

    # --- internals --------------------------------------------------------

    def _record_end(
        self,
        side: Side,
        how: How,
        observer: FrameObserver | None = None,
        *,
        at: float | None = None,
    ) -> None:
        """The first closing event; ``observer`` is the one that read its
        close frame; ``at``: when it happened, if not now (EndGate)."""
        if self.closed_by is not None or self._deferred_end is not None:
            return
        now = time.monotonic() if at is None else at
        if self._catching_up:
            # Bytes that arrived before this event are still being parsed;
            # a close frame among them came first (see _close_frame).
            self._deferred_end = (side, how, now, observer)
            self._deferred_waits = frozenset(self._catching_up or ())
            return
        self._set_end(side, how, now, observer)

    def _set_end(
        self, side: Side, how: How, now: float, observer: FrameObserver | None = None
    ) -> None:
        self.closed_by = side
        self.how = how
        # The session's length is up to this event, not to the teardown:
        # after an upstream FIN the client may keep its half open a while.
        self.closed_at = now
        # The code is the deciding close frame's, or else the first one after.
        source = observer or self._late_close
        if source is not None:
            self._take_close_code(source)

    def _close_both(self) -> None:
        for transport in (self.client_transport, self.upstream_transport):
            if transport is not None:
                self._close_gently(transport)

    def _close_gently(self, transport: asyncio.Transport) -> None:
        """FIN once the buffer drains; a reset if it has not within CLOSE_TIMEOUT."""
        close_transport(transport)
        self._arm_linger()

    def _arm_linger(self) -> None:
        """Whatever is still open in CLOSE_TIMEOUT is reset."""
        if self._linger_handle is None and not self._done:
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
        if self._catching_up:
            # Report only once every relayed byte has been observed.
            self._finish_pending = True
            return
        self.ended = time.monotonic()
        for handle in (self._linger_handle, self._lifetime_handle):
            if handle is not None:
                handle.cancel()
        self._linger_handle = self._lifetime_handle = None
        if self._idle_watch is not None:
            self._idle_watch.discard(self)
            self._idle_watch = None
        if not self._done:
            self._done = True
            on_finished, self.on_finished = self.on_finished, None
            try:
                if on_finished is not None:
                    on_finished(self)
            finally:
                self._release()
                # Someone who waited and gave up (wait_for) cancelled it.
                if self._finished is not None and not self._finished.done():
                    self._finished.set_result(None)

    def _release(self) -> None:
        """Break the cycles through this ended session (see ``client_side``).

        Both transports are lost by now and dropped their protocols; the
        counts stay, for whoever still holds the session.
        """
        self.client_side = self.upstream_side = None
        self.c2u.on_close = self.u2c.on_close = None
        self._closing = None

    @property
    def finished(self) -> asyncio.Future[None]:
        """Resolved when the session has ended."""
        future = self._finished
        if future is None:
            future = self._finished = self._loop.create_future()
            if self._done:
                future.set_result(None)
        return future

    def _schedule_idle_check(self) -> None:
        self._idle_watch = idle_watch(self._loop, self._idle_timeout)
        self._idle_watch.add(self)

    def idle_check(self) -> bool:
        """One of the idle watch's checks: True when the session has been
        quiet for ``_IDLE_CHECKS`` checks in a row (the watch then closes it)."""
        activity = self.activity
        if activity != self._idle_seen:
            self._idle_seen = activity
            self._idle_ticks = 0
            return False
        self._idle_ticks += 1
        if self._idle_ticks >= _IDLE_CHECKS:
            self._idle_watch = None
            return True
        return False


class ClientSide(asyncio.Protocol):
    """Installed on the client transport: its bytes go to the upstream."""

    __slots__ = ("_observer", "_tunnel", "_upstream")

    def __init__(self, tunnel: Tunnel) -> None:
        self._tunnel = tunnel
        self._upstream = tunnel.upstream_transport
        self._observer = tunnel.c2u

    def __call__(self) -> None:
        """The client's first close frame is complete (FrameObserver.on_close)."""
        self._tunnel._client_close_frame()

    def data_received(self, data: bytes) -> None:
        self._upstream.write(data)
        tunnel = self._tunnel
        dirty = tunnel.dirty
        if dirty is not None:
            dirty.add(tunnel)
        if not self._observer.feed(data):
            tunnel.catch_up_later(self._observer)

    def eof_received(self) -> bool:
        self._tunnel.end_event(_EOF, "client")
        return self._tunnel.client_half_close

    def connection_lost(self, exc: BaseException | None) -> None:
        self._tunnel.end_event(_LOST, "client", exc)

    def pause_writing(self) -> None:
        self._tunnel.hold(self._upstream, _HELD_BY_PEER)

    def resume_writing(self) -> None:
        self._tunnel.release(self._upstream, _HELD_BY_PEER)


class UpstreamSide(asyncio.Protocol):
    """Installed on the upstream transport: its bytes go to the client."""

    __slots__ = ("_observer", "_tunnel")

    def __init__(self, tunnel: Tunnel) -> None:
        self._tunnel = tunnel
        self._observer = tunnel.u2c

    def __call__(self) -> None:
        """The upstream's first close frame is complete (FrameObserver.on_close)."""
        self._tunnel._upstream_close_frame()

    def data_received(self, data: bytes) -> None:
        tunnel = self._tunnel
        tunnel.client_transport.write(data)  # type: ignore[union-attr]
        dirty = tunnel.dirty
        if dirty is not None:
            dirty.add(tunnel)
        if not self._observer.feed(data):
            tunnel.catch_up_later(self._observer)

    def eof_received(self) -> bool:
        self._tunnel.end_event(_EOF, "upstream")
        return self._tunnel.upstream_half_close

    def connection_lost(self, exc: BaseException | None) -> None:
        self._tunnel.end_event(_LOST, "upstream", exc)

    def pause_writing(self) -> None:
        self._tunnel.hold(self._tunnel.client_transport, _HELD_BY_PEER)

    def resume_writing(self) -> None:
        self._tunnel.release(self._tunnel.client_transport, _HELD_BY_PEER)


class _Closing:
    """Where the proxy's close handshake stands, per side (Tunnel.shutdown)."""

    __slots__ = ("_watchers", "heard", "sent")

    def __init__(self) -> None:
        #: Sides the proxy's close frame was written to.
        self.sent: set[str] = set()
        #: Sides whose own close frame arrived (or that broke framing after it).
        self.heard: set[str] = set()
        self._watchers: dict[str, FrameObserver] = {}

    def watcher(self, side: Literal["client", "upstream"], relayed: FrameObserver) -> FrameObserver:
        """An observer of the bytes ``side`` sends once they are no longer
        relayed (``relayed`` stopped at a frame boundary): only its close
        frame matters, the session's counts stop."""
        watcher = self._watchers.get(side)
        if watcher is None:
            watcher = self._watchers[side] = relayed.successor()
        return watcher


class ClosingSide(asyncio.Protocol):
    """Installed on both transports by Tunnel.shutdown(): bytes go through
    ``_closing_data``; the rest is as ClientSide and UpstreamSide do."""

    __slots__ = ("_side", "_tunnel")

    def __init__(self, tunnel: Tunnel, side: Literal["client", "upstream"]) -> None:
        self._tunnel = tunnel
        self._side: Literal["client", "upstream"] = side

    def _peer(self) -> asyncio.Transport | None:
        return self._tunnel._transport(_OTHER[self._side])

    def data_received(self, data: bytes) -> None:
        self._tunnel._closing_data(self._side, data)

    def eof_received(self) -> bool:
        tunnel = self._tunnel
        tunnel.end_event(_CLOSING_EOF, self._side)
        return tunnel.client_half_close if self._side == "client" else tunnel.upstream_half_close

    def connection_lost(self, exc: BaseException | None) -> None:
        self._tunnel.end_event(_LOST, self._side, exc)

    def pause_writing(self) -> None:
        self._tunnel.hold(self._peer(), _HELD_BY_PEER)

    def resume_writing(self) -> None:
        self._tunnel.release(self._peer(), _HELD_BY_PEER)
