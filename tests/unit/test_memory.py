"""The allocator settings ``wsproxy serve`` applies (wsproxy.memory)."""

from __future__ import annotations

import asyncio
import platform
import subprocess
import sys
import time

import pytest

from wsproxy.memory import CHEAP_BELOW, FullCollections, Trimmer, tune_malloc


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt thresholds are glibc's",
)
def test_glibc_thresholds_are_raised() -> None:
    assert tune_malloc() is True


@pytest.mark.parametrize("name", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"])
def test_an_operators_environment_wins(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "131072")
    assert tune_malloc() is False


def test_a_serving_process_freezes_start_up_and_spaces_young_collections() -> None:
    # In a process of its own: a frozen test run would never collect again.
    code = (
        "import gc; from wsproxy.memory import tune_collector, YOUNG_THRESHOLD, OLDEST_THRESHOLD;"
        "tune_collector();"
        "young, _, oldest = gc.get_threshold();"
        "print(gc.get_freeze_count() > 1000, young == YOUNG_THRESHOLD, oldest == OLDEST_THRESHOLD)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True"]


class Looks:
    """FullCollections' view of what is open, counting its looks."""

    def __init__(self, open_now: int) -> None:
        self.open_now = open_now
        self.looks = 0
        self.collected = 0
        self.times: list[float] = []
        self._wanted = 0
        self._reached = asyncio.Event()

    def load(self) -> int:
        self.looks += 1
        if self.looks >= self._wanted:
            self._reached.set()
        return self.open_now

    def collect(self) -> int:
        self.collected += 1
        self.times.append(time.monotonic())
        return 0

    async def until_looks(self, count: int) -> None:
        self._wanted = self.looks + count
        self._reached.clear()
        await asyncio.wait_for(self._reached.wait(), 5)


async def test_full_collections_run_while_little_is_open() -> None:
    looks = Looks(open_now=CHEAP_BELOW - 1)
    collections = FullCollections(looks.load, every=0.001, collect=looks.collect)
    collections.start()
    try:
        await looks.until_looks(3)
    finally:
        collections.close()
    assert looks.collected == collections.runs == looks.looks


async def test_with_many_open_a_full_collection_waits_until_few_are_or_long_enough() -> None:
    looks = Looks(open_now=CHEAP_BELOW)
    collections = FullCollections(looks.load, every=0.001, at_least=3600, collect=looks.collect)
    collections.start()
    try:
        await looks.until_looks(5)
        assert looks.collected == 0
        looks.open_now = 10  # the sessions ended
        await looks.until_looks(2)
    finally:
        collections.close()
    assert looks.collected >= 1


async def test_a_busy_process_collects_once_in_at_least_seconds() -> None:
    looks = Looks(open_now=CHEAP_BELOW * 10)
    at_least = 0.05
    collections = FullCollections(looks.load, every=0.002, at_least=at_least, collect=looks.collect)
    collections.start()
    try:
        while looks.collected < 3:
            await looks.until_looks(1)
    finally:
        collections.close()
    gaps = [b - a for a, b in zip(looks.times, looks.times[1:], strict=False)]
    # Each is timed a moment after the look that decided it: allow that moment.
    assert all(gap >= at_least - 0.005 for gap in gaps), gaps


class FakeTrim:
    def __init__(self) -> None:
        self.calls: list[float] = []
        self.done = asyncio.Event()

    def __call__(self, pad: int) -> int:
        assert pad == 0
        self.calls.append(asyncio.get_running_loop().time())
        self.done.set()
        return 1


async def test_no_trim_below_the_number_of_ends() -> None:
    trim = FakeTrim()
    trimmer = Trimmer(after=10, delay=0.01, trim=trim)
    for _ in range(9):
        trimmer.ended()
    # A trim would be due 0.01 s after the ninth end; a larger wait must see none.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(trim.done.wait(), 0.2)
    assert trimmer.trims == 0


async def test_one_trim_once_a_burst_of_ends_is_over() -> None:
    trim = FakeTrim()
    delay = 0.1
    trimmer = Trimmer(after=10, delay=delay, trim=trim)
    loop = asyncio.get_running_loop()
    for _ in range(10):
        trimmer.ended()
    # Ends keep coming fast for a while: the trim waits for them to stop.
    last = loop.time()
    for _ in range(3):
        await asyncio.sleep(delay / 2)
        trimmer.ended()
        trimmer.ended()
        last = loop.time()
    await asyncio.wait_for(trim.done.wait(), 5)
    assert len(trim.calls) == 1
    assert trim.calls[0] >= last + delay - 0.005  # the loop clock's millisecond steps
    assert trimmer.trims == 1
    trimmer.close()


async def test_ends_spread_over_time_are_no_burst() -> None:
    trim = FakeTrim()
    trimmer = Trimmer(after=10, delay=0.01, trim=trim, window=0.05)
    for _ in range(30):  # three times the number, never ten within the window
        trimmer.ended()
        await asyncio.sleep(0.01)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(trim.done.wait(), 0.1)
    assert trimmer.trims == 0


async def test_ordinary_churn_after_a_burst_does_not_put_the_trim_off() -> None:
    trim = FakeTrim()
    trimmer = Trimmer(after=100, delay=0.05, trim=trim)
    for _ in range(100):  # the mass close
        trimmer.ended()

    async def churn() -> None:  # then a session ends every 20 ms, for ever
        while True:
            trimmer.ended()
            await asyncio.sleep(0.02)

    churning = asyncio.ensure_future(churn())
    try:
        await asyncio.wait_for(trim.done.wait(), 5)
    finally:
        churning.cancel()
    assert trimmer.trims == 1
    trimmer.close()


async def test_a_burst_across_the_windows_edge_is_still_a_burst() -> None:
    trim = FakeTrim()
    window = 0.3
    trimmer = Trimmer(after=10, delay=0.05, trim=trim, window=window)
    trimmer.ended()  # a stray end long before
    await asyncio.sleep(window * 0.9)
    for _ in range(12):  # then a burst that runs past where a fixed window would end
        trimmer.ended()
        await asyncio.sleep(0.005)
    await asyncio.wait_for(trim.done.wait(), 5)
    assert trimmer.trims == 1
