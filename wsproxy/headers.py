"""Header rewriting for both directions of the proxy: pure functions, no I/O.

Theory of operation
-------------------
A proxy is two HTTP connections glued together, so every header that describes
*one connection* must stop at the proxy (RFC 9110 §7.6.1):

    "Intermediaries MUST parse a received Connection header field before a
    message is forwarded and, for each connection-option in this field, remove
    any header or trailer field(s) from the message with the same name as the
    connection-option, and then remove the Connection header field itself (or
    replace it with the intermediary's own control options for the forwarded
    message)."

That is the root of the outage in docs/design.md: nginx forwarded `Upgrade` and
`Connection` (by configuration) but spoke HTTP/1.0, so a Swoole backend applied
HTTP/1.0 keep-alive rules and closed right after `101`.  Here the upstream
request is always HTTP/1.1 (the caller's job) and this module decides the
headers: hop-by-hop fields are dropped, and an upgrade gets exactly
`Upgrade: <client's value>` and `Connection: upgrade`.

Headers are handled as ordered lists of ``(name, value)`` string pairs, so
repeated fields (``Set-Cookie``) and their order survive untouched.
"""

from __future__ import annotations

import binascii
import hashlib
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

HeaderList = list[tuple[str, str]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: RFC 9110 §7.6.1 lists Connection, Proxy-Connection, Keep-Alive, TE,
#: Transfer-Encoding and Upgrade; ``Trailer`` is connection-specific as well
#: (RFC 9110 §6.6.2, it announces trailers of this message's framing).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

#: Set by this hop from what it saw; values sent by an untrusted client are lies.
FORWARDED_HEADERS = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"})

#: Request headers this hop sets itself, or drops: ``Expect`` goes upstream
#: only from an HTTP/1.1 client (``forward_expect``), so the upstream's ``100``
#: or refusal is the client's answer; an HTTP/1.0 client's is ignored (RFC 9110
#: §10.1.1).
_REPLACED_BY_PROXY = FORWARDED_HEADERS | {"expect", "x-request-id"}

WEBSOCKET_VERSION = "13"
_WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3

#: Headers this hop sets or removes whose underscore spellings CGI-style
#: backends would read as the real thing (``X_Forwarded_For`` becomes
#: ``HTTP_X_FORWARDED_FOR``); always dropped, underscores allowed or not.
_SPOOFABLE = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"}
) | frozenset(name for name in HOP_BY_HOP if "-" in name)

#: A client's X-Request-ID is kept only if it looks like an ID: printable,
#: no spaces or quotes, at most 128 characters (what Heroku and nginx's
#: $request_id users send); anything else could inject into logs.  Its
#: characters need no escaping in JSON: the access log writes an ID as it is.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:+/=@-]{1,128}")


def split_tokens(values: Sequence[str]) -> list[str]:
    """Comma-separated tokens across every instance of a list-valued header.

    RFC 9110 §5.3: a field sent several times is one comma-joined list.  Tokens
    are compared case-insensitively, so they come back lower-cased.
    """
    if len(values) == 1 and "," not in values[0]:
        # One field with one token (a browser's Upgrade and Connection, a
        # 101's): the loop below, without its set-up.  A handshake asks
        # seven times.
        token = values[0].strip().lower()
        return [token] if token else []
    tokens = []
    for value in values:
        for item in value.split(","):
            token = item.strip().lower()
            if token:
                tokens.append(token)
    return tokens


def header_values(headers: Sequence[tuple[str, str]], name: str) -> list[str]:
    lname = name.lower()
    return [value for key, value in headers if key.lower() == lname]


#: Field values by lower-cased name, in order (front.Request.index, header_index).
HeaderIndex = Mapping[str, Sequence[str]]


def header_index(headers: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """Every field's values by lower-cased name: one pass, where a handshake
    asks for half a dozen fields (each header_values call lower-cases every
    name again)."""
    index: dict[str, list[str]] = {}
    for name, value in headers:
        lower = name.lower()
        values = index.get(lower)
        if values is None:
            index[lower] = [value]
        else:
            values.append(value)
    return index


def connection_options(
    headers: Sequence[tuple[str, str]], index: HeaderIndex | None = None
) -> frozenset[str]:
    """The names that ``Connection`` declares hop-by-hop (lower-cased)."""
    values = (
        index.get("connection", ()) if index is not None else header_values(headers, "connection")
    )
    return frozenset(split_tokens(values))


def strip_hop_by_hop(headers: Sequence[tuple[str, str]]) -> HeaderList:
    """Drop the fixed hop-by-hop set plus every field ``Connection`` names."""
    drop = HOP_BY_HOP | connection_options(headers)
    return [(name, value) for name, value in headers if name.lower() not in drop]


# --- WebSocket handshake -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a request cannot be forwarded, as the HTTP answer the client gets."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


#: What a reverse proxy forwards; CONNECT asks for a tunnel to an arbitrary
#: host, which is a forward proxy's job (``405``, RFC 9110 §15.5.6).
ALLOWED_METHODS = "GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH"

#: A host name (letters, digits, "-", "." and "_": what DNS, /etc/hosts and
#: container names use) or an IP literal in brackets, then an optional port
#: (RFC 9110 §7.2).  RFC 3986's reg-name also admits percent-escapes and
#: sub-delimiters (",", ";", "!", ...); no real host has them, and a backend
#: may read "a.example,b.example" as a list, so they are refused.
_HOST_VALUE = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]*)(?::(?P<port>[0-9]{1,5}))?")


def check_request(method: str, version: tuple[int, int], hosts: Sequence[str]) -> Rejection | None:
    """What every request must satisfy before routing; None when it does.

    ``hosts`` are the values of every ``Host`` header the request carried.

    * HTTP/1.x only: another major version is ``505`` (RFC 9110 §15.6.6).
    * ``CONNECT`` is ``405`` with ``Allow``.
    * ``Host`` (RFC 9112 §3.2): exactly one on HTTP/1.1 (at most one on
      HTTP/1.0), and a valid ``host[:port]``: it picks the route, becomes
      ``X-Forwarded-Host`` and, on many backends, a file system path, so a
      value like ``a/b``, ``a b`` or ``..`` is a ``400`` (nginx refuses ``..``
      the same way).
    """
    if version[0] != 1:
        return Rejection(505, f"HTTP/{version[0]}.{version[1]} is not supported (HTTP/1.1 is)")
    if method == "CONNECT":
        return Rejection(
            405, "CONNECT is not supported by a reverse proxy", (("Allow", ALLOWED_METHODS),)
        )
    if len(hosts) > 1:
        return Rejection(400, "more than one Host header")
    if not hosts:
        if version >= (1, 1):
            return Rejection(400, "HTTP/1.1 request without a Host header")
        return None
    if not _valid_host(hosts[0].strip()):
        return Rejection(400, "invalid Host header (expected host or host:port)")
    return None


def _valid_host(value: str) -> bool:
    match = _HOST_VALUE.fullmatch(value)
    if match is None or ".." in match["host"]:
        return False
    port = match["port"]
    if port is not None and (not match["host"] or int(port) > 65535):
        return False
    if match["host"].startswith("["):
        try:
            ipaddress.IPv6Address(match["host"][1:-1])
        except ValueError:
            return False
    return True


def wants_websocket(headers: Sequence[tuple[str, str]], index: HeaderIndex | None = None) -> bool:
    """Whether the client asks to upgrade to WebSocket (``Upgrade`` names it).

    Only the ``Upgrade`` header decides: a request that names ``websocket``
    there is a handshake attempt and is either forwarded as one or rejected
    with a reason; any other ``Upgrade`` (``h2c``) is dropped as hop-by-hop and
    the request is forwarded as plain HTTP, as nginx does by default.
    """
    values = index.get("upgrade", ()) if index is not None else header_values(headers, "upgrade")
    return "websocket" in split_tokens(values)


def check_websocket_handshake(
    method: str,
    headers: Sequence[tuple[str, str]],
    *,
    has_body: bool,
    index: HeaderIndex | None = None,
) -> Rejection | None:
    """RFC 6455 §4.2.1 validation of an opening handshake; None when valid.

    The proxy checks what it can check without the backend, so that a broken
    client gets a precise 400/426 instead of a confused backend.
    ``index`` is ``headers`` by lower-case name when the caller has it.
    """
    if method != "GET":
        return Rejection(400, f"WebSocket handshake must use GET, not {method}")
    if index is None:
        index = header_index(headers)
    if split_tokens(index.get("upgrade", ())) != ["websocket"]:
        # aiohttp's parser switches to the upgraded protocol only for exactly
        # "websocket"; with more tokens, bytes sent right behind the handshake
        # would be parsed as HTTP and lost.  Browsers send "websocket" alone.
        return Rejection(400, "WebSocket handshake needs 'Upgrade: websocket' alone")
    if "upgrade" not in split_tokens(index.get("connection", ())):
        return Rejection(400, "WebSocket handshake needs 'upgrade' in Connection")
    if has_body:
        return Rejection(400, "WebSocket handshake must not have a body")
    versions = index.get("sec-websocket-version", ())
    if not versions:
        return Rejection(400, "WebSocket handshake lacks Sec-WebSocket-Version")
    # §4.1: a client sends exactly one version; a list (repeated or
    # comma-separated, RFC 9110 §5.3) is a malformed request, not a version.
    if len(versions) > 1 or "," in versions[0]:
        return Rejection(400, "WebSocket handshake needs exactly one Sec-WebSocket-Version")
    # §4.2.2: an unsupported version gets 426 and the versions we do speak.
    if versions[0].strip() != WEBSOCKET_VERSION:
        return Rejection(
            426,
            "unsupported Sec-WebSocket-Version (only 13)",
            (("Sec-WebSocket-Version", WEBSOCKET_VERSION),),
        )
    keys = index.get("sec-websocket-key", ())
    if len(keys) != 1 or not _is_websocket_key(keys[0]):
        return Rejection(400, "WebSocket handshake needs one valid Sec-WebSocket-Key")
    return None


def _is_websocket_key(value: str) -> bool:
    # §4.1: "a base64-encoded value that, when decoded, is 16 bytes in length".
    # (base64.b64decode(..., validate=True) without its Python wrapper.)
    try:
        return len(binascii.a2b_base64(value.strip().encode("ascii"), strict_mode=True)) == 16
    except (binascii.Error, UnicodeEncodeError):
        return False


# --- Requests to the upstream ------------------------------------------------


def choose_request_id(sent: Sequence[str], new_id: str) -> str:
    """The client's ``X-Request-ID`` (``sent``: every value it sent) if it sent
    exactly one well-formed one."""
    if len(sent) == 1 and REQUEST_ID.fullmatch(sent[0].strip()):
        return sent[0].strip()
    return new_id


@dataclass(slots=True)
class ClientInfo:
    """What this hop knows about the connection a request arrived on.

    Made for every client connection and never changed after; not
    ``frozen``, whose ``__init__`` sets each field through
    ``object.__setattr__`` (sessions.SessionInfo says what that costs).
    """

    peer_ip: str | None
    scheme: str  # "http" or "https": the scheme the client used to reach us
    trusted_proxies: tuple[Network, ...] = ()

    def peer_is_trusted(self) -> bool:
        if self.peer_ip is None or not self.trusted_proxies:
            return False
        try:
            address = ipaddress.ip_address(self.peer_ip)
        except ValueError:
            return False
        return any(address in network for network in self.trusted_proxies)


def _index(headers: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """Values by lower-cased name, in order: one pass instead of one per lookup."""
    index: dict[str, list[str]] = {}
    for name, value in headers:
        index.setdefault(name.lower(), []).append(value)
    return index


def forwarded_headers(headers: Sequence[tuple[str, str]], client: ClientInfo) -> HeaderList:
    """``X-Forwarded-For``/``-Proto``/``-Host`` for the upstream request.

    Only a peer listed in ``proxy.trusted_proxies`` may extend an existing
    chain; from anyone else the incoming values are replaced, so a client
    cannot forge its address (the rule uvicorn's proxy_headers and nginx's
    realip module follow).
    """
    return _forwarded(_index(headers), client)


def _forwarded(index: dict[str, list[str]], client: ClientInfo) -> HeaderList:
    trusted = client.peer_is_trusted()
    peer = client.peer_ip or "unknown"
    forwarded_for = peer
    proto = client.scheme
    if trusted:
        incoming_for = ", ".join(index.get("x-forwarded-for", ())).strip()
        if incoming_for:
            forwarded_for = f"{incoming_for}, {peer}"
        if incoming_proto := index.get("x-forwarded-proto"):
            proto = incoming_proto[0].strip()
    result: HeaderList = [("X-Forwarded-For", forwarded_for), ("X-Forwarded-Proto", proto)]
    incoming_host = index.get("x-forwarded-host") if trusted else None
    hosts = index.get("host")
    if incoming_host:
        result.append(("X-Forwarded-Host", incoming_host[0].strip()))
    elif hosts:
        result.append(("X-Forwarded-Host", hosts[0].strip()))
    return result


def upstream_request_headers(
    headers: Sequence[tuple[str, str]],
    client: ClientInfo,
    *,
    default_host: str,
    request_id: str,
    websocket_upgrade: str | None = None,
    allow_underscores: bool = False,
    dropped: list[str] | None = None,
    forward_expect: bool = False,
    index: dict[str, list[str]] | None = None,
) -> HeaderList:
    """Headers for the HTTP/1.1 request the upstream receives.

    ``Host`` is the client's (virtual hosting keeps working); an HTTP/1.0
    client may omit it, and HTTP/1.1 requires one, so ``default_host`` (the
    upstream server's address) fills in.
    ``websocket_upgrade`` is the client's ``Upgrade`` value for a handshake.
    ``request_id`` (see :func:`choose_request_id`) goes in ``X-Request-ID``,
    so the backend's logs and ours name the same request.

    Names with an underscore are dropped unless ``allow_underscores``
    (nginx's ``underscores_in_headers off``): CGI, PHP, WSGI and Swoole map
    ``X_Forwarded_For`` and ``X-Forwarded-For`` to the same variable, so a
    client could otherwise smuggle a value in beside the proxy's own.  Even
    when allowed, the underscore spellings of the headers this hop sets or
    removes are dropped.  Names dropped for an underscore are appended to
    ``dropped`` (for a debug log line).  ``index`` is ``headers`` by
    lower-case name when the caller has it already.
    """
    if index is None:
        index = _index(headers)
    hop_by_hop = HOP_BY_HOP | frozenset(split_tokens(index.get("connection", ())))
    drop = hop_by_hop | (_REPLACED_BY_PROXY - {"expect"} if forward_expect else _REPLACED_BY_PROXY)
    kept: HeaderList = []
    for name, value in headers:
        lower = name.lower()
        if lower in drop:
            continue
        if "_" in name and (not allow_underscores or lower.replace("_", "-") in _SPOOFABLE):
            if dropped is not None:
                dropped.append(name)
            continue
        kept.append((name, value))
    if "host" not in index or "host" in hop_by_hop:
        kept.insert(0, ("Host", default_host))
    kept.extend(_forwarded(index, client))
    kept.append(("X-Request-ID", request_id))
    if websocket_upgrade is not None:
        kept.append(("Upgrade", websocket_upgrade))
        kept.append(("Connection", "upgrade"))
    return kept


#: Request fields that make the upstream request more than the client's
#: fields plus this hop's own: hop-by-hop, set or dropped by this hop.
_TOUCHED = HOP_BY_HOP | _REPLACED_BY_PROXY


def untouched(index: dict[str, list[str]]) -> bool:
    """Whether :func:`upstream_request_headers` would keep every field of a
    request as it is and only append this hop's (``index``: the fields by
    lower-case name): a ``Host``, no field in :data:`_TOUCHED`, no ``_`` in a
    name.  Then the upstream head is the client's fields,
    :func:`forwarded_for_proto`, :func:`forwarded_host_field` and
    ``X-Request-ID``, in that order, with no list built in between."""
    return "host" in index and index.keys().isdisjoint(_TOUCHED) and "_" not in "".join(index)


#: The fields a WebSocket handshake's upstream request replaces (with
#: ``Upgrade: <the client's value>`` and ``Connection: upgrade``).
_UPGRADE_FIELDS = frozenset({"connection", "upgrade"})
#: Their names' lengths: a name of another length needs no ``lower()``.
_UPGRADE_LENGTHS = frozenset(len(name) for name in _UPGRADE_FIELDS)


def untouched_upgrade(index: dict[str, list[str]]) -> bool:
    """:func:`untouched` for a WebSocket handshake: whether
    :func:`upstream_request_headers` (with ``websocket_upgrade``) would keep
    every field but ``Connection`` and ``Upgrade`` as it is and only append
    this hop's.  ``Connection`` may name only hop-by-hop fields (a browser's
    ``Upgrade``, Firefox's ``keep-alive, Upgrade``), which are dropped
    anyway.  Then the upstream head is :func:`without_upgrade_fields`, then
    :func:`forwarded_for_proto`, :func:`forwarded_host_field`,
    ``X-Request-ID``, ``Upgrade`` and ``Connection``, in that order."""
    return (
        "host" in index
        and _TOUCHED.intersection(index) <= _UPGRADE_FIELDS
        and "_" not in "".join(index)
        and HOP_BY_HOP.issuperset(split_tokens(index.get("connection", ())))
    )


def without_upgrade_fields(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` without ``Connection`` and ``Upgrade`` (case and order kept)."""
    return [
        field
        for field in headers
        if len(field[0]) not in _UPGRADE_LENGTHS or field[0].lower() not in _UPGRADE_FIELDS
    ]


def client_address(client: ClientInfo, forwarded_for: Sequence[str]) -> str | None:
    """The address of the client a request came from, as far as it can be trusted.

    The peer's own address, unless the peer is a trusted proxy: then the
    ``X-Forwarded-For`` chain is read from the right, past every trusted
    proxy, and the first address not trusted is the client (what nginx's
    realip module does with ``real_ip_recursive on``).  A chain of trusted
    proxies only gives its leftmost address; an entry that is not an address
    ends the walk there (it cannot be trusted to say more).
    """
    if not client.peer_is_trusted():
        return client.peer_ip
    entries = [e.strip() for value in forwarded_for for e in value.split(",") if e.strip()]
    address = client.peer_ip
    for entry in reversed(entries):
        try:
            ip = ipaddress.ip_address(entry)
        except ValueError:
            return address
        address = str(ip)
        if not any(ip in network for network in client.trusted_proxies):
            return address
    return address


def forwarded_for_proto(client: ClientInfo) -> str:
    """The ``X-Forwarded-For`` and ``-Proto`` lines for a request that sent
    neither (the same for every such request on a connection)."""
    return (
        f"X-Forwarded-For: {client.peer_ip or 'unknown'}\r\nX-Forwarded-Proto: {client.scheme}\r\n"
    )


def forwarded_host_field(hosts: Sequence[str]) -> str:
    """The ``X-Forwarded-Host`` line for a request that sent none ("" without Host)."""
    return f"X-Forwarded-Host: {hosts[0].strip()}\r\n" if hosts else ""


_HOP_BY_HOP_RAW = frozenset(name.encode("ascii") for name in HOP_BY_HOP)
_CONTENT_LENGTH_RAW = frozenset({b"content-length"})

#: Response fields the proxy looks at (framing) or drops (hop-by-hop), lower-case.
NOTABLE_RESPONSE_FIELDS = _HOP_BY_HOP_RAW | _CONTENT_LENGTH_RAW
#: Their names' lengths: a name of another length needs no ``lower()``.
NOTABLE_LENGTHS = frozenset(len(name) for name in NOTABLE_RESPONSE_FIELDS)
#: One notable field: its position among the fields, its lower-case name, its value.
NotableField = tuple[int, bytes, bytes]


def notable_fields(headers: Sequence[tuple[bytes, bytes]]) -> list[NotableField]:
    """The framing and hop-by-hop fields of a response (what the upstream
    connection collects as it parses)."""
    notable = []
    for position, (name, value) in enumerate(headers):
        lower = name.lower()
        if lower in NOTABLE_RESPONSE_FIELDS:
            notable.append((position, lower, value))
    return notable


def client_response_fields(
    headers: Sequence[tuple[bytes, bytes]],
    notable: Sequence[NotableField] | None = None,
    *,
    drop_length: bool = False,
) -> bytes:
    """:func:`strip_hop_by_hop` on the upstream's raw response fields, encoded for
    the response head (``Name: value\r\n`` each, case and order kept).

    The plain-HTTP path relays bytes as they came: decoding every field to
    text and back cost more than the rest of the rewriting.  ``notable`` is
    :func:`notable_fields` of ``headers`` when the caller has it (then no
    other field's name is looked at).  ``drop_length`` also drops
    ``Content-Length`` (a ``204`` must not carry one).
    """
    if notable is None:
        notable = notable_fields(headers)
    kept = list(headers)
    if notable:
        drop = NOTABLE_RESPONSE_FIELDS if drop_length else _HOP_BY_HOP_RAW
        dropped: list[int] = []
        named: list[bytes] = []
        for position, lower, value in notable:
            if lower in drop:
                dropped.append(position)
                if lower == b"connection" and value.lower() not in _PLAIN_CONNECTION_TOKENS:
                    named.append(value)
        if named:
            # Fields the Connection header names are hop-by-hop too (RFC 9110
            # §7.6.1); "close" and "keep-alive" (already dropped) name nothing else.
            tokens = {token.strip().lower() for value in named for token in value.split(b",")}
            tokens -= _PLAIN_CONNECTION_TOKENS
            if tokens:
                drop = drop | tokens
                kept = [field for field in headers if field[0].lower() not in drop]
                dropped = []
        for position in reversed(dropped):
            del kept[position]
    if not kept:
        return b""
    # Joined in two passes: about a third faster than formatting each line.
    return b"\r\n".join(map(b": ".join, kept)) + b"\r\n"


_PLAIN_CONNECTION_TOKENS = frozenset({b"", b"close", b"keep-alive"})


#: RFC 9110 §6.4.1: a 101 has no content, so no framing header may describe one.
_NO_CONTENT_FRAMING = frozenset({"content-length", "transfer-encoding"})
#: What an upstream 101 always loses: hop-by-hop fields but the switch's own,
#: and content framing (switching_protocols_headers).
_NOT_IN_101 = (HOP_BY_HOP - {"upgrade", "connection"}) | _NO_CONTENT_FRAMING
_UPGRADE_TOKEN = frozenset({"upgrade"})


def switching_protocols_headers(
    headers: Sequence[tuple[str, str]], index: HeaderIndex | None = None
) -> HeaderList:
    """The headers of an upstream ``101`` as the client gets them.

    ``Upgrade`` and ``Connection`` describe the switch itself, so they pass
    with the upstream's own values, in the upstream's order, as every other
    end-to-end header does.  Other hop-by-hop fields (and any field
    ``Connection`` names, except ``Upgrade``) are dropped, and so are
    ``Content-Length`` and ``Transfer-Encoding``: a ``101`` carrying them
    breaks clients (aiohttp#3798).
    """
    if index is None:
        index = header_index(headers)
    named = connection_options(headers, index) - _UPGRADE_TOKEN
    drop = _NOT_IN_101 | named if named else _NOT_IN_101
    if drop.isdisjoint(index):
        # Nothing to drop (a 101's usual Upgrade, Connection: upgrade and
        # Sec-WebSocket-*): the index holds every field's lower-cased name,
        # so no name needs lower-casing again.
        return list(headers)
    return [(name, value) for name, value in headers if name.lower() not in drop]


def websocket_accept(key: str) -> str:
    """RFC 6455 §4.2.2: base64(SHA-1(key + GUID)), what a 101 must carry."""
    digest = hashlib.sha1((key.strip() + _WEBSOCKET_GUID).encode("ascii")).digest()
    return binascii.b2a_base64(digest, newline=False).decode("ascii")  # base64.b64encode


def check_switching_protocols(
    headers: Sequence[tuple[str, str]], key: str, index: HeaderIndex | None = None
) -> str | None:
    """Why an upstream ``101`` is not a WebSocket handshake response; None if it is.

    RFC 6455 §4.1: the client must fail the connection unless the response
    has ``Upgrade: websocket``, ``upgrade`` among the ``Connection`` tokens,
    and the ``Sec-WebSocket-Accept`` that matches its key.  A proxy that
    relays anything else lets a browser fail in its own words while the
    proxy reports success; wsproxy answers ``502`` instead.  ``index`` is
    ``headers`` by lower-case name when the caller has it.
    """
    if index is None:
        index = header_index(headers)
    if split_tokens(index.get("upgrade", ())) != ["websocket"]:
        return "101 without 'Upgrade: websocket'"
    if "upgrade" not in split_tokens(index.get("connection", ())):
        return "101 without 'upgrade' in Connection"
    accepts = index.get("sec-websocket-accept", ())
    if len(accepts) != 1 or accepts[0].strip() != websocket_accept(key):
        return "101 without the Sec-WebSocket-Accept that matches the request's key"
    return None
