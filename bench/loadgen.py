"""The benchmark's load generator: picows clients on uvloop, one process.

    python bench/loadgen.py pingpong URL --connections N --seconds T --size B
    python bench/loadgen.py stream URL --connections N --seconds T --size B
    python bench/loadgen.py idle URL --connections N

``pingpong``: each connection keeps one message in flight (send, wait for
the echo, repeat); prints messages, p50/p99 latency.  ``stream``: each
connection keeps ``--window`` messages in flight; prints bytes echoed.
``idle``: opens N sessions, prints ``ready``, holds them until stdin closes.
Results are one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
import time

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
from procs import raise_file_limit  # type: ignore[import-not-found]


class PingPong(WSListener):
    def __init__(self, payload: bytes, deadline: float, latencies: list[int] | None) -> None:
        self.payload = payload
        self.deadline = deadline
        self.latencies = latencies
        self.messages = 0
        self.sent_at = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def start(self) -> None:
        self.sent_at = time.perf_counter_ns()
        assert self.transport is not None
        self.transport.send(WSMsgType.BINARY, self.payload)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.BINARY:
            return
        now = time.perf_counter_ns()
        self.messages += 1
        if self.latencies is not None:
            self.latencies.append(now - self.sent_at)
        if time.monotonic() >= self.deadline:
            if not self.done.done():
                self.done.set_result(None)
            return
        self.sent_at = now
        transport.send(WSMsgType.BINARY, self.payload)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError("disconnected during the run"))


class Stream(WSListener):
    def __init__(self, payload: bytes, window: int, deadline: float) -> None:
        self.payload = payload
        self.window = window
        self.deadline = deadline
        self.received = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def start(self) -> None:
        for _ in range(self.window):
            self.transport.send(WSMsgType.BINARY, self.payload)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.BINARY:
            return
        self.received += len(frame.get_payload_as_memoryview())
        if time.monotonic() >= self.deadline:
            if not self.done.done():
                self.done.set_result(None)
            return
        transport.send(WSMsgType.BINARY, self.payload)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError("disconnected during the run"))


class Idle(WSListener):
    """Holds its session; closed by ``idle`` once stdin closes."""

    transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport


def _tls_context(url: str) -> ssl.SSLContext | None:
    """wss:// on loopback, to the bench's own self-signed certificate:
    encrypted, not verified (bench/tls.py measures the proxies' TLS cost)."""
    if not url.startswith("wss://"):
        return None
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def connect_all(
    url: str, factory: object, count: int, batch: int = 200, source: str | None = None
) -> list[object]:
    listeners: list[object] = []
    context = _tls_context(url)
    local = {"local_addr": (source, 0)} if source else {}
    for start in range(0, count, batch):
        pairs = await asyncio.gather(
            *(
                ws_connect(  # type: ignore[call-overload]
                    factory, url, max_frame_size=64 * 1024 * 1024, ssl_context=context, **local
                )
                for _ in range(min(batch, count - start))
            )
        )
        listeners.extend(listener for _transport, listener in pairs)
    return listeners


def percentile(sorted_values: list[int], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[index] / 1000  # ns -> µs


async def pingpong(args: argparse.Namespace) -> dict[str, object]:
    payload = os.urandom(args.size)
    latencies: list[int] = []
    holder: dict[str, float] = {"deadline": float("inf")}
    clients = await connect_all(
        args.url,
        lambda: PingPong(payload, holder["deadline"], latencies if args.connections == 1 else None),
        args.connections,
        source=args.source,
    )
    started = time.monotonic()
    for client in clients:
        assert isinstance(client, PingPong)
        client.deadline = started + args.seconds
        client.start()
    await asyncio.gather(*(c.done for c in clients))  # type: ignore[attr-defined]
    elapsed = time.monotonic() - started
    messages = sum(c.messages for c in clients)  # type: ignore[attr-defined]
    for client in clients:
        if client.transport is not None:  # type: ignore[attr-defined]
            client.transport.disconnect()  # type: ignore[attr-defined]
    latencies.sort()
    return {
        "messages": messages,
        "seconds": elapsed,
        "msgs_per_s": messages / elapsed,
        "p50_us": percentile(latencies, 0.5),
        "p99_us": percentile(latencies, 0.99),
    }


async def stream(args: argparse.Namespace) -> dict[str, object]:
    payload = os.urandom(args.size)
    clients = await connect_all(
        args.url, lambda: Stream(payload, args.window, float("inf")), args.connections
    )
    started = time.monotonic()
    for client in clients:
        assert isinstance(client, Stream)
        client.deadline = started + args.seconds
        client.start()
    await asyncio.gather(*(c.done for c in clients))  # type: ignore[attr-defined]
    elapsed = time.monotonic() - started
    received = sum(c.received for c in clients)  # type: ignore[attr-defined]
    for client in clients:
        if client.transport is not None:  # type: ignore[attr-defined]
            client.transport.disconnect()  # type: ignore[attr-defined]
    return {
        "bytes": received,
        "messages": received // args.size,
        "seconds": elapsed,
        "mb_per_s": received / elapsed / 1e6,
    }


async def idle(args: argparse.Namespace) -> dict[str, object]:
    clients = await connect_all(args.url, Idle, args.connections)
    print(json.dumps({"ready": len(clients)}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    for client in clients:
        if client.transport is not None:  # type: ignore[attr-defined]
            client.transport.disconnect()  # type: ignore[attr-defined]
    return {"connections": len(clients)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["pingpong", "stream", "idle"])
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--window", type=int, default=2)
    parser.add_argument("--source", help="the local address to connect from (pingpong)")
    args = parser.parse_args()
    raise_file_limit()
    run = {"pingpong": pingpong, "stream": stream, "idle": idle}[args.mode]
    print(json.dumps(uvloop.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
