"""Several workers (``workers: 2``): one port, both processes serving, one view.

Each test runs ``wsproxy serve`` as a user does, with two workers, in front
of a real backend, and tells the workers apart by what they say: the access
log's ``worker`` field for plain requests, ``/status.json`` for open
WebSocket sessions.  A test fails unless both workers served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from tests.support.http_backends import aiohttp_backend, named_app
from tests.support.observe_helpers import Scrape, eventually
from tests.support.process import Process, free_port, spawn

#: Connections opened to see both workers answer: the kernel spreads them by
#: a hash of their addresses, so all 40 on one worker is a 1 in 2^39 chance.
CONNECTIONS = 40
GOING_AWAY = 1001


@pytest.fixture(autouse=True)
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The supervisor's TMPDIR: its metric files and sockets (left behind
    when a test kills it) stay in the test's own directory."""
    path = tmp_path / "tmp"
    path.mkdir()
    monkeypatch.setenv("TMPDIR", str(path))
    return path


def config(upstream_port: int, port: int, admin: int, *, workers: int = 2) -> str:
    return f"""\
workers: {workers}
listen:
  - host: 127.0.0.1
    port: {port}
admin:
  host: 127.0.0.1
  port: {admin}
upstreams:
  app:
    servers: ["127.0.0.1:{upstream_port}"]
routes:
  - path_prefix: /
    upstream: app
shutdown:
  grace_period: 5s
"""


class Workers:
    """A running ``wsproxy serve`` with several workers, and what it logged."""

    def __init__(self, proxy: Process, port: int, admin: int, http: aiohttp.ClientSession):
        self.proxy = proxy
        self.port = port
        self.admin = admin
        self.http = http
        #: Access log lines read so far (stdout).
        self.lines: list[dict[str, Any]] = []

    async def get_fresh(self, path: str = "/") -> str:
        """A GET on a new connection (a new source port: a new hash)."""
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
            session.get(f"http://127.0.0.1:{self.port}{path}") as response,
        ):
            assert response.status == 200, await response.text()
            return await response.text()

    async def read_http_lines(self, count: int) -> list[dict[str, Any]]:
        """The next ``count`` access log lines of plain requests."""
        stdout = self.proxy.process.stdout
        assert stdout is not None
        got: list[dict[str, Any]] = []
        async with asyncio.timeout(5):
            while len(got) < count:
                line = await stdout.readline()
                assert line, f"stdout ended:\n{self.proxy.stderr()}"
                record = json.loads(line)
                self.lines.append(record)
                if record.get("type") == "http":
                    got.append(record)
        return got

    async def admin_get(self, path: str) -> tuple[int, str]:
        async with self.http.get(f"http://127.0.0.1:{self.admin}{path}") as response:
            return response.status, await response.text()

    async def scrape(self) -> Scrape:
        status, text = await self.admin_get("/metrics")
        assert status == 200, text
        return Scrape.parse(text)

    async def status(self) -> dict[str, Any]:
        status, text = await self.admin_get("/status.json")
        assert status == 200, text
        result: dict[str, Any] = json.loads(text)
        return result

    async def pids(self) -> dict[int, int]:
        """Each ready worker's pid, by index."""
        return {w["index"]: w["pid"] for w in (await self.status())["workers"] if w["ready"]}


@contextlib.asynccontextmanager
async def two_workers(
    tmp_path: Path, upstream_port: int, make_config: Callable[[int, int, int], str] = config
) -> AsyncIterator[Workers]:
    """``wsproxy serve`` with ``make_config(upstream_port, port, admin)``,
    once every worker is ready."""
    port, admin = free_port(), free_port()
    path = tmp_path / "proxy.yaml"
    path.write_text(make_config(upstream_port, port, admin))
    async with (
        aiohttp.ClientSession() as http,
        spawn(
            [sys.executable, "-m", "wsproxy"], "serve", "-c", str(path), stderr=tmp_path / "err"
        ) as proxy,
    ):
        await proxy.wait_listening(admin)
        workers = Workers(proxy, port, admin, http)

        async def ready() -> bool | None:  # /readyz: 503 until every worker listens
            return True if (await workers.admin_get("/readyz"))[0] == 200 else None

        await eventually(ready, "every worker to be ready", timeout=10)
        yield workers


async def both_served(workers: Workers) -> Counter[int]:
    """CONNECTIONS requests, each on its own connection: by worker."""
    for _ in range(CONNECTIONS):
        await workers.get_fresh()
    served = Counter(line["worker"] for line in await workers.read_http_lines(CONNECTIONS))
    assert set(served) == {0, 1}, f"served by {dict(served)}"
    return served


async def sessions_on_both(
    workers: Workers, http: aiohttp.ClientSession
) -> list[aiohttp.ClientWebSocketResponse]:
    """WebSocket sessions opened until both workers hold some (at most 64)."""
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    for _ in range(64):
        ws = await http.ws_connect(f"http://127.0.0.1:{workers.port}/ws")
        sockets.append(ws)
        await ws.send_str("hello")
        assert (await ws.receive(timeout=5)).data == "one: hello"
        held = {s["worker"] for s in (await workers.status())["active_sessions"]}
        if held == {0, 1}:
            return sockets
    raise AssertionError("64 sessions, all on one worker")


async def test_both_workers_serve_one_port_and_the_metrics_add_up(
    tmp_path: Path, runtime: Path
) -> None:
    async with (
        aiohttp_backend(named_app("one")) as backend,
        two_workers(tmp_path, backend) as workers,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
    ):
        served = await both_served(workers)
        sockets = await sessions_on_both(workers, http)
        scrape = await workers.scrape()
        # Every worker's counts, summed by the supervisor's scrape.
        requests = scrape.series("wsproxy_http_requests_total", route="/", method="GET")
        assert requests == {
            frozenset({("route", "/"), ("method", "GET"), ("code", "200")}): CONNECTIONS,
            frozenset({("route", "/"), ("method", "GET"), ("code", "101")}): len(sockets),
        }
        assert sum(served.values()) == CONNECTIONS
        assert scrape.value("wsproxy_websocket_active_connections", route="/") == len(sockets)
        assert scrape.value(
            "wsproxy_websocket_upgrades_total", route="/", result="accepted"
        ) == len(sockets)
        assert scrape.value(
            "wsproxy_websocket_messages_total", route="/", direction="client_to_upstream"
        ) == len(sockets)
        histogram = scrape.value("wsproxy_http_request_duration_seconds_count", route="/")
        assert histogram == CONNECTIONS
        status, text = await workers.admin_get("/readyz")
        assert (status, text) == (200, "ready\n")
        document = await workers.status()
        assert [w["index"] for w in document["workers"]] == [0, 1]
        assert document["upstreams"] == {"app": {f"127.0.0.1:{backend}": "up"}}
        # The status page's summaries, added over the workers.
        assert document["upgrades"] == {"/": {"accepted": len(sockets)}}
        assert document["open_sessions"] == len(sockets)
        assert document["open_by_route"] == {"/": len(sockets)}
        # Bounded over the workers too: one newest and one oldest overall.
        status, text = await workers.admin_get("/status.json?sessions=1")
        listed = json.loads(text)["active_sessions"]
        assert status == 200
        assert len(listed) == min(2, len(sockets))
        assert len(document["closes"]["buckets"]) == 30
        assert document["admin"] == {"host": "127.0.0.1", "loopback_only": True}
        async with workers.http.get(f"http://127.0.0.1:{workers.admin}/") as page:
            assert page.status == 200
            assert "status.js" in await page.text()

        # The drain: every session, on either worker, gets 1001.
        workers.proxy.process.send_signal(signal.SIGTERM)
        for ws in sockets:
            message = await ws.receive(timeout=5)
            assert message.type is WSMsgType.CLOSE, message
            assert message.data == GOING_AWAY
        exit_status = await workers.proxy.stop(signal.SIGTERM, within=7)
        stderr = workers.proxy.stderr()
    assert exit_status == 0, stderr
    assert "Traceback" not in stderr
    assert stderr.count("stopping") >= 3  # the supervisor and each worker
    assert not os.listdir(runtime)  # its metric files and sockets, removed


async def test_a_reload_reaches_every_worker_and_an_invalid_file_none(tmp_path: Path) -> None:
    async with (
        aiohttp_backend(named_app("one")) as one,
        aiohttp_backend(named_app("two")) as two,
        two_workers(tmp_path, one) as workers,
    ):
        path = tmp_path / "proxy.yaml"
        good = path.read_text()
        path.write_text("routes: [")
        workers.proxy.process.send_signal(signal.SIGHUP)
        await eventually(
            lambda: _found(workers.proxy, "kept the configuration in force"), "the rejection"
        )
        path.write_text(good.replace(f"127.0.0.1:{one}", f"127.0.0.1:{two}"))
        workers.proxy.process.send_signal(signal.SIGHUP)
        for index in (0, 1):
            await eventually(
                lambda index=index: _found(workers.proxy, f"[worker {index}]: reloaded"),  # type: ignore[misc]
                f"worker {index} to reload",
            )
        answers = [await workers.get_fresh() for _ in range(CONNECTIONS)]
        lines = await workers.read_http_lines(CONNECTIONS)
        scrape = await workers.scrape()
        stderr = workers.proxy.stderr()
    assert set(answers) == {"two /"}
    assert {line["worker"] for line in lines} == {0, 1}
    # Counted once each, by the supervisor; no worker saw the invalid file.
    assert scrape.value("wsproxy_config_reloads_total", result="success") == 1
    assert scrape.value("wsproxy_config_reloads_total", result="failure") == 1
    assert "[worker" not in "".join(
        line for line in stderr.splitlines(keepends=True) if "reload: " in line
    )


async def test_a_killed_worker_is_started_again_and_its_gauges_cleared(tmp_path: Path) -> None:
    async with (
        aiohttp_backend(named_app("one")) as backend,
        two_workers(tmp_path, backend) as workers,
        aiohttp.ClientSession() as http,
    ):
        ws = await http.ws_connect(f"http://127.0.0.1:{workers.port}/ws")
        await ws.send_str("a")
        assert (await ws.receive(timeout=5)).data == "one: a"
        (session,) = (await workers.status())["active_sessions"]
        before = await workers.pids()
        victim = session["worker"]
        scrape = await workers.scrape()
        assert scrape.value("wsproxy_websocket_active_connections", route="/") == 1

        os.kill(before[victim], signal.SIGKILL)
        assert (await ws.receive(timeout=5)).type in (WSMsgType.CLOSE, WSMsgType.CLOSED)

        async def back() -> dict[int, int] | None:
            pids = await workers.pids()
            return pids if len(pids) == 2 and pids[victim] != before[victim] else None

        after = await eventually(back, "the worker to be started again")
        assert after[1 - victim] == before[1 - victim]
        scrape = await workers.scrape()
        # The dead worker's session no longer counts as open; its counts stay.
        assert scrape.value("wsproxy_websocket_active_connections", route="/") == 0
        assert scrape.value("wsproxy_websocket_upgrades_total", route="/", result="accepted") == 1
        assert scrape.value("wsproxy_worker_restarts_total") == 1
        await both_served(workers)
        status, _ = await workers.admin_get("/readyz")
        assert status == 200
        stderr = workers.proxy.stderr()
    assert f"worker {victim} (pid {before[victim]}) was killed by SIGKILL" in stderr


async def test_a_port_held_by_another_program_stops_the_start(tmp_path: Path) -> None:
    """Without SO_REUSEPORT there: exit 1, one clear line, no worker started."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        stderr = await refused_start(tmp_path, config(free_port(), port, free_port()))
    assert "[worker" not in stderr


async def refused_start(tmp_path: Path, text: str) -> str:
    """Start ``wsproxy serve`` on ``text``, which must fail: exit 1, a port
    in use, no traceback; its stderr."""
    path = tmp_path / "refused.yaml"
    path.write_text(text)
    async with spawn(
        [sys.executable, "-m", "wsproxy"], "serve", "-c", str(path), stderr=tmp_path / "refused"
    ) as proxy:
        async with asyncio.timeout(10):
            await proxy.process.wait()
        stderr = proxy.stderr()
    assert proxy.process.returncode == 1, stderr
    assert "address already in use" in stderr
    assert "Traceback" not in stderr
    return stderr


def _found(proxy: Process, needle: str) -> Any:
    async def probe() -> bool | None:
        return True if needle in proxy.stderr() else None

    return probe()


async def test_workers_drain_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    """No orphan keeps the port: each worker reads its lifeline's end of file."""
    async with (
        aiohttp_backend(named_app("one")) as backend,
        two_workers(tmp_path, backend) as workers,
    ):
        pids = await workers.pids()
        workers.proxy.process.kill()
        await workers.proxy.process.wait()

        async def gone() -> bool | None:
            for pid in pids.values():
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    continue
                if _zombie(pid):
                    continue
                return None
            return True

        await eventually(gone, "the workers to exit", timeout=10)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", workers.port)
    assert "the supervisor is gone; stopping" in workers.proxy.stderr()


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def test_one_process_ignores_a_multiprocess_directory_in_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PROMETHEUS_MULTIPROC_DIR meant for workers (here one that does not
    exist) does not send a single process's metrics to files."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "absent"))
    port, admin = free_port(), free_port()
    path = tmp_path / "proxy.yaml"
    async with aiohttp_backend(named_app("one")) as backend:
        path.write_text(config(backend, port, admin, workers=1))
        async with (
            spawn(
                [sys.executable, "-m", "wsproxy"], "serve", "-c", str(path), stderr=tmp_path / "err"
            ) as proxy,
            aiohttp.ClientSession() as http,
        ):
            await proxy.wait_listening(admin)
            workers = Workers(proxy, port, admin, http)
            assert await workers.get_fresh() == "one /"
            scrape = await workers.scrape()
    assert scrape.value("wsproxy_http_requests_total", route="/", method="GET", code="200") == 1
    assert not (tmp_path / "absent").exists()


async def test_a_second_supervisor_on_the_same_port_is_refused(tmp_path: Path) -> None:
    """SO_REUSEPORT would let it share the port silently: it checks first."""
    async with (
        aiohttp_backend(named_app("one")) as backend,
        two_workers(tmp_path, backend) as workers,
    ):
        await refused_start(tmp_path, config(backend, workers.port, free_port()))
        assert len(await workers.pids()) == 2


async def test_a_stop_while_workers_start_is_a_clean_stop(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    path = tmp_path / "proxy.yaml"
    async with aiohttp_backend(named_app("one")) as backend:
        path.write_text(config(backend, port, admin, workers=4))
        async with spawn(
            [sys.executable, "-m", "wsproxy"], "serve", "-c", str(path), stderr=tmp_path / "err"
        ) as proxy:
            await eventually(lambda: _found(proxy, "[worker 0]: listening"), "worker 0")
            status = await proxy.stop(signal.SIGTERM, within=10)
            stderr = proxy.stderr()
    assert status == 0, stderr
    assert "Traceback" not in stderr
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_a_sigterm_to_a_starting_worker_alone_is_a_failed_start(tmp_path: Path) -> None:
    """Only a stop that reaches the supervisor too (Ctrl-C to the group) is a
    clean stop; a worker killed on its own before it was ready is an error."""
    port, admin = free_port(), free_port()
    path = tmp_path / "proxy.yaml"
    async with aiohttp_backend(named_app("one")) as backend:
        path.write_text(config(backend, port, admin))
        async with spawn(
            [sys.executable, "-m", "wsproxy"], "serve", "-c", str(path), stderr=tmp_path / "err"
        ) as proxy:
            children = Path(f"/proc/{proxy.process.pid}/task/{proxy.process.pid}/children")

            async def first_worker() -> int | None:
                pids = children.read_text().split()  # noqa: ASYNC240 (procfs: never blocks)
                return int(pids[0]) if pids else None

            # Found within milliseconds; a worker needs far longer to import
            # wsproxy and install its handlers, so SIGTERM's default kills it.
            worker = await eventually(first_worker, "worker 0 to be started")
            os.kill(worker, signal.SIGTERM)
            async with asyncio.timeout(10):
                status = await proxy.process.wait()
            stderr = proxy.stderr()
    assert status == 1, stderr
    assert f"worker 0 (pid {worker}) was killed by SIGTERM before it was ready" in stderr
    assert "Traceback" not in stderr
    assert "stopped while the workers were starting" not in stderr


async def test_a_reload_to_an_address_that_overlaps_the_current_one(tmp_path: Path) -> None:
    """127.0.0.1:P to 0.0.0.0:P: the supervisor's check that nobody else
    holds a new address must not trip over its own workers."""
    async with (
        aiohttp_backend(named_app("one")) as backend,
        two_workers(tmp_path, backend) as workers,
    ):
        path = tmp_path / "proxy.yaml"
        path.write_text(
            path.read_text().replace("host: 127.0.0.1\n    port", "host: 0.0.0.0\n    port")
        )
        workers.proxy.process.send_signal(signal.SIGHUP)
        for index in (0, 1):
            await eventually(
                lambda index=index: _found(workers.proxy, f"[worker {index}]: reloaded"),  # type: ignore[misc]
                f"worker {index} to reload",
            )
        await both_served(workers)
        scrape = await workers.scrape()
        stderr = workers.proxy.stderr()
    assert scrape.value("wsproxy_config_reloads_total", result="success") == 1
    assert "kept the configuration in force" not in stderr, stderr


async def test_a_reload_during_a_restart_reaches_the_new_worker(tmp_path: Path) -> None:
    """The worker being started gets no SIGHUP it cannot handle yet, and still
    ends up on the new configuration."""
    async with (
        aiohttp_backend(named_app("one")) as one,
        aiohttp_backend(named_app("two")) as two,
        two_workers(tmp_path, one) as workers,
    ):
        before = await workers.pids()
        path = tmp_path / "proxy.yaml"
        path.write_text(path.read_text().replace(f"127.0.0.1:{one}", f"127.0.0.1:{two}"))
        os.kill(before[1], signal.SIGKILL)
        await eventually(lambda: _found(workers.proxy, "was killed by SIGKILL"), "the death")
        workers.proxy.process.send_signal(signal.SIGHUP)

        async def back() -> dict[int, int] | None:
            pids = await workers.pids()
            return pids if len(pids) == 2 and pids[1] != before[1] else None

        await eventually(back, "worker 1 to be started again")
        await eventually(lambda: _found(workers.proxy, "[worker 0]: reloaded"), "the reload")
        answers = [await workers.get_fresh() for _ in range(CONNECTIONS)]
        lines = await workers.read_http_lines(CONNECTIONS)
        stderr = workers.proxy.stderr()
    assert set(answers) == {"two /"}
    assert {line["worker"] for line in lines} == {0, 1}
    assert "SIGHUP" not in stderr


async def test_a_configuration_copy_that_cannot_be_written_fails_the_reload(
    tmp_path: Path, runtime: Path
) -> None:
    async with (
        aiohttp_backend(named_app("one")) as backend,
        two_workers(tmp_path, backend) as workers,
    ):
        (supervisor_dir,) = os.listdir(runtime)
        os.mkdir(runtime / supervisor_dir / "config.yaml.new")  # where the copy is written
        workers.proxy.process.send_signal(signal.SIGHUP)
        await eventually(
            lambda: _found(workers.proxy, "kept the configuration in force"), "the failure"
        )
        assert await workers.get_fresh() == "one /"
        scrape = await workers.scrape()
    assert scrape.value("wsproxy_config_reloads_total", result="failure") == 1
    assert scrape.value("wsproxy_config_reloads_total", result="success") == 0


async def test_an_operators_multiprocess_directory_is_used_but_not_emptied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "prometheus"
    shared.mkdir()
    (shared / "counter_1.db").write_bytes(b"another instance's")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(shared))
    async with (
        aiohttp_backend(named_app("one")) as backend,
        two_workers(tmp_path, backend) as workers,
    ):
        await both_served(workers)
        scrape = await workers.scrape()
        (ours,) = (path for path in shared.iterdir() if path.is_dir())
        assert any(ours.glob("counter_*.db"))
        assert await workers.proxy.stop(signal.SIGTERM) == 0
    samples = scrape.series("wsproxy_http_requests_total", route="/", method="GET", code="200")
    assert list(samples.values()) == [CONNECTIONS]
    assert [path.name for path in shared.iterdir()] == ["counter_1.db"]
