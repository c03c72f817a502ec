"""The drain: ``1001 Going Away`` to both sides at a frame boundary, spread, bounded.

Each test holds a frame in progress or a set of sessions when the drain
starts, then checks what each peer received byte by byte: the whole frame
first, one close frame (unmasked to the client, masked to the upstream),
nothing relayed after it, and the process's stop within its grace period.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import sys
import time
from pathlib import Path

from tests.support.observe_helpers import closes, observed_proxy, one_session, scrape_now
from tests.support.process import free_port, spawn
from tests.support.proxy import config_text
from tests.support.wire import encode_frame
from tests.support.ws_helpers import (
    GOING_AWAY,
    Frame,
    Session,
    frames_until_close,
    handshake,
    raw_client,
    scripted,
    wait_until,
)
from wsproxy.server import ProxyServer

MIB = 1 << 20
#: A 1 MiB payload that is not all one byte, so a shifted or cut frame shows.
PAYLOAD = bytes(range(256)) * (MIB // 256)
GRACE = "shutdown:\n  grace_period: 5s\n"


def start_stop(server: ProxyServer) -> asyncio.Task[None]:
    return asyncio.create_task(server.stop(), name="proxy-stop")


async def test_a_frame_half_sent_by_the_upstream_is_finished_before_the_1001() -> None:
    """The client gets the whole 1 MiB frame, then 1001 and nothing after; the
    upstream gets exactly one close frame, masked; no early close is logged."""
    half_sent, go = asyncio.Event(), asyncio.Event()
    upstream_got: list[Frame] = []

    async def script(session: Session) -> None:
        await session.accept()
        frame = encode_frame(0x2, PAYLOAD, mask=False)
        session.writer.write(frame[: len(frame) // 2])
        await session.writer.drain()
        half_sent.set()
        await go.wait()
        # The rest, and a message the drain must no longer relay.
        session.writer.write(frame[len(frame) // 2 :] + encode_frame(0x1, b"late", mask=False))
        upstream_got.extend(await frames_until_close(session.reader))
        session.writer.write(encode_frame(0x8, upstream_got[-1].payload, mask=False))
        await session.read_to_eof()

    backend, sessions = scripted(script)
    async with (
        backend,
        observed_proxy(config_text(backend.port, extra=GRACE)) as obs,
        raw_client(obs.port) as (reader, writer),
    ):
        await handshake(reader, writer, obs.port)
        await asyncio.wait_for(half_sent.wait(), 5)
        stopping = start_stop(obs.server)
        await wait_until(lambda: obs.server.draining, 2, "the drain to start")
        go.set()
        got = await frames_until_close(reader)
        assert [(f.opcode, f.fin, f.masked) for f in got] == [
            (0x2, True, False),
            (0x8, True, False),
        ]
        assert got[0].payload == PAYLOAD
        assert got[1].payload == GOING_AWAY
        writer.write(encode_frame(0x8, GOING_AWAY))
        async with asyncio.timeout(5):
            assert await reader.read() == b""
            await stopping
        await asyncio.wait_for(sessions[0].ended.wait(), 5)
        assert [(f.opcode, f.masked, f.payload) for f in upstream_got] == [(0x8, True, GOING_AWAY)]
        [record] = [r for r in obs.log_records() if r["type"] == "websocket"]
        assert (record["closed_by"], record["how"], record["code"]) == ("proxy", "drain", "1001")
        assert record["early"] is False
        assert record["bytes_upstream_to_client"] == len(encode_frame(0x2, PAYLOAD, mask=False))
        assert closes(obs.server) == {("/", "proxy", "1001"): 1.0}
        assert not scrape_now(obs.server).series("wsproxy_websocket_early_closes_total")
        assert "early close" not in obs.log_text()


async def test_a_frame_half_sent_by_the_client_is_finished_before_the_upstreams_1001() -> None:
    """The upstream gets the client's whole frame, then one masked 1001, and
    neither the client's later message nor its close answer."""
    upstream_got: list[Frame] = []

    async def script(session: Session) -> None:
        await session.accept()
        upstream_got.extend(await frames_until_close(session.reader))
        session.writer.write(encode_frame(0x8, GOING_AWAY, mask=False))
        await session.read_to_eof()

    backend, _sessions = scripted(script)
    async with (
        backend,
        observed_proxy(config_text(backend.port, extra=GRACE)) as obs,
        raw_client(obs.port) as (reader, writer),
    ):
        await handshake(reader, writer, obs.port)
        frame = encode_frame(0x2, PAYLOAD)
        writer.write(frame[: len(frame) // 2])
        await writer.drain()
        await obs.sessions_open(1)
        [tunnel] = obs.server.sessions
        await wait_until(lambda: tunnel.c2u.bytes > 0, 2, "the proxy to relay the frame's start")
        stopping = start_stop(obs.server)
        # The client hears the 1001 at once: its direction is at a boundary.
        [close] = await frames_until_close(reader)
        assert (close.opcode, close.masked, close.payload) == (0x8, False, GOING_AWAY)
        writer.write(frame[len(frame) // 2 :] + encode_frame(0x1, b"late"))
        writer.write(encode_frame(0x8, GOING_AWAY))
        async with asyncio.timeout(5):
            assert await reader.read() == b""
            await stopping
        assert [(f.opcode, f.masked) for f in upstream_got] == [(0x2, True), (0x8, True)]
        assert upstream_got[0].payload == PAYLOAD
        assert upstream_got[1].payload == GOING_AWAY


async def test_close_frames_are_spread_over_close_spread() -> None:
    """Four sessions, ``close_spread: 900ms``: the 1001s arrive over most of it,
    not in the same millisecond, and each session still ends cleanly."""
    count = 4

    async def script(session: Session) -> None:
        await session.accept()
        frames = await frames_until_close(session.reader)
        session.writer.write(encode_frame(0x8, frames[-1].payload, mask=False))
        await session.read_to_eof()

    backend, _sessions = scripted(script)
    extra = "shutdown:\n  grace_period: 5s\n  close_spread: 900ms\n"
    arrivals: list[float] = []

    async def client(port: int, ready: asyncio.Event) -> None:
        async with raw_client(port) as (reader, writer):
            await handshake(reader, writer, port)
            ready.set()
            [close] = await frames_until_close(reader)
            arrivals.append(time.monotonic())
            assert close.payload == GOING_AWAY
            writer.write(encode_frame(0x8, GOING_AWAY))
            async with asyncio.timeout(5):
                assert await reader.read() == b""

    async with backend, observed_proxy(config_text(backend.port, extra=extra)) as obs:
        readies = [asyncio.Event() for _ in range(count)]
        clients = [
            asyncio.create_task(client(obs.port, ready), name=f"client-{i}")
            for i, ready in enumerate(readies)
        ]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 5)
        await obs.sessions_open(count)
        started = time.monotonic()
        await asyncio.wait_for(obs.server.stop(), 5)
        await asyncio.wait_for(asyncio.gather(*clients), 5)
        assert closes(obs.server) == {("/", "proxy", "1001"): float(count)}
    arrivals.sort()
    # Evenly: at 0, 225, 450 and 675 ms after the stop began.
    assert arrivals[0] - started < 0.2
    assert 0.5 < arrivals[-1] - arrivals[0] < 0.9, [round(t - started, 3) for t in arrivals]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) > 0.1, gaps


async def test_without_the_frame_observer_the_drain_ends_sessions_with_fin() -> None:
    """``observe_frames: false`` leaves no frame boundary to know: FIN, never a
    close frame cut into someone's message."""

    async def script(session: Session) -> None:
        await session.accept()
        await session.read_to_eof()

    extra = GRACE + "proxy:\n  observe_frames: false\n"
    async with one_session(script, extra=extra) as (obs, reader, _writer):
        await obs.sessions_open(1)
        stopping = start_stop(obs.server)
        async with asyncio.timeout(5):
            assert await reader.read() == b""
            await stopping


async def test_sigterm_exits_0_within_the_grace_period_when_a_client_never_answers(
    tmp_path: Path,
) -> None:
    """Peers that ignore the 1001 are reset at ``grace_period``; the process
    exits 0 within the grace period plus one second."""
    hold = asyncio.Event()

    async def script(session: Session) -> None:
        await session.accept()
        await hold.wait()  # never reads, never answers

    backend, _sessions = scripted(script)
    async with backend:
        port = free_port()
        path = tmp_path / "proxy.yaml"
        text = config_text(backend.port, extra="shutdown:\n  grace_period: 1s\n")
        text = text.replace("port: 0\n", f"port: {port}\n", 1)
        path.write_text(text.replace("port: 0\n", f"port: {free_port()}\n", 1))
        async with spawn(
            [sys.executable, "-m", "wsproxy"], "serve", "-c", str(path), stderr=tmp_path / "err"
        ) as proxy:
            await proxy.wait_listening(port)
            async with raw_client(port) as (reader, writer):
                await handshake(reader, writer, port)
                began = time.monotonic()
                status_task = asyncio.create_task(proxy.stop(signal.SIGTERM, within=3.0))
                [close] = await frames_until_close(reader)
                assert close.payload == GOING_AWAY
                status = await status_task  # no one answered: reset at the grace period
                hold.set()
                elapsed = time.monotonic() - began
                stderr = proxy.stderr()
        assert status == 0, stderr
        assert 0.9 < elapsed < 2.0, elapsed
        assert "Traceback" not in stderr


async def test_a_client_inside_a_fragmented_message_keeps_its_close_handshake() -> None:
    """After the 1001 the client may still finish its fragmented message before
    its close frame: those continuation frames are no reason to cut it off."""

    async def script(session: Session) -> None:
        await session.accept()
        await frames_until_close(session.reader)
        session.writer.write(encode_frame(0x8, GOING_AWAY, mask=False))
        await session.read_to_eof()

    async with one_session(script, extra=GRACE) as (obs, reader, writer):
        writer.write(encode_frame(0x1, b"part 1 ", fin=False))
        await obs.sessions_open(1)
        [tunnel] = obs.server.sessions
        await wait_until(lambda: tunnel.c2u.bytes > 0, 2, "the first fragment to be relayed")
        stopping = start_stop(obs.server)
        [close] = await frames_until_close(reader)
        assert close.payload == GOING_AWAY
        # The upstream answered at once: the client gets FIN behind the close
        # (half-close), and its own half stays open for its close frame.
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.write(encode_frame(0x0, b"part 2 ", fin=False))
        await asyncio.wait([tunnel.finished], timeout=0.3)
        assert not tunnel.finished.done(), "the client was cut off before its close frame"
        writer.write(encode_frame(0x0, b"end", fin=True) + encode_frame(0x8, GOING_AWAY))
        await asyncio.wait_for(tunnel.finished, 5)
        await asyncio.wait_for(stopping, 5)
