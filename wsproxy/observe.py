"""Where the proxy reports what happened: metrics, access log, warnings, status.

One ``Observability`` per server.  The request paths call it at a few points
(a request answered, an upstream attempt's outcome, a session started and
ended); it fans out to Prometheus metrics, the access log, the early-close
warning and the data the status endpoint shows.  Nothing here runs per chunk.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TextIO, cast

from wsproxy.accesslog import AccessLog, format_text, timestamp
from wsproxy.config import Config
from wsproxy.errors import UpstreamFailure
from wsproxy.metrics import Metrics
from wsproxy.rewrite import RawResponseEdits
from wsproxy.sessions import (
    DirectionStats,
    SessionInfo,
    SessionReport,
    diagnosis,
    needs_attention,
    probe_command,
    without_query,
)
from wsproxy.status import CloseTimeline, upgrade_totals
from wsproxy.tunnel import Tunnel
from wsproxy.upstreams.servers import Server
from wsproxy.wsframes import FrameObserver

log = logging.getLogger("wsproxy.early_close")
upstream_log = logging.getLogger("wsproxy.upstream")

#: Early closes the status endpoint remembers (those logged at WARNING).
RECENT_EARLY_CLOSES = 50
#: Sessions /status.json lists at most, three times: the newest, the oldest
#: and the busiest (``?sessions=N`` asks for up to MAX_LISTED_SESSIONS of
#: each; metrics.BUSIEST_KEPT keeps that many busiest). The counts
#: by route are always whole: the document stays about 1 MB at most (3,000
#: sessions listed), 32 KB by default, whatever the number of open sessions.
LISTED_SESSIONS = 50
MAX_LISTED_SESSIONS = 1000


@dataclass(slots=True)
class Exchange:
    """What one request/response turned out to be, filled in as it goes."""

    request_id: str
    method: str | None  # None: the request could not be parsed
    path: str | None
    client: str
    version: str | None
    started: float
    route: str = "none"
    upstream: str | None = None
    server: str | None = None
    #: The server picked for this request (upstreams.Server), when one was.
    target: Server | None = None
    websocket_session: bool = False  # a 101 was relayed: counted and logged as a session
    upgrade_result: str | None = None  # set for WebSocket handshake attempts
    extra: dict[str, object] | None = None  # more access-log fields (note())
    bytes_to_client: int = 0  # body bytes (or the whole answer, for our own)
    #: The route's response rewrite (routes[].rewrite.response_headers), if any.
    response_edits: RawResponseEdits | None = None

    def note(self, name: str, value: object) -> None:
        """One more access-log field."""
        if self.extra is None:
            self.extra = {}
        self.extra[name] = value


def _stats(observer: FrameObserver) -> DirectionStats:
    return DirectionStats(
        bytes=observer.bytes,
        frames=observer.frame_count,
        messages=observer.messages,
        error=observer.error,
    )


def build_report(info: SessionInfo, tunnel: Tunnel) -> SessionReport:
    return SessionReport(
        info=info,
        duration=max(0.0, tunnel.closed_at - tunnel.started),
        closed_by=tunnel.closed_by or "proxy",
        how=tunnel.how or "error",
        close_code=tunnel.close_code,
        close_reason=tunnel.close_reason,
        client_to_upstream=_stats(tunnel.c2u),
        upstream_to_client=_stats(tunnel.u2c),
    )


def early_close_message(report: SessionReport) -> str:
    """The single line logged for an early close: diagnosis, then facts."""
    details = {
        name: value
        for name, value in report.fields().items()
        if name not in ("type", "status", "early")
    }
    return (
        f"early close on route {report.info.route!r}: {diagnosis(report)}; "
        f"to test that server's handshakes: {probe_command(report.info)}; {format_text(details)}"
    )


#: Ended sessions reported (metrics, access log, status) in one turn of the
#: event loop; the rest wait for the next turns (EndReports).
ENDS_PER_TURN = 64


class EndReports:
    """Reports ended sessions, at most :data:`ENDS_PER_TURN` per turn of the loop.

    A backend restart ends thousands of sessions within a second, and
    reporting one (its counts folded, its access-log line, the early-close
    check) costs tens of microseconds: 10,000 reported in the turn their
    sockets closed stopped the loop, and every other session's traffic, for
    several hundred milliseconds.  Past the first ENDS_PER_TURN of a turn,
    ends wait in order and each later turn reports the next ENDS_PER_TURN;
    while some wait, new ones queue behind them.  An end still waiting is
    out of the live table and the open counts already (Observability.
    session_left), and not yet in the totals and the log, for the few
    turns it waits.
    """

    def __init__(self, report: Callable[[Tunnel, SessionInfo], None]) -> None:
        self._report = report
        self._waiting: deque[tuple[Tunnel, SessionInfo]] = deque()
        self._this_turn = 0
        self._handle: asyncio.Handle | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def ended(self, tunnel: Tunnel, info: SessionInfo) -> None:
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_soon(self._next_turn)
        if self._waiting or self._this_turn >= ENDS_PER_TURN:
            self._waiting.append((tunnel, info))
            return
        self._this_turn += 1
        self._report_one(tunnel, info)

    def _next_turn(self) -> None:
        self._handle = None
        self._this_turn = 0
        self._report_waiting(ENDS_PER_TURN)
        if self._waiting:
            self._handle = asyncio.get_running_loop().call_soon(self._next_turn)

    def _report_waiting(self, most: int) -> None:
        waiting = self._waiting
        while waiting and self._this_turn < most:
            self._this_turn += 1
            tunnel, info = waiting.popleft()
            self._report_one(tunnel, info)

    def _report_one(self, tunnel: Tunnel, info: SessionInfo) -> None:
        try:
            self._report(tunnel, info)
        except Exception:
            # The session is gone either way; the next ends are still reported.
            log.exception("reporting the end of session %s failed", info.request_id)

    def flush(self) -> None:
        """Report every waiting end now (the server stops)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._this_turn = 0
        self._report_waiting(len(self._waiting))
        self._this_turn = 0


def _listed(tunnel: Tunnel, info: SessionInfo, now: float) -> dict[str, object]:
    """An open session as /status.json lists it."""
    return {
        "request_id": info.request_id,
        "route": info.route,
        "client": info.client,
        "upstream": info.server,
        "path": without_query(info.path),
        "age_seconds": round(now - tunnel.started, 3),
        "bytes_client_to_upstream": tunnel.c2u.bytes,
        "bytes_upstream_to_client": tunnel.u2c.bytes,
        "messages_client_to_upstream": tunnel.c2u.messages,
        "messages_upstream_to_client": tunnel.u2c.messages,
    }


class Observability:
    def __init__(
        self,
        config: Config,
        live: Mapping[Tunnel, SessionInfo],
        stream: TextIO | None = None,
        worker: int | None = None,
    ) -> None:
        #: The open sessions, owned by the server state (read for metrics).
        self.live = live
        #: This process's number when several workers share the listeners.
        self.worker = worker
        #: Open sessions by route, kept as they start and end (no walk).
        self.open_by_route: dict[str, int] = {}
        self.metrics = Metrics(
            config, live, multiprocess=worker is not None, open_by_route=self.open_by_route
        )
        self.access_log = AccessLog(config.access_log, stream, worker)
        self._log_requests = self.access_log.enabled
        self.recent_early_closes: deque[tuple[float, SessionReport]] = deque(
            maxlen=RECENT_EARLY_CLOSES
        )
        #: For the status page: how sessions ended lately.
        self.timeline = CloseTimeline()

    def reconfigure(self, config: Config) -> None:
        """A reload: new routes and servers in the metrics, the new log format."""
        self.metrics.configure(config)
        self.access_log.reconfigure(config.access_log)
        self._log_requests = self.access_log.enabled

    def refused(self, listener: str, stage: str, reason: str, peer: str) -> None:
        """A connection dropped before HTTP (listeners.Refused): counted, and
        logged at debug (a scanner or a misconfigured balancer would flood
        a higher level)."""
        metrics = self.metrics
        if stage == "proxy_protocol":
            metrics.proxy_protocol_errors.labels(listener, reason).inc()
        else:
            metrics.tls_handshake_errors.labels(listener, reason).inc()
        logging.getLogger("wsproxy").debug(
            "listener %s: dropped %s before HTTP: %s (%s)", listener, peer, stage, reason
        )

    # --- upstream health (upstreams.HealthEvents): told, not kept here ----

    def server_state(self, server: Server, up: bool, why: str) -> None:
        if (server.group, server.label) in self.metrics.servers:  # not one a reload dropped
            self.metrics.upstream_up.labels(server.group, server.label).set(1 if up else 0)
        if up:
            upstream_log.info("upstream %s server %s is up: %s", server.group, server.label, why)
        else:
            upstream_log.warning(
                "upstream %s server %s is down: %s", server.group, server.label, why
            )

    def server_failed(self, server: Server, failure: UpstreamFailure) -> None:
        self.metrics.upstream_errors.labels(server.group, server.label, failure.kind).inc()

    # --- requests ----------------------------------------------------------

    def request_done(self, exchange: Exchange, status: int, now: float) -> None:
        if exchange.websocket_session:
            return  # counted when its 101 was relayed; the session logs itself
        duration = now - exchange.started
        self.metrics.http.record(exchange.route, exchange.method, status, duration)
        if exchange.upgrade_result is not None:
            self.metrics.upgrades_of(exchange.route, exchange.upgrade_result).inc()
        if self._log_requests:
            self.access_log.write_http(exchange, status, duration)

    # --- WebSocket sessions ------------------------------------------------

    def session_started(self, tunnel: Tunnel, info: SessionInfo, method: str) -> None:
        """A 101 was relayed: count the handshake now, not when the session ends."""
        self.metrics.sessions.started(tunnel)
        self.metrics.http.request(info.route, method, 101)
        self.metrics.upgrades_of(info.route, "accepted").inc()
        self.open_by_route[info.route] = self.open_by_route.get(info.route, 0) + 1

    def session_left(self, info: SessionInfo) -> None:
        """A session ended: out of the open counts at once (its report,
        session_ended, may wait a few loop turns: EndReports)."""
        left = self.open_by_route.get(info.route, 0) - 1
        if left > 0:
            self.open_by_route[info.route] = left
        else:
            self.open_by_route.pop(info.route, None)

    def session_ended(self, tunnel: Tunnel, info: SessionInfo) -> None:
        """Count, log and keep the ended session (after session_left)."""
        report = build_report(info, tunnel)
        self.metrics.session_ended(report, tunnel)
        self.timeline.add(time.time(), report.closed_by, report.code)
        if report.early:
            # Counted either way; only closes the operator must look at are
            # warned about and kept for the status page (sessions.needs_attention).
            if needs_attention(report):
                self.recent_early_closes.append((time.time(), report))
                log.warning(early_close_message(report))
            elif log.isEnabledFor(logging.DEBUG):
                log.debug(early_close_message(report))
        self.access_log.write_session(report)

    # --- the status endpoint ----------------------------------------------

    def status(
        self,
        now: float,
        upstreams: dict[str, dict[str, str]],
        *,
        draining: bool,
        listed: int = LISTED_SESSIONS,
    ) -> dict[str, object]:
        """What the status page shows. Sessions: the counts by route, and at
        most ``listed`` of the newest plus ``listed`` of the oldest (the live
        table is in start order, so both ends cost ``listed`` steps, not one
        per open session)."""
        live = cast(dict[Tunnel, SessionInfo], self.live)
        chosen = dict.fromkeys(itertools.islice(reversed(live), listed))
        chosen.update(dict.fromkeys(itertools.islice(live, listed)))
        sessions = [
            _listed(tunnel, info, now)
            for tunnel in chosen
            if (info := live.get(tunnel)) is not None
        ]
        # The busiest: folded now (what moved since the last scrape or status
        # request, no walk over the idle ones), kept by the collector.
        collector = self.metrics.sessions
        collector.fold_moved()
        over = round(collector.busiest_over, 3)
        busiest = [
            {**_listed(tunnel, info, now), "bytes_moved": moved, "over_seconds": over}
            for moved, ref in collector.busiest[:listed]
            if (tunnel := ref()) is not None and (info := live.get(tunnel)) is not None
        ]
        early = [
            {
                "at": timestamp(at),
                **report.fields(),
                "path": without_query(report.info.path),
                "diagnosis": diagnosis(report),
                "probe": probe_command(report.info),
            }
            for at, report in reversed(self.recent_early_closes)
        ]
        return {
            "draining": draining,
            "open_sessions": len(live),
            "open_by_route": dict(self.open_by_route),
            "sessions_listed_per_end": listed,
            "active_sessions": sessions,
            "busiest_sessions": busiest,
            "recent_early_closes": early,
            "upstreams": upstreams,
            "upgrades": upgrade_totals(
                (sample.labels["route"], sample.labels["result"], sample.value)
                for family in self.metrics.upgrades.collect()
                for sample in family.samples
                if sample.name.endswith("_total")
            ),
            "closes": self.timeline.export(time.time()),
        }
