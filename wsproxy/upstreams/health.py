"""Passive health of upstream servers: what the last attempts said.

A server whose last attempt failed counts as down for ``DOWN_FOR`` seconds,
then as up again, so one failure (a backend restarting) cannot keep
``/readyz`` at 503 forever when no traffic comes to prove otherwise.  A valid
response head from it before then brings it back at once.

The table is told outcomes by the request paths (``ok``, ``failed``) and
tells its owner of every state change (``HealthEvents``); it keeps no clock
of its own, so tests drive it with ``now``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from wsproxy.errors import UpstreamFailure
    from wsproxy.upstreams.servers import Server

#: How long a failed server counts as down without news.
DOWN_FOR = 5.0


class HealthEvents(Protocol):
    """Where server state changes and failures are reported (metrics, logs)."""

    def server_state(self, server: Server, up: bool, why: str) -> None:
        """``server`` is up or down now; ``why``: ``answered``, ``failed`` or ``expired``."""

    def server_failed(self, server: Server, failure: UpstreamFailure) -> None: ...


class Health:
    """Which servers are down, and until when."""

    __slots__ = ("down", "events")

    def __init__(self, events: HealthEvents) -> None:
        self.events = events
        #: Servers whose last attempt failed, with when that stops counting.
        #: Non-empty only while some server is down (the relay's fast check).
        self.down: dict[Server, float] = {}

    def ok(self, server: Server) -> None:
        """A valid answer came from ``server``."""
        if self.down.pop(server, None) is None:
            return  # the common case, on every request: nothing changes
        self.events.server_state(server, True, "answered")

    def failed(self, server: Server, failure: UpstreamFailure, now: float) -> None:
        self.down[server] = now + DOWN_FOR
        self.events.server_state(server, False, "failed")
        self.events.server_failed(server, failure)

    def refresh(self, now: float) -> None:
        """Forget failures older than DOWN_FOR (before a scrape or a probe)."""
        for server, until in list(self.down.items()):
            if now >= until:
                del self.down[server]
                self.events.server_state(server, True, "expired")

    def is_down(self, server: Server) -> bool:
        return server in self.down
