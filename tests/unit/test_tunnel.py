"""Tunnel state with fake transports: who pauses reading, and when it resumes.

Reading a transport can be paused for two reasons at once: the other side's
write buffer is full (backpressure) and this direction's frame observer has a
backlog to parse (a flood of tiny frames).  It must resume only when neither
holds.  Sockets are not needed to check that; tests/integration/test_flood.py
checks the behaviour end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import weakref
from typing import Any, cast

import pytest

from tests.support.wire import encode_frame
from wsproxy import tunnel as tunnel_module
from wsproxy.tunnel import EndGate, IdleWatch, Tunnel, end_gate, idle_watch, turn_budget
from wsproxy.wsframes import FrameBudget


class FakeTransport:
    """Just enough of asyncio.Transport for the tunnel's bookkeeping."""

    def __init__(self) -> None:
        self.reading = True
        self.closing = False
        self.written = bytearray()
        self.protocol: Any = None
        self.eof_written = False
        self.fail_eof = False

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.written += data

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_extra_info(self, name: str) -> None:
        return None

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self.fail_eof:
            raise RuntimeError("write_eof failed")
        self.eof_written = True

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


def _tunnel(budget: FrameBudget) -> tuple[Tunnel, FakeTransport, FakeTransport]:
    upstream, client = FakeTransport(), FakeTransport()
    tunnel = Tunnel(
        cast(asyncio.Transport, upstream), buffer_limit=65536, idle_timeout=3600, budget=budget
    )
    tunnel.start(
        cast(asyncio.Transport, client), client_tail=b"", upstream_tail=b"", upstream_eof=False
    )
    return tunnel, client, upstream


async def _turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_a_backlog_pauses_its_source_until_it_is_parsed() -> None:
    budget = turn_budget(asyncio.get_running_loop(), per_turn=10, per_feed=10, floor=1)
    tunnel, client, upstream = _tunnel(budget)
    flood = encode_frame(0x2, b"", mask=True) * 100
    tunnel.client_side.data_received(flood)
    assert bytes(upstream.written) == flood  # relayed at once, parsed later
    assert not client.reading
    assert upstream.reading  # the other direction is not held
    await _turns(30)
    assert client.reading
    assert tunnel.c2u.frames[0x2] == 100
    tunnel.close("drain", reset=True)


async def test_reading_resumes_only_when_backpressure_and_backlog_are_both_gone() -> None:
    budget = turn_budget(asyncio.get_running_loop(), per_turn=10, per_feed=10, floor=1)
    tunnel, client, _upstream = _tunnel(budget)
    tunnel.client_side.data_received(encode_frame(0x2, b"", mask=True) * 100)
    tunnel.upstream_side.pause_writing()  # the upstream's buffer is full too
    await _turns(30)
    assert tunnel.c2u.frames[0x2] == 100
    assert not client.reading  # the backlog is gone, backpressure still holds
    tunnel.upstream_side.resume_writing()
    assert client.reading
    # And the other order: backpressure released while the backlog remains.
    tunnel.upstream_side.pause_writing()
    tunnel.client_side.data_received(encode_frame(0x2, b"", mask=True) * 100)
    tunnel.upstream_side.resume_writing()
    assert not client.reading
    await _turns(30)
    assert client.reading
    tunnel.close("drain", reset=True)


async def test_a_session_is_reported_only_after_its_backlog_is_parsed() -> None:
    budget = turn_budget(asyncio.get_running_loop(), per_turn=10, per_feed=10, floor=1)
    tunnel, _client, _upstream = _tunnel(budget)
    reported: list[int] = []
    tunnel.on_finished = lambda t: reported.append(t.c2u.frames[0x2])
    tunnel.client_side.data_received(encode_frame(0x2, b"", mask=True) * 100)
    tunnel.client_side.connection_lost(ConnectionResetError())
    tunnel.upstream_side.connection_lost(None)
    assert reported == []
    assert not tunnel.finished.done()
    await _turns(30)
    assert reported == [100]
    assert tunnel.closed_by == "client"
    assert tunnel.how == "reset"


def _close(code: int, *, mask: bool) -> bytes:
    return encode_frame(0x8, code.to_bytes(2, "big"), mask=mask)


async def test_the_code_is_that_of_the_close_frame_that_came_first() -> None:
    """Client: 100 frames and close 4001 in one read (parsed over several turns);
    the upstream's close 1000 arrives meanwhile.  The client closed first, so the
    session reports the client's code, not the first one parsed."""
    budget = turn_budget(asyncio.get_running_loop(), per_turn=10, per_feed=10, floor=1)
    tunnel, _client, _upstream = _tunnel(budget)
    tunnel.client_side.data_received(
        encode_frame(0x2, b"", mask=True) * 100 + _close(4001, mask=True)
    )
    tunnel.upstream_side.data_received(_close(1000, mask=False))
    await _turns(30)
    assert (tunnel.closed_by, tunnel.how, tunnel.close_code) == ("client", "close_frame", 4001)
    tunnel.close("drain", reset=True)


async def test_a_fin_during_catch_up_wins_without_a_close_frame_before_it() -> None:
    budget = turn_budget(asyncio.get_running_loop(), per_turn=10, per_feed=10, floor=1)
    tunnel, _client, _upstream = _tunnel(budget)
    tunnel.client_side.data_received(encode_frame(0x2, b"", mask=True) * 100)
    tunnel.upstream_side.eof_received()  # held back: the client's backlog came first
    assert tunnel.closed_by is None
    tunnel.upstream_side.data_received(b"")  # nothing more from upstream
    await _turns(30)
    assert (tunnel.closed_by, tunnel.how, tunnel.close_code) == ("upstream", "fin", None)
    tunnel.client_side.data_received(_close(1000, mask=True))  # the client answers later
    assert tunnel.close_code == 1000  # the first close frame seen, after the FIN
    assert tunnel.closed_by == "upstream"
    tunnel.close("drain", reset=True)


class _Watched:
    """What IdleWatch needs of a session: its check and close."""

    def __init__(self, quiet_after: int | None, closed: asyncio.Event) -> None:
        self.quiet_after = quiet_after
        self.checks = 0
        self.how: str | None = None
        self._closed = closed

    def idle_check(self) -> bool:
        self.checks += 1
        return self.quiet_after is not None and self.checks >= self.quiet_after

    def close(self, how: str) -> None:
        self.how = how
        self._closed.set()


async def test_one_idle_watch_checks_all_its_sessions_on_one_timer() -> None:
    watch = IdleWatch(0.04)
    closed = asyncio.Event()
    quiet, busy = _Watched(3, closed), _Watched(None, closed)
    for session in (quiet, busy):
        watch.add(cast(Tunnel, session))
    await asyncio.wait_for(closed.wait(), 5)
    assert (quiet.how, busy.how) == ("idle_timeout", None)
    assert quiet.checks == busy.checks == 3  # checked together, in one pass each time
    assert len(watch) == 1  # the quiet one left the watch
    watch.discard(cast(Tunnel, busy))
    assert len(watch) == 0
    assert watch._handle is None  # no timer is left running for nobody


def test_each_loop_has_one_watch_per_idle_timeout() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert idle_watch(loop, 60.0) is idle_watch(loop, 60.0)
        assert idle_watch(loop, 60.0) is not idle_watch(loop, 30.0)
    finally:
        loop.close()


async def test_a_waiter_that_gave_up_does_not_stop_the_end_from_being_reported() -> None:
    budget = turn_budget(asyncio.get_running_loop(), per_turn=10, per_feed=10, floor=1)
    tunnel, _client, _upstream = _tunnel(budget)
    reported: list[Tunnel] = []
    tunnel.on_finished = reported.append
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(tunnel.finished, 0.001)  # cancels the future
    assert tunnel.client_side is not None
    assert tunnel.upstream_side is not None
    tunnel.client_side.connection_lost(None)
    tunnel.upstream_side.connection_lost(None)
    assert reported == [tunnel]  # the gate, counts and live table are given back
    assert tunnel.client_side is None  # and the cycles broken


def test_a_closed_loop_is_not_kept_alive_by_its_idle_watches() -> None:
    loop = asyncio.new_event_loop()

    async def watch_one() -> None:
        watch = idle_watch(asyncio.get_running_loop(), 60.0)
        session = _Watched(None, asyncio.Event())
        watch.add(cast(Tunnel, session))
        watch.discard(cast(Tunnel, session))

    loop.run_until_complete(watch_one())
    loop.close()
    ref = weakref.ref(loop)
    del loop
    gc.collect()
    assert ref() is None


class _Broken(_Watched):
    def idle_check(self) -> bool:
        raise RuntimeError("broken")


async def test_a_failing_idle_check_does_not_stop_the_others() -> None:
    closed = asyncio.Event()
    first, second = _Watched(2, closed), _Watched(2, asyncio.Event())
    watch = IdleWatch(0.04)
    for session in (first, _Broken(None, asyncio.Event()), second):
        watch.add(cast(Tunnel, session))
    await asyncio.wait_for(closed.wait(), 5)
    assert (first.how, second.how) == ("idle_timeout", "idle_timeout")
    assert len(watch) == 1  # the broken one is still watched, the others left


def _small_gate(monkeypatch: pytest.MonkeyPatch) -> EndGate:
    """This loop's tunnels handle two ends per turn (EndGate)."""
    gate = EndGate(per_turn=2)
    monkeypatch.setitem(tunnel_module._GATES, asyncio.get_running_loop(), gate)
    return gate


Sessions = list[tuple[Tunnel, FakeTransport, FakeTransport]]


def _gated(monkeypatch: pytest.MonkeyPatch, count: int) -> tuple[EndGate, Sessions]:
    """``count`` started sessions on a loop whose tunnels handle two ends per turn."""
    gate = _small_gate(monkeypatch)
    budget = turn_budget(asyncio.get_running_loop())
    return gate, [_tunnel(budget) for _ in range(count)]


def _fins(sessions: Sessions) -> None:
    """Each session's upstream sends FIN, in order."""
    for tunnel, _client, _upstream in sessions:
        assert tunnel.upstream_side is not None
        tunnel.upstream_side.eof_received()


async def test_ends_past_a_turns_share_wait_for_later_turns_with_their_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    small_gate, sessions = _gated(monkeypatch, 5)
    before = time.monotonic()
    for tunnel, _client, _upstream in sessions:
        assert tunnel.upstream_side is not None
        assert tunnel.upstream_side.eof_received() is True  # kept half-open either way
    after = time.monotonic()
    # Two handled now (the FIN went on to their clients), three wait in order.
    assert [client.eof_written for _t, client, _u in sessions] == [True, True] + [False] * 3
    assert small_gate.waiting == 3
    await _turns(5)
    assert [client.eof_written for _t, client, _u in sessions] == [True] * 5
    assert small_gate.waiting == 0
    assert small_gate.deferred == 3
    for tunnel, _client, _upstream in sessions:
        assert (tunnel.closed_by, tunnel.how) == ("upstream", "fin")
        # The time it happened, not the turn it was handled in.
        assert before <= tunnel.closed_at <= after
        tunnel.close("drain", reset=True)


async def test_a_session_with_an_end_waiting_has_its_later_ends_wait_behind_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    small_gate = _small_gate(monkeypatch)
    budget = turn_budget(asyncio.get_running_loop())
    (first, _c1, _u1), (second, _c2, _u2), (waiting, client, _upstream) = (
        _tunnel(budget) for _ in range(3)
    )
    reported: list[Tunnel] = []
    waiting.on_finished = reported.append
    for tunnel in (first, second):
        assert tunnel.upstream_side is not None
        tunnel.upstream_side.eof_received()  # this turn's share
    assert waiting.upstream_side is not None
    assert waiting.client_side is not None
    waiting.upstream_side.connection_lost(ConnectionResetError())  # waits
    small_gate._refill()  # as a new turn would: room again, but not for this session
    waiting.client_side.eof_received()
    waiting.client_side.connection_lost(None)
    assert waiting._pending_ends is not None
    assert len(waiting._pending_ends) == 3
    assert (waiting.closed_by, reported) == (None, [])
    await _turns(5)
    # The upstream's reset came first, and the session ended once.
    assert (waiting.closed_by, waiting.how) == ("upstream", "reset")
    assert reported == [waiting]
    assert client.closing  # reset on the upstream's behalf
    for tunnel in (first, second):
        tunnel.close("drain", reset=True)


async def test_the_proxys_own_close_comes_after_the_ends_that_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _gate, sessions = _gated(monkeypatch, 3)
    _fins(sessions)
    last, client, _upstream = sessions[-1]
    assert last._pending_ends is not None
    last.close("idle_timeout")  # an idle check, or a drain, between the FIN and its turn
    assert (last.closed_by, last.how) == ("upstream", "fin")
    assert client.eof_written
    assert client.closing
    await _turns(3)  # its place in the queue is empty now: nothing runs twice
    assert (last.closed_by, last.how) == ("upstream", "fin")
    for tunnel, _client, _upstream in sessions[:-1]:
        tunnel.close("drain", reset=True)


def test_each_loop_has_one_end_gate() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert end_gate(loop) is end_gate(loop)
    finally:
        loop.close()
    other = asyncio.new_event_loop()
    try:
        assert end_gate(other).waiting == 0
    finally:
        other.close()


async def test_a_close_frame_after_a_waiting_fin_does_not_decide_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _gate, sessions = _gated(monkeypatch, 3)
    _fins(sessions)  # the third one's FIN waits
    last = sessions[-1][0]
    assert last._pending_ends is not None
    assert last.client_side is not None
    # The client's close frame arrives after the upstream's FIN, before its turn.
    last.client_side.data_received(_close(1000, mask=True))
    assert (last.closed_by, last.how, last.close_code) == ("upstream", "fin", 1000)
    for tunnel, _client, _upstream in sessions:
        tunnel.close("drain", reset=True)


async def test_shutdown_runs_the_ends_that_wait_first(monkeypatch: pytest.MonkeyPatch) -> None:
    _gate, sessions = _gated(monkeypatch, 3)
    _fins(sessions)
    last, client, _upstream = sessions[-1]
    last.shutdown()  # a drain, between the upstream's FIN and its turn
    # Half-closed already: no 1001 handshake, the FIN decided the end.
    assert (last.closed_by, last.how) == ("upstream", "fin")
    assert bytes(client.written) == b""
    assert client.eof_written
    for tunnel, _client, _upstream in sessions[:-1]:
        tunnel.close("drain", reset=True)


async def test_each_turn_starts_with_its_share_again(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = _small_gate(monkeypatch)
    budget = turn_budget(asyncio.get_running_loop())
    _fins([_tunnel(budget) for _ in range(2)])  # this turn's share
    await _turns(1)
    tunnel, client, _upstream = _tunnel(budget)
    _fins([(tunnel, client, _upstream)])
    assert client.eof_written  # handled at once
    assert gate.deferred == 0
    tunnel.close("drain", reset=True)


async def test_a_waiting_loss_holds_the_other_side_until_its_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _gate, sessions = _gated(monkeypatch, 3)
    for tunnel, _client, _upstream in sessions:
        assert tunnel.upstream_side is not None
        tunnel.upstream_side.connection_lost(ConnectionResetError())
    last, client, _upstream = sessions[-1]
    # The upstream is gone: the client's bytes must not be written into it.
    assert not client.reading
    assert not client.closing
    await _turns(3)
    assert client.closing  # reset on the upstream's behalf
    assert (last.closed_by, last.how) == ("upstream", "reset")


async def test_a_failing_end_that_waited_does_not_stop_the_others(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _gate, sessions = _gated(monkeypatch, 5)
    reported: list[Tunnel] = []
    for tunnel, _client, _upstream in sessions:
        tunnel.on_finished = reported.append
    sessions[2][1].fail_eof = True  # its FIN cannot be passed on
    _fins(sessions)
    for tunnel, _client, _upstream in sessions:
        assert tunnel.client_side is not None
        assert tunnel.upstream_side is not None
        tunnel.client_side.connection_lost(None)
        tunnel.upstream_side.connection_lost(None)
    await _turns(10)
    assert [client.eof_written for _t, client, _u in sessions] == [True, True, False, True, True]
    assert len(reported) == 5  # every one ended, once
    assert set(reported) == {t for t, _c, _u in sessions}
    assert "ending a WebSocket session failed" in caplog.text


async def test_an_interrupted_end_leaves_the_rest_for_the_next_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate, sessions = _gated(monkeypatch, 3)
    _fins(sessions)
    last, _client, _upstream = sessions[-1]

    def interrupted(_tunnel: Tunnel) -> None:
        raise asyncio.CancelledError

    last.on_finished = interrupted
    assert last.client_side is not None
    assert last.upstream_side is not None
    last.client_side.connection_lost(None)
    last.upstream_side.connection_lost(None)
    with pytest.raises(asyncio.CancelledError):
        gate._drain()
    assert last._pending_ends is None  # later ends of it are not stuck behind it
    assert gate.waiting == 0


async def test_a_fin_during_the_close_handshake_waits_then_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate, sessions = _gated(monkeypatch, 3)
    reported: list[Tunnel] = []
    for tunnel, _client, _upstream in sessions:
        tunnel.on_finished = reported.append
        tunnel.shutdown()
    for _, client, upstream in sessions:
        # Each side answers the 1001 with its close frame and FIN, then goes.
        client.protocol.data_received(_close(1001, mask=True))
        client.protocol.eof_received()
        client.protocol.connection_lost(None)
        upstream.protocol.data_received(_close(1001, mask=False))
        upstream.protocol.eof_received()
        upstream.protocol.connection_lost(None)
    assert gate.deferred > 0
    await _turns(10)
    assert len(reported) == 3
    assert {(t.closed_by, t.how) for t, _c, _u in sessions} == {("proxy", "drain")}


async def test_unbounded_handles_what_waited_and_lets_nothing_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate, sessions = _gated(monkeypatch, 3)
    _fins(sessions)
    assert gate.waiting == 1
    with gate.unbounded():
        assert gate.waiting == 0
        assert all(client.eof_written for _t, client, _u in sessions)
        more = [_tunnel(turn_budget(asyncio.get_running_loop())) for _ in range(3)]
        _fins(more)
        assert all(client.eof_written for _t, client, _u in more)
    assert gate.deferred == 1
    for tunnel, _client, _upstream in sessions + more:
        tunnel.close("drain", reset=True)
