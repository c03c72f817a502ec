"""The floor: the least a Python reverse proxy on uvloop and httptools costs here.

Two protocols and llhttp on both sides, one upstream connection per client
connection, no routing, no header rewriting beyond dropping ``Connection``,
no limits, timers, log or metrics.  Not a proxy to use: a yardstick for
what wrk sends to the bench's origin (bodyless GETs, one at a time per
connection, answered with ``Content-Length``): no pipelining, no request
bodies, no chunked responses, the reason phrase always ``OK``.  Run it
beside wsproxy and nginx in the same interleaved wrk rounds (for example
``wrk -t1 -c50 -d4s`` against each in turn, CPU from ``/proc/PID/stat``) to
see how much of wsproxy's cost per request is the event loop, the parser
and the system calls (this floor) and how much is wsproxy's own work.

    python bench/floor.py --port 18084 --upstream 127.0.0.1:18081 [--extras]

``--extras`` adds what wsproxy does for every request, with wsproxy's own
functions: the index of field names, the forwarded headers and request ID
on the fast upstream head (headers.untouched, forward.upstream_head_fast),
the notable response fields and the relayed field block
(headers.client_response_fields), the request counter and duration histogram
(metrics.HttpCollector) and the JSON access-log line (accesslog.AccessLog,
to stdout).  The difference between the two modes is the price of those
features; the difference between ``--extras`` and wsproxy is the price of
the rest of its machinery.

``--websocket`` is the same yardstick for opening WebSocket sessions, as
bench/scale.py runs it beside nginx, HAProxy and wsproxy: llhttp reads the
client's handshake, an upstream connection is made for it (round robin over
``--upstream``'s comma-separated servers), the head goes there with only
``X-Forwarded-For`` added, llhttp reads the ``101``, its head goes back,
and from then on each side's bytes are written to the other.  No checks,
routing, session record, metrics or log: what a session's opening costs any
Python proxy on this event loop and parser.

    python bench/floor.py --websocket --port 18084 --upstream 127.0.0.1:18081,127.0.0.1:18082
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import secrets
import socket
import sys
import time
from pathlib import Path

import httptools
import uvloop

from wsproxy.accesslog import AccessLog
from wsproxy.config import AccessLogSettings
from wsproxy.forward import upstream_head_fast
from wsproxy.headers import (
    NOTABLE_LENGTHS,
    NOTABLE_RESPONSE_FIELDS,
    NotableField,
    client_response_fields,
    untouched,
)
from wsproxy.metrics import HttpCollector
from wsproxy.observe import Exchange


class Extras:
    """wsproxy's per-request work, shared by every connection (``--extras``)."""

    def __init__(self) -> None:
        self.log = AccessLog(AccessLogSettings(format="json"), sys.stdout)
        self.metrics = HttpCollector()
        self.prefix = secrets.token_hex(8)
        self.counter = itertools.count()


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Upstream(asyncio.Protocol):
    """One upstream connection; the response goes to the client that asked."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.client: Client | None = None
        self.transport: asyncio.Transport | None = None
        self.fields: list[bytes] = []
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _nodelay(transport)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.fields = []

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() != b"connection":
            self.fields.append(b"%s: %s\r\n" % (name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self.head = b"HTTP/1.1 %d OK\r\n%s\r\n" % (status, b"".join(self.fields))

    def on_body(self, body: bytes) -> None:
        if self.client is None:
            return
        if self.head:
            body, self.head = self.head + body, b""
        self.client.write(body)

    def on_message_complete(self) -> None:
        if self.client is not None and self.head:
            self.client.write(self.head)
        self.head = b""
        self.client = None


class UpstreamWithExtras(Upstream):
    """The same, with wsproxy's response-field handling and the request's end."""

    def on_message_begin(self) -> None:
        self.pairs: list[tuple[bytes, bytes]] = []
        self.notable: list[NotableField] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        pairs = self.pairs
        if len(name) in NOTABLE_LENGTHS:
            lower = name.lower()
            if lower in NOTABLE_RESPONSE_FIELDS:
                self.notable.append((len(pairs), lower, value))
        pairs.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        fields = client_response_fields(self.pairs, self.notable)
        self.head = b"HTTP/1.1 %d OK\r\n%s\r\n" % (status, fields)

    def on_message_complete(self) -> None:
        client = self.client
        super().on_message_complete()
        if isinstance(client, ClientWithExtras):
            client.finished(200)


class Client(asyncio.Protocol):
    """One client connection with its own upstream connection."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.upstream_address = upstream
        self.upstream: Upstream | None = None
        self.transport: asyncio.Transport | None = None
        self.waiting: list[bytes] | None = []
        self.url = b""
        self.fields: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _nodelay(transport)
        asyncio.get_running_loop().create_task(self._connect())

    upstream_factory: type[Upstream] = Upstream

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, self.upstream = await loop.create_connection(
            self.upstream_factory, *self.upstream_address
        )
        waiting, self.waiting = self.waiting or [], None
        for data in waiting:
            self.parser.feed_data(data)

    def data_received(self, data: bytes) -> None:
        if self.waiting is not None:
            self.waiting.append(data)
        else:
            self.parser.feed_data(data)

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def on_message_begin(self) -> None:
        self.fields = []
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url  # llhttp reports a target split across reads in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append(b"%s: %s\r\n" % (name, value))

    def on_headers_complete(self) -> None:
        upstream = self.upstream
        assert upstream is not None
        assert upstream.transport is not None
        upstream.client = self
        method = self.parser.get_method()
        head = b"%s %s HTTP/1.1\r\n%s\r\n" % (method, self.url, b"".join(self.fields))
        upstream.transport.write(head)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


class ClientWithExtras(Client):
    """The same, with wsproxy's request-side work and its count and log line."""

    upstream_factory = UpstreamWithExtras

    def __init__(self, upstream: tuple[str, int], extras: Extras) -> None:
        super().__init__(upstream)
        self.extras = extras
        self.peer = "unknown"
        self.forwarded = ""
        self.exchange: Exchange | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = f"{host}:{port}"
        self.forwarded = f"X-Forwarded-For: {host}\r\nX-Forwarded-Proto: http\r\n"

    def on_message_begin(self) -> None:
        self.pairs: list[tuple[str, str]] = []
        self.index: dict[str, list[str]] = {}
        self.started = time.monotonic()
        self.url = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1")
        text = value.decode("latin-1")
        self.pairs.append((key, text))
        lower = key.lower()
        if lower in self.index:
            self.index[lower].append(text)
        else:
            self.index[lower] = [text]

    def on_headers_complete(self) -> None:
        upstream = self.upstream
        assert upstream is not None
        assert upstream.transport is not None
        upstream.client = self
        extras = self.extras
        method = self.parser.get_method().decode("ascii")
        target = self.url.decode("latin-1")
        request_id = f"{extras.prefix}{next(extras.counter):016x}"
        self.exchange = Exchange(request_id, method, target, self.peer, "HTTP/1.1", self.started)
        self.exchange.route = "/"
        self.exchange.upstream = "web"
        self.exchange.server = "origin"
        assert untouched(self.index)  # what wrk sends (no Connection, no "_")
        host = self.index["host"][0].strip()
        head = upstream_head_fast(
            method,
            target,
            self.pairs,
            f"{self.forwarded}X-Forwarded-Host: {host}\r\n",
            request_id,
            chunked=False,
        )
        upstream.transport.write(head)

    def finished(self, status: int) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        self.exchange = None
        duration = time.monotonic() - exchange.started
        self.extras.metrics.record(exchange.route, exchange.method, status, duration)
        self.extras.log.write_http(exchange, status, duration)


# -- --websocket: opening sessions ----------------------------------------------


class Splice(asyncio.Protocol):
    """After the ``101``: what one side sends is written to the other.

    An end of file on one side closes both (no half-close): enough for
    sessions that end with the backend, as the scale bench's do."""

    def __init__(self, peer: asyncio.Transport) -> None:
        self.peer = peer

    def data_received(self, data: bytes) -> None:
        self.peer.write(data)

    def eof_received(self) -> bool | None:
        self.peer.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.peer.close()


class WsUpstream(asyncio.Protocol):
    """The upstream side of one handshake, until its ``101`` is read.

    Any other answer closes both sides without being passed on."""

    def __init__(self, client: WsClient) -> None:
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        #: The answer's bytes read before the read that completes its head.
        self.head: list[bytes] = []
        self.complete = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        client, upstream = self.client.transport, self.transport
        assert client is not None
        assert upstream is not None
        if client.is_closing():  # the client left before the 101
            upstream.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            end = int(exc.args[0])  # where the head ends in this read
            self.head.append(data[:end])
            client.write(b"".join(self.head))  # the 101's head as the server wrote it
            client.set_protocol(Splice(upstream))
            upstream.set_protocol(Splice(client))
            if end < len(data):
                client.write(data[end:])
            return
        except httptools.HttpParserError:
            self.complete = True
        if self.complete:
            upstream.close()
            client.close()
        else:
            self.head.append(data)

    def on_message_complete(self) -> None:
        self.complete = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client.transport is not None:
            self.client.transport.close()


class WsClient(asyncio.Protocol):
    """The client side of one handshake: its head is read, then sent on.

    Bytes the client sends after its head (before the ``101``) follow the
    head upstream, in order."""

    def __init__(self, upstreams: itertools.cycle[tuple[str, int]]) -> None:
        self.upstreams = upstreams
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.url = b""
        self.fields: list[bytes] = []
        #: The head and what came after it, until the upstream is connected.
        self.waiting: list[bytes] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")[0]
        self.fields.append(b"X-Forwarded-For: %s\r\n" % peer.encode())

    def data_received(self, data: bytes) -> None:
        if self.upstream is not None:
            self.upstream.write(data)
            return
        if self.waiting is not None:
            self.waiting.append(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            head = b"GET %s HTTP/1.1\r\n%s\r\n" % (self.url, b"".join(self.fields))
            self.waiting = [head, data[int(exc.args[0]) :]]
            asyncio.get_running_loop().create_task(self._connect())
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append(b"%s: %s\r\n" % (name, value))

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_connection(
                lambda: WsUpstream(self), *next(self.upstreams)
            )
        except OSError:
            assert self.transport is not None
            self.transport.close()
            return
        if self.lost:
            transport.close()
            return
        self.upstream = transport
        transport.write(b"".join(self.waiting or ()))
        self.waiting = None

    def connection_lost(self, exc: Exception | None) -> None:
        # Before the 101 (after it, Splice is the protocol): no session.
        self.lost = True
        if self.upstream is not None:
            self.upstream.close()


async def serve(
    port: int, upstreams: list[tuple[str, int]], extras: bool, websocket: bool, backlog: int
) -> None:
    loop = asyncio.get_running_loop()
    shared = Extras() if extras else None
    cycle = itertools.cycle(upstreams)

    def factory() -> asyncio.Protocol:
        if websocket:
            return WsClient(cycle)
        if shared is None:
            return Client(upstreams[0])
        return ClientWithExtras(upstreams[0], shared)

    await loop.create_server(factory, "127.0.0.1", port, backlog=backlog)
    await asyncio.Event().wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--upstream",
        required=True,
        help="HOST:PORT of an origin (with --websocket, several, comma-separated)",
    )
    parser.add_argument("--extras", action="store_true", help="wsproxy's per-request work too")
    parser.add_argument("--websocket", action="store_true", help="open WebSocket sessions instead")
    args = parser.parse_args()
    upstreams = []
    for server in args.upstream.split(","):
        host, _, port = server.rpartition(":")
        upstreams.append((host, int(port)))
    # The backlog wsproxy uses by default: the system's somaxconn.
    backlog = int(Path("/proc/sys/net/core/somaxconn").read_text())
    uvloop.run(serve(args.port, upstreams, args.extras, args.websocket, backlog))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
