"""What the front door refuses or normalizes before routing, over real sockets.

Black-box findings, each with spellings beyond the ones first reported:

* dot segments must not escape a route's prefix (``/public/../admin``,
  ``%2e%2e``, ``..%2f``, backslashes, ``..;``): the path is normalized, the
  normalized path is what the backend receives, and unsafe spellings are ``400``;
* ``HTTP/2.0`` request lines are ``505``, ``CONNECT`` is ``405`` with ``Allow``,
  an invalid ``Host`` is ``400``;
* a request pipelined behind an ``Upgrade: h2c`` request is never left hanging.

Backends are real: a raw recording server (what exactly arrived) and an aiohttp
static-file server (what a plain file backend would have served).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from aiohttp import web

import wsproxy.dispatch
from tests.support.http_backends import (
    RecordingBackend,
    aiohttp_backend,
    raw_request,
    read_response,
    request_bytes,
)
from tests.support.observe_helpers import Scrape, observed_proxy
from tests.support.proxy import config_text, running_proxy, two_upstreams_text
from tests.support.wire import handshake_request, read_head
from tests.support.ws_helpers import LOOPBACK, raw_client, scripted

SECRET = b"the admin secret"

#: Spellings that climb out of /public on a backend that resolves them.
ESCAPES = [
    "/public/../admin/secret.txt",
    "/public/%2e%2e/admin/secret.txt",
    "/public/%2E%2E/admin/secret.txt",
    "/public/.%2e/admin/secret.txt",
    "/public/%2e./admin/secret.txt",
    "/public/..%2fadmin/secret.txt",
    "/public/..%2Fadmin%2Fsecret.txt",
    "/public%2f..%2fadmin/secret.txt",
    "/public/%2e%2e%2fadmin/secret.txt",
    "/public/..%5cadmin/secret.txt",
    "/public/..\\admin/secret.txt",
    "/public/..;/admin/secret.txt",
    "/public/..%3B/admin/secret.txt",
    "/public/..%00/admin/secret.txt",
    "/public/./../admin/secret.txt",
    "/public//../../admin/secret.txt",
    "/public/x/../../admin/secret.txt",
    "/public/../../../../admin/secret.txt",
    "http://example/public/../admin/secret.txt",
]


def _static_site(root: Path) -> web.Application:
    (root / "public").mkdir()
    (root / "admin").mkdir()
    (root / "public" / "index.txt").write_bytes(b"public page")
    (root / "admin" / "secret.txt").write_bytes(SECRET)
    app = web.Application()
    app.router.add_static("/", root)
    return app


@pytest.mark.parametrize("target", ESCAPES)
async def test_dot_segments_never_reach_a_file_outside_the_route_prefix(
    tmp_path: Path, target: str
) -> None:
    async with (
        aiohttp_backend(_static_site(tmp_path)) as port,
        running_proxy(config_text(port, path_prefix="/public")) as (_server, proxy_port),
    ):
        request = f"GET {target} HTTP/1.1\r\nHost: example\r\n\r\n".encode("latin-1")
        head, body = await raw_request(proxy_port, request)
        assert SECRET not in body
        # Outside /public there is no route (404); unsafe spellings are 400.
        assert head.status in (400, 404), (target, head.start_line)
        # The direct request the proxy exists to prevent really serves it.
        direct_head, direct_body = await raw_request(
            port, b"GET /admin/secret.txt HTTP/1.1\r\nHost: example\r\n\r\n"
        )
        assert (direct_head.status, direct_body) == (200, SECRET)


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        ("/public/a/../b.txt", "/public/b.txt"),
        ("/public/./%62.txt?x=../..&y", "/public/b.txt?x=../..&y"),
        ("/public/%7Euser/%2fx/", "/public/~user/%2Fx/"),
        ("//public//b.txt", "//public//b.txt"),
    ],
)
async def test_the_backend_receives_the_normalized_path_with_the_query_untouched(
    target: str, forwarded: str
) -> None:
    async with (
        RecordingBackend() as backend,
        running_proxy(config_text(backend.port, path_prefix="/public")) as (_server, port),
    ):
        head, _body = await raw_request(port, request_bytes("GET", target, [("Host", "h")]))
        assert head.status == 200
        assert backend.requests[0].head.start_line == f"GET {forwarded} HTTP/1.1"


async def test_a_websocket_handshake_is_routed_and_forwarded_normalized() -> None:
    backend, sessions = scripted(lambda session: session.accept())
    async with (
        backend,
        running_proxy(config_text(backend.port, path_prefix="/public")) as (_server, port),
    ):
        async with raw_client(port) as (reader, writer):
            writer.write(handshake_request(LOOPBACK, port, path="/public/x/%2e%2e/ws?t=1"))
            async with asyncio.timeout(5):
                assert (await read_head(reader)).status == 101
        async with raw_client(port) as (reader, writer):
            writer.write(handshake_request(LOOPBACK, port, path="/public/..%2f..%2fws"))
            async with asyncio.timeout(5):
                head = await read_head(reader)
            assert head.status == 400
    assert [s.head.start_line for s in sessions] == ["GET /public/ws?t=1 HTTP/1.1"]


async def test_a_segment_cannot_slip_past_its_route_behind_a_parameter_or_separator() -> None:
    """With ``/admin`` and a catch-all, the spellings a backend resolves to
    ``/admin/...`` (Tomcat's ``;``, a decoded ``%2F``, IIS's backslash, merged
    slashes) go to the ``/admin`` upstream, never to the catch-all's."""
    async with RecordingBackend() as admin, RecordingBackend() as public:
        text = two_upstreams_text(public.port, admin.port).replace("/dead", "/admin")
        async with running_proxy(text) as (_server, port):
            for target in (
                "/admin;jsessionid=1/secret",
                "/admin%2Fsecret",
                "/admin%5csecret",
                "/admin\\secret",
                "//admin/secret",
                "/%2Fadmin/secret",
            ):
                head, _body = await raw_request(port, request_bytes("GET", target, [("Host", "h")]))
                assert head.status == 200, target
    assert public.requests == []
    assert len(admin.requests) == 6


async def test_refused_targets_are_counted_and_logged_with_route_none() -> None:
    async with RecordingBackend() as backend, observed_proxy(config_text(backend.port)) as obs:
        head, body = await raw_request(
            obs.port, request_bytes("GET", "/a/../../etc/passwd", [("Host", "h")])
        )
        assert head.status == 400
        assert b"climbs above the root" in body
        scrape: Scrape = await obs.sample(
            "wsproxy_http_requests_total", route="none", method="GET", code="400"
        )
        assert (
            scrape.value("wsproxy_http_requests_total", route="none", method="GET", code="400") == 1
        )
        (record,) = obs.log_records()
        assert (record["route"], record["status"]) == ("none", 400)
    assert backend.requests == []


# --- request line, method and Host ------------------------------------------------


async def test_http2_request_line_is_505_and_never_forwarded() -> None:
    async with (
        RecordingBackend() as backend,
        running_proxy(config_text(backend.port)) as (_server, port),
    ):
        async with raw_client(port) as (reader, writer):
            writer.write(request_bytes("GET", "/", [("Host", "h")], version="HTTP/2.0"))
            async with asyncio.timeout(5):
                head, _body = await read_response(reader)
                assert head.status == 505
                assert head.start_line.startswith("HTTP/1.1 505 ")  # not "HTTP/2.0 505"
                assert await reader.read() == b""
        # llhttp itself refuses versions it does not know: a parser-level 400.
        request = request_bytes("GET", "/", [("Host", "h")], version="HTTP/3.0")
        head, _body = await raw_request(port, request)
        assert head.status in (400, 505)
    assert backend.requests == []


async def test_connect_is_405_with_allow_and_the_connection_closes() -> None:
    async with (
        RecordingBackend() as backend,
        running_proxy(config_text(backend.port)) as (_server, port),
        raw_client(port) as (reader, writer),
    ):
        writer.write(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        async with asyncio.timeout(5):
            head, _body = await read_response(reader)
            assert head.status == 405
            assert "CONNECT" not in (head.get("Allow") or "CONNECT")
            assert "GET" in (head.get("Allow") or "")
            assert await reader.read() == b""  # closed, not left in tunnel mode
    assert backend.requests == []


@pytest.mark.parametrize(
    "host",
    [
        *("a b", "a/b", "..", "evil..example", "h:1:2", "h:port", "[::zz]", "a@b", "a\\b"),
        *("%2e%2e", "evil.example,good.example", ":80", "h:99999"),
    ],
)
async def test_invalid_host_values_are_400_and_never_forwarded(host: str) -> None:
    async with (
        RecordingBackend() as backend,
        running_proxy(config_text(backend.port)) as (_server, port),
    ):
        head, _body = await raw_request(port, request_bytes("GET", "/", [("Host", host)]))
        assert head.status == 400, host
    assert backend.requests == []


async def test_two_websocket_versions_are_400_not_426() -> None:
    backend, sessions = scripted(lambda session: session.accept())
    async with backend, running_proxy(config_text(backend.port)) as (_server, port):
        for extra in (
            [("Sec-WebSocket-Version", "13")],  # a second header
            [("Sec-WebSocket-Version", "8")],
        ):
            async with raw_client(port) as (reader, writer):
                writer.write(handshake_request(LOOPBACK, port, extra=extra))
                async with asyncio.timeout(5):
                    head = await read_head(reader)
                assert head.status == 400
                assert head.get("Sec-WebSocket-Version") is None
    assert sessions == []


# --- pipelining behind an upgrade the proxy does not perform ----------------------


@pytest.mark.parametrize(
    "first",
    [
        b"GET /first HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\n"
        b"Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQ\r\n\r\n",
        # curl --http2 sends its upgrade on a POST too: the body comes first.
        b"POST /first HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nContent-Length: 5\r\n"
        b"Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQ\r\n\r\nhello",
        b"POST /first HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: Upgrade\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ],
    ids=["get", "post-length", "post-chunked"],
)
async def test_requests_pipelined_behind_h2c_are_all_answered_in_order(first: bytes) -> None:
    """llhttp stops parsing at any ``Connection: upgrade`` request; the proxy serves
    the h2c one as plain HTTP (its Upgrade dropped) and parses on behind it, its
    body included, on the same connection."""
    async with RecordingBackend() as backend, observed_proxy(config_text(backend.port)) as obs:
        async with raw_client(obs.port) as (reader, writer):
            writer.write(first + b"GET /second HTTP/1.1\r\nHost: h\r\n\r\n")
            async with asyncio.timeout(5):
                for _ in range(2):
                    head, body = await read_response(reader)
                    assert (head.status, body) == (200, b"ok")
                    assert head.get("Connection") is None
                    assert head.get("Upgrade") is None
        await obs.log_has(2)
        first_record, second_record = obs.log_records()
        assert first_record["upgrade_ignored"] == "h2c"
        assert "upgrade_ignored" not in second_record
    method = first.split(b" ", 1)[0].decode()
    assert [r.head.start_line for r in backend.requests] == [
        f"{method} /first HTTP/1.1",
        "GET /second HTTP/1.1",
    ]
    assert backend.requests[0].head.get("Upgrade") is None
    assert backend.requests[0].body == (b"hello" if method == "POST" else b"")


async def test_a_request_refused_behind_h2c_gets_its_own_answer() -> None:
    """The request parsed behind an h2c upgrade is checked like any other: a
    transfer coding the proxy cannot forward is 501 (it once became a 500 and a
    traceback, its refusal lost while the upgrade was being handled)."""
    first = b"GET /first HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n"
    second = b"POST /second HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    async with RecordingBackend() as backend, observed_proxy(config_text(backend.port)) as obs:
        async with raw_client(obs.port) as (reader, writer):
            writer.write(first + second)
            async with asyncio.timeout(5):
                head, body = await read_response(reader)
                assert (head.status, body) == (200, b"ok")
                head, _body = await read_response(reader)
                assert head.status == 501
        await obs.log_has(2)
        assert [record["status"] for record in obs.log_records()] == [200, 501]
    assert [r.head.start_line for r in backend.requests] == ["GET /first HTTP/1.1"]


async def test_a_refused_websocket_handshake_closes_the_connection_after_its_answer() -> None:
    """What follows a WebSocket handshake is kept for the tunnel, not parsed as
    HTTP; when there is no tunnel the refusal says ``Connection: close`` and the
    connection closes (the client retries what it pipelined)."""
    async with (
        RecordingBackend() as backend,
        running_proxy(config_text(backend.port)) as (_server, port),
        raw_client(port) as (reader, writer),
    ):
        writer.write(
            handshake_request(LOOPBACK, port, extra=[("Sec-WebSocket-Version", "13")])
            + b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"
        )
        async with asyncio.timeout(5):
            head, _body = await read_response(reader)
            assert head.status == 400
            assert head.get("Connection") == "close"
            assert await reader.read() == b""


# --- header names with underscores ---------------------------------------------

SPOOFS = [
    ("X_Forwarded_For", "6.6.6.6"),
    ("x_forwarded_proto", "https"),
    ("X_Real_IP", "6.6.6.6"),
    ("X_Request_ID", "forged"),
    ("Auth_User", "admin"),
]


@pytest.mark.parametrize("websocket", [False, True])
async def test_underscore_headers_are_dropped_by_default(
    websocket: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="wsproxy")
    backend, sessions = scripted(lambda session: session.accept())
    recording = RecordingBackend()
    async with recording, backend:
        port = backend.port if websocket else recording.port
        async with running_proxy(config_text(port)) as (_server, proxy_port):
            if websocket:
                async with raw_client(proxy_port) as (reader, writer):
                    writer.write(handshake_request(LOOPBACK, proxy_port, extra=SPOOFS))
                    async with asyncio.timeout(5):
                        assert (await read_head(reader)).status == 101
                head = sessions[0].head
            else:
                request = request_bytes("GET", "/", [("Host", "h"), *SPOOFS])
                answer, _body = await raw_request(proxy_port, request)
                assert answer.status == 200
                head = recording.requests[0].head
    names = [name for name, _value in head.headers]
    assert not [name for name in names if "_" in name]
    assert head.get("X-Forwarded-For") == LOOPBACK
    assert "6.6.6.6" not in str(head.headers)
    assert "dropped header(s) with '_' in the name: X_Forwarded_For" in caplog.text


async def test_allow_underscore_headers_keeps_them_but_never_the_proxys_own() -> None:
    extra = "proxy:\n  allow_underscore_headers: true\n"
    async with (
        RecordingBackend() as backend,
        running_proxy(config_text(backend.port, extra=extra)) as (_server, port),
    ):
        answer, _body = await raw_request(port, request_bytes("GET", "/", [("Host", "h"), *SPOOFS]))
        assert answer.status == 200
    head = backend.requests[0].head
    assert head.get("X_Real_IP") == "6.6.6.6"
    assert head.get("Auth_User") == "admin"
    for name in ("X_Forwarded_For", "x_forwarded_proto", "X_Request_ID"):
        assert head.get(name) is None


# --- requests the parser refuses ---------------------------------------------------

#: (raw request, status, what the answer starts with, the method logged): refused
#: before a whole head, or (several spaces in the request line, which llhttp
#: accepts) as soon as the head is parsed.
MALFORMED = [
    (
        b"GET /x HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer tok\x01en\r\n\r\n",
        400,
        b"malformed",
        None,
    ),
    (b"G(T /x HTTP/1.1\r\nHost: h\r\n\r\n", 400, b"malformed", None),
    (b"GET /x HTTP/1.x\r\nHost: h\r\n\r\n", 400, b"malformed", None),
    (b"GET /x HTTP/1.2\r\nHost: h\r\n\r\n", 505, b"HTTP version not supported", None),
    (b"GET  /x HTTP/1.1\r\nHost: h\r\n\r\n", 400, b"malformed", "GET"),  # llhttp allows it
    (b"GET /x  HTTP/1.1\r\nHost: h\r\n\r\n", 400, b"malformed", "GET"),
    (b"GET /x HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", 431, b"request", None),
    (b"GET /" + b"a" * 40000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414, b"request", None),
    (
        b"GET /x HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
        b"malformed",
        None,
    ),
    (b"GET /x HTTP/1.1\r\nHost: h\r\n Folded: header\r\n\r\n", 400, b"malformed", None),
    (
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        400,
        b"malformed",
        None,
    ),  # TLS on the HTTP port
]


async def test_parser_refusals_are_counted_logged_once_each_and_never_traced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    async with RecordingBackend() as backend, observed_proxy(config_text(backend.port)) as obs:
        for raw, status, start, _method in MALFORMED:
            async with raw_client(obs.port) as (reader, writer):
                writer.write(raw)
                async with asyncio.timeout(5):
                    head, body = await read_response(reader)
                    assert head.status == status, raw
                    assert body.startswith(start), body
                    assert b"tok" not in body
                    assert b"a" * 100 not in body  # no parser dump
                    assert await reader.read() == b""  # closed
        scrape = await obs.sample(
            "wsproxy_http_requests_total", route="none", method="other", code="400"
        )
        for status in {status for _raw, status, _start, _method in MALFORMED}:
            for method in ("other", "GET"):
                counted = scrape.value(
                    "wsproxy_http_requests_total", route="none", method=method, code=str(status)
                )
                expected = sum(
                    1 for m in MALFORMED if m[1] == status and (m[3] or "other") == method
                )
                assert (counted or 0) == expected, (status, method)
        records = await obs.log_has(len(MALFORMED))
        assert len(records) == len(MALFORMED)
        for entry, (_raw, status, start, method) in zip(obs.log_records(), MALFORMED, strict=True):
            assert (entry["route"], entry["status"], entry["method"]) == ("none", status, method)
            assert entry["error"].encode().startswith(start)
    assert backend.requests == []
    assert not [r for r in caplog.records if r.exc_info is not None or r.levelno >= logging.ERROR]


async def test_dispatch_decisions_are_kept_bounded_and_never_mixed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The checks, target and route of a request are kept for the next one alike;
    the table stays bounded, and a kept decision never answers another request."""
    monkeypatch.setattr(wsproxy.dispatch, "_DECISIONS", 4)
    async with (
        RecordingBackend() as backend,
        running_proxy(config_text(backend.port, path_prefix="/api")) as (server, port),
    ):
        for round_ in range(2):
            for index in range(10):
                target = f"/api/{index}" if index % 2 else f"/other/{index}"
                head, _body = await raw_request(port, request_bytes("GET", target, [("Host", "h")]))
                assert head.status == (200 if index % 2 else 404), (round_, target)
                assert len(server.proxy._decisions) <= 4
        for host, status in (("h", 200), ("a b", 400), ("h", 200)):
            # The same target right after: only the Host differs.
            head, _body = await raw_request(port, request_bytes("GET", "/api/1", [("Host", host)]))
            assert head.status == status, host
    assert [r.head.start_line.split()[1] for r in backend.requests] == [
        *[f"/api/{index}" for index in (1, 3, 5, 7, 9)] * 2,
        "/api/1",
        "/api/1",
    ]


async def test_an_upgrade_header_without_connection_upgrade_is_not_an_upgrade() -> None:
    """Only Upgrade with ``Connection: upgrade`` asks to switch (RFC 9110 §7.8):
    a bare ``Upgrade: h2c`` is a plain request, logged as one."""
    async with RecordingBackend() as backend, observed_proxy(config_text(backend.port)) as obs:
        async with raw_client(obs.port) as (reader, writer):
            writer.write(b"GET /a HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\n\r\n")
            async with asyncio.timeout(5):
                head, body = await read_response(reader)
        assert (head.status, body) == (200, b"ok")
        [record] = await obs.log_has(1)
        assert "upgrade_ignored" not in json.loads(record)
    assert backend.requests[0].head.get("Upgrade") is None  # hop-by-hop either way
