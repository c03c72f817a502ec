"""Plain HTTP forwarding: a request to an upstream and its response back.

A :class:`Relay` joins one client request (wsproxy.http.front) and one
upstream connection (wsproxy.http.pool) for the time of one exchange.  No
task per chunk and no copies: each body chunk goes from one protocol's
callback straight to the other transport's ``write``.

* HTTP/1.1 upstream, whatever the client spoke; the request line carries the
  normalized target (wsproxy.target).
* Bodies stream both ways with the transports' own flow control: when the
  upstream's write buffer is full the client is no longer read, and when the
  client's is full the upstream is no longer read.  Nothing is held whole.
* The client's ``Expect: 100-continue`` goes upstream, so the upstream's
  ``100`` or its refusal is what the client sees.
* The response passes with the upstream's status line, reason phrase and
  headers as sent (names' case and order), minus hop-by-hop fields; the
  proxy only sets the framing (wsproxy.http.wire.client_framing).
* A failure before the response head is an :class:`UpstreamFailure` for the
  caller (``502``/``504``); after it, the client connection is reset so a
  truncated body never passes for a whole one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence, Sized
from typing import Any, Protocol

from wsproxy.errors import UpstreamFailure
from wsproxy.headers import NotableField, client_response_fields, notable_fields
from wsproxy.http.front import Request
from wsproxy.http.pool import ServerPool, Stale, UpstreamConnection
from wsproxy.http.wire import LAST_CHUNK, chunk, client_framing, request_head
from wsproxy.rewrite import RawResponseEdits

log = logging.getLogger("wsproxy.upstream")

#: Methods a request can be repeated with (RFC 9110 §9.2.2).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class RelayEvents(Protocol):
    """What a relay tells its owner (the proxy), with the relay's ``context``."""

    @property
    def servers_down(self) -> Sized:
        """Non-empty while some server is marked down (an attribute will do)."""

    def answered(self, relay: Relay) -> None:
        """A valid response head arrived from a server, while ``servers_down``
        is not empty: it may be one of them, healthy again."""

    def cut(self, relay: Relay, failure: UpstreamFailure) -> None:
        """The upstream failed after the response head went out; the client is cut."""

    def ended(self, relay: Relay, failure: UpstreamFailure | Stale | None) -> None:
        """A relay run with ``start()`` ended other than by relaying the whole
        response (then the relay ends the request itself): the failure, or
        None when it was cut after its head (reported through ``cut``) or
        abandoned by the front door."""


class Relay:
    """One exchange between a client request and an upstream connection.

    Two ways to run it: ``start()`` (no task: the plain-HTTP fast path on a
    pooled connection), which ends the request itself when the response was
    relayed whole and calls ``events.ended`` otherwise; or ``await run()``.
    ``context`` is the owner's record of the request (observe.Exchange).
    """

    __slots__ = (
        "_chunked",
        "_done",
        "_finished",
        "_plain",
        "_settled",
        "_upstream_holds",
        "conn",
        "context",
        "events",
        "flush",
        "head",
        "head_sent",
        "on_body",
        "request",
        "response_edits",
        "switched",
    )

    def __init__(
        self, request: Request, conn: UpstreamConnection, context: Any, events: RelayEvents
    ) -> None:
        self.request = request
        self.conn = conn
        #: pool.Receiver.on_body: the body goes to the client as it comes
        #: (bound here, one call less per chunk).
        self.on_body: Callable[[bytes], None] = request.send_body
        #: pool.Receiver.flush, after each read: a head held back for a body
        #: that did not come in the same read goes out (bound the same way).
        self.flush: Callable[[], None] = request.connection.flush
        self.context = context
        self.events = events
        #: The route's response rewrite (wsproxy.rewrite), carried by the context.
        self.response_edits: RawResponseEdits | None = getattr(context, "response_edits", None)
        self.head = b""
        self.head_sent = False
        self.switched: tuple[int, bytes, list[tuple[str, str]], bytes] | None = None
        self._chunked = request.chunked
        #: The plain case: an HTTP/1.1 request without a body, kept alive,
        #: not HEAD.  Its length-framed answer takes on_head's short way.
        self._plain = False
        self._finished = False
        self._settled = False
        self._upstream_holds = False
        self._done: asyncio.Future[None] | None = None

    def start(self, head: bytes, read_timeout: float) -> None:
        """Send the request; the answer is relayed from the connection's callbacks."""
        request = self.request
        self.head = head
        head_request = request.method == "HEAD"
        self._plain = (
            request.version == (1, 1)
            and request.keep_alive
            and not request.has_body
            and not head_request
        )
        self.conn.start(self, head, read_timeout, head_request=head_request)
        if request.has_body:
            request.read_body(self)
        request.producer = self
        if request.connection.write_blocked:
            self.pause()  # the client is behind already (pause_writing came earlier)

    async def run(self, head: bytes, read_timeout: float) -> None:
        """Send the request, relay the answer; raises before the answer's head only."""
        self._done = self.conn.loop.create_future()  # the connection's: no getpid() call
        self.start(head, read_timeout)
        await self._done

    def abort(self) -> None:
        """The front door ended the request (client gone, a timer): drop the upstream."""
        self._finished = True
        self.conn.abandon()
        self._settle(None)

    def _settle(self, failure: UpstreamFailure | Stale | None, *, whole: bool = False) -> None:
        """The exchange is over: ``failure``, or None; ``whole``: the response
        was relayed whole (a relay run with ``start()`` then ends the request
        itself, in the upstream's callback: the owner has nothing to add)."""
        if self._settled:
            return
        self._settled = True
        request = self.request
        request.producer = None
        if self._upstream_holds:
            request.release_body()
        done = self._done
        if done is None:
            if whole:
                request.done(outside=True)
            else:
                self.events.ended(self, failure)
        elif done.done():
            return
        elif failure is None:
            done.set_result(None)
        else:
            done.set_exception(failure)

    # --- the request body (front.BodySink) ---------------------------------

    def body(self, data: bytes) -> None:
        if self._finished or not data:
            return
        self.conn.write(chunk(data) if self._chunked else data)

    def body_end(self) -> None:
        if self._chunked and not self._finished:
            self.conn.write(LAST_CHUNK)

    # --- flow control -----------------------------------------------------

    def pause(self) -> None:
        """The client's write buffer is full: stop reading the upstream."""
        self.conn.pause_reading()

    def resume(self) -> None:
        self.conn.resume_reading()

    def upstream_paused(self, paused: bool) -> None:
        self._upstream_holds = paused
        if paused:
            self.request.hold_body()
        else:
            self.request.release_body()

    # --- the response (pool.Receiver) --------------------------------------

    def on_informational(self, status: int) -> None:
        if status == 100:
            self.request.informational()
        # Others (103 Early Hints) are dropped, as nginx does.

    def on_head(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        notable: list[NotableField],
        has_length: bool,
    ) -> None:
        if status == 101:
            return  # on_switch follows
        request = self.request
        events = self.events
        if events.servers_down:  # only then can a head be news (the common case is not)
            events.answered(self)
        edits = self.response_edits
        if edits is not None:
            kept = edits.without(headers)
            if kept is not None:
                headers, notable = kept, notable_fields(kept)
        if self._plain and has_length and status != 204 and status != 304:
            # What client_framing and send_head decide for the plain case
            # (Framing.LENGTH, nothing of the proxy's own), without them;
            # False when the client connection is closing after all.
            fields = client_response_fields(headers, notable)
            if edits is not None:
                fields += edits.lines
            if request.hold_plain_head(status, reason, fields):
                self.head_sent = True
                return
        assert request.version is not None
        assert request.method is not None
        framing = client_framing(
            method=request.method,
            status=status,
            upstream_length=has_length,
            client_version=request.version,
        )
        # RFC 9110 §8.6: no Content-Length in a 204; one that says non-zero
        # would make a client wait for a body.
        relayed = client_response_fields(headers, notable, drop_length=status == 204)
        if edits is not None:
            relayed += edits.lines
        request.send_head(status, reason, relayed, framing, flush=False)
        self.head_sent = True

    def on_switch(self, tail: bytes) -> None:
        """An upstream ``101`` to a request that did not ask for one: a protocol error."""
        self.conn.abort()
        self._fail(UpstreamFailure("protocol", "101 Switching Protocols to a plain request"))

    def on_complete(self) -> None:
        self._finished = True
        self.request.end()
        pool = self.conn.pool
        if not self.request.body_done:
            self.conn.broken = True  # the upstream answered before the whole body
        if pool is not None:
            pool.release(self.conn)
        else:
            self.conn.close()  # a one-off connection (a refused WebSocket handshake)
        self._settle(None, whole=True)

    def on_failed(self, failure: UpstreamFailure | Stale) -> None:
        self._fail(failure)

    def _fail(self, failure: UpstreamFailure | Stale) -> None:
        self._finished = True
        if self._settled:
            return
        if self.head_sent:
            actual = failure.failure if isinstance(failure, Stale) else failure
            self.events.cut(self, actual)
            log.warning(
                "upstream %s failed mid-response (%s); client connection cut",
                self.conn.pool.server if self.conn.pool else "?",
                actual,
            )
            self.request.cut()
            self._settle(None)
        else:
            self._settle(failure)


def upstream_head(request: Request, target: str, headers: Sequence[tuple[str, str]]) -> bytes:
    """The upstream request head: ``target`` normalized (wsproxy.target), ``headers``
    rewritten (headers.upstream_request_headers), the body re-framed if chunked."""
    if request.chunked:
        headers = [*headers, ("Transfer-Encoding", "chunked")]
    return request_head(request.method or "GET", target, headers)


def upstream_head_fast(
    method: str,
    target: str,
    fields: Sequence[tuple[str, str]],
    added: str,
    request_id: str,
    *,
    chunked: bool,
    upgrade: str | None = None,
) -> bytes:
    """The upstream request head of a request whose fields all pass as they are
    (headers.untouched): ``fields``, then ``added`` (this hop's encoded
    ``X-Forwarded-*`` lines), ``X-Request-ID``, and the re-framing of a
    chunked body; the same bytes :func:`upstream_head` would write.

    ``upgrade``: the client's ``Upgrade`` value, for a WebSocket handshake
    (headers.untouched_upgrade, ``fields`` without Connection and Upgrade):
    ``Upgrade`` and ``Connection: upgrade`` end the head, as
    headers.upstream_request_headers puts them."""
    lines = "\r\n".join(map(": ".join, fields))  # no comprehension: one frame less
    if lines:
        lines += "\r\n"
    framing = "Transfer-Encoding: chunked\r\n" if chunked else ""
    if upgrade is not None:
        framing += f"Upgrade: {upgrade}\r\nConnection: upgrade\r\n"
    return (
        f"{method} {target} HTTP/1.1\r\n{lines}{added}X-Request-ID: {request_id}\r\n{framing}\r\n"
    ).encode("latin-1")


async def forward_http(
    request: Request,
    pool: ServerPool,
    head: bytes,
    context: Any,
    events: RelayEvents,
    *,
    fresh: bool = False,
) -> None:
    """Forward one request on a connection from ``pool`` (a new one if ``fresh``).

    Raises UpstreamFailure when nothing has been answered yet (the caller
    sends 502/504) and pool.PoolTimeout when no connection slot came free.
    ``events.answered`` runs when a valid response head arrived;
    ``events.cut`` when the upstream failed after it.  A stale pooled
    connection is retried once on a new one for an idempotent request
    without a body; a new connection's failure is the server's.
    """
    read_timeout = pool.upstream.read_timeout
    conn = await (pool.connect_new() if fresh else pool.acquire())
    while True:
        relay = Relay(request, conn, context, events)
        try:
            await relay.run(head, read_timeout)
            return
        except Stale as stale:
            if not retryable(request):
                raise stale.failure from None
            log.debug("upstream %s closed a pooled connection; retrying once", pool.server)
            conn = await pool.connect_new()
        except BaseException:
            # The client left or a timer ended it: the upstream did nothing wrong.
            conn.abandon()
            raise
        finally:
            if not relay._finished:
                conn.abandon()


def retryable(request: Request) -> bool:
    """Whether a request that met a stale connection can go again (RFC 9112 §9.3.1.1):
    an idempotent one with no body (a body sent to the dead connection is gone)."""
    return request.method in IDEMPOTENT and not request.has_body
