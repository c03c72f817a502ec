"""HTTP/1.1 bytes the proxy writes: pure functions, no I/O.

Heads are built from ``(name, value)`` string pairs with the names' case and
order as received; values were validated by llhttp on the way in (no CR, LF
or NUL can reach here from a peer), and the proxy's own headers are fixed
words, so joining them is safe.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from http import HTTPStatus

#: Reason phrases for the proxy's own answers.
REASONS: dict[int, bytes] = {status.value: status.phrase.encode() for status in HTTPStatus}

#: A response with one of these statuses never has content (RFC 9110 §6.4.1).
NO_CONTENT_STATUSES = frozenset({204, 304})

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


class Framing(enum.Enum):
    """How a response body is delimited towards the client (RFC 9112 §6.3)."""

    NONE = "none"  # HEAD, 1xx, 204, 304: no body whatever the headers say
    LENGTH = "length"  # the upstream's Content-Length, bytes passed as they are
    CHUNKED = "chunked"  # re-chunked by the proxy (upstream chunked or until close)
    CLOSE = "close"  # until the connection closes (HTTP/1.0 clients)


# The members as module constants, for the per-request paths: EnumType
# defines __getattr__, which makes every ``Framing.X`` on Python 3.11 cost
# about twenty reads of a global (~950 instructions, measured with callgrind).
NO_BODY = Framing.NONE
BY_LENGTH = Framing.LENGTH
CHUNKED = Framing.CHUNKED
UNTIL_CLOSE = Framing.CLOSE


def client_framing(
    *,
    method: str,
    status: int,
    upstream_length: bool,
    client_version: tuple[int, int],
) -> Framing:
    """How the proxy frames a response it relays to the client.

    ``upstream_length`` says the upstream sent a valid ``Content-Length``
    (llhttp refused any other combination).  A chunked or close-delimited
    upstream body is chunked again for an HTTP/1.1 client, so its connection
    stays persistent, and becomes close-delimited for HTTP/1.0, which has no
    chunked coding (RFC 9112 §7, "A server MUST NOT send a response containing
    Transfer-Encoding unless the corresponding request indicates HTTP/1.1").
    """
    if method == "HEAD" or status in NO_CONTENT_STATUSES or status < 200:
        return NO_BODY
    if upstream_length:
        return BY_LENGTH
    if client_version >= (1, 1):
        return CHUNKED
    return UNTIL_CLOSE


def encode_fields(headers: Sequence[tuple[str, str]]) -> bytes:
    """``Name: value\r\n`` for each field, in order."""
    return "".join([f"{name}: {value}\r\n" for name, value in headers]).encode("latin-1")


def response_head(
    status: int,
    reason: bytes,
    headers: Sequence[tuple[str, str]] | bytes,
    extra: bytes = b"",
) -> bytes:
    """``HTTP/1.1 <status> <reason>``, the fields (pairs, or already encoded),
    ``extra`` (more encoded lines), CRLF.

    The status line always says ``HTTP/1.1``: a server answers with the
    highest minor version of the request's major version (RFC 9110 §2.5).
    """
    fields = headers if isinstance(headers, bytes) else encode_fields(headers)
    return b"HTTP/1.1 %d %s\r\n%s%s\r\n" % (status, reason, fields, extra)


def request_head(method: str, target: str, headers: Sequence[tuple[str, str]]) -> bytes:
    """An HTTP/1.1 request head (the upstream side is always HTTP/1.1)."""
    fields = "".join([f"{name}: {value}\r\n" for name, value in headers])
    return f"{method} {target} HTTP/1.1\r\n{fields}\r\n".encode("latin-1")


def chunk(data: bytes) -> bytes:
    """One chunk of the chunked coding (RFC 9112 §7.1); never the last one."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def own_answer(
    status: int,
    message: str,
    headers: Sequence[tuple[str, str]] = (),
    *,
    close: bool,
    head_only: bool = False,
) -> bytes:
    """A small plain-text answer of the proxy's own (``404``, ``502``, ...).

    No ``Server`` or ``Date`` header: nothing the client does not need.
    ``head_only`` for a ``HEAD`` request: the same head, no body.
    """
    body = (message + "\n").encode("utf-8")
    extra = b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body)
    if close:
        extra += b"Connection: close\r\n"
    head = response_head(status, REASONS.get(status, b"Unknown"), headers, extra)
    return head if head_only else head + body
