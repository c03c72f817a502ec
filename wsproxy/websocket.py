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
from typing import Any

import h11
from aiohttp import web

from wsproxy.aiohttp_adapter import ProxiedResponse, take_over
from wsproxy.config import Address, Upstream
from wsproxy.errors import UpstreamFailure, cut_response
from wsproxy.headers import ClientInfo, client_response_headers, upstream_request_headers
from wsproxy.tunnel import Tunnel
from wsproxy.upstream import UpstreamHandshake, open_handshake

log = logging.getLogger("wsproxy.websocket")


async def handle_websocket(
    request: web.BaseRequest,
    upstream: Upstream,
    server: Address,
    client: ClientInfo,
    *,
    buffer_limit: int,
    idle_timeout: float,
    live: set[Tunnel],
) -> web.StreamResponse:
    """Run one session to its end; raises UpstreamFailure before any answer.

    The session is in ``live`` while it runs, so shutdown can reach it.
    """
    client_headers = list(request.headers.items())
    headers = upstream_request_headers(
        client_headers,
        client,
        default_host=str(server),
        websocket_upgrade=request.headers.get("Upgrade", "websocket"),
    )
    handshake = await open_handshake(server, upstream.connect_timeout)
    try:
        try:
            handshake.send_request(request.method, request.raw_path, headers)
        except h11.LocalProtocolError as exc:
            handshake.close()
            return web.Response(status=400, text=f"request cannot be forwarded: {exc}\n")
        event = await handshake.next_event(upstream.read_timeout)
        while isinstance(event, h11.InformationalResponse) and event.status_code != 101:
            event = await handshake.next_event(upstream.read_timeout)  # 1xx other than 101
    except BaseException:
        handshake.close()
        raise

    if isinstance(event, h11.InformationalResponse):  # 101
        return await _tunnel(request, handshake, event, buffer_limit, idle_timeout, live)
    assert isinstance(event, h11.Response)
    try:
        return await _relay_refusal(request, handshake, event, upstream.read_timeout, server)
    finally:
        handshake.close()


async def _tunnel(
    request: web.BaseRequest,
    handshake: UpstreamHandshake,
    event: h11.InformationalResponse,
    buffer_limit: int,
    idle_timeout: float,
    live: set[Tunnel],
) -> web.StreamResponse:
    assert handshake.transport is not None
    tunnel = Tunnel(handshake.transport, buffer_limit=buffer_limit, idle_timeout=idle_timeout)
    response = ProxiedResponse(status=101, reason=event.reason.decode("latin-1") or None)
    for name, value in client_response_headers(_decode(event.headers), switching_protocols=True):
        response.headers.add(name, value)
    try:
        await response.prepare(request)
        connection, client_tail = take_over(request, tunnel.client_side)
    except BaseException:
        tunnel.close("error", reset=True)
        raise
    tunnel.start(
        connection,
        client_tail=client_tail,
        upstream_tail=handshake.trailing_data(),
        upstream_eof=handshake.saw_eof(),
        upstream_lost=(handshake.lost,) if handshake.is_lost else None,
    )
    live.add(tunnel)
    try:
        await tunnel.finished
    finally:
        live.discard(tunnel)
    return response


async def _relay_refusal(
    request: web.BaseRequest,
    handshake: UpstreamHandshake,
    event: h11.Response,
    read_timeout: float,
    server: Address,
) -> web.StreamResponse:
    """Give the client the upstream's own non-101 answer, body and all."""
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
        cut_response(request, failure, server)
        return response
    await response.write_eof()
    return response


def _decode(headers: Any) -> list[tuple[str, str]]:
    """h11 keeps the upstream's header-name casing in ``raw_items()``."""
    return [
        (name.decode("latin-1"), value.decode("latin-1")) for name, value in headers.raw_items()
    ]
