"""Floods of tiny WebSocket frames: one session must not hold the event loop.

A client writing empty masked frames (6 bytes each) or a backend writing empty
unmasked ones (2 bytes each) packs tens of thousands of frames into one read.
The frame observer parses them under a shared per-turn budget
(wsframes.FrameBudget); what it cannot parse in one turn waits, and reading
that direction pauses until it is done.  These tests run the real proxy on
loopback and check, over sockets, that

* a victim session's echo round trips stay short while another session floods
  (the bound is generous, 20 times what the budget allows: it tells a stalled
  loop from a busy one, it does not measure performance; bench/flood.py does);
* the flood is still relayed completely and counted exactly;
* a close frame at the end of a flood is still seen as the first closing event
  when the other side's FIN arrives while the flood is being parsed.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

from tests.support.observe_helpers import Observed, eventually, observed_proxy
from tests.support.proxy import config_text
from tests.support.wire import encode_frame, handshake_request, read_head
from tests.support.ws_helpers import LOOPBACK, Session, raw_client, read_frame, scripted
from wsproxy.wsframes import FrameBudget

#: One empty masked binary frame, the smallest a client can send (RFC 6455 §5.2).
CLIENT_TINY = b"\x82\x80" + os.urandom(4)
#: One empty unmasked binary frame, the smallest a server can send.
SERVER_TINY = b"\x82\x00"
#: About 1.5 MiB of 6-byte frames: many full reads, 262,144 frames.
CLIENT_FLOOD = CLIENT_TINY * 262_144
#: What the test expects of the victim: far above the ~3 ms a turn may parse.
STALL = 0.5
NO_EARLY = "    websocket:\n      early_close_window: 0s\n"


async def _open(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(LOOPBACK, port, limit=2**24)
    writer.write(handshake_request(LOOPBACK, port, path=path))
    async with asyncio.timeout(5):
        head = await read_head(reader)
    assert head.status == 101, head.start_line
    return reader, writer


async def _echo_or_sink(session: Session) -> None:
    """``/sink`` reads everything; anything else echoes text frames back unmasked."""
    await session.accept()
    if session.head.start_line.split()[1] == "/sink":
        await session.read_to_eof()
        return
    while True:
        try:
            frame = await read_frame(session.reader)
        except asyncio.IncompleteReadError:
            return
        if frame.opcode == 0x8:
            session.writer.write(encode_frame(0x8, frame.payload, mask=False))
            await session.writer.drain()
            return
        session.writer.write(encode_frame(frame.opcode, frame.payload, mask=False))
        await session.writer.drain()


async def _round_trips(port: int, seconds: float) -> list[float]:
    """A victim session: echo one small text message after another for ``seconds``."""
    reader, writer = await _open(port, "/echo")
    times: list[float] = []
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            writer.write(encode_frame(0x1, b"x" * 64, mask=True))
            async with asyncio.timeout(10):
                frame = await read_frame(reader)
            times.append(time.perf_counter() - started)
            assert frame.payload == b"x" * 64
    finally:
        writer.close()
    return times


async def _victim_while(flood: asyncio.Task[int], observed: Observed, seconds: float) -> None:
    times = await _round_trips(observed.port, seconds)
    assert not flood.done(), "the flood ended before the victim's measurement did"
    worst = max(times)
    # A stalled loop shows as slow round trips, or as very few of them.
    summary = (
        f"{len(times)} victim round trips in {seconds}s while another session flooded: "
        f"worst {worst * 1000:.0f} ms, median {statistics.median(times) * 1000:.1f} ms"
    )
    assert worst < STALL, summary
    assert len(times) >= 10 * seconds, summary


async def test_a_client_flooding_tiny_frames_does_not_stall_another_session() -> None:
    backend, sessions = scripted(_echo_or_sink)
    async with backend, observed_proxy(config_text(backend.port, route_extra=NO_EARLY)) as obs:
        _reader, writer = await _open(obs.port, "/sink")

        async def flood() -> int:
            sent = 0
            while True:  # until the victim is done; it cancels this task
                writer.write(CLIENT_FLOOD)
                await writer.drain()
                sent += 1

        flooding = asyncio.create_task(flood(), name="client flood")
        try:
            await _victim_while(flooding, obs, seconds=1.0)
        finally:
            flooding.cancel()
            writer.close()
        await obs.sessions_ended()
    sink = next(s for s in sessions if s.head.start_line.split()[1] == "/sink")
    assert len(sink.received) % len(CLIENT_TINY) == 0  # whole frames, nothing lost mid-way
    records = [r for r in obs.log_records() if r.get("type") == "websocket"]
    flood_record = next(r for r in records if r["bytes_client_to_upstream"] == len(sink.received))
    assert flood_record["frames_client_to_upstream"] == len(sink.received) // len(CLIENT_TINY)
    assert flood_record["protocol_error_client_to_upstream"] is None


async def test_a_backend_flooding_tiny_frames_does_not_stall_another_session() -> None:
    async def source_or_echo(session: Session) -> None:
        if session.head.start_line.split()[1] != "/source":
            await _echo_or_sink(session)
            return
        await session.accept()
        block = SERVER_TINY * 32_768
        while True:
            session.writer.write(block)
            await session.writer.drain()
            session.written += len(block)

    backend, _sessions = scripted(source_or_echo)
    async with backend, observed_proxy(config_text(backend.port, route_extra=NO_EARLY)) as obs:
        reader, writer = await _open(obs.port, "/source")
        received = 0

        async def drain_flood() -> int:
            nonlocal received
            while chunk := await reader.read(1 << 20):
                received += len(chunk)
            return received

        reading = asyncio.create_task(drain_flood(), name="flood reader")
        try:
            await _victim_while(reading, obs, seconds=1.0)
        finally:
            writer.close()
            await asyncio.wait([reading], timeout=5)
        await obs.sessions_ended()
    assert received > 0
    records = [r for r in obs.log_records() if r.get("type") == "websocket"]
    flood_record = max(records, key=lambda r: r["bytes_upstream_to_client"])
    # Everything relayed was observed, frame by frame, before the session was reported.
    assert flood_record["frames_upstream_to_client"] == flood_record[
        "bytes_upstream_to_client"
    ] // len(SERVER_TINY)
    assert flood_record["bytes_upstream_to_client"] % len(SERVER_TINY) == 0


async def test_a_close_frame_behind_a_flood_is_first_even_if_the_fin_comes_while_parsing() -> None:
    """The upstream answers the client's close frame with a FIN while the proxy's
    observer is still parsing the flood in front of that close frame: the close
    frame arrived first, so the session was closed by the client."""
    flood_frames = 50_000
    flood = CLIENT_TINY * flood_frames + encode_frame(0x8, (1000).to_bytes(2, "big"), mask=True)

    async def fin_after_everything(session: Session) -> None:
        await session.accept()
        while len(session.received) < len(flood):
            chunk = await session.reader.read(1 << 20)
            assert chunk, "the proxy closed before relaying the whole flood"
            session.received += chunk
        session.writer.close()  # FIN, no close frame of its own

    backend, sessions = scripted(fin_after_everything)
    async with backend, observed_proxy(config_text(backend.port)) as obs:
        budget = obs.server.proxy.frame_budget
        assert budget is not None
        # A small budget makes the parse take many loop turns, so the FIN
        # certainly arrives before it is done.
        budget.per_turn = budget.per_feed = budget.floor = 16
        async with raw_client(obs.port) as (reader, writer):
            writer.write(handshake_request(LOOPBACK, obs.port))
            async with asyncio.timeout(5):
                assert (await read_head(reader)).status == 101
            writer.write(flood)
            async with asyncio.timeout(10):
                assert await reader.read() == b""  # the upstream's FIN, passed on
        records = await obs.log_has(1)
    assert bytes(sessions[0].received) == flood
    record = obs.log_records()[0]
    assert len(records) == 1
    assert (record["closed_by"], record["how"], record["code"]) == ("client", "close_frame", "1000")
    assert record["frames_client_to_upstream"] == flood_frames + 1


async def test_the_flooded_direction_pauses_while_its_backlog_is_parsed() -> None:
    """With a tiny budget the proxy stops reading the flooding client between
    turns: the client's writes back up instead of the proxy's memory growing."""
    backend, sessions = scripted(_echo_or_sink)
    async with backend, observed_proxy(config_text(backend.port, route_extra=NO_EARLY)) as obs:
        budget = obs.server.proxy.frame_budget
        assert budget is not None
        budget.per_turn = budget.per_feed = budget.floor = 8
        _reader, writer = await _open(obs.port, "/sink")
        try:
            writer.write(CLIENT_FLOOD)

            def paused() -> bool:
                tunnels = list(obs.server.sessions)
                return bool(tunnels) and any(
                    t.client_transport is not None
                    and not t.client_transport.is_reading()
                    and t.c2u.pending
                    for t in tunnels
                )

            async def probe() -> bool | None:
                return True if paused() else None

            await eventually(probe, "the proxy to stop reading the flooding client")
        finally:
            writer.close()
        budget.per_turn, budget.per_feed = FrameBudget.PER_TURN, FrameBudget.PER_FEED
        budget.floor = FrameBudget.FLOOR
        await obs.sessions_ended()
    assert sessions[0].received == bytearray(CLIENT_FLOOD[: len(sessions[0].received)])
