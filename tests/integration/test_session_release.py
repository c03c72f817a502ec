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
