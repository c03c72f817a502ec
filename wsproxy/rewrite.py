"""Per-route rewrites (``routes[].rewrite``): pure functions, no I/O.

Theory of operation
-------------------
A rewrite changes what one route sends upstream and what its clients get
back: the path without the route's prefix (``strip_prefix``), another
``Host`` (``host``), fields set or removed each way.  They apply *after*
the proxy's own header rules (wsproxy.headers), which decides two things:

* the hop-by-hop rules still hold: a rewrite cannot name ``Connection``,
  ``Upgrade``, ``Transfer-Encoding``, ``Content-Length``, ``Host``, the
  ``X-Forwarded-*`` fields or the handshake's ``Sec-WebSocket-*`` (the
  configuration refuses them), so it can neither break the framing nor the
  handshake, nor undo ``proxy.trusted_proxies``;
* a field a rewrite sets is the operator's, not the peer's: a client whose
  ``Connection`` header names it (``Connection: close, X-Internal-Auth``,
  the classic trick to make a proxy strip a header it adds) loses its own
  copy to the hop-by-hop rule and the rewrite's value still goes upstream.

``set`` replaces every field of that name (case-insensitive); ``remove``
drops them.  Response rewrites apply to what the upstream answered (``101``
included), not to the proxy's own error pages.

The path is stripped from the normalized target (wsproxy.target), the same
one the route matched.  A target whose normalized path does not literally
begin with the prefix matched only through the lenient reading routing uses
(``//api/x``, ``/api%2Fx``): it is refused with ``400`` rather than forwarded
unstripped to a backend that expects stripped paths.
"""

from __future__ import annotations

from collections.abc import Sequence

from wsproxy.config import HeaderEdits, Rewrite

HeaderList = list[tuple[str, str]]
RawFields = list[tuple[bytes, bytes]]


def strip_prefix(prefix: str, origin_form: str) -> str | None:
    """``origin_form`` without the route's ``prefix`` (``/api/users?x`` ->
    ``/users?x``); None when its path does not begin with the prefix's
    whole segments."""
    path, sep, query = origin_form.partition("?")
    stem = prefix.rstrip("/")
    if not path.startswith(stem):
        return None
    rest = path[len(stem) :]
    if not rest:
        rest = "/"
    elif not rest.startswith("/"):
        return None  # "/apix", or "/api;param": not under the prefix's segments
    return rest + sep + query


def request_headers(headers: Sequence[tuple[str, str]], rewrite: Rewrite) -> HeaderList:
    """The upstream request's fields (already through the proxy's rules) with
    the route's ``host`` and ``request_headers`` applied."""
    edits = rewrite.request_headers
    drop = {name.replace("_", "-") for name in edits.names}
    result: HeaderList = []
    for name, value in headers:
        lower = name.lower()
        # With proxy.allow_underscore_headers, "X_User" reaches CGI, PHP or
        # WSGI as the same variable as the "X-User" set here: dropped too.
        if (lower.replace("_", "-") if "_" in lower else lower) in drop:
            continue
        if lower == "host" and rewrite.host is not None:
            value = rewrite.host
        result.append((name, value))
    result.extend(edits.set)
    return result


def response_headers(headers: Sequence[tuple[str, str]], edits: HeaderEdits) -> HeaderList:
    """A response's fields (already through the proxy's rules) with ``edits``."""
    drop = edits.names
    return [(n, v) for n, v in headers if n.lower() not in drop] + list(edits.set)


class RawResponseEdits:
    """``response_headers`` for the plain-HTTP path, which keeps the upstream's
    fields as bytes (wsproxy.headers.client_response_fields): the names to
    drop before, and the encoded lines to append after."""

    __slots__ = ("drop", "edits", "lines")

    def __init__(self, edits: HeaderEdits) -> None:
        self.edits = edits
        self.drop = frozenset(name.encode("latin-1") for name in edits.names)
        self.lines = b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in edits.set)

    def without(self, fields: RawFields) -> RawFields | None:
        """``fields`` minus the dropped names; None when nothing was dropped."""
        drop = self.drop
        if not any(name.lower() in drop for name, _ in fields):
            return None
        return [field for field in fields if field[0].lower() not in drop]
