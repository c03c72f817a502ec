"""The pure parts of several workers: how many, what a worker publishes, its log lines."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import select
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tests.support.observe_helpers import Scrape
from wsproxy import accesslog
from wsproxy.accesslog import AccessLog
from wsproxy.config import AccessLogSettings, ConfigError, parse_config
from wsproxy.metrics import HTTP_BUCKETS, HttpCollector, Publisher
from wsproxy.workers import available_cpus, quota_cpus, worker_count

#: fcntl.F_SETPIPE_SZ (Linux; the module has it from Python 3.10).
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

BASE = """\
listen:
  - port: 8000
upstreams:
  app:
    servers: ["127.0.0.1:9000"]
routes:
  - path_prefix: /
    upstream: app
"""


# --- workers: N | auto -------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [("2", 2), ("auto", "auto"), ("1", 1)])
def test_workers_is_a_number_or_auto(text: str, expected: object) -> None:
    assert parse_config(f"workers: {text}\n" + BASE).workers == expected


def test_workers_defaults_to_one() -> None:
    assert parse_config(BASE).workers == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "<config>:1:10: workers: invalid number of workers '0' (expected an integer from 1"),
        ("1000", "invalid number of workers '1000'"),
        ("two", "workers: expected a number of workers from 1 to 256 or 'auto', got a string"),
        ("2.5", "workers: expected a number of workers from 1 to 256 or 'auto', got"),
        ("'2'", "got a string '2'"),
    ],
)
def test_a_bad_workers_value_is_reported_where_it_is(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"workers: {text}\n" + BASE)
    assert message in str(caught.value)


@pytest.mark.parametrize("workers", ["2", "auto"])
def test_port_0_cannot_be_shared_by_several_workers(workers: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"workers: {workers}\n" + BASE.replace("port: 8000", "port: 0"))
    assert str(caught.value) == (
        f"<config>:3:5: listen[0].port: port 0 (any free port) cannot be shared by several "
        f"workers (workers: {workers}); choose a port"
    )


def test_port_0_is_fine_for_one_worker() -> None:
    assert parse_config("workers: 1\n" + BASE.replace("port: 8000", "port: 0")).workers == 1


# --- auto: the CPUs this process may use --------------------------------------


@pytest.mark.parametrize(
    ("cpu_max", "quota", "period", "expected"),
    [
        ("max 100000\n", None, None, None),
        ("200000 100000\n", None, None, 2),
        ("150000 100000\n", None, None, 2),  # 1.5 CPUs: two workers, not one
        ("50000 100000\n", None, None, 1),
        (None, "-1\n", "100000\n", None),
        (None, "300000\n", "100000\n", 3),
        ("garbage", None, None, None),
        (None, None, None, None),
    ],
)
def test_a_cgroup_quota_in_cpus(
    cpu_max: str | None, quota: str | None, period: str | None, expected: int | None
) -> None:
    assert quota_cpus(cpu_max, quota, period) == expected


def test_auto_is_capped_by_the_cgroup_v2_quota_of_this_or_a_parent_cgroup(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1/container\n")
    (tmp_path / "kubepods/pod1/container").mkdir(parents=True)
    (tmp_path / "kubepods/pod1/container/cpu.max").write_text("max 100000\n")
    (tmp_path / "kubepods/pod1/cpu.max").write_text("100000 100000\n")  # the pod's limit
    assert available_cpus(tmp_path, proc) == 1


def test_auto_reads_cgroup_v1_quotas(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/x\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    (tmp_path / "cpu,cpuacct/docker/abc").mkdir(parents=True)
    (tmp_path / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu,cpuacct/docker/abc/cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus(tmp_path, proc) == 1


def test_auto_without_a_quota_is_the_affinity(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/\n")
    assert available_cpus(tmp_path, proc) == len(os.sched_getaffinity(0))
    assert worker_count("auto") >= 1
    assert worker_count(3) == 3


# --- a worker's counts, published to the multiprocess files --------------------


def test_the_publisher_adds_what_grew_and_zeroes_what_went() -> None:
    http = HttpCollector()
    publisher = Publisher([http])
    http.record("/", "GET", 200, 0.003)
    http.record("/", "GET", 200, 0.2)
    publisher.publish()
    http.record("/", "GET", 200, 0.003)
    http.record("/", "POST", 503, 120.0)
    publisher.publish()
    publisher.publish()  # nothing new: nothing added twice
    scrape = Scrape.parse(generate_latest(publisher._registry).decode())
    assert scrape.value("wsproxy_http_requests_total", route="/", method="GET", code="200") == 3
    assert scrape.value("wsproxy_http_requests_total", route="/", method="POST", code="503") == 1
    buckets = scrape.series("wsproxy_http_request_duration_seconds_bucket", route="/")
    by_bound = {dict(labels)["le"]: value for labels, value in buckets.items()}
    assert by_bound["0.005"] == 2
    assert by_bound["0.25"] == 3
    assert by_bound["60.0"] == 3
    assert by_bound["+Inf"] == 4
    assert len(by_bound) == len(HTTP_BUCKETS) + 1
    total = scrape.value("wsproxy_http_request_duration_seconds_sum", route="/")
    assert total == pytest.approx(120.206)


# --- a worker's access log lines -------------------------------------------------


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_each_line_says_its_worker(log_format: str) -> None:
    read, write = os.pipe()
    with os.fdopen(write, "w") as stream, os.fdopen(read) as out:
        log = AccessLog(AccessLogSettings(format=log_format), stream, worker=1)  # type: ignore[arg-type]
        for index in range(200):
            log.write({"type": "ws", "route": "/", "path": "/" + "x" * index})
        log.flush()
        stream.close()
        lines = out.read().splitlines()
    assert len(lines) == 200
    if log_format == "json":
        records = [json.loads(line) for line in lines]
        assert {record["worker"] for record in records} == {1}
        assert [len(record["path"]) for record in records] == [i + 1 for i in range(200)]
    else:
        assert all(" worker=1 " in line for line in lines)


def test_one_process_writes_no_worker_field() -> None:
    stream = io.StringIO()
    log = AccessLog(AccessLogSettings(format="json"), stream)
    log.write({"type": "ws"})
    log.flush()
    assert "worker" not in json.loads(stream.getvalue())


def _full_pipe(size: int = 4096) -> tuple[int, int]:
    """A non-blocking pipe (of ``size`` bytes) that cannot take one more byte."""
    read, write = os.pipe()
    fcntl.fcntl(write, F_SETPIPE_SZ, size)
    os.set_blocking(write, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write, b"-" * 512)
    return read, write


def _drain(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_full_stdout_costs_one_wait_then_lines_are_dropped_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(accesslog, "_WRITABLE_WAIT", 0.05)
    read, write = _full_pipe()
    with os.fdopen(write, "w") as stream:
        log = AccessLog(AccessLogSettings(format="json"), stream, worker=0)  # type: ignore[arg-type]
        waits = []
        real_select = select.select

        def counting_select(*args: object) -> object:
            waits.append(args)
            return real_select(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(accesslog.select, "select", counting_select)
        for flush in range(3):
            log.write({"type": "ws", "flush": flush})
            log.write({"type": "ws", "flush": flush})
            log.flush()
        assert log.lines_lost == 6
        assert len(waits) == 1  # the first flush waited; the next ones did not
        assert _drain(read).strip(b"-") == b""
        log.write({"type": "ws", "after": True})
        log.flush()  # room again: written, and the next full stdout is waited for again
        assert log.lines_lost == 6
        assert json.loads(_drain(read))["after"] is True
    os.close(read)


def test_a_line_cut_short_is_ended_before_the_next_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accesslog, "_WRITABLE_WAIT", 0.05)
    read, write = _full_pipe(8192)
    with os.fdopen(write, "w") as stream:
        log = AccessLog(AccessLogSettings(format="json"), stream, worker=0)  # type: ignore[arg-type]
        os.read(read, 4096)  # a page free: room for part of a line longer than PIPE_BUF
        log.write({"type": "ws", "path": "/" + "x" * 8000})
        log.flush()
        assert log.lines_lost == 1
        cut = _drain(read)
        assert b'"path"' in cut
        assert not cut.endswith(b"\n")
        log.write({"type": "ws", "path": "/next"})
        log.flush()
        rest = _drain(read)
    os.close(read)
    assert rest.startswith(b"\n")  # the cut line ends first...
    assert json.loads(rest.splitlines()[-1])["path"] == "/next"  # ...and this one is whole
    assert log.lines_lost == 1


class _Gauges(Collector):
    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("wsproxy_test_open", "Open now.", labels=["route"])
        for route, value in self.values.items():
            family.add_metric([route], value)
        yield family


def test_a_gauge_no_longer_collected_is_published_as_0() -> None:
    """A route a reload removed, whose last session ended: not left at its
    last value in the files (livesum would count it for ever)."""
    gauges = _Gauges()
    publisher = Publisher([gauges])
    gauges.values = {"/a": 3, "/b": 2}
    publisher.publish()
    gauges.values = {"/a": 1}
    publisher.publish()
    scrape = Scrape.parse(generate_latest(publisher._registry).decode())
    assert scrape.value("wsproxy_test_open", route="/a") == 1
    assert scrape.value("wsproxy_test_open", route="/b") == 0
