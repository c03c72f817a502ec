"""Ended sessions are reported a few dozen per loop turn (observe.EndReports)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from wsproxy.observe import ENDS_PER_TURN, EndReports
from wsproxy.sessions import SessionInfo
from wsproxy.tunnel import Tunnel


class Info(int):
    """A stand-in for SessionInfo: its number, and the ID a failure is logged with."""

    @property
    def request_id(self) -> str:
        return f"r{int(self)}"


def ends(count: int) -> list[tuple[Tunnel, SessionInfo]]:
    return [(cast(Tunnel, object()), cast(SessionInfo, Info(i))) for i in range(count)]


async def test_a_burst_is_reported_in_order_a_turn_at_a_time() -> None:
    turns: list[list[Any]] = [[]]
    reports = EndReports(lambda tunnel, info: turns[-1].append(info))
    burst = ends(3 * ENDS_PER_TURN + 5)
    for tunnel, info in burst:
        reports.ended(tunnel, info)
    assert turns == [list(range(ENDS_PER_TURN))]  # the first ones at once
    assert reports.waiting == len(burst) - ENDS_PER_TURN
    while reports.waiting:
        turns.append([])
        await asyncio.sleep(0)  # one turn of the loop
    turns.append([])
    await asyncio.sleep(0)
    assert [len(turn) for turn in turns if turn] == [ENDS_PER_TURN] * 3 + [5]
    assert [info for turn in turns for info in turn] == list(range(len(burst)))


async def test_a_few_ends_are_reported_at_once_and_flush_reports_the_rest() -> None:
    reported: list[Any] = []
    reports = EndReports(lambda tunnel, info: reported.append(info))
    for tunnel, info in ends(3):
        reports.ended(tunnel, info)
    assert reported == [0, 1, 2]
    for tunnel, info in ends(2 * ENDS_PER_TURN):
        reports.ended(tunnel, info)
    assert reports.waiting == 2 * ENDS_PER_TURN - (ENDS_PER_TURN - 3)
    reports.flush()
    assert reports.waiting == 0
    assert len(reported) == 3 + 2 * ENDS_PER_TURN


async def test_a_failing_report_does_not_stop_the_others() -> None:
    reported: list[Any] = []

    def report(tunnel: Tunnel, info: Any) -> None:
        if info == ENDS_PER_TURN + 1:
            raise RuntimeError("boom")
        reported.append(info)

    reports = EndReports(report)
    for tunnel, info in ends(ENDS_PER_TURN + 3):
        reports.ended(tunnel, info)
    reports.flush()
    assert reported == [*range(ENDS_PER_TURN + 1), ENDS_PER_TURN + 2]
