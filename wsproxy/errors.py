"""What went wrong with an upstream, as the client and the operator need to hear it.

Every failure to reach or understand an upstream becomes one
:class:`UpstreamFailure`: the HTTP status the client gets (``502`` when the
upstream refused, was unreachable or answered nonsense; ``504`` when it did
not answer in time) and a ``kind`` from the fixed set the
``wsproxy_upstream_errors_total`` metric uses.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import ssl
from typing import Literal

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import ContentLengthError, TransferEncodingError

from wsproxy.tunnel import reset_transport

log = logging.getLogger("wsproxy.upstream")

ErrorKind = Literal["refused", "timeout", "reset", "tls", "dns", "protocol"]


#: What the client reads in a 502/504 body: what failed, in general words.
#: Addresses, errno text and parser output stay in the log (RFC 9110 §15.6.3
#: asks for no detail, and detail helps an attacker map the network).
CLIENT_MESSAGES: dict[ErrorKind, str] = {
    "refused": "upstream refused the connection",
    "timeout": "upstream timed out",
    "reset": "upstream closed the connection",
    "tls": "upstream TLS handshake failed",
    "dns": "upstream name did not resolve",
    "protocol": "upstream sent an invalid response",
}


class UpstreamFailure(Exception):
    """``detail`` is for the operator's log: built by wsproxy from fixed words,
    error names and parser reasons, never from an exception's whole text
    (aiohttp's include the request URL with its query; parsers quote the
    bytes they choke on, which may echo the request)."""

    def __init__(self, kind: ErrorKind, detail: str) -> None:
        super().__init__(kind, detail)
        self.kind: ErrorKind = kind
        self.detail = detail

    @property
    def status(self) -> int:
        return 504 if self.kind == "timeout" else 502

    @property
    def client_message(self) -> str:
        return CLIENT_MESSAGES[self.kind]

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


#: Longest parser reason kept in a log line.
_REASON_LIMIT = 80


def parser_reason(message: str) -> str:
    """The parser's verdict without the bytes it quotes.

    ``"Bad status line:\\n  b'GET /x?token=...'"`` -> ``"Bad status line"``;
    h11's ``"illegal status line: bytearray(b'...')"`` -> ``"illegal status line"``.
    """
    first = message.strip().split("\n", 1)[0]
    for stop in (":", "'", '"', "b'", "bytearray("):
        first = first.split(stop, 1)[0]
    text = "".join(c for c in first if c.isprintable()).strip()
    return text[:_REASON_LIMIT] or "unparseable"


def _os_detail(exc: OSError, what: str) -> str:
    """``what`` plus the error's name and standard text (no addresses, no paths)."""
    if exc.errno is None:
        return what
    name = errno.errorcode.get(exc.errno, str(exc.errno))
    return f"{what} ({name}: {os.strerror(exc.errno)})"


def classify(exc: BaseException) -> UpstreamFailure:
    """Map an exception from connecting to or talking with an upstream."""
    if isinstance(exc, UpstreamFailure):
        return exc
    # aiohttp wraps the OS error; look at the cause it carries.
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return UpstreamFailure("dns", "name resolution failed")
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        reason = getattr(exc, "reason", None)
        return UpstreamFailure("tls", f"TLS failed ({reason})" if reason else "TLS failed")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return classify(exc.os_error)
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError | TimeoutError):
        return UpstreamFailure("timeout", "timed out")
    if isinstance(exc, socket.gaierror):
        return UpstreamFailure("dns", "name resolution failed")
    if isinstance(exc, ConnectionRefusedError):
        return UpstreamFailure("refused", _os_detail(exc, "connection refused"))
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamFailure("reset", "connection closed before the response")
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return UpstreamFailure("reset", _os_detail(exc, "connection reset"))
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return UpstreamFailure("refused", _os_detail(exc, "unreachable"))
    if isinstance(exc, aiohttp.ClientPayloadError):
        # The parser's feed_eof raises these when the connection ends before
        # the body does (a reset or an early FIN); anything else is a body
        # that was malformed.
        if isinstance(exc.__cause__, ContentLengthError | TransferEncodingError):
            return UpstreamFailure("reset", "connection closed in the middle of the body")
        return UpstreamFailure("protocol", "invalid response body")
    if isinstance(exc, aiohttp.ClientResponseError):
        return UpstreamFailure("protocol", f"invalid response ({parser_reason(exc.message)})")
    if isinstance(exc, aiohttp.ClientOSError | OSError):
        return UpstreamFailure("reset", _os_detail(exc, "connection failed"))
    return UpstreamFailure("protocol", f"unexpected {type(exc).__name__}")


def cut_response(request: web.BaseRequest, failure: UpstreamFailure, server: object) -> None:
    """The upstream failed after the response head went to the client.

    Reset the client connection instead of ending the body cleanly, so a
    truncated body can never pass for a complete one (a plain abort() sends
    FIN, which an HTTP/1.0 client reads as the end of a close-delimited body).
    """
    log.warning("upstream %s failed mid-response (%s); client connection cut", server, failure)
    if request.transport is not None:
        reset_transport(request.transport)
