"""Plain HTTP through the real proxy: versions, pooling, headers, routing, errors, bodies.

Every test runs the real proxy on 127.0.0.1 port 0 in front of real backends:
a raw asyncio server (:class:`RecordingBackend`) where the exact request bytes
matter, an ``aiohttp.web`` app where a streaming handler is simpler.  Clients
are raw sockets where the exact bytes matter (HTTP/1.0, ``Expect``, header
lists) and ``aiohttp.ClientSession`` otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import os
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from tests.support.backends import RawBackend
from tests.support.http_backends import (
    Received,
    RecordingBackend,
    aiohttp_backend,
    chunked,
    raw_request,
    read_response,
    reply,
    request_bytes,
)
from tests.support.proxy import config_text, running_proxy
from tests.support.wire import Head, parse_head, read_head

MiB = 1024 * 1024
CHUNK = 64 * 1024
BIG = 20 * MiB
#: When a test fails, a handler may be stuck: do not wait the default 30s for it.
QUICK_STOP = "shutdown:\n  grace_period: 1s\n"


def proxy_config(upstreams: str, routes: str, extra: str = "") -> str:
    """A configuration on port 0 with the given ``upstreams:`` and ``routes:`` bodies."""
    return (
        "listen:\n  - host: 127.0.0.1\n    port: 0\n"
        "admin:\n  host: 127.0.0.1\n  port: 0\n"
        f"upstreams:\n{upstreams}routes:\n{routes}{extra}"
    )


def one_upstream(server: str, upstream_extra: str = "") -> str:
    """Upstream ``app`` with one server, a catch-all route, and extra upstream keys."""
    upstreams = f'  app:\n    servers: ["{server}"]\n{upstream_extra}'
    return proxy_config(upstreams, "  - path_prefix: /\n    upstream: app\n")


def tokens(head: Head, name: str) -> set[str]:
    """The comma-separated tokens of every ``name`` header, lower-cased."""
    return {t.strip().lower() for v in head.get_all(name) for t in v.split(",") if t.strip()}


def names(head: Head) -> set[str]:
    return {name.lower() for name, _ in head.headers}


def by_path(answers: dict[str, bytes]) -> RecordingBackend:
    """A backend answering each request target with fixed bytes (``ok`` otherwise)."""

    async def respond(received: Received) -> bytes:
        target = received.head.start_line.split(" ")[1]
        return answers.get(target, reply(body=b"ok"))

    return RecordingBackend(respond)


@contextlib.asynccontextmanager
async def raw_connection(
    port: int,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A client socket to the proxy, closed (and awaited) on exit, with a deadline."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**24)
    try:
        async with asyncio.timeout(10):
            yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def through_proxy(backend: RecordingBackend, extra: str = "") -> AsyncIterator[int]:
    """Start ``backend`` and the proxy in front of it; yields the proxy's port."""
    async with (
        backend,
        running_proxy(config_text(backend.port, extra=QUICK_STOP + extra)) as (_, port),
    ):
        yield port


async def read_to_eof(port: int, request: bytes) -> tuple[Head, bytes]:
    """Send ``request``, read until the proxy closes, split head and raw body."""
    async with raw_connection(port) as (reader, writer):
        writer.write(request)
        await writer.drain()
        data = await reader.read()
    raw_head, _, body = data.partition(b"\r\n\r\n")
    return parse_head(raw_head), body


# --- 1. HTTP/1.1 upstream and pooling ------------------------------------------


async def test_upstream_requests_are_http11_for_http10_and_http11_clients() -> None:
    """Guards against forwarding an HTTP/1.0 request line upstream, or no Host for it."""
    backend = RecordingBackend()
    async with through_proxy(backend) as port:
        head10, body10 = await raw_request(port, b"GET /old HTTP/1.0\r\n\r\n")
        head11, body11 = await raw_request(
            port, request_bytes("GET", "/new", [("Host", "example.test")])
        )

    assert (head10.status, body10) == (200, b"ok")
    assert (head11.status, body11) == (200, b"ok")
    old, new = backend.requests
    assert old.head.start_line == "GET /old HTTP/1.1"
    # HTTP/1.1 requires Host (RFC 9112 §3.2); the HTTP/1.0 client sent none.
    assert old.head.get_all("Host") == [f"127.0.0.1:{backend.port}"]
    assert new.head.start_line == "GET /new HTTP/1.1"
    assert new.head.get_all("Host") == ["example.test"]


async def test_sequential_requests_from_separate_clients_share_one_upstream_connection() -> None:
    """Guards against opening an upstream connection per request instead of pooling them."""
    backend = RecordingBackend()
    # The client's own ``Connection: close`` must not close the upstream connection.
    closing = request_bytes("GET", "/b", [("Host", "h"), ("Connection", "close")])
    async with through_proxy(backend) as port:
        statuses = [
            (await raw_request(port, b"GET /a HTTP/1.0\r\n\r\n"))[0].status,
            (await raw_request(port, closing))[0].status,
        ]
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/c") as response,
        ):
            statuses.append(response.status)
            await response.read()
        last = request_bytes("GET", "/d", [("Host", "h")])
        statuses.append((await raw_request(port, last))[0].status)

    assert statuses == [200, 200, 200, 200]
    assert [r.head.start_line for r in backend.requests] == [
        "GET /a HTTP/1.1",
        "GET /b HTTP/1.1",
        "GET /c HTTP/1.1",
        "GET /d HTTP/1.1",
    ]
    assert backend.connections == 1
    assert [(r.connection, r.index) for r in backend.requests] == [(0, 0), (0, 1), (0, 2), (0, 3)]


# --- 2. Hop-by-hop headers ------------------------------------------------------


async def test_hop_by_hop_request_headers_do_not_reach_upstream() -> None:
    """Guards against leaking connection-specific client headers (RFC 9110 §7.6.1) upstream."""
    request = request_bytes(
        "GET",
        "/hop",
        [
            ("Host", "example.test"),
            ("Connection", "close, X-Secret"),
            ("Connection", "X-Other"),  # a second Connection field counts too (§5.3)
            ("X-Secret", "1"),
            ("X-Other", "2"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Upgrade", "h2c"),
            ("Trailer", "X"),
            ("X-Custom", "kept"),
        ],
    )
    backend = RecordingBackend()
    async with through_proxy(backend) as port:
        head, body = await raw_request(port, request)

    assert (head.status, body) == (200, b"ok")
    (seen,) = backend.requests
    leaked = names(seen.head) & {
        "x-secret",
        "x-other",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "trailer",
        "transfer-encoding",
    }
    assert leaked == set(), seen.head.headers
    # The proxy may state its own options on its own connection, nothing of the client's.
    assert tokens(seen.head, "Connection") <= {"keep-alive"}, seen.head.headers
    assert seen.head.get_all("X-Custom") == ["kept"]


async def test_hop_by_hop_response_headers_do_not_reach_client() -> None:
    """Guards against leaking the upstream connection's own headers to the client."""
    answer = reply(
        headers=[
            ("Connection", "X-Internal"),
            ("X-Internal", "1"),
            ("Keep-Alive", "timeout=5, max=100"),
            ("Proxy-Connection", "keep-alive"),
            ("Upgrade", "h2c"),
            ("X-Visible", "yes"),
        ],
        body=b"hello",
    )
    backend = by_path({"/": answer})
    async with through_proxy(backend) as port:
        head, body = await raw_request(port, request_bytes("GET", "/", [("Host", "example.test")]))

    assert (head.status, body) == (200, b"hello")
    leaked = names(head) & {"x-internal", "keep-alive", "proxy-connection", "upgrade"}
    assert leaked == set(), head.headers
    assert tokens(head, "Connection") <= {"close", "keep-alive"}, head.headers
    assert head.get_all("X-Visible") == ["yes"]


async def test_end_to_end_headers_keep_duplicates_and_order_both_ways() -> None:
    """Guards against merging, dropping or reordering repeated fields such as Set-Cookie."""
    answer = reply(
        headers=[
            ("X-First", "1"),
            ("Set-Cookie", "a=1; Path=/"),
            ("X-Middle", "2"),
            ("Set-Cookie", "b=2; Path=/"),
            ("X-Last", "3"),
        ],
        body=b"ok",
    )
    request = request_bytes(
        "GET",
        "/",
        [("Host", "example.test"), ("X-Dup", "one"), ("X-Between", "x"), ("X-Dup", "two")],
    )
    backend = by_path({"/": answer})
    async with through_proxy(backend) as port:
        head, _ = await raw_request(port, request)

    (seen,) = backend.requests
    upstream_view = [(k.lower(), v) for k, v in seen.head.headers if k.lower().startswith("x-")]
    assert upstream_view[:3] == [("x-dup", "one"), ("x-between", "x"), ("x-dup", "two")]
    wanted = {"x-first", "set-cookie", "x-middle", "x-last"}
    client_view = [(k.lower(), v) for k, v in head.headers if k.lower() in wanted]
    assert client_view == [
        ("x-first", "1"),
        ("set-cookie", "a=1; Path=/"),
        ("x-middle", "2"),
        ("set-cookie", "b=2; Path=/"),
        ("x-last", "3"),
    ]


# --- 3. Host and X-Forwarded-* --------------------------------------------------


async def test_client_host_header_reaches_upstream_unchanged() -> None:
    """Guards against replacing the client's Host (virtual hosting) with the upstream address."""
    backend = RecordingBackend()
    async with through_proxy(backend) as port:
        await raw_request(port, request_bytes("GET", "/", [("Host", "example.test:8080")]))

    (seen,) = backend.requests
    assert seen.head.get_all("Host") == ["example.test:8080"]


async def test_forwarded_headers_are_set_and_untrusted_forgeries_replaced() -> None:
    """Guards against trusting a client's forged X-Forwarded-* (address spoofing)."""
    forged = [
        ("Host", "example.test:8080"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.test"),
    ]
    # Odd spellings must not slip past the check that picks the fast head.
    odd = [
        ("Host", "example.test:8080"),
        ("x-fOrWaRdEd-FoR", "6.6.6.6"),
        ("X-FORWARDED-PROTO", "https"),
        ("x-forwarded-HOST", "evil.test"),
    ]
    backend = RecordingBackend()
    async with through_proxy(backend) as port:
        await raw_request(port, request_bytes("GET", "/plain", [("Host", "example.test:8080")]))
        await raw_request(port, request_bytes("GET", "/forged", forged))
        await raw_request(port, request_bytes("GET", "/odd", odd))

    assert len(backend.requests) == 3
    for seen in backend.requests:
        assert seen.head.get_all("X-Forwarded-For") == ["127.0.0.1"], seen.head.headers
        assert seen.head.get_all("X-Forwarded-Proto") == ["http"], seen.head.headers
        assert seen.head.get_all("X-Forwarded-Host") == ["example.test:8080"], seen.head.headers


async def test_trusted_proxy_extends_forwarded_for_chain() -> None:
    """Guards against dropping the real client address a trusted front proxy reported."""
    extra = 'proxy:\n  trusted_proxies: ["127.0.0.1/32"]\n'
    headers = [("Host", "example.test"), ("X-Forwarded-For", "6.6.6.6")]
    backend = RecordingBackend()
    async with through_proxy(backend, extra=extra) as port:
        await raw_request(port, request_bytes("GET", "/", headers))

    (seen,) = backend.requests
    assert seen.head.get_all("X-Forwarded-For") == ["6.6.6.6, 127.0.0.1"]
    assert seen.head.get_all("Host") == ["example.test"]


# --- 4. Routing -----------------------------------------------------------------


def named(name: str) -> RecordingBackend:
    async def respond(received: Received) -> bytes:
        return reply(body=name.encode())

    return RecordingBackend(respond)


async def test_routes_by_host_and_longest_path_prefix() -> None:
    """Guards against wrong route choice: host (exact, wildcard) first, then longest prefix."""
    async with named("a") as a, named("b") as b:
        upstreams = (
            f'  a:\n    servers: ["127.0.0.1:{a.port}"]\n'
            f'  b:\n    servers: ["127.0.0.1:{b.port}"]\n'
        )
        routes = (
            "  - path_prefix: /\n    upstream: a\n"
            "  - path_prefix: /api\n    upstream: b\n"
            "  - host: exact.example.test\n    path_prefix: /\n    upstream: b\n"
            '  - host: "*.example.test"\n    path_prefix: /\n    upstream: b\n'
            '  - host: "*.example.test"\n    path_prefix: /static\n    upstream: a\n'
        )
        cases = [
            ("other.test", "/", "a"),
            ("other.test", "/api", "b"),
            ("other.test", "/api/v1/users", "b"),
            ("other.test", "/apix", "a"),  # whole segments only
            ("exact.example.test", "/", "b"),
            ("EXACT.example.test:8080", "/x", "b"),  # case and port do not matter
            ("sub.example.test", "/", "b"),
            ("deep.sub.example.test", "/", "b"),
            ("sub.example.test", "/static/app.js", "a"),  # longest prefix within the host
            ("example.test", "/", "a"),  # *.example.test does not cover example.test
        ]
        got = []
        async with (
            running_proxy(proxy_config(upstreams, routes)) as (_, port),
            aiohttp.ClientSession() as session,
        ):
            for host, path, _ in cases:
                url = f"http://127.0.0.1:{port}{path}"
                async with session.get(url, headers={"Host": host}) as response:
                    got.append((host, path, (await response.read()).decode()))

    assert got == cases
    # The path is forwarded whole, never stripped of the matched prefix.
    assert "GET /api/v1/users HTTP/1.1" in [r.head.start_line for r in b.requests]


async def test_request_matching_no_route_gets_404() -> None:
    """Guards against sending unrouted requests to some upstream instead of answering 404."""
    backend = RecordingBackend()
    routes = "  - path_prefix: /api\n    upstream: app\n"
    async with backend:
        upstreams = f'  app:\n    servers: ["127.0.0.1:{backend.port}"]\n'
        async with running_proxy(proxy_config(upstreams, routes)) as (_, port):
            missed, _ = await raw_request(port, request_bytes("GET", "/", [("Host", "h")]))
            near, _ = await raw_request(port, request_bytes("GET", "/apix", [("Host", "h")]))
            hit, _ = await raw_request(port, request_bytes("GET", "/api/x", [("Host", "h")]))

    assert (missed.status, near.status, hit.status) == (404, 404, 200)
    assert [r.head.start_line for r in backend.requests] == ["GET /api/x HTTP/1.1"]


# --- 5. Upstream errors ---------------------------------------------------------


def assert_short_text(head: Head, body: bytes) -> None:
    assert (head.get("Content-Type") or "").startswith("text/plain"), head.headers
    assert len(body) < 300, body
    assert b"Traceback" not in body
    assert b'File "' not in body


async def test_refused_upstream_gets_502_quickly() -> None:
    """Guards against hanging, retrying for long, or crashing when the upstream refuses."""
    # Bound but not listening: connecting is refused, and the port stays ours.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
        async with running_proxy(one_upstream(f"127.0.0.1:{dead_port}")) as (_, port):
            started = time.monotonic()
            head, body = await raw_request(port, request_bytes("GET", "/", [("Host", "h")]))
            elapsed = time.monotonic() - started

    assert head.status == 502
    assert elapsed < 1.0
    assert_short_text(head, body)


async def test_upstream_that_never_answers_gets_504_after_read_timeout() -> None:
    """Guards against waiting forever (or answering 502) when the upstream is silent."""
    never = asyncio.Event()

    async def silent(received: Received) -> bytes:
        await never.wait()  # cancelled when the backend stops
        return b""

    backend = RecordingBackend(silent)
    async with backend:
        config = one_upstream(f"127.0.0.1:{backend.port}", "    read_timeout: 300ms\n")
        async with running_proxy(config) as (_, port):
            started = time.monotonic()
            head, body = await raw_request(port, request_bytes("GET", "/", [("Host", "h")]))
            elapsed = time.monotonic() - started

    assert head.status == 504
    assert len(backend.requests) == 1  # it connected and sent: a read timeout, not a refusal
    assert 0.25 <= elapsed < 3.0
    assert_short_text(head, body)


# --- 6. A proxy, not a browser --------------------------------------------------


async def test_cookies_set_for_one_client_never_reach_another() -> None:
    """Guards against a cookie jar in the proxy replaying one client's cookie for everyone."""
    login = reply(headers=[("Set-Cookie", "session=alice; Path=/")], body=b"hi")
    backend = by_path({"/login": login})
    # ``localhost``: aiohttp's cookie jar ignores cookies from IP hosts, so an
    # IP address upstream would hide a jar that a host name exposes.
    async with backend, running_proxy(one_upstream(f"localhost:{backend.port}")) as (_, port):
        base = f"http://127.0.0.1:{port}"
        # Clients without jars of their own: any Cookie upstream came from the proxy.
        async with (
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as alice,
            alice.get(f"{base}/login") as response,
        ):
            set_cookie = response.headers.getall("Set-Cookie")
        async with (
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as bob,
            bob.get(f"{base}/profile") as response,
        ):
            assert response.status == 200

    assert set_cookie == ["session=alice; Path=/"]
    login_seen, profile_seen = backend.requests
    assert login_seen.head.get_all("Cookie") == []
    assert profile_seen.head.get_all("Cookie") == [], profile_seen.head.headers


async def test_redirect_passes_through_unfollowed() -> None:
    """Guards against the proxy following redirects instead of handing them to the client."""
    backend: RecordingBackend

    async def respond(received: Received) -> bytes:
        # Points back at this backend: a proxy that followed it would show up here.
        location = f"http://127.0.0.1:{backend.port}/target?x=1"
        return reply(302, "Found", [("Location", location)])

    backend = RecordingBackend(respond)
    async with (
        through_proxy(backend) as port,
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/start", allow_redirects=False) as response,
    ):
        status = response.status
        location = response.headers.get("Location")

    assert status == 302
    assert location == f"http://127.0.0.1:{backend.port}/target?x=1"
    assert [r.head.start_line for r in backend.requests] == ["GET /start HTTP/1.1"]


async def test_gzip_response_body_arrives_byte_exact() -> None:
    """Guards against decompressing (or re-encoding) a compressed response body."""
    compressed = gzip.compress(b"hello gzip " * 5000)
    answer = reply(headers=[("Content-Encoding", "gzip")], body=compressed)
    backend = by_path({"/z": answer})
    async with (
        through_proxy(backend) as port,
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(f"http://127.0.0.1:{port}/z") as response,
    ):
        body = await response.read()
        encoding = response.headers.getall("Content-Encoding", [])

    assert encoding == ["gzip"]
    assert body == compressed


async def test_gzip_request_body_reaches_upstream_byte_exact() -> None:
    """Guards against decompressing a compressed upload on its way upstream."""
    compressed = gzip.compress(b"upload " * 5000)
    backend = RecordingBackend()
    headers = {"Content-Encoding": "gzip"}
    async with (
        through_proxy(backend) as port,
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{port}/up", data=compressed, headers=headers) as response,
    ):
        assert response.status == 200

    (seen,) = backend.requests
    assert seen.head.get_all("Content-Encoding") == ["gzip"]
    assert seen.body == compressed


async def test_no_headers_invented_in_either_direction() -> None:
    """Guards against the HTTP client/server libraries adding headers nobody sent."""
    invented_upstream = {"content-type", "accept", "accept-encoding", "user-agent", "server"}
    invented_client = {"content-type", "server", "accept", "accept-encoding", "user-agent"}
    answer = reply(body=b"bare")
    get = request_bytes("GET", "/", [("Host", "example.test")])
    post = request_bytes(
        "POST", "/", [("Host", "example.test"), ("Content-Length", "4")], body=b"data"
    )
    backend = by_path({"/": answer})
    async with through_proxy(backend) as port:
        get_head, get_body = await raw_request(port, get)
        post_head, post_body = await raw_request(port, post)

    assert (get_body, post_body) == (b"bare", b"bare")
    for head in (get_head, post_head):
        assert names(head) & invented_client == set(), head.headers
    for seen in backend.requests:
        assert names(seen.head) & invented_upstream == set(), seen.head.headers
    assert backend.requests[1].body == b"data"


# --- 7. Streaming bodies --------------------------------------------------------


async def test_large_upload_is_streamed_not_buffered() -> None:
    """Guards against buffering a whole upload in the proxy, and against corrupting it."""
    payload = os.urandom(BIG)
    first_chunk_upstream = asyncio.Event()

    async def upload(request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        async for piece in request.content.iter_chunked(CHUNK):
            first_chunk_upstream.set()
            digest.update(piece)
            size += len(piece)
        return web.json_response({"sha256": digest.hexdigest(), "size": size})

    async def body() -> AsyncIterator[bytes]:
        yield payload[:CHUNK]
        # Only a proxy that streams lets the backend see data before the upload ends.
        await first_chunk_upstream.wait()
        for offset in range(CHUNK, len(payload), CHUNK):
            yield payload[offset : offset + CHUNK]

    app = web.Application()
    app.router.add_post("/upload", upload)
    async with (
        aiohttp_backend(app) as backend_port,
        running_proxy(config_text(backend_port, extra=QUICK_STOP)) as (_, port),
        asyncio.timeout(10),
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{port}/upload", data=body()) as response,
    ):
        assert response.status == 200
        result = await response.json()

    assert result == {"sha256": hashlib.sha256(payload).hexdigest(), "size": BIG}


async def test_large_chunked_download_is_streamed_not_buffered() -> None:
    """Guards against buffering a whole response in the proxy, and against corrupting it."""
    payload = os.urandom(BIG)
    first_chunk_at_client = asyncio.Event()

    async def download(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # no Content-Length: chunked
        await response.prepare(request)
        await response.write(payload[:CHUNK])
        # Only a proxy that streams lets the client see data before the body ends.
        await first_chunk_at_client.wait()
        for offset in range(CHUNK, len(payload), CHUNK):
            await response.write(payload[offset : offset + CHUNK])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/download", download)
    received = bytearray()
    async with (
        aiohttp_backend(app) as backend_port,
        running_proxy(config_text(backend_port, extra=QUICK_STOP)) as (_, port),
        asyncio.timeout(10),
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/download") as response,
    ):
        assert response.status == 200
        encoding = response.headers.get("Transfer-Encoding")
        async for piece in response.content.iter_any():
            received += piece
            if len(received) >= CHUNK:
                first_chunk_at_client.set()

    assert encoding == "chunked"
    assert len(received) == BIG
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(payload).hexdigest()


# --- 8. Stale pooled connections ------------------------------------------------


async def one_request_per_connection(received: Received) -> bytes | None:
    """Answer keep-alive style, then drop the connection when it is reused.

    This is the race where a backend closes an idle connection just as the
    proxy picks it from the pool, made deterministic.
    """
    if received.index > 0:
        return None
    return reply(body=b"fresh")


async def test_idempotent_request_on_stale_pooled_connection_is_retried() -> None:
    """Guards against a 502 when a reused upstream connection turns out closed.

    aiohttp retries idempotent methods once on a fresh connection (RFC 9112
    §9.3.1.1); non-idempotent requests (POST, PATCH) are not retried, by
    design, because the backend may already have acted on them.
    """
    backend = RecordingBackend(one_request_per_connection)
    async with through_proxy(backend) as port:
        first = await raw_request(port, request_bytes("GET", "/1", [("Host", "h")]))
        second = await raw_request(port, request_bytes("GET", "/2", [("Host", "h")]))

    assert (first[0].status, first[1]) == (200, b"fresh")
    assert (second[0].status, second[1]) == (200, b"fresh")
    # /2 really went out on the pooled connection first, then on a new one.
    seen = [(r.head.start_line, r.connection, r.index) for r in backend.requests]
    assert seen == [
        ("GET /1 HTTP/1.1", 0, 0),
        ("GET /2 HTTP/1.1", 0, 1),
        ("GET /2 HTTP/1.1", 1, 0),
    ]


async def test_non_idempotent_request_on_stale_pooled_connection_is_not_retried() -> None:
    """Guards against replaying a POST the backend may already have acted on."""
    backend = RecordingBackend(one_request_per_connection)
    post = request_bytes("POST", "/order", [("Host", "h"), ("Content-Length", "5")], body=b"item1")
    async with through_proxy(backend) as port:
        first, _ = await raw_request(port, request_bytes("GET", "/1", [("Host", "h")]))
        second, _ = await raw_request(port, post)

    assert first.status == 200
    assert second.status == 502
    assert [r.head.start_line for r in backend.requests].count("POST /order HTTP/1.1") == 1


# --- 9. Status codes, reasons, HEAD, HTTP/1.0 framing ---------------------------


async def test_204_and_304_pass_through_without_body() -> None:
    """Guards against adding a body or framing to 204/304, which desyncs keep-alive clients."""
    backend = by_path(
        {
            "/204": reply(204, "No Content", content_length=False),
            "/304": reply(304, "Not Modified", [("ETag", '"v1"')], content_length=False),
        }
    )
    async with through_proxy(backend) as port, raw_connection(port) as (reader, writer):
        results = []
        for path in ("/204", "/304", "/after"):
            writer.write(request_bytes("GET", path, [("Host", "h")]))
            results.append(await read_response(reader))

    (h204, _), (h304, _), (after, after_body) = results
    assert h204.start_line == "HTTP/1.1 204 No Content"
    assert h204.get("Transfer-Encoding") is None
    assert h304.start_line == "HTTP/1.1 304 Not Modified"
    assert h304.get("ETag") == '"v1"'
    assert h304.get("Transfer-Encoding") is None
    # Any stray body bytes after 204/304 would have garbled this response.
    assert (after.status, after_body) == (200, b"ok")


async def test_head_response_keeps_content_length_without_body() -> None:
    """Guards against dropping HEAD's Content-Length or sending a body after it."""
    head_answer = reply(headers=[("Content-Length", "1234")], content_length=False)
    backend = by_path({"/doc": head_answer})
    async with through_proxy(backend) as port, raw_connection(port) as (reader, writer):
        writer.write(request_bytes("HEAD", "/doc", [("Host", "h")]))
        head, _ = await read_response(reader, "HEAD")
        writer.write(request_bytes("GET", "/after", [("Host", "h")]))
        after, after_body = await read_response(reader)

    assert head.status == 200
    assert head.get_all("Content-Length") == ["1234"]
    assert head.get("Transfer-Encoding") is None
    assert backend.requests[0].head.start_line == "HEAD /doc HTTP/1.1"
    # A body after the HEAD response would have garbled this one.
    assert (after.status, after_body) == (200, b"ok")


async def test_custom_reason_phrase_passes_through() -> None:
    """Guards against replacing the upstream's status line with a canned reason phrase."""
    backend = by_path({"/": reply(299, "Custom Thing", body=b"ok")})
    async with through_proxy(backend) as port:
        head, body = await raw_request(port, request_bytes("GET", "/", [("Host", "h")]))

    assert head.start_line == "HTTP/1.1 299 Custom Thing"
    assert body == b"ok"


async def test_http10_client_gets_close_delimited_body_for_chunked_upstream() -> None:
    """Guards against sending chunked framing, which HTTP/1.0 lacks, to an HTTP/1.0 client."""
    answer = reply(
        headers=[("Transfer-Encoding", "chunked")],
        body=chunked(b"hello", b" ", b"world"),
        content_length=False,
    )
    backend = by_path({"/chunked": answer})
    async with through_proxy(backend) as port:
        head, body = await read_to_eof(port, b"GET /chunked HTTP/1.0\r\n\r\n")

    assert head.status == 200
    assert head.get("Transfer-Encoding") is None, head.headers
    assert head.get("Content-Length") in (None, "11"), head.headers
    assert body == b"hello world"


# --- 10. Expect: 100-continue ---------------------------------------------------


async def test_expect_100_continue_is_answered_by_the_upstream() -> None:
    """The upstream's ``100`` reaches the client, so the client sends its body only
    when the upstream asked for it (a proxy that says ``100`` itself makes the client
    upload what the upstream is about to refuse)."""
    request = request_bytes(
        "POST",
        "/upload",
        [("Host", "h"), ("Content-Length", "11"), ("Expect", "100-continue")],
    )
    backend = RecordingBackend()
    async with through_proxy(backend) as port, raw_connection(port) as (reader, writer):
        writer.write(request)
        interim = await read_head(reader)
        writer.write(b"hello world")
        final, body = await read_response(reader)

    assert interim.start_line == "HTTP/1.1 100 Continue"
    assert (final.status, body) == (200, b"ok")
    (seen,) = backend.requests
    assert seen.body == b"hello world"
    assert seen.head.get_all("Expect") == ["100-continue"]


async def test_an_upstream_refusal_instead_of_100_reaches_the_client_and_the_body_is_not_sent() -> (
    None
):
    """The upstream answers ``417`` without reading the body: the client gets that
    answer, no ``100``, and the connection closes (its body was never read)."""

    async def refuse(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: Head
    ) -> bool:
        writer.write(b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 4\r\n\r\nnope")
        await writer.drain()
        return False

    request = request_bytes(
        "POST", "/upload", [("Host", "h"), ("Content-Length", "11"), ("Expect", "100-continue")]
    )
    async with (
        RawBackend(refuse) as backend,
        running_proxy(config_text(backend.port)) as (
            _server,
            port,
        ),
        raw_connection(port) as (reader, writer),
    ):
        writer.write(request)
        async with asyncio.timeout(5):
            head, body = await read_response(reader)
            assert (head.status, body) == (417, b"nope")
            assert head.get("Connection") == "close"
            assert await reader.read() == b""


async def test_an_http10_clients_expect_is_ignored() -> None:
    """RFC 9110 §10.1.1: an HTTP/1.0 request's 100-continue is ignored, never relayed."""
    backend = RecordingBackend()
    request = request_bytes(
        "POST",
        "/upload",
        [("Host", "h"), ("Content-Length", "2"), ("Expect", "100-continue")],
        body=b"hi",
        version="HTTP/1.0",
    )
    async with through_proxy(backend) as port:
        head, body = await raw_request(port, request)
    assert (head.status, body) == (200, b"ok")
    assert backend.requests[0].head.get_all("Expect") == []
