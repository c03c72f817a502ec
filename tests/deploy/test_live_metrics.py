"""Every metric and label the dashboard and the alerts name, in a live wsproxy's /metrics.

The test runs what the compose example runs: ``wsproxy serve`` with
deploy/compose/wsproxy.yaml (listeners moved to free loopback ports, and one
upstream added whose server is down) in front of deploy/compose/echo.py, both
as subprocesses.  It sends a plain request, a WebSocket message and a ping, a
request to the dead upstream, a session the backend drops right after 101
(an early close by the upstream) and a frame with a reserved opcode (a
protocol error), so that every labelled series exists; then it scrapes the
admin listener and checks each expression of the dashboard and the alerts
against the scrape: metric names (a ``_total``, ``_bucket`` or ``_count``
suffix included), matcher and grouping labels, the label values of fixed sets,
and that rate() and increase() read counters.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.promql import (
    COMPOSE_CONFIG,
    ECHO_BACKEND,
    PROMETHEUS_SERIES,
    TARGET_LABELS,
    Expr,
    alert_exprs,
    dashboard_exprs,
    grouping_labels,
    load_dashboard,
    matchers,
    metric_names,
    rate_arguments,
    string_literals,
)
from tests.support.process import Process, free_port, spawn
from tests.support.wire import encode_frame, handshake_request, new_key, read_head

LOOPBACK = "127.0.0.1"
RESERVED_OPCODE = 0x3
#: How long the scrape may take to show every series (sessions end asynchronously).
SETTLE_TIMEOUT = 10.0

#: Label values from PRODUCT.md's fixed sets: an `=` matcher outside them never matches.
FIXED_LABEL_VALUES = {
    "result": {"accepted", "upstream_rejected", "upstream_unavailable", "bad_handshake"},
    "closed_by": {"client", "upstream", "proxy"},
    "direction": {"client_to_upstream", "upstream_to_client"},
    "opcode": {"continuation", "text", "binary", "close", "ping", "pong", "reserved"},
    "kind": {"refused", "timeout", "reset", "tls", "dns", "protocol"},
}
#: The same label name with another set on one metric.
FIXED_LABEL_VALUES_OF = {("wsproxy_config_reloads_total", "result"): {"success", "failure"}}


@dataclass
class LiveScrape:
    """One /metrics answer: family types, and the label names of each sample name."""

    text: str
    types: dict[str, str] = field(default_factory=dict)
    labels: dict[str, set[str]] = field(default_factory=dict)
    family_of: dict[str, str] = field(default_factory=dict)
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> LiveScrape:
        scrape = cls(text)
        for family in text_string_to_metric_families(text):
            scrape.types[family.name] = family.type
            for sample in family.samples:
                scrape.labels.setdefault(sample.name, set()).update(sample.labels)
                scrape.family_of[sample.name] = family.name
                scrape.samples.append((sample.name, sample.labels, sample.value))
        return scrape

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``."""
        return sum(
            value
            for sample_name, sample_labels, value in self.samples
            if sample_name == name and labels.items() <= sample_labels.items()
        )


def _expressions() -> list[Expr]:
    return dashboard_exprs(load_dashboard()) + alert_exprs()


def _wanted_names() -> set[str]:
    return set().union(*(metric_names(item.expr) for item in _expressions())) - PROMETHEUS_SERIES


def _proxy_config(path: Path, front: int, admin: int, echo: int, dead: int, workers: int) -> None:
    """The compose example's configuration, on loopback, plus an upstream that is down."""
    config = yaml.safe_load(COMPOSE_CONFIG.read_text(encoding="utf-8"))
    config["workers"] = workers
    config["listen"] = [{"host": LOOPBACK, "port": front}]
    config["admin"] = {"host": LOOPBACK, "port": admin}
    config["upstreams"]["echo"]["servers"] = [f"{LOOPBACK}:{echo}"]
    config["upstreams"]["dead"] = {"servers": [f"{LOOPBACK}:{dead}"]}
    config["routes"].insert(0, {"name": "dead", "path_prefix": "/dead", "upstream": "dead"})
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


async def _traffic(client: aiohttp.ClientSession, base: str, front: int) -> None:
    async with client.get(f"{base}/api/seen") as response:
        assert response.status == 200
        assert (await response.json())["http_version"] == "1.1"
    async with client.get(f"{base}/dead/x") as response:
        assert response.status == 502
    async with client.ws_connect(f"{base}/ws") as ws:
        await ws.send_str("hello")
        assert (await ws.receive(timeout=5)).data == "hello"
        await ws.ping(b"are you there")
        await ws.send_str("again")  # the pong comes back before this echo
        assert (await ws.receive(timeout=5)).data == "again"
    async with client.ws_connect(f"{base}/ws/drop") as ws:
        message = await ws.receive(timeout=5)
        assert message.type in {aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED}
    reader, writer = await asyncio.open_connection(LOOPBACK, front)
    try:
        writer.write(handshake_request(LOOPBACK, front, path="/ws", key=new_key()))
        head = await asyncio.wait_for(read_head(reader), 5)
        assert head.status == 101, head.start_line
        writer.write(encode_frame(RESERVED_OPCODE, b"not a valid frame"))
        await writer.drain()
        await asyncio.wait_for(reader.read(), 5)  # the backend fails the connection
    finally:
        writer.close()


async def _scrape_until(
    client: aiohttp.ClientSession, url: str, done: Callable[[LiveScrape], bool]
) -> LiveScrape:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        async with client.get(url) as response:
            assert response.status == 200
            scrape = LiveScrape.parse(await response.text())
        if done(scrape) or time.monotonic() > deadline:
            return scrape
        await asyncio.sleep(0.1)  # polling the scrape under a deadline


async def _stop(process: Process) -> None:
    if process.process.returncode is None:
        await process.stop(signal.SIGTERM)


async def _collect(tmp_path: Path, workers: int) -> LiveScrape:
    echo, front, admin, dead = (free_port() for _ in range(4))
    config = tmp_path / "wsproxy.yaml"
    _proxy_config(config, front, admin, echo, dead, workers)
    backend_cmd = [sys.executable, str(ECHO_BACKEND), "--host", LOOPBACK, "--port", str(echo)]
    proxy_cmd = [sys.executable, "-m", "wsproxy", "serve", "-c", str(config)]
    wanted = _wanted_names()
    async with (
        spawn(backend_cmd, stderr=tmp_path / "echo.stderr") as backend,
        spawn(proxy_cmd, stderr=tmp_path / "wsproxy.stderr") as proxy,
    ):
        await backend.wait_listening(echo)
        await proxy.wait_listening(front)
        await proxy.wait_listening(admin)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as client:
            await _traffic(client, f"http://{LOOPBACK}:{front}", front)
            scrape = await _scrape_until(
                client,
                f"http://{LOOPBACK}:{admin}/metrics",
                lambda scrape: wanted <= set(scrape.labels),
            )
        await _stop(proxy)
        await _stop(backend)
    return scrape


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-workers"])
def live(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> LiveScrape:
    """One scrape shared by the tests below (the proxy starts once), from one
    process and from a supervisor of two workers (its multiprocess /metrics
    must name the same series)."""
    workers: int = request.param
    return asyncio.run(_collect(tmp_path_factory.mktemp("live"), workers))


@pytest.mark.parametrize("item", _expressions(), ids=lambda item: item.where)
def test_every_name_is_in_a_live_scrape(live: LiveScrape, item: Expr) -> None:
    """Guards against a panel or alert on a metric wsproxy does not export (a typo, a
    wrong suffix such as _seconds_total, a renamed metric): it would stay empty forever."""
    names = metric_names(item.expr)
    assert names, f"{item.where}: selects no metric"
    missing = sorted(names - set(live.labels) - PROMETHEUS_SERIES)
    assert not missing, f"{item.where}: not in /metrics: {missing}"


@pytest.mark.parametrize("item", _expressions(), ids=lambda item: item.where)
def test_every_label_is_on_its_metric(live: LiveScrape, item: Expr) -> None:
    """Guards against filtering or grouping by a label the series do not have (the
    panel shows nothing, or one line where the operator expects one per value)."""
    wsproxy_names = metric_names(item.expr) - PROMETHEUS_SERIES
    available = set(TARGET_LABELS)
    for name in wsproxy_names:
        available |= live.labels[name]
    for matcher in matchers(item.expr):
        if matcher.metric in PROMETHEUS_SERIES:
            continue
        assert matcher.label in live.labels[matcher.metric] | TARGET_LABELS, (
            f"{item.where}: {matcher.metric} has no label {matcher.label!r}"
        )
        fixed = FIXED_LABEL_VALUES_OF.get(
            (matcher.metric, matcher.label), FIXED_LABEL_VALUES.get(matcher.label)
        )
        if fixed is not None and matcher.op in {"=", "!="}:
            assert matcher.value in fixed, f"{item.where}: {matcher.label}={matcher.value!r}"
        if fixed is not None and matcher.op in {"=~", "!~"} and "$" not in matcher.value:
            assert set(matcher.value.split("|")) <= fixed, f"{item.where}: {matcher}"
    # label_replace() adds the label its string argument names.
    created = {text for text in string_literals(item.expr) if text.isidentifier()}
    unknown = grouping_labels(item.expr) - available - created
    if wsproxy_names:
        assert not unknown, f"{item.where}: grouped by labels no series has: {sorted(unknown)}"


@pytest.mark.parametrize("item", _expressions(), ids=lambda item: item.where)
def test_rate_and_increase_read_counters(live: LiveScrape, item: Expr) -> None:
    """Guards against rate() over a gauge (meaningless) or a quantile over a non-histogram."""
    for name in rate_arguments(item.expr):
        family = live.family_of[name]
        assert live.types[family] in {"counter", "histogram"}, f"{item.where}: {name}"
    if "histogram_quantile" in item.expr:
        for name in metric_names(item.expr):
            assert name.endswith("_bucket"), item.where
            assert live.types[live.family_of[name]] == "histogram", item.where


def test_the_scrape_has_every_series_the_traffic_makes(live: LiveScrape) -> None:
    """Guards against the fixture proving nothing: the traffic above must have produced
    the labelled series (an early close by the upstream, a refused upstream, a protocol
    error), not only the series that exist from the start."""
    expected: list[tuple[str, dict[str, str]]] = [
        ("wsproxy_http_requests_total", {"route": "web", "code": "200"}),
        ("wsproxy_http_requests_total", {"route": "dead", "code": "502"}),
        ("wsproxy_upstream_errors_total", {"upstream": "dead", "kind": "refused"}),
        ("wsproxy_websocket_messages_total", {"route": "websocket"}),
        ("wsproxy_websocket_frames_total", {"route": "websocket", "opcode": "ping"}),
        (
            "wsproxy_websocket_early_closes_total",
            {"route": "websocket", "closed_by": "upstream", "code": "1006"},
        ),
        ("wsproxy_websocket_protocol_errors_total", {"direction": "client_to_upstream"}),
    ]
    for name, labels in expected:
        assert live.value(name, **labels) >= 1, f"no {name}{labels} in:\n{live.text}"
    assert live.value("wsproxy_upstream_server_up", upstream="dead") == 0
    assert live.value("wsproxy_upstream_server_up", upstream="echo") == 1
