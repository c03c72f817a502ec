"""Server choice within one upstream: pure, no I/O."""

from __future__ import annotations


class RoundRobin:
    """Each position in turn, over ``size`` servers."""

    __slots__ = ("_next", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._next = 0

    def pick_index(self) -> int:
        """The position of the next server."""
        index = self._next
        self._next = (index + 1) % self.size
        return index
