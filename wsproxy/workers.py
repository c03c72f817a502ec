"""Several worker processes on the same listeners, and the supervisor that runs them.

Theory of operation
-------------------
``workers: N`` (or ``auto``: :func:`available_cpus`) makes ``wsproxy serve``
a *supervisor*.  It starts N copies of itself, each a whole proxy
(:class:`wsproxy.server.ProxyServer` in a :class:`WorkerRole`):

* **Listeners.**  Each worker binds every listen address itself with
  ``SO_REUSEPORT``; the kernel spreads new connections over the workers by a
  hash of the connection's addresses.  A connection, and the WebSocket
  session on it, stays with the worker that accepted it.
* **Configuration.**  The supervisor parses the operator's file and writes
  the bytes it parsed to its runtime directory; workers read that copy.  A
  worker restarted later gets the configuration in force, even if the file
  has been edited (and broken) since.  On SIGHUP the supervisor checks the
  file, counts the reload (once, not once per worker), writes the new copy
  and passes SIGHUP on; an invalid file never reaches a worker.
* **Metrics.**  prometheus-client's multiprocess mode: the directory is in
  ``PROMETHEUS_MULTIPROC_DIR`` before any process imports prometheus-client
  (the supervisor sets it before its own first import; workers inherit it).
  Gauges are summed over live workers (``livesum``; servers up: ``livemin``).
  The supervisor owns the admin listener; its ``/metrics`` first asks each
  worker to publish the counts it keeps in plain integers (wsproxy.metrics,
  :class:`~wsproxy.metrics.Publisher`), then reads the files.
* **Admin.**  ``/readyz`` is 200 only when every worker runs and answers
  ready; ``/status.json`` merges every worker's.  Workers answer the
  supervisor on Unix sockets in the runtime directory.
* **Signals.**  SIGTERM/SIGINT: ``/readyz`` turns 503 and every worker drains
  (``1001`` to each WebSocket); the supervisor exits once they all have.
* **A worker that dies** is logged, its live-gauge files are removed
  (``mark_process_dead``: its sessions no longer count as active; its
  counters stay, so totals never go down) and it is started again: at once
  the first time, then with a delay that doubles (up to
  ``RESTART_DELAY_MAX``) while it keeps dying within ``STABLE_AFTER`` of its
  start.
* **Lifelines.**  Each worker holds one end of a socket pair whose other end
  is the supervisor's: a worker writes ``ready`` on it once it listens, and
  drains when it reads end of file, so no worker outlives a supervisor that
  was killed.

This module imports prometheus-client, aiohttp and the server only inside
:func:`supervise`, after the multiprocess directory is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsproxy.config import Config, ConfigError, ListenSettings, Workers, read_config

if TYPE_CHECKING:
    from aiohttp import web
    from prometheus_client import Counter

log = logging.getLogger("wsproxy.supervisor")

#: How a supervisor tells a process it starts that it is a worker (JSON).
WORKER_ENV = "WSPROXY_WORKER"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: A worker must listen within this long of its start.
READY_TIMEOUT = 30.0
#: Restart delays for a worker that keeps dying soon after it started.
RESTART_DELAY_FIRST = 0.5
RESTART_DELAY_MAX = 30.0
#: A worker that lived this long died of something new: restarted at once.
STABLE_AFTER = 10.0
#: How long the supervisor waits for a worker's admin answer (under a
#: Kubernetes probe's default 1 s timeout).
ASK_TIMEOUT = 0.8
#: A worker that closed its lifeline before it was ready has this long to
#: exit by itself (and say why) before it is killed.
EXIT_WAIT = 5.0
#: The longest path of a Unix socket (sun_path holds 108 bytes with its NUL).
UNIX_PATH_MAX = 107
#: After the grace period, how long a draining worker has before SIGKILL.
KILL_AFTER = 5.0
#: A worker that ended by SIGTERM or SIGINT while it started: how long the
#: supervisor waits for the same signal (a stop to the whole group) before it
#: calls the start a failure.
STOP_SIGNAL_WAIT = 0.5


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """This process is one worker of several, started by a supervisor."""

    index: int
    #: Where the supervisor reads /readyz and /status.json and asks for
    #: the metrics to be published (a Unix socket).
    control_path: str
    #: The operator's configuration file, named in messages (the worker
    #: reads the supervisor's copy of the configuration in force).
    config_name: str


def worker_from_env() -> tuple[WorkerRole, socket.socket] | None:
    """This process's role and lifeline when a supervisor started it."""
    text = os.environ.get(WORKER_ENV)
    if not text:
        return None
    spec = json.loads(text)
    channel = socket.socket(fileno=int(spec["channel"]))
    role = WorkerRole(int(spec["index"]), str(spec["control"]), str(spec["config_name"]))
    return role, channel


# --------------------------------------------------------------------------
# How many: ``workers: auto``
# --------------------------------------------------------------------------


def quota_cpus(
    cpu_max: str | None = None, cfs_quota: str | None = None, cfs_period: str | None = None
) -> int | None:
    """The CPUs a cgroup's quota allows, rounded up; None without a quota.

    cgroup v2 ``cpu.max`` is ``"QUOTA PERIOD"`` or ``"max PERIOD"``; v1 has
    ``cpu.cfs_quota_us`` (``-1``: none) and ``cpu.cfs_period_us``.
    """
    try:
        if cpu_max is not None:
            quota, _, period = cpu_max.strip().partition(" ")
            if quota == "max":
                return None
            return max(1, math.ceil(int(quota) / int(period or "100000")))
        if cfs_quota is not None and cfs_period is not None:
            value = int(cfs_quota)
            if value <= 0:
                return None
            return max(1, math.ceil(value / int(cfs_period)))
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _cgroup_dirs(proc_cgroup: str, root: Path) -> Iterable[Path]:
    """The CPU controller's directories of this process's cgroup and of
    every cgroup above it (a parent's quota limits its children too)."""
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            bases = [root]  # v2, unified
        elif "cpu" in controllers.split(","):
            bases = [root / "cpu", root / "cpu,cpuacct", root / controllers]
        else:
            continue
        relative = Path(path.lstrip("/"))
        for base in bases:
            here = base / relative
            while True:
                yield here
                if here == base:
                    break
                here = here.parent


def available_cpus(root: Path = Path("/sys/fs/cgroup"), proc: Path | None = None) -> int:
    """The CPUs this process may use: its affinity, capped by the CPU quota
    of its cgroup (a container's ``--cpus``, a pod's ``limits.cpu``)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    proc_cgroup = _read(proc or Path("/proc/self/cgroup")) or ""
    for directory in _cgroup_dirs(proc_cgroup, root):
        quota = quota_cpus(_read(directory / "cpu.max")) or quota_cpus(
            None, _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
        )
        if quota is not None:
            cpus = min(cpus, quota)
    return max(1, cpus)


def worker_count(setting: Workers) -> int:
    return available_cpus() if setting == "auto" else setting


# --------------------------------------------------------------------------
# The supervisor
# --------------------------------------------------------------------------


class WorkerStartError(OSError):
    """A worker did not start (the reason is in its own log lines)."""

    def __init__(self, message: str, returncode: int | None = None) -> None:
        super().__init__(message)
        self.returncode = returncode

    @property
    def stopped(self) -> bool:
        """It ended by SIGINT or SIGTERM: a stop sent to the whole process
        group (Ctrl-C, systemd) before its handlers were in place."""
        return self.returncode in (-signal.SIGINT, -signal.SIGTERM)


@dataclass(eq=False)
class Worker:
    """One worker process, as the supervisor sees it."""

    index: int
    control_path: str
    process: asyncio.subprocess.Process | None = None
    #: The supervisor's end of the lifeline (see the module docstring).
    channel: socket.socket | None = None
    ready: bool = False
    started: float = 0.0  # time.monotonic()
    restarts: int = 0
    delay: float = 0.0
    #: The configuration copy it read (Supervisor.generation when started).
    generation: int = 0
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


def _exit_reason(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


class Supervisor:
    def __init__(self, config: Config, path: str, data: bytes, count: int) -> None:
        self.config = config
        self.path = path
        self.count = count
        self.draining = False
        self._stopping = False
        #: Counts the configuration copies written (reloads).
        self.generation = 0
        #: Removed at exit when the supervisor made them.
        self._own: list[str] = []
        self.runtime = self._runtime_dir()
        try:
            self.metrics_dir = self._metrics_dir()
            self.snapshot = os.path.join(self.runtime, "config.yaml")
            self._write_snapshot(data)
            self.workers = [
                Worker(index, os.path.join(self.runtime, f"worker-{index}.sock"))
                for index in range(count)
            ]
            longest = self.workers[-1].control_path
            if len(os.fsencode(longest)) > UNIX_PATH_MAX:
                raise OSError(
                    f"workers: the workers' sockets would be {longest!r}, longer than a Unix "
                    f"socket path may be ({UNIX_PATH_MAX} bytes): set TMPDIR to a shorter "
                    f"directory"
                )
        except BaseException:
            self.cleanup()
            raise
        self._admin: web.AppRunner | None = None
        self._admin_site: web.BaseSite | None = None
        self._reloads: Counter | None = None
        self._restarts: Counter | None = None

    # --- files --------------------------------------------------------------

    def _runtime_dir(self) -> str:
        try:
            path = tempfile.mkdtemp(prefix="wsproxy-")
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"workers: {self.count} needs a writable directory for the workers' shared "
                f"metrics and sockets (TMPDIR, default /tmp; in a container with a "
                f"read-only root, a tmpfs there): {exc.strerror or exc}",
            ) from None
        self._own.append(path)
        return path

    def _metrics_dir(self) -> str:
        """A new, empty directory of our own: in the operator's
        ``PROMETHEUS_MULTIPROC_DIR`` when set (a volume chosen for it), else
        in the runtime directory.  Never a shared one, never emptied: another
        instance's files there stay its own."""
        given = os.environ.get(MULTIPROC_ENV)
        if not given:
            path = os.path.join(self.runtime, "metrics")
            os.mkdir(path)
            return path
        try:
            os.makedirs(given, exist_ok=True)
            path = tempfile.mkdtemp(prefix="wsproxy-metrics-", dir=given)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"{MULTIPROC_ENV}={given}: cannot make the workers' metrics directory there: "
                f"{exc.strerror or exc}",
            ) from None
        self._own.append(path)
        return path

    def _write_snapshot(self, data: bytes) -> None:
        temporary = self.snapshot + ".new"
        with open(temporary, "wb") as stream:
            stream.write(data)
        os.replace(temporary, self.snapshot)
        self.generation += 1

    def cleanup(self) -> None:
        for path in reversed(self._own):
            shutil.rmtree(path, ignore_errors=True)
        self._own.clear()

    # --- workers ------------------------------------------------------------

    async def _spawn(self, worker: Worker) -> None:
        """Start ``worker`` and wait until it listens (WorkerStartError if not)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(worker.control_path)
        ours, theirs = socket.socketpair()
        spec = {
            "index": worker.index,
            "channel": theirs.fileno(),
            "control": worker.control_path,
            "config_name": self.path,
        }
        env = dict(os.environ, **{WORKER_ENV: json.dumps(spec), MULTIPROC_ENV: self.metrics_dir})
        worker.generation = self.generation
        try:
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "wsproxy",
                "serve",
                "-c",
                self.snapshot,
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env=env,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        process = worker.process
        worker.channel = ours
        worker.started = time.monotonic()
        ours.setblocking(False)
        loop = asyncio.get_running_loop()
        said = b""
        timed_out = False
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                said = await loop.sock_recv(ours, 64)
            if not said:  # it closed its end: it is exiting, let it say why
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(process.wait()), EXIT_WAIT)
        except TimeoutError:
            timed_out = True
        except BaseException:  # the supervisor stops meanwhile: no orphan
            await self._kill(worker)
            raise
        if not said.startswith(b"ready"):
            returncode = process.returncode
            await self._kill(worker)
            why = (
                f"was not ready within {READY_TIMEOUT:g}s"
                if timed_out
                else f"{_exit_reason(returncode)} before it was ready (its messages are above)"
                if returncode is not None
                else "closed its lifeline before it was ready and did not exit"
            )
            raise WorkerStartError(f"worker {worker.index} (pid {process.pid}) {why}", returncode)
        worker.ready = True
        if worker.generation != self.generation:
            # A reload came while it started, from a copy it may not have read.
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGHUP)
        worker.watcher = asyncio.create_task(
            self._watch(worker), name=f"wsproxy-worker-{worker.index}"
        )

    async def _kill(self, worker: Worker) -> None:
        process = worker.process
        assert process is not None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await process.wait()
        self._forget(worker)

    def _forget(self, worker: Worker) -> None:
        """A worker's process ended: its live gauges go, its socket too."""
        from prometheus_client import multiprocess

        worker.ready = False
        if worker.channel is not None:
            worker.channel.close()
            worker.channel = None
        if worker.pid is not None:
            try:
                multiprocess.mark_process_dead(worker.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
            except OSError as exc:  # never the end of the watcher that restarts it
                log.error("worker %d: could not remove its live gauges: %s", worker.index, exc)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(worker.control_path)

    async def _watch(self, worker: Worker) -> None:
        """Restart ``worker`` whenever it ends, until the supervisor stops."""
        while True:
            process = worker.process
            assert process is not None
            returncode = await process.wait()
            lived = time.monotonic() - worker.started
            self._forget(worker)
            if self._stopping:
                return
            if lived >= STABLE_AFTER or not worker.restarts:
                worker.delay = 0.0  # at once: it ran well, or this is its first death
            else:
                worker.delay = min(max(worker.delay * 2, RESTART_DELAY_FIRST), RESTART_DELAY_MAX)
            log.warning(
                "worker %d (pid %d) %s after %.1fs; starting it again%s",
                worker.index,
                process.pid,
                _exit_reason(returncode),
                lived,
                f" in {worker.delay:g}s" if worker.delay else "",
            )
            worker.restarts += 1
            if self._restarts is not None:
                self._restarts.inc()
            while not self._stopping:
                if worker.delay:
                    await asyncio.sleep(worker.delay)  # the restart delay itself
                if self._stopping:
                    return
                try:
                    await self._spawn(worker)  # which starts the worker's next watcher
                except Exception as exc:  # never a silent end of restarts
                    worker.delay = min(
                        max(worker.delay * 2, RESTART_DELAY_FIRST), RESTART_DELAY_MAX
                    )
                    log.error("%s; trying again in %gs", exc, worker.delay)
                    continue
                log.info("worker %d started again (pid %d)", worker.index, worker.pid)
                return

    # --- admin --------------------------------------------------------------

    async def _ask(self, worker: Worker, method: str, path: str) -> tuple[int, Any] | None:
        """One admin request to a worker: (status, text or JSON), or None."""
        from aiohttp import ClientError, ClientSession, ClientTimeout, UnixConnector

        if not worker.ready:
            return None
        try:
            async with (
                ClientSession(
                    connector=UnixConnector(worker.control_path),
                    timeout=ClientTimeout(total=ASK_TIMEOUT),
                ) as session,
                session.request(method, f"http://worker{path}") as response,
            ):
                if response.content_type == "application/json":
                    return response.status, await response.json()
                return response.status, await response.text()
        except (ClientError, OSError, TimeoutError) as exc:
            log.debug("worker %d did not answer %s %s: %s", worker.index, method, path, exc)
            return None

    async def _ask_all(self, method: str, path: str) -> list[tuple[int, Any] | None]:
        return list(await asyncio.gather(*(self._ask(w, method, path) for w in self.workers)))

    async def publish(self) -> None:
        await self._ask_all("POST", "/publish")

    async def ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        for worker, answer in zip(self.workers, await self._ask_all("GET", "/readyz"), strict=True):
            if not worker.ready:
                return False, f"worker {worker.index} is starting"
            if answer is None:
                return False, f"worker {worker.index} does not answer"
            status, text = answer
            if status != 200:
                return False, f"worker {worker.index}: {str(text).strip()}"
        return True, "ready"

    async def status(self, listed: int) -> dict[str, object]:
        """Every worker's /status.json in one (sessions and early closes say
        their worker; a server is down when any worker holds it out). Each
        worker lists its ``listed`` newest and oldest sessions; of those, the
        ``listed`` newest and oldest overall are kept."""
        from wsproxy.observe import RECENT_EARLY_CLOSES
        from wsproxy.status import merge_timelines, merge_upgrades

        sessions: list[dict[str, Any]] = []
        busiest: list[dict[str, Any]] = []
        upgrades: list[dict[str, dict[str, int]]] = []
        timelines: list[dict[str, Any]] = []
        early: list[dict[str, Any]] = []
        upstreams: dict[str, dict[str, str]] = {}
        workers: list[dict[str, object]] = []
        open_sessions = 0
        by_route: dict[str, int] = {}
        for worker, answer in zip(
            self.workers, await self._ask_all("GET", f"/status.json?sessions={listed}"), strict=True
        ):
            workers.append(
                {
                    "index": worker.index,
                    "pid": worker.pid,
                    "ready": worker.ready and answer is not None,
                    "restarts": worker.restarts,
                    "age_seconds": round(time.monotonic() - worker.started, 3)
                    if worker.ready
                    else None,
                }
            )
            if answer is None or not isinstance(answer[1], dict):
                continue
            status = answer[1]
            open_sessions += int(status.get("open_sessions", 0))
            for route, count in status.get("open_by_route", {}).items():
                by_route[route] = by_route.get(route, 0) + int(count)
            for session in status.get("active_sessions", []):
                sessions.append({"worker": worker.index, **session})
            for session in status.get("busiest_sessions", []):
                busiest.append({"worker": worker.index, **session})
            for close in status.get("recent_early_closes", []):
                early.append({"worker": worker.index, **close})
            upgrades.append(status.get("upgrades", {}))
            timelines.append(status.get("closes", {}))
            for name, servers in status.get("upstreams", {}).items():
                merged = upstreams.setdefault(name, {})
                for server, state in servers.items():
                    merged[server] = "down" if "down" in (state, merged.get(server)) else state
        early.sort(key=lambda close: str(close.get("at", "")), reverse=True)
        sessions.sort(key=lambda session: float(session.get("age_seconds", 0)))
        if len(sessions) > 2 * listed:
            sessions = sessions[:listed] + sessions[-listed:] if listed else []
        # Each worker's busiest since its own last fold: the overall most.
        busiest.sort(key=lambda session: int(session.get("bytes_moved", 0)), reverse=True)
        return {
            "draining": self.draining,
            "workers": workers,
            "open_sessions": open_sessions,
            "open_by_route": by_route,
            "sessions_listed_per_end": listed,
            "active_sessions": sessions,
            "busiest_sessions": busiest[:listed],
            "recent_early_closes": early[:RECENT_EARLY_CLOSES],
            "upstreams": upstreams,
            "upgrades": merge_upgrades(upgrades),
            "closes": merge_timelines(timelines),
        }

    async def _admin_listen(self, host: str, port: int) -> web.BaseSite:
        from aiohttp import web

        assert self._admin is not None
        site = web.TCPSite(self._admin, host, port, reuse_address=True)
        await site.start()
        return site

    # --- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        from aiohttp import web

        from wsproxy.admin import supervisor_app
        from wsproxy.metrics import reload_counter, restart_counter

        self._reloads = reload_counter(None)
        self._restarts = restart_counter(None)
        self._admin = web.AppRunner(supervisor_app(self), access_log=None, handle_signals=False)
        await self._admin.setup()
        self._admin_site = await self._admin_listen(self.config.admin.host, self.config.admin.port)
        self._check_free(self.config.listen)
        # One at a time: a worker that cannot start (a port in use) fails
        # alone, with its own message, before the next one tries.
        for worker in self.workers:
            await self._spawn(worker)

    @staticmethod
    def _check_free(listens: Iterable[ListenSettings]) -> None:
        """OSError when another program listens on one of these addresses.

        Workers bind with SO_REUSEPORT, which would share a port with any
        other program that set it too (a second supervisor on the same
        port, say); a socket bound without it fails where anyone listens.
        """
        from wsproxy.listeners import bind

        for listen in listens:
            for sock in bind(listen.host, listen.port, listen=False):
                sock.close()

    @property
    def admin_host(self) -> str:
        return self.config.admin.host

    @property
    def admin_address(self) -> tuple[str, int]:
        assert self._admin is not None
        address = self._admin.addresses[0]
        return str(address[0]), int(address[1])

    def _signal_workers(self, signum: int) -> int:
        """Signal the ready workers, and say how many: one still starting
        has no handlers yet (SIGHUP would kill it); it is sent what it missed
        when ready (Supervisor._spawn)."""
        sent = 0
        for worker in self.workers:
            if worker.running and worker.ready:
                assert worker.process is not None
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signum)
                    sent += 1
        return sent

    async def reload(self) -> bool:
        """SIGHUP: check the file, then pass it to every worker."""
        assert self._reloads is not None
        from wsproxy.tls import load as load_tls

        try:
            config, data = read_config(self.path)
            # Each worker reads the certificates again; one that does not
            # load here would fail in every worker.
            load_tls(config)
        except ConfigError as exc:
            for issue in exc.issues:
                log.error("reload: %s", issue)
            log.error(
                "reload: %s has %d error(s); kept the configuration in force",
                self.path,
                len(exc.issues),
            )
            self._reloads.labels("failure").inc()
            return False
        site = None
        try:
            # What the workers could not bind would leave them in two
            # configurations: found out here first.
            # A port our workers hold already fails this check whatever the
            # address (0.0.0.0:P covers 127.0.0.1:P; "localhost" is
            # 127.0.0.1): the workers, which share it by SO_REUSEPORT, bind
            # those themselves.
            ours = {listen.port for listen in self.config.listen}
            self._check_free(listen for listen in config.listen if listen.port not in ours)
            if config.admin != self.config.admin:
                site = await self._admin_listen(config.admin.host, config.admin.port)
            self._write_snapshot(data)
        except OSError as exc:
            if site is not None:
                await site.stop()
            log.error("reload: %s; kept the configuration in force", exc)
            self._reloads.labels("failure").inc()
            return False
        if site is not None:
            old, self._admin_site = self._admin_site, site
            if old is not None:
                await old.stop()
        if worker_count(config.workers) != self.count:
            log.warning(
                "reload: workers: %s takes effect at the next start (running %d)",
                config.workers,
                self.count,
            )
        self.config = config
        self._reloads.labels("success").inc()
        sent = self._signal_workers(signal.SIGHUP)
        starting = self.count - sent
        log.info(
            "reloaded %s: passed to %d worker(s)%s",
            self.path,
            sent,
            f"; {starting} more read it when they start" if starting else "",
        )
        return True

    async def stop(self) -> None:
        """Every worker drains; the supervisor waits for them all."""
        self.draining = True
        self._stopping = True
        # First no more (re)starts: a watcher cancelled while it starts a
        # worker kills that one; then every process left is one to drain.
        watchers = [w.watcher for w in self.workers if w.watcher is not None]
        for watcher in watchers:
            watcher.cancel()
        for result in await asyncio.gather(*watchers, return_exceptions=True):
            if isinstance(result, Exception):
                log.error("a worker's watcher failed: %r", result)
        processes = [w.process for w in self.workers if w.running and w.process is not None]
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        waits = [asyncio.ensure_future(p.wait()) for p in processes]
        if waits:
            _done, pending = await asyncio.wait(
                waits, timeout=self.config.shutdown.grace_period + KILL_AFTER
            )
            if pending:
                for process in processes:
                    if process.returncode is None:
                        log.error("worker pid %d is still running; killing it", process.pid)
                        with contextlib.suppress(ProcessLookupError):
                            process.kill()
                await asyncio.wait(waits)
        for worker in self.workers:
            self._forget(worker)
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None


async def supervise(config: Config, path: str, data: bytes, count: int) -> None:
    """Run ``count`` workers on ``config`` until SIGINT or SIGTERM; SIGHUP reloads."""
    supervisor = Supervisor(config, path, data, count)
    # Before anything imports prometheus-client: it picks its storage then.
    os.environ[MULTIPROC_ENV] = supervisor.metrics_dir
    from wsproxy.server import reload_signal, stop_signals

    try:
        with stop_signals() as stop, reload_signal() as reload:
            try:
                if not await _started(supervisor, stop):
                    log.info("stopped while the workers were starting")
                    return
                log.info(
                    "%d workers on %s (pids %s); admin on http://%s:%d",
                    count,
                    ", ".join(f"http://{listen}" for listen in config.listen),
                    ", ".join(str(w.pid) for w in supervisor.workers),
                    *supervisor.admin_address,
                )
                await _until(stop, reload, supervisor.reload)
                log.info("stopping: every worker drains")
            finally:
                await supervisor.stop()
    finally:
        supervisor.cleanup()


async def _started(supervisor: Supervisor, stop: asyncio.Event) -> bool:
    """Start every worker; False when a stop came first (SIGTERM, or a
    Ctrl-C that also reached a worker before its handlers were in place)."""
    starting = asyncio.create_task(supervisor.start(), name="wsproxy-supervisor-start")
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not starting.done():
        starting.cancel()  # the worker it was starting is killed (Supervisor._spawn)
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await starting
        return False
    try:
        starting.result()
    except WorkerStartError as exc:
        if stop.is_set():
            return False
        if exc.stopped:
            # A Ctrl-C or a stop to the process group reaches the
            # supervisor too, at about the same time; a SIGTERM that only
            # the worker got is a failure to start like any other.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STOP_SIGNAL_WAIT)
            if stop.is_set():
                return False
        raise
    return not stop.is_set()


async def _until(
    stop: asyncio.Event, reload: asyncio.Event, on_reload: Callable[[], Awaitable[bool]]
) -> None:
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            reloading = asyncio.ensure_future(reload.wait())
            try:
                await asyncio.wait([stopping, reloading], return_when=asyncio.FIRST_COMPLETED)
            finally:
                reloading.cancel()
            if reload.is_set() and not stop.is_set():
                reload.clear()
                await on_reload()
    finally:
        stopping.cancel()
