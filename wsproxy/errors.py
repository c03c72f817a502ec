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
import socket
import ssl
from typing import Literal

import aiohttp
from aiohttp import web

from wsproxy.tunnel import reset_transport

log = logging.getLogger("wsproxy.upstream")

ErrorKind = Literal["refused", "timeout", "reset", "tls", "dns", "protocol"]


class UpstreamFailure(Exception):
    def __init__(self, kind: ErrorKind, detail: str) -> None:
        super().__init__(kind, detail)
        self.kind: ErrorKind = kind
        self.detail = detail

    @property
    def status(self) -> int:
        return 504 if self.kind == "timeout" else 502

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


def classify(exc: BaseException) -> UpstreamFailure:
    """Map an exception from connecting to or talking with an upstream."""
    if isinstance(exc, UpstreamFailure):
        return exc
    # aiohttp wraps the OS error; look at the cause it carries.
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return UpstreamFailure("dns", str(exc))
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return UpstreamFailure("tls", str(exc))
    if isinstance(exc, aiohttp.ClientConnectorError):
        return classify(exc.os_error)
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError | TimeoutError):
        return UpstreamFailure("timeout", str(exc) or "timed out")
    if isinstance(exc, socket.gaierror):
        return UpstreamFailure("dns", str(exc))
    if isinstance(exc, ConnectionRefusedError):
        return UpstreamFailure("refused", str(exc))
    if isinstance(exc, ConnectionResetError | BrokenPipeError | aiohttp.ServerDisconnectedError):
        return UpstreamFailure("reset", str(exc) or "connection closed by upstream")
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return UpstreamFailure("refused", str(exc))
    if isinstance(exc, OSError):
        return UpstreamFailure("reset", str(exc))
    return UpstreamFailure("protocol", f"{type(exc).__name__}: {exc}")


def cut_response(request: web.BaseRequest, failure: UpstreamFailure, server: object) -> None:
    """The upstream failed after the response head went to the client.

    Reset the client connection instead of ending the body cleanly, so a
    truncated body can never pass for a complete one (a plain abort() sends
    FIN, which an HTTP/1.0 client reads as the end of a close-delimited body).
    """
    log.warning("upstream %s failed mid-response (%s); client connection cut", server, failure)
    if request.transport is not None:
        reset_transport(request.transport)
