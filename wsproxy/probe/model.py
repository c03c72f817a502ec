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
from urllib.parse import urlsplit

from wsproxy.headers import connection_options, header_values, websocket_accept
from wsproxy.wsframes import Opcode

#: The longest response head a probe reads (a server sending more is reported).
MAX_HEAD: Final = 65536
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

    url: str
    tls: bool
    host: str
    port: int
    #: Path and query, as sent in the request line.
    resource: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme not in ("ws", "wss", "http", "https"):
            raise UsageError(
                f"{url!r} is not a WebSocket URL (expected ws://, wss://, http:// or https://)"
            )
        if parts.username is not None:  # not repeated: it holds a secret
            raise UsageError(
                "credentials in the URL are not sent; use --header 'Authorization: ...'"
            )
        try:
            host, port = parts.hostname, parts.port
        except ValueError:  # a port that is not a number, or out of range
            raise UsageError(f"{url!r}: the port is not a number from 1 to 65535") from None
        if not host:
            raise UsageError(f"{url!r} has no host")
        if port == 0:
            raise UsageError(f"{url!r}: the port is not a number from 1 to 65535")
        tls = scheme in ("wss", "https")
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in resource):
            raise UsageError(f"{url!r}: the path has spaces or control characters")
        return cls(url, tls, host, port or (443 if tls else 80), resource)


def parse_header(text: str) -> tuple[str, str]:
    """``Name: value`` from the command line; UsageError if it could smuggle."""
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not _TOKEN.fullmatch(name):
        raise UsageError(f"--header {text!r}: expected 'Name: value'")
    if any(c in value for c in "\r\n\0"):
        raise UsageError(f"--header {text!r}: the value has a line break")
    if name.lower() in _SET_BY_PROBE:
        raise UsageError(f"--header {text!r}: the probe sets {name} itself (it varies it)")
    return name, value


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

    @property
    def keep_alive(self) -> bool:
        return "keep-alive" in self.connection.lower()


STANDARD: Final = Variant("1.1", "HTTP/1.1", "Upgrade", deflate=False)
DEFLATE: Final = Variant("1.1 deflate", "HTTP/1.1", "Upgrade", deflate=True)
FIREFOX: Final = Variant("1.1 keep-alive", "HTTP/1.1", "keep-alive, Upgrade", deflate=False)
HTTP10: Final = Variant("1.0", "HTTP/1.0", "Upgrade", deflate=False)
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
        values = header_values(self.headers, name.lower())
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
        headers.append((name, value.strip()))
    head = ResponseHead(match[1], int(match[2]), match[3] or "", tuple(headers))
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

    def header(self, name: str) -> str | None:
        return ResponseHead(self.version, self.status or 0, self.reason, self.headers).get(name)

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
    """Findings in plain words, from comparing the variants."""
    by = {outcome.variant: outcome for outcome in outcomes}
    standard = by[STANDARD]
    findings: list[str] = []
    window = f"{hold:g}s"

    if standard.error is not None:
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
                if any("Accept" in p for p in standard.problems)
                else "."
            )
        )
    elif standard.closed_early:
        valid = [o for o in outcomes if o.valid]
        if all(o.closed_early for o in valid):
            through = _through(outcomes)
            findings.append(
                f"every handshake got 101 and the server ended it soon after "
                f"({standard.closing()} for the standard form), whatever the HTTP version "
                "or Connection form sent here. That is what a proxy in front speaking "
                "HTTP/1.0 upstream does to a backend that decides keep-alive from the "
                "request's HTTP version (as Swoole does)"
                + (f"; the answers came through {through}" if through else "")
                + ". Probe the backend directly (wsproxy probe ws://BACKEND/PATH): if it "
                f"holds there, the proxy is the cause, and {_PROXY_FIX}. If it fails there "
                "too, the backend closes every session itself: see its logs."
            )
        else:
            held = ", ".join(f"HTTP/{o.variant.name}" for o in valid if o.holds)
            findings.append(
                f"the standard handshake got 101 and then {standard.closing()}, while "
                f"{held or 'no other form'} held for {window}."
            )
    elif not standard.survived:
        findings.append(f"the standard handshake got 101 but did not hold: {_what_got(standard)}.")

    if standard.holds:
        findings.extend(_compare_forms(by, window))

    for outcome in outcomes:
        if outcome.switched and outcome.body_headers:
            findings.append(
                f"the 101 carries {', '.join(outcome.body_headers)}: a 101 has no body, and "
                "some clients fail on these (aiohttp#3798); the server or a proxy adds them."
            )
            break
    unanswered = [o for o in outcomes if o.holds and o.pong_ms is None]
    if unanswered and len(unanswered) == sum(o.holds for o in outcomes):
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
    if standard.holds and not findings:
        findings.append(
            f"every form held for {window} and answered the ping: this server keeps "
            "WebSocket sessions whatever the HTTP version or Connection form it receives; "
            "a proxy in front of it cannot lose them that way."
        )
    return Diagnosis(standard.holds, tuple(findings))


def _compare_forms(by: dict[Variant, Outcome], window: str) -> list[str]:
    """With the standard form holding: which other forms fail, and what that means."""
    findings = []
    ten, ten_ka = by[HTTP10], by[HTTP10_KEEP_ALIVE]
    if ten.closed_early and ten_ka.holds:
        findings.append(
            f"the server closes WebSocket sessions that arrive as HTTP/1.0 right after 101 "
            f"(HTTP/1.0 with Connection: Upgrade: {ten.closing()}; with keep-alive, Upgrade "
            f"it held {window}): keep-alive is decided from the request's HTTP version, as "
            f"Swoole does. Clients never send HTTP/1.0, but proxies do: {_PROXY_FIX}."
        )
    elif ten.closed_early and ten_ka.closed_early:
        findings.append(
            f"the server closes every WebSocket session that arrives as HTTP/1.0 right after "
            f"101 ({ten.closing()}), even with Connection: keep-alive. Clients never send "
            f"HTTP/1.0, but proxies do: {_PROXY_FIX}."
        )
    elif not ten.holds and not ten.closed_early:
        findings.append(
            f"the server does not accept a WebSocket handshake over HTTP/1.0 "
            f"({_what_got(ten)}); RFC 6455 requires HTTP/1.1, so that is allowed, but a proxy "
            f"in front that speaks HTTP/1.0 upstream gets this answer: {_PROXY_FIX}."
        )
    elif ten.holds and not ten_ka.holds:
        findings.append(
            f"HTTP/1.0 with Connection: keep-alive, Upgrade failed ({_what_got(ten_ka)}) "
            "while HTTP/1.0 with Connection: Upgrade held: the server reads Connection as "
            "one value, not a list of tokens (RFC 9110 §7.6.1)."
        )
    firefox = by[FIREFOX]
    if not firefox.holds:
        findings.append(
            f"the server fails Firefox's handshake, Connection: keep-alive, Upgrade "
            f"({_what_got(firefox)}), while Connection: Upgrade holds: it compares the "
            "Connection header as a whole instead of as a list of tokens "
            "(RFC 9110 §7.6.1), so Firefox users cannot connect. Fix the server's check, "
            "or put a proxy in front that rewrites Connection (wsproxy sends "
            "Connection: Upgrade upstream)."
        )
    deflate = by[DEFLATE]
    if not deflate.holds:
        findings.append(
            f"the server fails when permessage-deflate is offered ({_what_got(deflate)}), "
            "which every browser offers: check the server's compression settings, or strip "
            "Sec-WebSocket-Extensions in a proxy in front."
        )
    return findings
