"""Tunnel throughput and proxy CPU per message, frame observer on versus off.

Starts, each in its own process: a minimal WebSocket echo backend, and two
wsproxy instances in front of it (``proxy.observe_frames: true`` and
``false``, otherwise shipped defaults). The load generator (this process, on
uvloop) runs interleaved rounds (on, off, on, off, ...) of the same workload
against each and reports medians: messages per second and the proxy's CPU
microseconds per message, read from /proc/PID/stat. CPU per message is the
number to trust on a 2-core machine where the load generator competes for
cores; throughput is reported as measured.

    .venv/bin/python bench/observer.py [--seconds 3] [--rounds 3] [--size 64]

Results go to bench/results/observer-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procs import (  # type: ignore[import-not-found]
    cpu_seconds,
    free_port,
    observer_config,
    wait_port,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KEY = base64.b64encode(b"0123456789abcdef").decode()


def accept_for(head: bytes) -> bytes:
    """RFC 6455 §4.2.2: the Sec-WebSocket-Accept for the request head's key."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            digest = hashlib.sha1(value.strip() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
            return base64.b64encode(digest)
    return b""


def client_frame(payload: bytes) -> bytes:
    """A masked text frame (mask of zeros keeps payload readable; still masked)."""
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


def server_frame(payload: bytes) -> bytes:
    return bytes([0x81, len(payload)]) + payload


# --- the echo backend (run as a subprocess: bench/observer.py backend PORT SIZE) ---


class EchoBackend(asyncio.Protocol):
    """Answers the handshake, then one fixed-size server frame per client frame."""

    def __init__(self, size: int) -> None:
        self.in_size = len(client_frame(b"x" * size))
        self.reply = server_frame(b"x" * size)
        self.switched = False
        self.buffer = b""
        self.pending = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if not self.switched:
            self.buffer += data
            if b"\r\n\r\n" not in self.buffer:
                return
            head, rest = self.buffer.split(b"\r\n\r\n", 1)
            self.switched = True
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept_for(head) + b"\r\n\r\n"
            )
            data = rest
        self.pending += len(data)
        count, self.pending = divmod(self.pending, self.in_size)
        if count:
            self.transport.write(self.reply * count)


def run_backend(port: int, size: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: EchoBackend(size), "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


# --- the load generator ---------------------------------------------------


class PingPong(asyncio.Protocol):
    """One message in flight per connection: send, wait for the echo, repeat."""

    def __init__(self, size: int, deadline: float, done: asyncio.Future[int]) -> None:
        self.frame = client_frame(b"x" * size)
        self.reply_size = len(server_frame(b"x" * size))
        self.deadline = deadline
        self.done = done
        self.switched = False
        self.buffer = b""
        self.received = 0
        self.messages = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(  # type: ignore[attr-defined]
            b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + KEY.encode() + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if not self.switched:
            self.buffer += data
            if b"\r\n\r\n" not in self.buffer:
                return
            head, data = self.buffer.split(b"\r\n\r\n", 1)
            if not head.startswith(b"HTTP/1.1 101"):
                self.done.set_exception(RuntimeError(head.decode(errors="replace")))
                return
            self.switched = True
            self.transport.write(self.frame)
        self.received += len(data)
        while self.received >= self.reply_size:
            self.received -= self.reply_size
            self.messages += 1
            if time.monotonic() >= self.deadline:
                if not self.done.done():
                    self.done.set_result(self.messages)
                self.transport.close()
                return
            self.transport.write(self.frame)


async def ping_pong(port: int, size: int, connections: int, seconds: float) -> int:
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + seconds
    futures = []
    for _ in range(connections):
        done: asyncio.Future[int] = loop.create_future()
        await loop.create_connection(lambda d=done: PingPong(size, deadline, d), "127.0.0.1", port)
        futures.append(done)
    async with asyncio.timeout(seconds + 10):
        return sum(await asyncio.gather(*futures))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=64, help="message payload bytes (< 126)")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    import uvloop

    processes: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="wsproxy-bench-"))
    try:
        backend_port = free_port()
        processes.append(
            subprocess.Popen(
                [sys.executable, __file__, "backend", str(backend_port), str(args.size)]
            )
        )
        wait_port(backend_port, processes[-1], "backend")
        proxies: dict[str, tuple[int, int]] = {}
        for name, observe in (("observer on", True), ("observer off", False)):
            port = free_port()
            config = tmp / f"{'on' if observe else 'off'}.yaml"
            config.write_text(observer_config(port, backend_port, observe))
            proc = subprocess.Popen(
                [sys.executable, "-m", "wsproxy", "serve", "-c", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=ROOT,
            )
            processes.append(proc)
            wait_port(port, proc, f"wsproxy ({name})")
            proxies[name] = (port, proc.pid)

        results: dict[str, dict[str, list[float]]] = {}
        for connections in args.connections:
            for _ in range(args.rounds):
                for name, (port, pid) in proxies.items():  # interleaved: on, off, on, off
                    before = cpu_seconds(pid)
                    messages = uvloop.run(ping_pong(port, args.size, connections, args.seconds))
                    cpu = cpu_seconds(pid) - before
                    key = f"{name}, {connections} conn"
                    entry = results.setdefault(key, {"msgs_per_s": [], "cpu_us_per_msg": []})
                    entry["msgs_per_s"].append(messages / args.seconds)
                    entry["cpu_us_per_msg"].append(cpu / max(messages, 1) * 1e6)

        summary = {
            key: {
                "msgs_per_s": statistics.median(values["msgs_per_s"]),
                "cpu_us_per_msg": statistics.median(values["cpu_us_per_msg"]),
                "rounds": values,
            }
            for key, values in results.items()
        }
        print(f"{args.size}-byte messages, ping-pong, {args.rounds} rounds of {args.seconds}s")
        print(f"{'':28} {'msgs/s':>10} {'proxy CPU µs/msg':>18}")
        for key, value in summary.items():
            print(f"{key:28} {value['msgs_per_s']:>10.0f} {value['cpu_us_per_msg']:>18.2f}")
        args.out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        out = args.out / f"observer-{stamp}.json"
        out.write_text(
            json.dumps(
                {
                    "workload": "ping-pong",
                    "size": args.size,
                    "seconds": args.seconds,
                    "rounds": args.rounds,
                    "results": summary,
                },
                indent=2,
            )
        )
        print(f"written to {out}")
    finally:
        for proc in processes:
            proc.terminate()
        for proc in processes:
            proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "backend":
        run_backend(int(sys.argv[2]), int(sys.argv[3]))
    else:
        raise SystemExit(main())
