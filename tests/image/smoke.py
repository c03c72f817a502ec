"""Smoke test of the container image: ``make image-test`` builds it and runs this.

No Docker engine is needed: the image runs under ``buildah run --isolation
chroot``, which shares this machine's network, so a backend on 127.0.0.1 and
the proxy's ports are reached directly.  What it checks, in order:

* the image's configuration as a Docker engine reads it (``buildah inspect``):
  uid 10001, the entrypoint, ``HEALTHCHECK``, ``STOPSIGNAL SIGTERM``, the
  exposed ports; and what its filesystem must not hold (pip, the wheels, a
  compiler, caches);
* the shipped ``/etc/wsproxy/config.yaml`` passes ``wsproxy check``;
* the entrypoint, run with that configuration pointed at a backend started
  here (ports on loopback, chosen free) and ``workers: 2``, with the root
  filesystem read-only and tmpfs mounts on ``/tmp`` and ``/run`` (see
  :func:`read_only`), as ``docker run --read-only --tmpfs /tmp`` would run
  it: the supervisor and both workers run as uid 10001, a write to /etc
  fails with EROFS, the workers' metrics files land in /tmp;
* ``/healthz`` and ``/readyz``, the image's own HEALTHCHECK command, a plain
  HTTP request and a WebSocket echo through the proxy, and ``/metrics``
  counting both;
* SIGTERM to the supervisor: an open WebSocket gets ``1001 Going Away`` and
  the container exits 0;
* afterwards, that nothing in the container's filesystem changed.

Not covered here: the entrypoint as PID 1 (chroot isolation shares the
host's PID namespace) and the HEALTHCHECK timer itself (no Docker engine).

It prints one line per check and exits 1 with the reason at the first failure.
The working container is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import WSMsgType, web
from prometheus_client.parser import text_string_to_metric_families

from tests.support.http_backends import aiohttp_backend
from tests.support.process import free_port

LOOPBACK = "127.0.0.1"
UID = 10001
#: The proxy runs with this many workers: their shared metrics files need a
#: writable TMPDIR, which is what a read-only root with a tmpfs on /tmp must allow.
WORKERS = 2
CONFIG = "/etc/wsproxy/config.yaml"
ENTRYPOINT = ["wsproxy", "serve", "-c", CONFIG]
#: How long the proxy may take to answer /readyz after it was started.
START_TIMEOUT = 30.0
#: How long after SIGTERM the process must have exited (the drain of one
#: WebSocket that answers its close at once, plus interpreter shutdown).
STOP_TIMEOUT = 15.0


class SmokeFailure(Exception):
    """A check failed; the message says which and what was seen."""


def ok(what: str) -> None:
    print(f"ok    {what}", flush=True)


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SmokeFailure(what)


class Buildah:
    """The buildah command line, with one storage driver for every call."""

    def __init__(self, storage_driver: str) -> None:
        self.base = ["buildah", "--storage-driver", storage_driver]

    def argv(self, *args: str) -> list[str]:
        return [*self.base, *args]

    def __call__(self, *args: str, timeout: float = 120.0) -> str:
        done = subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise SmokeFailure(
                f"buildah {' '.join(args)} exited with {done.returncode}:\n{done.stderr.strip()}"
            )
        return done.stdout.strip()


# -- the image's configuration ---------------------------------------------------------------


def check_image_config(buildah: Buildah, image: str) -> dict[str, Any]:
    inspected = json.loads(buildah("inspect", "--type", "image", image))
    config: dict[str, Any] = inspected["Docker"]["config"]
    check(config.get("User") == f"{UID}:{UID}", f"User is {UID}:{UID}, got {config.get('User')!r}")
    check(
        config.get("Entrypoint") == ENTRYPOINT,
        f"Entrypoint is {ENTRYPOINT}, got {config.get('Entrypoint')!r}",
    )
    check(not config.get("Cmd"), f"no Cmd after the entrypoint, got {config.get('Cmd')!r}")
    health = config.get("Healthcheck") or {}
    test = health.get("Test") or []
    check(
        test[:1] == ["CMD"] and "/healthz" in " ".join(test) + str(config.get("Env")),
        f"HEALTHCHECK runs a command on /healthz, got {health!r}"
        " (an OCI-format build drops HEALTHCHECK: build with --format docker)",
    )
    check(config.get("StopSignal") == "SIGTERM", f"StopSignal, got {config.get('StopSignal')!r}")
    ports = set(config.get("ExposedPorts") or {})
    check(ports == {"8080/tcp", "9090/tcp"}, f"EXPOSE 8080 9090, got {sorted(ports)}")
    ok(
        f"image config: User {config['User']}, Entrypoint {config['Entrypoint']},"
        f" HEALTHCHECK {test[1:3]}..., StopSignal SIGTERM, ports {sorted(ports)}"
    )
    return config


def check_image_files(root: Path) -> None:
    site = list((root / "opt/wsproxy/lib").glob("python3*/site-packages"))
    check(len(site) == 1, f"one site-packages under /opt/wsproxy/lib, got {site}")
    check((site[0] / "wsproxy").is_dir(), "wsproxy installed in /opt/wsproxy")
    unwanted = [
        "wheels",
        "root/.cache/pip",
        "usr/bin/gcc",
        "usr/bin/cc",
        "opt/wsproxy/bin/pip",
        *(str(p.relative_to(root)) for p in site[0].glob("pip")),
    ]
    present = [name for name in unwanted if (root / name).exists()]
    check(not present, f"nothing of the build left in the image, found {present}")
    config = root / CONFIG.lstrip("/")
    check(config.is_file(), f"{CONFIG} shipped")
    ok("image files: wsproxy in /opt/wsproxy; no pip, wheels, compiler or pip cache")


# -- a backend and the proxy's configuration -------------------------------------------------


def backend_app() -> web.Application:
    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                await ws.send_str(message.data)
            elif message.type is WSMsgType.BINARY:
                await ws.send_bytes(message.data)
        return ws

    async def hello(request: web.Request) -> web.Response:
        # What the backend saw, so the client can check what the proxy sent.
        return web.json_response(
            {
                "version": f"HTTP/{request.version.major}.{request.version.minor}",
                "path": request.path_qs,
                "x_forwarded_for": request.headers.get("X-Forwarded-For"),
            }
        )

    app = web.Application()
    app.router.add_get("/ws", echo)
    app.router.add_get("/{tail:.*}", hello)
    return app


def write_config(path: Path, shipped: Path, front: int, admin: int, backend: int) -> None:
    """The shipped configuration with its addresses moved to loopback and free ports."""
    config = yaml.safe_load(shipped.read_text())
    config["listen"] = [{**config["listen"][0], "host": LOOPBACK, "port": front}]
    config["admin"] = {**config["admin"], "host": LOOPBACK, "port": admin}
    (name,) = config["upstreams"]
    config["upstreams"][name]["servers"] = [f"{LOOPBACK}:{backend}"]
    config["workers"] = WORKERS
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-40:])


# -- the container ---------------------------------------------------------------------------


CONTAINER_PREFIX = "wsproxy-smoke-"


@contextlib.contextmanager
def working_container(buildah: Buildah, image: str) -> Iterator[tuple[str, Path]]:
    """A working container of ``image`` and its root filesystem; removed at the end."""
    remove_stale_containers(buildah)
    name = f"{CONTAINER_PREFIX}{os.getpid()}"
    buildah("from", "--pull=never", "--name", name, image)
    try:
        yield name, Path(buildah("mount", name))
    finally:
        remove_container(buildah, name)


def remove_container(buildah: Buildah, name: str) -> None:
    with contextlib.suppress(SmokeFailure, subprocess.TimeoutExpired):
        unmount_below(Path(buildah("mount", name)))
        buildah("rm", name)


def remove_stale_containers(buildah: Buildah) -> None:
    """Working containers of earlier runs that were killed before they could clean up.

    The container's name holds the pid of the run that made it; one whose
    run is gone is removed (with what that run had mounted on its root).
    """
    for name in buildah("containers", "--format", "{{.ContainerName}}").split():
        pid = name.removeprefix(CONTAINER_PREFIX)
        if (
            name.startswith(CONTAINER_PREFIX)
            and pid.isdigit()
            and not Path(f"/proc/{pid}").exists()
        ):
            print(f"note  removing the working container {name} of an earlier run", flush=True)
            kill_runs_of(name)
            remove_container(buildah, name)


def kill_runs_of(name: str) -> None:
    """SIGKILL every ``buildah run`` of container ``name`` and what it started."""
    runs = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if argv[0].endswith(b"buildah") and b"run" in argv and name.encode() in argv:
                runs.append(int(entry.name))
    victims = [pid for run in runs for pid in [run, *descendants(run)]]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in victims) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling under a deadline: SIGKILL takes effect asynchronously


def unmount_below(root: Path) -> None:
    """Unmount whatever is mounted on ``root`` or below it, deepest first."""
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for target in sorted((m for m in mounts if Path(m).is_relative_to(root)), reverse=True):
        subprocess.run(["umount", "-l", target], check=False)


@contextlib.contextmanager
def read_only(root: Path) -> Iterator[None]:
    """``root`` read-only with tmpfs on /tmp and /run while this lasts (``docker run --read-only``).

    ``buildah run`` has no --read-only, but with chroot isolation it runs the
    process in a bind mount of the container's root directory, submounts
    included: a read-only bind mount of that directory over itself makes every
    write outside the tmpfs mounts on top fail with EROFS.  /run is a tmpfs
    too (as under ``podman run --read-only``) because buildah creates and
    removes its /run/.containerenv there; the files it binds into /etc must
    exist beforehand.  /tmp is a tmpfs mounted here rather than with
    ``buildah run --mount type=tmpfs``, whose mount point buildah deletes
    afterwards (which fails on a read-only root and loses the exit status).
    """
    for name in ("etc/hosts", "etc/hostname", "etc/resolv.conf"):
        (root / name).touch()
    mounted: list[Path] = []
    try:
        for argv in (
            ["mount", "--bind", str(root), str(root)],
            ["mount", "-o", "remount,bind,ro", str(root)],
            ["mount", "-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", str(root / "tmp")],
            ["mount", "-t", "tmpfs", "-o", "mode=755,nosuid,nodev", "tmpfs", str(root / "run")],
        ):
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SmokeFailure(f"{' '.join(argv)}: {done.stderr.strip()}")
            if argv[1] != "-o":
                mounted.append(Path(argv[-1]))
        yield
        leftovers = sorted(p.name for p in (root / "run").iterdir())
        check(not leftovers, f"nothing left in /run after the container, found {leftovers}")
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", "-l", str(path)], check=False)


def run_argv(buildah: Buildah, name: str, config: Path, *command: str) -> list[str]:
    return buildah.argv(
        "run",
        "--isolation",
        "chroot",
        "--volume",
        f"{config}:{CONFIG}:ro",
        name,
        "--",
        *command,
    )


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def proxy_processes(runner_pid: int, root: Path) -> tuple[int, list[int]]:
    """The supervisor and the workers that ``buildah run`` (``runner_pid``) started.

    Every one must run as uid and gid 10001 (real, effective, saved and
    filesystem ids all), in the container's root directory.
    """
    found = []
    for pid in descendants(runner_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # buildah-chroot-exec (uid 10001 already) runs the entrypoint as its child.
        if argv[0].startswith(b"buildah"):
            continue
        if any(arg.endswith(b"/wsproxy") or arg == b"wsproxy" for arg in argv) and b"serve" in argv:
            found.append(pid)
    check(
        len(found) == WORKERS + 1,
        f"a supervisor and {WORKERS} workers under buildah run (pid {runner_pid}), got {found}",
    )
    image_dir = (root / "opt/wsproxy").stat()
    for pid in found:
        ids = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, values = line.partition(":")
            if key in ("Uid", "Gid"):
                ids[key] = {int(v) for v in values.split()}
        check(ids == {"Uid": {UID}, "Gid": {UID}}, f"pid {pid} runs as {UID}:{UID}, got {ids}")
        inside = Path(f"/proc/{pid}/root/opt/wsproxy").stat()
        check(
            (inside.st_dev, inside.st_ino) == (image_dir.st_dev, image_dir.st_ino),
            f"pid {pid} runs in the container's root {root}",
        )
    # The supervisor is the one whose parent is not a wsproxy process.
    parents = {
        pid: int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        for pid in found
    }
    (supervisor,) = [pid for pid in found if parents[pid] not in found]
    return supervisor, [pid for pid in found if pid != supervisor]


def multiprocess_files(pid: int) -> list[str]:
    """The prometheus-client multiprocess files under the container's /tmp."""
    tmp = Path(f"/proc/{pid}/root/tmp")
    return sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*.db"))


def changed_since(root: Path, since: float) -> list[str]:
    """Paths under ``root`` modified after ``since``."""
    changed = []
    for directory, dirnames, filenames in os.walk(root):
        here = Path(directory)
        for name in [*dirnames, *filenames]:
            path = here / name
            with contextlib.suppress(OSError):
                if path.lstat().st_mtime > since or path.lstat().st_ctime > since:
                    changed.append("/" + str(path.relative_to(root)))
    return changed


# -- the checks against the running proxy ----------------------------------------------------


async def wait_ready(
    http: aiohttp.ClientSession, admin: int, runner: asyncio.subprocess.Process, log: Path
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if runner.returncode is not None:
            raise SmokeFailure(
                f"the container exited with {runner.returncode} before it was ready:\n{tail(log)}"
            )
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"http://{LOOPBACK}:{admin}/readyz") as response:
                if response.status == 200:
                    return
        if time.monotonic() > deadline:
            raise SmokeFailure(f"/readyz not 200 within {START_TIMEOUT}s")
        await asyncio.sleep(0.1)  # polling a condition under a deadline


async def metric_value(http: aiohttp.ClientSession, admin: int, name: str, **labels: str) -> float:
    async with http.get(f"http://{LOOPBACK}:{admin}/metrics") as response:
        check(response.status == 200, f"/metrics answers 200, got {response.status}")
        text = await response.text()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def check_through_proxy(http: aiohttp.ClientSession, front: int, admin: int) -> None:
    for path in ("/healthz", "/readyz"):
        async with http.get(f"http://{LOOPBACK}:{admin}{path}") as response:
            check(response.status == 200, f"{path} answers 200, got {response.status}")
    ok("/healthz and /readyz answer 200 on the admin port")

    requests_before = await metric_value(
        http, admin, "wsproxy_http_requests_total", method="GET", code="200"
    )
    async with http.get(f"http://{LOOPBACK}:{front}/hello?x=1") as response:
        check(response.status == 200, f"GET /hello through the proxy: 200, got {response.status}")
        seen = await response.json()
    check(
        seen["version"] == "HTTP/1.1" and seen["x_forwarded_for"] == LOOPBACK,
        f"the backend saw HTTP/1.1 with X-Forwarded-For {LOOPBACK}, got {seen}",
    )
    ok(f"HTTP through the proxy: 200, the backend saw {seen['version']} and X-Forwarded-For")

    accepted_before = await metric_value(
        http, admin, "wsproxy_websocket_upgrades_total", result="accepted"
    )
    async with http.ws_connect(f"ws://{LOOPBACK}:{front}/ws") as ws:
        await ws.send_str("hello through the image")
        text = await ws.receive(timeout=5)
        await ws.send_bytes(b"\x00\x01\xfe\xff" * 1000)
        binary = await ws.receive(timeout=5)
    check(
        text.type is WSMsgType.TEXT and text.data == "hello through the image",
        f"WebSocket text echo, got {text!r}",
    )
    check(
        binary.type is WSMsgType.BINARY and binary.data == b"\x00\x01\xfe\xff" * 1000,
        f"WebSocket binary echo, got {binary.type!r}",
    )
    ok("WebSocket through the proxy: text and 4000-byte binary messages echoed")

    requests_after = await metric_value(
        http, admin, "wsproxy_http_requests_total", method="GET", code="200"
    )
    accepted_after = await metric_value(
        http, admin, "wsproxy_websocket_upgrades_total", result="accepted"
    )
    check(
        requests_after >= requests_before + 1,
        f"wsproxy_http_requests_total{{code=200}} moved, {requests_before} -> {requests_after}",
    )
    check(
        accepted_after >= accepted_before + 1,
        f"wsproxy_websocket_upgrades_total{{result=accepted}} moved,"
        f" {accepted_before} -> {accepted_after}",
    )
    ok(
        f"/metrics: wsproxy_http_requests_total{{code=200}} {requests_before:g} ->"
        f" {requests_after:g}, wsproxy_websocket_upgrades_total{{result=accepted}}"
        f" {accepted_before:g} -> {accepted_after:g}"
    )


async def check_healthcheck(
    buildah: Buildah, name: str, config: Path, image_config: dict[str, Any], admin: int
) -> None:
    """The image's own HEALTHCHECK command, run in the container as Docker would."""
    command = image_config["Healthcheck"]["Test"][1:]
    url = f"http://{LOOPBACK}:{admin}/healthz"
    argv = run_argv(buildah, name, config, *command)
    # buildah run takes -e before the container name.
    argv[argv.index(name) : argv.index(name)] = ["--env", f"WSPROXY_HEALTHZ_URL={url}"]
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(30):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        raise SmokeFailure("the HEALTHCHECK command did not finish within 30s") from None
    check(
        process.returncode == 0,
        f"the HEALTHCHECK command exits 0, got {process.returncode}: {output.decode()}",
    )
    ok(f"HEALTHCHECK command exits 0 (WSPROXY_HEALTHZ_URL={url})")


@contextlib.asynccontextmanager
async def started(argv: list[str], log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        runner = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd
        )
    finally:
        os.close(fd)
    try:
        yield runner
    finally:
        if runner.returncode is None:
            for pid in descendants(runner.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            runner.kill()
            await runner.wait()


def smoke(image: str, storage_driver: str) -> None:
    buildah = Buildah(storage_driver)
    image_config = check_image_config(buildah, image)
    size = buildah("images", "--format", "{{.Size}}", image)
    with (
        tempfile.TemporaryDirectory(prefix="wsproxy-image-") as tmp,
        working_container(buildah, image) as (name, root),
    ):
        check_image_files(root)
        shipped = root / CONFIG.lstrip("/")
        check_run = subprocess.run(
            buildah.argv(
                "run", "--isolation", "chroot", name, "--", "wsproxy", "check", "-c", CONFIG
            ),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        check(
            check_run.returncode == 0,
            f"wsproxy check -c {CONFIG} in the image exits 0, got {check_run.returncode}:\n"
            f"{check_run.stdout}{check_run.stderr}",
        )
        ok(f"the shipped {CONFIG} passes `wsproxy check` in the image")

        config, log = Path(tmp, "config.yaml"), Path(tmp, "wsproxy.log")
        since = time.time()
        with read_only(root):
            asyncio.run(run_proxy(buildah, name, root, shipped, config, log, image_config))
        changed = changed_since(root, since)
        check(not changed, f"nothing outside /tmp written, found {changed[:20]}")
        ok("nothing in the container's filesystem outside /tmp changed")
    print(f"image {image} ({size}): every check passed", flush=True)


async def run_proxy(
    buildah: Buildah,
    name: str,
    root: Path,
    shipped: Path,
    config: Path,
    log: Path,
    image_config: dict[str, Any],
) -> None:
    front, admin = free_port(), free_port()
    async with aiohttp_backend(backend_app()) as backend:
        write_config(config, shipped, front, admin, backend)
        argv = run_argv(buildah, name, config, *image_config["Entrypoint"])
        try:
            await run_entrypoint(buildah, name, root, config, log, argv, image_config, front, admin)
        except SmokeFailure as exc:
            raise SmokeFailure(
                f"{exc}\n--- the container's output, last lines:\n{tail(log)}"
            ) from None


async def run_entrypoint(
    buildah: Buildah,
    name: str,
    root: Path,
    config: Path,
    log: Path,
    argv: list[str],
    image_config: dict[str, Any],
    front: int,
    admin: int,
) -> None:
    started_at = time.monotonic()
    async with (
        started(argv, log) as runner,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
    ):
        await wait_ready(http, admin, runner, log)
        proxy, workers = proxy_processes(runner.pid, root)
        ok(
            f"the entrypoint started in {time.monotonic() - started_at:.1f}s: supervisor pid"
            f" {proxy}, workers {workers}, all uid/gid {UID}, root read-only, /tmp a tmpfs"
        )
        await check_read_only(buildah, name, config)
        await check_through_proxy(http, front, admin)
        files = multiprocess_files(proxy)
        check(bool(files), "prometheus-client's multiprocess files in /tmp (TMPDIR)")
        ok(
            f"the workers' metrics files are in the tmpfs: /tmp/{files[0]}"
            f" and {len(files) - 1} more"
        )
        await check_healthcheck(buildah, name, config, image_config, admin)

        # The drain: an open WebSocket gets 1001, then the process exits 0.
        async with http.ws_connect(f"ws://{LOOPBACK}:{front}/ws") as ws:
            await ws.send_str("before SIGTERM")
            await ws.receive(timeout=5)
            os.kill(proxy, signal.SIGTERM)
            stopped_at = time.monotonic()
            close = await ws.receive(timeout=STOP_TIMEOUT)
        check(
            close.type in (WSMsgType.CLOSE, WSMsgType.CLOSED) and ws.close_code == 1001,
            f"an open WebSocket gets 1001 Going Away on SIGTERM, got {close!r},"
            f" close code {ws.close_code}",
        )
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                status = await runner.wait()
        except TimeoutError:
            raise SmokeFailure(f"still running {STOP_TIMEOUT}s after SIGTERM") from None
        check(
            status == 0,
            f"exit status 0 after SIGTERM, got {status}",
        )
        ok(
            f"SIGTERM: the open WebSocket got 1001, exit status 0"
            f" after {time.monotonic() - stopped_at:.1f}s"
        )


async def check_read_only(buildah: Buildah, name: str, config: Path) -> None:
    """As uid 10001 in the running container: / is read-only, /tmp writable."""
    probe = (
        "import os, tempfile\n"
        "try:\n"
        "    open('/etc/wsproxy/probe', 'w')\n"
        "except OSError as exc:\n"
        "    print(exc.errno)\n"
        "with tempfile.NamedTemporaryFile() as f:\n"
        "    print(os.path.dirname(f.name))\n"
    )
    process = await asyncio.create_subprocess_exec(
        *run_argv(buildah, name, config, "python3", "-c", probe),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    async with asyncio.timeout(30):
        output, _ = await process.communicate()
    lines = output.decode().split()
    check(
        process.returncode == 0 and lines == ["30", "/tmp"],
        f"in the container, a write to /etc fails with EROFS (30) and $TMPDIR is /tmp,"
        f" got status {process.returncode}: {output.decode()!r}",
    )
    ok("in the container: writing to /etc fails (EROFS), a temporary file in /tmp works")


def terminated(signum: int, _frame: object) -> None:
    print(f"FAIL  stopped by signal {signum}; cleaning up", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="localhost/wsproxy:test")
    parser.add_argument("--storage-driver", default=os.environ.get("STORAGE_DRIVER", "vfs"))
    args = parser.parse_args()
    # SIGTERM (a CI timeout) unwinds like Ctrl-C: containers and mounts are removed.
    signal.signal(signal.SIGTERM, terminated)
    if os.geteuid() != 0 or shutil.which("buildah") is None:
        print("FAIL  the image smoke test needs root (mount, buildah run) and buildah", flush=True)
        return 1
    started_at = time.monotonic()
    try:
        smoke(args.image, args.storage_driver)
    except SmokeFailure as exc:
        print(f"FAIL  {exc}", file=sys.stderr, flush=True)
        return 1
    print(f"image smoke test: passed in {time.monotonic() - started_at:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
