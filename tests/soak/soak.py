"""The soak: many WebSockets and plain HTTP through a ``wsproxy serve`` process
that is reloaded on a timer, every byte checked.  ``make test-soak`` runs it.

What it does, for ``--seconds`` (default 60):

* an echo backend (aiohttp, in this process) behind a real ``wsproxy serve``
  subprocess, configured from a file;
* ``--sessions`` WebSocket clients (default 1,000), each sending a message
  of random size and content at random intervals and checking that the echo
  is the same bytes;
* plain HTTP clients beside them, checking every body;
* a SIGHUP every ``--reload-every`` seconds (default 10), alternating two
  valid configurations (a route added and removed), each confirmed by the
  reload counter on ``/metrics``.

Nothing may be lost: every session must stay open until the clients close
it, every echo must match, every HTTP answer must be right, every reload must
succeed, and SIGTERM must end the process with status 0.  It prints one
report (messages, bytes checked, requests, reloads, the proxy's RSS at the
start and the end) and exits 1 on the first kind of loss it saw.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import resource
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import WSMsgType, web

from tests.support.process import free_port

LOOPBACK = "127.0.0.1"


@dataclass
class Tally:
    messages: int = 0
    bytes_checked: int = 0
    requests: int = 0
    reloads: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)


def body_for(path: str) -> bytes:
    """What the backend answers for ``path``: derived from it, so it can be checked."""
    digest = hashlib.sha256(path.encode()).hexdigest().encode()
    return digest * (1 + len(path) % 50)


def backend_app() -> web.Application:
    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        async for message in ws:
            if message.type is WSMsgType.BINARY:
                await ws.send_bytes(message.data)
            elif message.type is WSMsgType.TEXT:
                await ws.send_str(message.data)
        return ws

    async def data(request: web.Request) -> web.Response:
        return web.Response(body=body_for(request.path))

    app = web.Application()
    app.router.add_get("/ws", echo)
    app.router.add_get("/{tail:.*}", data)
    return app


def config(port: int, admin: int, backend: int, variant: int) -> str:
    extra_route = "  - path_prefix: /alt\n    upstream: app\n" if variant % 2 else ""
    return f"""\
listen:
  - host: {LOOPBACK}
    port: {port}
admin:
  host: {LOOPBACK}
  port: {admin}
upstreams:
  app:
    servers: ["{LOOPBACK}:{backend}"]
routes:
  - path_prefix: /
    upstream: app
{extra_route}shutdown:
  grace_period: 5s
access_log:
  format: "off"
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def wait_listening(port: int, process: asyncio.subprocess.Process) -> None:
    async with asyncio.timeout(15):
        while True:
            if process.returncode is not None:
                raise SystemExit(f"wsproxy exited with {process.returncode} before listening")
            try:
                _reader, writer = await asyncio.open_connection(LOOPBACK, port)
            except OSError:
                await asyncio.sleep(0.05)  # polling under a deadline
                continue
            writer.close()
            return


async def reload_count(http: aiohttp.ClientSession, admin: int) -> float:
    async with http.get(f"http://{LOOPBACK}:{admin}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith('wsproxy_config_reloads_total{result="success"}'):
            return float(line.split()[-1])
    return -1.0


async def session(
    http: aiohttp.ClientSession, port: int, ident: int, stop: asyncio.Event, tally: Tally
) -> None:
    rng = random.Random(ident)
    try:
        async with http.ws_connect(f"http://{LOOPBACK}:{port}/ws", max_msg_size=0) as ws:
            seq = 0
            while not stop.is_set():
                size = 65536 if seq % 20 == 19 else rng.randint(1, 4096)
                payload = f"{ident}:{seq}:".encode() + rng.randbytes(size)
                await ws.send_bytes(payload)
                reply = await ws.receive(timeout=30)
                if reply.type is not WSMsgType.BINARY or reply.data != payload:
                    tally.problem(f"session {ident} message {seq}: echo differs ({reply.type})")
                    return
                tally.messages += 1
                tally.bytes_checked += len(payload)
                seq += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), rng.uniform(0.5, 1.5))
            if ws.closed:
                tally.problem(f"session {ident} was closed by the other end ({ws.close_code})")
    except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
        tally.problem(f"session {ident}: {type(exc).__name__}: {exc}")


async def plain_http(
    http: aiohttp.ClientSession, port: int, worker: int, stop: asyncio.Event, tally: Tally
) -> None:
    count = 0
    while not stop.is_set():
        path = f"/data/{worker}/{count}"
        try:
            async with http.get(f"http://{LOOPBACK}:{port}{path}") as response:
                body = await response.read()
        except (aiohttp.ClientError, ConnectionError) as exc:
            tally.problem(f"GET {path}: {type(exc).__name__}: {exc}")
            return
        if response.status != 200 or body != body_for(path):
            tally.problem(f"GET {path}: status {response.status}, body differs")
            return
        tally.requests += 1
        tally.bytes_checked += len(body)
        count += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.005)  # a steady stream, not a flood


async def reloads(
    process: asyncio.subprocess.Process,
    http: aiohttp.ClientSession,
    path: Path,
    ports: tuple[int, int, int],
    every: float,
    stop: asyncio.Event,
    tally: Tally,
) -> None:
    variant = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        if stop.is_set():
            return
        variant += 1
        path.write_text(config(*ports, variant))  # noqa: ASYNC240 - a few hundred bytes
        before = await reload_count(http, ports[1])
        process.send_signal(signal.SIGHUP)
        try:
            async with asyncio.timeout(5):
                # The counter is the only signal a reload gives from outside.
                while await reload_count(http, ports[1]) <= before:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        except TimeoutError:
            tally.problem(f"reload {variant} was not counted as a success within 5s")
            return
        tally.reloads += 1


async def run(seconds: float, sessions: int, every: float) -> int:
    tally = Tally()
    runner = web.AppRunner(backend_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, 0, backlog=4096)
    await site.start()
    backend = runner.addresses[0][1]
    port, admin = free_port(), free_port()
    workdir = Path(tempfile.mkdtemp(prefix="wsproxy-soak-"))
    path = workdir / "proxy.yaml"
    path.write_text(config(port, admin, backend, 0))
    stderr = (workdir / "stderr.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wsproxy",
        "serve",
        "-c",
        str(path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=stderr,
    )
    report: dict[str, object] = {}
    try:
        await wait_listening(port, process)
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            stop = asyncio.Event()
            tasks = []
            for start in range(0, sessions, 100):  # opened in bursts of 100
                tasks += [
                    asyncio.create_task(session(http, port, i, stop, tally), name=f"ws-{i}")
                    for i in range(start, min(start + 100, sessions))
                ]
                await asyncio.sleep(0.05)  # pacing the bursts, not synchronization
            tasks += [
                asyncio.create_task(plain_http(http, port, w, stop, tally), name=f"http-{w}")
                for w in range(4)
            ]
            tasks.append(
                asyncio.create_task(
                    reloads(process, http, path, (port, admin, backend), every, stop, tally),
                    name="reloads",
                )
            )
            await asyncio.sleep(min(5.0, seconds / 4))  # let every session open first
            rss_start = rss_kib(process.pid)
            started = time.monotonic()
            await asyncio.sleep(max(0.0, seconds - (time.monotonic() - started)))
            rss_end = rss_kib(process.pid)
            stop.set()
            await asyncio.gather(*tasks)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            status = await process.wait()
        if status != 0:
            tally.problem(f"wsproxy exited with status {status} after SIGTERM")
        expected_reloads = int(seconds // every)
        if tally.reloads < expected_reloads:
            tally.problem(f"{tally.reloads} reloads done, {expected_reloads} expected")
        report = {
            "seconds": seconds,
            "sessions": sessions,
            "messages_checked": tally.messages,
            "http_requests_checked": tally.requests,
            "bytes_checked": tally.bytes_checked,
            "reloads": tally.reloads,
            "rss_start_kib": rss_start,
            "rss_end_kib": rss_end,
            "lost": len(tally.problems),
            "problems": tally.problems,
        }
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        stderr.close()
        await runner.cleanup()
    print(json.dumps(report, indent=2))
    if tally.problems:
        print(f"SOAK FAILED; wsproxy's stderr is in {workdir / 'stderr.log'}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 60)))
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--reload-every", type=float, default=10.0)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the proxy inherits it
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run(args.seconds, args.sessions, args.reload_every))
    return uvloop.run(run(args.seconds, args.sessions, args.reload_every))


if __name__ == "__main__":
    sys.exit(main())
