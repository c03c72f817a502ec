"""Active health checks: ``GET health.path`` on every server of an upstream, on a timer.

One task per server (named ``health-check <upstream>/<server>``), started
with the configuration and cancelled with it.  Each probe opens its own
connection (so it also proves that connects work; it never takes a pooled
one a request could use), sends an HTTP/1.1 ``GET`` with ``Connection:
close``, and reads the status line within ``health.timeout``.  A ``2xx`` or
``3xx`` answer passes, like nginx's and HAProxy's default checks; anything
else, a refused or timed-out connect, or a malformed answer fails.  The
result goes to the health table (upstreams.health), which counts ``fails``
and ``passes`` in a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

from wsproxy.errors import UpstreamFailure, classify
from wsproxy.upstreams.health import Health
from wsproxy.upstreams.servers import Server

log = logging.getLogger("wsproxy.upstream")

#: ``HTTP/1.1 200 OK`` (the reason may be empty); nothing else is an answer.
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: [^\r\n]*)?\r?\n")
#: The longest status line read.
_MAX_STATUS_LINE = 1024


async def probe(server: Server, path: str, timeout: float) -> str | None:
    """One check: None when it passed, else what failed (for the log line)."""
    # Over TLS the Host matches the name checked and sent as SNI (a backend
    # may answer 421 to a Host that differs from its SNI).
    name = server.pool.server_hostname if server.pool.tls is not None else None
    host = name or server.address.host
    host = f"[{host}]" if ":" in host else host
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{server.address.port}\r\n"
        "User-Agent: wsproxy-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                server.address.host,
                server.address.port,
                limit=_MAX_STATUS_LINE,
                ssl=server.pool.tls,
                server_hostname=server.pool.server_hostname if server.pool.tls else None,
            )
            writer.write(request)
            line = await reader.readline()
    except TimeoutError:
        return "no answer within the check's timeout"
    except (OSError, ValueError, asyncio.LimitOverrunError) as exc:
        return str(classify(exc)) if isinstance(exc, OSError) else "invalid answer"
    finally:
        if writer is not None:
            writer.transport.abort()  # nothing more to read; no TIME_WAIT on our side
    match = _STATUS_LINE.fullmatch(line)
    if match is None:
        return "invalid answer" if line else "connection closed without an answer"
    status = int(match[1])
    return None if 200 <= status < 400 else f"status {status}"


class Checker:
    """The active checks of one configuration's upstreams."""

    def __init__(self, servers: list[Server], health: Health) -> None:
        self._servers = [server for server in servers if server.settings.health is not None]
        self._health = health
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for server in self._servers:
            name = f"health-check {server.group}/{server.label}"
            self._tasks.append(asyncio.create_task(self._run(server), name=name))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _run(self, server: Server) -> None:
        loop = asyncio.get_running_loop()
        while True:
            check = server.settings.health
            if check is None:
                return  # a reload took the checks away from this server
            started = loop.time()
            try:
                problem = await probe(server, check.path, check.timeout)
            except Exception as exc:  # never let one probe end the checks
                problem = str(UpstreamFailure("protocol", f"check failed: {type(exc).__name__}"))
                log.exception("health check of %s/%s failed", server.group, server.label)
            self._health.check_result(server, problem is None, problem or "")
            await asyncio.sleep(max(0.0, started + check.interval - loop.time()))
