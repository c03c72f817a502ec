"""A WebSocket handshake, upstream first, then the tunnel.

Order of events for one session:

1. Connect to the upstream server (``connect_timeout``: ``504`` when it
   expires, ``502`` when refused or unreachable).
2. Send it an HTTP/1.1 handshake: the client's headers minus hop-by-hop ones,
   plus ``Upgrade: websocket`` and ``Connection: upgrade``.  This is the step
   that nginx without ``proxy_http_version 1.1`` gets wrong (HTTP/1.0, which a
   Swoole backend closes right after ``101``).
3. Read the upstream's answer (``read_timeout``).  Not ``101``: relay that
   response, body included, and close the upstream connection.  ``101``:
   answer the client with the upstream's ``101`` and headers, take the client
   connection over from aiohttp, and splice (tunnel.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import h11
from aiohttp import web

from wsproxy.aiohttp_adapter import ProxiedResponse, TextResponse, take_over
from wsproxy.config import Address, Upstream
from wsproxy.errors import UpstreamFailure, cut_response
from wsproxy.headers import (
    check_switching_protocols,
    client_response_headers,
    header_values,
    switching_protocols_headers,
)
from wsproxy.observe import Exchange, Observability
from wsproxy.sessions import SessionInfo
from wsproxy.tunnel import Tunnel
from wsproxy.upstream import UpstreamHandshake, open_handshake
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


async def handle_websocket(
    request: web.BaseRequest,
    target: str,
    headers: Sequence[tuple[str, str]],
    upstream: Upstream,
    server: Address,
    exchange: Exchange,
    settings: TunnelSettings,
    observability: Observability,
    *,
    on_cut: Callable[[UpstreamFailure], None],
) -> web.StreamResponse:
    """Run one session to its end; raises UpstreamFailure before any answer.

    ``target`` is the normalized origin-form target (wsproxy.target) and
    ``headers`` the upstream request's (headers.upstream_request_headers,
    with the upgrade).  ``on_cut`` runs when a refusal's body fails midway.
    """
    handshake = await open_handshake(server, upstream.connect_timeout)
    try:
        try:
            handshake.send_request(request.method, target, headers)
        except h11.LocalProtocolError as exc:
            # aiohttp accepted something h11 will not write as HTTP/1.1.
            handshake.close()
            exchange.upgrade_result = "bad_handshake"
            log.debug("request %s not forwarded: %s", exchange.request_id, type(exc).__name__)
            return TextResponse(status=400, text="request cannot be forwarded as HTTP/1.1\n")
        event = await handshake.next_event(upstream.read_timeout)
        while isinstance(event, h11.InformationalResponse) and event.status_code != 101:
            event = await handshake.next_event(upstream.read_timeout)  # 1xx other than 101
        if isinstance(event, h11.InformationalResponse):  # 101
            response_headers = _decode(event.headers)
            problem = check_switching_protocols(
                response_headers, request.headers.get("Sec-WebSocket-Key", "")
            )
            if problem is not None:
                raise UpstreamFailure("protocol", problem)
    except BaseException:
        handshake.close()
        raise
    observability.upstream_ok(upstream.name, str(server))

    if isinstance(event, h11.InformationalResponse):  # 101
        info = SessionInfo(
            route=exchange.route,
            client=exchange.client,
            server=str(server),
            request_id=exchange.request_id,
            path=exchange.path or "",
            upstream_version="HTTP/1.1",  # what h11 wrote on the request line
            upstream_connection=", ".join(header_values(headers, "connection")),
            early_close_window=settings.early_close_window,
        )
        return await _tunnel(
            request, handshake, event, response_headers, settings, info, exchange, observability
        )
    assert isinstance(event, h11.Response)
    exchange.upgrade_result = "upstream_rejected"
    try:
        return await _relay_refusal(
            request, handshake, event, upstream.read_timeout, server, on_cut
        )
    finally:
        handshake.close()


async def _tunnel(
    request: web.BaseRequest,
    handshake: UpstreamHandshake,
    event: h11.InformationalResponse,
    response_headers: Sequence[tuple[str, str]],
    settings: TunnelSettings,
    info: SessionInfo,
    exchange: Exchange,
    observability: Observability,
) -> web.StreamResponse:
    assert handshake.transport is not None
    extensions = ", ".join(header_values(response_headers, "sec-websocket-extensions"))
    tunnel = Tunnel(
        handshake.transport,
        buffer_limit=settings.buffer_limit,
        idle_timeout=settings.idle_timeout,
        observe_frames=settings.observe_frames,
        allowed_rsv=allowed_rsv_bits(extensions),
        budget=settings.frame_budget,
    )
    response = ProxiedResponse(status=101, reason=event.reason.decode("latin-1") or None)
    for name, value in switching_protocols_headers(response_headers):
        response.headers.add(name, value)
    try:
        await response.prepare(request)
        client_transport, client_tail = take_over(request, tunnel.client_side)
    except BaseException:
        tunnel.close("error", reset=True)
        raise
    # From here the session lives on its own: the observability hub holds it
    # until it ends, and this handler returns so aiohttp frees the request.
    exchange.upgrade_result = "accepted"
    exchange.websocket_session = True
    observability.session_started(tunnel, info, request.method)
    tunnel.on_finished = observability.session_ended
    try:
        tunnel.start(
            client_transport,
            client_tail=client_tail,
            upstream_tail=handshake.trailing_data(),
            upstream_eof=handshake.saw_eof(),
            upstream_lost=(handshake.lost,) if handshake.is_lost else None,
        )
    except Exception:
        # Nothing may leave a session in the live set with nobody to end it.
        log.exception("session %s failed to start", info.request_id)
        tunnel.close("error", reset=True)
        observability.session_ended(tunnel)
        return response
    if observability.draining:
        tunnel.close("drain")  # the 101 arrived during shutdown
    return response


async def _relay_refusal(
    request: web.BaseRequest,
    handshake: UpstreamHandshake,
    event: h11.Response,
    read_timeout: float,
    server: Address,
    on_cut: Callable[[UpstreamFailure], None],
) -> web.StreamResponse:
    """Give the client the upstream's own non-101 answer, body and all.

    A failure mid-body is handled as forward.py does: reported through
    ``on_cut``, then the client connection is reset (errors.cut_response).
    """
    response = ProxiedResponse(status=event.status_code, reason=event.reason.decode("latin-1"))
    for name, value in client_response_headers(_decode(event.headers)):
        response.headers.add(name, value)
    await response.prepare(request)
    try:
        while True:
            body_event = await handshake.next_event(read_timeout)
            if isinstance(body_event, h11.Data):
                await response.write(bytes(body_event.data))
            elif isinstance(body_event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    except UpstreamFailure as failure:
        on_cut(failure)
        cut_response(request, failure, server)
        return response
    await response.write_eof()
    return response


def _decode(headers: Any) -> list[tuple[str, str]]:
    """h11 keeps the upstream's header-name casing in ``raw_items()``."""
    return [
        (name.decode("latin-1"), value.decode("latin-1")) for name, value in headers.raw_items()
    ]
