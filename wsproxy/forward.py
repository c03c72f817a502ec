"""Plain HTTP forwarding: stream a request to an upstream and its response back.

One ``aiohttp.ClientSession`` per upstream, configured so it behaves like a
proxy and not like a browser:

* HTTP/1.1 on pooled keep-alive connections, whatever the client spoke.
* No cookie jar (``DummyCookieJar``): one client's ``Set-Cookie`` must never
  come back in another client's request.
* No decompression, no redirect following, no ``Accept``/``Accept-Encoding``/
  ``User-Agent``/``Content-Type`` added: bytes and headers pass as sent.
* Idle pooled connections are dropped after ``keepalive_timeout`` (default
  4s, below the 5s of Node.js and most backends), so a connection the
  backend has already closed is rarely picked; when it still happens, aiohttp
  retries idempotent requests once on a fresh connection (RFC 9112 §9.3.1.1),
  and a non-idempotent one is not retried, because the backend may have acted
  on it.
* Bodies stream in both directions with aiohttp's own backpressure: an upload
  is read from the client only as fast as the upstream takes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

from wsproxy.aiohttp_adapter import ProxiedResponse
from wsproxy.config import Address, Upstream
from wsproxy.errors import UpstreamFailure, classify, cut_response
from wsproxy.headers import client_response_headers

#: Headers aiohttp's client would otherwise add on its own.
_NO_AUTO_HEADERS = (hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.USER_AGENT, hdrs.CONTENT_TYPE)


def make_session(upstream: Upstream) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=upstream.max_connections,
        keepalive_timeout=upstream.keepalive_timeout or None,
        force_close=upstream.keepalive_timeout == 0,
        ttl_dns_cache=10,
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=_NO_AUTO_HEADERS,
        timeout=aiohttp.ClientTimeout(
            total=None,
            # "connect" includes the wait for a free slot under max_connections.
            connect=upstream.connect_timeout,
            sock_connect=upstream.connect_timeout,
            sock_read=upstream.read_timeout,
        ),
        trust_env=False,
        requote_redirect_url=False,
        raise_for_status=False,
    )


async def forward_http(
    request: web.BaseRequest,
    session: aiohttp.ClientSession,
    server: Address,
    target: str,
    headers: Sequence[tuple[str, str]],
    *,
    on_answer: Callable[[], None],
    on_cut: Callable[[UpstreamFailure], None],
) -> web.StreamResponse:
    """Forward one request.

    ``target`` is the normalized origin-form target (wsproxy.target) and
    ``headers`` the upstream request's (headers.upstream_request_headers).
    Raises UpstreamFailure when nothing has been answered yet (the caller
    sends 502/504).  ``on_answer`` runs when a valid response head arrived;
    ``on_cut`` when the upstream failed after it, mid-body, which cuts the
    client connection (errors.cut_response).
    """
    url = URL(f"http://{server}{target}", encoded=True)
    if request.headers.get(hdrs.EXPECT, "").lower() == "100-continue" and request.body_exists:
        # The proxy takes the body itself, so it says "go ahead" itself.
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = request.content if request.body_exists else None
    try:
        upstream_response = await session.request(
            request.method,
            url,
            headers=CIMultiDict(headers),
            data=body,
            allow_redirects=False,
            compress=None,
            chunked=None,
        )
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise classify(exc) from exc

    async with upstream_response:
        if upstream_response.status == 101:
            # Only a WebSocket handshake may switch protocols, and those never
            # come this way: the connection is not HTTP any more, drop it.
            upstream_response.close()
            raise UpstreamFailure("protocol", "101 Switching Protocols to a plain request")
        on_answer()
        # Head and body in one send() only when the body is already here; a
        # streamed response (server-sent events, long polling) gets its head
        # at once, as the upstream sent it.
        response = ProxiedResponse(
            status=upstream_response.status,
            reason=upstream_response.reason,
            coalesce=upstream_response.content.is_eof(),
        )
        for name, value in client_response_headers(_decode(upstream_response.raw_headers)):
            response.headers.add(name, value)
        await response.prepare(request)
        while True:
            try:
                chunk = await upstream_response.content.readany()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                # Headers are already out: the only honest signal left is to
                # cut the connection instead of ending the body as if whole.
                failure = classify(exc)
                on_cut(failure)
                cut_response(request, failure, server)
                return response
            if not chunk:
                break
            # A client that went away raises ConnectionError here; the
            # dispatcher treats that as a disconnect, not an upstream failure.
            await response.write(chunk)
        await response.write_eof()
    return response


def _decode(raw: tuple[tuple[bytes, bytes], ...]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
