"""Robustness through the real proxy: stalled peers, shutdown, clients that leave, cut bodies.

Each test guards one failure a review of the tunnel, shutdown, health and
plain-HTTP code found.  Everything runs on loopback against the proxy started
in-process on port 0; waits poll observable state under a timeout, and the two
sleeps that remain are the elapsed time under test (each says so).  Module
constants (``CLOSE_TIMEOUT``, ``DOWN_FOR``) are shortened with monkeypatch so
the timers under test fire within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from typing import cast

import pytest

import wsproxy.tunnel
from tests.support.backends import RawBackend, Seen, recording
from tests.support.http_backends import RecordingBackend, chunked, raw_request, read_chunked
from tests.support.http_backends import read_response as read_http_response
from tests.support.http_backends import request_bytes as http_request
from tests.support.observe_helpers import Observed, Scrape, eventually, observed_proxy
from tests.support.process import free_port
from tests.support.proxy import config_text
from tests.support.wire import (
    Head,
    encode_frame,
    handshake_request,
    read_head,
    read_until_closed,
)
from tests.support.ws_helpers import (
    LOOPBACK,
    Session,
    handshake,
    raw_client,
    read_frame,
    read_response,
    reset_on_close,
    scripted,
    wait_until,
)
from wsproxy.config import parse_config
from wsproxy.server import ProxyServer
from wsproxy.tunnel import Tunnel

MIB = 1 << 20
#: More than every kernel buffer between the proxy and a client that does not
#: read can hold, so the rest stays in the proxy's own write buffer.
FLOOD = 8 * MIB
SMALL_BUFFER = "proxy:\n  tunnel_buffer: 64KiB\n"
#: A failing test's leftover session must not hold its teardown for the default 30s.
FAST_STOP = "shutdown:\n  grace_period: 1s\n"


# --- helpers -----------------------------------------------------------------


def _config(upstream_port: int, extra: str = "", route_extra: str = "") -> str:
    """:func:`config_text` with a short grace period (see FAST_STOP)."""
    return config_text(upstream_port, extra=extra + FAST_STOP, route_extra=route_extra)


def _websocket(**settings: str) -> str:
    """A ``websocket:`` block for the route of :func:`config_text`."""
    lines = "".join(f"      {name}: {value}\n" for name, value in settings.items())
    return "    websocket:\n" + lines


IDLE_400MS = _websocket(idle_timeout="400ms", early_close_window="0s")


@contextlib.asynccontextmanager
async def _stalled_client(port: int, path: str = "/ws") -> AsyncIterator[socket.socket]:
    """A WebSocket client that reads its ``101`` and then never reads again."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    try:
        # A tiny receive window: the proxy's writes towards it back up at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, (LOOPBACK, port))
        await loop.sock_sendall(sock, handshake_request(LOOPBACK, port, path=path))
        head = b""
        async with asyncio.timeout(2):
            while not head.endswith(b"\r\n\r\n"):
                byte = await loop.sock_recv(sock, 1)  # one at a time: nothing past the head
                assert byte, f"connection closed during the handshake after {head!r}"
                head += byte
        assert head.startswith(b"HTTP/1.1 101 "), head
        yield sock
    finally:
        sock.close()


async def _read_until_reset(sock: socket.socket, timeout: float = 2.0) -> bytes:
    """Read a raw socket to its end; raises ConnectionResetError when it was reset."""
    loop = asyncio.get_running_loop()
    received = bytearray()
    async with asyncio.timeout(timeout):
        while chunk := await loop.sock_recv(sock, MIB):
            received += chunk
    return bytes(received)


def _flood_frame(*, masked: bool) -> bytes:
    """One binary frame of FLOOD zero bytes (masked with a zero key: no copy to mask)."""
    if masked:
        return b"\x82\xff" + FLOOD.to_bytes(8, "big") + bytes(4) + bytes(FLOOD)
    return b"\x82\x7f" + FLOOD.to_bytes(8, "big") + bytes(FLOOD)


async def _read_into(reader: asyncio.StreamReader, received: bytearray) -> None:
    """Read to the end into ``received``, which keeps what came before an error."""
    async with asyncio.timeout(5):
        while chunk := await reader.read(65536):
            received += chunk


async def _flood_then_wait(session: Session) -> None:
    """Answer ``101``, push FLOOD bytes at once, then only read until the proxy closes."""
    await session.accept()
    session.writer.write(_flood_frame(masked=False))
    await session.read_to_eof()


def _backed_up(tunnel: Tunnel) -> bool:
    """The client's buffer passed the high-water mark: the proxy stopped reading upstream."""
    return tunnel.client_transport is not None and not tunnel.upstream_transport.is_reading()


def _total(scrape: Scrape, name: str, **labels: str) -> float:
    return sum(scrape.series(name, **labels).values())


async def _requests_with_code(obs: Observed, code: str) -> Scrape:
    """Scrape until some route counted a request answered with ``code``."""

    async def probe() -> Scrape | None:
        scrape = await obs.scrape()
        return scrape if _total(scrape, "wsproxy_http_requests_total", code=code) else None

    return await eventually(probe, f"a request counted with code {code}")


# --- 1. a peer that stops reading --------------------------------------------


async def _session_ends_though_a_peer_never_reads(
    obs: Observed, stalled: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Back up the proxy's buffer towards ``stalled``; the idle timeout must still end it all."""
    await obs.sessions_open(1)
    [tunnel] = obs.server.sessions
    sides = {"client": tunnel.client_transport, "upstream": tunnel.upstream_transport}
    transport = sides.pop(stalled)
    [other] = sides.values()
    assert transport is not None
    assert other is not None
    # Paused reading the other side: the buffer towards the stalled one is full.
    await wait_until(lambda: not other.is_reading(), 5, f"the {stalled}'s buffer to back up")
    assert transport.get_write_buffer_size() > 0
    # The idle timeout closes both sides gently; the stalled side's buffer can
    # never drain, so only CLOSE_TIMEOUT can finish the session.
    await wait_until(lambda: not obs.server.sessions, 3, "the session to end")
    scrape = await obs.scrape()
    closes = scrape.series("wsproxy_websocket_closes_total", route="/")
    assert {dict(labels)["closed_by"]: value for labels, value in closes.items()} == {"proxy": 1}
    [entry] = obs.log_records()
    assert (entry["closed_by"], entry["how"]) == ("proxy", "idle_timeout")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors  # nothing may raise inside the event loop's callbacks


async def test_stalled_client_cannot_keep_a_closed_session_alive(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Guards against a client that stopped reading keeping a finished session open forever."""
    monkeypatch.setattr(wsproxy.tunnel, "CLOSE_TIMEOUT", 0.3)
    caplog.set_level(logging.ERROR)
    backend, sessions = scripted(_flood_then_wait)
    async with backend:
        text = _config(backend.port, extra=SMALL_BUFFER, route_extra=IDLE_400MS)
        async with observed_proxy(text) as obs, _stalled_client(obs.port) as sock:
            await _session_ends_though_a_peer_never_reads(obs, "client", caplog)
            # Reset, not FIN: the client must not take the cut stream for a clean end.
            with pytest.raises(ConnectionResetError):
                await _read_until_reset(sock)
        await wait_until(lambda: sessions[0].ended.is_set(), 2, "the backend to see the end")


async def test_stalled_upstream_cannot_keep_a_closed_session_alive(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Guards against a backend that stopped reading keeping a finished session open forever."""
    monkeypatch.setattr(wsproxy.tunnel, "CLOSE_TIMEOUT", 0.3)
    caplog.set_level(logging.ERROR)
    release = asyncio.Event()

    async def stall(session: Session) -> None:
        await session.accept()
        # Reads nothing until the test is over (not even into the StreamReader).
        transport = cast(asyncio.Transport, session.writer.transport)
        transport.pause_reading()
        await release.wait()
        transport.resume_reading()
        await session.read_to_eof()

    backend, sessions = scripted(stall)
    async with backend:
        assert backend.server is not None
        # A tiny receive window, inherited by every accepted connection.
        backend.server.sockets[0].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        text = _config(backend.port, extra=SMALL_BUFFER, route_extra=IDLE_400MS)
        async with observed_proxy(text) as obs, raw_client(obs.port) as (reader, writer):
            await handshake(reader, writer, obs.port)
            writer.write(_flood_frame(masked=True))
            try:
                await _session_ends_though_a_peer_never_reads(obs, "upstream", caplog)
            finally:
                release.set()
            await wait_until(lambda: sessions[0].ended.is_set(), 2, "the backend to see the end")
            # Reset, not FIN: the backend must not take the cut stream for a clean end.
            assert isinstance(sessions[0].error, ConnectionResetError), sessions[0].error


# --- 2. shutdown -------------------------------------------------------------


def _shutdown_backend() -> tuple[RawBackend, list[Session]]:
    """``/flood`` floods after 101, other handshakes just stay open, plain requests get 200."""

    async def script(session: Session) -> None:
        if (session.head.get("Upgrade") or "").lower() != "websocket":
            session.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await session.writer.drain()
        elif session.head.start_line.startswith("GET /flood "):
            await _flood_then_wait(session)
        else:
            await session.accept()
            await session.read_to_eof()

    return scripted(script)


async def test_shutdown_stops_accepting_first_ends_every_session_and_leaves_nothing() -> None:
    """Guards against stop() accepting while it drains, or returning with sessions still open."""
    backend, sessions = _shutdown_backend()
    async with backend:
        text = _config(backend.port, extra=SMALL_BUFFER)
        server = ProxyServer(parse_config(text, "t.yaml"))
        await server.start()
        port = server.addresses[0][1]
        stopping: asyncio.Task[None] | None = None
        try:
            async with (
                raw_client(port) as (reader, writer),
                raw_client(port) as (keep_reader, keep_writer),
                _stalled_client(port, "/flood") as stalled,
            ):
                await handshake(reader, writer, port)
                await wait_until(lambda: len(server.sessions) == 2, 2, "two sessions")
                [flooded] = [t for t, i in server.sessions.items() if i.path == "/flood"]
                await wait_until(lambda: _backed_up(flooded), 5, "the stalled client to back up")
                # A keep-alive connection that is open before the shutdown starts.
                keep_writer.write(http_request("GET", "/plain", [("Host", f"{LOOPBACK}:{port}")]))
                head, body = await read_response(keep_reader)
                assert (head.status, body) == (200, b"ok")

                stopping = asyncio.create_task(server.stop(), name="proxy-stop")
                await wait_until(lambda: server.draining, 2, "the drain to start")
                with pytest.raises(ConnectionRefusedError):
                    await asyncio.open_connection(LOOPBACK, port)
                # The session whose client reads gets 1001 Going Away at once;
                # its close answered, the connection ends with FIN.
                async with asyncio.timeout(2):
                    frame = await read_frame(reader)
                going_away = (1001).to_bytes(2, "big")
                assert (frame.opcode, frame.masked, frame.payload) == (0x8, False, going_away)
                writer.write(encode_frame(0x8, going_away))
                assert await read_until_closed(reader, timeout=2) == b""
                # Its upstream got one close frame, masked (RFC 6455 §5.1), then FIN.
                [plain] = [s for s in sessions if s.head.start_line.startswith("GET /ws ")]
                await wait_until(plain.saw_eof.is_set, 2, "the backend to see FIN")
                received = bytes(plain.received)
                assert len(received) == 8, received
                assert received[:2] == b"\x88\x82", received
                key = received[2:6]
                assert bytes(b ^ key[i] for i, b in enumerate(received[6:])) == going_away
                # An idle keep-alive connection is closed at once (nginx does
                # the same): a client's next request goes to another instance.
                assert await read_until_closed(keep_reader, timeout=2) == b""
                # All of that happened while stop() still waited for the stalled session.
                assert not stopping.done()
                # The plain session ends once its upstream, half-closed after
                # the client's answer, closes too; the stalled one is left.
                await wait_until(lambda: len(server.sessions) == 1, 2, "one session left")

                async with asyncio.timeout(5):
                    await stopping
                assert not server.sessions
                # The session left after the grace period is reset, not left open.
                with pytest.raises(ConnectionResetError):
                    await _read_until_reset(stalled)
        finally:
            if stopping is None:
                await server.stop()
            else:
                # Bounded: a stop() that hangs must fail this test, not hang the run.
                await asyncio.wait_for(stopping, 15)


# --- 3. early-close timing ---------------------------------------------------


async def _fin_after_101(seen: Seen) -> None:
    """FIN right after ``101``; the backend keeps reading its half."""
    assert seen.writer is not None
    seen.writer.write_eof()


async def test_early_close_is_timed_to_the_closing_event_not_to_the_teardown() -> None:
    """Guards against a client holding its half open hiding an upstream FIN right after 101."""
    async with recording(_fin_after_101) as backend:
        text = _config(backend.port, route_extra=_websocket(early_close_window="1s"))
        async with observed_proxy(text) as obs:
            async with raw_client(obs.port) as (reader, writer):
                await handshake(reader, writer, obs.port)
                assert await read_until_closed(reader, timeout=2) == b""
                assert len(obs.server.sessions) == 1  # the client's half is still open
                # Elapsed time is the behaviour: the client holds its half open
                # past the 1s window before it closes.
                await asyncio.sleep(1.5)
            await obs.sessions_ended()
            scrape = await obs.scrape()
            early = scrape.series("wsproxy_websocket_early_closes_total", route="/")
            labels = frozenset({("route", "/"), ("closed_by", "upstream"), ("code", "1006")})
            assert early == {labels: 1.0}
            [entry] = obs.log_records()
            assert (entry["closed_by"], entry["how"], entry["early"]) == ("upstream", "fin", True)
            assert entry["duration_ms"] < 1000, entry


# --- 4. a client that leaves during the upstream handshake -------------------


async def test_client_leaving_during_the_upstream_handshake_abandons_it_as_499() -> None:
    """Guards against the proxy waiting out read_timeout on a handshake nobody wants any more."""
    heads: list[Head] = []
    upstream_closed = asyncio.Event()

    async def never_answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: Head
    ) -> bool:
        heads.append(head)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        upstream_closed.set()
        return False

    async with RawBackend(never_answer) as backend, observed_proxy(_config(backend.port)) as obs:
        async with raw_client(obs.port) as (_reader, writer):
            writer.write(handshake_request(LOOPBACK, obs.port))
            await wait_until(lambda: bool(heads), 2, "the handshake to reach the backend")
        try:
            async with asyncio.timeout(2):
                await upstream_closed.wait()
        except TimeoutError:
            raise AssertionError("the proxy kept the upstream handshake open") from None
        scrape = await _requests_with_code(obs, "499")
        assert scrape.series("wsproxy_http_requests_total") == {
            frozenset({("route", "/"), ("method", "GET"), ("code", "499")}): 1.0
        }
        assert scrape.value("wsproxy_websocket_upgrades_total", route="/", result="accepted") == 0
        assert not obs.server.sessions


# --- 5. passive health -------------------------------------------------------


async def test_passive_health_recovers_after_fail_timeout_without_any_traffic() -> None:
    """Guards against one failed attempt keeping /readyz at 503 until traffic proves otherwise."""
    dead = free_port()
    server = f"127.0.0.1:{dead}"
    text = config_text(dead, extra=FAST_STOP, upstream_extra="    fail_timeout: 500ms\n")
    async with observed_proxy(text) as obs:
        head, _body = await raw_request(
            obs.port, http_request("GET", "/", [("Host", f"{LOOPBACK}:{obs.port}")])
        )
        assert head.status == 502
        assert (await obs.get("/readyz"))[0] == 503
        scrape = await obs.scrape()
        assert scrape.value("wsproxy_upstream_server_up", upstream="app", server=server) == 0
        # Elapsed time is the behaviour: fail_timeout passes with no request at all.
        await asyncio.sleep(0.6)
        assert (await obs.get("/readyz"))[0] == 200
        scrape = await obs.scrape()
        assert scrape.value("wsproxy_upstream_server_up", upstream="app", server=server) == 1
        status = await obs.status_json()
        assert status["upstreams"] == {"app": {server: "up"}}


# --- 6. a client that aborts its upload --------------------------------------


@pytest.mark.parametrize("abort", ["reset", "fin"])
async def test_client_aborting_its_upload_is_a_499_not_an_upstream_failure(abort: str) -> None:
    """Guards against a client's aborted upload marking a healthy upstream down with a 502."""
    body_seen = asyncio.Event()
    received = bytearray()

    async def slow_reader(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: Head
    ) -> bool:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(4096):
                received.extend(chunk)
                if len(received) >= 4096:
                    body_seen.set()
        return False

    async with RawBackend(slow_reader) as backend, observed_proxy(_config(backend.port)) as obs:
        server = f"127.0.0.1:{backend.port}"
        async with raw_client(obs.port) as (_reader, writer):
            headers = [("Host", f"{LOOPBACK}:{obs.port}"), ("Content-Length", "10000000")]
            writer.write(http_request("POST", "/upload", headers, bytes(8192)))
            async with asyncio.timeout(2):
                await body_seen.wait()  # the upload is flowing to the upstream
            if abort == "reset":
                reset_on_close(writer)
        scrape = await _requests_with_code(obs, "499")
        assert scrape.series("wsproxy_http_requests_total") == {
            frozenset({("route", "/"), ("method", "POST"), ("code", "499")}): 1.0
        }
        errors = scrape.series("wsproxy_upstream_errors_total")
        assert not [labels for labels, value in errors.items() if value > 0], errors
        assert scrape.value("wsproxy_upstream_server_up", upstream="app", server=server) == 1
        assert (await obs.get("/readyz"))[0] == 200


# --- 7. absolute-form request target -----------------------------------------


async def test_absolute_form_target_is_sent_upstream_in_origin_form() -> None:
    """Guards against a 500 for `GET http://host/path` (RFC 9112 §3.2.2 requires accepting it)."""
    async with RecordingBackend() as backend, observed_proxy(_config(backend.port)) as obs:
        target = f"http://{LOOPBACK}:{obs.port}/abs?x=1"
        head, body = await raw_request(
            obs.port, http_request("GET", target, [("Host", f"{LOOPBACK}:{obs.port}")])
        )
        assert (head.status, body) == (200, b"ok")
        [request] = backend.requests
        assert request.head.start_line == "GET /abs?x=1 HTTP/1.1"


# --- 8. a body the upstream cut short ----------------------------------------


async def test_body_cut_by_the_upstream_resets_an_http10_client() -> None:
    """Guards against a truncated body ending with FIN, which HTTP/1.0 reads as complete."""

    async def cut_short(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: Head
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello")
        await writer.drain()
        return False  # FIN after 5 of 100 bytes

    async with RawBackend(cut_short) as backend, observed_proxy(_config(backend.port)) as obs:
        async with raw_client(obs.port) as (reader, writer):
            writer.write(b"GET /cut HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            received = bytearray()
            with pytest.raises(ConnectionResetError):
                await _read_into(reader, received)
            # The head and the 5 bytes arrive, then the reset instead of an end.
            assert received.startswith(b"HTTP/1.1 200 OK\r\n"), bytes(received)
            assert received.endswith(b"\r\n\r\nhello"), bytes(received)
        scrape = await obs.scrape()
        errors = scrape.series("wsproxy_upstream_errors_total")
        assert sum(errors.values()) == 1, errors


# --- 9. streamed responses ---------------------------------------------------


@pytest.mark.parametrize("framing", ["chunked", "until-close"])
async def test_streamed_response_head_is_not_held_back_for_the_first_byte(framing: str) -> None:
    """Guards against a server-sent-events head waiting in the proxy for the first event."""
    first_event = asyncio.Event()
    event = b"data: one\n\n"

    async def event_stream(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: Head
    ) -> bool:
        framing_header = "Transfer-Encoding: chunked\r\n" if framing == "chunked" else ""
        writer.write(
            f"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n{framing_header}\r\n".encode()
        )
        await writer.drain()
        await first_event.wait()
        writer.write(chunked(event) if framing == "chunked" else event)
        await writer.drain()
        return False

    async with (
        RawBackend(event_stream) as backend,
        observed_proxy(_config(backend.port)) as obs,
        raw_client(obs.port) as (reader, writer),
    ):
        headers = [("Host", f"{LOOPBACK}:{obs.port}"), ("Accept", "text/event-stream")]
        writer.write(http_request("GET", "/events", headers))
        try:
            async with asyncio.timeout(2):
                head = await read_head(reader)
        except TimeoutError:
            raise AssertionError("no response head before the first event") from None
        assert not first_event.is_set()
        assert head.status == 200
        assert head.get("Content-Type") == "text/event-stream"
        first_event.set()
        async with asyncio.timeout(2):
            if head.get("Transfer-Encoding") == "chunked":
                assert await read_chunked(reader) == event
            else:
                assert await reader.read() == event


async def test_long_targets_and_hosts_do_not_fill_the_per_request_tables() -> None:
    """Guards against a client pinning memory through the dispatch decisions and
    the access log's field groups (kept per distinct request): requests with
    long targets and Host values are answered and logged but not kept."""
    backend = RecordingBackend()
    async with backend, observed_proxy(config_text(backend.port)) as obs:
        reader, writer = await asyncio.open_connection(LOOPBACK, obs.port)
        for number in range(20):
            target = f"/{number}/" + "a" * 2000
            host = f"h{number}" + "b" * (600 if number % 2 else 0)
            writer.write(http_request("GET", target, [("Host", host)]))
            head, _ = await read_http_response(reader, "GET")
            assert head.status == 200
        writer.write(http_request("GET", "/short", [("Host", "h")]))
        assert (await read_http_response(reader, "GET"))[0].status == 200
        writer.close()
        records = obs.log_records()
        assert len(records) == 21
        assert records[3]["path"] == "/3/" + "a" * 2000
        kept_targets = [key[3] for key in obs.server.proxy._decisions]
        assert kept_targets == ["/short"]
        kept_paths = [key[4] for key in obs.server.observability.access_log._fields]
        assert kept_paths == ["/short"]


async def test_a_plain_answer_during_shutdown_says_connection_close() -> None:
    """Guards against the plain case's short way (Request.hold_plain_head) keeping a
    connection's answer without ``Connection: close`` when the server stops while
    a GET is in flight: the client must learn the connection ends with it."""
    arrived, release = asyncio.Event(), asyncio.Event()

    async def respond(received: object) -> bytes:
        arrived.set()
        await release.wait()
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    async with RecordingBackend(respond) as backend:
        server = ProxyServer(parse_config(config_text(backend.port), "t.yaml"))
        await server.start()
        stopping: asyncio.Task[None] | None = None
        try:
            reader, writer = await asyncio.open_connection(LOOPBACK, server.addresses[0][1])
            writer.write(http_request("GET", "/", [("Host", "h")]))
            await asyncio.wait_for(arrived.wait(), 5)
            stopping = asyncio.create_task(server.stop(), name="proxy-stop")
            await wait_until(lambda: server.draining, 2, "the drain to start")
            release.set()
            async with asyncio.timeout(5):
                head, body = await read_http_response(reader, "GET")
                assert (head.status, body) == (200, b"ok")
                assert head.get("Connection") == "close"
                assert await reader.read() == b""
            writer.close()
        finally:
            release.set()
            if stopping is None:
                await server.stop()
            else:
                await asyncio.wait_for(stopping, 15)
