"""Wiring and lifecycle: listeners, the request dispatch, start and stop.

``Proxy.handle`` is the one dispatch point between aiohttp and the pure parts:
it matches the route, decides between plain HTTP and a WebSocket handshake,
and turns every failure into an HTTP answer (``404`` no route, ``400``/``426``
bad handshake, ``502``/``504`` upstream trouble); nothing reaches the client
as a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from collections.abc import Iterator, KeysView, Sequence
from functools import partial
from typing import TextIO

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from wsproxy.admin import admin_app
from wsproxy.aiohttp_adapter import Server, TextResponse, parse_error_reason, stops_parsing
from wsproxy.config import Address, Config, Route, Upstream
from wsproxy.errors import UpstreamFailure
from wsproxy.forward import forward_http, make_session
from wsproxy.headers import (
    ClientInfo,
    check_request,
    check_websocket_handshake,
    choose_request_id,
    upstream_request_headers,
    wants_websocket,
)
from wsproxy.observe import Exchange, Observability
from wsproxy.routing import RoundRobin, Router, balancers
from wsproxy.sessions import redact_target
from wsproxy.target import BadTarget, Target, parse_target
from wsproxy.tunnel import Tunnel, turn_budget
from wsproxy.websocket import TunnelSettings, handle_websocket
from wsproxy.wsframes import FrameBudget

log = logging.getLogger("wsproxy")

#: How long an idle keep-alive client connection stays open (nginx: 75s).
CLIENT_KEEPALIVE_TIMEOUT = 75.0


def _text(status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> web.Response:
    response = TextResponse(status=status, text=message + "\n")
    for name, value in headers:
        response.headers[name] = value
    if status == 505:
        response.force_close()  # the client speaks another protocol
    return response


class Proxy:
    """Handles every request on the front listeners for one configuration."""

    def __init__(self, config: Config, observability: Observability) -> None:
        self.config = config
        self.observability = observability
        self.router = Router(config.routes)
        self.balancers: dict[str, RoundRobin] = balancers(config.upstreams)
        self.sessions: dict[str, aiohttp.ClientSession] = {}
        #: Frames all WebSocket observers may parse per loop turn (set in open()).
        self.frame_budget: FrameBudget | None = None

    @property
    def draining(self) -> bool:
        return self.observability.draining

    @property
    def tunnels(self) -> KeysView[Tunnel]:
        """The open WebSocket sessions."""
        return self.observability.live.keys()

    async def open(self) -> None:
        self.frame_budget = turn_budget(asyncio.get_running_loop())
        for name, upstream in self.config.upstreams.items():
            self.sessions[name] = make_session(upstream)

    async def close(self) -> None:
        for session in self.sessions.values():
            await session.close()
        self.sessions.clear()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        exchange = self._exchange(request)
        try:
            response = await self._dispatch(request, exchange)
        except asyncio.CancelledError:
            # aiohttp cancels the handler when the client disconnects
            # (handler_cancellation): the upstream request is abandoned too.
            self.observability.request_done(exchange, 499, time.monotonic())
            raise
        except ConnectionError as exc:
            # The client went away while we were answering: nobody is left to
            # tell, and it is not a server error (aiohttp would log a 500).
            log.debug("client %s disconnected: %s", exchange.client, exc)
            response = web.Response(status=499)  # nginx's "client closed request"
        if response.prepared:
            exchange.extra["bytes_to_client"] = response.body_length
        self.observability.request_done(exchange, response.status, time.monotonic())
        return response

    def bad_request(self, request: web.BaseRequest, exc: HttpProcessingError) -> web.Response:
        """aiohttp's parser refused a request: one access-log line, counted, no traceback.

        Nothing of the request is known but its peer: no method, path or
        header is trusted or logged, and the answer quotes none of its bytes.
        """
        reason = parse_error_reason(exc)
        exchange = Exchange(
            request_id=uuid.uuid4().hex,
            method=None,
            path=None,
            client=self._peer(request),
            version=None,
            started=time.monotonic(),
        )
        exchange.extra["error"] = f"malformed request: {reason}"
        log.debug("refused a malformed request from %s: %s", exchange.client, reason)
        self.observability.request_done(exchange, 400, time.monotonic())
        return _text(400, f"malformed request: {reason}")

    @staticmethod
    def _peer(request: web.BaseRequest) -> str:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(request.remote)

    def _exchange(self, request: web.BaseRequest) -> Exchange:
        request_ids = request.headers.getall("X-Request-ID", [])
        path = request.raw_path
        if self.config.access_log.redact_query:
            path = redact_target(path)
        return Exchange(
            request_id=choose_request_id(
                [("X-Request-ID", v) for v in request_ids], uuid.uuid4().hex
            ),
            method=request.method,
            path=path,
            client=self._peer(request),
            version=f"HTTP/{request.version.major}.{request.version.minor}",
            started=time.monotonic(),
        )

    async def _dispatch(self, request: web.BaseRequest, exchange: Exchange) -> web.StreamResponse:
        version = request.version
        hosts = request.headers.getall("Host", [])
        rejection = check_request(request.method, (version.major, version.minor), hosts)
        if rejection is not None:
            return _text(rejection.status, rejection.reason, rejection.headers)
        try:
            target = parse_target(request.raw_path)
        except BadTarget as exc:
            return _text(exc.status, f"bad request target: {exc}")
        route = self.router.match(hosts[0] if hosts else None, target.route_path)
        if route is None:
            return _text(404, "no route matches this request")
        exchange.route = route.name
        client = ClientInfo(
            peer_ip=request.remote,
            scheme="https" if request.secure else "http",
            trusted_proxies=self.config.proxy.trusted_proxies,
        )
        upstream = self.config.upstreams[route.upstream]
        if self._is_websocket(request):
            return await self._websocket(request, target, route, upstream, client, exchange)
        if stops_parsing(request):
            # Upgrade: h2c and the like are forwarded as plain HTTP; the
            # connection closes after the answer (aiohttp_adapter.stops_parsing).
            exchange.extra["upgrade_ignored"] = request.headers.get("Upgrade", "")[:100]
        server = self._pick(upstream, exchange)
        headers = self._upstream_headers(request, client, server, exchange)
        try:
            return await forward_http(
                request,
                self.sessions[upstream.name],
                server,
                target.origin_form,
                headers,
                on_answer=partial(self.observability.upstream_ok, upstream.name, str(server)),
                on_cut=partial(self._record_failure, exchange),
            )
        except UpstreamFailure as failure:
            return self._upstream_failed(exchange, failure)

    def _upstream_headers(
        self,
        request: web.BaseRequest,
        client: ClientInfo,
        server: Address,
        exchange: Exchange,
        *,
        websocket: bool = False,
    ) -> list[tuple[str, str]]:
        dropped: list[str] = []
        headers = upstream_request_headers(
            list(request.headers.items()),
            client,
            default_host=str(server),
            request_id=exchange.request_id,
            websocket_upgrade=request.headers.get("Upgrade", "websocket") if websocket else None,
            allow_underscores=self.config.proxy.allow_underscore_headers,
            dropped=dropped,
        )
        if dropped:
            log.debug(
                "request %s: dropped header(s) with '_' in the name: %s",
                exchange.request_id,
                ", ".join(name[:64] for name in dropped),
            )
        return headers

    def _pick(self, upstream: Upstream, exchange: Exchange) -> Address:
        server = self.balancers[upstream.name].pick()
        exchange.upstream = upstream.name
        exchange.server = str(server)
        return server

    def _is_websocket(self, request: web.BaseRequest) -> bool:
        upgrade = request.headers.getall("Upgrade", None)
        if upgrade is None or not wants_websocket([("Upgrade", value) for value in upgrade]):
            return False
        # RFC 9110 §7.8: "A server MUST ignore an Upgrade header field that is
        # received in an HTTP/1.0 request."  Strict mode does; the default
        # forwards it, because the client is usually a legacy load balancer
        # that downgraded a browser's HTTP/1.1 handshake.
        return request.version >= (1, 1) or self.config.proxy.http10_upgrade == "accept"

    async def _websocket(
        self,
        request: web.BaseRequest,
        target: Target,
        route: Route,
        upstream: Upstream,
        client: ClientInfo,
        exchange: Exchange,
    ) -> web.StreamResponse:
        headers = list(request.headers.items())
        if self.draining:
            return _text(
                503, "shutting down; reconnect to another instance", [("Retry-After", "1")]
            )
        rejection = check_websocket_handshake(request.method, headers, has_body=request.body_exists)
        if rejection is not None:
            exchange.upgrade_result = "bad_handshake"
            return _text(rejection.status, rejection.reason, rejection.headers)
        server = self._pick(upstream, exchange)
        settings = TunnelSettings(
            buffer_limit=self.config.proxy.tunnel_buffer,
            idle_timeout=route.websocket.idle_timeout,
            early_close_window=route.websocket.early_close_window,
            observe_frames=self.config.proxy.observe_frames,
            frame_budget=self.frame_budget,
        )
        headers = self._upstream_headers(request, client, server, exchange, websocket=True)
        try:
            return await handle_websocket(
                request,
                target.origin_form,
                headers,
                upstream,
                server,
                exchange,
                settings,
                self.observability,
                on_cut=partial(self._record_failure, exchange),
            )
        except UpstreamFailure as failure:
            exchange.upgrade_result = "upstream_unavailable"
            return self._upstream_failed(exchange, failure)

    def _upstream_failed(self, exchange: Exchange, failure: UpstreamFailure) -> web.Response:
        """No answer from the upstream: count, log the details, tell the client in general."""
        self._record_failure(exchange, failure)
        log.warning(
            "route %s: upstream %s server %s failed: %s (request %s)",
            exchange.route,
            exchange.upstream,
            exchange.server,
            failure,
            exchange.request_id,
        )
        return _text(failure.status, failure.client_message)

    def _record_failure(self, exchange: Exchange, failure: UpstreamFailure) -> None:
        """Count a failed attempt against its server and give the access log its error.

        Also the ``on_cut`` of a response that failed after its head went out
        (errors.cut_response logs that case).
        """
        assert exchange.upstream is not None
        assert exchange.server is not None
        self.observability.upstream_failed(exchange.upstream, exchange.server, failure)
        exchange.extra["error"] = str(failure)


class ProxyServer:
    """The front listeners of one process, started and stopped as a unit."""

    def __init__(self, config: Config, access_log: TextIO | None = None) -> None:
        self.config = config
        self.observability = Observability(config, access_log)
        self.proxy = Proxy(config, self.observability)
        self._runner: web.ServerRunner | None = None
        self._admin: web.AppRunner | None = None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) of each listener (port 0 resolved)."""
        assert self._runner is not None
        return [(str(address[0]), int(address[1])) for address in self._runner.addresses]

    @property
    def admin_address(self) -> tuple[str, int]:
        assert self._admin is not None
        address = self._admin.addresses[0]
        return str(address[0]), int(address[1])

    async def start(self) -> None:
        await self.proxy.open()
        limit = self.config.proxy.max_header_size
        server = Server(
            self.proxy.handle,
            on_bad_request=self.proxy.bad_request,
            # A client that leaves cancels its handler, so a slow upstream
            # handshake or response is abandoned at once (nginx's 499).
            handler_cancellation=True,
            keepalive_timeout=CLIENT_KEEPALIVE_TIMEOUT,
            auto_decompress=False,  # bodies pass as sent, compressed or not
            max_line_size=limit,
            max_field_size=limit,
            access_log=None,
        )
        self._runner = web.ServerRunner(
            server, handle_signals=False, shutdown_timeout=self.config.shutdown.grace_period
        )
        await self._runner.setup()
        self._admin = web.AppRunner(
            admin_app(self.observability),
            access_log=None,
            handle_signals=False,
        )
        await self._admin.setup()
        try:
            for listen in self.config.listen:
                site = web.TCPSite(self._runner, listen.host, listen.port, reuse_address=True)
                await site.start()
            admin = self.config.admin
            await web.TCPSite(self._admin, admin.host, admin.port, reuse_address=True).start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop accepting, end open sessions, let requests finish, then close.

        Graceful drain with ``1001`` close frames at a frame boundary comes
        with the production-behaviour work; until then sessions end with FIN
        (``how=drain``), and whatever remains after the grace period is reset.
        """
        self.observability.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.shutdown.grace_period
        if self._runner is not None:
            for site in list(self._runner.sites):
                await site.stop()  # no new connections from here on
        # Sessions are not aiohttp's (it forgot them at the 101): end them and
        # wait, so each is counted and logged; a handshake whose 101 arrives
        # meanwhile is closed at once (websocket.py), so this converges.
        while self.proxy.tunnels and (remaining := deadline - loop.time()) > 0:
            tunnels = list(self.proxy.tunnels)
            for tunnel in tunnels:
                tunnel.close("drain")
            await asyncio.wait([tunnel.finished for tunnel in tunnels], timeout=remaining)
        leftovers = list(self.proxy.tunnels)
        for tunnel in leftovers:
            tunnel.close("drain", reset=True)
        if leftovers:  # a reset is reported on the next loop turns
            await asyncio.wait([tunnel.finished for tunnel in leftovers], timeout=1.0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None
        await self.proxy.close()
        self.observability.access_log.flush()


@contextlib.contextmanager
def stop_signals() -> Iterator[asyncio.Event]:
    """An event set by the first SIGINT or SIGTERM (a container's stop).

    Enter it before opening any listener: once a port accepts connections,
    a supervisor may send SIGTERM, and without a handler that signal kills
    the process instead of stopping it cleanly.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        yield stop
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


async def serve(config: Config) -> None:
    """Run until SIGINT or SIGTERM, then stop cleanly."""
    server = ProxyServer(config)
    with stop_signals() as stop:
        try:
            await server.start()
            for host, port in server.addresses:
                log.info("listening on http://%s:%d", host, port)
            log.info("admin on http://%s:%d (/metrics, /healthz, /readyz)", *server.admin_address)
            await stop.wait()
            log.info("stopping")
        finally:
            await server.stop()
