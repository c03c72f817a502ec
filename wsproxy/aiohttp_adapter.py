"""Every aiohttp internal that wsproxy relies on, in one place.

aiohttp is the front listener's HTTP/1.x parser and response writer.  Two
things a proxy needs are not public API, so they live here, the aiohttp minor
version is pinned in pyproject.toml, and tests/integration/test_aiohttp_adapter.py
exercises each one over a real socket so an aiohttp upgrade that changes them
fails loudly:

1. Taking over the client connection after ``101`` (:func:`take_over`):
   ``request.protocol`` (the server's ``RequestHandler``),
   ``RequestHandler.keep_alive(False)`` (aiohttp will not read another
   request from this connection), ``RequestHandler.set_parser(obj)`` (hands
   over the bytes the client sent in the same read as its handshake, which
   aiohttp buffered in ``_message_tail``), and
   ``RequestHandler.transport = None`` then ``RequestHandler.connection_lost(None)``
   (aiohttp forgets the connection as for any disconnect: it leaves its
   server's connection list and the handler can return at once; without the
   first step, connection_lost would close the transport the tunnel now owns).
   The transport is re-pointed with the public
   ``asyncio.Transport.set_protocol``: the tunnel then receives
   ``data_received``, ``eof_received`` (a client FIN becomes a half-close
   instead of aiohttp closing the socket) and ``pause_writing``/
   ``resume_writing`` (backpressure) directly, with no aiohttp code per chunk.

2. Answering requests aiohttp's parser refuses (:class:`Server`): aiohttp
   logs each at ERROR with a traceback that quotes the raw bytes (tokens and
   ``Authorization`` values included) and echoes them in the ``400`` body.
   ``web.Server.__call__`` builds the per-connection ``RequestHandler``; the
   subclass here builds one whose ``handle_error`` hands parser errors
   (``HttpProcessingError`` with status 400, from ``_make_error_handler``)
   to the proxy, which counts, logs one access-log line and answers in
   general words.  Other errors keep aiohttp's handling.

3. Writing the upstream's response as the upstream sent it
   (:class:`ProxiedResponse`): ``_send_headers_immediately`` (a class
   attribute aiohttp's own ``Response`` sets to False) lets head and body
   share one write; ``StreamResponse._prepare_headers`` adds
   ``Content-Type: application/octet-stream`` and ``Server: aiohttp/…`` when
   absent; a proxy must not invent headers the upstream did not send, so both
   are removed again unless the upstream had them.  ``_write_headers`` echoes
   the request's version in the status line; a proxy answers as an HTTP/1.1
   server (RFC 9110 §2.5), so the status line always says ``HTTP/1.1``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)
from aiohttp.web_protocol import RequestHandler

#: Answers a request aiohttp's parser refused: (request, parser error) -> response.
BadRequestHandler = Callable[[web.BaseRequest, HttpProcessingError], web.StreamResponse]


def parse_error_reason(exc: HttpProcessingError) -> str:
    """What was wrong with a refused request, in words that quote none of its bytes."""
    if isinstance(exc, BadHttpMethod):
        return "invalid method"
    if isinstance(exc, BadStatusLine):
        return "invalid request line"
    if isinstance(exc, LineTooLong):
        return "request line or header too long"
    if isinstance(exc, InvalidURLError):
        return "invalid request target"
    if isinstance(exc, InvalidHeader):
        return "invalid header"
    if isinstance(exc, PayloadEncodingError):
        return "invalid body framing"
    message = exc.message.lower() if isinstance(exc.message, str) else ""
    if message.startswith("duplicate"):
        return "duplicate header"
    if message.startswith("missing 'host'"):
        return "HTTP/1.1 request without a Host header"
    if message.startswith("invalid header"):
        return "invalid header"
    return "invalid syntax"


class _Handler(RequestHandler):
    """aiohttp's per-connection handler, with parser errors answered by the proxy."""

    on_bad_request: BadRequestHandler | None = None

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != 400 or not isinstance(exc, HttpProcessingError) or not self.on_bad_request:
            return super().handle_error(request, status, exc, message)
        response = self.on_bad_request(request, exc)
        response.force_close()  # the stream is not HTTP we can follow any more
        return response


class Server(web.Server):
    """``web.Server`` whose connections answer parser errors through ``on_bad_request``."""

    def __init__(self, handler: Any, *, on_bad_request: BadRequestHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._on_bad_request = on_bad_request

    def __call__(self) -> RequestHandler:
        handler = _Handler(self, loop=self._loop, **self._kwargs)
        handler.on_bad_request = self._on_bad_request
        return handler


class _HTTP11StatusLine(web.StreamResponse):
    """Status line ``HTTP/1.1`` whatever the request said (aiohttp echoes it).

    A server answers with the highest minor version of the major version the
    request used (RFC 9110 §2.5); echoing ``HTTP/2.0`` in the ``505`` that
    refuses it, or ``HTTP/1.0`` to a client that spoke 1.0, is wrong.  Every
    answer but a ``101`` to a request aiohttp stops parsing after closes the
    connection (:func:`stops_parsing`).
    """

    async def _prepare_headers(self) -> None:
        assert self._req is not None
        if self.status != 101 and stops_parsing(self._req):
            self.force_close()
        await super()._prepare_headers()
        # An HTTP/1.1 status line on a closing connection must say so, or an
        # HTTP/1.0 client would take the response as persistent (RFC 9112 §9.3).
        if not self.keep_alive and hdrs.CONNECTION not in self.headers:
            self.headers[hdrs.CONNECTION] = "close"

    async def _write_headers(self) -> None:
        writer = self._payload_writer
        assert writer is not None
        await writer.write_headers(f"HTTP/1.1 {self.status} {self.reason}", self.headers)
        if self._send_headers_immediately:
            writer.send_headers()


class TextResponse(_HTTP11StatusLine, web.Response):
    """A small answer of the proxy's own (``404``, ``502``, ...)."""


class ProxiedResponse(_HTTP11StatusLine):
    """A streamed response that carries exactly the upstream's headers.

    ``coalesce=True`` holds the head back until the first body write (or the
    end), so head and body leave in one ``send()``: one system call per small
    response instead of two.  A ``101`` must not wait: its head goes out at
    ``prepare()``.
    """

    def __init__(self, *, status: int, reason: str | None = None, coalesce: bool = False) -> None:
        super().__init__(status=status, reason=reason)
        if coalesce:
            self._send_headers_immediately = False

    async def _prepare_headers(self) -> None:
        had_content_type = hdrs.CONTENT_TYPE in self.headers
        had_server = hdrs.SERVER in self.headers
        await super()._prepare_headers()
        if not had_content_type:
            self.headers.popall(hdrs.CONTENT_TYPE, None)
        if not had_server:
            self.headers.popall(hdrs.SERVER, None)


class _TailCollector:
    """Receives what aiohttp buffered after the handshake (the parser contract)."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.data += data
        return False, b""

    def feed_eof(self) -> None:
        return None


def take_over(
    request: web.BaseRequest, protocol: asyncio.Protocol
) -> tuple[asyncio.Transport, bytes]:
    """Detach the client connection from aiohttp and point it at ``protocol``.

    Call after the ``101`` has been prepared.  Returns the transport and the
    bytes that arrived after the handshake (to forward upstream first).

    Afterwards aiohttp considers the connection gone: the handler may return
    at once, and everything aiohttp and the handler held for the request (the
    request, its headers, the handler's frames) is freed, which is most of
    what an idle session would otherwise cost.  The tunnel owns the transport.
    """
    handler = request.protocol
    transport = request.transport
    if not isinstance(handler, RequestHandler) or transport is None:
        raise ConnectionResetError("client connection already closed")
    handler.keep_alive(False)
    tail = _TailCollector()
    handler.set_parser(tail)  # type: ignore[arg-type]  # duck-typed parser contract
    transport.set_protocol(protocol)
    # As if the client had gone: aiohttp drops the connection from its
    # bookkeeping.  Its transport reference goes first (connection_lost would
    # otherwise close the transport, now the tunnel's), so nothing aiohttp
    # does when the handler returns can write to or close the tunnel.
    handler.transport = None
    handler.connection_lost(None)
    return transport, tail.data


def stops_parsing(request: web.BaseRequest) -> bool:
    """Whether aiohttp reads no further request from this connection.

    llhttp flags a request as an upgrade when it has an ``Upgrade`` header and
    ``upgrade`` among its ``Connection`` tokens, or is a ``CONNECT``
    (``RawRequestMessage.upgrade``, read from the private ``_message``).
    For ``websocket`` and ``CONNECT`` aiohttp keeps the bytes that follow for
    a protocol switch (and parses them again if the switch is declined); for
    any other token (``h2c``) its C parser discards what was pipelined behind
    the request, and the client waits forever for that answer.  So when the
    proxy answers such a request without switching protocols, it closes the
    connection after the answer: a pipelining client sees the close and
    retries (RFC 9112 §9.3.2).  One rule, right in every case.
    """
    return bool(request._message.upgrade)
