"""One load process of the scale bench (bench/scale.py): opens and holds idle sessions.

    python bench/scaleclient.py URL --count N --burst B --source 127.0.0.K

Opens ``N`` WebSocket sessions from source address ``--source`` (one
address's ephemeral ports cap a process near 28,000; the bench gives each
process its own), ``B`` handshakes in flight at a time, and times each one
from the connect call to the ``101``. Then prints one JSON line (connect
latencies in ms, sorted, and the wall-clock span of the burst on the
system-wide monotonic clock, so the bench can merge processes) and holds the
sessions. Commands on stdin, one per line:

``count``
    prints ``{"open": n}``: sessions still open (the bench waits for its
    mass close with it);
``closed``
    prints ``{"last_closed": t}``: the monotonic time the last session saw
    its close, or null while some are open.

At the end of stdin every session is closed and the process exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time

import uvloop
from picows import WSListener, WSTransport, ws_connect
from procs import raise_file_limit  # type: ignore[import-not-found]


class Held(WSListener):
    """An idle session that notes when it ends."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.state.open += 1

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.state.open -= 1
        self.state.last_closed = time.monotonic()


#: Linux's IP_BIND_ADDRESS_NO_PORT (not in Python's socket module).
IP_BIND_ADDRESS_NO_PORT = 24


def bound_socket(source: str) -> socket.socket:
    """A socket bound to ``source`` whose port the kernel picks at connect().

    A plain bind((source, 0)) reserves the port number at bind() time, and
    Linux then keeps that number from every connect() on the machine that
    picks its own port, whatever the address: 30,000 sessions bound that way
    left the proxies too few ports to reach their backends (502s).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.setblocking(False)
    sock.bind((source, 0))
    return sock


class State:
    def __init__(self) -> None:
        self.open = 0
        self.last_closed = 0.0


async def run(args: argparse.Namespace) -> None:
    state = State()
    held: list[Held] = []
    latencies: list[float] = []
    failures: list[str] = []
    slots = asyncio.Semaphore(args.burst)

    async def one() -> None:
        async with slots:
            started = time.monotonic()
            try:
                _transport, listener = await ws_connect(
                    lambda: Held(state),
                    args.url,
                    socket_factory=lambda _url: bound_socket(args.source),
                    websocket_handshake_timeout=60,
                )
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                return
            latencies.append((time.monotonic() - started) * 1000)
            held.append(listener)

    began = time.monotonic()
    await asyncio.gather(*(one() for _ in range(args.count)))
    ended = time.monotonic()
    latencies.sort()
    print(
        json.dumps(
            {
                "opened": len(held),
                "failed": len(failures),
                "failures": sorted(set(failures))[:5],
                "began": began,
                "ended": ended,
                "latencies_ms": [round(value, 3) for value in latencies],
            }
        ),
        flush=True,
    )
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        command = line.strip()
        if not line:
            break
        if command == "count":
            print(json.dumps({"open": state.open}), flush=True)
        elif command == "closed":
            last = state.last_closed if state.open == 0 else None
            print(json.dumps({"last_closed": last}), flush=True)
    for listener in held:
        # (picows may return no listener for a connection that closed at once)
        if listener is not None and listener.transport is not None:
            listener.transport.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--burst", type=int, default=250)
    parser.add_argument("--source", default="127.0.0.1")
    args = parser.parse_args()
    raise_file_limit()
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
