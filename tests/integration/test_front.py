"""The front door over real sockets: the take-over after 101, flow control,
pipelining, and every limit and timer of the ``proxy:`` section (shortened).

Each timer test waits for an event (an answer, a close), bounded by a
timeout several times the configured value, so a timer that never fires
fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from tests.support.backends import RawBackend, Seen, recording, swoole_like
from tests.support.http_backends import (
    Received,
    RecordingBackend,
    raw_request,
    read_response,
    request_bytes,
)
from tests.support.observe_helpers import eventually, observed_proxy
from tests.support.proxy import config_text, running_proxy
from tests.support.wire import Head, encode_frame, handshake_request, open_raw, read_head
from tests.support.ws_helpers import read_frame
from wsproxy.forward import Relay
from wsproxy.server import ProxyServer
from wsproxy.tunnel import Tunnel

TIMEOUT = 10.0


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


@contextlib.asynccontextmanager
async def connection(port: int):  # type: ignore[no-untyped-def]
    reader, writer = await open_raw("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        await close_writer(writer)


async def read_server_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    frame = await read_frame(reader)
    return frame.opcode, frame.payload


async def open_tunnel(
    port: int, *, early: bytes = b"", sock: socket.socket | None = None, limit: int = 2**24
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Handshake through the proxy (with ``early`` bytes in the same write); expect 101."""
    if sock is None:
        reader, writer = await open_raw("127.0.0.1", port)
    else:
        reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
    try:
        writer.write(handshake_request("127.0.0.1", port) + early)
        async with asyncio.timeout(TIMEOUT):
            head = await read_head(reader)
        assert head.status == 101, head.start_line
    except BaseException:
        await close_writer(writer)
        raise
    return reader, writer


async def echo_roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(encode_frame(0x1, b"still there?"))
    async with asyncio.timeout(TIMEOUT):
        assert await read_server_frame(reader) == (0x1, b"still there?")


def only_tunnel(server: ProxyServer) -> Tunnel:
    [tunnel] = server.sessions
    return tunnel


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    async def probe() -> bool | None:
        return True if condition() else None

    await eventually(probe, timeout=TIMEOUT, what=what)


@dataclass
class Refusal:
    head: Head
    closed: bool  # the connection ended after the answer
    logged_status: int
    backend_saw: list[Received]


async def refusal(extra: str, *pieces: bytes, forwarded_ok: bool = False) -> Refusal:
    """Send ``pieces`` (each drained) on one connection; the proxy's answer and log.

    Unless ``forwarded_ok``, nothing may have reached the backend.
    """
    async with (
        RecordingBackend() as backend,
        observed_proxy(config_text(backend.port, extra=extra)) as obs,
        connection(obs.port) as (reader, writer),
    ):
        with contextlib.suppress(ConnectionError):
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
        async with asyncio.timeout(TIMEOUT):
            head, _body = await read_response(reader)
            try:
                closed = await reader.read() == b""
            except ConnectionError:
                closed = True
        await obs.log_has(1)
        (record,) = obs.log_records()
    if not forwarded_ok:
        assert backend.requests == []
    return Refusal(head, closed, record["status"], backend.requests)


# --- the take-over after 101 ------------------------------------------------------


async def test_bytes_in_the_same_write_as_the_handshake_reach_the_upstream() -> None:
    early = encode_frame(0x1, b"sent with the handshake") + encode_frame(0x2, bytes(range(256)))
    later = encode_frame(0x1, b"sent after the 101")
    async with recording() as backend, running_proxy(config_text(backend.port)) as (_s, port):
        _reader, writer = await open_tunnel(port, early=early)
        try:
            writer.write(later)
            await wait_for(lambda: len(backend.seen) == 1, "the backend connection")
            seen = backend.seen[0]
            await wait_for(lambda: len(seen.received) >= len(early + later), "all the bytes")
            assert bytes(seen.received) == early + later
        finally:
            await close_writer(writer)


async def plain_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One keep-alive GET through the proxy to the Swoole-like backend."""
    writer.write(b"GET /plain HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    async with asyncio.timeout(TIMEOUT):
        head = await read_head(reader)
        body = await reader.readexactly(int(head.get("Content-Length") or 0))
    assert head.status == 200
    assert body == b"version=HTTP/1.1\n"


@pytest.mark.parametrize("reuse", [False, True], ids=["fresh-connection", "after-keepalive-get"])
async def test_idle_tunnel_outlives_the_front_keepalive_timeout(reuse: bool) -> None:
    extra = "proxy:\n  keepalive_timeout: 200ms\n"
    async with (
        swoole_like() as backend,
        running_proxy(config_text(backend.port, extra=extra)) as (_s, port),
        connection(port) as (plain_reader, plain_writer),
        connection(port) as (reader, writer),
    ):
        await plain_get(plain_reader, plain_writer)
        if reuse:
            await plain_get(reader, writer)  # the keep-alive timer ran for this one
        writer.write(handshake_request("127.0.0.1", port))
        async with asyncio.timeout(TIMEOUT):
            head = await read_head(reader)
        assert head.status == 101, head.start_line
        # The plain connection is closed by the keep-alive timer...
        async with asyncio.timeout(TIMEOUT):
            assert await plain_reader.read() == b""
        # ...while the tunnel, quiet as long, is not the front door's any more.
        await echo_roundtrip(reader, writer)


async def test_slow_client_pauses_reading_the_upstream_then_everything_arrives() -> None:
    payload = bytes(range(256)) * 256
    frame = encode_frame(0x2, payload, mask=False)  # 64 KiB a frame
    frames = 256  # 16 MiB: far more than every buffer on the way can hold
    total = len(frame) * frames
    pushed = hashlib.sha256()

    async def push(seen: Seen) -> None:
        writer = seen.writer
        assert writer is not None
        for _ in range(frames):
            writer.write(frame)
            pushed.update(frame)
            await writer.drain()

    limit = 64 * 1024
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.setblocking(False)
    extra = "proxy:\n  tunnel_buffer: 64KiB\n"
    async with (
        recording(after_switch=push) as backend,
        running_proxy(config_text(backend.port, extra=extra)) as (server, port),
    ):
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        reader, writer = await open_tunnel(port, sock=sock, limit=limit)
        try:
            await wait_for(lambda: len(server.sessions) == 1, "the tunnel")
            tunnel = only_tunnel(server)
            await wait_for(
                lambda: not tunnel.upstream_transport.is_reading(), "reading the upstream paused"
            )
            assert tunnel.client_transport is not None
            assert tunnel.client_transport.get_write_buffer_size() <= limit + 256 * 1024
            received = hashlib.sha256()
            count = 0
            async with asyncio.timeout(TIMEOUT):
                while count < total:
                    chunk = await reader.read(1 << 20)
                    assert chunk, f"the tunnel closed after {count} of {total} bytes"
                    received.update(chunk)
                    count += len(chunk)
            assert received.hexdigest() == pushed.hexdigest()
            await wait_for(lambda: tunnel.upstream_transport.is_reading(), "reading resumed")
        finally:
            await close_writer(writer)


async def _client_closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await close_writer(writer)


async def _upstream_closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(encode_frame(0x8, struct.pack("!H", 1000)))
    async with asyncio.timeout(TIMEOUT):
        assert await read_server_frame(reader) == (0x8, struct.pack("!H", 1000))
        assert await reader.read() == b""
    await close_writer(writer)


@pytest.mark.parametrize(
    "end", [_client_closes, _upstream_closes], ids=["client-closes", "upstream-closes"]
)
async def test_the_front_door_forgets_the_connection_at_the_takeover(
    end: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> None:
    """No request task or connection entry outlives the 101; the tunnel lives on."""
    async with (
        swoole_like() as backend,
        running_proxy(config_text(backend.port)) as (server, port),
    ):
        reader, writer = await open_tunnel(port)
        try:
            await echo_roundtrip(reader, writer)
            await wait_for(lambda: not server.connections, "the front door to let go")
            assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("request from")]
            await echo_roundtrip(reader, writer)
            tunnel = only_tunnel(server)
            await end(reader, writer)
            await wait_for(lambda: not server.sessions, "the session to end")
            assert tunnel.finished.done()
        finally:
            await close_writer(writer)


# --- what the client gets ---------------------------------------------------------


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /minimal HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /minimal HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    ],
    ids=["http10-client", "http11-client"],
)
async def test_response_carries_only_upstream_headers_and_an_http11_status_line(
    request_head: bytes,
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, h: Head) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        return True

    async with (
        RawBackend(handler) as backend,
        running_proxy(config_text(backend.port)) as (_s, port),
        connection(port) as (reader, writer),
    ):
        writer.write(request_head)
        async with asyncio.timeout(TIMEOUT):
            raw = await reader.read()
    head_bytes, _, body = raw.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    assert sorted(lines[1:]) == ["Connection: close", "Content-Length: 2"]
    assert body == b"ok"


async def test_pipelined_requests_with_bodies_are_answered_in_order() -> None:
    requests = b"".join(
        request_bytes(
            "POST", f"/{i}", [("Host", "h"), ("Content-Length", str(len(body)))], body=body
        )
        for i, body in enumerate([b"a", b"", b"ccc" * 1000, b"dd"])
    )
    async with (
        RecordingBackend() as backend,
        running_proxy(config_text(backend.port)) as (_s, port),
        connection(port) as (reader, writer),
    ):
        writer.write(requests)
        async with asyncio.timeout(TIMEOUT):
            for _ in range(4):
                head, body = await read_response(reader)
                assert (head.status, body) == (200, b"ok")
    assert [(r.head.start_line, r.body) for r in backend.requests] == [
        ("POST /0 HTTP/1.1", b"a"),
        ("POST /1 HTTP/1.1", b""),
        ("POST /2 HTTP/1.1", b"ccc" * 1000),
        ("POST /3 HTTP/1.1", b"dd"),
    ]


async def test_a_deep_pipeline_is_bounded_and_closes_after_the_answered_ones() -> None:
    """At most 1 + MAX_PIPELINE requests of one burst are taken; the rest are not
    forwarded and the connection closes after the answers, in order."""
    burst = b"".join(request_bytes("GET", f"/{i}", [("Host", "h")]) for i in range(200))
    async with (
        RecordingBackend() as backend,
        running_proxy(config_text(backend.port)) as (_s, port),
        connection(port) as (reader, writer),
    ):
        writer.write(burst)
        answered = 0
        async with asyncio.timeout(TIMEOUT):
            while True:
                try:
                    head, body = await read_response(reader)
                except asyncio.IncompleteReadError:
                    break
                assert (head.status, body) == (200, b"ok")
                answered += 1
    targets = [r.head.start_line.split()[1] for r in backend.requests]
    assert 1 <= answered < 200
    assert targets == [f"/{i}" for i in range(answered)]


# --- limits -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-A: " + b"b" * 3000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-A: b\r\n" * 400 + b"\r\n", 431),
    ],
    ids=["request-line", "one-field", "many-fields"],
)
async def test_the_head_budget_is_the_whole_head(raw: bytes, status: int) -> None:
    answer = await refusal("proxy:\n  max_header_size: 2KiB\n", raw)
    assert answer.head.status == answer.logged_status == status
    assert answer.closed


async def test_a_head_sent_in_pieces_cannot_outgrow_the_budget() -> None:
    """httptools buffers an unfinished field whole; raw bytes count against the budget."""
    pieces = [b"GET / HTTP/1.1\r\nHost: h\r\nX-Endless: ", *[b"x" * 1000] * 100]
    answer = await refusal("proxy:\n  max_header_size: 2KiB\n", *pieces)
    assert answer.head.status == answer.logged_status == 431


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_max_body_size_is_413_and_nothing_more_is_forwarded(chunked: bool) -> None:
    body = b"z" * 4096
    if chunked:
        raw = request_bytes(
            "POST", "/", [("Host", "h"), ("Transfer-Encoding", "chunked")]
        ) + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    else:
        raw = request_bytes("POST", "/", [("Host", "h"), ("Content-Length", "4096")], body=body)
    answer = await refusal("proxy:\n  max_body_size: 1KiB\n", raw, forwarded_ok=True)
    assert answer.head.status == answer.logged_status == 413
    assert answer.head.get("Connection") == "close"
    assert all(len(r.body) <= 1024 for r in answer.backend_saw)


async def test_a_transfer_coding_other_than_chunked_is_501() -> None:
    raw = request_bytes("POST", "/", [("Host", "h"), ("Transfer-Encoding", "gzip, chunked")])
    answer = await refusal("", raw + b"0\r\n\r\n")
    assert answer.head.status == answer.logged_status == 501


async def test_an_endless_request_trailer_is_refused() -> None:
    start = request_bytes("POST", "/", [("Host", "h"), ("Transfer-Encoding", "chunked")])
    pieces = [start + b"2\r\nok\r\n0\r\nX-Trailer: ", *[b"t" * 1000] * 100]
    answer = await refusal("proxy:\n  max_header_size: 2KiB\n", *pieces, forwarded_ok=True)
    assert answer.head.status == answer.logged_status == 431


# --- timers -----------------------------------------------------------------------


async def test_a_head_that_never_completes_gets_408_and_the_connection_closes() -> None:
    answer = await refusal(
        "proxy:\n  client_header_timeout: 300ms\n", b"GET / HTTP/1.1\r\nHost: h\r\n"
    )
    assert answer.head.status == answer.logged_status == 408
    assert answer.closed


async def test_a_stalled_body_gets_408_and_the_upstream_request_is_abandoned() -> None:
    upstream_closed = asyncio.Event()

    async def reads_body(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, h: Head
    ) -> bool:
        await reader.read()  # until the proxy gives up on the request
        upstream_closed.set()
        return False

    extra = "proxy:\n  client_body_timeout: 300ms\n"
    async with (
        RawBackend(reads_body) as backend,
        observed_proxy(config_text(backend.port, extra=extra)) as obs,
        connection(obs.port) as (reader, writer),
    ):
        writer.write(request_bytes("POST", "/", [("Host", "h"), ("Content-Length", "100")]))
        writer.write(b"only part")
        async with asyncio.timeout(TIMEOUT):
            head, _body = await read_response(reader)
            assert head.status == 408
            await upstream_closed.wait()
        await obs.log_has(1)
        assert obs.log_records()[0]["status"] == 408


async def test_a_client_that_reads_nothing_is_cut_after_send_timeout() -> None:
    big = b"y" * (8 << 20)

    async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, h: Head) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big))
        with contextlib.suppress(ConnectionError):
            writer.write(big)
            await writer.drain()
        return False

    extra = "proxy:\n  send_timeout: 300ms\n"
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    async with (
        RawBackend(huge) as backend,
        running_proxy(config_text(backend.port, extra=extra)) as (server, port),
    ):
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        _reader, writer = await asyncio.open_connection(sock=sock, limit=2**16)
        try:
            writer.write(request_bytes("GET", "/", [("Host", "h")]))
            await wait_for(lambda: len(server.connections) == 1, "the connection")
            await wait_for(lambda: not server.connections, "the proxy to cut the client")
        finally:
            await close_writer(writer)


async def test_an_idle_keepalive_connection_closes_after_keepalive_timeout() -> None:
    extra = "proxy:\n  keepalive_timeout: 300ms\n"
    async with (
        RecordingBackend() as backend,
        running_proxy(config_text(backend.port, extra=extra)) as (_s, port),
        connection(port) as (reader, writer),
    ):
        writer.write(request_bytes("GET", "/", [("Host", "h")]))
        async with asyncio.timeout(TIMEOUT):
            head, _body = await read_response(reader)
            assert head.status == 200
            assert await reader.read() == b""


async def test_empty_lines_alone_do_not_keep_a_connection_open() -> None:
    """llhttp skips CRLFs before a request without starting one; the idle timer
    must still run."""
    extra = "proxy:\n  keepalive_timeout: 300ms\n  client_header_timeout: 300ms\n"
    async with (
        RecordingBackend() as backend,
        running_proxy(config_text(backend.port, extra=extra)) as (_s, port),
        connection(port) as (reader, writer),
    ):
        writer.write(b"\r\n")
        async with asyncio.timeout(TIMEOUT):
            assert await reader.read() == b""


async def test_an_answer_given_before_a_body_limit_broke_is_the_one_logged() -> None:
    """The proxy answers 404 inside the parser's callbacks; the same read then
    breaks max_body_size.  The client got the 404, so the log and the count say
    404, and the connection closes (the rest of the body is not read)."""
    extra = "proxy:\n  max_body_size: 100\n"
    start = request_bytes("POST", "/nothere", [("Host", "h"), ("Transfer-Encoding", "chunked")])
    async with (
        RecordingBackend() as backend,
        observed_proxy(config_text(backend.port, extra=extra, path_prefix="/api")) as obs,
        connection(obs.port) as (reader, writer),
    ):
        writer.write(start + b"200\r\n" + b"a" * 0x200 + b"\r\n")
        async with asyncio.timeout(TIMEOUT):
            head, _body = await read_response(reader)
            assert head.status == 404
            assert await reader.read() == b""
        await obs.log_has(1)
        (record,) = obs.log_records()
        assert record["status"] == 404


async def test_a_failure_of_ours_after_the_request_went_upstream_is_one_answer(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug raising after a relay started: the relay is dropped, the client gets
    one 500 (never the upstream's answer after it), and one line is logged."""
    started = Relay.start

    def start_then_fail(self: Relay, head: bytes, read_timeout: float) -> None:
        started(self, head, read_timeout)
        raise RuntimeError("a bug of ours")

    async with (
        RecordingBackend() as backend,
        observed_proxy(config_text(backend.port)) as obs,
    ):
        # A first request opens the pooled connection the fast path uses.
        head, _body = await raw_request(obs.port, request_bytes("GET", "/", [("Host", "h")]))
        assert head.status == 200
        monkeypatch.setattr(Relay, "start", start_then_fail)
        async with connection(obs.port) as (reader, writer):
            writer.write(request_bytes("GET", "/again", [("Host", "h")]))
            async with asyncio.timeout(TIMEOUT):
                head, _body = await read_response(reader)
                assert head.status == 500
                assert await reader.read() == b""  # nothing after the 500
        await obs.log_has(2)
        assert [record["status"] for record in obs.log_records()] == [200, 500]
    assert any("a bug of ours" in str(r.exc_info) for r in caplog.records if r.exc_info)


@pytest.mark.parametrize(
    "pieces",
    [
        # Pipelined behind a well-formed request, in the same write.
        [b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET  /b HTTP/1.1\r\nHost: h\r\n\r\n"],
        # Split across writes (and so, usually, across reads).
        [b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", b"GET ", b" /b HTTP/1.1\r\nHost: h\r\n\r\n"],
        [b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b ", b" HTTP/1.1\r\nHost: h\r\n\r\n"],
    ],
    ids=["pipelined", "split-after-method", "split-after-target"],
)
async def test_several_spaces_in_any_request_line_are_refused(pieces: list[bytes]) -> None:
    """llhttp reads "GET  /b" as "GET /b"; the proxy refuses it wherever the line
    falls in the reads, and never forwards it."""
    async with (
        RecordingBackend() as backend,
        running_proxy(config_text(backend.port)) as (_s, port),
        connection(port) as (reader, writer),
    ):
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
        async with asyncio.timeout(TIMEOUT):
            first, _body = await read_response(reader)
            second, _body = await read_response(reader)
            assert await reader.read() == b""
    assert (first.status, second.status) == (200, 400)
    assert [r.head.start_line for r in backend.requests] == ["GET /a HTTP/1.1"]
