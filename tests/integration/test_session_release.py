"""An ended WebSocket session is freed by reference counting, not by the
cyclic collector; after a burst of ends, freed memory goes back to the system.

At thousands of open sessions one full collection stalls the loop for 100 ms
and more; a session whose objects pointed at each other would stay in memory
until one ran, and a mass close would free nothing until then
(docs/design.md, "Thousands of sessions").  Each case here runs with the
collector off: the session's objects must go as its last reference does.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.support.backends import swoole_like
from tests.support.observe_helpers import (
    Observed,
    closes,
    eventually,
    observed_proxy,
    one_session,
)
from tests.support.proxy import config_text
from tests.support.wire import encode_frame
from tests.support.ws_helpers import (
    Session,
    frames_until_close,
    open_sessions,
    read_frame,
    scripted,
)
from wsproxy import tunnel as tunnel_module
from wsproxy.memory import Trimmer
from wsproxy.observe import ENDS_PER_TURN
from wsproxy.tunnel import EndGate


@contextmanager
def collector_off() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


async def echo_close(session: Session) -> None:
    """Accept, echo data frames, answer the first close frame with one, and
    wait for the end."""
    await session.accept()
    while True:
        frame = await read_frame(session.reader)
        if frame.opcode == 0x8:
            break
        session.writer.write(encode_frame(frame.opcode, frame.payload, mask=False))
    session.writer.write(encode_frame(0x8, frame.payload, mask=False))
    await session.read_to_eof()


async def hang_up(session: Session) -> None:
    """Accept, then close the connection at once (a backend restart)."""
    await session.accept()
    session.writer.close()


async def freed(obs: Observed, ref: weakref.ref[object]) -> None:
    # No scrape and no status request needed: nothing waits for one.
    await obs.sessions_ended()

    async def probe() -> bool | None:
        return True if ref() is None else None

    await eventually(probe, "the ended session to be freed")


async def test_a_session_closed_with_a_close_handshake_is_freed_without_the_collector() -> None:
    with collector_off():
        async with one_session(echo_close) as (obs, reader, writer):
            await obs.sessions_open(1)
            ref = weakref.ref(next(iter(obs.server.sessions)))
            writer.write(encode_frame(0x1, b"hello", mask=True))
            await read_frame(reader)  # the echo
            # Listed among the busiest (a status request folds what moved).
            [busiest] = (await obs.status_json())["busiest_sessions"]
            assert busiest["bytes_moved"] > 0
            writer.write(encode_frame(0x8, (1000).to_bytes(2, "big"), mask=True))
            await frames_until_close(reader)
            writer.close()
            await freed(obs, ref)


async def test_a_session_its_backend_drops_is_freed_without_the_collector() -> None:
    with collector_off():
        async with one_session(hang_up) as (obs, reader, writer):
            await obs.sessions_open(1)
            ref = weakref.ref(next(iter(obs.server.sessions)))
            async with asyncio.timeout(5):
                assert await reader.read() == b""
            writer.close()  # the proxy half-closed: the client's end ends the session
            await freed(obs, ref)


@pytest.mark.parametrize("route", ["    websocket:\n      max_lifetime: 200ms\n"])
async def test_a_session_the_proxy_ends_with_1001_is_freed_without_the_collector(
    route: str,
) -> None:
    with collector_off():
        async with one_session(echo_close, route_extra=route) as (obs, reader, writer):
            await obs.sessions_open(1)
            ref = weakref.ref(next(iter(obs.server.sessions)))
            [close] = await frames_until_close(reader)
            writer.write(encode_frame(0x8, close.payload, mask=True))
            writer.close()
            await freed(obs, ref)


async def test_a_burst_of_session_ends_gives_freed_memory_back_once_it_is_over() -> None:
    count = 30
    trimmed = asyncio.Event()
    calls: list[int] = []

    def trim(pad: int) -> int:
        calls.append(pad)
        trimmed.set()
        return 1

    async with swoole_like() as backend, observed_proxy(config_text(backend.port)) as obs:
        obs.server.trimmer = Trimmer(after=count, delay=0.05, trim=trim)
        writers = [writer for _, writer in await open_sessions(obs.port, count)]
        await obs.sessions_open(count)
        assert calls == []  # nothing ended yet
        for writer in writers:
            writer.close()
        await obs.sessions_ended()
        await asyncio.wait_for(trimmed.wait(), 5)
        assert calls == [0]
        assert obs.server.trimmer.trims == 1


async def test_ends_past_one_turns_share_are_all_counted_and_logged_in_order() -> None:
    count = 3 * ENDS_PER_TURN + 10  # more than one loop turn reports
    async with swoole_like() as backend, observed_proxy(config_text(backend.port)) as obs:
        pairs = await open_sessions(obs.port, count)
        await obs.sessions_open(count)
        ids = [info.request_id for info in obs.server.sessions.values()]
        for _reader, writer in pairs:
            writer.close()
        await obs.sessions_ended()
        # Out of the open counts at once, whatever still waits to be reported.
        status = await obs.status_json()
        assert (status["open_sessions"], status["open_by_route"]) == (0, {})

        async def every_end_logged() -> list[str] | None:
            records = [r for r in obs.log_records() if r["type"] == "websocket"]
            return [r["request_id"] for r in records] if len(records) >= count else None

        logged = await eventually(every_end_logged, f"{count} session lines in the access log")
        assert sorted(logged) == sorted(ids)  # each once, none lost
        assert sum(closes(obs.server).values()) == count


async def test_a_backend_that_drops_every_session_at_once_ends_each_one_over_later_turns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A backend restart: every upstream connection closes in one go.  The
    ends past a turn's share wait for later turns (EndGate, here 8 a turn),
    and still every client sees its FIN, and every session is logged once,
    as closed by the upstream."""
    count = 60
    gate = EndGate(per_turn=8)
    monkeypatch.setitem(tunnel_module._GATES, asyncio.get_running_loop(), gate)
    restart = asyncio.Event()

    async def hold_then_drop(session: Session) -> None:
        await session.accept()
        await restart.wait()
        session.writer.close()

    backend, _sessions = scripted(hold_then_drop)
    async with backend, observed_proxy(config_text(backend.port)) as obs:
        pairs = await open_sessions(obs.port, count)
        await obs.sessions_open(count)
        restart.set()
        # Each client reads its FIN: nothing was left half-open.
        tails = await asyncio.wait_for(
            asyncio.gather(*(reader.read() for reader, _writer in pairs)), 10
        )
        assert tails == [b""] * count
        for _reader, writer in pairs:
            writer.close()
        await obs.sessions_ended()
        assert gate.deferred > 0  # some ends did wait for a later turn
        assert gate.waiting == 0

        async def every_end_logged() -> list[dict[str, object]] | None:
            records = [r for r in obs.log_records() if r["type"] == "websocket"]
            return records if len(records) >= count else None

        records = await eventually(every_end_logged, f"{count} session lines")
        assert len(records) == count
        assert {(r["closed_by"], r["how"]) for r in records} == {("upstream", "fin")}


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "reset"])
async def test_clients_that_keep_sending_while_their_upstreams_go_lose_nothing_and_log_no_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, reset: bool
) -> None:
    """While a lost upstream's end waits for its turn (EndGate), its client's
    bytes are not written into the closed transport (which logs a fatal
    transport error per session on uvloop)."""
    count = 40
    monkeypatch.setitem(tunnel_module._GATES, asyncio.get_running_loop(), EndGate(per_turn=2))
    restart = asyncio.Event()

    async def hold_then_drop(session: Session) -> None:
        await session.accept()
        await restart.wait()
        if reset:
            session.reset()
        else:
            session.writer.close()

    backend, _sessions = scripted(hold_then_drop)
    sending = True

    async def chat(writer: asyncio.StreamWriter) -> None:
        frame = encode_frame(0x1, b"hi", mask=True)
        while sending and not writer.transport.is_closing():
            writer.write(frame)
            await asyncio.sleep(0)

    caplog.set_level(logging.WARNING)
    async with backend, observed_proxy(config_text(backend.port)) as obs:
        pairs = await open_sessions(obs.port, count)
        await obs.sessions_open(count)
        chatters = [asyncio.create_task(chat(writer)) for _reader, writer in pairs]
        restart.set()
        # Every client sees its session end (a FIN, or a reset passed on).
        ends = await asyncio.wait_for(
            asyncio.gather(*(reader.read() for reader, _w in pairs), return_exceptions=True), 10
        )
        assert len(ends) == count
        sending = False
        await asyncio.gather(*chatters, return_exceptions=True)
        for _reader, writer in pairs:
            writer.close()
        await obs.sessions_ended()
    errors = [
        record
        for record in caplog.records
        if record.name.startswith(("wsproxy", "asyncio")) and record.name != "wsproxy.early_close"
    ]
    assert errors == []


async def test_sessions_reset_at_the_end_of_the_grace_period_are_all_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sessions that never answer the 1001 are reset at the grace deadline;
    their ends do not wait for later turns (EndGate.unbounded), so every one
    is counted and logged before the server is done, however busy the loop."""
    count = 120
    monkeypatch.setitem(tunnel_module._GATES, asyncio.get_running_loop(), EndGate(per_turn=1))
    loop = asyncio.get_running_loop()
    busy = True

    def other_work() -> None:  # the rest of a busy proxy's loop turn
        time.sleep(0.008)
        if busy:
            loop.call_soon(other_work)

    async def deaf(session: Session) -> None:
        await session.accept()
        await asyncio.sleep(30)  # never answers the 1001

    backend, _sessions = scripted(deaf)
    extra = "shutdown:\n  grace_period: 200ms\n"
    async with backend:
        async with observed_proxy(config_text(backend.port, extra=extra)) as obs:
            pairs = await open_sessions(obs.port, count)
            await obs.sessions_open(count)
            loop.call_soon(other_work)
        busy = False
        records = [r for r in obs.log_records() if r["type"] == "websocket"]
        assert len(records) == count
        assert not obs.server.sessions
        for _reader, writer in pairs:
            writer.close()
