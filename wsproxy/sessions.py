"""What one WebSocket session was and how it ended: pure data and wording.

The tunnel knows bytes and events; this module turns them into the record an
operator reads (access log, early-close warning, status page) and the bounded
label values metrics use.  No I/O, so every wording and label rule is unit
tested.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from wsproxy.wsframes import ABNORMAL_CLOSURE, NO_STATUS_CODE, close_code_is_valid

#: Standard methods keep their name in the ``method`` label; anything else is
#: ``other``, so a client cannot create label values at will.
STANDARD_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)


def method_label(method: str | None) -> str:
    return method if method in STANDARD_METHODS else "other"


def close_code_label(code: int | None) -> str:
    """The ``code`` label: ``1006`` without a close frame, ``invalid`` off-range."""
    if code is None:
        return str(ABNORMAL_CLOSURE)
    if code == NO_STATUS_CODE or close_code_is_valid(code):
        return str(code)
    return "invalid"


def redact_target(target: str) -> str:
    """The request target as logs and the status page may show it.

    Every query value is replaced by ``redacted`` and names are kept
    (``?token=abc`` -> ``?token=redacted``); an item without ``=`` is all
    value (``?S3CR3T`` -> ``?redacted``).  Path parameters get the same
    treatment (``/a;jsessionid=abc`` -> ``/a;jsessionid=redacted``), and so
    does the userinfo of an absolute-form target (``http://user:pw@host/``),
    and a fragment is replaced whole (``#access_token=...``).
    Browsers put tokens in WebSocket URLs because JavaScript cannot set
    headers there; none of them may reach a log line.
    """
    if "?" not in target and ";" not in target and "#" not in target and "@" not in target:
        return target  # nothing that could hold a secret (the common case)
    target, hash_, _fragment = target.partition("#")
    base, question, query = target.partition("?")
    if not base.startswith("/") and "://" in base:
        scheme, _, rest = base.partition("://")
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            authority = "redacted@" + authority.rpartition("@")[2]
        base = f"{scheme}://{authority}{slash}{path}"
    if ";" in base:
        base = "/".join(_redact_parameters(segment) for segment in base.split("/"))
    redacted = base
    if question:
        redacted += "?" + "&".join(_redact_item(item) for item in query.split("&"))
    # A fragment is refused (400) but still logged: OAuth puts tokens there.
    return redacted + "#redacted" if hash_ else redacted


def _redact_parameters(segment: str) -> str:
    name, semicolon, parameters = segment.partition(";")
    if not semicolon:
        return segment
    return name + ";" + ";".join(_redact_item(item) for item in parameters.split(";"))


def _redact_item(item: str) -> str:
    if not item:
        return item
    name, equals, _value = item.partition("=")
    return f"{name}=redacted" if equals else "redacted"


#: The records below are made for every session (one at its 101, three at
#: its end) and never changed after.  They are not ``frozen``: a frozen
#: dataclass's ``__init__`` sets each field through ``object.__setattr__``,
#: and for these 26 fields that was 5% of a whole session's cost (33,000
#: instructions of 700,000, bench/perhandshake.py --instructions).
@dataclass(slots=True)
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
    #: The target the upstream received (a rewrite may strip a prefix); "": ``path``.
    upstream_path: str = ""
    #: The upstream server is spoken to over TLS (an ``https://`` server).
    upstream_tls: bool = False


@dataclass(slots=True)  # not frozen: see SessionInfo
class DirectionStats:
    bytes: int
    frames: int
    messages: int
    error: str | None = None


@dataclass(slots=True)  # not frozen: see SessionInfo
class SessionReport:
    """A finished session, as logs and the status page show it.

    Not to be changed once made: ``early`` and ``code`` are worked out from
    the other fields at construction (``dataclasses.replace`` makes them
    again)."""

    info: SessionInfo
    duration: float  # seconds from the 101 to the end
    closed_by: str  # client | upstream | proxy
    how: str  # close_frame | fin | reset | idle_timeout | drain | max_lifetime | error
    close_code: int | None  # the first close frame's code; None: no close frame
    close_reason: str
    client_to_upstream: DirectionStats
    upstream_to_client: DirectionStats
    #: Ended within the route's window, and not by the proxy's own choice
    #: to end it (a drain, ``max_lifetime``): that is no sign of a backend
    #: that drops sessions.
    early: bool = field(init=False)
    #: The ``code`` label (close_code_label).
    code: str = field(init=False)

    def __post_init__(self) -> None:
        # Worked out once: the metrics, the close timeline and the log line
        # each ask for both.
        self.early = self.duration < self.info.early_close_window and self.how not in (
            "drain",
            "max_lifetime",
        )
        self.code = close_code_label(self.close_code)

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


#: An upstream drop this soon after 101 is "within milliseconds": too soon for
#: an application to have decided anything, the shape of a keep-alive rule.
PROMPT_DROP = 0.05

#: Close codes of a session ended on purpose and in order (RFC 6455 §7.4.1);
#: 1005 is a close frame without a code, what a browser's ``ws.close()`` sends.
CLEAN_CODES = frozenset({1000, 1001, NO_STATUS_CODE})


def needs_attention(report: SessionReport) -> bool:
    """Whether an early close is one the operator must look at (a WARNING).

    A client that ends its session cleanly (its own close frame first, code
    1000 or 1001, or none: a page navigating away or calling ``close()``) is
    counted, not warned about; everything else is: the upstream or the proxy
    first, no close frame, or any other code.
    """
    return not (
        report.closed_by == "client"
        and report.how == "close_frame"
        and report.close_code in CLEAN_CODES
    )


def probe_command(info: SessionInfo) -> str:
    """The ``wsproxy probe`` command line that tests the handshakes of the
    upstream server that served this session: its address and the request's
    path, without the query (its names may be secrets too, even redacted).
    Quoted for a shell: the path came from a client, and an operator will
    paste this line into a terminal."""
    path = without_query(info.upstream_path or info.path)
    if not path.startswith("/"):
        path = "/"
    scheme = "wss" if info.upstream_tls else "ws"
    return "wsproxy probe " + shlex.quote(f"{scheme}://{info.server}{path}")


def without_query(target: str) -> str:
    """The path alone: what the status page shows (a query or a path
    parameter such as ``;jsessionid=`` may carry a token, redacted or not,
    and its names may say too much)."""
    path = target.split("?", 1)[0].split("#", 1)[0]
    return "/".join(segment.split(";", 1)[0] for segment in path.split("/"))


def diagnosis(report: SessionReport) -> str:
    """One sentence on what probably happened, for the early-close log line.

    It states what wsproxy itself sent the upstream, because that is all
    wsproxy knows: behind it there may be more hops (another proxy, a load
    balancer) that change the request again.
    """
    ms = report.duration * 1000
    info = report.info
    if report.closed_by == "upstream" and not report.close_frame_seen:
        sent = (
            f"wsproxy sent the upgrade as {info.upstream_version} "
            f"with 'Connection: {info.upstream_connection}'"
        )
        lookup = f"look for request ID {info.request_id} in the backend's logs"
        if report.duration < PROMPT_DROP:
            return (
                f"the upstream dropped the connection {ms:.1f} ms after 101 without a close "
                f"frame ({report.how}); {sent}, so this hop did not trigger the HTTP/1.0 "
                "keep-alive close. A drop within milliseconds of 101 with no close frame is "
                "the signature of an HTTP/1.0 hop between wsproxy and the backend (nginx "
                "without 'proxy_http_version 1.1', for one), or of a backend that refuses the "
                "session: check each proxy in between for HTTP/1.0 upstream requests (the probe "
                f"command that follows tests the next hop; run it against each), and {lookup}"
            )
        return (
            f"the upstream dropped the connection {ms:.1f} ms after 101 without a close "
            f"frame ({report.how}); {sent}. The backend, or a hop in between, ended the "
            f"session without saying why: {lookup}"
        )
    if report.closed_by == "upstream":
        return (
            f"the upstream closed the session {ms:.1f} ms after 101 with code {report.code}"
            + (f" ({report.close_reason!r})" if report.close_reason else "")
            + ": the backend ended it on purpose (authentication, routing or a limit?)"
        )
    if report.closed_by == "client":
        if not needs_attention(report):
            return (
                f"the client closed the session cleanly {ms:.1f} ms after 101 (code "
                f"{report.code}): a page navigating away or a short-lived client"
            )
        return (
            f"the client ended the session {ms:.1f} ms after 101 ({report.how}, code "
            f"{report.code}): a client-side error, a network drop, or a page that went away"
        )
    return f"the proxy ended the session {ms:.1f} ms after 101 ({report.how})"
