"""Observability through the real proxy: admin endpoints, metrics, access log, warnings.

Every test runs the proxy in-process on loopback port 0 with its access log in
memory, scrapes ``/metrics`` over HTTP and parses it with prometheus_client's
own parser.  Expected counts are computed from the bytes the test itself put
on the wire; waits poll observable state under a timeout.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import shlex
import struct

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from tests.support.backends import Seen, recording, swoole_like
from tests.support.http_backends import RecordingBackend
from tests.support.http_backends import read_response as read_http_response
from tests.support.http_backends import request_bytes as http_request
from tests.support.observe_helpers import (
    Labels,
    Observed,
    Scrape,
    eventually,
    observed_proxy,
    read_frame_sized,
)
from tests.support.process import free_port
from tests.support.proxy import config_text, two_upstreams_text
from tests.support.wire import (
    accept_for,
    encode_frame,
    handshake_request,
    new_key,
    read_head,
    read_until_closed,
)
from tests.support.ws_helpers import (
    LOOPBACK,
    Session,
    raw_client,
    read_response,
    request_bytes,
    scripted,
    wait_until,
    ws_headers,
)
from wsproxy.accesslog import MAX_PENDING_LINES
from wsproxy.config import parse_config
from wsproxy.server import ProxyServer

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
OPCODE_LABEL = {
    CONTINUATION: "continuation",
    TEXT: "text",
    BINARY: "binary",
    CLOSE: "close",
    PING: "ping",
    PONG: "pong",
}
C2U, U2C = "client_to_upstream", "upstream_to_client"
HEX_ID = re.compile(r"[0-9a-f]{32}")
NO_EARLY_WINDOW = "    websocket:\n      early_close_window: 0s\n"


# --- helpers -----------------------------------------------------------------


def _address(writer: asyncio.StreamWriter) -> str:
    """The client's own ``ip:port``, as the proxy sees its peer."""
    host, port = writer.get_extra_info("sockname")[:2]
    return f"{host}:{port}"


def _labels(**labels: str) -> Labels:
    return frozenset(labels.items())


async def _handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    port: int,
    *,
    path: str = "/ws",
    extra: list[tuple[str, str]] | None = None,
) -> None:
    """Send a WebSocket handshake and expect a valid ``101``."""
    key = new_key()
    writer.write(handshake_request(LOOPBACK, port, path=path, key=key, extra=extra))
    async with asyncio.timeout(2):
        head = await read_head(reader)
    assert head.status == 101, head.start_line
    assert head.get("Sec-WebSocket-Accept") == accept_for(key)


async def _http(
    port: int, method: str, target: str, headers: list[tuple[str, str]] | None = None
) -> tuple[int, str]:
    """One plain request on its own connection: the status and the client's address."""
    async with raw_client(port) as (reader, writer):
        all_headers = [("Host", f"{LOOPBACK}:{port}"), *(headers or [])]
        writer.write(http_request(method, target, all_headers))
        async with asyncio.timeout(5):
            head, _body = await read_http_response(reader, method)
        return head.status, _address(writer)


async def _close_right_after_101(seen: Seen) -> None:
    """The Swoole failure: FIN right after ``101``, no close frame."""
    assert seen.writer is not None
    seen.writer.close()


def _early_close_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "wsproxy.early_close"]


def _api_only(app_port: int) -> str:
    """One route, ``/api``: every other path matches no route."""
    return config_text(app_port).replace("path_prefix: /\n", "path_prefix: /api\n")


#: Samples of one metric for route ``/``, keyed by their other label values.
Counts = dict[tuple[str, ...], float]


def _ws_samples(scrape: Scrape, name: str) -> Counts:
    """Samples of a per-route WebSocket counter for route ``/``, keyed by their other labels."""
    result: Counts = {}
    for labels, value in scrape.series(name, route="/").items():
        rest = tuple(v for k, v in sorted(labels) if k != "route")
        result[rest] = value
    return result


# --- 1. admin endpoints ------------------------------------------------------


async def test_healthz_and_readyz_answer_200_while_serving() -> None:
    """Guards against liveness or readiness failing on a healthy, serving proxy."""
    backend = RecordingBackend()
    async with backend, observed_proxy(config_text(backend.port)) as obs:
        status, _, body = await obs.get("/healthz")
        assert (status, body) == (200, "ok\n")
        assert (await obs.get("/readyz"))[0] == 200
        assert (await _http(obs.port, "GET", "/"))[0] == 200
        assert (await obs.get("/readyz"))[0] == 200


async def test_readyz_is_503_when_every_upstream_server_is_down() -> None:
    """Guards against a proxy that can only answer 502 still reporting itself ready."""
    dead = free_port()
    server = f"127.0.0.1:{dead}"
    async with observed_proxy(config_text(dead)) as obs:
        scrape = await obs.scrape()
        assert scrape.value("wsproxy_upstream_server_up", upstream="app", server=server) == 1
        assert (await obs.get("/readyz"))[0] == 200
        assert (await _http(obs.port, "GET", "/"))[0] == 502
        status, _, _ = await obs.get("/readyz")
        assert status == 503
        assert (await obs.get("/healthz"))[0] == 200  # alive, just not ready
        scrape = await obs.scrape()
        assert scrape.value("wsproxy_upstream_server_up", upstream="app", server=server) == 0
        assert scrape.series("wsproxy_upstream_errors_total") == {
            _labels(upstream="app", server=server, kind="refused"): 1
        }


async def test_metrics_content_type_is_prometheus_text_format_0_0_4() -> None:
    """Guards against /metrics announcing a format version scrapers do not expect."""
    backend = RecordingBackend()
    async with backend, observed_proxy(config_text(backend.port)) as obs:
        status, content_type, _text = await obs.get("/metrics")
        assert status == 200
        params = [part.strip() for part in content_type.split(";")]
        assert params[0] == "text/plain"
        assert "version=0.0.4" in params[1:], content_type


async def test_metrics_parse_with_every_documented_family_name_and_type() -> None:
    """Guards against unparsable output or renamed/retyped metrics (names are fixed)."""
    backend = RecordingBackend()
    async with backend, observed_proxy(config_text(backend.port)) as obs:
        _status, _content_type, text = await obs.get("/metrics")
        families = {family.name: family.type for family in text_string_to_metric_families(text)}
        expected = {
            "wsproxy_http_requests": "counter",
            "wsproxy_http_request_duration_seconds": "histogram",
            "wsproxy_upstream_errors": "counter",
            "wsproxy_upstream_server_up": "gauge",
            "wsproxy_websocket_upgrades": "counter",
            "wsproxy_websocket_active_connections": "gauge",
            "wsproxy_websocket_connection_duration_seconds": "histogram",
            "wsproxy_websocket_closes": "counter",
            "wsproxy_websocket_early_closes": "counter",
            "wsproxy_websocket_frames": "counter",
            "wsproxy_websocket_messages": "counter",
            "wsproxy_websocket_bytes": "counter",
            "wsproxy_websocket_protocol_errors": "counter",
        }
        assert {name: families.get(name) for name in expected} == expected


async def test_status_json_lists_an_open_session_and_drops_it_when_it_ends() -> None:
    """Guards against the status endpoint missing live sessions or keeping ended ones."""
    async with swoole_like() as backend, observed_proxy(config_text(backend.port)) as obs:
        async with raw_client(obs.port) as (reader, writer):
            await _handshake(reader, writer, obs.port, extra=[("X-Request-ID", "status-1")])
            await obs.sessions_open(1)
            status = await obs.status_json()
            assert status["draining"] is False
            assert status["upstreams"] == {"app": {f"127.0.0.1:{backend.port}": "up"}}
            [session] = status["active_sessions"]
            assert session["route"] == "/"
            assert session["client"] == _address(writer)
            assert session["upstream"] == f"127.0.0.1:{backend.port}"
            assert session["request_id"] == "status-1"
            assert session["path"] == "/ws"
        await obs.sessions_ended()
        assert (await obs.status_json())["active_sessions"] == []


async def test_status_json_lists_recent_early_close_with_its_diagnosis() -> None:
    """Guards against early closes missing from the status endpoint operators look at."""
    async with (
        recording(_close_right_after_101) as backend,
        observed_proxy(config_text(backend.port)) as obs,
    ):
        async with raw_client(obs.port) as (reader, writer):
            await _handshake(reader, writer, obs.port, extra=[("X-Request-ID", "early-1")])
            assert await read_until_closed(reader, timeout=2) == b""
            client = _address(writer)
        await obs.sessions_ended()
        status = await obs.status_json()
        assert status["active_sessions"] == []
        [early] = status["recent_early_closes"]
        assert early["request_id"] == "early-1"
        assert early["route"] == "/"
        assert early["client"] == client
        assert early["upstream"] == f"127.0.0.1:{backend.port}"
        assert (early["closed_by"], early["how"], early["code"]) == ("upstream", "fin", "1006")
        assert early["close_frame"] is False
        assert early["early"] is True
        assert early["upstream_request"] == "HTTP/1.1 Connection: upgrade"
        assert "the upstream dropped the connection" in early["diagnosis"]
        assert early["probe"] == f"wsproxy probe ws://127.0.0.1:{backend.port}/ws"


async def test_status_json_has_what_the_page_draws_and_no_query() -> None:
    async with (
        recording(_close_right_after_101) as backend,
        observed_proxy(config_text(backend.port)) as obs,
    ):
        async with raw_client(obs.port) as (reader, writer):
            await _handshake(reader, writer, obs.port, path="/ws?token=hunter2")
            assert await read_until_closed(reader, timeout=2) == b""
        await _handshake_status(obs.port, "/ws", **{"Sec-WebSocket-Key": None})
        await obs.sessions_ended()
        status = await obs.status_json()
    assert status["admin"] == {"host": "127.0.0.1", "loopback_only": True}
    assert status["upgrades"] == {"/": {"accepted": 1, "bad_handshake": 1}}
    buckets = status["closes"]["buckets"]
    assert len(buckets) == 30
    assert status["closes"]["bucket_seconds"] == 10
    assert sum(b["closed_by"].get("upstream", 0) for b in buckets) == 1
    assert sum(b["codes"].get("1006", 0) for b in buckets) == 1
    [early] = status["recent_early_closes"]
    assert early["path"] == "/ws"
    assert "hunter2" not in json.dumps(status)
    assert "token" not in json.dumps(status)


async def test_the_status_page_is_served_self_contained() -> None:
    async with swoole_like() as backend, observed_proxy(config_text(backend.port)) as obs:
        async with obs.http.get(obs.admin_url + "/") as page:
            html = await page.text()
            policy = page.headers["Content-Security-Policy"]
            assert page.content_type == "text/html"
        async with obs.http.get(obs.admin_url + "/status.js") as script:
            js = await script.text()
            assert script.content_type == "text/javascript"
    assert '<script src="status.js"></script>' in html
    assert "script-src 'self'" in policy
    assert "connect-src 'self'" in policy
    assert "http://" not in html.replace("http://www.w3.org", "")  # nothing from elsewhere
    assert "https://" not in html + js
    # Values from peers (paths, close reasons) are written as text, never markup.
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in js


# --- 2. the Swoole-like early close -----------------------------------------


async def test_upstream_fin_right_after_101_is_counted_logged_once_and_access_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Guards against the Swoole failure going unseen: metrics, one WARNING, one log line."""
    caplog.set_level(logging.WARNING, logger="wsproxy.early_close")
    async with (
        recording(_close_right_after_101) as backend,
        observed_proxy(config_text(backend.port)) as obs,
    ):
        async with raw_client(obs.port) as (reader, writer):
            await _handshake(reader, writer, obs.port)
            assert await read_until_closed(reader, timeout=2) == b""
            client = _address(writer)
        await obs.sessions_ended()
        request_id = backend.seen[0].head.get("X-Request-ID")
        assert request_id is not None
        upstream = f"127.0.0.1:{backend.port}"

        scrape = await obs.scrape()
        expected = {("upstream", "1006"): 1.0}
        assert _ws_samples(scrape, "wsproxy_websocket_early_closes_total") == expected
        assert _ws_samples(scrape, "wsproxy_websocket_closes_total") == expected

        records = _early_close_records(caplog)
        assert len(records) == 1, [r.getMessage() for r in records]
        assert records[0].levelno == logging.WARNING
        message = records[0].getMessage()
        for fact in (
            "closed_by=upstream",
            "how=fin",
            "code=1006",
            "close_frame=false",
            "route=/ ",
            f"client={client}",
            f"upstream={upstream}",
            "HTTP/1.1",
            "Connection: upgrade",
            f"request_id={request_id}",
        ):
            assert fact in message, f"{fact!r} missing from {message!r}"
        assert re.search(r"\bduration_ms=\d+(\.\d+)?\b", message), message
        assert re.search(r"\d+(\.\d+)? ms after 101", message), message

        [line] = await obs.log_has(1)
        assert '"type":"websocket"' in line
        [entry] = obs.log_records()
        assert entry["type"] == "websocket"
        assert entry["early"] is True
        assert entry["request_id"] == request_id
        assert (entry["closed_by"], entry["how"], entry["code"]) == ("upstream", "fin", "1006")


# --- 3. a client closing with 4001 ------------------------------------------


@pytest.mark.parametrize(
    ("route_extra", "early"),
    [
        pytest.param("", True, id="default-10s-window"),
        pytest.param(NO_EARLY_WINDOW, False, id="0s"),
    ],
)
async def test_client_close_4001_is_counted_and_early_only_within_the_window(
    caplog: pytest.LogCaptureFixture, route_extra: str, early: bool
) -> None:
    """Guards against misreading a client's close frame or ignoring early_close_window."""
    caplog.set_level(logging.WARNING, logger="wsproxy.early_close")
    async with swoole_like() as backend:
        text = config_text(backend.port, route_extra=route_extra)
        async with observed_proxy(text) as obs:
            async with asyncio.timeout(5), connect(f"ws://{LOOPBACK}:{obs.port}/chat") as client:
                await client.send("hello")
                assert await client.recv() == "hello"
                await client.close(4001, "bye now")
            await obs.sessions_ended()
            scrape = await obs.scrape()
            closes = _ws_samples(scrape, "wsproxy_websocket_closes_total")
            assert closes == {("client", "4001"): 1.0}
            early_closes = _ws_samples(scrape, "wsproxy_websocket_early_closes_total")
            assert early_closes == ({("client", "4001"): 1.0} if early else {})
            assert len(_early_close_records(caplog)) == (1 if early else 0)
            [entry] = obs.log_records()
            assert entry["closed_by"] == "client"
            assert entry["how"] == "close_frame"
            assert entry["code"] == "4001"
            assert entry["close_reason"] == "bye now"
            assert entry["close_frame"] is True
            assert entry["early"] is early


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        pytest.param((1000).to_bytes(2, "big"), "1000", id="1000"),
        pytest.param((1001).to_bytes(2, "big") + b"going away", "1001", id="1001"),
        pytest.param(b"", "1005", id="no-code"),  # what a browser's ws.close() sends
    ],
)
async def test_a_clean_client_close_is_counted_early_but_not_warned_about(
    caplog: pytest.LogCaptureFixture, payload: bytes, code: str
) -> None:
    """A page navigating away (client close frame 1000/1001, or none, first)
    within the window: counted as an early close, logged at DEBUG only, and
    kept off the status page's list, which is for closes an operator must
    look at."""
    caplog.set_level(logging.DEBUG, logger="wsproxy.early_close")
    async with swoole_like() as backend, observed_proxy(config_text(backend.port)) as obs:
        async with raw_client(obs.port) as (reader, writer):
            await _handshake(reader, writer, obs.port, path="/chat")
            writer.write(encode_frame(TEXT, b"hello") + encode_frame(CLOSE, payload))
            assert await read_until_closed(reader, timeout=5)  # echo and close reply
        await obs.sessions_ended()
        scrape = await obs.scrape()
        early = _ws_samples(scrape, "wsproxy_websocket_early_closes_total")
        assert early == {("client", code): 1.0}
        records = _early_close_records(caplog)
        assert [r.levelno for r in records] == [logging.DEBUG]
        assert "closed the session cleanly" in records[0].getMessage()
        assert (await obs.status_json())["recent_early_closes"] == []
        [entry] = obs.log_records()
        assert entry["early"] is True


# --- 4. exact frame, message and byte counts --------------------------------


def _client_script() -> list[tuple[int, bytes, bool]]:
    """(opcode, payload, fin): 3 text, 2 binary, a 3-fragment message and a ping."""
    return [
        (TEXT, b"first", True),
        (BINARY, os.urandom(10), True),
        (TEXT, b"second " * 30, True),  # 210 bytes: 16-bit extended length
        (TEXT, b"fragment one, ", False),
        (CONTINUATION, b"two, ", False),
        (CONTINUATION, b"three", True),
        (PING, b"are you there", True),
        (BINARY, os.urandom(300), True),
        (TEXT, "third ✓".encode(), True),
    ]


def _count(frames: list[tuple[int, bytes, bool]]) -> tuple[dict[str, int], int]:
    """Frames per opcode label and complete messages (final data frames)."""
    by_opcode: dict[str, int] = {}
    for opcode, _payload, _fin in frames:
        by_opcode[OPCODE_LABEL[opcode]] = by_opcode.get(OPCODE_LABEL[opcode], 0) + 1
    messages = sum(1 for opcode, _payload, fin in frames if opcode < CLOSE and fin)
    return by_opcode, messages


def _expected(
    c2u: list[tuple[int, bytes, bool]],
    u2c: list[tuple[int, bytes, bool]],
    sent: int,
    received: int,
) -> tuple[Counts, Counts, Counts]:
    frames: Counts = {}
    messages: Counts = {}
    for direction, script in ((C2U, c2u), (U2C, u2c)):
        by_opcode, count = _count(script)
        messages[(direction,)] = count
        for opcode, n in by_opcode.items():
            frames[(direction, opcode)] = n
    return frames, messages, {(C2U,): sent, (U2C,): received}


def _observed(
    scrape: Scrape,
) -> tuple[Counts, Counts, Counts]:
    return (
        _ws_samples(scrape, "wsproxy_websocket_frames_total"),
        _ws_samples(scrape, "wsproxy_websocket_messages_total"),
        _ws_samples(scrape, "wsproxy_websocket_bytes_total"),
    )


async def test_frames_messages_and_bytes_are_exact_per_direction_open_and_closed() -> None:
    """Guards against miscounted frames, messages or bytes, live or after the session folds."""
    script = _client_script()
    echoed = [(PONG if opcode == PING else opcode, payload, fin) for opcode, payload, fin in script]
    async with swoole_like() as backend, observed_proxy(config_text(backend.port)) as obs:
        sent = received = 0
        async with raw_client(obs.port) as (reader, writer):
            await _handshake(reader, writer, obs.port)
            got = []
            for opcode, payload, fin in script:
                frame = encode_frame(opcode, payload, fin=fin)
                writer.write(frame)
                sent += len(frame)
                async with asyncio.timeout(2):  # lock step: each frame has its echo
                    echo, size = await read_frame_sized(reader)
                received += size
                got.append((echo.opcode, echo.payload, echo.fin))
            assert got == echoed

            live = _observed(await obs.scrape())
            assert live == _expected(script, echoed, sent, received)

            close = encode_frame(CLOSE, struct.pack("!H", 1000) + b"done")
            writer.write(close)
            sent += len(close)
            async with asyncio.timeout(2):
                echo, size = await read_frame_sized(reader)
            received += size
            assert (echo.opcode, echo.payload[:2]) == (CLOSE, struct.pack("!H", 1000))
            assert await read_until_closed(reader, timeout=2) == b""
        await obs.sessions_ended()

        closed = (CLOSE, b"", True)
        folded = _observed(await obs.scrape())
        assert folded == _expected([*script, closed], [*echoed, closed], sent, received)
        [entry] = obs.log_records()
        assert entry["bytes_client_to_upstream"] == sent
        assert entry["bytes_upstream_to_client"] == received
        assert entry["frames_client_to_upstream"] == len(script) + 1
        assert entry["frames_upstream_to_client"] == len(echoed) + 1


# --- 5. active sessions and durations ---------------------------------------


async def test_active_gauge_follows_sessions_and_websockets_stay_out_of_http_histogram() -> None:
    """Guards against a drifting active gauge or WebSocket lifetimes in the HTTP latency."""
    async with swoole_like() as backend, observed_proxy(config_text(backend.port)) as obs:
        scrape = await obs.scrape()
        assert scrape.value("wsproxy_websocket_active_connections", route="/") == 0
        async with raw_client(obs.port) as (r1, w1), raw_client(obs.port) as (r2, w2):
            await _handshake(r1, w1, obs.port)
            await _handshake(r2, w2, obs.port)
            await obs.sessions_open(2)
            scrape = await obs.scrape()
            assert scrape.value("wsproxy_websocket_active_connections", route="/") == 2
        await obs.sessions_ended()
        scrape = await obs.scrape()
        assert scrape.value("wsproxy_websocket_active_connections", route="/") == 0
        duration = "wsproxy_websocket_connection_duration_seconds_count"
        assert scrape.value(duration, route="/") == 2
        http_count = scrape.value("wsproxy_http_request_duration_seconds_count", route="/")
        assert http_count in (None, 0), f"{http_count} WebSocket sessions in the HTTP histogram"
        assert scrape.value("wsproxy_http_requests_total", route="/", method="GET", code="101") == 2


# --- 6. upgrade results -----------------------------------------------------

FORBIDDEN = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\n\r\nnope\n"


async def _accept_or_forbid(session: Session) -> None:
    """``403`` for ``/forbidden``, otherwise ``101`` and read until the client leaves."""
    if session.head.start_line.split(" ")[1].startswith("/forbidden"):
        session.writer.write(FORBIDDEN)
        await session.writer.drain()
        return
    await session.accept()
    await session.read_to_eof()


async def _handshake_status(port: int, path: str, **overrides: str | None) -> int:
    async with raw_client(port) as (reader, writer):
        writer.write(request_bytes(f"GET {path} HTTP/1.1", ws_headers(port, **overrides)))
        head, _body = await read_response(reader, timeout=2)
        return head.status


async def test_each_upgrade_result_is_counted_once_from_zero_series() -> None:
    """Guards against missing, double-counted or misfiled upgrade outcomes."""
    backend, _sessions = scripted(_accept_or_forbid)
    async with backend, observed_proxy(two_upstreams_text(backend.port, free_port())) as obs:
        results = ("accepted", "upstream_rejected", "upstream_unavailable", "bad_handshake")
        zero = {_labels(route=route, result=r): 0.0 for route in ("/", "/dead") for r in results}
        assert (await obs.scrape()).series("wsproxy_websocket_upgrades_total") == zero

        async with raw_client(obs.port) as (reader, writer):
            await _handshake(reader, writer, obs.port)
        await obs.sessions_ended()
        assert await _handshake_status(obs.port, "/forbidden") == 403
        assert await _handshake_status(obs.port, "/dead/ws") == 502
        assert await _handshake_status(obs.port, "/ws", Sec_WebSocket_Version="8") == 426

        expected = dict(zero)
        expected[_labels(route="/", result="accepted")] = 1
        expected[_labels(route="/", result="upstream_rejected")] = 1
        expected[_labels(route="/dead", result="upstream_unavailable")] = 1
        expected[_labels(route="/", result="bad_handshake")] = 1

        async def all_four() -> Scrape | None:
            scrape = await obs.scrape()
            total = sum(scrape.series("wsproxy_websocket_upgrades_total").values())
            return scrape if total >= 4 else None

        scrape = await eventually(all_four, "four upgrade outcomes")
        assert scrape.series("wsproxy_websocket_upgrades_total") == expected


async def test_accepted_upgrade_is_counted_while_the_session_is_still_open() -> None:
    """Guards against counting a handshake only when its (maybe hours-long) session ends."""
    async with (
        swoole_like() as backend,
        observed_proxy(config_text(backend.port)) as obs,
        raw_client(obs.port) as (reader, writer),
    ):
        await _handshake(reader, writer, obs.port)
        await obs.sessions_open(1)
        scrape = await obs.scrape()
        accepted = scrape.value("wsproxy_websocket_upgrades_total", route="/", result="accepted")
        assert accepted == 1, "the 101 was relayed, but the upgrade is not counted yet"


# --- 7. HTTP metrics and the access log -------------------------------------


async def test_http_request_is_counted_by_route_method_and_code() -> None:
    """Guards against wrong labels or a missing latency observation for plain requests."""
    backend = RecordingBackend()
    async with backend, observed_proxy(config_text(backend.port)) as obs:
        assert (await _http(obs.port, "GET", "/page?token=secret"))[0] == 200
        name = "wsproxy_http_requests_total"
        scrape = await obs.sample(name, route="/", method="GET", code="200")
        assert scrape.series(name) == {_labels(route="/", method="GET", code="200"): 1}
        assert scrape.value("wsproxy_http_request_duration_seconds_count", route="/") == 1


async def test_unknown_method_is_labelled_other() -> None:
    """Guards against unbounded method labels from whatever a client sends."""
    backend = RecordingBackend()
    async with backend, observed_proxy(config_text(backend.port)) as obs:
        assert (await _http(obs.port, "PURGE", "/cache/item"))[0] == 200
        assert backend.requests[0].head.start_line == "PURGE /cache/item HTTP/1.1"
        name = "wsproxy_http_requests_total"
        scrape = await obs.sample(name, route="/", method="other", code="200")
        assert scrape.series(name) == {_labels(route="/", method="other", code="200"): 1}


async def test_request_matching_no_route_is_labelled_route_none_and_logged() -> None:
    """Guards against a 404 from routing being uncounted, mislabelled or not logged."""
    backend = RecordingBackend()
    async with backend, observed_proxy(_api_only(backend.port)) as obs:
        status, client = await _http(obs.port, "GET", "/elsewhere")
        assert status == 404
        assert backend.requests == []
        name = "wsproxy_http_requests_total"
        scrape = await obs.sample(name, route="none", method="GET", code="404")
        assert scrape.series(name) == {_labels(route="none", method="GET", code="404"): 1}
        await obs.log_has(1)
        [entry] = obs.log_records()
        assert (entry["route"], entry["status"], entry["client"]) == ("none", 404, client)
        assert entry["upstream"] is None


async def test_json_access_log_has_one_line_per_request_with_query_redacted() -> None:
    """Guards against missing fields, extra or missing lines, or tokens leaking into logs."""
    backend = RecordingBackend()
    async with backend, observed_proxy(config_text(backend.port)) as obs:
        _, first_client = await _http(obs.port, "GET", "/page?token=secret&lang=en")
        _, second_client = await _http(obs.port, "POST", "/form", [("Content-Length", "0")])
        await obs.log_has(2)
        assert "secret" not in obs.log_text()
        entries = obs.log_records()
        assert len(entries) == 2
        upstream = f"127.0.0.1:{backend.port}"
        for entry, client, method, path, received in zip(
            entries,
            (first_client, second_client),
            ("GET", "POST"),
            ("/page?token=redacted&lang=redacted", "/form"),
            backend.requests,
            strict=True,
        ):
            assert entry["type"] == "http"
            assert entry["route"] == "/"
            assert entry["client"] == client
            assert entry["upstream"] == upstream
            assert entry["method"] == method
            assert entry["path"] == path
            assert entry["status"] == 200
            assert isinstance(entry["duration_ms"], int | float)
            assert entry["duration_ms"] >= 0
            assert entry["request_id"] == received.head.get("X-Request-ID")
        assert backend.requests[0].head.start_line == "GET /page?token=secret&lang=en HTTP/1.1"


async def test_text_access_log_writes_key_value_lines() -> None:
    """Guards against `format: text` writing JSON or unparsable lines."""
    backend = RecordingBackend()
    extra = "access_log:\n  format: text\n"
    async with backend, observed_proxy(config_text(backend.port, extra=extra)) as obs:
        await _http(obs.port, "GET", "/page?token=secret")
        [line] = await obs.log_has(1)
        assert not line.startswith("{")
        fields = dict(part.split("=", 1) for part in shlex.split(line))
        assert fields["type"] == "http"
        assert fields["route"] == "/"
        assert fields["method"] == "GET"
        assert fields["path"] == "/page?token=redacted"
        assert fields["status"] == "200"
        assert fields["request_id"] == backend.requests[0].head.get("X-Request-ID")
        assert "secret" not in line


@pytest.mark.parametrize(
    "off", [pytest.param('"off"', id="quoted"), pytest.param("off", id="plain")]
)
async def test_access_log_off_writes_nothing_while_metrics_still_count(off: str) -> None:
    """Guards against `format: off` being rejected or still writing lines."""
    async with swoole_like() as backend:
        text = config_text(backend.port, extra=f"access_log:\n  format: {off}\n")
        async with observed_proxy(text) as obs:
            assert (await _http(obs.port, "GET", "/plain"))[0] == 200
            async with raw_client(obs.port) as (reader, writer):
                await _handshake(reader, writer, obs.port)
            await obs.sessions_ended()
            name = "wsproxy_http_requests_total"
            scrape = await obs.sample(name, route="/", method="GET", code="200")
            assert scrape.value(name, route="/", method="GET", code="200") == 1
            assert sum(scrape.series("wsproxy_websocket_closes_total").values()) == 1
            assert obs.log_text() == ""


async def test_redact_query_false_keeps_the_query_in_the_access_log() -> None:
    """Guards against `redact_query: false` being ignored."""
    backend = RecordingBackend()
    extra = "access_log:\n  redact_query: false\n"
    async with backend, observed_proxy(config_text(backend.port, extra=extra)) as obs:
        await _http(obs.port, "GET", "/page?token=secret")
        await obs.log_has(1)
        [entry] = obs.log_records()
        assert entry["path"] == "/page?token=secret"


# --- 8. X-Request-ID ---------------------------------------------------------

REQUEST_ID_CASES = [
    pytest.param(None, None, id="none-sent"),
    pytest.param("abc-123", "abc-123", id="well-formed-kept"),
    pytest.param("bad id", None, id="malformed-replaced"),
]


def _check_request_id(received: list[str], sent: str | None, kept: str | None) -> str:
    """The upstream got exactly one ID: the client's if kept, else a new 32-hex one."""
    assert len(received) == 1, received
    [request_id] = received
    if kept is not None:
        assert request_id == kept
    else:
        assert HEX_ID.fullmatch(request_id), request_id
        assert request_id != sent
    return request_id


@pytest.mark.parametrize(("sent", "kept"), REQUEST_ID_CASES)
async def test_plain_request_carries_x_request_id_to_upstream_and_access_log(
    sent: str | None, kept: str | None
) -> None:
    """Guards against a missing, duplicated or unvalidated X-Request-ID on plain requests."""
    backend = RecordingBackend()
    headers = [] if sent is None else [("X-Request-ID", sent)]
    async with backend, observed_proxy(config_text(backend.port)) as obs:
        assert (await _http(obs.port, "GET", "/", headers))[0] == 200
        request_id = _check_request_id(backend.requests[0].head.get_all("X-Request-ID"), sent, kept)
        await obs.log_has(1)
        [entry] = obs.log_records()
        assert entry["request_id"] == request_id


@pytest.mark.parametrize(("sent", "kept"), REQUEST_ID_CASES)
async def test_websocket_handshake_carries_x_request_id_to_upstream_and_access_log(
    sent: str | None, kept: str | None
) -> None:
    """Guards against a missing, duplicated or unvalidated X-Request-ID on handshakes."""
    extra = [] if sent is None else [("X-Request-ID", sent)]
    async with recording() as backend, observed_proxy(config_text(backend.port)) as obs:
        async with raw_client(obs.port) as (reader, writer):
            await _handshake(reader, writer, obs.port, extra=extra)
        await obs.sessions_ended()
        request_id = _check_request_id(backend.seen[0].head.get_all("X-Request-ID"), sent, kept)
        [entry] = obs.log_records()
        assert entry["type"] == "websocket"
        assert entry["request_id"] == request_id


# --- 9. protocol errors -----------------------------------------------------


async def _reserved_opcode_session(obs: Observed, backend_seen: list[Seen]) -> bytes:
    """Send a valid frame, a reserved-opcode frame and another valid one; end with FIN."""
    frames = [
        encode_frame(TEXT, b"before"),
        encode_frame(0x3, b"reserved opcode"),
        encode_frame(TEXT, b"after"),
    ]
    async with raw_client(obs.port) as (reader, writer):
        await _handshake(reader, writer, obs.port)
        for frame in frames:
            writer.write(frame)
        writer.write_eof()
        await wait_until(
            lambda: bool(backend_seen) and backend_seen[0].closed_at is not None,
            5,
            "the backend to read the client's FIN",
        )
        assert await read_until_closed(reader, timeout=2) == b""
    await obs.sessions_ended()
    return b"".join(frames)


async def test_reserved_opcode_is_counted_as_protocol_error_and_passed_untouched() -> None:
    """Guards against fixing or dropping malformed frames, or not counting the violation."""
    async with recording() as backend, observed_proxy(config_text(backend.port)) as obs:
        sent = await _reserved_opcode_session(obs, backend.seen)
        assert bytes(backend.seen[0].received) == sent
        scrape = await obs.scrape()
        assert scrape.series("wsproxy_websocket_protocol_errors_total") == {
            _labels(route="/", direction=C2U): 1
        }
        assert scrape.value("wsproxy_websocket_bytes_total", route="/", direction=C2U) == len(sent)
        [entry] = obs.log_records()
        assert entry["protocol_error_client_to_upstream"]
        assert "0x3" in entry["protocol_error_client_to_upstream"]
        assert entry["protocol_error_upstream_to_client"] is None


async def test_reserved_opcode_frame_is_counted_under_opcode_reserved() -> None:
    """Guards against the documented `opcode="reserved"` label value being unreachable."""
    async with recording() as backend, observed_proxy(config_text(backend.port)) as obs:
        await _reserved_opcode_session(obs, backend.seen)
        scrape = await obs.scrape()
        frames = _ws_samples(scrape, "wsproxy_websocket_frames_total")
        assert frames.get((C2U, "text")) == 1  # "before"; observation stops at the error
        assert frames.get((C2U, "reserved")) == 1, frames


# --- 10. observer switched off ----------------------------------------------


async def test_observer_off_counts_bytes_only_and_close_frames_go_unseen() -> None:
    """Guards against `observe_frames: false` still parsing frames or miscounting bytes."""
    async with swoole_like() as backend:
        text = config_text(backend.port, extra="proxy:\n  observe_frames: false\n")
        async with observed_proxy(text) as obs:
            sent = received = 0
            async with raw_client(obs.port) as (reader, writer):
                await _handshake(reader, writer, obs.port)
                for payload in (b"one", b"two" * 100):
                    frame = encode_frame(TEXT, payload)
                    writer.write(frame)
                    sent += len(frame)
                    async with asyncio.timeout(2):
                        echo, size = await read_frame_sized(reader)
                    assert echo.payload == payload
                    received += size
                live = await obs.scrape()
                assert _ws_samples(live, "wsproxy_websocket_bytes_total") == {
                    (C2U,): sent,
                    (U2C,): received,
                }
                assert _ws_samples(live, "wsproxy_websocket_frames_total") == {}

                close = encode_frame(CLOSE, struct.pack("!H", 4001) + b"bye now")
                writer.write(close)
                sent += len(close)
                async with asyncio.timeout(2):
                    echo, size = await read_frame_sized(reader)
                assert echo.opcode == CLOSE
                received += size
                assert await read_until_closed(reader, timeout=2) == b""
            await obs.sessions_ended()
            scrape = await obs.scrape()
            assert _ws_samples(scrape, "wsproxy_websocket_bytes_total") == {
                (C2U,): sent,
                (U2C,): received,
            }
            assert _ws_samples(scrape, "wsproxy_websocket_frames_total") == {}
            closes = _ws_samples(scrape, "wsproxy_websocket_closes_total")
            assert closes == {("upstream", "1006"): 1.0}
            [entry] = obs.log_records()
            assert (entry["code"], entry["close_frame"]) == ("1006", False)


class _BrokenStream(io.StringIO):
    """stdout after the reader went away: every write fails."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


async def test_an_access_log_that_cannot_be_written_does_not_stop_traffic(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Guards against a broken stdout (a log collector gone) hanging or failing requests:
    more requests than a batch of lines on one connection are all answered, and
    one warning says the lines are dropped."""
    backend = RecordingBackend()
    requests = MAX_PENDING_LINES + 44
    async with backend:
        server = ProxyServer(parse_config(config_text(backend.port), "t.yaml"), _BrokenStream())
        await server.start()
        try:
            reader, writer = await asyncio.open_connection(LOOPBACK, server.addresses[0][1])
            statuses = []
            async with asyncio.timeout(10):  # a hang is the failure this guards against
                for _ in range(requests):
                    writer.write(http_request("GET", "/", [("Host", "h")]))
                    head, _body = await read_http_response(reader, "GET")
                    statuses.append(head.status)
            writer.close()
            access_log = server.observability.access_log
            access_log.flush()
            assert statuses == [200] * requests
            assert access_log.lines_lost == requests
        finally:
            await server.stop()
    warnings = [r for r in caplog.records if "access log lines cannot be written" in r.message]
    assert len(warnings) == 1
