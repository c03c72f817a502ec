"""The request dispatch: from a parsed request to an answer, a relay or a session.

``Proxy.handle`` is the one dispatch point between the front door
(wsproxy.http.front) and the pure parts: it matches the route, decides
between plain HTTP and a WebSocket handshake, and turns every failure into
an HTTP answer (``404`` no route, ``400``/``426`` bad handshake,
``502``/``504`` upstream trouble); nothing reaches the client as a
traceback.  One ``Proxy`` serves one configuration; the server state
(wsproxy.server) owns the listeners, the drain and the open sessions.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from wsproxy.config import Config, Rewrite, Route, Upstream
from wsproxy.errors import UpstreamFailure
from wsproxy.forward import Relay, forward_http, retryable, upstream_head, upstream_head_fast
from wsproxy.headers import (
    ClientInfo,
    check_request,
    check_websocket_handshake,
    choose_request_id,
    client_address,
    forwarded_for_proto,
    forwarded_host_field,
    header_values,
    untouched,
    untouched_upgrade,
    upstream_request_headers,
    wants_websocket,
    without_upgrade_fields,
)
from wsproxy.http.front import Request
from wsproxy.http.pool import PoolTimeout, Stale
from wsproxy.http.wire import request_head
from wsproxy.observe import Exchange, Observability
from wsproxy.origins import origin_allowed
from wsproxy.rewrite import RawResponseEdits, strip_prefix
from wsproxy.rewrite import request_headers as rewrite_request
from wsproxy.routing import Router
from wsproxy.sessions import redact_target
from wsproxy.target import BadTarget, parse_target
from wsproxy.tls import TlsContexts
from wsproxy.tls import load as load_tls
from wsproxy.tunnel import turn_budget
from wsproxy.upstreams.checks import Checker
from wsproxy.upstreams.servers import Group, Server, Upstreams
from wsproxy.websocket import SessionOwner, TunnelSettings, handle_websocket
from wsproxy.wsframes import FrameBudget

log = logging.getLogger("wsproxy")


_NONE: list[str] = []  # the values of an absent header (never modified)

#: Dispatch decisions kept (method, version, Host values, target -> route);
#: the table starts over when full, so hostile variety costs only misses.
_DECISIONS = 4096
#: Longest target and Host values whose decision is kept: a decision holds
#: them a few times over, so the table stays a few MB whatever clients send.
_DECIDED_SIZE = 512


@dataclass(frozen=True, slots=True)
class _Refusal:
    """An answer the proxy gives without an upstream (check, target, route)."""

    status: int
    message: str
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False
    #: The target as the access log shows it (redacted as configured).
    logged_path: str | None = None


@dataclass(frozen=True, slots=True)
class _Forward:
    """A request to forward, with what every request alike reuses."""

    #: The normalized target as the upstream request line carries it.
    origin_form: str
    route: Route
    upstream: Upstream
    group: Group
    logged_path: str | None
    #: ``X-Forwarded-Host: <the client's Host>\r\n`` (the fast head; "" without Host).
    forwarded_host: str
    #: The route's response rewrite, prepared once (None without one).
    response_edits: RawResponseEdits | None = None
    #: The route changes the request's fields (rewrite.host, request_headers).
    rewrites_request: bool = False


@dataclass(slots=True)
class _Client:
    """What the proxy keeps per client connection (``ClientConnection.app_data``)."""

    info: ClientInfo
    #: ``X-Forwarded-For`` and ``-Proto`` lines for a request that sent neither.
    forwarded: str
    #: The peer is one of ``proxy.trusted_proxies``: its X-Forwarded-For names the client.
    trusted: bool = False


#: The versions llhttp accepts, as the access log writes them.
_VERSIONS = {(major, minor): f"HTTP/{major}.{minor}" for major in range(10) for minor in range(10)}


class Proxy:
    """Handles every request on the front listeners for one configuration."""

    def __init__(
        self,
        config: Config,
        observability: Observability,
        sessions: SessionOwner,
        *,
        reuse: Upstreams | None = None,
    ) -> None:
        """``reuse``: the upstreams of the configuration this one replaces
        (a reload): servers named again keep their pools, health and load."""
        self.config = config
        self.observability = observability
        #: The server state: the draining flag and the open sessions.
        self.sessions = sessions
        self.upstreams = Upstreams(config.upstreams, observability, reuse=reuse)
        #: forward.RelayEvents.servers_down: the health table, never replaced.
        self.servers_down = self.upstreams.health.watch
        self.checker = Checker(self.upstreams.servers, self.upstreams.health)
        self.router = Router(config.routes)
        #: Each route's response rewrite, prepared once per configuration.
        self._response_edits = {
            route.name: RawResponseEdits(route.rewrite.response_headers)
            for route in config.routes
            if route.rewrite.response_headers
        }
        #: Recent dispatch decisions (_decide), bounded by _DECISIONS.
        self._decisions: dict[tuple[object, ...], _Refusal | _Forward] = {}
        # Request IDs: a random per-process prefix and a counter, unique and
        # cheap (uuid4 cost ~5 µs a request); 32 hex digits like before.  The
        # counter starts at 2**64 so that hex() writes 16 digits after its
        # "0x1" with no format spec (a third of the cost of ":016x").
        self._id_prefix = secrets.token_hex(8)
        self._id_counter = itertools.count(1 << 64)
        #: Frames all WebSocket observers may parse per loop turn (set in open()).
        self.frame_budget: FrameBudget | None = None
        #: Each route's TunnelSettings, made at its first handshake (_tunnel_settings).
        self._tunnel_settings: dict[str, TunnelSettings] = {}

    async def open(
        self, frame_budget: FrameBudget | None = None, tls: TlsContexts | None = None
    ) -> None:
        """Start the health checks; ``frame_budget``: the server's, shared by
        the sessions of every configuration (one budget per loop turn);
        ``tls``: the contexts of this configuration (read when None)."""
        self.frame_budget = frame_budget or turn_budget(asyncio.get_running_loop())
        self._tunnel_settings.clear()  # made with the budget in force from now on
        self.upstreams.use_tls(tls or load_tls(self.config))
        self.checker.start()

    async def close(self) -> None:
        await self.checker.stop()
        self.upstreams.close()

    async def retire(self, successor: Proxy) -> None:
        """A reload replaced this configuration by ``successor``'s.

        Requests in flight finish on what they hold (their server, its
        connection); the health checks stop, and the pools of the servers the
        new configuration no longer names close (idle connections now, busy
        ones when their answer ends).  The rest is ``successor``'s.
        """
        await self.checker.stop()
        for server in successor.upstreams.dropped:
            server.pool.close()

    def handle(self, request: Request) -> Coroutine[Any, Any, None] | None:
        """front.App.handle: answer now, start a relay, or return the work for a task."""
        method = request.method
        version = request.version
        assert method is not None
        assert version is not None
        hosts = request.index.get("host", _NONE)
        key = (method, version, tuple(hosts), request.target)
        decision = self._decisions.get(key)
        if decision is None:
            decision = self._decide(method, version, hosts, request.target)
            size = len(request.target) + sum(map(len, hosts))
            if size <= _DECIDED_SIZE:  # long ones are decided each time
                if len(self._decisions) >= _DECISIONS:
                    self._decisions.clear()
                self._decisions[key] = decision
        exchange = request.exchange = self._exchange(request, decision.logged_path)
        if type(decision) is _Refusal:
            request.answer(
                decision.status, decision.message, decision.headers, close=decision.close
            )
            return None
        assert isinstance(decision, _Forward)
        exchange.route = decision.route.name
        if decision.response_edits is not None:
            exchange.response_edits = decision.response_edits
        client = request.connection.app_data
        if client is None:  # once per connection
            client = request.connection.app_data = self._client(request)
        if client.trusted:
            # Logs and the status page name the client the trusted proxy
            # names (nginx's realip), and keep the peer beside it.
            resolved = client_address(client.info, request.index.get("x-forwarded-for", _NONE))
            if resolved is not None and resolved != request.peer_ip:
                exchange.note("peer", exchange.client)
                exchange.client = resolved
        index = request.index
        if "upgrade" in index:
            if self._is_websocket(request):
                return self._websocket(request, decision, client, exchange)
            if request.upgrade:
                # Upgrade: h2c and the like (with Connection: upgrade) are
                # forwarded as plain HTTP, their Upgrade dropped as hop-by-hop
                # (what nginx does by default).
                exchange.note("upgrade_ignored", index["upgrade"][0][:100])
        server = self._pick(request, decision, client, exchange)
        assert server is not None  # the first pick always finds one
        head = self._head(request, decision, client, server, exchange)
        pool = server.pool
        conn = pool.take_idle()
        if conn is None:
            return self._forward(request, exchange, server, head, client, decision=decision)
        # The fast path: a kept-alive connection is free, so the exchange runs
        # on the two protocols' callbacks with no task (Relay.start).
        relay = Relay(request, conn, exchange, self)
        request.pending = True
        request.on_abort = relay.abort
        relay.start(head, pool.upstream.read_timeout)
        return None

    def finished(self, request: Request) -> None:
        """front.App.finished: one count and one access-log line per request.

        The front door calls it however the request ended, also when it
        ended the request itself (``abort_status``: the client left, 499; a
        timer or limit answered, 408/413/...; the upstream was abandoned).
        """
        exchange = request.exchange
        if exchange is None:
            path = self._logged_path(request.target)
            exchange = request.exchange = self._exchange(request, path)
        status = request.abort_status
        if status is None or (status == 499 and request.response_started):
            status = request.status or 499
        if request.bytes_sent:
            exchange.bytes_to_client = request.bytes_sent
        if exchange.target is not None:
            exchange.target.in_flight -= 1
        self.observability.request_done(exchange, status, time.monotonic())

    def refused(self, request: Request, status: int, message: str) -> None:
        """The front door refused a request: one access-log line, counted, no traceback.

        Only what was parsed before the refusal is known; nothing of the
        request's bytes is quoted in the answer or the log.
        """
        exchange = self._exchange(request, self._logged_path(request.target))
        exchange.note("error", message)
        log.debug("refused a request from %s: %s", exchange.client, message)
        self.observability.request_done(exchange, status, time.monotonic())

    def _exchange(self, request: Request, path: str | None) -> Exchange:
        version = request.version
        request_id = self._id_prefix + hex(next(self._id_counter))[3:]
        sent = request.index.get("x-request-id")
        if sent is not None:
            request_id = choose_request_id(sent, request_id)
        return Exchange(
            request_id,
            request.method,
            path,
            request.connection.peer,
            _VERSIONS.get(version) if version is not None else None,
            request.started,
        )

    def _logged_path(self, target: str) -> str | None:
        if not target:
            return None
        return redact_target(target) if self.config.access_log.redact_query else target

    def _client(self, request: Request) -> _Client:
        info = ClientInfo(
            peer_ip=request.peer_ip,
            scheme="https" if request.connection.arrival.tls else "http",
            trusted_proxies=self.config.proxy.trusted_proxies,
        )
        return _Client(info, forwarded_for_proto(info), info.peer_is_trusted())

    # --- forward.RelayEvents: a relay's context is the request's Exchange ---

    def answered(self, relay: Relay) -> None:
        exchange: Exchange = relay.context
        assert exchange.target is not None
        self.upstreams.ok(exchange.target)

    def cut(self, relay: Relay, failure: UpstreamFailure) -> None:
        self._record_failure(relay.context, failure)

    def ended(self, relay: Relay, failure: UpstreamFailure | Stale | None) -> None:
        request = relay.request
        if failure is None or request.abort_status is not None:
            request.done()
            return
        exchange: Exchange = relay.context
        if isinstance(failure, Stale):
            server = exchange.target
            if retryable(request) and server is not None:
                log.debug("upstream %s closed a pooled connection; retrying once", server.label)
                # Decided again (a pure function of the request), so a failed
                # connect now still goes on to the next server.
                assert request.method is not None
                assert request.version is not None
                hosts = request.index.get("host", _NONE)
                decision = self._decide(request.method, request.version, hosts, request.target)
                client = request.connection.app_data or self._client(request)
                request.continue_with(
                    self._forward(
                        request,
                        exchange,
                        server,
                        relay.head,
                        client,
                        fresh=True,
                        decision=decision if isinstance(decision, _Forward) else None,
                    )
                )
                return
            failure = failure.failure
        self._upstream_failed(request, exchange, failure)
        request.done()

    async def _forward(
        self,
        request: Request,
        exchange: Exchange,
        server: Server,
        head: bytes,
        client: _Client,
        *,
        fresh: bool = False,
        decision: _Forward | None = None,
    ) -> None:
        """The slow path: wait for a connection slot or connect first.

        A connect that fails is tried on the next server (each at most once)
        when ``decision`` says how to pick one: nothing reached the server,
        so any request may go again, body and all (it is read only once
        connected).
        """
        tried: set[Server] = set()
        while True:
            try:
                await forward_http(request, server.pool, head, exchange, self, fresh=fresh)
            except UpstreamFailure as failure:
                if decision is not None and failure.connecting:
                    tried.add(server)
                    following = self._retry(request, decision, client, exchange, tried, failure)
                    if following is not None:
                        server, fresh = following, False
                        head = self._head(request, decision, client, server, exchange)
                        continue
                    self._answer_failure(request, exchange, failure)
                    return
                self._upstream_failed(request, exchange, failure)
            except PoolTimeout:
                self._pool_timeout(request, exchange, server.settings)
            return

    def _retry(
        self,
        request: Request,
        decision: _Forward,
        client: _Client,
        exchange: Exchange,
        tried: set[Server],
        failure: UpstreamFailure,
    ) -> Server | None:
        """Count a failed connect; the next server to try, or None when none is left."""
        self._record_failure(exchange, failure)
        failed = exchange.server
        following = self._pick(request, decision, client, exchange, frozenset(tried))
        then = f"; trying server {following.label}" if following is not None else ""
        self._log_failure(exchange, failed, failure, then)
        return following

    def _head(
        self,
        request: Request,
        decision: _Forward,
        client: _Client,
        server: Server,
        exchange: Exchange,
    ) -> bytes:
        """The upstream request head for ``server``."""
        if not decision.rewrites_request and untouched(request.index):
            # Nothing to drop or replace (the common case): the client's
            # fields as they came, then this hop's own.
            return upstream_head_fast(
                request.method or "GET",
                decision.origin_form,
                request.headers,
                client.forwarded + decision.forwarded_host,
                exchange.request_id,
                chunked=request.chunked,
            )
        headers = self._upstream_headers(
            request, client.info, server.label, exchange, decision.route.rewrite
        )
        return upstream_head(request, decision.origin_form, headers)

    def _decide(
        self, method: str, version: tuple[int, int], hosts: list[str], raw_target: str
    ) -> _Refusal | _Forward:
        """The request checks, the normalized target and the route: pure functions
        of the method, version, Host values and target, so the result is kept
        (``_decisions``) and the next request alike skips all three."""
        logged_path = self._logged_path(raw_target)
        rejection = check_request(method, version, hosts)
        if rejection is not None:
            close = rejection.status in (405, 505)  # another protocol, or a tunnel request
            return _Refusal(
                rejection.status, rejection.reason, rejection.headers, close, logged_path
            )
        try:
            target = parse_target(raw_target)
        except BadTarget as exc:
            return _Refusal(exc.status, f"bad request target: {exc}", logged_path=logged_path)
        route = self.router.match(hosts[0] if hosts else None, target.route_path)
        if route is None:
            return _Refusal(404, "no route matches this request", logged_path=logged_path)
        upstream = self.config.upstreams[route.upstream]
        origin_form = target.origin_form
        if route.rewrite.strip_prefix:
            stripped = strip_prefix(route.path_prefix, origin_form)
            if stripped is None:
                # Matched only through the lenient reading (//api, /api%2F):
                # neither stripped nor forwarded as it is (wsproxy.rewrite).
                return _Refusal(
                    400,
                    "bad request target: not under the route's prefix as written",
                    logged_path=logged_path,
                )
            origin_form = stripped
        return _Forward(
            origin_form,
            route,
            upstream,
            self.upstreams.groups[upstream.name],
            logged_path,
            forwarded_host_field(hosts),
            self._response_edits.get(route.name),
            route.rewrite.request_rewritten,
        )

    def _upstream_headers(
        self,
        request: Request,
        client: ClientInfo,
        server: str,
        exchange: Exchange,
        rewrite: Rewrite,
        *,
        websocket: bool = False,
    ) -> list[tuple[str, str]]:
        dropped: list[str] = []
        upgrade = request.index.get("upgrade", _NONE)
        headers = upstream_request_headers(
            request.headers,
            client,
            default_host=server,
            request_id=exchange.request_id,
            websocket_upgrade=(upgrade[0] if upgrade else "websocket") if websocket else None,
            allow_underscores=self.config.proxy.allow_underscore_headers,
            dropped=dropped,
            forward_expect=request.version == (1, 1),
            index=request.index,
        )
        if dropped:
            log.debug(
                "request %s: dropped header(s) with '_' in the name: %s",
                exchange.request_id,
                ", ".join(name[:64] for name in dropped),
            )
        if rewrite.request_rewritten:
            return rewrite_request(headers, rewrite)
        return headers

    def _pick(
        self,
        request: Request,
        decision: _Forward,
        client: _Client,
        exchange: Exchange,
        tried: frozenset[Server] = frozenset(),
    ) -> Server | None:
        """A server for this request, counted in flight until ``finished``."""
        group = decision.group
        address = None
        if group.balance == "ip_hash":
            address = client_address(client.info, request.index.get("x-forwarded-for", _NONE))
        server = group.pick(client=address, tried=tried)
        if server is None:
            return None
        previous = exchange.target
        if previous is not None:
            previous.in_flight -= 1
        server.in_flight += 1
        exchange.upstream = decision.upstream.name
        exchange.server = server.label
        exchange.target = server
        return server

    def _is_websocket(self, request: Request) -> bool:
        if not wants_websocket(request.headers, request.index):
            return False
        # RFC 9110 §7.8: "A server MUST ignore an Upgrade header field that is
        # received in an HTTP/1.0 request."  Strict mode does; the default
        # forwards it, because the client is usually a legacy load balancer
        # that downgraded a browser's HTTP/1.1 handshake.
        assert request.version is not None
        return request.version >= (1, 1) or self.config.proxy.http10_upgrade == "accept"

    async def _websocket(
        self,
        request: Request,
        decision: _Forward,
        client: _Client,
        exchange: Exchange,
    ) -> None:
        """A WebSocket handshake, in its request's task: the checks the proxy
        makes itself, then the upstream's handshake (the next server after a
        failed connect).  One coroutine for both: each step of the task
        passes through every coroutine level it awaits in."""
        if self.sessions.draining:
            request.answer(
                503, "shutting down; reconnect to another instance", [("Retry-After", "1")]
            )
            return
        assert request.method is not None
        rejection = check_websocket_handshake(
            request.method, request.headers, has_body=request.has_body, index=request.index
        )
        if rejection is not None:
            exchange.upgrade_result = "bad_handshake"
            request.answer(rejection.status, rejection.reason, rejection.headers)
            return
        route = decision.route
        rules = route.websocket.allowed_origins
        if rules:
            origins = request.index.get("origin", _NONE)
            if not origin_allowed(rules, origins):
                # Cross-site WebSocket hijacking: a page from elsewhere, with
                # the user's cookies (wsproxy.origins).
                exchange.upgrade_result = "bad_handshake"
                exchange.note("error", "origin not allowed")
                exchange.note("origin", ", ".join(origins)[:200])
                request.answer(403, "this origin may not open WebSockets here", [])
                return
        on_end: Callable[[], None] | None = None
        limit = self.config.proxy.max_websockets_per_client
        if limit:
            address = client_address(client.info, request.index.get("x-forwarded-for", _NONE))
            if address is None:
                address = "unknown"
            if not self.sessions.admit(address, limit):
                exchange.upgrade_result = "bad_handshake"
                exchange.note("error", f"more than {limit} WebSocket sessions from this address")
                request.answer(
                    429,
                    "too many WebSocket sessions from this address",
                    [("Retry-After", "10")],
                )
                return
            released = False

            def release() -> None:
                nonlocal released
                if not released:
                    released = True
                    self.sessions.release(address)

            on_end = release
        settings = self._tunnel_settings.get(route.name)
        if settings is None:
            settings = self._tunnel_settings[route.name] = self._settings_for(route)
        try:
            server = self._pick(request, decision, client, exchange)
            tried: set[Server] = set()
            while server is not None:
                head, connection = self._handshake_head(request, decision, client, server, exchange)
                try:
                    await handle_websocket(
                        request,
                        decision.origin_form,
                        head,
                        connection,
                        decision.upstream,
                        server,
                        exchange,
                        settings,
                        self.sessions,
                        self.upstreams,
                        self,
                        on_end=on_end,
                    )
                    return
                except UpstreamFailure as failure:
                    if failure.connecting:
                        # Nothing reached the server: the next one may take the handshake.
                        tried.add(server)
                        server = self._retry(request, decision, client, exchange, tried, failure)
                        if server is not None:
                            continue
                        exchange.upgrade_result = "upstream_unavailable"
                        self._answer_failure(request, exchange, failure)
                        return
                    exchange.upgrade_result = "upstream_unavailable"
                    self._upstream_failed(request, exchange, failure)
                    return
        finally:
            if on_end is not None and not exchange.websocket_session:
                on_end()  # no session started: the handshake's count ends here

    def _handshake_head(
        self,
        request: Request,
        decision: _Forward,
        client: _Client,
        server: Server,
        exchange: Exchange,
    ) -> tuple[bytes, str]:
        """The upstream handshake's head for ``server``, and the ``Connection``
        value it carries (for the early-close diagnosis)."""
        index = request.index
        if not decision.rewrites_request and untouched_upgrade(index):
            # Nothing to drop or replace but Connection and Upgrade (what
            # browsers send): the client's other fields as they came, then
            # this hop's own.
            head = upstream_head_fast(
                "GET",
                decision.origin_form,
                without_upgrade_fields(request.headers),
                client.forwarded + decision.forwarded_host,
                exchange.request_id,
                chunked=False,
                upgrade=index["upgrade"][0],
            )
            return head, "upgrade"
        headers = self._upstream_headers(
            request, client.info, server.label, exchange, decision.route.rewrite, websocket=True
        )
        return request_head("GET", decision.origin_form, headers), ", ".join(
            header_values(headers, "connection")
        )

    def _settings_for(self, route: Route) -> TunnelSettings:
        """What every session of ``route`` runs with (the same for all of
        them: one object per route, not one per handshake)."""
        proxy = self.config.proxy
        return TunnelSettings(
            buffer_limit=proxy.tunnel_buffer,
            idle_timeout=route.websocket.idle_timeout,
            early_close_window=route.websocket.early_close_window,
            observe_frames=proxy.observe_frames,
            frame_budget=self.frame_budget,
            max_lifetime=route.websocket.max_lifetime,
            tcp_keepalive=proxy.tcp_keepalive,
        )

    def _upstream_failed(
        self, request: Request, exchange: Exchange, failure: UpstreamFailure
    ) -> None:
        """No answer from the upstream: count, log the details, tell the client in general."""
        self._record_failure(exchange, failure)
        self._log_failure(exchange, exchange.server, failure)
        self._answer_failure(request, exchange, failure)

    @staticmethod
    def _log_failure(
        exchange: Exchange, server: str | None, failure: UpstreamFailure, then: str = ""
    ) -> None:
        """The operator's line for a failed attempt (``then``: what happens next)."""
        log.warning(
            "route %s: upstream %s server %s failed: %s (request %s)%s",
            exchange.route,
            exchange.upstream,
            server,
            failure,
            exchange.request_id,
            then,
        )

    def _answer_failure(
        self, request: Request, exchange: Exchange, failure: UpstreamFailure
    ) -> None:
        """Tell the client, in general words (the details are in the log)."""
        request.answer(failure.status, failure.client_message)

    def _pool_timeout(self, request: Request, exchange: Exchange, upstream: Upstream) -> None:
        """Every connection slot stayed busy: the proxy's limit, not the server's failure."""
        exchange.note("error", "pool: no free upstream connection within connect_timeout")
        log.warning(
            "route %s: upstream %s server %s: all %d connections busy for %gs (request %s)",
            exchange.route,
            exchange.upstream,
            exchange.server,
            upstream.max_connections,
            upstream.connect_timeout,
            exchange.request_id,
        )
        request.answer(504, "no upstream connection free in time")

    def _record_failure(self, exchange: Exchange, failure: UpstreamFailure) -> None:
        """Count a failed attempt against its server and give the access log its error.

        Also the ``on_cut`` of a response that failed after its head went out.
        """
        assert exchange.target is not None
        self.upstreams.failed(exchange.target, failure, time.monotonic())
        exchange.note("error", str(failure))
