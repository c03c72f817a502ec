"""Process and port helpers shared by the benchmarks (no third-party imports).

Kept apart from targets.py, which needs picows through backend.py, so that
bench/observer.py runs with the runtime dependencies alone.  The tests take
their port picker from here too (tests/support/process.py imports
``bench.procs.free_port``): one picker, so no two calls in a process name
one port.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") / 1024


def raise_file_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


#: Every port free_port() returned in this process.
_GIVEN: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, never one this process was given before.

    Once the probing socket is closed the kernel may hand the same port to the
    next bind: two calls for one configuration (a listener and its admin) then
    name one address, and wsproxy refuses the file with exit status 2.
    """
    for _ in range(1000):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port
    raise RuntimeError(f"no loopback port left that was not handed out ({len(_GIVEN)} were)")


def wait_port(port: int, process: subprocess.Popen[bytes], name: str, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with status {process.returncode} at start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on port {port} within {timeout}s")


def observer_config(port: int, backend: int, observe: bool, extra: str = "") -> str:
    """A wsproxy configuration in front of one backend, frame observer on or off."""
    return f"""\
listen:
  - host: 127.0.0.1
    port: {port}
admin:
  host: 127.0.0.1
  port: {free_port()}
upstreams:
  echo:
    servers: ["127.0.0.1:{backend}"]
routes:
  - path_prefix: /
    upstream: echo
proxy:
  observe_frames: {"true" if observe else "false"}
{extra}"""


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (nginx's worker; wsproxy's workers
    under their supervisor), ``pid`` first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    pids = [pid]
    for each in pids:  # grows while it is walked: breadth first
        pids.extend(children.get(each, ()))
    return pids


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and the processes below it, to the nanosecond
    where the kernel keeps scheduler statistics (``/proc/PID/task/*/schedstat``:
    a thread's time on a CPU), else in clock ticks (10 ms: a tenth of a
    second's work could read as nothing)."""
    total = 0.0
    for each in process_tree(pid):
        try:
            tasks = list(Path(f"/proc/{each}/task").iterdir())
            total += sum(int((task / "schedstat").read_text().split()[0]) for task in tasks) / 1e9
            continue
        except (OSError, ValueError, IndexError):
            pass
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def rss_kb(pid: int) -> float:
    total = 0.0
    for each in process_tree(pid):
        try:
            pages = int(Path(f"/proc/{each}/statm").read_text().split()[1])
        except OSError:
            continue
        total += pages * PAGE_KB
    return total
