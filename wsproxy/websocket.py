"""A WebSocket handshake, upstream first, then the tunnel.

Order of events for one session:

1. Connect to the upstream server (``connect_timeout``: ``504`` when it
   expires, ``502`` when refused or unreachable).  A handshake gets a
   connection of its own, never a pooled one: it will not come back.
2. Send it an HTTP/1.1 handshake: the client's headers minus hop-by-hop ones,
   plus ``Upgrade: websocket`` and ``Connection: upgrade``.  This is the step
   that nginx without ``proxy_http_version 1.1`` gets wrong (HTTP/1.0, which a
   Swoole backend closes right after ``101``).
3. Read the upstream's answer (``read_timeout``), parsed by the same llhttp
   parser as every response (wsproxy.http.pool).  Not ``101``: relay that
   response, body included, and close the upstream connection.  ``101``:
   answer the client with the upstream's ``101`` and headers, point both
   transports at the tunnel with ``set_protocol`` (tunnel.py), and forward
   first what either side sent behind its handshake.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from wsproxy.config import Upstream
from wsproxy.errors import UpstreamFailure
from wsproxy.forward import Relay, RelayEvents
from wsproxy.headers import (
    HeaderIndex,
    NotableField,
    check_switching_protocols,
    header_index,
    switching_protocols_headers,
)
from wsproxy.http.front import Request
from wsproxy.http.pool import Stale, UpstreamConnection, connect
from wsproxy.http.wire import response_head
from wsproxy.listeners import Gate
from wsproxy.observe import Exchange
from wsproxy.rewrite import response_headers as rewrite_response
from wsproxy.sessions import SessionInfo
from wsproxy.tunnel import Tunnel
from wsproxy.upstreams.servers import Server, Upstreams
from wsproxy.wsframes import FrameBudget, allowed_rsv_bits

log = logging.getLogger("wsproxy.websocket")


@dataclass(frozen=True, slots=True)
class TunnelSettings:
    """The route's and the proxy's settings one session runs with."""

    buffer_limit: int
    idle_timeout: float
    early_close_window: float
    observe_frames: bool
    #: Shared by every session of the server (tunnel.turn_budget).
    frame_budget: FrameBudget | None = None
    #: ``routes[].websocket.max_lifetime`` (0: none), jittered ±10% per session.
    max_lifetime: float = 0.0
    #: ``proxy.tcp_keepalive`` (0: off).
    tcp_keepalive: float = 0.0


class SessionOwner(Protocol):
    """Who holds the open sessions (the server state, wsproxy.server)."""

    def admit(self, client: str, limit: int) -> bool:
        """Count one more session (or handshake in flight) from ``client``,
        unless ``limit`` are counted already; ``release`` undoes it."""

    def release(self, client: str) -> None: ...

    @property
    def draining(self) -> bool:
        """True once shutdown began: a session that starts now ends at once."""

    def session_started(self, tunnel: Tunnel, info: SessionInfo, method: str) -> None: ...

    def session_ended(self, tunnel: Tunnel) -> None: ...


class _HandshakeRelay(Relay):
    """A relay that stops at an upstream ``101`` instead of refusing it."""

    __slots__ = ()

    def on_head(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        notable: list[NotableField],
        has_length: bool,
    ) -> None:
        if status == 101:
            decoded = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]
            self.switched = (status, reason, decoded, b"")
            return
        exchange: Exchange = self.context
        exchange.upgrade_result = "upstream_rejected"
        super().on_head(status, reason, headers, notable, has_length)

    def on_switch(self, tail: bytes) -> None:
        assert self.switched is not None
        status, reason, headers, _ = self.switched
        self.switched = (status, reason, headers, tail)
        self._finished = True
        self._settle(None)


async def handle_websocket(
    request: Request,
    target: str,
    head: bytes,
    upstream_connection: str,
    upstream: Upstream,
    server: Server,
    exchange: Exchange,
    settings: TunnelSettings,
    sessions: SessionOwner,
    upstreams: Upstreams,
    events: RelayEvents,
    *,
    on_end: Callable[[], None] | None = None,
) -> None:
    """Run one handshake; raises UpstreamFailure before any answer.

    ``on_end`` is called when the session that starts here ends (not when
    none starts).

    ``target`` is the normalized origin-form target (wsproxy.target), ``head``
    the upstream request's head (its fields through
    headers.upstream_request_headers, with the upgrade) and
    ``upstream_connection`` the ``Connection`` value in it.  A refusal is
    relayed like any response (``events`` hears of it, with ``exchange`` as
    the relay's context).
    """
    conn = await connect(
        server.address,
        upstream.connect_timeout,
        UpstreamConnection,
        server.pool.tls,
        server.pool.server_hostname,
    )
    relay = _HandshakeRelay(request, conn, exchange, events)
    try:
        await relay.run(head, upstream.read_timeout)
    except Stale as stale:  # never reused, so never stale; for the type checker
        conn.abandon()
        raise stale.failure from None
    except BaseException:
        conn.abandon()  # cancelled (the client left, a timer): not the upstream's failure
        raise
    if relay.switched is None:
        return  # the upstream's refusal was relayed
    _status, reason, response_headers, tail = relay.switched
    try:
        key = request.index.get("sec-websocket-key")
        index = header_index(response_headers)
        problem = check_switching_protocols(response_headers, key[0] if key else "", index)
        if problem is not None:
            raise UpstreamFailure("protocol", problem)
    except BaseException:
        conn.abort()
        raise
    upstreams.ok(server)
    info = SessionInfo(
        route=exchange.route,
        client=exchange.client,
        server=server.label,
        request_id=exchange.request_id,
        path=exchange.path or "",
        upstream_version="HTTP/1.1",  # what the request line said (wire.request_head)
        upstream_connection=upstream_connection,
        early_close_window=settings.early_close_window,
        upstream_path=target,
        upstream_tls=server.tls,
    )
    _tunnel(
        request,
        conn,
        reason,
        response_headers,
        index,
        tail,
        settings,
        info,
        exchange,
        sessions,
        server,
        on_end,
    )


class _Ended:
    """What a session's end gives back (Tunnel.on_finished): its server's
    count, its listener's slot, the per-client count, the live table.

    A small object rather than a closure: it is held for as long as the
    session lives, and a closure over four names costs five objects.
    """

    __slots__ = ("gate", "on_end", "server", "sessions")

    def __init__(
        self,
        server: Server,
        gate: Gate | None,
        on_end: Callable[[], None] | None,
        sessions: SessionOwner,
    ) -> None:
        self.server = server
        self.gate = gate
        self.on_end = on_end
        self.sessions = sessions

    def __call__(self, tunnel: Tunnel) -> None:
        self.server.tunnels -= 1
        if self.gate is not None:
            self.gate.release()
        if self.on_end is not None:
            self.on_end()
        self.sessions.session_ended(tunnel)


def _tunnel(
    request: Request,
    conn: UpstreamConnection,
    reason: bytes,
    response_headers: Sequence[tuple[str, str]],
    response_index: HeaderIndex,
    upstream_tail: bytes,
    settings: TunnelSettings,
    info: SessionInfo,
    exchange: Exchange,
    sessions: SessionOwner,
    server: Server,
    on_end: Callable[[], None] | None,
) -> None:
    assert conn.transport is not None
    extensions = ", ".join(response_index.get("sec-websocket-extensions", ()))
    tunnel = Tunnel(
        conn.transport,
        buffer_limit=settings.buffer_limit,
        idle_timeout=settings.idle_timeout,
        observe_frames=settings.observe_frames,
        allowed_rsv=allowed_rsv_bits(extensions),
        budget=settings.frame_budget,
        loop=request.connection.loop,
        upstream_half_close=conn.half_close,
    )
    request.response_started = request.response_done = True
    request.status = 101
    try:
        relayed = switching_protocols_headers(response_headers, response_index)
        if exchange.response_edits is not None:
            relayed = rewrite_response(relayed, exchange.response_edits.edits)
        request.connection.write(response_head(101, reason, relayed))
        assert tunnel.client_side is not None
        client_transport, client_tail = request.connection.take_over(tunnel.client_side)
    except BaseException:
        tunnel.close("error", reset=True)
        raise
    # From here the session lives on its own: the server state holds it
    # until it ends, and the request's handler returns.
    exchange.upgrade_result = "accepted"
    exchange.websocket_session = True
    sessions.session_started(tunnel, info, request.method or "GET")
    server.tunnels += 1  # least_conn's load, until the session ends
    # The client's socket is the tunnel's now: it counts against its
    # listener's max_connections until the session ends.
    ended = _Ended(server, request.connection.gate, on_end, sessions)
    tunnel.on_finished = ended
    try:
        tunnel.start(
            client_transport,
            client_tail=client_tail,
            upstream_tail=upstream_tail,
            upstream_eof=conn.eof,
            upstream_lost=(conn.lost_exc,) if conn.lost else None,
            client_half_close=not request.connection.arrival.tls,
        )
        conn.detach()
        if settings.tcp_keepalive:
            tunnel.keep_alive(settings.tcp_keepalive)
        if settings.max_lifetime:
            # ±10%: sessions opened together (a reconnect storm after a
            # deploy) do not all expire together.
            tunnel.expire_after(settings.max_lifetime * random.uniform(0.9, 1.1))
    except Exception:
        # Nothing may leave a session in the live set with nobody to end it.
        log.exception("session %s failed to start", info.request_id)
        tunnel.close("error", reset=True)
        tunnel.on_finished = None
        ended(tunnel)
        return
    if sessions.draining:
        tunnel.shutdown()  # the 101 arrived during shutdown
