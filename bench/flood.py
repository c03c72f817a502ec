"""How much one flooding WebSocket session hurts another session's latency.

A client that writes empty masked frames (6 bytes each) as fast as the socket
takes them, or a backend that floods empty unmasked frames (2 bytes each),
makes a frame observer that parses headers one by one do tens of thousands of
parses per read. This benchmark measures what that does to a second,
well-behaved session on the same proxy.

Starts, each in its own process: a raw WebSocket backend (``/echo``,
``/sink``, ``/source``; correct ``Sec-WebSocket-Accept``), and two wsproxy
instances in front of it (``proxy.observe_frames: true`` and ``false``, access
log off, otherwise shipped defaults); "direct" (straight to the backend) is the
baseline. For each target and each flood mode, in interleaved rounds:

* ``none``: no flood;
* ``c2u``: a flooder process opens a session to ``/sink`` and writes masked
  empty frames as fast as the socket takes them;
* ``u2c``: a flooder process opens a session to ``/source``, whose backend
  writes unmasked empty frames as fast as the transport takes them, and reads
  and discards as fast as it can.

The flooder prints a line once its handshake is done; after that and a fixed
warm-up (``--warmup``, 0.5 s by default, so that every buffer on the path is
full) the victim (this process, on uvloop) opens one session to ``/echo`` and
sends one 64-byte masked text message at a time, the next as soon as the echo
arrives (``--pause-ms`` adds a pause between messages; 0 by default), for
``--seconds``. A handshake or an echo that does not arrive within
``--timeout`` (10 s) ends the round and is recorded as a timeout, with the
time waited as a latency sample, so p99 and max never hide it (the round-trip
count is of echoes received). Between rounds the benchmark waits until the
proxies and the backend are idle again (a proxy may still be chewing through
a flood's backlog when the flooder exits).

Reported per target and mode, medians over rounds: the victim's round-trip
p50, p99 and max in milliseconds, round trips, timeouts, the victim's
handshake time, the proxy's CPU seconds during the victim's run (from /proc),
and the bytes the flooder moved (the abuser should still be served).

    .venv/bin/python bench/flood.py [--seconds 5] [--rounds 3] [--out DIR]
                                     [--wsproxy-root PATH]

``--wsproxy-root`` runs the proxies from another checkout (for instance a git
worktree of an older commit): it is their working directory and PYTHONPATH.
Results go to bench/results/flood-<UTC timestamp>.json (or ``--out``). The
proxies' configurations and stderr are in a temporary directory, removed at
the end unless ``--keep``.

Subprocess entry points (started by the benchmark itself):

    python bench/flood.py backend PORT
    python bench/flood.py flooder PORT MODE SECONDS    (MODE: c2u or u2c)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import math
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from procs import (  # type: ignore[import-not-found]
    cpu_seconds,
    free_port,
    observer_config,
    wait_port,
)

#: The proxies' access log would only add its own cost to the victim's latency.
ACCESS_LOG_OFF = 'access_log:\n  format: "off"\n'

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCRIPT = str(Path(__file__).resolve())
KEY = base64.b64encode(b"0123456789abcdef").decode()
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
MODES = ("none", "c2u", "u2c")
TARGETS = ("direct", "observer on", "observer off")
#: An empty masked binary frame (the mask is arbitrary), 6 bytes.
CLIENT_EMPTY_FRAME = b"\x82\x80" + b"\x5a\xa5\x3c\xc3"
#: An empty unmasked binary frame, 2 bytes.
SERVER_EMPTY_FRAME = b"\x82\x00"
READY = "ready"


def accept_value(key: str) -> str:
    """RFC 6455 §4.2.2: base64(SHA-1(key + GUID))."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def handshake_request(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def check_response(head: bytes) -> None:
    """Raise unless ``head`` (without the blank line) is a 101 with the right accept."""
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 101"):
        raise RuntimeError(f"handshake refused: {lines[0]!r}")
    headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
    accept = {k.strip().lower(): v.strip() for k, v in headers.items()}.get("sec-websocket-accept")
    if accept != accept_value(KEY):
        raise RuntimeError(f"wrong Sec-WebSocket-Accept: {accept!r}")


def masked_frame(opcode: int, payload: bytes, mask: bytes = b"\x37\xfa\x21\x3d") -> bytes:
    assert len(payload) < 126
    masked = bytes(byte ^ mask[i & 3] for i, byte in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


# --- the backend (a subprocess: bench/flood.py backend PORT) ---------------


class Backend(asyncio.Protocol):
    """Answers the handshake with a correct 101, then behaves by request path.

    ``/echo``: one unmasked frame back per client frame (same opcode and
    payload); ``/sink``: discards everything; ``/source``: writes empty
    unmasked binary frames for as long as the transport accepts them.
    """

    SOURCE_BLOCK = SERVER_EMPTY_FRAME * 32768  # 64 KiB

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.path: str | None = None
        self.buffer = bytearray()
        self.paused = False
        self.pumping = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.path is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 65536:
                    self.transport.close()
                return
            data = bytes(self.head[end + 4 :])
            if not self.handshake(bytes(self.head[:end])):
                return
        if self.path == "/echo":
            self.buffer += data
            self.echo()
        # /sink and /source: discard.

    def handshake(self, head: bytes) -> bool:
        assert self.transport is not None
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        key = headers.get("sec-websocket-key")
        path = parts[1].split("?", 1)[0] if len(parts) == 3 else ""
        if key is None or path not in ("/echo", "/sink", "/source"):
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            self.transport.close()
            return False
        self.path = path
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept_value(key).encode()
            + b"\r\n\r\n"
        )
        if path == "/source":
            self.pumping = True
            self.loop.call_soon(self.pump)
        return True

    def echo(self) -> None:
        """Answer every complete frame in the buffer; keep a partial one."""
        assert self.transport is not None
        buffer = self.buffer
        pos = 0
        out = []
        while len(buffer) - pos >= 2:
            first, second = buffer[pos], buffer[pos + 1]
            length = second & 0x7F
            header = 2
            if length == 126:
                header = 4
            elif length == 127:
                header = 10
            masked = second & 0x80
            if masked:
                header += 4
            if len(buffer) - pos < header:
                break
            if length == 126:
                length = int.from_bytes(buffer[pos + 2 : pos + 4], "big")
            elif length == 127:
                length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
            end = pos + header + length
            if len(buffer) < end:
                break
            payload = bytes(buffer[pos + header : end])
            if masked:
                mask = buffer[pos + header - 4 : pos + header]
                payload = bytes(byte ^ mask[i & 3] for i, byte in enumerate(payload))
            opcode = first & 0x0F
            if length < 126:
                out.append(bytes([0x80 | opcode, length]) + payload)
            elif length < 65536:
                out.append(bytes([0x80 | opcode, 126]) + length.to_bytes(2, "big") + payload)
            else:
                out.append(bytes([0x80 | opcode, 127]) + length.to_bytes(8, "big") + payload)
            pos = end
            if opcode == 0x8:  # close: answer it and end the session
                self.transport.write(b"".join(out))
                self.transport.close()
                buffer.clear()
                return
        del buffer[:pos]
        if out:
            self.transport.write(b"".join(out))

    def pump(self) -> None:
        """Write one block; go on at the next loop iteration unless paused."""
        assert self.transport is not None
        if self.paused or self.closed or self.transport.is_closing():
            self.pumping = False
            return
        self.transport.write(self.SOURCE_BLOCK)  # may call pause_writing()
        if self.paused:
            self.pumping = False
        else:
            self.loop.call_soon(self.pump)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.path == "/source" and not self.pumping:
            self.pumping = True
            self.loop.call_soon(self.pump)


def run_backend(port: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Backend, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


# --- the flooder (a subprocess: bench/flood.py flooder PORT MODE SECONDS) ---


def run_flooder(port: int, mode: str, seconds: float) -> None:
    """One session: flood, then print a JSON line of what moved and close.

    Prints ``ready`` once the handshake is done, then floods until SIGTERM (the
    benchmark sends it when the victim is done) or for ``seconds`` at most. A
    blocking socket with a short timeout, so the stop flag and the deadline
    are checked even while the proxy does not read.
    """
    if mode not in ("c2u", "u2c"):
        raise SystemExit(f"unknown flood mode {mode!r}")
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(handshake_request("/sink" if mode == "c2u" else "/source"))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("flooder: connection closed during the handshake")
        head += chunk
    response, _, _ = head.partition(b"\r\n\r\n")
    check_response(response)
    stopped = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopped
        stopped = True

    signal.signal(signal.SIGTERM, on_term)
    print(READY, flush=True)
    sock.settimeout(0.25)
    moved = 0
    error = None
    started = time.monotonic()
    deadline = started + seconds
    try:
        if mode == "c2u":
            block = memoryview(CLIENT_EMPTY_FRAME * 43690)  # 262,140 bytes, whole frames
            offset = 0
            while not stopped and time.monotonic() < deadline:
                try:
                    sent = sock.send(block[offset:])
                except TimeoutError:
                    continue
                moved += sent
                offset = (offset + sent) % len(block)
        else:
            buffer = bytearray(1 << 20)
            while not stopped and time.monotonic() < deadline:
                try:
                    received = sock.recv_into(buffer)
                except TimeoutError:
                    continue
                if not received:
                    error = "closed by the peer"
                    break
                moved += received
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    elapsed = time.monotonic() - started
    sock.close()
    print(json.dumps({"bytes": moved, "seconds": elapsed, "error": error}), flush=True)


# --- the victim (in this process, on uvloop) --------------------------------


def percentile(ordered: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None for an empty one)."""
    if not ordered:
        return None
    return ordered[max(1, math.ceil(len(ordered) * fraction)) - 1]


async def victim(port: int, seconds: float, timeout: float, pause: float) -> dict[str, Any]:
    """One session to /echo: one 64-byte message in flight, round trips timed."""
    payload = bytes(range(48, 48 + 64))
    frame = masked_frame(0x1, payload)
    expected = bytes([0x81, len(payload)]) + payload
    samples: list[float] = []  # seconds, timed-out waits included
    completed = 0
    timeouts = 0
    error = None
    writer = None
    handshake_ms = None
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(handshake_request("/echo"))
            head = await reader.readuntil(b"\r\n\r\n")
        check_response(head[:-4])
        handshake_ms = (time.perf_counter() - start) * 1e3
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            writer.write(frame)
            try:
                async with asyncio.timeout(timeout):
                    echo = await reader.readexactly(len(expected))
            except TimeoutError:
                timeouts += 1
                samples.append(time.perf_counter() - sent)
                break
            samples.append(time.perf_counter() - sent)
            completed += 1
            if echo != expected:
                raise RuntimeError(f"unexpected echo {echo[:16]!r}...")
            if pause:
                await asyncio.sleep(pause)
    except TimeoutError:
        timeouts += 1
        error = "handshake timed out"
        handshake_ms = (time.perf_counter() - start) * 1e3
        samples.append(handshake_ms / 1e3)
    except (OSError, RuntimeError, asyncio.IncompleteReadError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        if writer is not None:
            writer.close()
    ordered = [sample * 1e3 for sample in sorted(samples)]
    return {
        "p50_ms": percentile(ordered, 0.50),
        "p99_ms": percentile(ordered, 0.99),
        "max_ms": ordered[-1] if ordered else None,
        "count": completed,
        "timeouts": timeouts,
        "handshake_ms": handshake_ms,
        "error": error,
    }


# --- the driver ---------------------------------------------------------------


def median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def cell(value: float | None, width: int, digits: int) -> str:
    return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def round_line(target: str, mode: str, result: dict[str, Any]) -> str:
    flood = result["flood"]
    line = (
        f"{target:12} {mode:4}  p50 {cell(result['p50_ms'], 8, 2)} ms"
        f"  p99 {cell(result['p99_ms'], 9, 2)} ms  max {cell(result['max_ms'], 9, 2)} ms"
        f"  echoes {result['count']}  handshake {cell(result['handshake_ms'], 0, 1)} ms"
    )
    if flood is not None:
        line += f"  flooder {flood['bytes'] / 1e6:.1f} MB"
        if not flood["covered_victim"]:
            line += "  FLOOD ENDED BEFORE THE VICTIM"
        if flood["error"]:
            line += f"  flooder error: {flood['error']}"
    if result["timeouts"]:
        line += f"  timeouts {result['timeouts']}"
    if result["error"]:
        line += f"  error: {result['error']}"
    return line


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """One line from ``proc``'s stdout, or RuntimeError past ``timeout``."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError(f"no line from the flooder within {timeout}s")
    return proc.stdout.readline().decode().strip()


def wait_idle(pids: list[int], timeout: float = 60.0) -> float:
    """Wait until ``pids`` use under 10% of a core over 0.2 s; return the wait."""
    start = time.monotonic()
    before = sum(cpu_seconds(pid) for pid in pids)
    while time.monotonic() - start < timeout:
        time.sleep(0.2)
        now = sum(cpu_seconds(pid) for pid in pids)
        if now - before < 0.02:
            break
        before = now
    return time.monotonic() - start


def checkout_info(root: Path, env: dict[str, str]) -> dict[str, Any]:
    """Which wsproxy the proxies import, and the checkout's commit."""
    imported = subprocess.run(
        [sys.executable, "-c", "import wsproxy; print(wsproxy.__file__)"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    commit = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout.strip()
    diff = subprocess.run(
        ["git", "-C", str(root), "diff", "HEAD", "--", "wsproxy"],
        capture_output=True,
        timeout=30,
        check=False,
    ).stdout
    return {
        "wsproxy_module": imported,
        "commit": commit,
        "wsproxy_dirty": bool(diff),
        # Identifies the uncommitted state measured (untracked files aside).
        "wsproxy_diff_sha1": hashlib.sha1(diff).hexdigest() if diff else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="victim time per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=0.5, help="flood before the victim")
    parser.add_argument("--timeout", type=float, default=10.0, help="longest wait for an echo")
    parser.add_argument("--pause-ms", type=float, default=0.0, help="pause between messages")
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--wsproxy-root", type=Path, default=ROOT)
    parser.add_argument(
        "--keep", action="store_true", help="keep the proxies' configurations and stderr"
    )
    args = parser.parse_args()
    root = args.wsproxy_root.resolve()

    import uvloop

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    checkout = checkout_info(root, env)
    print(
        f"wsproxy from {checkout['wsproxy_module']} (commit {checkout['commit'][:12]}"
        f"{', wsproxy/ modified' if checkout['wsproxy_dirty'] else ''})"
    )

    processes: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="wsproxy-flood-"))
    try:
        backend_port = free_port()
        backend = subprocess.Popen([sys.executable, SCRIPT, "backend", str(backend_port)])
        processes.append(backend)
        wait_port(backend_port, backend, "backend")
        targets: dict[str, tuple[int, int | None]] = {}
        if "direct" in args.targets:
            targets["direct"] = (backend_port, None)
        for name, observe in (("observer on", True), ("observer off", False)):
            if name not in args.targets:
                continue
            port = free_port()
            config = tmp / f"{'on' if observe else 'off'}.yaml"
            config.write_text(observer_config(port, backend_port, observe, ACCESS_LOG_OFF))
            # The proxies' stderr (early-close warnings) goes to a log file.
            log_path = tmp / f"{'on' if observe else 'off'}.log"
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "wsproxy", "serve", "-c", str(config)],
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    cwd=root,
                    env=env,
                )
            processes.append(proc)
            try:
                wait_port(port, proc, f"wsproxy ({name})")
            except RuntimeError as exc:
                detail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{exc}\n{detail}") from exc
            targets[name] = (port, proc.pid)
        servers = [backend.pid] + [pid for _, pid in targets.values() if pid is not None]

        # The flooder stops on SIGTERM once the victim is done; this is only its cap.
        flood_seconds = args.warmup + args.seconds + 2 * args.timeout + 10
        rounds: dict[str, dict[str, list[dict[str, Any]]]] = {
            target: {mode: [] for mode in args.modes} for target in targets
        }
        for number in range(args.rounds):
            for mode in args.modes:
                for target, (port, pid) in targets.items():  # interleaved
                    settled = wait_idle(servers)
                    flooder = None
                    flood: dict[str, Any] | None = None
                    if mode != "none":
                        flooder = subprocess.Popen(
                            [
                                sys.executable,
                                SCRIPT,
                                "flooder",
                                str(port),
                                mode,
                                str(flood_seconds),
                            ],
                            stdout=subprocess.PIPE,
                        )
                        processes.append(flooder)
                        line = read_line(flooder, 15)
                        if line != READY:
                            raise RuntimeError(f"flooder did not start: {line!r}")
                        time.sleep(args.warmup)  # the documented warm-up
                    proxy_before = cpu_seconds(pid) if pid is not None else 0.0
                    backend_before = cpu_seconds(backend.pid)
                    wall = time.perf_counter()
                    result = uvloop.run(
                        victim(port, args.seconds, args.timeout, args.pause_ms / 1e3)
                    )
                    wall = time.perf_counter() - wall
                    result["proxy_cpu_s"] = (
                        cpu_seconds(pid) - proxy_before if pid is not None else None
                    )
                    result["backend_cpu_s"] = cpu_seconds(backend.pid) - backend_before
                    result["wall_s"] = wall
                    result["settle_s"] = settled
                    if flooder is not None:
                        # Still flooding when the victim ended? (It should be.)
                        covered = flooder.poll() is None
                        flooder.send_signal(signal.SIGTERM)
                        out, _ = flooder.communicate(timeout=30)
                        lines = out.decode().strip().splitlines()
                        if flooder.returncode != 0 or not lines:
                            raise RuntimeError(f"flooder exited with {flooder.returncode}")
                        flood = json.loads(lines[-1])
                        flood["covered_victim"] = covered
                        processes.remove(flooder)
                    result["flood"] = flood
                    rounds[target][mode].append(result)
                    print(f"round {number + 1}: {round_line(target, mode, result)}", flush=True)

        summary: dict[str, dict[str, dict[str, Any]]] = {}
        for target, by_mode in rounds.items():
            for mode, results in by_mode.items():
                floods = [r["flood"] for r in results if r["flood"] is not None]
                summary.setdefault(target, {})[mode] = {
                    "p50_ms": median([r["p50_ms"] for r in results]),
                    "p99_ms": median([r["p99_ms"] for r in results]),
                    "max_ms": median([r["max_ms"] for r in results]),
                    "count": median([r["count"] for r in results]),
                    "timeouts": sum(r["timeouts"] for r in results),
                    "errors": sum(r["error"] is not None for r in results),
                    "handshake_ms": median([r["handshake_ms"] for r in results]),
                    "wall_s": median([r["wall_s"] for r in results]),
                    "proxy_cpu_s": median([r["proxy_cpu_s"] for r in results]),
                    "proxy_cpu_pct": median(
                        [
                            r["proxy_cpu_s"] / r["wall_s"] * 100
                            if r["proxy_cpu_s"] is not None
                            else None
                            for r in results
                        ]
                    ),
                    "flooder_mb": median([f["bytes"] / 1e6 for f in floods]),
                    "flooder_mb_per_s": median([f["bytes"] / 1e6 / f["seconds"] for f in floods]),
                    "rounds": results,
                }

        print()
        print(
            f"victim: one 64-byte message in flight, {args.rounds} rounds of {args.seconds}s, "
            f"medians (flood warm-up {args.warmup}s, pause {args.pause_ms} ms)"
        )
        header = (
            f"{'target':13} {'flood':5} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} "
            f"{'echoes':>7} {'timeouts':>8} {'hs ms':>8} {'victim s':>8} {'proxy CPU s':>11} "
            f"{'CPU %':>5} {'flooder MB':>10} {'MB/s':>7}"
        )
        print(header)
        print("-" * len(header))

        for target, summaries in summary.items():
            for mode, value in summaries.items():
                print(
                    f"{target:13} {mode:5} {cell(value['p50_ms'], 9, 2)} "
                    f"{cell(value['p99_ms'], 9, 2)} {cell(value['max_ms'], 9, 1)} "
                    f"{cell(value['count'], 7, 0)} {value['timeouts']:>8} "
                    f"{cell(value['handshake_ms'], 8, 1)} {cell(value['wall_s'], 8, 1)} "
                    f"{cell(value['proxy_cpu_s'], 11, 2)} {cell(value['proxy_cpu_pct'], 5, 0)} "
                    f"{cell(value['flooder_mb'], 10, 1)} {cell(value['flooder_mb_per_s'], 7, 1)}"
                )
        args.out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        out = args.out / f"flood-{stamp}.json"
        out.write_text(
            json.dumps(
                {
                    "workload": "victim ping-pong under a flooding session",
                    "size": 64,
                    "seconds": args.seconds,
                    "rounds": args.rounds,
                    "warmup": args.warmup,
                    "timeout": args.timeout,
                    "pause_ms": args.pause_ms,
                    "wsproxy_root": str(root),
                    "proxy_logs": str(tmp) if args.keep else None,
                    **checkout,
                    "results": summary,
                },
                indent=2,
            )
        )
        print(f"written to {out}" + (f"; the proxies' stderr is in {tmp}" if args.keep else ""))
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in processes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "backend":
        run_backend(int(sys.argv[2]))
    elif len(sys.argv) == 5 and sys.argv[1] == "flooder":
        run_flooder(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]))
    else:
        raise SystemExit(main())
