"""Connections to upstream servers: per-server keep-alive pools, one request at a time.

Theory of operation
-------------------
:class:`UpstreamConnection` is an ``asyncio.Protocol`` that sends one
request and parses its response with llhttp
(``httptools.HttpResponseParser``), handing the events to a
:class:`Receiver` (the relay in wsproxy.forward).  It never pipelines: the
next request goes out only after the previous response ended, which is what
makes a connection safe to reuse.

:class:`ServerPool` keeps one server's idle connections (newest first, so
the others age out), bounded by ``keepalive_timeout`` (idle longer: closed)
and ``max_connections`` (open at once, busy or idle; a request waits for a
slot at most ``connect_timeout`` and then gets ``504``, counted as a pool
wait, not as the server's failure).

What a pooled connection can tell us about its server:

* A FIN or reset while idle: the connection leaves the pool at once.
* A FIN or reset after a reused connection was handed a request, before
  any byte of the response: the server closed it just as we sent
  (``Stale``); the relay retries an idempotent bodiless request once on a
  fresh connection (RFC 9112 §9.3.1.1).
* Anything after a complete response that was not asked for (bytes after a
  ``HEAD`` answer, a second response): the connection is not reused.

llhttp gaps filled here: it cannot be told that a response answers ``HEAD``
(it would wait for the ``Content-Length`` it announces), so the message ends
at its head and a fresh parser takes the connection; it has no end-of-input
call, so a body delimited by the connection's close ends at ``eof_received``
(a reset there is a cut, never a complete body); it accepts status codes
outside ``100``-``599``, which are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol, cast

import httptools

from wsproxy.config import Address, Upstream
from wsproxy.errors import UpstreamFailure, classify, parser_reason
from wsproxy.headers import NOTABLE_LENGTHS, NOTABLE_RESPONSE_FIELDS, NotableField
from wsproxy.tunnel import TLS_SHUTDOWN_TIMEOUT, close_transport, half_closable

#: Longest upstream response head accepted (status line plus headers).
MAX_RESPONSE_HEAD = 64 * 1024
#: Most header fields in one upstream response head.
MAX_RESPONSE_HEADERS = 512


class Stale(Exception):
    """A reused connection closed before any byte of the response."""

    def __init__(self, failure: UpstreamFailure) -> None:
        super().__init__(failure)
        self.failure = failure


class PoolTimeout(Exception):
    """No connection slot came free within ``connect_timeout``."""


class Receiver(Protocol):
    """What an upstream connection reports to (the relay)."""

    def on_informational(self, status: int) -> None: ...

    def on_head(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        notable: list[NotableField],
        has_length: bool,
    ) -> None:
        """A final response head; ``headers`` as received (names' case kept),
        ``notable`` the framing and hop-by-hop fields among them."""

    def on_switch(self, tail: bytes) -> None:
        """``101`` with ``Upgrade``: ``tail`` is what followed its head."""

    def on_body(self, data: bytes) -> None: ...

    def on_complete(self) -> None: ...

    def on_failed(self, failure: UpstreamFailure | Stale) -> None: ...

    def flush(self) -> None:
        """The end of one read: a held-back head may go now."""

    def upstream_paused(self, paused: bool) -> None:
        """The connection's write buffer is full (True) or drained (False)."""


class _Protocol(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UpstreamConnection(asyncio.Protocol):
    """One connection to an upstream server; see the module docstring."""

    # Slots, not a __dict__: past 30 attributes an instance dict no longer
    # shares its keys with the class's other instances, so every connection
    # built a dict of its own, resized three times (about 3x the cost of
    # filling the slots), and every attribute access took the slower path.
    __slots__ = (
        "__weakref__",
        "_complete",
        "_head_done",
        "_head_size",
        "_headers",
        "_in_head",
        "_informational",
        "_keep_alive",
        "_last_read",
        "_notable",
        "_raw_since_progress",
        "_read_timeout",
        "_reading_paused",
        "_reason",
        "_response_seen",
        "_timer",
        "_until_close",
        "broken",
        "counted",
        "eof",
        "generation",
        "half_close",
        "head_request",
        "idle_since",
        "loop",
        "lost",
        "lost_exc",
        "parser",
        "pool",
        "receiver",
        "reused",
        "switched",
        "transport",
    )

    # One request's and response's state, fresh for each (_exchange_begins).
    head_request: bool
    _read_timeout: float
    _complete: bool
    _keep_alive: bool
    _head_done: bool
    _response_seen: bool
    _until_close: bool
    _informational: bool
    _raw_since_progress: int

    def __init__(self, pool: ServerPool | None = None) -> None:
        self.pool = pool
        #: The pool's TLS generation when this connection was made (ServerPool.renew).
        self.generation = pool.generation if pool is not None else 0
        self.half_close = True
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.receiver: Receiver | None = None
        self.reused = False
        self.idle_since = 0.0
        self.lost = False
        self.lost_exc: BaseException | None = None
        self.eof = False
        #: Set when something makes the connection unfit for another request.
        self.broken = False
        self.switched = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._notable: list[NotableField] = []
        self._reason = b""
        self._head_size = 0
        self._in_head = False
        self._reading_paused = False
        self._last_read = 0.0
        self._exchange_begins(False, 0.0)
        self._timer: asyncio.TimerHandle | None = None
        self.counted = pool is not None

    # --- asyncio callbacks ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        #: Not TLS: may stay open after the server's EOF (a tunnel's half-close).
        self.half_close = half_closable(transport)
        # TCP_NODELAY: asyncio and uvloop set it on every TCP transport.

    def data_received(self, data: bytes) -> None:
        self._last_read = self.loop.time()
        receiver = self.receiver
        if receiver is None:
            self.broken = True  # bytes nobody asked for
            self.close()
            return
        # httptools grows an unfinished field (a header, a trailer, a chunk
        # extension) in one buffer: bytes that bring no body are counted
        # (on_body and the end of the head start the count again).
        self._raw_since_progress += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._switch(data[int(exc.args[0]) :])
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            detail = cause.detail if isinstance(cause, _Protocol) else "invalid response"
            self._fail(UpstreamFailure("protocol", detail))
        except httptools.HttpParserError as exc:
            if self._complete:
                self.broken = True  # more than the one response: not reused
            elif self.parser.get_status_code() == 101:
                self._fail(UpstreamFailure("protocol", "101 without an Upgrade header"))
            else:
                reason = parser_reason(str(exc.args[0]) if exc.args else "")
                self._fail(UpstreamFailure("protocol", f"invalid response ({reason})"))
        receiver = self.receiver
        if receiver is not None:
            if self._raw_since_progress > MAX_RESPONSE_HEAD:
                self._fail(UpstreamFailure("protocol", "response head or trailer too large"))
                self.abort()
                return
            receiver.flush()
        elif self.broken:
            self.close()  # bytes after its response: never reused
        if self.head_request and self._complete:
            # llhttp would read a body after the head of a HEAD answer.
            self.parser = httptools.HttpResponseParser(self)
            self.head_request = False

    def eof_received(self) -> bool:
        self.eof = True
        if self.switched:
            # The tunnel decides (where TLS lets a transport stay open).
            return self.half_close
        if self.receiver is not None and self._until_close and self._head_done:
            self._message_complete()  # a body delimited by the close
        self.broken = True
        self._end(None)
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self.lost_exc = exc
        self._stop_timer()
        if self.switched:
            return
        self.broken = True
        self._end(exc)

    def pause_writing(self) -> None:
        if self.receiver is not None:
            self.receiver.upstream_paused(True)

    def resume_writing(self) -> None:
        if self.receiver is not None:
            self.receiver.upstream_paused(False)

    # --- llhttp callbacks -------------------------------------------------

    def on_message_begin(self) -> None:
        self._response_seen = True
        self._headers = []
        self._notable = []
        self._reason = b""
        self._head_size = 0
        self._in_head = True

    def on_status(self, reason: bytes) -> None:
        self._reason += reason
        self._head_size += len(reason)
        if self._head_size > MAX_RESPONSE_HEAD:
            raise _Protocol("response head too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer: dropped
        # The head's size is checked when it is complete (on_headers_complete).
        headers = self._headers
        if len(name) in NOTABLE_LENGTHS:  # most names are not: no lower() for them
            lower = name.lower()
            if lower in NOTABLE_RESPONSE_FIELDS:
                self._notable.append((len(headers), lower, value))
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        # Every byte of this head was counted raw (data_received) since the
        # exchange began or the last progress, and the raw bytes are at least
        # the measured size (reason, names and values): only a head whose raw
        # count is over the limit can be, so only such a head is measured.
        # (A read brings at most the transport's read size, so the fields
        # held meanwhile are bounded too.)
        if self._raw_since_progress > MAX_RESPONSE_HEAD:
            size = self._head_size + sum(len(n) + len(v) for n, v in self._headers)
            if size > MAX_RESPONSE_HEAD:
                raise _Protocol("response head too large")
        if len(self._headers) > MAX_RESPONSE_HEADERS:
            raise _Protocol("too many header fields")
        status = self.parser.get_status_code()
        if not 100 <= status <= 599:
            raise _Protocol("invalid status code")
        receiver = self.receiver
        assert receiver is not None
        if status < 200 and status != 101:
            self._informational = True
            receiver.on_informational(status)
            return
        if status == 101:
            return  # llhttp stops here (on_switch), or refuses it without Upgrade
        # Progress: a final head (1xx heads bring no body; what follows one
        # in the same read stays counted).
        self._raw_since_progress = 0
        self._head_done = True
        has_length = False
        codings: list[bytes] = []
        for _, lower, value in self._notable:
            if lower == b"content-length":
                has_length = True
            elif lower == b"transfer-encoding":
                codings += [c.strip().lower() for c in value.split(b",") if c.strip()]
        # RFC 9112 §6.3: no body after HEAD, 204 and 304; a transfer coding
        # other than a final chunked, or no framing at all, runs to the close.
        if codings and codings != [b"chunked"]:
            # A coding the proxy would drop while re-framing (nginx: 502 too).
            raise _Protocol("unsupported transfer coding")
        no_body = self.head_request or status in (204, 304)
        chunked = bool(codings)  # only chunked is left
        self._until_close = not no_body and not chunked and not has_length
        receiver.on_head(status, self._reason, self._headers, self._notable, has_length)
        if self.head_request:
            self._message_complete()

    def on_body(self, body: bytes) -> None:
        self._raw_since_progress = 0
        if self._complete:
            self.broken = True  # bytes after a HEAD answer
            return
        if self.receiver is not None:
            self.receiver.on_body(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self.parser.get_status_code() == 101:
            return  # llhttp stops next (_switch), or refuses a 101 without Upgrade
        if not self._complete:
            self._message_complete()

    # --- the request in flight --------------------------------------------

    def start(
        self, receiver: Receiver, head: bytes, read_timeout: float, *, head_request: bool
    ) -> None:
        """Send a request head; the response goes to ``receiver``."""
        assert self.transport is not None
        self.receiver = receiver
        self._exchange_begins(head_request, read_timeout)
        self._last_read = self.loop.time()
        if self._timer is None:
            # One timer for many requests on a kept-alive connection: when it
            # fires it looks at the last read and re-arms (_check_read).
            self._timer = self.loop.call_later(read_timeout, self._check_read)
        self.transport.write(head)

    def _exchange_begins(self, head_request: bool, read_timeout: float) -> None:
        """The state of one request and its response, fresh."""
        self.head_request = head_request
        self._read_timeout = read_timeout
        self._complete = False
        self._keep_alive = False
        self._head_done = False
        self._response_seen = False
        self._until_close = False
        self._informational = False
        self._raw_since_progress = 0

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.lost:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.lost:
            self._reading_paused = False
            self._last_read = self.loop.time()
            self.transport.resume_reading()

    @property
    def keep_alive(self) -> bool:
        transport = self.transport
        return (
            not self.broken
            and not self.eof
            and transport is not None
            and not transport.is_closing()
            and self._keep_alive
        )

    def close(self) -> None:
        if self.transport is not None and not self.lost:
            close_transport(self.transport)  # once: see tunnel.close_transport

    def abort(self) -> None:
        self.broken = True
        if self.transport is not None and not self.lost:
            self.transport.abort()

    def abandon(self) -> None:
        """Drop the connection for a reason of ours (the client left, a
        timer): its loss is reported to nobody, so it never counts as the
        upstream's failure."""
        self.receiver = None
        self.abort()

    def _check_read(self) -> None:
        self._timer = None
        if self.receiver is None or self.lost:
            return
        remaining = self._last_read + self._read_timeout - self.loop.time()
        if self._reading_paused or remaining > 0:
            delay = self._read_timeout if self._reading_paused else remaining
            self._timer = self.loop.call_later(delay, self._check_read)
            return
        self._fail(UpstreamFailure("timeout", "no response in time"))
        self.abort()

    def _switch(self, tail: bytes) -> None:
        """``101`` with ``Upgrade``: reading stops until the tunnel takes over."""
        receiver = self.receiver
        assert receiver is not None
        self.switched = True
        self._stop_timer()
        if self.transport is not None and not self.lost:
            self.transport.pause_reading()
        receiver.on_head(101, self._reason, self._headers, self._notable, False)
        receiver.on_switch(tail)

    def detach(self) -> None:
        """The tunnel owns the transport now: drop the parser and the relay.

        The parser and this protocol hold each other; without this the pair
        (and the relay, the request) would wait for the garbage collector.
        """
        self.receiver = None
        del self.parser

    def _message_complete(self) -> None:
        self._complete = True
        # Read now: llhttp resets its flags once the callback returns.
        self._keep_alive = self.parser.should_keep_alive()
        receiver, self.receiver = self.receiver, None
        if receiver is not None:
            receiver.on_complete()

    def _fail(self, failure: UpstreamFailure | Stale) -> None:
        self.broken = True
        receiver, self.receiver = self.receiver, None
        self._stop_timer()
        if receiver is not None:
            receiver.on_failed(failure)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _end(self, exc: BaseException | None) -> None:
        """The connection is closing or gone."""
        if self.receiver is not None:
            if exc is not None:
                failure = classify(exc)
            elif self._response_seen:
                failure = UpstreamFailure(
                    "reset", "connection closed in the middle of the response"
                )
            else:
                failure = UpstreamFailure(
                    "reset", "upstream closed the connection before answering"
                )
            # A reused connection closed before any byte of its response: the
            # server dropped it as we sent (the relay may retry).
            stale = self.reused and not self._response_seen
            self._fail(Stale(failure) if stale else failure)
        if self.pool is not None:
            self.pool.forget(self)


async def connect(
    server: Address,
    timeout: float,
    factory: Callable[[], UpstreamConnection],
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> UpstreamConnection:
    """Open a connection (and its TLS handshake when ``tls``); a failure
    comes back as :class:`UpstreamFailure`."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            _transport, protocol = await loop.create_connection(
                factory,
                server.host,
                server.port,
                ssl=tls,
                server_hostname=server_hostname if tls is not None else None,
                # An upstream that ignores our close_notify must not hold
                # its slot (max_connections) for asyncio's default 30 s.
                ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT if tls is not None else None,
            )
    except TimeoutError as exc:
        raise UpstreamFailure("timeout", "connect timed out", connecting=True) from exc
    except OSError as exc:
        failure = classify(exc)
        failure.connecting = True
        raise failure from exc
    return protocol


class ServerPool:
    """Keep-alive connections to one server of an upstream."""

    def __init__(self, upstream: Upstream, server: Address) -> None:
        self.upstream = upstream
        self.server = server
        #: For an ``https://`` server: the context in force (a reload that
        #: rotates a CA or client certificate replaces it) and the name
        #: checked against its certificate.
        self.tls: ssl.SSLContext | None = None
        self.server_hostname: str | None = None
        #: Bumped when the TLS settings change: older connections are not reused.
        self.generation = 0
        self.fingerprint = b""
        #: ``HOST:PORT``, the ``server`` label of metrics and logs.
        self.label = str(server)
        self.idle: list[UpstreamConnection] = []
        self.open = 0
        self._waiters: deque[asyncio.Future[UpstreamConnection | None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    def take_idle(self) -> UpstreamConnection | None:
        """The newest idle connection still within ``keepalive_timeout``."""
        idle = self.idle
        if not idle:
            return None
        oldest_ok = time.monotonic() - self.upstream.keepalive_timeout
        while idle:
            conn = idle.pop()
            if conn.idle_since >= oldest_ok and conn.keep_alive and not conn.lost:
                conn.reused = True
                return conn
            conn.close()
        return None

    async def acquire(self) -> UpstreamConnection:
        """An idle connection, or a new one when a slot is free (waiting if not)."""
        conn = self.take_idle()
        if conn is not None:
            return conn
        limit = self.upstream.max_connections
        if limit and self.open >= limit:
            waiter: asyncio.Future[UpstreamConnection | None] = (
                asyncio.get_running_loop().create_future()
            )
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(self.upstream.connect_timeout):
                    conn = await waiter
            except BaseException as exc:
                # Handed a connection (or a slot) in the turn it gave up:
                # pass it on, or it is lost to everyone.
                if waiter.done() and not waiter.cancelled():
                    handed = waiter.result()
                    if handed is not None:
                        self.release(handed)
                    else:
                        self._wake(None)
                if isinstance(exc, TimeoutError):
                    raise PoolTimeout() from None
                raise
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if conn is not None:
                if conn.generation == self.generation:
                    conn.reused = True
                    return conn
                conn.close()  # handed over just before a renew(): not for this request
        return await self.connect_new()

    async def connect_new(self) -> UpstreamConnection:
        self.open += 1
        created: list[UpstreamConnection] = []
        # The settings this connection is made with: a renew() before the
        # factory runs (asyncio calls it after the TCP connect) must not
        # stamp it with the new generation.
        tls, server_hostname, generation = self.tls, self.server_hostname, self.generation

        def factory() -> UpstreamConnection:
            conn = UpstreamConnection(self)
            conn.generation = generation
            created.append(conn)
            return conn

        try:
            conn = await connect(
                self.server, self.upstream.connect_timeout, factory, tls, server_hostname
            )
        except BaseException:
            if created:
                # Cancelled between the factory and connection_made: asyncio
                # closes that transport, and connection_lost would count the
                # slot free a second time; forget() counts it once.
                self.forget(created[0])
            else:
                self.open -= 1
                self._wake(None)
            raise
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """A response ended: keep the connection for the next request, or close it."""
        conn.receiver = None
        if (
            self._closed
            or not conn.keep_alive
            or not self.upstream.keepalive_timeout
            or conn.generation != self.generation
        ):
            conn.close()
            return
        # The last read may have paused it for a slow client; that client's
        # backpressure ends with its response.
        if conn._reading_paused:
            conn.resume_reading()
        conn.reused = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(
                self.upstream.keepalive_timeout, self._sweep
            )

    def forget(self, conn: UpstreamConnection) -> None:
        """``conn`` is closing or closed: it leaves the pool and frees its slot."""
        if not conn.counted:
            return
        conn.counted = False
        self.open -= 1
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        self._wake(None)

    def _wake(self, conn: UpstreamConnection | None) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return

    def _sweep(self) -> None:
        self._sweeper = None
        oldest_ok = time.monotonic() - self.upstream.keepalive_timeout
        for conn in [c for c in self.idle if c.idle_since < oldest_ok]:
            conn.close()
        if self.idle and not self._closed:
            self._sweeper = asyncio.get_running_loop().call_later(
                self.upstream.keepalive_timeout / 2, self._sweep
            )

    def renew(self, tls: ssl.SSLContext, server_hostname: str, fingerprint: bytes) -> None:
        """A configuration's TLS context (start, reload): new connections use
        it.  When the settings or their files changed (``fingerprint``), no
        connection made with the old ones is used again: a CA withdrawn or a
        name changed must not live on in the pool."""
        if self.tls is not None and (fingerprint, server_hostname) != (
            self.fingerprint,
            self.server_hostname,
        ):
            self.generation += 1
            for conn in list(self.idle):
                conn.close()
            self.idle.clear()
        self.tls = tls
        self.server_hostname = server_hostname
        self.fingerprint = fingerprint

    def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.idle):
            conn.close()
        self.idle.clear()
