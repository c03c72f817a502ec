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
import os
import socket
import ssl
from typing import Literal

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

    def __init__(self, kind: ErrorKind, detail: str, *, connecting: bool = False) -> None:
        super().__init__(kind, detail)
        self.kind: ErrorKind = kind
        self.detail = detail
        #: The connection was never made: nothing reached the server, so the
        #: request may go to another one, whatever its method.
        self.connecting = connecting

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
    if isinstance(exc, ssl.SSLCertVerificationError):
        # "unable to get local issuer certificate", "Hostname mismatch,
        # certificate is not valid for 'x'": the names are the configuration's.
        why = exc.verify_message or exc.reason or "rejected"
        return UpstreamFailure("tls", f"certificate verify failed: {why}")
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None)
        return UpstreamFailure("tls", f"TLS failed ({reason})" if reason else "TLS failed")
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return UpstreamFailure("timeout", "timed out")
    if isinstance(exc, socket.gaierror):
        return UpstreamFailure("dns", "name resolution failed")
    if isinstance(exc, ConnectionRefusedError):
        return UpstreamFailure("refused", _os_detail(exc, "connection refused"))
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return UpstreamFailure("reset", _os_detail(exc, "connection reset"))
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return UpstreamFailure("refused", _os_detail(exc, "unreachable"))
    if isinstance(exc, OSError):
        return UpstreamFailure("reset", _os_detail(exc, "connection failed"))
    return UpstreamFailure("protocol", f"unexpected {type(exc).__name__}")
