"""The things being measured: a direct connection and four proxies, all on loopback.

Every target fronts the same two backends: the picows WebSocket echo
(``/ws``) and a static nginx origin for plain HTTP (``/``). Each proxy runs
with one worker/thread and the configuration its documentation recommends for
WebSockets; wsproxy runs with its shipped defaults (JSON access log to stdout,
frame observer on). One more target, ``wsproxy-2w``, is the same wsproxy with
``workers: 2`` (a supervisor and two worker processes sharing the listener
with SO_REUSEPORT), on a few workloads only (:data:`WORKLOADS_OF`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from procs import (  # type: ignore[import-not-found]
    free_port,
    process_tree,
    raise_file_limit,
    wait_port,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: The hard open-file limit here is 20000. nginx's worker_connections counts
#: client and upstream connections alike, so 11000 fits; HAProxy's maxconn
#: counts sessions (two descriptors each, and it refuses to start unless
#: 2 x maxconn plus its own fit under the limit), so it gets 9000. Both hold
#: the 5000 idle WebSockets of the memory workload.
MAX_CONNECTIONS = 11000
HAPROXY_MAXCONN = 9000

#: Targets measured on these workloads only, and not for idle memory. The
#: workers row answers one question (what do a supervisor and SO_REUSEPORT
#: cost or gain on small messages and plain requests?), not every workload.
WORKLOADS_OF = {"wsproxy-2w": ("http_get", "pingpong_1", "pingpong_50")}
#: How long stop() waits, after the main process ended, for what it started.
DESCENDANTS_TIMEOUT = 10.0


def measures(name: str, workload: str) -> bool:
    """Whether target ``name`` runs ``workload`` (``"idle"``: idle memory)."""
    only = WORKLOADS_OF.get(name)
    return only is None or workload in only


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command's name (state first)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str) -> bool:
    """``pid`` still runs and is the process seen before (not a reused pid)."""
    fields = _stat(pid)
    return fields is not None and fields[19] == started and fields[0] not in ("Z", "X")


@dataclass
class Target:
    name: str
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    workdir: Path = field(default_factory=Path)
    #: How long stop() waits after SIGTERM before SIGKILL.
    stop_timeout: float = 15.0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM, then wait for the process and every process it started
        (nginx's worker, wsproxy's workers: the supervisor drains them and
        exits after them); SIGKILL whatever outlives the timeouts."""
        if self.process is None or self.process.poll() is not None:
            return
        below = []
        for pid in process_tree(self.pid)[1:]:
            fields = _stat(pid)
            if fields is not None:
                below.append((pid, fields[19]))
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        # A killed supervisor's workers drain once their lifeline closes.
        end = time.monotonic() + DESCENDANTS_TIMEOUT
        for pid, started in below:
            while _alive(pid, started) and time.monotonic() < end:
                time.sleep(0.05)
            if _alive(pid, started):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def need(program: str) -> str:
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin")
    if path is None:
        raise RuntimeError(f"{program} is not installed (bench/install.sh installs it)")
    return path


def _spawn(
    name: str,
    argv: list[str],
    port: int,
    workdir: Path,
    env: dict[str, str] | None = None,
    stdout: int | None = subprocess.DEVNULL,
) -> Target:
    log = (workdir / f"{name}.stderr").open("wb")
    process = subprocess.Popen(
        argv,
        stdout=stdout,
        stderr=log,
        env={**os.environ, **(env or {})},
        cwd=workdir,
        preexec_fn=raise_file_limit,
    )
    target = Target(name, port, process, workdir)
    try:
        wait_port(port, process, name)
    except RuntimeError as exc:
        target.stop()
        detail = (workdir / f"{name}.stderr").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{exc}\n{detail}") from exc
    return target


def start_backend(workdir: Path) -> Target:
    port = free_port()
    return _spawn("backend", [sys.executable, str(HERE / "backend.py"), str(port)], port, workdir)


#: Static bodies the origin serves for the large-response workloads.
BODIES = {"/64k": 64 * 1024, "/1m": 1024 * 1024}


def start_sink(workdir: Path) -> Target:
    """The upload workload's upstream (bench/sink.py): answers after the whole body."""
    port = free_port()
    return _spawn("sink", [sys.executable, str(HERE / "sink.py"), str(port)], port, workdir)


def start_origin(workdir: Path) -> Target:
    """A static nginx: ``ok`` at ``/``, and 64 KiB and 1 MiB files."""
    port = free_port()
    # nginx's workers run as "nobody": the files and their directory must be readable.
    workdir.chmod(0o755)
    for path, size in BODIES.items():
        body = workdir / f"body{path.replace('/', '-')}.bin"
        body.write_bytes(b"x" * size)
        body.chmod(0o644)
    conf = workdir / "origin.conf"
    conf.write_text(
        f"""\
worker_processes 1;
daemon off;
pid {workdir}/origin.pid;
error_log {workdir}/origin-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/tmp-body;
  proxy_temp_path {workdir}/tmp-proxy;
  fastcgi_temp_path {workdir}/tmp-fcgi;
  uwsgi_temp_path {workdir}/tmp-uwsgi;
  scgi_temp_path {workdir}/tmp-scgi;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 0;
    location / {{ return 200 "ok\\n"; }}
    location = /64k {{ alias {workdir}/body-64k.bin; }}
    location = /1m {{ alias {workdir}/body-1m.bin; }}
  }}
}}
"""
    )
    return _spawn("origin", [need("nginx"), "-p", str(workdir), "-c", str(conf)], port, workdir)


def start_nginx(workdir: Path, ws: int, http: int, sink: int) -> Target:
    """nginx with the article's fix: HTTP/1.1 upstream plus the upgrade map."""
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""\
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections {MAX_CONNECTIONS}; }}
http {{
  access_log {workdir}/nginx-access.log;
  client_body_temp_path {workdir}/tmp-body;
  proxy_temp_path {workdir}/tmp-proxy;
  fastcgi_temp_path {workdir}/tmp-fcgi;
  uwsgi_temp_path {workdir}/tmp-uwsgi;
  scgi_temp_path {workdir}/tmp-scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
  upstream ws {{ server 127.0.0.1:{ws}; }}
  upstream web {{ server 127.0.0.1:{http}; keepalive 64; }}
  upstream sink {{ server 127.0.0.1:{sink}; keepalive 8; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location /ws {{
      proxy_pass http://ws;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_read_timeout 1h;
    }}
    location / {{
      proxy_pass http://web;
      proxy_http_version 1.1;
      proxy_set_header Connection $connection_upgrade;
    }}
    location = /upload {{
      proxy_pass http://sink;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # Uploads of any size, streamed as they come (as the other proxies do).
      client_max_body_size 0;
      proxy_request_buffering off;
    }}
  }}
}}
"""
    )
    return _spawn("nginx", [need("nginx"), "-p", str(workdir), "-c", str(conf)], port, workdir)


def start_haproxy(workdir: Path, ws: int, http: int, sink: int) -> Target:
    port = free_port()
    conf = workdir / "haproxy.cfg"
    conf.write_text(
        f"""\
global
  nbthread 1
  maxconn {HAPROXY_MAXCONN}

defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout tunnel 1h

frontend fe
  bind 127.0.0.1:{port}
  use_backend ws if {{ path_beg /ws }}
  use_backend sink if {{ path /upload }}
  default_backend web

backend ws
  server s1 127.0.0.1:{ws}

backend web
  server s1 127.0.0.1:{http}

backend sink
  server s1 127.0.0.1:{sink}
"""
    )
    return _spawn("haproxy", [need("haproxy"), "-db", "-f", str(conf)], port, workdir)


def start_caddy(workdir: Path, ws: int, http: int, sink: int) -> Target:
    port = free_port()
    conf = workdir / "Caddyfile"
    conf.write_text(
        f"""\
{{
  admin off
  auto_https off
}}

http://127.0.0.1:{port} {{
  handle /ws* {{
    reverse_proxy 127.0.0.1:{ws}
  }}
  handle /upload {{
    reverse_proxy 127.0.0.1:{sink}
  }}
  handle {{
    reverse_proxy 127.0.0.1:{http}
  }}
}}
"""
    )
    return spawn_caddy(workdir, conf, port)


def spawn_caddy(workdir: Path, conf: Path, port: int) -> Target:
    """Caddy on one thread, its state kept in ``workdir``."""
    env = {
        "GOMAXPROCS": "1",
        "HOME": str(workdir),
        "XDG_DATA_HOME": str(workdir / "caddy-data"),
        "XDG_CONFIG_HOME": str(workdir / "caddy-config"),
    }
    argv = [need("caddy"), "run", "--config", str(conf), "--adapter", "caddyfile"]
    return _spawn("caddy", argv, port, workdir, env)


def wait_ready(target: Target, admin_port: int, timeout: float = 30.0) -> None:
    """Until wsproxy's ``/readyz`` answers 200 (with workers: every worker
    listens and is ready; the listener answers as soon as the first does)."""
    url = f"http://127.0.0.1:{admin_port}/readyz"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no http_proxy
    end = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < end:
        assert target.process is not None
        if target.process.poll() is not None:
            raise RuntimeError(f"{target.name} exited with status {target.process.returncode}")
        try:
            with opener.open(url, timeout=2) as response:
                if response.status == 200:
                    return
                last = f"status {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"status {exc.code}: {exc.read().decode(errors='replace').strip()}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{target.name} was not ready within {timeout}s ({last})")


def start_wsproxy(workdir: Path, ws: int, http: int, sink: int, workers: int = 1) -> Target:
    """wsproxy with its shipped defaults; with ``workers`` > 1 the same
    configuration plus ``workers: N`` (a supervisor owning the admin
    listener, N worker processes sharing the listener with SO_REUSEPORT)."""
    name = "wsproxy" if workers == 1 else f"wsproxy-{workers}w"
    port = free_port()
    admin_port = free_port()
    workers_line = f"workers: {workers}\n" if workers > 1 else ""
    conf = workdir / f"{name}.yaml"
    conf.write_text(
        f"""\
{workers_line}listen:
  - host: 127.0.0.1
    port: {port}
admin:
  host: 127.0.0.1
  port: {admin_port}
upstreams:
  ws:
    servers: ["127.0.0.1:{ws}"]
  web:
    servers: ["127.0.0.1:{http}"]
  sink:
    servers: ["127.0.0.1:{sink}"]
routes:
  - path_prefix: /ws
    upstream: ws
  - path_prefix: /upload
    upstream: sink
  - path_prefix: /
    upstream: web
"""
    )
    argv = [sys.executable, "-m", "wsproxy", "serve", "-c", str(conf)]
    # The access log goes to stdout as shipped; here stdout is /dev/null (the
    # workers inherit it).
    target = _spawn(name, argv, port, workdir)
    if workers == 1:
        return target
    # A supervisor drains its workers (shutdown.grace_period, 30 s, then 5 s
    # to die) before it exits itself.
    target.stop_timeout = 45.0
    try:
        wait_ready(target, admin_port)
        # CPU and RSS are summed over this tree: supervisor and every worker.
        tree = process_tree(target.pid)
        if len(tree) != 1 + workers:
            raise RuntimeError(f"{name}: expected a supervisor and {workers} workers, got {tree}")
    except RuntimeError as exc:
        target.stop()
        detail = (workdir / f"{name}.stderr").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{exc}\n{detail}") from exc
    return target


def start_wsproxy_2w(workdir: Path, ws: int, http: int, sink: int) -> Target:
    return start_wsproxy(workdir, ws, http, sink, workers=2)


PROXIES = {
    "nginx": start_nginx,
    "haproxy": start_haproxy,
    "caddy": start_caddy,
    "wsproxy": start_wsproxy,
    "wsproxy-2w": start_wsproxy_2w,
}
