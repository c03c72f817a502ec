"""Upstream server health: what attempts and checks said.  Pure, no I/O.

Two sources, independent, and a server takes requests only when neither
holds it out:

* **Passive** (every upstream): ``max_fails`` failed attempts in a row
  (connect refused or timed out, reset, no answer in time, an invalid
  answer) take a server out for ``fail_timeout``.  Then it is back *on
  probation*: the next request that picks it is its trial, and until that
  trial ends (or another ``fail_timeout`` passes) no other request is sent
  its way.  A valid answer makes it healthy again; one more failure takes it
  out again.  ``max_fails: 0`` turns this off.  Like nginx's ``max_fails`` and
  ``fail_timeout``, but in a row: a success in between starts the count again.
* **Active** (``upstreams.<name>.health``): the checker (upstreams.checks)
  reports each probe; ``fails`` failed probes in a row take the server out,
  ``passes`` passed probes in a row bring it back.

Every change of a server between up and down is one call to
:class:`HealthEvents` (a log line and the ``wsproxy_upstream_server_up``
gauge); a server on probation counts as up (it will be tried), so
``/readyz`` recovers by itself when no traffic comes to prove anything.

The table keeps no clock: callers pass ``now``.  ``watch`` holds every server
whose state a valid answer would change; while it is empty (the common case)
the request path skips all of this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from wsproxy.errors import UpstreamFailure
    from wsproxy.upstreams.servers import Server


class HealthEvents(Protocol):
    """Where server state changes and failures are reported (metrics, logs)."""

    def server_state(self, server: Server, up: bool, why: str) -> None:
        """``server`` is up or down now; ``why`` in words, for the log line."""

    def server_failed(self, server: Server, failure: UpstreamFailure) -> None:
        """An attempt on ``server`` failed (counted whether or not it changes state)."""


class ServerHealth:
    """One server's health record (held by its upstreams.Server)."""

    __slots__ = (
        "checks_failed",
        "checks_passed",
        "claimed_until",
        "down_until",
        "fails",
        "held_by_checks",
        "probation",
    )

    def __init__(self) -> None:
        #: Failed attempts in a row (passive).
        self.fails = 0
        #: Out until then (passive); 0.0 when not.
        self.down_until = 0.0
        #: Back after fail_timeout, not yet proven; one trial at a time.
        self.probation = False
        #: A trial request is out until then.
        self.claimed_until = 0.0
        #: Active checks: out until ``passes`` probes in a row pass.
        self.held_by_checks = False
        self.checks_failed = 0
        self.checks_passed = 0

    @property
    def up(self) -> bool:
        return not self.down_until and not self.held_by_checks

    def takes_requests(self, now: float) -> bool:
        """Whether a request may be sent now (``refresh`` has run for ``now``)."""
        return self.up and not (self.probation and self.claimed_until > now)


class Health:
    """The health of every server of one configuration."""

    __slots__ = ("events", "watch")

    def __init__(self, events: HealthEvents) -> None:
        self.events = events
        #: Servers not plainly healthy: down, on probation, with failures
        #: counted or held out by checks.  Empty in the common case.
        self.watch: set[Server] = set()

    def ok(self, server: Server) -> None:
        """A valid answer came from ``server``."""
        if server not in self.watch:
            return  # the common case, on every request: nothing changes
        health = server.health
        was_up = health.up
        health.fails = 0
        health.down_until = 0.0
        health.probation = False
        if health.up and not was_up:
            self.events.server_state(server, True, "it answered")
        self._settle(server)

    def failed(self, server: Server, failure: UpstreamFailure, now: float) -> None:
        """An attempt on ``server`` failed."""
        self.events.server_failed(server, failure)
        settings = server.settings
        health = server.health
        health.fails += 1
        self.watch.add(server)
        if not settings.max_fails or health.fails < settings.max_fails:
            return
        was_up = health.up
        health.down_until = now + settings.fail_timeout
        health.probation = False
        if was_up:
            count = health.fails
            attempts = "attempt" if count == 1 else f"{count} attempts in a row"
            self.events.server_state(
                server,
                False,
                f"{attempts} failed ({failure}); out for {settings.fail_timeout:g}s, "
                "then one trial request",
            )

    def claim(self, server: Server, now: float) -> None:
        """``server`` was picked: if on probation, this request is its trial."""
        health = server.health
        if health.probation:
            health.claimed_until = now + server.settings.fail_timeout

    def check_result(self, server: Server, passed: bool, detail: str = "") -> None:
        """An active health check on ``server`` passed or failed."""
        check = server.settings.health
        assert check is not None
        health = server.health
        if passed:
            health.checks_passed += 1
            health.checks_failed = 0
            if health.held_by_checks and health.checks_passed >= check.passes:
                health.held_by_checks = False
                if health.up:
                    passes = "check" if check.passes == 1 else f"{check.passes} checks in a row"
                    self.events.server_state(server, True, f"{passes} passed")
            self._settle(server)
            return
        health.checks_failed += 1
        health.checks_passed = 0
        if not health.held_by_checks and health.checks_failed >= check.fails:
            was_up = health.up
            health.held_by_checks = True
            self.watch.add(server)
            if was_up:
                fails = "check" if check.fails == 1 else f"{check.fails} checks in a row"
                self.events.server_state(server, False, f"{fails} failed ({detail})")

    def checks_removed(self, server: Server) -> None:
        """A reload took ``server``'s active checks away: what they said no
        longer holds it out (nothing would ever bring it back)."""
        health = server.health
        health.checks_failed = health.checks_passed = 0
        if not health.held_by_checks:
            return
        health.held_by_checks = False
        if health.up:
            self.events.server_state(server, True, "its health checks were removed")
        self._settle(server)

    def refresh(self, now: float) -> None:
        """Servers whose ``fail_timeout`` has passed go on probation."""
        for server in list(self.watch):
            health = server.health
            if health.down_until and now >= health.down_until:
                health.down_until = 0.0
                health.probation = True
                health.claimed_until = 0.0
                # One more failure takes it out again: that was its trial.
                health.fails = max(server.settings.max_fails - 1, 0)
                if health.up:
                    self.events.server_state(
                        server, True, "fail_timeout passed; the next request is a trial"
                    )

    def _settle(self, server: Server) -> None:
        health = server.health
        if health.up and not health.fails and not health.probation:
            self.watch.discard(server)
