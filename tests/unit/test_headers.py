"""Pure header logic: hop-by-hop removal, handshake validation, forwarded headers."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsproxy.forward import upstream_head_fast
from wsproxy.headers import (
    ALLOWED_METHODS,
    NOTABLE_RESPONSE_FIELDS,
    REQUEST_ID,
    ClientInfo,
    check_request,
    check_switching_protocols,
    check_websocket_handshake,
    choose_request_id,
    client_response_fields,
    connection_options,
    forwarded_for_proto,
    forwarded_host_field,
    header_index,
    notable_fields,
    split_tokens,
    strip_hop_by_hop,
    switching_protocols_headers,
    untouched,
    untouched_upgrade,
    upstream_request_headers,
    wants_websocket,
    websocket_accept,
    without_upgrade_fields,
)
from wsproxy.http.wire import request_head

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
HANDSHAKE = [
    ("Host", "example.test"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", KEY),
    ("Sec-WebSocket-Version", "13"),
]
CLIENT = ClientInfo(peer_ip="192.0.2.7", scheme="http")


def names(headers: list[tuple[str, str]]) -> list[str]:
    return [name.lower() for name, _ in headers]


def test_connection_options_are_case_insensitive_across_repeated_fields() -> None:
    headers = [("Connection", "Keep-Alive, X-Foo"), ("connection", " UPGRADE ")]
    assert connection_options(headers) == {"keep-alive", "x-foo", "upgrade"}


def test_strip_hop_by_hop_drops_fixed_set_and_named_fields_keeping_order() -> None:
    headers = [
        ("Connection", "close, X-Secret"),
        ("X-Secret", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"),
        ("Set-Cookie", "a=1"),
        ("X-Custom", "kept"),
        ("Set-Cookie", "b=2"),
    ]
    assert strip_hop_by_hop(headers) == [
        ("Set-Cookie", "a=1"),
        ("X-Custom", "kept"),
        ("Set-Cookie", "b=2"),
    ]


@pytest.mark.parametrize(
    ("upgrade", "expected"),
    [("websocket", True), ("WebSocket", True), ("h2c, websocket", True), ("h2c", False)],
)
def test_wants_websocket_reads_the_upgrade_token_list(upgrade: str, expected: bool) -> None:
    assert wants_websocket([("Upgrade", upgrade)]) is expected


def test_no_upgrade_header_is_not_a_websocket_request() -> None:
    assert not wants_websocket([("Connection", "upgrade")])


def test_valid_handshake_passes() -> None:
    assert check_websocket_handshake("GET", HANDSHAKE, has_body=False) is None


def test_firefox_connection_list_passes() -> None:
    headers = [(n, "keep-alive, Upgrade" if n == "Connection" else v) for n, v in HANDSHAKE]
    assert check_websocket_handshake("GET", headers, has_body=False) is None


def replace(name: str, value: str | None) -> list[tuple[str, str]]:
    kept = [(n, v) for n, v in HANDSHAKE if n != name]
    return kept if value is None else [*kept, (name, value)]


@pytest.mark.parametrize(
    ("headers", "method", "status"),
    [
        (replace("Sec-WebSocket-Version", "8"), "GET", 426),
        (replace("Sec-WebSocket-Version", "abc"), "GET", 426),
        # A client sends exactly one version; a list is malformed, not unsupported.
        (replace("Sec-WebSocket-Version", "13, 8"), "GET", 400),
        ([*HANDSHAKE, ("Sec-WebSocket-Version", "13")], "GET", 400),
        ([*HANDSHAKE, ("sec-websocket-version", "8")], "GET", 400),
        (replace("Sec-WebSocket-Version", None), "GET", 400),
        (replace("Sec-WebSocket-Key", None), "GET", 400),
        (replace("Sec-WebSocket-Key", "not base64!"), "GET", 400),
        (replace("Sec-WebSocket-Key", "c2hvcnQ="), "GET", 400),  # 5 bytes, not 16
        (replace("Connection", "keep-alive"), "GET", 400),
        (HANDSHAKE, "POST", 400),
        ([*HANDSHAKE, ("Sec-WebSocket-Key", KEY)], "GET", 400),  # two keys
        (replace("Upgrade", "websocket, foo"), "GET", 400),  # aiohttp would not switch
    ],
)
def test_bad_handshakes_get_precise_statuses(
    headers: list[tuple[str, str]], method: str, status: int
) -> None:
    rejection = check_websocket_handshake(method, headers, has_body=False)
    assert rejection is not None
    assert rejection.status == status


def test_426_names_the_supported_version() -> None:
    rejection = check_websocket_handshake(
        "GET", replace("Sec-WebSocket-Version", "8"), has_body=False
    )
    assert rejection is not None
    assert rejection.headers == (("Sec-WebSocket-Version", "13"),)


def test_handshake_with_body_is_rejected() -> None:
    rejection = check_websocket_handshake("GET", HANDSHAKE, has_body=True)
    assert rejection is not None
    assert rejection.status == 400


def test_upgrade_request_gets_exactly_upgrade_and_connection_upgrade() -> None:
    incoming = [*HANDSHAKE, ("Connection", "keep-alive"), ("Keep-Alive", "300")]
    out = upstream_request_headers(
        incoming, CLIENT, default_host="10.0.0.1:80", request_id="r1", websocket_upgrade="websocket"
    )
    assert [v for n, v in out if n.lower() == "connection"] == ["upgrade"]
    assert [v for n, v in out if n.lower() == "upgrade"] == ["websocket"]
    assert "keep-alive" not in names(out)
    assert ("Sec-WebSocket-Key", KEY) in out
    assert ("Host", "example.test") in out


def test_plain_request_has_no_connection_header_and_host_is_filled_in() -> None:
    out = upstream_request_headers(
        [("Connection", "keep-alive"), ("Accept", "*/*")],
        CLIENT,
        default_host="10.0.0.1:80",
        request_id="r1",
    )
    assert "connection" not in names(out)
    assert out[0] == ("Host", "10.0.0.1:80")
    assert ("Accept", "*/*") in out


def test_expect_is_not_forwarded() -> None:
    out = upstream_request_headers(
        [("Host", "h"), ("Expect", "100-continue")], CLIENT, default_host="x", request_id="r1"
    )
    assert "expect" not in names(out)


def test_untrusted_client_cannot_forge_forwarded_headers() -> None:
    incoming = [
        ("Host", "public.test"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.test"),
    ]
    out = dict(upstream_request_headers(incoming, CLIENT, default_host="x", request_id="r1"))
    assert out["X-Forwarded-For"] == "192.0.2.7"
    assert out["X-Forwarded-Proto"] == "http"
    assert out["X-Forwarded-Host"] == "public.test"


def test_trusted_proxy_extends_the_chain() -> None:
    trusted = ClientInfo(
        peer_ip="10.1.2.3",
        scheme="http",
        trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),),
    )
    incoming = [
        ("Host", "h"),
        ("X-Forwarded-For", "203.0.113.5"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "public.test"),
    ]
    out = dict(upstream_request_headers(incoming, trusted, default_host="x", request_id="r1"))
    assert out["X-Forwarded-For"] == "203.0.113.5, 10.1.2.3"
    assert out["X-Forwarded-Proto"] == "https"
    assert out["X-Forwarded-Host"] == "public.test"


def test_101_keeps_the_upstreams_upgrade_and_connection_in_place() -> None:
    upstream = [
        ("upgrade", "WebSocket"),
        ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ("CONNECTION", "keep-alive, Upgrade, X-Hop"),
        ("X-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Content-Length", "0"),
        ("Transfer-Encoding", "chunked"),
        ("Sec-WebSocket-Extensions", "permessage-deflate"),
    ]
    assert switching_protocols_headers(upstream) == [
        ("upgrade", "WebSocket"),
        ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ("CONNECTION", "keep-alive, Upgrade, X-Hop"),
        ("Sec-WebSocket-Extensions", "permessage-deflate"),
    ]


def _tokens_the_long_way(values: list[str]) -> list[str]:
    return [t for value in values for item in value.split(",") if (t := item.strip().lower())]


@pytest.mark.parametrize(
    "values",
    [
        [],
        ["Upgrade"],
        [" WebSocket "],
        [""],
        ["  "],
        ["a,b"],
        ["keep-alive, Upgrade"],
        [",", ""],
        ["Upgrade", "x"],
        ["a", ""],
        [" ,Upgrade"],
    ],
)
def test_split_tokens_one_field_shortcut_equals_the_loop(values: list[str]) -> None:
    assert split_tokens(values) == _tokens_the_long_way(values)


GOOD_101_FIELDS = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
]


def _101_the_long_way(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    named = connection_options(headers) - {"upgrade"}
    drop = (
        {"keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding"}
        | named
        | {"content-length"}
    )
    return [(name, value) for name, value in headers if name.lower() not in drop]


@pytest.mark.parametrize(
    "headers",
    [
        GOOD_101_FIELDS,
        [*GOOD_101_FIELDS, ("Content-Length", "0")],
        [*GOOD_101_FIELDS, ("X-Hop", "1"), ("connection", "x-hop")],
        [("UPGRADE", "websocket"), ("Connection", "upgrade, X-Other"), ("X-Kept", "1")],
        [*GOOD_101_FIELDS, ("TE", "trailers"), ("Server", "test")],
    ],
)
def test_101_with_nothing_to_drop_takes_the_short_way_to_the_same_fields(
    headers: list[tuple[str, str]],
) -> None:
    expected = _101_the_long_way(headers)
    assert switching_protocols_headers(headers) == expected
    assert switching_protocols_headers(headers, header_index(headers)) == expected


RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's example
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
GOOD_101 = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Accept", RFC_ACCEPT),
]


def test_websocket_accept_matches_rfc_6455_example() -> None:
    assert websocket_accept(RFC_KEY) == RFC_ACCEPT
    assert check_switching_protocols(GOOD_101, RFC_KEY) is None


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ([h for h in GOOD_101 if h[0] != "Upgrade"], "Upgrade: websocket"),
        ([("Upgrade", "h2c"), *GOOD_101[1:]], "Upgrade: websocket"),
        ([("Upgrade", "websocket, h2c"), *GOOD_101[1:]], "Upgrade: websocket"),
        ([h for h in GOOD_101 if h[0] != "Connection"], "Connection"),
        ([("Connection", "keep-alive"), GOOD_101[0], GOOD_101[2]], "Connection"),
        ([h for h in GOOD_101 if h[0] != "Sec-WebSocket-Accept"], "Sec-WebSocket-Accept"),
        ([*GOOD_101[:2], ("Sec-WebSocket-Accept", "x")], "Sec-WebSocket-Accept"),
        ([*GOOD_101, ("Sec-WebSocket-Accept", RFC_ACCEPT)], "Sec-WebSocket-Accept"),
    ],
)
def test_a_101_that_is_not_a_websocket_answer_is_refused(
    headers: list[tuple[str, str]], problem: str
) -> None:
    reason = check_switching_protocols(headers, RFC_KEY)
    assert reason is not None
    assert problem in reason


@pytest.mark.parametrize("allow", [False, True])
def test_underscore_headers_are_dropped_unless_allowed(allow: bool) -> None:
    dropped: list[str] = []
    out = upstream_request_headers(
        [
            ("Host", "h"),
            ("X_Forwarded_For", "6.6.6.6"),
            ("x_request_id", "forged"),
            ("Transfer_Encoding", "chunked"),
            ("X_Custom", "1"),
            ("X-Custom", "2"),
        ],
        ClientInfo("10.0.0.1", "http"),
        default_host="u:1",
        request_id="rid",
        allow_underscores=allow,
        dropped=dropped,
    )
    names = [name for name, _ in out]
    # The proxy's own headers can never be shadowed by an underscore twin.
    assert "X_Forwarded_For" not in names
    assert "x_request_id" not in names
    assert "Transfer_Encoding" not in names
    assert ("X-Forwarded-For", "10.0.0.1") in out
    assert ("X-Custom", "2") in out
    assert (("X_Custom", "1") in out) is allow
    expected = ["X_Forwarded_For", "x_request_id", "Transfer_Encoding"]
    assert dropped == (expected if allow else [*expected, "X_Custom"])


def test_pure_modules_import_neither_asyncio_nor_aiohttp() -> None:
    code = (
        "import sys, wsproxy.headers, wsproxy.routing, wsproxy.target, wsproxy.wsframes,"
        " wsproxy.sessions, wsproxy.upstreams.balancer, wsproxy.upstreams.health,"
        " wsproxy.probe.model, wsproxy.probe.report, wsproxy.config, wsproxy.status,"
        " wsproxy.origins, wsproxy.proxyproto, wsproxy.rewrite, wsproxy.tls;"
        "bad = [m for m in ('asyncio', 'aiohttp') if m in sys.modules];"
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ([("X-Request-ID", "abc-123")], "abc-123"),
        ([("x-request-id", " 7f3e:9a/b+c= ")], "7f3e:9a/b+c="),
        ([], "fresh"),
        ([("X-Request-ID", "")], "fresh"),
        ([("X-Request-ID", "has space")], "fresh"),
        ([("X-Request-ID", 'quote"d')], "fresh"),
        ([("X-Request-ID", "a" * 129)], "fresh"),
        ([("X-Request-ID", "a"), ("X-Request-ID", "b")], "fresh"),
    ],
)
def test_client_request_id_is_kept_only_when_well_formed(
    sent: list[tuple[str, str]], expected: str
) -> None:
    assert choose_request_id([value for _name, value in sent], "fresh") == expected


def test_a_kept_request_id_needs_no_json_escaping() -> None:
    # The access log writes request IDs into its JSON lines unescaped.
    accepted = [chr(c) for c in range(0x110000) if REQUEST_ID.fullmatch(chr(c))]
    assert accepted  # letters, digits and a few marks
    assert all(json.dumps(c, ensure_ascii=False) == f'"{c}"' for c in accepted)


def test_upstream_gets_exactly_one_request_id() -> None:
    out = upstream_request_headers(
        [("Host", "h"), ("X-Request-ID", "from-client"), ("x-request-id", "dup")],
        CLIENT,
        default_host="x",
        request_id="chosen",
    )
    assert [v for n, v in out if n.lower() == "x-request-id"] == ["chosen"]


@pytest.mark.parametrize(
    "host",
    [
        "example.com",
        "example.com:8080",
        "EXAMPLE.com.",
        "127.0.0.1:80",
        "[::1]",
        "[2001:db8::1]:443",
        "under_score.internal",
        "",  # RFC 9112 §3.2: empty when the target has no authority
        "xn--bcher-kva.example",
    ],
)
def test_valid_hosts_pass(host: str) -> None:
    assert check_request("GET", (1, 1), [host]) is None


@pytest.mark.parametrize(
    "host",
    [
        "a b",
        "a/b",
        "a\\b",
        "..",
        "a..b",
        "example.com:80:80",
        "example.com:abc",
        "example.com:123456",
        "[::1",
        "[not-ipv6]",
        "[::1]x",
        "a@b",
        'a"b',
        "a<b>",
        "%2e%2e",
        "evil.example,good.example",
        "a;b",
        ":80",
        "h:99999",
        "h:",
        "h%41",
    ],
)
def test_invalid_hosts_are_400(host: str) -> None:
    rejection = check_request("GET", (1, 1), [host])
    assert rejection is not None
    assert rejection.status == 400


def test_host_is_required_on_http11_only_and_never_twice() -> None:
    assert check_request("GET", (1, 0), []) is None
    missing = check_request("GET", (1, 1), [])
    assert missing is not None
    assert missing.status == 400
    twice = check_request("GET", (1, 0), ["a", "a"])
    assert twice is not None
    assert twice.status == 400


@pytest.mark.parametrize(("version", "status"), [((2, 0), 505), ((0, 9), 505), ((3, 1), 505)])
def test_other_major_versions_are_505(version: tuple[int, int], status: int) -> None:
    rejection = check_request("GET", version, ["a"])
    assert rejection is not None
    assert rejection.status == status
    assert check_request("GET", (1, 2), ["a"]) is None  # a higher minor is still HTTP/1


def test_connect_is_405_with_allow() -> None:
    rejection = check_request("CONNECT", (1, 1), ["a:443"])
    assert rejection is not None
    assert rejection.status == 405
    assert dict(rejection.headers)["Allow"] == ALLOWED_METHODS
    assert "CONNECT" not in ALLOWED_METHODS


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            [(b"Server", b"x"), (b"Connection", b"keep-alive"), (b"Content-Length", b"2")],
            b"Server: x\r\nContent-Length: 2\r\n",
        ),
        (
            [(b"X-Secret", b"1"), (b"connection", b"close, X-Secret"), (b"Keep-Alive", b"t=5")],
            b"",
        ),
        (
            [(b"Set-Cookie", b"a=1"), (b"TRANSFER-ENCODING", b"chunked"), (b"Set-Cookie", b"b=2")],
            b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n",
        ),
        ([(b"x-Odd-Case", b"v"), (b"Upgrade", b"h2c"), (b"Trailer", b"X")], b"x-Odd-Case: v\r\n"),
    ],
)
def test_client_response_fields_drop_hop_by_hop_and_keep_order_and_case(
    fields: list[tuple[bytes, bytes]], expected: bytes
) -> None:
    assert client_response_fields(fields) == expected
    decoded = [(n.decode(), v.decode()) for n, v in fields]
    as_text = "".join(f"{n}: {v}\r\n" for n, v in strip_hop_by_hop(decoded))
    assert as_text.encode() == expected  # the same rule as for text fields


def test_client_response_fields_can_drop_content_length_for_a_204() -> None:
    fields = [(b"Content-Length", b"5"), (b"X-A", b"b")]
    assert client_response_fields(fields, drop_length=True) == b"X-A: b\r\n"


@pytest.mark.parametrize(
    "fields",
    [
        [(b"Server", b"x"), (b"Connection", b"keep-alive"), (b"Content-Length", b"2")],
        [(b"X-Secret", b"1"), (b"connection", b"close, X-Secret"), (b"Keep-Alive", b"t=5")],
        [(b"Content-Length", b"0"), (b"Connection", b"Keep-Alive"), (b"X-A", b"b")],
    ],
)
def test_client_response_fields_from_the_notable_fields_the_parser_collected(
    fields: list[tuple[bytes, bytes]],
) -> None:
    """The upstream connection hands its notable fields over: same answer."""
    notable = notable_fields(fields)
    assert [lower for _, lower, _ in notable] == [
        name.lower() for name, _ in fields if name.lower() in NOTABLE_RESPONSE_FIELDS
    ]
    for drop_length in (False, True):
        assert client_response_fields(
            fields, notable, drop_length=drop_length
        ) == client_response_fields(fields, drop_length=drop_length)


@pytest.mark.parametrize(
    ("fields", "is_untouched"),
    [
        ([("Host", "a.test")], True),
        ([("Host", "a.test"), ("User-Agent", "wrk"), ("Content-Length", "3")], True),
        ([("User-Agent", "wrk")], False),  # no Host: one is added
        ([("Host", "a.test"), ("Connection", "close")], False),
        ([("Host", "a.test"), ("X-Forwarded-For", "6.6.6.6")], False),
        ([("Host", "a.test"), ("X-Request-ID", "abc")], False),
        ([("Host", "a.test"), ("Expect", "100-continue")], False),
        ([("Host", "a.test"), ("X_Custom", "1")], False),
        ([("Host", "a.test"), ("TE", "trailers")], False),
    ],
)
def test_untouched_requests_get_the_same_head_from_the_fast_path(
    fields: list[tuple[str, str]], is_untouched: bool
) -> None:
    index: dict[str, list[str]] = {}
    for name, value in fields:
        index.setdefault(name.lower(), []).append(value)
    assert untouched(index) is is_untouched
    if not is_untouched:
        return
    for chunked in (False, True):
        general = upstream_request_headers(
            fields, CLIENT, default_host="upstream:1", request_id="rid", index=index
        )
        if chunked:
            general.append(("Transfer-Encoding", "chunked"))
        added = forwarded_for_proto(CLIENT) + forwarded_host_field(index["host"])
        fast = upstream_head_fast("GET", "/x?y", fields, added, "rid", chunked=chunked)
        assert fast == request_head("GET", "/x?y", general)


@pytest.mark.parametrize(
    ("fields", "is_untouched"),
    [
        (HANDSHAKE, True),
        ([*HANDSHAKE, ("Origin", "https://a.test"), ("Cookie", "s=1")], True),
        (
            [("HOST", "a.test"), ("upgrade", "WebSocket"), ("CONNECTION", "keep-alive, Upgrade")],
            True,
        ),
        ([*HANDSHAKE, ("Connection", "upgrade")], True),  # repeated: both dropped
        ([("Upgrade", "websocket"), ("Connection", "Upgrade")], False),  # no Host: one is added
        ([*HANDSHAKE[:2], ("Connection", "Upgrade, X-Secret"), ("X-Secret", "1")], False),
        ([*HANDSHAKE[:2], ("Connection", "Upgrade, Host")], False),  # Host named hop-by-hop
        ([*HANDSHAKE, ("Keep-Alive", "timeout=5")], False),
        ([*HANDSHAKE, ("X-Forwarded-For", "6.6.6.6")], False),
        ([*HANDSHAKE, ("X-Request-ID", "abc")], False),
        ([*HANDSHAKE, ("X_Custom", "1")], False),
        ([*HANDSHAKE, ("TE", "trailers")], False),
        ([*HANDSHAKE, ("Expect", "100-continue")], False),
    ],
)
def test_untouched_handshakes_get_the_same_head_from_the_fast_path(
    fields: list[tuple[str, str]], is_untouched: bool
) -> None:
    index: dict[str, list[str]] = {}
    for name, value in fields:
        index.setdefault(name.lower(), []).append(value)
    assert untouched_upgrade(index) is is_untouched
    if not is_untouched:
        return
    fast, general = _handshake_heads(fields, index, CLIENT, http11=True)
    assert fast == general


def _handshake_heads(
    fields: list[tuple[str, str]],
    index: dict[str, list[str]],
    client: ClientInfo,
    *,
    http11: bool,
) -> tuple[bytes, bytes]:
    """The upstream head of an untouched handshake, by the fast path and by
    the general one (upstream_request_headers, request_head)."""
    upgrade = index["upgrade"][0]
    general = upstream_request_headers(
        fields,
        client,
        default_host="upstream:1",
        request_id="rid",
        websocket_upgrade=upgrade,
        index=index,
        forward_expect=http11,
    )
    added = forwarded_for_proto(client) + forwarded_host_field(index["host"])
    fast = upstream_head_fast(
        "GET", "/ws?y", without_upgrade_fields(fields), added, "rid", chunked=False, upgrade=upgrade
    )
    return fast, request_head("GET", "/ws?y", general)


# --- the handshake's short ways, against the general rules, on generated heads ---

#: Field names of a handshake, in several spellings, with every kind of field
#: that must send a handshake down the general path (hop-by-hop, spoofable,
#: Expect, an underscore) and near misses of the ones that may not.
_NAMES = [
    *("Host", "HOST", "host", "Upgrade", "upgrade", "Connection", "CONNECTION"),
    *("Keep-Alive", "TE", "Trailer", "Transfer-Encoding", "Proxy-Connection", "Expect"),
    *("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Request-ID"),
    *("X_Custom", "X-Custom", "Cookie", "Origin", "Sec-WebSocket-Key", "Connectio", "\xc0pgrade"),
]
_TOKENS = ["upgrade", "Upgrade", "keep-alive", "close", "x-custom", "host", "te", "websocket", " "]
_VALUES = st.one_of(
    st.sampled_from(["websocket", "WebSocket", " websocket ", "a.test", "x"]),
    st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=3).map(",".join),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=8),
)
_CLIENTS = st.sampled_from(
    [
        ClientInfo("192.0.2.7", "http"),
        ClientInfo(None, "https"),
        ClientInfo("10.0.0.1", "http", (ipaddress.ip_network("10.0.0.0/8"),)),
    ]
)


def _field(names: list[str], values: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[str, str]]:
    return st.tuples(st.sampled_from(names), values)


#: A browser's three fields of a handshake, in some spelling, among others, in any order.
_HANDSHAKES = st.tuples(
    _field(["Host", "host"], _VALUES),
    _field(["Upgrade", "upgrade"], _VALUES),
    _field(["Connection", "connection"], st.sampled_from(["Upgrade", "keep-alive, Upgrade"])),
    st.lists(_field(_NAMES, _VALUES), max_size=5),
).flatmap(lambda parts: st.permutations([parts[0], parts[1], parts[2], *parts[3]]))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_HANDSHAKES, _CLIENTS, st.booleans())
def test_the_fast_handshake_head_is_the_general_one_whenever_it_is_taken(
    fields: list[tuple[str, str]], client: ClientInfo, http11: bool
) -> None:
    index = header_index(fields)
    if "upgrade" not in index or not untouched_upgrade(index):
        return  # the general path: nothing to compare
    fast, general = _handshake_heads(fields, index, client, http11=http11)
    assert fast == general


_RESPONSE_NAMES = ["Upgrade", "Connection", "connection", "Content-Length", "Transfer-Encoding"]
_RESPONSE_NAMES += ["Keep-Alive", "TE", "X-Hop", "x-hop", "Server", "Sec-WebSocket-Accept", "\xc0b"]


@settings(max_examples=400)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(_RESPONSE_NAMES),
            st.one_of(
                st.sampled_from(["upgrade", "Upgrade, X-Hop", "x-hop", "websocket"]),
                st.text(max_size=5),
            ),
        ),
        max_size=6,
    ),
    st.booleans(),
)
def test_a_101_loses_exactly_what_the_general_rule_drops(
    headers: list[tuple[str, str]], with_index: bool
) -> None:
    named = connection_options(headers) - {"upgrade"}
    drop = {"keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding"}
    drop |= {"content-length"} | named
    expected = [(name, value) for name, value in headers if name.lower() not in drop]
    index = header_index(headers) if with_index else None
    assert switching_protocols_headers(headers, index) == expected
