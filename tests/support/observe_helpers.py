"""Helpers for the observability tests: a proxy whose access log and admin port a test reads.

:func:`observed_proxy` starts the real :class:`ProxyServer` with the access log
going to a ``StringIO`` and an aiohttp client pointed at the admin listener, so
a test can scrape ``/metrics`` (parsed by prometheus_client's own parser),
read ``/status.json`` and the log lines the proxy wrote.  Waiting is always a
poll of observable state under an overall timeout, never a bare sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.proxy import config_text
from tests.support.ws_helpers import Frame, Script, handshake, raw_client, scripted
from wsproxy.config import parse_config
from wsproxy.server import ProxyServer

T = TypeVar("T")

Labels = frozenset[tuple[str, str]]


@dataclass(frozen=True)
class Scrape:
    """One ``/metrics`` answer: every sample by name and label set."""

    samples: dict[tuple[str, Labels], float]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples: dict[tuple[str, Labels], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return cls(samples)

    def value(self, name: str, **labels: str) -> float | None:
        """The sample with exactly these labels, or None when it is absent."""
        return self.samples.get((name, frozenset(labels.items())))

    def series(self, name: str, **labels: str) -> dict[Labels, float]:
        """Every sample of ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return {
            sample_labels: value
            for (sample_name, sample_labels), value in self.samples.items()
            if sample_name == name and wanted <= sample_labels
        }


async def eventually(
    probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = 5.0
) -> T:
    """Call ``probe`` every 10 ms until it returns something other than None."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                result = await probe()
                if result is not None:
                    return result
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


def scrape_now(server: ProxyServer) -> Scrape:
    """The server's metrics, read in-process (also once its admin port is gone)."""
    return Scrape.parse(generate_latest(server.observability.metrics.registry).decode())


def closes(server: ProxyServer) -> dict[tuple[str, str, str], float]:
    """``wsproxy_websocket_closes_total`` by (route, closed_by, code)."""
    return {
        (dict(labels)["route"], dict(labels)["closed_by"], dict(labels)["code"]): value
        for labels, value in scrape_now(server).series("wsproxy_websocket_closes_total").items()
    }


@dataclass
class Observed:
    """A running proxy, its front port, its access log and a client for its admin port."""

    server: ProxyServer
    port: int
    log: io.StringIO
    http: aiohttp.ClientSession

    @property
    def admin_url(self) -> str:
        host, port = self.server.admin_address
        return f"http://{host}:{port}"

    async def get(self, path: str) -> tuple[int, str, str]:
        """GET an admin path: status, full Content-Type header, body text."""
        async with self.http.get(self.admin_url + path) as response:
            return response.status, response.headers["Content-Type"], await response.text()

    async def scrape(self) -> Scrape:
        status, _content_type, text = await self.get("/metrics")
        assert status == 200, status
        return Scrape.parse(text)

    async def status_json(self) -> dict[str, Any]:
        async with self.http.get(self.admin_url + "/status.json") as response:
            assert response.status == 200
            data: dict[str, Any] = await response.json()
            return data

    async def sample(self, name: str, **labels: str) -> Scrape:
        """Scrape until the sample ``name{labels}`` exists; return that scrape."""

        async def probe() -> Scrape | None:
            scrape = await self.scrape()
            return scrape if scrape.value(name, **labels) is not None else None

        return await eventually(probe, f"{name}{labels}")

    def log_text(self) -> str:
        """What the access log holds: the lines the process keeps for its next
        write are written first (accesslog.AccessLog batches them)."""
        self.server.observability.access_log.flush()
        return self.log.getvalue()

    def log_lines(self) -> list[str]:
        return self.log_text().splitlines()

    def log_records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_lines()]

    async def log_has(self, count: int) -> list[str]:
        """Wait until at least ``count`` access-log lines were written; return them all."""

        async def probe() -> list[str] | None:
            lines = self.log_lines()
            return lines if len(lines) >= count else None

        return await eventually(probe, f"{count} access log line(s)")

    async def sessions_ended(self) -> None:
        """Wait until the proxy holds no open WebSocket session."""

        async def probe() -> bool | None:
            return True if not self.server.sessions else None

        await eventually(probe, "every WebSocket session to end")

    async def sessions_open(self, count: int) -> None:
        """Wait until the proxy holds ``count`` open WebSocket sessions."""

        async def probe() -> bool | None:
            return True if len(self.server.sessions) == count else None

        await eventually(probe, f"{count} open WebSocket session(s)")


@contextlib.asynccontextmanager
async def observed_proxy(text: str) -> AsyncIterator[Observed]:
    """The real proxy from YAML ``text``, its access log captured in memory."""
    log = io.StringIO()
    server = ProxyServer(parse_config(text, "t.yaml"), access_log=log)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Observed(server, server.addresses[0][1], log, http)
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def one_session(
    script: Script, extra: str = "", route_extra: str = ""
) -> AsyncIterator[tuple[Observed, asyncio.StreamReader, asyncio.StreamWriter]]:
    """A scripted backend, the proxy in front of it (config_text plus ``extra``
    and ``route_extra``) and one raw client whose handshake got its ``101``."""
    backend, _sessions = scripted(script)
    async with backend:
        text = config_text(backend.port, extra=extra, route_extra=route_extra)
        async with observed_proxy(text) as obs, raw_client(obs.port) as (reader, writer):
            await handshake(reader, writer, obs.port)
            yield obs, reader, writer


async def read_frame_sized(reader: asyncio.StreamReader) -> tuple[Frame, int]:
    """One frame decoded by hand (RFC 6455 §5.2), and how many bytes it took on the wire."""
    first, second = await reader.readexactly(2)
    size = 2
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        size += 2
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
        size += 8
    key = await reader.readexactly(4) if second & 0x80 else b""
    payload = await reader.readexactly(length)
    size += len(key) + length
    if key:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    frame = Frame(
        fin=bool(first & 0x80),
        rsv1=bool(first & 0x40),
        opcode=first & 0x0F,
        masked=bool(key),
        payload=payload,
    )
    return frame, size
