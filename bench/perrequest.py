"""Where one proxied plain-HTTP request spends its Python time, without sockets.

Drives the real front door (wsproxy.http.front), pool connection
(wsproxy.http.pool), relay and proxy dispatch with in-memory transports: each
round feeds a client request, answers the upstream request the proxy wrote,
and lets the loop run the deferred steps.  The total is the proxy's own CPU
per request minus the system calls (the sockets are what the bench measures);
``--profile`` prints the per-function breakdown behind docs/performance.md.

    python bench/perrequest.py [--requests N] [--profile] [--log json|off]

This machine's neighbours move single figures by up to a quarter within minutes; to
compare two revisions, check the other one out (``git worktree add
/tmp/base REV``) and run ``--against /tmp/base``: both run in turns, each in
a fresh process importing its own ``wsproxy``, and the medians are compared.

``--instructions`` counts instead of timing: the machine instructions per
request under valgrind's callgrind (3,000 requests less 1,000, so start-up
cancels out), the same to about half a percent from run to run whatever the
neighbours do; with ``--against`` both trees are counted.  It finds what
timing cannot: a change of 1-2 %, or a C-level cost hidden behind one line
of Python (an Enum member looked up on its class, ``in`` on bytes).  Under
valgrind a request takes over a millisecond, so the access log formats its
timestamp for every line (it is kept for a millisecond): that part is
overstated by some 2,000 instructions.  Needs ``valgrind`` (Debian package).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httptools
import uvloop

from wsproxy.config import parse_config
from wsproxy.http.front import ClientConnection
from wsproxy.http.pool import UpstreamConnection
from wsproxy.server import ProxyServer, front_settings

REQUEST = b"GET /index.html?x=1 HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: wrk\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 07:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"
)


class MemoryTransport(asyncio.Transport):
    """Collects writes; everything else is a no-op."""

    def __init__(self, peer: tuple[str, int]) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self._peer = peer
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._peer if name == "peername" else default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


async def run(requests: int, log_format: str, profile: bool, sort: str = "cumulative") -> float:
    config = parse_config(
        f"""\
listen: [{{host: 127.0.0.1, port: 0}}]
admin: {{host: 127.0.0.1, port: 0}}
upstreams:
  web:
    servers: ["127.0.0.1:9"]
routes:
  - path_prefix: /
    upstream: web
access_log:
  format: {log_format}
""",
        "perrequest.yaml",
    )
    server = ProxyServer(config, access_log=open(os.devnull, "w"))  # noqa: SIM115, ASYNC230
    await server.proxy.open()
    proxy = server.proxy
    client = ClientConnection(proxy, front_settings(config))
    client_transport = MemoryTransport(("127.0.0.1", 40000))
    client.connection_made(client_transport)
    pool = proxy.upstreams.groups["web"].servers[0].pool
    upstream = UpstreamConnection(pool)
    upstream.connection_made(MemoryTransport(("127.0.0.1", 9)))
    pool.open += 1
    upstream.idle_since = time.monotonic()
    upstream._keep_alive = True
    pool.idle.append(upstream)

    async def one() -> None:
        client.data_received(REQUEST)
        upstream.data_received(RESPONSE)
        await asyncio.sleep(0)  # the deferred end of the request (request.done)
        await asyncio.sleep(0)

    micros = await timed(one, requests, profile, sort)
    assert client_transport.written[-1].endswith(b"ok"), client_transport.written[-1]
    return micros


async def timed(
    one: Callable[[], Awaitable[None]], rounds: int, profile: bool, sort: str = "cumulative"
) -> float:
    """Microseconds of process time per ``one()``, after 200 to warm up;
    with ``profile``, the functions behind them are printed (by ``sort``)."""
    for _ in range(200):
        await one()
    profiler = cProfile.Profile() if profile else None
    started = time.process_time()
    if profiler is not None:
        profiler.enable()
    for _ in range(rounds):
        await one()
    if profiler is not None:
        profiler.disable()
    elapsed = time.process_time() - started
    if profiler is not None:
        pstats.Stats(profiler).sort_stats(sort).print_stats(45)
    return elapsed / rounds * 1e6


def parser_only(requests: int) -> float:
    """llhttp on the same request and response with callbacks that only record."""

    class Sink:
        def on_url(self, url: bytes) -> None:
            self.url = url

        def on_header(self, name: bytes, value: bytes) -> None:
            self.last = (name, value)

        def on_body(self, body: bytes) -> None:
            self.body = body

    sink = Sink()
    request_parser = httptools.HttpRequestParser(sink)
    response_parser = httptools.HttpResponseParser(sink)
    started = time.process_time()
    for _ in range(requests):
        request_parser.feed_data(REQUEST)
        response_parser.feed_data(RESPONSE)
    return (time.process_time() - started) / requests * 1e6


class Patches:
    """Attribute replacements, undone together."""

    def __init__(self) -> None:
        self.saved: list[tuple[object, str, object]] = []

    def __call__(self, owner: object, attribute: str, value: object) -> None:
        self.saved.append((owner, attribute, getattr(owner, attribute)))
        setattr(owner, attribute, value)

    def undo(self) -> None:
        for owner, attribute, value in reversed(self.saved):
            setattr(owner, attribute, value)
        self.saved.clear()


def _nothing(*args: object, **kwargs: object) -> None:
    return None


def knockouts() -> dict[str, Callable[[Patches], None]]:
    """Each part of the per-request work, replaced by a constant answer."""
    import wsproxy.dispatch as server_module
    from wsproxy import forward
    from wsproxy.accesslog import AccessLog
    from wsproxy.headers import client_response_fields
    from wsproxy.metrics import HttpCollector

    fields = client_response_fields([(b"Server", b"nginx/1.22.1"), (b"Content-Length", b"2")])
    head = server_module.upstream_head_fast(
        "GET",
        "/index.html?x=1",
        [("Host", "localhost:8080"), ("User-Agent", "wrk")],
        "X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n",
        "0" * 32,
        chunked=False,
    )

    def access_log(patch: Patches) -> None:
        patch(AccessLog, "write_http", _nothing)

    def metrics(patch: Patches) -> None:
        patch(HttpCollector, "record", _nothing)

    def rewriting(patch: Patches) -> None:
        patch(server_module, "upstream_head_fast", lambda *a, **k: head)
        patch(forward, "client_response_fields", lambda *a, **k: fields)

    return {
        "access log line (JSON)": access_log,
        "metrics (counter, histogram)": metrics,
        "header rewriting (both directions)": rewriting,
    }


def best_of(rounds: int, requests: int, log: str) -> float:
    return min(uvloop.run(run(requests, log, False)) for _ in range(rounds))


def breakdown(requests: int, rounds: int) -> None:
    """What each part costs: the difference when it is replaced by a constant."""
    total = best_of(rounds, requests, "json")
    print(f"{'whole request (Python, no system calls)':42} {total:6.1f} µs")
    print(f"{'  llhttp parsing both messages (alone)':42} {parser_only(requests * 5):6.1f} µs")
    for name, knock in knockouts().items():
        patch = Patches()
        knock(patch)
        try:
            without = best_of(rounds, requests, "json")
        finally:
            patch.undo()
        print(f"{'  ' + name:42} {total - without:6.1f} µs")


def _one_process(tree: Path, requests: int, log: str) -> float:
    """This script's figure for the ``wsproxy`` of ``tree``, in a fresh process."""
    result = subprocess.run(
        [sys.executable, __file__, "--requests", str(requests), "--log", log],
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=True,
    )
    return float(result.stdout.split()[0])


def against(other: Path, requests: int, log: str, rounds: int) -> int:
    """Both revisions in turns; medians, and this one's as a share of the other's."""
    here = Path(__file__).resolve().parent.parent
    trees = {"this checkout": here, str(other): other.resolve()}
    figures: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(rounds):
        for name, tree in trees.items():
            figures[name].append(_one_process(tree, requests, log))
    medians = {name: statistics.median(values) for name, values in figures.items()}
    for name, values in figures.items():
        spread = f"{min(values):.1f}-{max(values):.1f}"
        print(f"{name:40} median {medians[name]:6.1f} µs  (range {spread})")
    mine, theirs = medians.values()
    print(f"this checkout / other: {mine / theirs:.2f}")
    return 0


def _instructions(tree: Path, requests: int, log: str, script: str = __file__) -> int:
    """Instructions callgrind counts for ``requests`` requests in a fresh
    process running ``script`` (this one, or bench/perhandshake.py)."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                script,
                "--requests",
                str(requests),
                "--log",
                log,
            ],
            env={**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"},
            capture_output=True,
            check=True,
        )
        for line in out.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError("callgrind wrote no total")


def instructions(
    trees: dict[str, Path], log: str, script: str = __file__, unit: str = "request"
) -> int:
    """Instructions per request (``unit``) for each tree: 3,000 less 1,000."""
    if shutil.which("valgrind") is None:
        print("--instructions needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    counts = {}
    for name, tree in trees.items():
        more, fewer = _instructions(tree, 3000, log, script), _instructions(tree, 1000, log, script)
        counts[name] = (more - fewer) / 2000
        print(f"{name:40} {counts[name]:9,.0f} instructions per {unit}")
    if len(counts) == 2:
        mine, theirs = counts.values()
        print(f"this checkout / other: {mine / theirs:.3f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--log", choices=["json", "text", "off"], default="json")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--breakdown", action="store_true", help="the cost of each part, by knocking it out"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--against",
        metavar="DIR",
        type=Path,
        help="another checkout: run both in turns (--rounds each) and compare medians",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per request with callgrind (and --against's tree too)",
    )
    args = parser.parse_args()
    if args.instructions:
        here = Path(__file__).resolve().parent.parent
        trees = {"this checkout": here}
        if args.against is not None:
            trees[str(args.against)] = args.against.resolve()
        return instructions(trees, args.log)
    if args.against is not None:
        return against(args.against, args.requests, args.log, args.rounds)
    if args.breakdown:
        breakdown(args.requests, args.rounds)
        return 0
    micros = uvloop.run(run(args.requests, args.log, args.profile))
    print(f"{micros:.1f} µs of Python per proxied request (access log {args.log})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
