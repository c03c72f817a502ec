"""The floor: the least a Python reverse proxy on uvloop and httptools costs here.

Two protocols and llhttp on both sides, one upstream connection per client
connection, no routing, no header rewriting beyond dropping ``Connection``,
no limits, timers, log or metrics.  Not a proxy to use: a yardstick.  Run it
beside wsproxy and nginx in the same interleaved wrk rounds to see how much
of wsproxy's cost per request is the event loop, the parser and the system
calls (this floor) and how much is wsproxy's own work.

    python bench/floor.py --port 18084 --upstream 127.0.0.1:18081
"""

from __future__ import annotations

import argparse
import asyncio
import socket

import httptools
import uvloop


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

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, self.upstream = await loop.create_connection(Upstream, *self.upstream_address)
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

    def on_url(self, url: bytes) -> None:
        self.url = url

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


async def serve(port: int, upstream: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: Client(upstream), "127.0.0.1", port, backlog=1024)
    await asyncio.Event().wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="HOST:PORT of a keep-alive origin")
    args = parser.parse_args()
    host, _, port = args.upstream.rpartition(":")
    uvloop.run(serve(args.port, (host, int(port))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
