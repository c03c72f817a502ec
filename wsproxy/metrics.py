"""Prometheus metrics: the names and labels of PRODUCT.md, in one place.

Label values come only from the configuration (route, upstream and server
names) and from fixed sets (methods, results, ``closed_by``, close codes,
opcodes, directions), so cardinality stays bounded whatever clients send.

The tunnel's hot path makes no prometheus-client call: each direction's frame
observer counts in plain integers.  :class:`SessionCollector` publishes at
scrape time the totals folded in when sessions ended plus the live counts of
open sessions, so a scrape is exact for long-lived WebSockets too.

With several workers (``workers``), prometheus-client's multiprocess mode:
every worker's metric objects write to files in ``PROMETHEUS_MULTIPROC_DIR``
and the supervisor's ``/metrics`` reads them all.  Those two collectors'
plain integers are written there by :class:`Publisher` when the supervisor
asks, just before it reads (so a scrape is as exact as with one process),
and once more when a worker exits.
"""

from __future__ import annotations

import heapq
import time
import weakref
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from wsproxy.config import Config
from wsproxy.sessions import SessionInfo, SessionReport, method_label
from wsproxy.tunnel import Tunnel
from wsproxy.wsframes import OPCODE_NAMES

DIRECTIONS = ("client_to_upstream", "upstream_to_client")
UPGRADE_RESULTS = ("accepted", "upstream_rejected", "upstream_unavailable", "bad_handshake")

#: HTTP latency: sub-millisecond to a minute.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: Busiest sessions a fold keeps (the status document's largest ``?sessions=N``).
BUSIEST_KEPT = 1000

#: WebSocket lifetimes: a failed session lasts milliseconds, a healthy one hours.
SESSION_BUCKETS = (0.01, 0.1, 1, 10, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400)


class SessionCollector(Collector):
    """Active sessions, frames, messages and bytes, at a cost that does not
    grow with the number of open sessions.

    Each session counts in its own observers (plain integers, no call per
    frame).  A session with new bytes puts itself in :attr:`dirty`
    (tunnel.Tunnel.dirty, one set insertion per read); a scrape folds only
    the dirty sessions' counts since their last fold into the per-route
    totals, and a session's end folds the rest.  So a scrape visits the
    sessions that moved since the last one, never the idle thousands, and
    is still exact.  Open sessions per route are counted as sessions start
    and end (``open_by_route``, kept by observe.Observability).

    Each fold also keeps the :data:`BUSIEST_KEPT` sessions that moved the
    most bytes since the fold before (a heap as it goes: no second pass),
    for the status page's busiest sessions.
    """

    def __init__(
        self,
        routes: Iterable[str],
        live: Mapping[Tunnel, SessionInfo],
        open_by_route: Mapping[str, int] | None = None,
    ) -> None:
        #: Routes whose active-session gauge shows even at 0.
        self.routes = tuple(routes)
        self._live = live  # open session -> what it is
        self.open_by_route: Mapping[str, int] = open_by_route if open_by_route is not None else {}
        #: Sessions with counts not folded into the totals yet.
        self.dirty: set[Tunnel] = set()
        self._frames: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self._messages: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._bytes: defaultdict[tuple[str, str], int] = defaultdict(int)
        #: The sessions that moved the most bytes between the last two
        #: folds, most first: (bytes moved, weak reference to the session).
        #: Weak: an ended session must not wait for the next fold to be freed.
        self.busiest: list[tuple[int, weakref.ref[Tunnel]]] = []
        #: How long that was (seconds between the two folds).
        self.busiest_over = 0.0
        self._last_fold = time.monotonic()

    def started(self, session: Tunnel) -> None:
        """A new session: it reports its own reads from now on."""
        session.dirty = self.dirty
        self.dirty.add(session)

    def fold(self, route: str, session: Tunnel) -> None:
        """A session ended: the rest of its counts go into the totals."""
        self._fold(route, session)
        session.folded = None
        self.dirty.discard(session)
        session.dirty = None

    def _fold(self, route: str, session: Tunnel) -> int:
        """Add what ``session`` counted since its last fold; the bytes it moved."""
        now = _counts(session)
        before = session.folded
        if before == now or (before is None and not any(now)):
            return 0  # nothing new (an idle session keeps no copy at all)
        session.folded = now
        if before is None:
            before = (0,) * len(now)
        width = len(now) // len(DIRECTIONS)
        for index, direction in enumerate(DIRECTIONS):
            base = index * width
            old, new = before[base : base + width], now[base : base + width]
            self._bytes[(route, direction)] += new[0] - old[0]
            self._messages[(route, direction)] += new[1] - old[1]
            for opcode, (was, count) in enumerate(zip(old[2:], new[2:], strict=True)):
                if count != was:
                    self._frames[(route, direction, OPCODE_NAMES[opcode])] += count - was
        return (now[0] - before[0]) + (now[width] - before[width])

    def fold_moved(self) -> None:
        """Fold the sessions that moved since the last fold (a scrape or a
        status request) and keep the busiest of them."""
        live = self._live
        top: list[tuple[int, int, Tunnel]] = []  # (bytes, tie-break, session), a min-heap
        for session in list(self.dirty):
            info = live.get(session)
            if info is None:
                self.dirty.discard(session)  # ended meanwhile: folded by its end
                continue
            moved = self._fold(info.route, session)
            if moved:
                entry = (moved, id(session), session)
                if len(top) < BUSIEST_KEPT:
                    heapq.heappush(top, entry)
                elif moved > top[0][0]:
                    heapq.heapreplace(top, entry)
            if not (session.c2u.pending or session.u2c.pending):
                self.dirty.discard(session)  # a backlog still to parse keeps it dirty
        now = time.monotonic()
        top.sort(reverse=True)
        self.busiest = [(moved, weakref.ref(session)) for moved, _, session in top]
        self.busiest_over, self._last_fold = now - self._last_fold, now

    def collect(self) -> Iterator[Metric]:
        self.fold_moved()
        frames, messages, byte_counts = self._frames, self._messages, self._bytes
        active: dict[str, int] = dict.fromkeys(self.routes, 0)
        active.update(self.open_by_route)

        gauge = GaugeMetricFamily(
            "wsproxy_websocket_active_connections",
            "WebSocket sessions open now.",
            labels=["route"],
        )
        for route, count in active.items():
            gauge.add_metric([route], count)
        yield gauge

        yield _counter(
            "wsproxy_websocket_frames",
            "WebSocket frames seen by the passive observer.",
            ["route", "direction", "opcode"],
            frames.items(),
        )
        yield _counter(
            "wsproxy_websocket_messages",
            "Complete WebSocket messages (final data frames).",
            ["route", "direction"],
            messages.items(),
        )
        yield _counter(
            "wsproxy_websocket_bytes",
            "Bytes relayed through WebSocket tunnels (frames and payloads).",
            ["route", "direction"],
            byte_counts.items(),
        )


def _counts(session: Tunnel) -> tuple[int, ...]:
    """Bytes, messages and frames by opcode, client to upstream then back."""
    c2u, u2c = session.c2u, session.u2c
    return (c2u.bytes, c2u.messages, *c2u.frames, u2c.bytes, u2c.messages, *u2c.frames)


#: The ``le`` labels as prometheus-client writes them ("0.001", "1.0", ...).
_BUCKET_LABELS = [floatToGoString(bound) for bound in HTTP_BUCKETS]  # type: ignore[no-untyped-call]


class HttpCollector(Collector):
    """Requests answered and their durations, counted in plain integers.

    A prometheus-client ``inc()`` and ``observe()`` per request cost a few
    microseconds (a lock each); here a request is two dictionary updates and
    the families are built at scrape time.  Keys hold the raw method and
    status: llhttp accepts only the methods it knows and statuses are three
    digits, so the set stays bounded; methods fold into their label here.
    """

    def __init__(self) -> None:
        self._requests: defaultdict[tuple[str, str | None, int], int] = defaultdict(int)
        #: route -> [count per bucket (the last one +Inf)..., sum of durations]
        self._durations: dict[str, list[float]] = {}

    def request(self, route: str, method: str | None, status: int) -> None:
        """Count an answer without a duration (a WebSocket session's ``101``)."""
        self._requests[(route, method, status)] += 1

    def record(self, route: str, method: str | None, status: int, seconds: float) -> None:
        """Count a plain request's answer and its duration."""
        self._requests[(route, method, status)] += 1
        counts = self._durations.get(route)
        if counts is None:
            counts = self._durations[route] = [0.0] * (len(HTTP_BUCKETS) + 2)
        counts[bisect_left(HTTP_BUCKETS, seconds)] += 1
        counts[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        totals: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        for (route, method, status), count in list(self._requests.items()):
            totals[(route, method_label(method), str(status))] += count
        yield _counter(
            "wsproxy_http_requests",
            "HTTP requests answered, including WebSocket handshakes.",
            ["route", "method", "code"],
            totals.items(),
        )
        family = HistogramMetricFamily(
            "wsproxy_http_request_duration_seconds",
            "Time to answer a plain HTTP request (WebSocket sessions excluded).",
            labels=["route"],
        )
        bounds = [*_BUCKET_LABELS, "+Inf"]
        for route, counts in sorted(self._durations.items()):
            buckets: list[tuple[str, float]] = []
            total = 0.0
            for bound, in_bucket in zip(bounds, counts[:-1], strict=True):
                total += in_bucket
                buckets.append((bound, total))
            family.add_metric([route], buckets, sum_value=counts[-1])
        yield family


def _counter(
    name: str, documentation: str, labels: list[str], values: Iterable[tuple[tuple[str, ...], int]]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for label_values, count in sorted(values):
        family.add_metric(list(label_values), count)
    return family


class Publisher:
    """A worker's collected counts, written to the multiprocess files.

    Counters get what grew since the last publication (a prometheus-client
    counter there only adds), the active-sessions gauge its value now (its
    files are summed over the live workers: ``livesum``; a route no longer
    collected goes back to 0), the request-duration histogram what each
    bucket grew.
    """

    def __init__(self, collectors: Sequence[Collector]) -> None:
        self._collectors = collectors
        #: Never exposed: the values live in the files; this only keeps the
        #: metric objects from clashing with the collectors' names.
        self._registry = CollectorRegistry(auto_describe=False)
        self._metrics: dict[str, Counter | Gauge | Histogram] = {}
        #: What was published last, by (sample name, label values).
        self._last: dict[tuple[str, tuple[str, ...]], float] = {}
        self._gauges: set[tuple[str, tuple[str, ...]]] = set()

    def publish(self) -> None:
        gauges: set[tuple[str, tuple[str, ...]]] = set()
        for collector in self._collectors:
            for family in collector.collect():
                if family.type == "counter":
                    self._counter(family)
                elif family.type == "gauge":
                    self._gauge(family, gauges)
                elif family.type == "histogram":
                    self._histogram(family)
        for name, values in self._gauges - gauges:
            metric = self._metrics[name]
            assert isinstance(metric, Gauge)
            metric.labels(*values).set(0)
        self._gauges = gauges

    def _metric(self, family: Metric, labels: Sequence[str]) -> Counter | Gauge | Histogram:
        metric = self._metrics.get(family.name)
        if metric is None:
            r = self._registry
            doc = family.documentation
            if family.type == "counter":
                metric = Counter(family.name, doc, labels, registry=r)
            elif family.type == "gauge":
                metric = Gauge(family.name, doc, labels, registry=r, multiprocess_mode="livesum")
            else:
                metric = Histogram(family.name, doc, labels, buckets=HTTP_BUCKETS, registry=r)
            self._metrics[family.name] = metric
        return metric

    def _counter(self, family: Metric) -> None:
        for sample in family.samples:
            values = tuple(sample.labels.values())
            key = (sample.name, values)
            delta = sample.value - self._last.get(key, 0)
            if delta:
                metric = self._metric(family, list(sample.labels))
                assert isinstance(metric, Counter)
                metric.labels(*values).inc(delta)
                self._last[key] = sample.value

    def _gauge(self, family: Metric, seen: set[tuple[str, tuple[str, ...]]]) -> None:
        for sample in family.samples:
            values = tuple(sample.labels.values())
            metric = self._metric(family, list(sample.labels))
            assert isinstance(metric, Gauge)
            metric.labels(*values).set(sample.value)
            seen.add((family.name, values))

    def _histogram(self, family: Metric) -> None:
        buckets: dict[tuple[str, ...], list[float]] = {}
        sums: dict[tuple[str, ...], float] = {}
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "le"}
            values = tuple(labels.values())
            if sample.name.endswith("_bucket"):
                buckets.setdefault(values, []).append(sample.value)  # in ``le`` order
                self._metric(family, list(labels))
            elif sample.name.endswith("_sum"):
                sums[values] = sample.value
        for values, cumulative in buckets.items():
            metric = self._metrics[family.name]
            assert isinstance(metric, Histogram)
            child = metric.labels(*values)
            below = 0.0
            for index, count in enumerate(cumulative):
                key = (f"{family.name}_bucket{index}", values)
                delta = count - below - self._last.get(key, 0)
                if delta:
                    # One bucket's own counter: what observe() would have added to.
                    child._buckets[index].inc(delta)
                    self._last[key] = count - below
                below = count
            key = (f"{family.name}_sum", values)
            delta = sums.get(values, 0.0) - self._last.get(key, 0.0)
            if delta:
                child._sum.inc(delta)
                self._last[key] = sums.get(values, 0.0)


#: ``*_created`` series double the exposition for no use on a proxy's counters.
disable_created_metrics()  # type: ignore[no-untyped-call]


def reload_counter(registry: CollectorRegistry | None) -> Counter:
    counter = Counter(
        "wsproxy_config_reloads",
        "Configuration reloads (SIGHUP) by result.",
        ["result"],
        registry=registry,
    )
    for result in ("success", "failure"):
        counter.labels(result)
    return counter


def restart_counter(registry: CollectorRegistry | None) -> Counter:
    """Several workers: the supervisor's count of workers it started again."""
    return Counter(
        "wsproxy_worker_restarts",
        "Worker processes started again after they ended unexpectedly.",
        registry=registry,
    )


class _Children:
    """One labelled metric's children, each looked up once.

    ``labels()`` validates the values and takes a lock on every call (some
    2 us); a session's start and end each ask for one to three children
    whose label sets are few (routes, fixed words, close-code labels).
    """

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    """Every wsproxy metric, on a registry of its own (one per server)."""

    def __init__(
        self,
        config: Config,
        live: Mapping[Tunnel, SessionInfo],
        *,
        multiprocess: bool = False,
        open_by_route: Mapping[str, int] | None = None,
    ) -> None:
        #: A worker among several (prometheus-client's multiprocess mode).
        self.multiprocess = multiprocess
        self.registry = CollectorRegistry()
        r = self.registry
        self.http = HttpCollector()
        r.register(self.http)
        self.upstream_errors = Counter(
            "wsproxy_upstream_errors",
            "Failures to reach or understand an upstream server.",
            ["upstream", "server", "kind"],
            registry=r,
        )
        self.upstream_up = Gauge(
            "wsproxy_upstream_server_up",
            "0 for a few seconds after a failed attempt to reach the server, else 1.",
            ["upstream", "server"],
            registry=r,
            # Several workers keep health each: 0 when any live worker holds
            # the server out.
            multiprocess_mode="livemin",
        )
        self.upgrades = Counter(
            "wsproxy_websocket_upgrades",
            "WebSocket handshakes by outcome.",
            ["route", "result"],
            registry=r,
        )
        self.session_duration = Histogram(
            "wsproxy_websocket_connection_duration_seconds",
            "WebSocket session lifetime from 101 to the end.",
            ["route"],
            buckets=SESSION_BUCKETS,
            registry=r,
        )
        self.closes = Counter(
            "wsproxy_websocket_closes",
            "Ended WebSocket sessions by who closed first and the close code.",
            ["route", "closed_by", "code"],
            registry=r,
        )
        self.early_closes = Counter(
            "wsproxy_websocket_early_closes",
            "WebSocket sessions that ended within the route's early_close_window.",
            ["route", "closed_by", "code"],
            registry=r,
        )
        #: The children the session path asks for (_Children).
        self.upgrades_of = _Children(self.upgrades)
        self.session_duration_of = _Children(self.session_duration)
        self.closes_of = _Children(self.closes)
        self.early_closes_of = _Children(self.early_closes)
        self.protocol_errors = Counter(
            "wsproxy_websocket_protocol_errors",
            "Sessions in which a direction broke RFC 6455 framing (observation stopped).",
            ["route", "direction"],
            registry=r,
        )
        self.proxy_protocol_errors = Counter(
            "wsproxy_proxy_protocol_errors",
            "Connections dropped on a proxy_protocol listener for want of a valid "
            "PROXY header (invalid, timeout, closed).",
            ["listener", "reason"],
            registry=r,
        )
        self.tls_handshake_errors = Counter(
            "wsproxy_tls_handshake_errors",
            "Connections dropped on a TLS listener whose handshake failed or timed out.",
            ["listener", "reason"],
            registry=r,
        )
        self.reloads = reload_counter(r)
        self.sessions = SessionCollector(
            (route.name for route in config.routes), live, open_by_route
        )
        r.register(self.sessions)
        #: Several workers: writes the two collectors' counts to the files.
        self.publisher = Publisher((self.http, self.sessions)) if multiprocess else None
        #: (upstream, server) of the configuration in force.
        self.servers: set[tuple[str, str]] = set()
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Series that exist from the start, so rate() and absent() work at once;
        after a reload, the new configuration's (a server no longer named
        leaves ``wsproxy_upstream_server_up``; counters keep their totals)."""
        for route in config.routes:
            for result in UPGRADE_RESULTS:
                self.upgrades.labels(route.name, result)
        self.sessions.routes = tuple(route.name for route in config.routes)
        servers = {
            (upstream.name, str(server))
            for upstream in config.upstreams.values()
            for server in upstream.servers
        }
        for gone in self.servers - servers:
            if self.multiprocess:
                # Not possible in prometheus-client's files: the series stays
                # until the worker restarts (docs/design.md).
                continue
            self.upstream_up.remove(*gone)
        for new in servers - self.servers:
            self.upstream_up.labels(*new).set(1)
        self.servers = servers

    def session_ended(self, report: SessionReport, session: Tunnel) -> None:
        route = report.info.route
        self.sessions.fold(route, session)
        self.session_duration_of(route).observe(report.duration)
        self.closes_of(route, report.closed_by, report.code).inc()
        if report.early:
            self.early_closes_of(route, report.closed_by, report.code).inc()
        for direction, stats in zip(
            DIRECTIONS, (report.client_to_upstream, report.upstream_to_client), strict=True
        ):
            if stats.error is not None:
                self.protocol_errors.labels(route, direction).inc()
