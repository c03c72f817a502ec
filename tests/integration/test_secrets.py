"""No secret from a request target reaches anything the proxy writes.

With ``access_log.redact_query: true`` (the default) a token in a query (with
or without ``=``), in a path parameter (``;jsessionid=``) or in the userinfo
of an absolute-form target must not appear in the access log, any log record
at any level (tracebacks included), ``/status.json``, ``/metrics`` or a body
the proxy itself writes; ``Authorization`` values of a malformed request
neither.  Every path a request can take is exercised over real sockets: a
normal answer, an upstream that answers garbage echoing the request line, a
refused upstream, an early-closing WebSocket, an open WebSocket while the
status page is read, a request the parser refuses.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.support.backends import RawBackend, Seen, recording
from tests.support.http_backends import RecordingBackend, request_bytes
from tests.support.observe_helpers import observed_proxy
from tests.support.process import free_port
from tests.support.proxy import two_upstreams_text
from tests.support.wire import Head, handshake_request, read_head, read_until_closed
from tests.support.ws_helpers import LOOPBACK, raw_client

SECRET = "S3CR3T"
#: The secret as it may also appear: percent-encoded, lower-case escapes.
SPELLINGS = (SECRET, "%53%33CR3T", "%53%33%43%52%33%54", "s3cr3t")
TARGETS = [
    f"/x?{SECRET}",
    f"/x?a=1&{SECRET}",
    f"/x?token={SECRET}",
    "/x?t=%53%33CR3T",
    f"/x;jsessionid={SECRET}/y",
    f"/x;{SECRET}",
    f"http://user:{SECRET}@example/x",
    f"/x#access_token={SECRET}",  # refused (400) but logged
]


def _config(port: int, dead: int) -> str:
    return two_upstreams_text(port, dead, extra="shutdown:\n  grace_period: 1s\n")


async def _echo_request_line(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: Head
) -> bool:
    """An upstream that is not HTTP: it echoes the request line back, secret and all."""
    writer.write(head.start_line.encode("latin-1") + b"\r\n\r\n")
    await writer.drain()
    return False


async def _close_after_101(seen: Seen) -> None:
    assert seen.writer is not None
    seen.writer.close()


def _assert_clean(where: str, text: str) -> None:
    for spelling in SPELLINGS:
        assert spelling not in text, f"{spelling!r} found in {where}: ...{text[-2000:]}"


async def _send(port: int, raw: bytes) -> bytes:
    async with raw_client(port) as (reader, writer):
        writer.write(raw)
        try:
            return await read_until_closed(reader, timeout=5)
        except ConnectionResetError:
            return b""


async def test_no_secret_reaches_logs_status_metrics_or_bodies(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    answers: list[bytes] = []
    dead = free_port()
    async with (
        RecordingBackend() as good,
        RawBackend(_echo_request_line) as garbage,
        recording(_close_after_101) as early,
        recording() as holding,
    ):
        for backend_port in (good.port, garbage.port):
            async with observed_proxy(_config(backend_port, dead)) as obs:
                for target in TARGETS:
                    for prefix in ("", "/dead"):
                        if prefix and not target.startswith("/"):
                            continue
                        request = request_bytes(
                            "GET", prefix + target, [("Host", "h"), ("Connection", "close")]
                        )
                        answers.append(await _send(obs.port, request))
                # A request the parser refuses, secrets in its line and header.
                answers.append(
                    await _send(
                        obs.port,
                        f"GET /x?{SECRET} HTTP/1.1\r\nHost: h\r\n"
                        f"Authorization: Bearer {SECRET}\x01\r\n\r\n".encode("latin-1"),
                    )
                )
                _assert_clean("/metrics", (await obs.get("/metrics"))[2])
                _assert_clean("the access log", obs.log_text())
        for backend in (early, holding):
            async with observed_proxy(_config(backend.port, dead)) as obs:
                async with raw_client(obs.port) as (reader, writer):
                    writer.write(
                        handshake_request(LOOPBACK, obs.port, path=f"/ws;s={SECRET}?{SECRET}&t=1")
                    )
                    async with asyncio.timeout(5):
                        head = await read_head(reader)
                    answers.append(head.start_line.encode())
                    if backend is holding:
                        await obs.sessions_open(1)
                        _assert_clean("/status.json", (await obs.get("/status.json"))[2])
                    else:
                        await read_until_closed(reader)
                await obs.sessions_ended()
                _assert_clean("/status.json", (await obs.get("/status.json"))[2])
                _assert_clean("/metrics", (await obs.get("/metrics"))[2])
                _assert_clean("the access log", obs.log_text())
    # The request line did reach the upstreams: the secrets were there to leak.
    assert any(SECRET in r.head.start_line for r in good.requests)
    assert any(SECRET in s.head.start_line for s in early.seen)
    for answer in answers:
        _assert_clean("an answer to the client", answer.decode("latin-1"))
    _assert_clean("the log records", caplog.text)
    for record in caplog.records:
        assert record.exc_info is None, f"a traceback was logged by {record.name}"
    assert any(r.name == "wsproxy.early_close" for r in caplog.records)  # it did log
