"""What one WebSocket session was and how it ended: pure data and wording.

The tunnel knows bytes and events; this module turns them into the record an
operator reads (access log, early-close warning, status page) and the bounded
label values metrics use.  No I/O, so every wording and label rule is unit
tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, quote

from wsproxy.wsframes import ABNORMAL_CLOSURE, NO_STATUS_CODE, close_code_is_valid

#: Standard methods keep their name in the ``method`` label; anything else is
#: ``other``, so a client cannot create label values at will.
STANDARD_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)


def method_label(method: str) -> str:
    return method if method in STANDARD_METHODS else "other"


def close_code_label(code: int | None) -> str:
    """The ``code`` label: ``1006`` without a close frame, ``invalid`` off-range."""
    if code is None:
        return str(ABNORMAL_CLOSURE)
    if code == NO_STATUS_CODE or close_code_is_valid(code):
        return str(code)
    return "invalid"


def redact_query(path: str) -> str:
    """Replace query values, keep names: browsers put tokens in WebSocket URLs.

    JavaScript cannot set headers on a WebSocket, so ``?token=…`` is how
    browser clients authenticate; it must not end up in logs.
    """
    base, sep, query = path.partition("?")
    if not sep:
        return path
    names = [quote(name, safe="") for name, _ in parse_qsl(query, keep_blank_values=True)]
    if not names:
        return base + "?redacted"
    return base + "?" + "&".join(f"{name}=redacted" for name in names)


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What is known when the ``101`` is relayed."""

    route: str
    client: str  # "ip:port" of the peer
    server: str  # the upstream server "host:port"
    request_id: str
    path: str  # already redacted if the configuration says so
    upstream_version: str  # the request line version the upstream received
    upstream_connection: str  # the Connection header the upstream received
    early_close_window: float


@dataclass(frozen=True, slots=True)
class DirectionStats:
    bytes: int
    frames: int
    messages: int
    error: str | None = None


@dataclass(frozen=True, slots=True)
class SessionReport:
    """A finished session, as logs and the status page show it."""

    info: SessionInfo
    duration: float  # seconds from the 101 to the end
    closed_by: str  # client | upstream | proxy
    how: str  # close_frame | fin | reset | idle_timeout | drain | max_lifetime | error
    close_code: int | None  # the first close frame's code; None: no close frame
    close_reason: str
    client_to_upstream: DirectionStats
    upstream_to_client: DirectionStats

    @property
    def early(self) -> bool:
        return self.duration < self.info.early_close_window

    @property
    def code(self) -> str:
        return close_code_label(self.close_code)

    @property
    def close_frame_seen(self) -> bool:
        return self.close_code is not None

    def fields(self) -> dict[str, object]:
        """Flat fields for the access log and the status page."""
        info = self.info
        c2u, u2c = self.client_to_upstream, self.upstream_to_client
        return {
            "type": "websocket",
            "request_id": info.request_id,
            "route": info.route,
            "client": info.client,
            "upstream": info.server,
            "path": info.path,
            "status": 101,
            "duration_ms": round(self.duration * 1000, 3),
            "closed_by": self.closed_by,
            "how": self.how,
            "code": self.code,
            "close_reason": self.close_reason,
            "close_frame": self.close_frame_seen,
            "early": self.early,
            "bytes_client_to_upstream": c2u.bytes,
            "bytes_upstream_to_client": u2c.bytes,
            "frames_client_to_upstream": c2u.frames,
            "frames_upstream_to_client": u2c.frames,
            "messages_client_to_upstream": c2u.messages,
            "messages_upstream_to_client": u2c.messages,
            "protocol_error_client_to_upstream": c2u.error,
            "protocol_error_upstream_to_client": u2c.error,
            "upstream_request": f"{info.upstream_version} Connection: {info.upstream_connection}",
        }


def diagnosis(report: SessionReport) -> str:
    """One sentence on what probably happened, for the early-close warning."""
    ms = report.duration * 1000
    info = report.info
    if report.closed_by == "upstream" and not report.close_frame_seen:
        received = f"{info.upstream_version} with 'Connection: {info.upstream_connection}'"
        if info.upstream_version == "HTTP/1.1" and "upgrade" in info.upstream_connection.lower():
            cause = (
                "so it is not the HTTP/1.0 keep-alive rule: check the backend's logs "
                "for this request ID"
            )
        else:
            cause = "a backend that applies HTTP/1.0 keep-alive rules closes right after 101"
        return (
            f"the upstream dropped the connection {ms:.1f} ms after 101 without a close "
            f"frame ({report.how}); it received {received}, {cause}"
        )
    if report.closed_by == "upstream":
        return (
            f"the upstream closed the session {ms:.1f} ms after 101 with code {report.code}"
            + (f" ({report.close_reason!r})" if report.close_reason else "")
            + ": the backend ended it on purpose (authentication, routing or a limit?)"
        )
    if report.closed_by == "client":
        return (
            f"the client ended the session {ms:.1f} ms after 101 ({report.how}, code "
            f"{report.code}): a page navigating away, or a client-side error"
        )
    return f"the proxy ended the session {ms:.1f} ms after 101 ({report.how})"
