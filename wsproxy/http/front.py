"""The front door: one ``asyncio.Protocol`` per client connection.

Theory of operation
-------------------
Bytes from the client go to llhttp (``httptools.HttpRequestParser``), whose
callbacks build :class:`Request` objects.  A request is handed to the
application (``App.handle``, one task per request) as soon as its head is
complete; its body follows through :meth:`Request.read_body` while the
application forwards it.  The application answers through the request's
``send_head``/``send_body``/``end`` (or ``answer`` for the proxy's own small
answers), and may take the connection over after a ``101``
(:meth:`ClientConnection.take_over`).

Invariants:

* **In order, bounded.**  Requests on a connection are answered in the
  order they came (RFC 9112 §9.3.2).  A request parsed while another is in
  flight waits in a queue and reading stops until it is its turn, so a
  pipelining client costs at most one read of buffered bytes; at most
  ``MAX_PIPELINE`` requests wait, later ones are not answered and the
  connection closes after the queue (the client retries those).
* **Every limit is ours.**  llhttp enforces none: the head budget
  (``max_header_size``: ``414`` while still in the request line, ``431``
  after; ``MAX_HEADERS`` fields), ``max_body_size`` (``413``), and the timers
  (``client_header_timeout`` and ``client_body_timeout``: ``408``;
  ``send_timeout``: cut; keep-alive idle: close) are checked here.  Raw
  bytes buffered for an unfinished head are counted too, so one endless
  header cannot grow httptools' buffer.
* **Stricter than llhttp.**  Whatever llhttp lets through that a proxy
  must refuse is refused here or in headers.check_request: several spaces
  in the request line (the single-spaced line must be among the bytes read
  for the head, since llhttp reports no offsets), a ``Transfer-Encoding``
  other than ``chunked`` (``501``), ``Host`` missing on HTTP/1.1 (``400``).
* **Every refusal is one answer, one count, one log line**
  (``App.refused``), never a traceback or the client's bytes in a log.
* **Keep-alive per RFC 9112 §9.3**: llhttp's ``should_keep_alive`` (HTTP/1.1
  unless ``close``; HTTP/1.0 only with ``keep-alive``), and the connection
  closes after an answer sent before its request's body was read (the rest of
  the body is read and dropped for a moment first, so the answer is not lost
  to a reset: a "lingering close").
* **Upgrades.**  llhttp stops at a request with ``Upgrade`` and
  ``Connection: upgrade`` (and at ``CONNECT``).  A WebSocket candidate keeps
  what follows it for the tunnel (or the connection closes after its answer);
  any other upgrade (``h2c``) is served as plain HTTP and parsing continues
  behind it, its body re-read by a fresh parser.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, cast

import httptools

from wsproxy.http.wire import (
    BY_LENGTH,
    CHUNKED,
    CONTINUE,
    LAST_CHUNK,
    NO_BODY,
    UNTIL_CLOSE,
    Framing,
    chunk,
    own_answer,
    response_head,
)
from wsproxy.listeners import PLAIN, Arrival, Gate, peer_text
from wsproxy.tunnel import close_transport, reset_transport

log = logging.getLogger("wsproxy.front")

_NONE: list[str] = []  # the values of an absent header (never modified)

#: Requests waiting behind the one in flight on one connection.
MAX_PIPELINE = 32
#: Header fields in one request head.
MAX_HEADERS = 256
#: Bytes a WebSocket candidate's connection buffers before its answer.
MAX_UPGRADE_TAIL = 256 * 1024
#: Unanswered body bytes held before the upstream takes them.
MAX_PENDING_BODY = 256 * 1024
#: Largest body chunk joined to a held-back head for one write; a larger one
#: goes with the head in one writelines() (writev), not copied behind it.
_JOIN_LIMIT = 16 * 1024
#: How long a lingering close reads and drops what the client still sends.
LINGER_TIMEOUT = 2.0


# Why reading is paused; it resumes when no reason is left.
_PAUSE_PIPELINE = 1  # a request waits behind the one in flight
_PAUSE_BODY = 2  # the upstream does not take the body as fast as it comes
_PAUSE_TAIL = 4  # a WebSocket candidate's buffered bytes reached their bound


@dataclass(frozen=True, slots=True)
class FrontSettings:
    """The front door's limits and timers (the ``proxy:`` section)."""

    max_header_size: int = 32 * 1024
    max_body_size: int = 0  # 0: unlimited
    client_header_timeout: float = 30.0
    client_body_timeout: float = 60.0
    send_timeout: float = 60.0
    keepalive_timeout: float = 75.0

    @property
    def tick(self) -> float:
        """How often a connection's timer looks at its deadlines (a quarter of the shortest)."""
        return (
            min(
                self.client_header_timeout,
                self.client_body_timeout,
                self.send_timeout,
                self.keepalive_timeout,
            )
            / 4
        )


class App(Protocol):
    """What the front door serves: the proxy."""

    def handle(self, request: Request) -> Coroutine[Any, Any, None] | None:
        """Start answering ``request``.

        Return a coroutine to run as the request's task, or None: then the
        request was answered already, or (``request.pending``) it calls
        ``request.done()`` when it ends, without a task.
        """

    def finished(self, request: Request) -> None:
        """``request`` ended (answered, failed or abandoned): count and log it, once."""

    def refused(self, request: Request, status: int, message: str) -> None:
        """Count and log a request the front door refused itself (answered by the caller)."""


class BodySink(Protocol):
    """Where a request body goes (the upstream request)."""

    def body(self, data: bytes) -> None: ...

    def body_end(self) -> None: ...


class Producer(Protocol):
    """Whatever writes a response body: paused while the client does not read."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...


#: Method names as llhttp reports them, decoded once.
_METHOD_NAMES = {
    name.encode(): name
    for name in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT")
}
#: llhttp's version strings: as the request line ends with them, and as numbers.
_VERSIONS = {"1.1": (b" HTTP/1.1\r\n", (1, 1)), "1.0": (b" HTTP/1.0\r\n", (1, 0))}
#: The field names browsers, HTTP libraries and proxies in front send most,
#: as they send them (canonical case and lower case): each one's text and its
#: lower-cased text (the index key), at one lookup instead of a decode and a
#: lower() per field (ClientConnection.on_header).  Any other name takes the
#: long way to the same two strings.
_FIELD_NAMES: dict[bytes, tuple[str, str]] = {
    spelling.encode("latin-1"): (spelling, spelling.lower())
    for name in (
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Authorization",
        "Cache-Control",
        "Connection",
        "Content-Length",
        "Content-Type",
        "Cookie",
        "Host",
        "If-Modified-Since",
        "If-None-Match",
        "Origin",
        "Pragma",
        "Priority",
        "Referer",
        "Sec-Fetch-Dest",
        "Sec-Fetch-Mode",
        "Sec-Fetch-Site",
        "Sec-WebSocket-Extensions",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Protocol",
        "Sec-WebSocket-Version",
        "Transfer-Encoding",
        "Upgrade",
        "User-Agent",
        "X-Forwarded-For",
        "X-Forwarded-Host",
        "X-Forwarded-Proto",
        "X-Real-IP",
        "X-Request-ID",
    )
    for spelling in (name, name.lower())
}


class _Refuse(Exception):
    """Raised in a parser callback to stop parsing and answer ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


class Request:
    """One request on a client connection, from its head to its answer."""

    __slots__ = (
        "_pending",
        "_pending_size",
        "_sink",
        "abort_status",
        "body_bytes",
        "body_done",
        "body_reparsed",
        "bytes_sent",
        "chunked",
        "connection",
        "content_length",
        "ended",
        "exchange",
        "framing",
        "has_body",
        "headed",
        "headers",
        "index",
        "keep_alive",
        "method",
        "on_abort",
        "pending",
        "producer",
        "refusal",
        "response_done",
        "response_started",
        "started",
        "status",
        "target",
        "upgrade",
        "version",
    )

    def __init__(self, connection: ClientConnection, started: float) -> None:
        # Every slot is set here; the hot path creates one Request per request,
        # so the values are plain constants (no calls).
        self.connection = connection
        self.started = started
        self.method: str | None = None
        self.target = ""
        self.version: tuple[int, int] | None = None
        self.headers: list[tuple[str, str]] = []
        #: Values by lower-case name, built as the fields are parsed.
        self.index: dict[str, list[str]] = {}
        self.headed = False
        self.keep_alive = False
        #: llhttp stopped at this request (Upgrade + Connection: upgrade, CONNECT).
        self.upgrade = False
        self.chunked = False
        self.content_length: int | None = None
        #: A body follows the head (chunked, or a Content-Length above 0).
        self.has_body = False
        self.body_done = False
        #: The body is read by a fresh parser behind a non-WebSocket upgrade.
        self.body_reparsed = False
        self.body_bytes = 0
        self._sink: BodySink | None = None
        self._pending: list[bytes] | None = None
        self._pending_size = 0
        self.producer: Producer | None = None
        self.response_started = False
        self.response_done = False
        self.framing = NO_BODY
        self.status = 0
        self.bytes_sent = 0
        #: Set when the front door ended the request (timeout, client gone).
        self.abort_status: int | None = None
        #: The front door answers this request itself: (status, message).
        self.refusal: tuple[int, str] | None = None
        #: The application's record of the request (observe.Exchange).
        self.exchange: Any = None
        #: Answered by callbacks, not a task: calls done() when it ends.
        self.pending = False
        #: Called when the front door ends a pending request (client gone, timers).
        self.on_abort: Callable[[], None] | None = None
        self.ended = False

    # --- the request ------------------------------------------------------

    def header(self, name: str) -> list[str]:
        """Every value of the header ``name`` (lower-case), in order."""
        return self.index.get(name, _NONE)

    @property
    def peer(self) -> str:
        return self.connection.peer

    @property
    def peer_ip(self) -> str | None:
        return self.connection.peer_ip

    def read_body(self, sink: BodySink) -> None:
        """Send the body to ``sink``: what arrived already at once, the rest as it comes."""
        self._sink = sink
        pending, self._pending, self._pending_size = self._pending, None, 0
        for data in pending or ():
            sink.body(data)
        self.connection.release(_PAUSE_BODY)
        if self.body_done:
            sink.body_end()

    def hold_body(self) -> None:
        """Stop reading the client (the upstream's write buffer is full)."""
        self.connection.hold(_PAUSE_BODY)

    def release_body(self) -> None:
        self.connection.release(_PAUSE_BODY)

    def _body(self, data: bytes) -> None:
        self.body_bytes += len(data)
        limit = self.connection.settings.max_body_size
        if limit and self.body_bytes > limit:
            raise _Refuse(413, "request body too large")
        if self._sink is not None:
            self._sink.body(data)
            return
        if self._pending is None:
            self._pending = []
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size > MAX_PENDING_BODY:
            self.connection.hold(_PAUSE_BODY)

    def _body_end(self) -> None:
        self.body_done = True
        if self._sink is not None:
            self._sink.body_end()

    # --- the response -----------------------------------------------------

    def informational(self) -> None:
        """Relay the upstream's ``100 Continue`` (never to an HTTP/1.0 client)."""
        if not self.response_started and self.version == (1, 1):
            self.connection.write(CONTINUE)

    def send_head(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[str, str]] | bytes,
        framing: Framing,
        *,
        flush: bool = True,
    ) -> None:
        """Write the response head; the framing headers are the proxy's to set.

        ``headers`` are pairs, or the fields already encoded (wire.encode_fields).

        ``flush=False`` keeps the head back to leave with the first body
        write (one ``send()`` for a small response).
        """
        self.response_started = True
        self.status = status
        self.framing = framing
        connection = self.connection
        keep = connection.will_keep_alive(self) and framing is not UNTIL_CLOSE
        extra = b"Transfer-Encoding: chunked\r\n" if framing is CHUNKED else b""
        if not keep:
            connection.closing = True
            extra += b"Connection: close\r\n"
        elif self.version == (1, 0):
            extra += b"Connection: keep-alive\r\n"
        head = response_head(status, reason, headers, extra)
        if flush:
            connection.write(head)
        else:
            connection._held_head = head  # leaves with the first body write

    def hold_plain_head(self, status: int, reason: bytes, fields: bytes) -> bool:
        """The head of a length-framed answer to an HTTP/1.1 request without a
        body: what ``send_head`` writes for it (``Framing.LENGTH``, nothing
        of the proxy's own), held for the first body write.  False, with
        nothing done, when the connection is not staying open (then
        ``send_head`` adds ``Connection: close``)."""
        connection = self.connection
        if not connection.will_keep_alive(self):
            return False
        self.response_started = True
        self.status = status
        self.framing = BY_LENGTH
        connection._held_head = response_head(status, reason, fields)
        return True

    def send_body(self, data: bytes) -> None:
        if not data or self.framing is NO_BODY:
            return
        self.bytes_sent += len(data)
        self.connection.write(chunk(data) if self.framing is CHUNKED else data)

    def end(self) -> None:
        """The response is complete."""
        if self.response_done:
            return
        self.response_done = True
        if self.framing is CHUNKED:
            self.connection.write(LAST_CHUNK)
        elif self.connection._held_head is not None:
            self.connection.flush()  # a head held back for a body that never came

    def answer(
        self,
        status: int,
        message: str,
        headers: tuple[tuple[str, str], ...] | list[tuple[str, str]] = (),
        *,
        close: bool = False,
    ) -> None:
        """A whole small answer of the proxy's own."""
        if self.response_started:
            return
        self.response_started = self.response_done = True
        self.status = status
        close = close or not self.connection.will_keep_alive(self)
        if close:
            self.connection.closing = True
        data = own_answer(status, message, headers, close=close, head_only=self.method == "HEAD")
        self.bytes_sent += len(data)
        self.connection.write(data)

    def cut(self) -> None:
        """The response cannot be completed: reset the connection (never a clean end)."""
        self.response_done = True
        self.connection.reset()

    def done(self, *, outside: bool = False) -> None:
        """A pending request ended (its answer is complete or cut).

        It ends on the next turn, after the callback that ended it (a parse,
        a timer) is through with the request; or now, with ``outside``, when
        the caller runs in another connection's callbacks (the upstream's
        response ended), the whole request was read and nothing waits
        behind it.
        """
        self.pending = False
        self.on_abort = None
        connection = self.connection
        if outside and self.body_done and not connection._queue:
            connection.request_done(self)
        else:
            connection.loop.call_soon(connection.request_done, self)

    def continue_with(self, work: Coroutine[Any, Any, None]) -> None:
        """A pending request goes on in a task (a retry that must connect first)."""
        self.pending = False
        self.on_abort = None
        self.connection.run_task(self, work)


class ClientConnection(asyncio.Protocol):
    """One client connection; see the module docstring."""

    # Slots, not a __dict__: past 30 attributes an instance dict no longer
    # shares its keys with the class's other instances, so every connection
    # built a dict of its own, resized three times (about 3x the cost of
    # filling the slots), and every attribute access took the slower path.
    __slots__ = (
        "__weakref__",
        "_active",
        "_body_read_at",
        "_count_from",
        "_fields_to",
        "_head_raw",
        "_head_size",
        "_head_started",
        "_held_head",
        "_holds",
        "_idle_since",
        "_index_to",
        "_last_headed",
        "_lingering",
        "_lost",
        "_no_more_requests",
        "_parsing",
        "_queue",
        "_raw_since_body",
        "_reparse_for",
        "_seen",
        "_send_blocked_since",
        "_sizing",
        "_tail",
        "_tail_size",
        "_taken_over",
        "_task",
        "_timer",
        "_url",
        "app",
        "app_data",
        "arrival",
        "closed",
        "closing",
        "connected",
        "gate",
        "loop",
        "parser",
        "peer",
        "peer_ip",
        "registry",
        "settings",
        "transport",
        "write_blocked",
    )

    def __init__(
        self,
        app: App,
        settings: FrontSettings,
        registry: set[ClientConnection] | None = None,
        gate: Gate | None = None,
        arrival: Arrival = PLAIN,
    ) -> None:
        self.app = app
        #: What the listener learnt before HTTP: a PROXY header's client
        #: address, TLS.
        self.arrival = arrival
        #: ``connection_made`` ran (a failed TLS handshake never gets there).
        self.connected = False
        #: The listener's connection count (listeners.Gate): released when
        #: the socket closes, or by the tunnel that takes the socket over.
        self.gate = gate
        #: The server's set of open connections (for shutdown).
        self.registry = registry
        #: What the application keeps per connection (the client's address info).
        self.app_data: Any = None
        # Asked once: get_running_loop() is a getpid() system call on 3.11.
        loop = self.loop = asyncio.get_running_loop()
        #: Resolved when the connection is closed or taken over.
        self.closed: asyncio.Future[None] = loop.create_future()
        self.settings = settings
        self.transport: asyncio.Transport | None = None
        self.peer = "unknown"
        self.peer_ip: str | None = None
        self.parser = httptools.HttpRequestParser(self)
        #: Closing after the response in flight (or now, when idle).
        self.closing = False
        self._holds = 0
        self._queue: deque[Request] = deque()
        self._active: Request | None = None
        self._task: asyncio.Task[None] | None = None
        self._parsing: Request | None = None
        self._url = b""
        self._head_size = 0
        self._head_raw = 0
        self._raw_since_body = 0
        self._seen = b""
        #: The fields of the head in progress are counted as they come: more
        #: than ``_count_from`` bytes were read for it (this read and the ones
        #: before it).  Below that a head can be over neither the budget nor
        #: MAX_HEADERS: a field counts ``name + value + 4`` and takes at least
        #: ``name + value + 3`` bytes (no space after the colon), at least 4,
        #: and the request line and the final CRLF take 17 or more uncounted.
        #: That rests on llhttp's strict defaults: every line ends in CRLF (a
        #: lenient mode taking bare LF would let 257 fields fit in 788 bytes).
        self._sizing = False
        self._count_from = min(settings.max_header_size - MAX_HEADERS, 4 * MAX_HEADERS)
        #: Where the head's fields go: the request's list and index; None for
        #: trailers (dropped) and the synthetic head of a re-read body.
        self._fields_to: list[tuple[str, str]] | None = None
        self._index_to: dict[str, list[str]] = {}
        self._reparse_for: Request | None = None
        self._last_headed: Request | None = None
        self._tail: list[bytes] | None = None
        self._tail_size = 0
        self._no_more_requests = False
        self._lost = False
        self._taken_over = False
        self._held_head: bytes | None = None
        self._idle_since: float | None = None
        self._head_started: float | None = None
        self._body_read_at = 0.0
        self._send_blocked_since: float | None = None
        #: The client's write buffer is above its high-water mark.
        self.write_blocked = False
        self._timer: asyncio.TimerHandle | None = None
        self._lingering = False

    # --- asyncio callbacks ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass: no isinstance.
        self.transport = cast(asyncio.Transport, transport)
        self.connected = True
        # A PROXY protocol header names the client; the socket's peer is the
        # load balancer in front.
        peer = self.arrival.source or transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer_ip = str(peer[0])
            self.peer = peer_text(peer)
        # TCP_NODELAY: asyncio and uvloop set it on every TCP transport.
        self._idle_since = self.loop.time()
        self._timer = self.loop.call_later(self.settings.tick, self._tick)
        if self.registry is not None:
            self.registry.add(self)

    def data_received(self, data: bytes) -> None:
        if self._lingering or (self._no_more_requests and self._tail is None):
            return  # dropped: the connection closes after what is in flight
        if self._tail is not None:
            self._keep_tail(data)
            return
        head_before = self._parsing is not None and not self._parsing.headed
        self._raw_since_body += len(data)
        # What the request lines parsed in this read are checked against
        # (on_headers_complete): this read, and before it the reads of a head
        # still incomplete (bounded by the head budget).
        seen = self._seen = self._seen + data if head_before else data
        if len(seen) > self._count_from:
            if not self._sizing and head_before and self._parsing is not None:
                self._recount_head(self._parsing)
            self._sizing = True
        elif not head_before:
            self._sizing = False
        tail: bytes | None = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # Handled after this block: a refusal in what follows the upgrade
            # must not be raised while this exception is being handled (its
            # parser error's __context__, which carries the refusal, would
            # be replaced by this one).
            tail = data[int(exc.args[0]) :]
        except httptools.HttpParserCallbackError as exc:
            refusal = exc.__context__
            if isinstance(refusal, _Refuse):
                self._refuse_unparsed(refusal.status, refusal.message)
            else:  # a bug of ours: a clean 500, the details in the log
                log.error("client %s: request handling failed", self.peer, exc_info=refusal)
                self._refuse_unparsed(500, "internal error")
        except httptools.HttpParserError as exc:
            self._parse_error(exc)
        else:
            parsing = self._parsing
            if parsing is None or parsing.headed:
                self._seen = b""  # no head left to check: keep no read alive
            if parsing is None:
                return
            if not parsing.headed and head_before:
                # httptools buffers an unfinished field whole: count raw bytes too.
                self._head_raw += len(data)
                if self._head_raw > self.settings.max_header_size:
                    self._refuse_unparsed(*self._head_too_large())
            elif parsing.headed and self._raw_since_body > self.settings.max_header_size:
                # Trailers and chunk extensions bring no body: the same budget.
                self._refuse_unparsed(431, "request trailer or chunk extension too large")
        if tail is not None:
            self._upgraded(tail)

    def eof_received(self) -> bool | None:
        if self._lingering:
            return None
        active = self._active
        if self._tail is not None or (active is not None and not active.body_done):
            self._client_gone()  # gone in the middle of a request
            return None
        if active is None and not self._queue:
            return None  # idle: close
        if self.arrival.tls:
            # TLS has no half-close here: asyncio's and uvloop's TLS
            # transports close after the client's close_notify, whatever
            # this returns; what is in flight is the client's loss.
            return None
        # A half-closed client still gets the answers to what it sent.
        self._no_more_requests = True
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost = True
        self._forget()
        if not self._taken_over:
            if self.gate is not None:
                self.gate.release()
            self._client_gone()

    def _forget(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.registry is not None:
            self.registry.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def shutdown(self) -> None:
        """The server stops: close when idle, else after the answer in flight."""
        self.closing = True
        self._no_more_requests = True
        if self._active is None and not self._lingering:
            self._close()

    def pause_writing(self) -> None:
        self.write_blocked = True
        self._send_blocked_since = self.loop.time()
        active = self._active
        if active is not None and active.producer is not None:
            active.producer.pause()

    def resume_writing(self) -> None:
        self.write_blocked = False
        self._send_blocked_since = None
        active = self._active
        if active is not None and active.producer is not None:
            active.producer.resume()

    # --- llhttp callbacks -------------------------------------------------

    def on_message_begin(self) -> None:
        if self._reparse_for is not None:
            self._parsing = self._reparse_for  # a body behind an upgrade
            return
        self._parsing = Request(self, time.monotonic())
        self._idle_since = None
        self._head_started = self.loop.time()
        self._url = b""
        self._head_size = 0
        self._head_raw = 0
        self._fields_to = self._parsing.headers
        self._index_to = self._parsing.index

    def on_url(self, url: bytes) -> None:
        if self._reparse_for is not None:
            return
        self._url += url
        self._head_size += len(url)
        if self._head_size > self.settings.max_header_size:
            raise _Refuse(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._fields_to
        if headers is None:
            return  # a trailer (dropped) or the synthetic head of a re-read body
        if self._sizing:  # else it cannot be over the limits (see _sizing)
            self._count_field(len(name) + len(value) + 4, len(headers))
        known = _FIELD_NAMES.get(name)
        if known is None:
            key = name.decode("latin-1")
            lower = key.lower()
        else:
            key, lower = known
        text = value.decode("latin-1")
        headers.append((key, text))
        index = self._index_to
        if lower in index:
            index[lower].append(text)
        else:
            index[lower] = [text]

    def _count_field(self, size: int, before: int) -> None:
        """One more field of a head that may be over the budget."""
        size = self._head_size = self._head_size + size
        if size > self.settings.max_header_size:
            raise _Refuse(431, "request header fields too large")
        if before >= MAX_HEADERS:
            raise _Refuse(431, "too many request header fields")

    def _recount_head(self, request: Request) -> None:
        """The head in progress was not counted field by field: count what is
        parsed (under the budget: it came in reads of at most ``_count_from``
        bytes, see ``_sizing``); the fields to come are counted as they come."""
        self._head_size = len(self._url) + sum(len(k) + len(v) + 4 for k, v in request.headers)

    def on_headers_complete(self) -> None:
        if self._reparse_for is not None:
            return
        request = self._parsing
        assert request is not None
        self._fields_to = None
        self._head_started = None
        self._raw_since_body = 0
        parser = self.parser
        request.headed = True
        method = parser.get_method()
        name = _METHOD_NAMES.get(method)
        if name is None:
            name = method.decode("ascii")
        request.method = name
        version = parser.get_http_version()
        known = _VERSIONS.get(version)
        if known is None:
            major, _, minor = version.partition(".")
            known = (b" HTTP/%s\r\n" % version.encode(), (int(major), int(minor)))
        line_end, request.version = known
        url = self._url
        # llhttp accepts several spaces between the parts of the request line;
        # a proxy must not guess which part a space belongs to.  The line as a
        # well-formed request writes it must be among the bytes read.  (find(),
        # not ``in``: bytes.__contains__ tries the operand as an integer first,
        # and the TypeError it swallows costs more than the search itself.)
        if self._seen.find(b"".join((method, b" ", url, line_end))) < 0:
            raise _Refuse(400, "malformed request: invalid request line")
        request.target = url.decode("latin-1")
        request.keep_alive = parser.should_keep_alive()
        request.upgrade = parser.should_upgrade()
        index = request.index
        if "transfer-encoding" in index:
            for value in index["transfer-encoding"]:
                # llhttp checked that chunked is last; a coding before it would
                # reach the upstream undecoded (RFC 9112 §6.1: 501).
                if value.strip().lower() != "chunked":
                    raise _Refuse(501, "transfer coding not implemented (only chunked)")
                request.chunked = request.has_body = True
        if "content-length" in index:
            length = request.content_length = int(index["content-length"][0])  # one: llhttp
            if length:
                request.has_body = True
            limit = self.settings.max_body_size
            if limit and length > limit:
                raise _Refuse(413, "request body too large")
        if request.has_body:
            self._body_read_at = self.loop.time()
            if request.upgrade and not _keeps_tail(request):
                request.body_reparsed = True
        self._last_headed = request
        if self._active is None:
            self._start(request)  # nothing in flight (_dispatch's common case)
        else:
            self._dispatch(request)

    def on_body(self, body: bytes) -> None:
        self._raw_since_body = 0
        request = self._parsing
        assert request is not None
        self._body_read_at = self.loop.time()
        request._body(body)

    def on_message_complete(self) -> None:
        request = self._parsing
        assert request is not None
        if request.body_reparsed and self._reparse_for is None:
            return  # its body comes through the fresh parser (_upgraded)
        self._parsing = None
        self._reparse_for = None
        if not request.keep_alive:
            self._no_more_requests = True
        request._body_end()

    # --- requests in order ------------------------------------------------

    def _dispatch(self, request: Request) -> None:
        if self._active is None:
            self._start(request)
            return
        if len(self._queue) >= MAX_PIPELINE:
            # Not answered: the client retries it after the close.
            self._no_more_requests = True
            self.closing = True
            return
        self._queue.append(request)
        self.hold(_PAUSE_PIPELINE)

    def _start(self, request: Request) -> None:
        self._active = request
        if request.refusal is not None:
            status, message = request.refusal
            self.app.refused(request, status, message)
            request.answer(status, message, close=True)
            self._finished(request)
            return
        try:
            work = self.app.handle(request)
        except Exception:  # a bug of ours: a clean answer, the details in the log
            log.exception("request from %s failed", self.peer)
            if request.on_abort is not None:
                request.on_abort()  # a relay already started: drop its upstream
            request.pending = False
            request.on_abort = None
            if not request.response_started:
                request.answer(500, "internal error", close=True)
            elif not request.response_done:
                request.cut()
            work = None
        if work is not None:
            self.run_task(request, work)
        elif not request.pending:
            # Answered at once.  Finished on the next turn: this runs inside
            # llhttp's callbacks, before the request's end was parsed.
            self.loop.call_soon(self.request_done, request)

    def run_task(self, request: Request, work: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(self._guard(request, work), name=f"request from {self.peer}")
        # A done callback, not a ``finally``: a task cancelled before its
        # first step never runs its coroutine, but its callbacks do run.
        task.add_done_callback(partial(self._task_done, request, work))
        self._task = task

    async def _guard(self, request: Request, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            pass  # the front door ended it
        except Exception:  # a bug of ours: a clean answer, the details in the log
            log.exception("request from %s failed", self.peer)
            if not request.response_started:
                request.answer(500, "internal error", close=True)
            elif not request.response_done:
                request.cut()

    def _task_done(
        self, request: Request, work: Coroutine[Any, Any, None], task: asyncio.Task[None]
    ) -> None:
        if self._task is task:
            self._task = None
        work.close()  # cancelled before its first step, it was never awaited
        self.request_done(request)

    def request_done(self, request: Request) -> None:
        """``request`` ended: the application logs it, then the next one may start."""
        if request.ended or request.pending:
            return
        request.ended = True
        try:
            self.app.finished(request)
        except Exception:  # a bug of ours: the connection goes on, the details in the log
            log.exception("client %s: counting or logging a request failed", self.peer)
        try:
            self._finished(request)
        except Exception:  # a bug of ours: never a connection left waiting
            log.exception("client %s: ending a request failed", self.peer)
            self.reset()

    def _finished(self, request: Request) -> None:
        self._active = None
        if self._taken_over or self._lost:
            return
        if not request.response_done:
            request.cut()  # the handler left the response unfinished
            return
        if self._held_head is not None:
            self.flush()  # a head held back for a body that never came
        if self.closing or self._tail is not None or not request.body_done:
            self._close_after_answer(request)
        elif self._queue:
            self._start(self._queue.popleft())
            if not self._queue:
                self.release(_PAUSE_PIPELINE)
        elif self._no_more_requests:
            self._close()
        else:
            self._idle_since = self.loop.time()

    def will_keep_alive(self, request: Request) -> bool:
        """Whether the connection stays open after ``request``'s response."""
        return request.keep_alive and not self.closing and request.body_done and self._tail is None

    # --- upgrades ---------------------------------------------------------

    def _upgraded(self, tail: bytes) -> None:
        """llhttp stopped at an upgrade request; ``tail`` is what followed it."""
        request = self._last_headed
        if request is None or _keeps_tail(request):
            # Kept for the tunnel; otherwise the connection ends with this request.
            self._tail = []
            self._no_more_requests = True
            if tail:
                self._keep_tail(tail)
            return
        # Served as plain HTTP (its Upgrade is dropped as hop-by-hop), and
        # what follows is read by a fresh parser: its body first, through a
        # head that states only the body's framing.
        self.parser = httptools.HttpRequestParser(self)
        if request.body_reparsed:
            self._reparse_for = request
            if request.chunked:
                framing = b"Transfer-Encoding: chunked"
            else:
                framing = b"Content-Length: %d" % (request.content_length or 0)
            self.parser.feed_data(b"PUT / HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n\r\n")
        if tail:
            self.data_received(tail)

    def _keep_tail(self, data: bytes) -> None:
        assert self._tail is not None
        self._tail.append(data)
        self._tail_size += len(data)
        if self._tail_size > MAX_UPGRADE_TAIL:
            self.hold(_PAUSE_TAIL)

    def take_over(self, protocol: asyncio.Protocol) -> tuple[asyncio.Transport, bytes]:
        """Hand the connection to ``protocol`` after a ``101``.

        Returns the transport and the bytes the client sent behind its
        handshake (to forward first).  The front door forgets the connection.
        """
        transport = self.transport
        if transport is None or self._lost or transport.is_closing():
            raise ConnectionResetError("client connection already closed")
        self._taken_over = True
        self._forget()
        tail = b"".join(self._tail or ())
        self._tail = None
        transport.set_protocol(protocol)
        if self._holds:
            self._holds = 0
            transport.resume_reading()
        # Nothing of the front door may outlive the take-over: the parser and
        # this protocol hold each other, and a cycle waits for the garbage
        # collector (1-2 KB per session until it runs).
        del self.parser
        self._queue.clear()
        self._parsing = self._last_headed = self._reparse_for = None
        return transport, tail

    # --- writing and closing ----------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or self._lost:
            return
        head = self._held_head
        if head is not None:
            self._held_head = None
            if len(data) > _JOIN_LIMIT:
                # One writev(2) for both, no copy of a large body.
                transport.writelines((head, data))
                return
            data = head + data
        if data:
            transport.write(data)

    def flush(self) -> None:
        """Write a head held back for the body (send_head(flush=False))."""
        if self._held_head is not None:
            self.write(b"")

    def hold(self, reason: int) -> None:
        held, self._holds = self._holds, self._holds | reason
        if not held and self.transport is not None and not self._lost:
            self.transport.pause_reading()

    def release(self, reason: int) -> None:
        if not self._holds & reason:
            return
        self._holds &= ~reason
        if not self._holds and self.transport is not None and not self._lost:
            self.transport.resume_reading()

    def reset(self) -> None:
        """Close with RST: the peer must not take what it got for complete."""
        if self.transport is not None and not self._lost:
            reset_transport(self.transport)

    def _close(self) -> None:
        if self.transport is not None and not self._lost:
            close_transport(self.transport)
            # close() waits for the write buffer to drain: a client that stops
            # reading with less than the high-water mark unsent (send_timeout
            # watches only blocked writes) would hold the connection forever.
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_later(self.settings.send_timeout, self._close_overdue)

    def _close_overdue(self) -> None:
        self._timer = None
        if not self._lost and self.transport is not None:
            log.info("client %s read nothing of the last answer: connection reset", self.peer)
            self.reset()

    def _close_after_answer(self, request: Request) -> None:
        """Close once the answer is out; unread request bytes are drained first.

        Closing a socket with unread bytes makes the kernel send RST, which
        can destroy the answer before the client reads it; so the write side
        is shut and what still comes is dropped for up to LINGER_TIMEOUT.
        """
        transport = self.transport
        if transport is None or self._lost:
            return
        unread = not request.body_done or self._tail is not None or self._parsing is not None
        if not unread or not transport.can_write_eof():
            close_transport(transport)
            return
        self._lingering = True
        self._holds = 0
        transport.resume_reading()
        transport.write_eof()
        self.loop.call_later(LINGER_TIMEOUT, self._close)

    def _client_gone(self) -> None:
        """The client closed or reset: abandon what is in flight."""
        self._no_more_requests = True
        self._queue.clear()
        active = self._active
        if active is not None and not active.response_done and active.abort_status is None:
            self._abort(active, 499, "client closed the connection", answer=False)
        self._close()

    def _abort(self, request: Request, status: int, message: str, *, answer: bool) -> None:
        """End the request in flight for the front door's reasons.

        It is logged with ``abort_status`` when it ends (App.finished).  A
        request answered already (the proxy's own answer, given inside the
        parser's callbacks before the rest of the read broke a limit) keeps
        the status it was answered with; the connection just closes.
        """
        self._no_more_requests = True
        self.closing = True
        if request.response_done:
            return
        request.abort_status = status
        if answer and not request.response_started:
            request.answer(status, message, close=True)
        else:
            request.cut()
        if self._task is not None:
            self._task.cancel()
        elif request.on_abort is not None:
            request.on_abort()

    # --- refusals ---------------------------------------------------------

    def _head_too_large(self) -> tuple[int, str]:
        request = self._parsing
        if request is not None and not request.headers:
            return 414, "request target too long"
        return 431, "request header fields too large"

    def _parse_error(self, exc: httptools.HttpParserError) -> None:
        if self._no_more_requests and self._parsing is None:
            return  # bytes after a request that closes the connection: dropped
        message = str(exc.args[0]) if exc.args else ""
        self._refuse_unparsed(*_parser_verdict(exc, message))

    def _refuse_unparsed(self, status: int, message: str) -> None:
        """Parsing stops: answer ``status`` in turn, then close."""
        request = self._parsing
        self._parsing = None
        self._reparse_for = None
        self._no_more_requests = True
        self._head_started = None
        if request is None:
            request = Request(self, time.monotonic())
        if request is self._active:
            # Its body broke a limit or its framing.
            self._abort(request, status, message, answer=True)
            return
        request.refusal = (status, message)
        if request not in self._queue:
            self._dispatch(request)

    def _tick(self) -> None:
        """The connection's timer: every ``settings.tick``, look at the deadlines."""
        self._timer = None
        if self._lost or self._taken_over:
            return
        now = self.loop.time()
        settings = self.settings
        active = self._active
        blocked = self._send_blocked_since
        if blocked is not None and now - blocked > settings.send_timeout:
            log.info("client %s read nothing for %gs: connection cut", self.peer, now - blocked)
            if active is not None and not active.response_done:
                self._abort(active, 499, "client did not read the response", answer=False)
            self.reset()
            return
        if self._lingering:
            pass
        elif active is None and self._head_started is not None:
            if now - self._head_started > settings.client_header_timeout:
                self._refuse_unparsed(408, "request head not received in time")
        elif active is None and self._idle_since is not None:
            if now - self._idle_since > settings.keepalive_timeout:
                self._close()
                return
        elif (
            active is not None
            and active.headed
            and not active.body_done
            and now - self._body_read_at > settings.client_body_timeout
        ):
            self._abort(active, 408, "request body not received in time", answer=True)
        self._timer = self.loop.call_later(settings.tick, self._tick)


def _keeps_tail(request: Request) -> bool:
    """A WebSocket candidate or ``CONNECT``: the bytes behind it are not HTTP to parse."""
    if request.method == "CONNECT":
        return True
    return any("websocket" in value.lower() for value in request.header("upgrade"))


def _parser_verdict(exc: httptools.HttpParserError, message: str) -> tuple[int, str]:
    """The answer to what llhttp refused, in words that quote none of its bytes."""
    lowered = message.lower()
    if "http version" in lowered or "pri/upgrade" in lowered:
        return 505, "HTTP version not supported (HTTP/1.1 is)"
    if isinstance(exc, httptools.HttpParserInvalidMethodError):
        return 400, "malformed request: invalid method"
    if isinstance(exc, httptools.HttpParserInvalidURLError):
        return 400, "malformed request: invalid request target"
    if "transfer-encoding" in lowered or "content-length" in lowered or "chunk" in lowered:
        return 400, "malformed request: invalid body framing"
    if "header" in lowered:
        return 400, "malformed request: invalid header"
    return 400, "malformed request: invalid syntax"
