"""What a probe sends, what it saw, and what that means: no sockets here.

The diagnosis is derived from the variants' outcomes, never a fixed text:
each finding compares variants that differ in one respect (HTTP version,
``Connection`` form, an extension offered), so the finding names that
respect.  The variants are the forms seen in the wild:

* HTTP/1.1 ``Connection: Upgrade``: RFC 6455 §4.1, what most clients send;
* the same offering ``permessage-deflate``: what every browser sends;
* HTTP/1.1 ``Connection: keep-alive, Upgrade``: Firefox's form (a token
  list, RFC 9110 §7.6.1, that servers matching the header literally refuse);
* HTTP/1.0 ``Connection: Upgrade``: what nginx sends upstream without
  ``proxy_http_version 1.1`` (and with the ``Upgrade``/``Connection`` lines);
* HTTP/1.0 ``Connection: keep-alive, Upgrade``.

A server that decides keep-alive from the request's HTTP version, as Swoole
does, closes the first HTTP/1.0 form right after ``101`` and keeps the second.
"""

from __future__ import annotations

import base64
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote, urlsplit

from wsproxy.headers import connection_options, header_values, websocket_accept
from wsproxy.sessions import redact_target
from wsproxy.wsframes import Opcode

#: The longest response head a probe reads (a server sending more is reported).
MAX_HEAD: Final = 65536
#: A drop without a close frame this soon after 101 is the keep-alive close
#: (Swoole's takes well under a millisecond; a slow backend a few).
PROMPT_DROP_MS: Final = 250.0
#: Answers that say "not now", not "not this form".
LIMIT_STATUSES: Final = frozenset({429, 503})
#: What the probe sends in its ping and its message, to recognise the answers.
PING_PAYLOAD: Final = b"wsproxy-probe"
TEXT_PAYLOAD: Final = b"wsproxy probe"
#: RFC 9110 §5.6.2: a header field name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Response headers a 101 must not carry (it has no body: RFC 9110 §8.6, §6.1;
#: aiohttp#3798 is a client that fails on them).
BODY_HEADERS: Final = ("content-length", "transfer-encoding")


class UsageError(ValueError):
    """A command line the probe cannot run: said in one line, exit 2."""


# --- the target -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where to probe: from ``ws://``, ``wss://``, ``http://`` or ``https://``."""

    #: The URL as shown in output: no credentials, query values redacted.
    url: str
    tls: bool
    host: str
    port: int
    #: Path and query, as sent in the request line (non-ASCII percent-encoded).
    resource: str

    @property
    def host_header(self) -> str:
        default = 443 if self.tls else 80
        return self.bracketed if self.port == default else self.address

    @property
    def bracketed(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def address(self) -> str:
        """``host:port`` for messages (an IPv6 host in brackets)."""
        return f"{self.bracketed}:{self.port}"

    @classmethod
    def parse(cls, url: str) -> Target:
        # Messages quote only what has no secret in it: never the URL as given.
        try:
            parts = urlsplit(url.strip())
            scheme = parts.scheme.lower()
            if scheme not in ("ws", "wss", "http", "https"):
                raise UsageError(
                    "not a WebSocket URL (expected ws://, wss://, http:// or https://)"
                )
            if "@" in parts.netloc:
                raise UsageError(
                    "credentials in the URL are not sent; use --header 'Authorization: ...'"
                )
            host, port = parts.hostname, parts.port
        except ValueError as exc:  # a bad port or IPv6 literal; UsageError too
            if isinstance(exc, UsageError):
                raise
            raise UsageError(
                "not a valid URL (the port must be a number from 1 to 65535, an IPv6 "
                "address in brackets)"
            ) from None
        if not host:
            raise UsageError("the URL has no host")
        if port == 0:
            raise UsageError("the port is not a number from 1 to 65535")
        if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in parts.path + parts.query):
            raise UsageError("the URL's path has spaces or control characters")
        tls = scheme in ("wss", "https")
        path = quote(parts.path or "/", safe=_URL_SAFE)
        query = quote(parts.query, safe=_URL_SAFE)
        resource = path + (f"?{query}" if query else "")
        target = cls("", tls, host, port or (443 if tls else 80), resource)
        shown = f"{scheme}://{target.host_header}{redact_target(resource)}"
        return cls(shown, tls, target.host, target.port, resource)


#: What a request target may carry as it is (RFC 3986 §2.2-2.3, and %).
_URL_SAFE = "/:@!$&'()*+,;=-._~%?"


def parse_header(text: str) -> tuple[str, str]:
    """``Name: value`` from the command line; UsageError if it could smuggle
    (the value, which may be a secret, is not repeated)."""
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not _TOKEN.fullmatch(name):
        raise UsageError("--header: expected 'Name: value' with a token for the name")
    check_value(f"--header {name}", value)
    if name.lower() in _SET_BY_PROBE:
        raise UsageError(f"--header {name}: the probe sets {name} itself (it varies it)")
    return name, value


def check_value(what: str, value: str) -> str:
    """A header value from the command line: visible ASCII and spaces only
    (no line break to smuggle a header, nothing latin-1 cannot carry)."""
    if any(not (0x20 <= ord(c) < 0x7F or c == "\t") for c in value):
        raise UsageError(f"{what}: the value must be printable ASCII (no line breaks)")
    return value


def check_subprotocol(name: str) -> str:
    if not _TOKEN.fullmatch(name):
        raise UsageError(f"--subprotocol {name!r}: a subprotocol is a token (RFC 6455 §4.1)")
    return name


def printable(text: str) -> str:
    """What a server sent, safe to print on a terminal: control characters
    (an escape sequence could retitle or clear it) as ``\\xNN``."""
    return "".join(
        c if 0x20 <= ord(c) < 0x7F or ord(c) > 0x9F else f"\\x{ord(c):02x}" for c in text
    )


_SET_BY_PROBE = frozenset(
    {"host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version"}
)


# --- the variants -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    version: str  # "HTTP/1.1" or "HTTP/1.0"
    connection: str
    deflate: bool
    #: Who sends this form, when it is someone in particular (the table says it).
    sender: str = ""

    @property
    def label(self) -> str:
        """The variant as the table's first column shows it."""
        extra = ", permessage-deflate" if self.deflate else ""
        who = f" ({self.sender})" if self.sender else ""
        return f"{self.version}, Connection: {self.connection}{extra}{who}"


STANDARD: Final = Variant("1.1", "HTTP/1.1", "Upgrade", deflate=False)
DEFLATE: Final = Variant("1.1 deflate", "HTTP/1.1", "Upgrade", deflate=True)
FIREFOX: Final = Variant(
    "1.1 keep-alive", "HTTP/1.1", "keep-alive, Upgrade", deflate=False, sender="Firefox"
)
HTTP10: Final = Variant(
    "1.0", "HTTP/1.0", "Upgrade", deflate=False, sender="nginx's default upstream"
)
HTTP10_KEEP_ALIVE: Final = Variant("1.0 keep-alive", "HTTP/1.0", "keep-alive, Upgrade", False)
VARIANTS: Final = (STANDARD, DEFLATE, FIREFOX, HTTP10, HTTP10_KEEP_ALIVE)


@dataclass(frozen=True, slots=True)
class Options:
    hold: float = 2.0
    timeout: float = 5.0
    origin: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    subprotocols: tuple[str, ...] = ()
    insecure: bool = False


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode("ascii")


def build_request(target: Target, variant: Variant, options: Options, key: str) -> bytes:
    lines = [
        f"GET {target.resource} {variant.version}",
        f"Host: {target.host_header}",
        "Upgrade: websocket",
        f"Connection: {variant.connection}",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if variant.deflate:
        lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
    if options.subprotocols:
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(options.subprotocols)}")
    if options.origin is not None:
        lines.append(f"Origin: {options.origin}")
    lines.extend(f"{name}: {value}" for name, value in options.headers)
    lines.append("User-Agent: wsproxy-probe")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def client_frame(opcode: Opcode, payload: bytes, mask: bytes | None = None) -> bytes:
    """One masked frame (RFC 6455 §5.3: a client masks every frame)."""
    mask = os.urandom(4) if mask is None else mask
    assert len(payload) <= 125, "control frames and the probe's message are short"
    masked = bytes(byte ^ mask[i & 3] for i, byte in enumerate(payload))
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + masked


# --- the response -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResponseHead:
    version: str
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        return _field(self.headers, name)


def _field(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    """A field's values joined as one (RFC 9110 §5.3), or None if absent."""
    values = header_values(headers, name.lower())
    return ", ".join(values) if values else None


class BadResponse(ValueError):
    """The bytes are not an HTTP response head: why, in a few words."""


def parse_response_head(data: bytes) -> tuple[ResponseHead, bytes]:
    """The head and the bytes after it (RFC 9112 §2, §4).  ``data`` holds
    the whole head; BadResponse when it is not an HTTP response."""
    if not data.startswith(b"HTTP/"):
        raise BadResponse(f"not an HTTP response (it began {bytes(data[:24])!r})")
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise BadResponse("the response head did not end")
    lines = data[:end].decode("latin-1").split("\r\n")
    match = re.fullmatch(r"(HTTP/\d\.\d) (\d{3})(?: (.*))?", lines[0])
    if match is None:
        raise BadResponse(f"a malformed status line {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise BadResponse(f"a malformed header line {line[:80]!r}")
        headers.append((name, printable(value.strip())))
    head = ResponseHead(match[1], int(match[2]), printable(match[3] or ""), tuple(headers))
    return head, data[end + 4 :]


def handshake_problems(head: ResponseHead, key: str, options: Options) -> list[str]:
    """What is wrong with a ``101`` as a WebSocket handshake response
    (RFC 6455 §4.1 and §4.2.2): a client must fail the connection on any."""
    problems = []
    if (head.get("upgrade") or "").strip().lower() != "websocket":
        problems.append("no 'Upgrade: websocket'")
    if "upgrade" not in connection_options(head.headers):
        problems.append("no 'upgrade' in Connection")
    accepts = header_values(head.headers, "sec-websocket-accept")
    if not accepts:
        problems.append("no Sec-WebSocket-Accept")
    elif len(accepts) != 1 or accepts[0].strip() != websocket_accept(key):
        problems.append(f"a wrong Sec-WebSocket-Accept {accepts[0][:40]!r}")
    chosen = head.get("sec-websocket-protocol")
    if chosen is not None and chosen.strip() not in options.subprotocols:
        problems.append(f"a subprotocol that was not offered {chosen[:40]!r}")
    return problems


# --- an outcome ---------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    """What one variant's connection did."""

    variant: Variant
    #: Why there is no response to judge (connect failed, no answer, not
    #: HTTP); ``fatal`` when the connection itself failed (the same for all).
    error: str | None = None
    fatal: bool = False
    status: int | None = None
    reason: str = ""
    version: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    first_byte_ms: float | None = None
    problems: list[str] = field(default_factory=list)
    #: Content-Length / Transfer-Encoding in a 101.
    body_headers: list[str] = field(default_factory=list)
    extensions: str | None = None
    #: Held for the whole window.
    survived: bool = False
    #: "close frame", "FIN" or "RST" when the server ended it first.
    closed_by: str | None = None
    closed_after_ms: float | None = None
    close_code: int | None = None
    close_reason: str = ""
    pong_ms: float | None = None
    messages: int = 0
    protocol_error: str | None = None

    @property
    def switched(self) -> bool:
        return self.status == 101

    @property
    def valid(self) -> bool:
        """A 101 a browser accepts."""
        return self.switched and not self.problems

    @property
    def holds(self) -> bool:
        return self.valid and self.survived and self.protocol_error is None

    @property
    def closed_early(self) -> bool:
        """A valid 101, then the server ended the session inside the window."""
        return self.valid and self.closed_by is not None

    @property
    def dropped(self) -> bool:
        """A valid 101, then the connection ended without a close frame
        within ``PROMPT_DROP_MS``: the HTTP/1.0 keep-alive close's signature."""
        return (
            self.closed_early
            and self.closed_by != "close frame"
            and (self.closed_after_ms or 0.0) < PROMPT_DROP_MS
        )

    @property
    def limited(self) -> bool:
        """Refused for load, not for its form (the probe's concurrent handshakes)."""
        return self.status in LIMIT_STATUSES

    def header(self, name: str) -> str | None:
        return _field(self.headers, name)

    @property
    def accept_wrong(self) -> bool:
        """The 101's Sec-WebSocket-Accept is missing or not this key's."""
        return any("Sec-WebSocket-Accept" in problem for problem in self.problems)

    def closing(self) -> str:
        """Who ended the session and how, in a few words."""
        if self.closed_by is None:
            return "-"
        after = f" after {format_ms(self.closed_after_ms)}"
        if self.closed_by == "close frame":
            reason = f" {self.close_reason!r}" if self.close_reason else ""
            return f"server close {self.close_code}{reason}{after}"
        return f"server {self.closed_by}{after}"


def format_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


# --- the diagnosis ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Diagnosis:
    #: The standard handshake holds: the exit status is 0.
    ok: bool
    findings: tuple[str, ...]


_PROXY_FIX = (
    "a proxy in front must speak HTTP/1.1 upstream: nginx `proxy_http_version 1.1;` "
    "plus `proxy_set_header Upgrade $http_upgrade;` and "
    '`proxy_set_header Connection "upgrade";`, or wsproxy, which does this by default'
)


def _what_got(outcome: Outcome) -> str:
    if outcome.error is not None:
        return outcome.error
    if not outcome.switched:
        return f"{outcome.status} {outcome.reason}".strip()
    if outcome.problems:
        return "101 with " + ", ".join(outcome.problems)
    if outcome.protocol_error is not None:
        return f"101, then frames that break RFC 6455 ({outcome.protocol_error})"
    if outcome.closed_early:
        return f"101, then {outcome.closing()}"
    return "101, held"


def _through(outcomes: Sequence[Outcome]) -> str | None:
    """The proxy the answers name (``Server``/``Via``), if any."""
    for outcome in outcomes:
        for name in ("via", "server"):
            value = outcome.header(name)
            if value and any(p in value.lower() for p in _KNOWN_PROXIES):
                return f"{name.title()}: {value}"
    return None


_KNOWN_PROXIES = ("nginx", "openresty", "haproxy", "envoy", "caddy", "traefik", "apache", "varnish")


def diagnose(outcomes: Sequence[Outcome], hold: float) -> Diagnosis:
    """Findings in plain words, from comparing the variants.

    A form is blamed only when the comparison says so: a variant refused for
    load (429, 503) proves nothing about its form; a close with a close frame
    is the application's decision, not a keep-alive rule; anything that fits
    no known pattern is reported as what it was, never explained away.
    """
    by = {outcome.variant: outcome for outcome in outcomes}
    standard = by[STANDARD]
    window = f"{hold:g}s"
    findings: list[str] = []
    explained: set[Variant] = set()

    limited = [o for o in outcomes if o.limited]
    if limited:
        findings.append(
            f"{len(limited)} of the probe's {len(outcomes)} concurrent handshakes got "
            + ", ".join(sorted({f"{o.status} {o.reason}".strip() for o in limited}))
            + ": the server (or a proxy in front) limits connections per client or is "
            "overloaded, so those forms were not judged; probe again when it is idle."
        )
        explained.update(o.variant for o in limited)

    if standard.limited:
        pass
    elif standard.error is not None:
        findings.append(f"the standard handshake got no usable answer: {standard.error}.")
    elif not standard.switched:
        findings.append(
            f"a standard handshake got {standard.status} {standard.reason} instead of 101: "
            "this path is not a WebSocket endpoint, or a proxy in front does not pass the "
            "Upgrade and Connection headers (nginx: `proxy_set_header Upgrade $http_upgrade;` "
            'and `proxy_set_header Connection "upgrade";`).'
        )
    elif standard.problems:
        findings.append(
            "the 101 is not a valid WebSocket handshake response: "
            + "; ".join(standard.problems)
            + ". Browsers and other clients fail such a connection (RFC 6455 §4.1)"
            + (
                "; Sec-WebSocket-Accept must be base64(SHA-1(key + the RFC's GUID)) of this "
                "request's key (a cached or rewritten response gives someone else's)."
                if standard.accept_wrong
                else "."
            )
        )
    elif standard.dropped and all(o.dropped for o in outcomes if not o.limited):
        through = _through(outcomes)
        findings.append(
            f"every handshake got 101 and the connection was dropped without a close frame "
            f"soon after ({standard.closing()} for the standard form), whatever the HTTP "
            "version or Connection form sent here. That is what a proxy in front speaking "
            "HTTP/1.0 upstream does to a backend that decides keep-alive from the "
            "request's HTTP version (as Swoole does)"
            + (f"; the answers came through {through}" if through else "")
            + ". Probe the backend directly (wsproxy probe ws://BACKEND/PATH): if it "
            f"holds there, the proxy is the cause, and {_PROXY_FIX}. If it fails there "
            "too, the backend closes every session itself: see its logs."
        )
        explained.update(by)
    elif standard.closed_by == "close frame":
        findings.append(
            f"the server accepted the standard handshake, then closed the session on "
            f"purpose ({standard.closing()}): the application ended it (authentication, "
            "a subprotocol or an Origin it expects, or the probe's own ping or message?)."
        )
    elif not standard.holds:
        findings.append(f"the standard handshake did not hold for {window}: {_what_got(standard)}.")
    explained.add(STANDARD)

    if standard.holds:
        findings.extend(_compare_forms(by, window, explained))

    failed = [o for o in outcomes if not o.holds and o.variant not in explained]
    if failed:
        findings.append(
            "these forms failed too: "
            + "; ".join(f"{describe_variant(o.variant)}: {_what_got(o)}" for o in failed)
            + "."
        )
    for outcome in outcomes:
        if outcome.switched and outcome.body_headers:
            findings.append(
                f"the 101 carries {', '.join(outcome.body_headers)}: a 101 has no body, and "
                "some clients fail on these (aiohttp#3798); the server or a proxy adds them."
            )
            break
    holding = [o for o in outcomes if o.holds]
    if holding and hold > 0 and all(o.pong_ms is None for o in holding):
        findings.append(
            f"no ping was answered within {window} (RFC 6455 §5.5.2 requires a pong): "
            "clients that check liveness with pings will give up on this server."
        )
    errors = [o for o in outcomes if o.protocol_error]
    if errors:
        findings.append(
            f"the server's frames break RFC 6455 ({errors[0].protocol_error}): a client "
            "fails the connection."
        )
    if not findings and len(holding) == len(outcomes):
        findings.append(
            f"every form held for {window} and answered the ping: this server keeps "
            "WebSocket sessions whatever the HTTP version or Connection form it receives; "
            "a proxy in front of it cannot lose them that way."
        )
    return Diagnosis(standard.holds, tuple(findings))


def describe_variant(variant: Variant) -> str:
    extra = ", permessage-deflate" if variant.deflate else ""
    return f"{variant.version} with Connection: {variant.connection}{extra}"


def _compare_forms(by: dict[Variant, Outcome], window: str, explained: set[Variant]) -> list[str]:
    """With the standard form holding: which other forms fail, and what that
    means.  Each variant a finding explains goes into ``explained``."""
    findings = []
    ten, ten_ka = by[HTTP10], by[HTTP10_KEEP_ALIVE]
    judged = [o for o in (ten, ten_ka) if not o.limited]
    if ten.dropped and ten_ka.holds:
        findings.append(
            f"the server closes WebSocket sessions that arrive as HTTP/1.0 right after 101 "
            f"(HTTP/1.0 with Connection: Upgrade: {ten.closing()}; with keep-alive, Upgrade "
            f"it held {window}): keep-alive is decided from the request's HTTP version, as "
            f"Swoole does. Clients never send HTTP/1.0, but proxies do: {_PROXY_FIX}."
        )
        explained.update((HTTP10, HTTP10_KEEP_ALIVE))
    elif ten.dropped and ten_ka.dropped:
        findings.append(
            f"the server drops every WebSocket session that arrives as HTTP/1.0 right after "
            f"101 ({ten.closing()}), even with Connection: keep-alive. Clients never send "
            f"HTTP/1.0, but proxies do: {_PROXY_FIX}."
        )
        explained.update((HTTP10, HTTP10_KEEP_ALIVE))
    elif judged and all(o.status is not None and not o.switched for o in judged):
        findings.append(
            "the server does not accept a WebSocket handshake over HTTP/1.0 ("
            + "; ".join(sorted({_what_got(o) for o in judged}))
            + "); RFC 6455 requires HTTP/1.1, so that is allowed, but a proxy in front "
            f"that speaks HTTP/1.0 upstream gets this answer: {_PROXY_FIX}."
        )
        explained.update(o.variant for o in judged)
    elif (
        ten.holds
        and ten_ka.status is not None
        and 400 <= ten_ka.status < 500
        and not ten_ka.limited
        and by[FIREFOX].status == ten_ka.status
    ):
        pass  # the literal Connection comparison again: the Firefox finding says it
    elif any(not o.holds for o in judged):
        findings.append(
            "HTTP/1.0 handshakes fail while HTTP/1.1 holds ("
            + "; ".join(
                f"HTTP/1.0 with Connection: {o.variant.connection}: {_what_got(o)}"
                for o in judged
                if not o.holds
            )
            + f"); clients never send HTTP/1.0, but proxies do: {_PROXY_FIX}."
        )
        explained.update(o.variant for o in judged)
    firefox = by[FIREFOX]
    if firefox.limited or firefox.holds:
        pass
    elif firefox.status is not None and 400 <= firefox.status < 500:
        findings.append(
            f"the server refuses Firefox's handshake, Connection: keep-alive, Upgrade "
            f"({_what_got(firefox)}), while Connection: Upgrade holds: it compares the "
            "Connection header as a whole instead of as a list of tokens "
            "(RFC 9110 §7.6.1), so Firefox users cannot connect"
            + (
                " (HTTP/1.0 with the same Connection header is refused the same way)"
                if ten.holds and ten_ka.status == firefox.status
                else ""
            )
            + ". Fix the server's check, or put a proxy in front that rewrites Connection "
            "(wsproxy sends Connection: Upgrade upstream)."
        )
        explained.add(FIREFOX)
        if ten.holds and ten_ka.status == firefox.status:
            explained.add(HTTP10_KEEP_ALIVE)
    else:
        findings.append(
            f"Firefox's handshake, Connection: keep-alive, Upgrade, failed "
            f"({_what_got(firefox)}) while Connection: Upgrade held."
        )
        explained.add(FIREFOX)
    deflate = by[DEFLATE]
    if not deflate.limited and not deflate.holds:
        findings.append(
            f"the server fails when permessage-deflate is offered ({_what_got(deflate)}), "
            "which every browser offers: check the server's compression settings, or strip "
            "Sec-WebSocket-Extensions in a proxy in front."
        )
        explained.add(DEFLATE)
    return findings
