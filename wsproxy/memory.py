"""The process's memory: glibc's allocator set for a proxy's reads, the
cyclic collector at thousands of sessions, and giving freed memory back.

**The allocator.**  Every read from a socket is a new ``bytes`` object of
up to 256 KiB (uvloop has no buffer to read into that a protocol could
reuse).  glibc serves
allocations above its mmap threshold (128 KiB, raised adaptively) with
``mmap`` and returns a freed top of the heap above its trim threshold
(128 KiB) to the kernel at once, so relaying a 1 MiB response mapped and
unmapped, or grew and trimmed, memory several times per read: 1 MiB
responses ran 2.6x slower (strace showed the brk/munmap pairs).  With the
mmap threshold at 4 MiB and the trim threshold at 64 MiB, reads come from
the heap and stay there; the price is up to 64 MiB of freed heap kept
instead of returned to the kernel.  ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` in the environment win (glibc reads them at
start, and this leaves the values alone).

**The collector.**  CPython's cyclic collector walks every object of the
generations it collects.  A full collection at 5,000 open sessions took
153 ms here (159,000 tracked objects), all of it with the loop stopped, and
with CPython's default thresholds (700, 10, 10) the objects of handshakes in
flight (hundreds of them at once in a reconnect storm) outlive two young
collections, reach the oldest generation and bring the next full one
closer: opening 5,000 sessions ran 3 full collections, 260 ms of collector
time and a longest pause of 80-130 ms.  So, once a serving process has
started (:func:`tune_collector`):

- everything made at start-up (modules, the configuration, the admin
  application: 44,000 objects) is frozen out of every later collection
  (``gc.freeze``): it lives as long as the process;
- young collections run every 2,000 allocations instead of 700, so a
  handshake's objects die young; each pass stays a few milliseconds
  (the longest pause while opening 5,000 sessions: 8 ms, collector time
  88 ms);
- full collections are not left to allocation counts: with 9,900
  sessions open one took 123-127 ms, and it came when allocations said,
  in a reconnect storm or in a mass close (a 164 ms stall there).  They
  found nothing to free there (sessions free their own cycles, below).
  :class:`FullCollections` runs them instead, every
  :data:`FULL_COLLECTION_EVERY` seconds while fewer than
  :data:`CHEAP_BELOW` sessions and connections are open (about 13 us
  each: up to some 13 ms), and otherwise at most once in
  :data:`FULL_COLLECTION_AT_LEAST` seconds, so that cyclic garbage of a
  busy process is still found.  (CPython 3.11-3.13: 3.14's incremental
  collector has no third threshold, and this setting does nothing there.)

Ended sessions do not wait for the collector at all: a tunnel drops its
cycles when it ends (tunnel.Tunnel._release) and reference counting frees it.

**Giving memory back.**  With that trim threshold glibc keeps up to 64 MiB
of freed heap for the next allocation.  After a mass close (a backend
restart ending thousands of sessions) that is megabytes held for nothing
until the next storm; :class:`Trimmer` asks glibc to return it
(``malloc_trim``) once a burst of session ends is over.  What Python's own
allocator keeps (arenas with one object still alive) is not returned by it.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

#: mallopt(3) parameters.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 64 * 1024 * 1024


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds; False where that does not apply."""
    if not sys.platform.startswith("linux"):
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False  # the operator chose
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no such knobs)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    )


#: Allocations between young collections (CPython's default: 700).
YOUNG_THRESHOLD = 2000
#: Middle-generation collections before a full one: never, in effect
#: (FullCollections runs them).
OLDEST_THRESHOLD = 1_000_000_000

#: How often FullCollections looks, the open sessions and connections
#: below which a full collection is cheap enough at any time, and the
#: longest it waits for one while more are open.
FULL_COLLECTION_EVERY = 60.0
CHEAP_BELOW = 1000
FULL_COLLECTION_AT_LEAST = 3600.0

#: Session ends within the last TRIM_WINDOW seconds that make a burst worth
#: a trim (a mass close ends its sessions within a second or two), and how
#: often the Trimmer then looks whether the burst is over.
TRIM_AFTER_ENDS = 1000
TRIM_WINDOW = 10.0
TRIM_DELAY = 2.0


def tune_collector() -> None:
    """Freeze what start-up made, space young collections and leave full
    ones to :class:`FullCollections` (see above).

    Called once a serving process has started, never in a process that runs
    tests or tools: what is frozen is never collected, even if it becomes
    cyclic garbage later, and without a FullCollections running nothing
    would run full collections.
    """
    gc.collect()
    gc.freeze()
    _young, middle, _old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, OLDEST_THRESHOLD)


class FullCollections:
    """Full collections of the cyclic collector when they are cheap.

    Every ``every`` seconds: if fewer than ``cheap_below`` are open
    (``load()``: sessions and connections), or if the last full collection
    is ``at_least`` seconds old, one runs.  Its cost grows with what is
    open (about 13 us a session), so a busy process pays it once an hour
    instead of whenever allocations add up.
    """

    def __init__(
        self,
        load: Callable[[], int],
        every: float = FULL_COLLECTION_EVERY,
        cheap_below: int = CHEAP_BELOW,
        at_least: float = FULL_COLLECTION_AT_LEAST,
        collect: Callable[[], int] = gc.collect,
    ) -> None:
        self.load = load
        self.every = every
        self.cheap_below = cheap_below
        self.at_least = at_least
        self._collect = collect
        self._last = time.monotonic()
        self._handle: asyncio.TimerHandle | None = None
        #: Full collections run so far (for tests and the log).
        self.runs = 0

    def start(self) -> None:
        self._last = time.monotonic()
        self._handle = asyncio.get_running_loop().call_later(self.every, self._look)

    def _look(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(self.every, self._look)
        now = time.monotonic()
        open_now = self.load()
        if open_now >= self.cheap_below and now - self._last < self.at_least:
            return
        self._last = now
        began = time.perf_counter()
        found = self._collect()
        self.runs += 1
        log.debug(
            "full collection with %d open: %d unreachable objects, %.1f ms",
            open_now,
            found,
            (time.perf_counter() - began) * 1000,
        )

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """This process's resident memory (0 where /proc is not there)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * _PAGE


class Trimmer:
    """Returns freed heap memory to the system after a burst of session ends.

    ``ended()`` is called for every session that ends: a few counter steps.
    A burst is :data:`TRIM_AFTER_ENDS` ends within the last
    :data:`TRIM_WINDOW` seconds (a sliding window of ten slots; ends spread
    over a quiet day are none).  From then on it looks every
    :data:`TRIM_DELAY` seconds whether the burst is over: fewer ends since
    the last look than a tenth of the most it has seen (the burst's count,
    or any look's), so ordinary churn after a mass close does not put the
    trim off, and trims once it is.
    """

    def __init__(
        self,
        after: int = TRIM_AFTER_ENDS,
        delay: float = TRIM_DELAY,
        trim: Callable[[int], int] | None = None,
        window: float = TRIM_WINDOW,
    ) -> None:
        self.after = after
        self.delay = delay
        self._slot = window / 10
        self._trim = trim if trim is not None else _malloc_trim()
        #: Ends per slot of the window, oldest first: [slot number, count].
        self._slots: deque[list[int]] = deque()
        self._in_window = 0
        #: Ends since the burst began, the most seen at once, and since the last look.
        self._burst = 0
        self._peak = 0
        self._since_look = 0
        self._handle: asyncio.TimerHandle | None = None
        #: Trims run so far (for tests and the log).
        self.trims = 0

    def ended(self) -> None:
        if self._trim is None:
            return
        if self._handle is not None:
            self._burst += 1
            self._since_look += 1
            return
        # time.monotonic, not the loop's clock: asking for the running loop
        # is a getpid() system call, once per end.
        slot = int(time.monotonic() / self._slot)
        slots = self._slots
        if slots and slots[-1][0] == slot:
            slots[-1][1] += 1
        else:
            slots.append([slot, 1])
        while slots[0][0] <= slot - 10:
            self._in_window -= slots.popleft()[1]
        self._in_window += 1
        if self._in_window >= self.after:
            self._burst = self._peak = self._in_window
            self._since_look = 0
            self._handle = asyncio.get_running_loop().call_later(self.delay, self._look)

    def _look(self) -> None:
        count, self._since_look = self._since_look, 0
        self._peak = max(self._peak, count)
        if count * 10 >= self._peak:
            # Still ending at a tenth of the burst's pace or more.
            self._handle = asyncio.get_running_loop().call_later(self.delay, self._look)
            return
        self._handle = None
        ended, self._burst = self._burst, 0
        self._slots.clear()
        self._in_window = 0
        before = rss_bytes()
        assert self._trim is not None
        self._trim(0)
        self.trims += 1
        after = rss_bytes()
        log.info(
            "%d sessions ended: %.1f MB of freed memory returned to the system (RSS %.1f MB)",
            ended,
            max(0, before - after) / 1e6,
            after / 1e6,
        )

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
