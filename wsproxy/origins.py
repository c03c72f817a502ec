"""Origin checks for WebSocket handshakes: pure, no I/O.

A browser sends ``Origin`` with every WebSocket handshake (RFC 6455 §4.1,
item 8; RFC 6454 §7) and, unlike for ``fetch``, no CORS check protects the
server: any page the user visits can open a WebSocket to the backend with
the user's cookies (cross-site WebSocket hijacking).  A route with
``websocket.allowed_origins`` answers ``403`` to a handshake from any other
origin.

Rules, compared after normalization (lower case, the scheme's default port
made explicit, so ``https://App.example.org`` and
``https://app.example.org:443`` are one origin):

* ``https://app.example.org``: exactly that scheme, host and port;
* ``https://*.example.org``: any host *under* ``example.org`` (one label or
  more: ``a.example.org``, ``a.b.example.org``), not ``example.org`` itself
  (list it too if it serves the page), same scheme and port;
* ``null``: the opaque origin (a sandboxed iframe, a ``file:`` page); refused
  unless listed.

A handshake without ``Origin`` is not a browser's (browsers always send it),
so it is not a cross-site hijack and passes; several ``Origin`` fields, or a
list in one, are refused: a browser sends exactly one origin.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_ORIGIN = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[0-9a-f:.]+\]|[a-z0-9._~-]+)"
    r"(?::(?P<port>0|[1-9][0-9]{0,4}))?"
)
#: RFC 9110 §5.6.3: the whitespace around a field value (not Python's wider set).
_OWS = " \t"
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        default = DEFAULT_PORTS.get(self.scheme)
        return f"{self.scheme}://{self.host}" + ("" if self.port == default else f":{self.port}")


def parse_origin(text: str) -> Origin | None:
    """An ``Origin`` value as a browser serializes it, normalized; None if it
    is not one (or is ``null``)."""
    match = _ORIGIN.fullmatch(text.strip(_OWS).lower())
    if match is None:
        return None
    scheme, host = match["scheme"], match["host"]
    if host.startswith("["):
        try:
            host = f"[{ipaddress.IPv6Address(host[1:-1])}]"
        except ValueError:
            return None
    if match["port"] is not None:
        port = int(match["port"])
        if not 0 < port <= 65535:
            return None
    elif scheme in DEFAULT_PORTS:
        port = DEFAULT_PORTS[scheme]
    else:
        return None
    return Origin(scheme, host.rstrip("."), port)


@dataclass(frozen=True, slots=True)
class OriginRule:
    """One ``allowed_origins`` entry."""

    text: str
    origin: Origin | None  # None: the rule is ``null``
    wildcard: bool = False

    def matches(self, origin: Origin | None) -> bool:
        if self.origin is None or origin is None:
            return self.origin is None and origin is None
        rule = self.origin
        if origin.scheme != rule.scheme or origin.port != rule.port:
            return False
        if self.wildcard:
            under, dot, suffix = origin.host.rpartition("." + rule.host)
            return (
                bool(dot)
                and not suffix
                and all(_LABEL.fullmatch(label) for label in under.split("."))
            )
        return origin.host == rule.host


def parse_rule(text: str) -> OriginRule:
    """An ``allowed_origins`` entry; ValueError with the message the
    configuration error shows."""
    value = text.strip()
    if value.lower() == "null":
        return OriginRule("null", None)
    scheme, sep, _ = value.partition("://")
    if sep and scheme.lower() not in ("http", "https"):
        raise ValueError(
            f"invalid origin {text!r} (the scheme must be http or https: a browser sends "
            "the page's origin, never ws:// or wss://)"
        )
    wildcard = "://*." in value
    candidate = value.replace("://*.", "://", 1) if wildcard else value
    origin = parse_origin(candidate)
    if origin is None or "*" in candidate:
        raise ValueError(
            f"invalid origin {text!r} (expected scheme://host[:port] such as "
            "'https://app.example.org', a pattern such as 'https://*.example.org', or 'null'; "
            "no path)"
        )
    if wildcard and not all(_LABEL.fullmatch(label) for label in origin.host.split(".")):
        raise ValueError(f"invalid origin pattern {text!r} ('*.' must precede a domain name)")
    if wildcard and origin.host.rsplit(".", 1)[-1].isdigit():
        raise ValueError(f"invalid origin pattern {text!r} ('*.' must precede a domain name)")
    if wildcard and "." not in origin.host:
        raise ValueError(
            f"invalid origin pattern {text!r} (too broad: '*.' must precede a domain with a "
            "dot, such as '*.example.org')"
        )
    return OriginRule(str(origin) if not wildcard else _pattern(origin), origin, wildcard)


def _pattern(origin: Origin) -> str:
    text = str(origin)
    return text.replace("://", "://*.", 1)


def origin_allowed(rules: Sequence[OriginRule], values: Sequence[str]) -> bool:
    """Whether a handshake with these ``Origin`` field values may pass."""
    if not rules or not values:
        return True
    value = values[0].strip(_OWS) if len(values) == 1 else ""
    if not value or " " in value or "\t" in value or "," in value:
        return False
    origin = None if value.lower() == "null" else parse_origin(value)
    if origin is None and value.lower() != "null":
        return False
    return any(rule.matches(origin) for rule in rules)
