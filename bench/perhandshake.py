"""What one WebSocket handshake costs wsproxy in Python, without sockets.

The handshake counterpart of bench/perrequest.py (whose memory transports
and callgrind counting it uses): each round accepts a client connection, feeds
it a browser's handshake, gives the proxy an upstream connection at once (the
connect is replaced by a memory transport), answers ``101``, lets the session
start, and then ends it from both sides.  What the kernel does for the
sockets is not counted: that is what bench/scale.py measures.

    python bench/perhandshake.py [--requests N] [--profile]
    python bench/perhandshake.py --instructions [--against DIR]

``--instructions`` counts machine instructions per handshake under callgrind
(3,000 less 1,000), the same to about half a percent from run to run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

import uvloop
from perrequest import MemoryTransport, instructions, timed  # type: ignore[import-not-found]

import wsproxy.websocket
from wsproxy.config import parse_config
from wsproxy.http.pool import UpstreamConnection
from wsproxy.listeners import PLAIN, Gate
from wsproxy.server import ProxyServer

#: What Chromium sends (its cookies and user agent shortened).
HANDSHAKE = (
    b"GET /ws/chat?room=1 HTTP/1.1\r\n"
    b"Host: example.com\r\n"
    b"Connection: Upgrade\r\n"
    b"Pragma: no-cache\r\n"
    b"Cache-Control: no-cache\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0.0.0 Safari/537.36\r\n"
    b"Upgrade: websocket\r\n"
    b"Origin: https://example.com\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"Cookie: session=0123456789abcdef\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    b"\r\n"
)
SWITCHED = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    b"\r\n"
)


class SocketTransport(MemoryTransport):
    """A memory transport with what a tunnel asks of its two sockets."""

    def __init__(self, peer: tuple[str, int]) -> None:
        super().__init__(peer)
        self.protocol: Any = None

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol  # type: ignore[no-any-return]

    def write_eof(self) -> None:
        pass

    def abort(self) -> None:
        self._closing = True

    def get_write_buffer_size(self) -> int:
        return 0


async def turns_until(done: Any, most: int = 50) -> None:
    for _ in range(most):
        if done():
            return
        await asyncio.sleep(0)
    raise RuntimeError("the handshake did not get there")


async def run(handshakes: int, log_format: str, profile: bool) -> float:
    config = parse_config(
        f"""\
listen: [{{host: 127.0.0.1, port: 0}}]
admin: {{host: 127.0.0.1, port: 0}}
upstreams:
  ws:
    servers: ["127.0.0.1:9"]
routes:
  - path_prefix: /
    upstream: ws
    # Sessions here last microseconds: none is an early close to warn about.
    websocket: {{early_close_window: 0s}}
access_log:
  format: {log_format}
""",
        "perhandshake.yaml",
    )
    server = ProxyServer(config, access_log=open(os.devnull, "w"))  # noqa: SIM115, ASYNC230
    await server.proxy.open()
    upstreams: list[UpstreamConnection] = []

    async def connect(*args: Any, **kwargs: Any) -> UpstreamConnection:
        factory = args[2]
        connection = factory()
        connection.connection_made(SocketTransport(("127.0.0.1", 9)))
        upstreams.append(connection)
        return connection  # type: ignore[no-any-return]

    wsproxy.websocket.connect = connect  # type: ignore[assignment]
    gate = Gate()

    async def one() -> None:
        client = server._connection(gate, PLAIN)
        gate.take()
        client.connection_made(SocketTransport(("127.0.0.1", 40000)))
        client.data_received(HANDSHAKE)
        await turns_until(lambda: upstreams)
        upstreams.pop().data_received(SWITCHED)
        await turns_until(lambda: server.sessions)
        [tunnel] = server.sessions
        client_side, upstream_side = tunnel.client_side, tunnel.upstream_side
        client_side.connection_lost(None)
        upstream_side.connection_lost(None)
        ends = getattr(server, "ends", None)  # (EndReports; older trees report at once)
        await turns_until(lambda: not server.sessions and not (ends and ends.waiting))

    return await timed(one, handshakes, profile, "tottime")  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5000, help="handshakes")
    parser.add_argument("--log", choices=["json", "text", "off"], default="json")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--against", metavar="DIR", type=Path)
    parser.add_argument("--instructions", action="store_true")
    args = parser.parse_args()
    if args.instructions:
        trees = {"this checkout": Path(__file__).resolve().parent.parent}
        if args.against is not None:
            trees[str(args.against)] = args.against.resolve()
        return instructions(trees, args.log, __file__, "handshake")  # type: ignore[no-any-return]
    micros = uvloop.run(run(args.requests, args.log, args.profile))
    print(f"{micros:.1f} µs of Python per WebSocket session (handshake, start, end)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
