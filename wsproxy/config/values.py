"""Value checkers: text in, a value out, or ValueError with the message the
user reads (the walker puts it at the node)."""

from __future__ import annotations

import contextlib
import ipaddress
import re
from ipaddress import IPv4Network, IPv6Network

from yaml.nodes import MappingNode, Node

from wsproxy.config.settings import MAX_WEIGHT, Address, ServerSettings, _hostname
from wsproxy.config.walker import _Ctx, _integer, _Map, _text
from wsproxy.headers import FORWARDED_HEADERS, HOP_BY_HOP
from wsproxy.target import BadTarget, normalize_prefix


def _bind_host(text: str) -> str:
    """A host to listen on: IP address (IPv6 without brackets) or host name."""
    if text.startswith("[") and text.endswith("]"):
        raise ValueError(
            f"invalid host {text!r} (write an IPv6 address without brackets here, "
            f"e.g. {text[1:-1]!r})"
        )
    if ":" in text:
        try:
            return str(ipaddress.IPv6Address(text))
        except ValueError:
            pass
    else:
        checked = _hostname(text)
        if checked is not None:
            return checked
    raise ValueError(
        f"invalid host {text!r} (expected an IP address or host name, "
        "e.g. '127.0.0.1', '0.0.0.0', '::1' or 'localhost')"
    )


def _route_host(text: str) -> str:
    """``example.com``, ``*.example.com`` or ``[::1]``; lower-cased, without
    the trailing dot (the router strips it from requests too)."""
    hint = "expected a host name or '*.' and a domain, e.g. 'example.com' or '*.example.com'"
    if "://" in text or "/" in text:
        raise ValueError(
            f"invalid host {text!r} ({hint}; no scheme or path, put the path in path_prefix)"
        )
    if text == "*":
        raise ValueError(f"invalid host {text!r} (leave host out to match every host)")
    if text.startswith("[") and text.endswith("]"):
        try:
            return f"[{ipaddress.IPv6Address(text[1:-1])}]"
        except ValueError:
            raise ValueError(
                f"invalid host {text!r} (expected an IPv6 address in brackets)"
            ) from None
    if ":" in text:
        raise ValueError(f"invalid host {text!r} ({hint}; without a port)")
    wildcard = text.startswith("*.")
    name = text[2:] if wildcard else text
    name = name[:-1] if name.endswith(".") else name
    if "*" in name:
        raise ValueError(f"invalid host {text!r} (a wildcard is only allowed as a leading '*.')")
    checked = _hostname(name)
    if checked is None:
        raise ValueError(f"invalid host {text!r} ({hint})")
    return f"*.{checked}" if wildcard else checked


def _path_prefix(text: str) -> str:
    """The prefix in the normal form request paths are matched in (wsproxy.target)."""
    if not text.startswith("/"):
        raise ValueError(
            f"invalid path_prefix {text!r} (expected a path starting with '/', e.g. '/api')"
        )
    if any(char in text for char in "?#") or any(
        char.isspace() or ord(char) < 0x20 for char in text
    ):
        raise ValueError(
            f"invalid path_prefix {text!r} (expected a URL path without spaces, query or fragment)"
        )
    try:
        return normalize_prefix(text)
    except BadTarget as exc:
        raise ValueError(f"invalid path_prefix {text!r} ({exc})") from None


def _route_name(text: str) -> str:
    if not text.strip():
        raise ValueError(f"invalid name {text!r} (expected a non-empty name)")
    if text == "none":
        # route="none" is the metrics label of requests that matched no route.
        raise ValueError("invalid name 'none' (reserved for requests that match no route)")
    return text


def _server_address(text: str) -> tuple[Address, bool]:
    """``HOST:PORT``, ``http://HOST:PORT`` or ``https://HOST:PORT``; the
    address, and whether the server speaks TLS."""
    scheme, sep, rest = text.partition("://")
    tls = False
    if sep:
        if scheme.lower() not in ("http", "https"):
            raise ValueError(
                f"invalid server {text!r} (the scheme must be http:// or https://, "
                "or none: HOST:PORT)"
            )
        tls = scheme.lower() == "https"
        if rest.endswith("/"):
            rest = rest[:-1]
        if "/" in rest:
            raise ValueError(f"invalid server {text!r} (a server is HOST:PORT, without a path)")
        text = rest
    return Address.parse(text, what="server"), tls


_WEIGHT = _integer(1, MAX_WEIGHT, what="weight")


def _server(ctx: _Ctx, node: Node, path: str) -> ServerSettings | None:
    """``"HOST:PORT"`` or ``{address: "HOST:PORT", weight: N}``."""
    if isinstance(node, MappingNode):
        m = _Map(ctx, node, path)
        target = m.require("address", _text(_server_address))
        weight = m.get("weight", _WEIGHT, 1)
        m.finish()
        if target is None or weight is None or not m.ok:
            return None
        return ServerSettings(target[0], weight, target[1])
    target = _text(_server_address)(ctx, node, path)
    return ServerSettings(target[0], tls=target[1]) if target is not None else None


def _file(text: str) -> str:
    """A file name; whether it can be read is wsproxy.tls's question."""
    if not text.strip() or "\x00" in text:
        raise ValueError(f"invalid file name {text!r} (expected a path to a file)")
    return text


#: RFC 9110 §5.6.2 token.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

#: Fields a route may not set or remove: the framing and connection fields
#: the proxy owns (hop-by-hop rules apply after rewrites whatever they say),
#: ``Host`` (``rewrite.host`` sets it), the handshake's own fields, and the
#: ``X-Forwarded-*`` fields ``proxy.trusted_proxies`` governs.
_PROXY_OWNED = HOP_BY_HOP | FORWARDED_HEADERS | {"content-length", "expect", "x-request-id", "host"}


def _header_name(text: str) -> str:
    if not _TOKEN.fullmatch(text):
        raise ValueError(f"invalid header name {text!r} (letters, digits and !#$%&'*+.^_`|~- only)")
    # Compared as a CGI-style backend reads it: a rewrite drops underscore
    # spellings too (wsproxy.rewrite), so "Content_Length" is Content-Length.
    lower = text.lower().replace("_", "-")
    if lower in _PROXY_OWNED or lower.startswith("sec-websocket-"):
        raise ValueError(
            f"header {text!r} cannot be set or removed by a rewrite (the proxy decides it"
            + (
                "; use rewrite.host)"
                if lower == "host"
                else "; see proxy.trusted_proxies)"
                if lower.startswith("x-forwarded-")
                else ")"
            )
        )
    return text


def _header_value(text: str) -> str:
    if any(ch in text for ch in "\r\n\x00") or any(
        ord(ch) > 0xFF or (ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F for ch in text
    ):
        raise ValueError(
            f"invalid header value {text!r} (no line breaks or control characters; "
            "Latin-1 text only)"
        )
    if text != text.strip(" \t"):
        raise ValueError(f"invalid header value {text!r} (no leading or trailing whitespace)")
    return text


def _server_name(text: str) -> str:
    """``tls.server_name``: the name sent as SNI and checked against the
    certificate (an IP address is checked, not sent)."""
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(text))
    checked = _hostname(text)
    if checked is None:
        raise ValueError(
            f"invalid server_name {text!r} (expected a host name such as 'api.internal')"
        )
    return checked


def _upstream_host(text: str) -> str:
    """``rewrite.host``: a host name or address, with an optional port."""
    hint = "expected HOST or HOST:PORT, e.g. 'app.internal' or 'app.internal:8443'"
    if text.startswith("["):
        try:
            Address.parse(text if "]:" in text else text + ":1", what="host")
        except ValueError:
            raise ValueError(f"invalid host {text!r} ({hint})") from None
        return text
    host, colon, port = text.partition(":")
    if _hostname(host) is None or (
        colon and (not port.isdigit() or not 1 <= int(port) <= 65535 or port != str(int(port)))
    ):
        raise ValueError(f"invalid host {text!r} ({hint})")
    return text.lower()


def _health_path(text: str) -> str:
    if not text.startswith("/") or any(not "!" <= ch <= "~" for ch in text):
        raise ValueError(
            f"invalid path {text!r} (expected an absolute path such as '/healthz', "
            "printable ASCII without spaces)"
        )
    return text


def _network(text: str) -> IPv4Network | IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(
            f"invalid trusted proxy {text!r} (expected an IP address or CIDR network, "
            "e.g. '10.0.0.0/8' or '::1')"
        ) from None
