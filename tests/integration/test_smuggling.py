"""Differential smuggling test: the backend never sees a request the proxy did not
count and log.

Each probe of the corpus is a malformed or ambiguous request (framing
conflicts, obfuscated ``Transfer-Encoding``, bare LF, obs-fold, bad chunk
sizes, bodies that contain a request, upgrades with bodies, ...), followed on
the same connection by a canary request.  The proxy sets ``X-Request-ID`` on
everything it forwards, so every request the backend reads must carry exactly
one, and that ID must belong to one access-log line with the same method and
path: a request formed from bytes the proxy took for a body, or forwarded
without being counted, fails here.  The backend's parser is deliberately
lenient (it reads whatever the proxy sends as requests), as a confused
backend would be.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.support.http_backends import RecordingBackend
from tests.support.observe_helpers import observed_proxy
from tests.support.proxy import config_text
from wsproxy.target import parse_target

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
CANARY = b"GET /canary HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


CORPUS: dict[str, bytes] = {
    "cl-te": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n"
    b"\r\n0\r\n\r\n" + SMUGGLED,
    "te-cl": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n"
    b"\r\n0\r\n\r\n" + SMUGGLED,
    "two-equal-cl": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n"
    b"\r\nabc" + SMUGGLED,
    "two-different-cl": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 37\r\n"
    b"\r\n" + SMUGGLED,
    "cl-list": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0, 37\r\n\r\n" + SMUGGLED,
    "cl-plus": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +37\r\n\r\n" + SMUGGLED,
    "cl-negative": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n" + SMUGGLED,
    "cl-huge": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    "te-trailing-space": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked \r\n\r\n"
    b"0\r\n\r\n" + SMUGGLED,
    "te-xchunked": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"
    + SMUGGLED,
    "te-twice": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: identity\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "te-gzip-chunked": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    b"0\r\n\r\n" + SMUGGLED,
    "te-obs-fold": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"
    + SMUGGLED,
    "te-vertical-tab": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \x0bchunked\r\n\r\n"
    b"0\r\n\r\n" + SMUGGLED,
    "te-space-before-colon": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n"
    b"0\r\n\r\n" + SMUGGLED,
    "te-underscore": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer_Encoding: chunked\r\n"
    b"Content-Length: 5\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "te-http10": b"POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    + _chunk(SMUGGLED)
    + b"0\r\n\r\n",
    "bare-lf": b"POST / HTTP/1.1\nHost: h\nContent-Length: 37\n\n" + SMUGGLED,
    "bare-cr": b"POST / HTTP/1.1\rHost: h\r\nContent-Length: 37\r\n\r\n" + SMUGGLED,
    "chunk-size-space": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b" 0\r\n\r\n" + SMUGGLED,
    "chunk-size-0x": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0x25\r\n" + SMUGGLED + b"\r\n0\r\n\r\n",
    "chunk-size-overflow": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"10000000000000000025\r\n" + SMUGGLED + b"\r\n0\r\n\r\n",
    "chunk-lf-only": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\nabc\n0\n\n" + SMUGGLED,
    "chunk-missing-crlf": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabcXX0\r\n\r\n" + SMUGGLED,
    "chunk-ext-bad": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'3;x="\r\n\r\nabc\r\n0\r\n\r\n' + SMUGGLED,
    "chunk-body-looks-like-end": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    + _chunk(b"0\r\n\r\n" + SMUGGLED)
    + b"0\r\n\r\n",
    "trailer-content-length": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\nContent-Length: 37\r\n\r\n" + SMUGGLED,
    "body-contains-request": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 37\r\n\r\n" + SMUGGLED,
    "get-with-body": b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 37\r\n\r\n" + SMUGGLED,
    "connection-close-then-more": b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    + SMUGGLED,
    "h2c-with-body": b"POST / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n"
    b"Content-Length: 37\r\n\r\n" + SMUGGLED,
    "h2c-chunked-body": b"POST / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n" + _chunk(SMUGGLED) + b"0\r\n\r\n",
    "websocket-with-body": b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 37\r\n\r\n" + SMUGGLED,
    "websocket-refused-then-request": b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\n\r\n" + SMUGGLED,
    "connect": b"CONNECT h:80 HTTP/1.1\r\nHost: h:80\r\n\r\n" + SMUGGLED,
    "expect-then-body": b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
    b"Content-Length: 37\r\n\r\n" + SMUGGLED,
    "absolute-form": b"GET http://other/smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    "nul-in-header": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: h\r\nHost: evil\r\n\r\n",
    "double-space": b"GET  /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    "http09": b"GET /smuggled\r\n\r\n",
    "header-injection-in-target": b"GET /a%0d%0aX-Evil:%201 HTTP/1.1\r\nHost: h\r\n\r\n",
}


async def _send(port: int, raw: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw + CANARY)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        # Every probe ends with the connection closed: a hang is a failure.
        async with asyncio.timeout(5):
            with contextlib.suppress(ConnectionError):
                while await reader.read(65536):
                    pass
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.mark.parametrize("name", list(CORPUS))
async def test_the_backend_sees_only_requests_the_proxy_counted_and_logged(name: str) -> None:
    extra = "proxy:\n  keepalive_timeout: 300ms\n  client_header_timeout: 300ms\n"
    async with (
        RecordingBackend() as backend,
        observed_proxy(config_text(backend.port, extra=extra)) as obs,
    ):
        await _send(obs.port, CORPUS[name])
        records = obs.log_records()
        scrape = await obs.scrape()
    counted = sum(scrape.series("wsproxy_http_requests_total").values())
    assert counted == len(records)
    logged = {record["request_id"]: record for record in records}
    for received in backend.requests:
        ids = received.head.get_all("X-Request-ID")
        assert len(ids) == 1, (name, received.head)
        record = logged.get(ids[0])
        assert record is not None, (name, received.head.start_line)
        method, target, _version = received.head.start_line.split(" ")
        logged_path = parse_target(record["path"]).origin_form.split("?")[0]
        assert (record["method"], logged_path) == (method, target.split("?")[0])
    # The smuggled request, where one reached the backend, was a request the
    # client made on its own (pipelined, counted), never bytes of a body.
    bodies = b"".join(received.body for received in backend.requests)
    smuggled_heads = [r for r in backend.requests if r.head.start_line.startswith("GET /smug")]
    assert len(smuggled_heads) <= 1
    if smuggled_heads:
        assert SMUGGLED not in bodies
