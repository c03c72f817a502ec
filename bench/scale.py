"""The scale bench: thousands of idle WebSockets through nginx, HAProxy and wsproxy.

    .venv/bin/python bench/scale.py [--sizes 1000,9900,30000] [--proxies nginx,floor,...]
    .venv/bin/python bench/scale.py --report bench/results/scale-....json

For each proxy and each N, from nothing: two echo backends (bench/backend.py,
balanced round robin: one destination's ephemeral ports would cap the
upstream side near 28,000), the proxy, then load processes
(bench/scaleclient.py, each from its own loopback source address) that open
N sessions with 500 handshakes in flight. Measured:

- sessions opened per second over the whole burst, connect p50/p99, failures,
  and the proxy's CPU time per session opened (its threads' time on a CPU,
  /proc): the load processes share the machine's cores with the proxy, so
  a proxy that spends much more per session opens fewer;
- the kernel's listen-queue overflows during the burst (``ListenOverflows``
  and ``ListenDrops`` of /proc/net/netstat: system-wide, so one proxy runs
  at a time and the backends' queues count too);
- KB per session (the proxy's RSS, every process, with N open minus before);
- idle CPU with N open, over 5 s;
- the round trip of one more session (64 B ping-pong, 2 s);
- wsproxy only: ``/metrics`` and ``/status.json``, time (median of 5) and size;
- a mass close: both backends are killed at once (a backend restart, the
  sessions at least 11 s old), and
  the time until every client has seen its session end and the proxy's CPU
  time meanwhile; for wsproxy with one process, the longest ``/healthz``
  answer meanwhile (the admin listener runs on the proxy's loop, so that is
  the longest stall) and whether every session was counted; RSS afterwards.
  With one proxy process, the proxy has a CPU of its own for the close and
  everything else the others: the killed backends' exit closes thousands of
  sockets in the kernel, and on shared cores a stall would count that.

``floor`` is bench/floor.py ``--websocket``, beside them as a yardstick: a
Python proxy on uvloop and llhttp that reads the handshake, connects, sends
it on, reads the ``101`` and splices, with nothing else (one process, so only
for N up to :data:`PER_PROCESS`). What wsproxy spends above it is its own
work per session; what the floor spends above nginx is, roughly, Python's.

Descriptors: the hard limit here is 20,000 per process, and a proxied
session holds two, so one proxy process holds at most about 9,990 sessions.
N above :data:`PER_PROCESS` runs every proxy with several processes on one
port: nginx ``worker_processes`` with ``reuseport``, HAProxy several
processes (it binds with SO_REUSEPORT itself; one process's threads share its
descriptor limit), wsproxy ``workers``.

The result is ``bench/results/scale-<time>.json``; the table between
``scale:start`` and ``scale:end`` in docs/performance.md and the chart
docs/scale.png are rendered from it (``--report`` renders an older one).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from procs import cpu_seconds, free_port, process_tree, rss_kb  # type: ignore[import-not-found]
from targets import (  # type: ignore[import-not-found]
    Target,
    _spawn,
    need,
    wait_ready,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
DOC = ROOT / "docs" / "performance.md"
CHART = ROOT / "docs" / "scale.png"
START, END = "<!-- scale:start -->", "<!-- scale:end -->"

SIZES = (1000, 9900, 30000)
PROXIES = ("nginx", "haproxy", "floor", "wsproxy")
#: Sessions one proxy process holds under the 20,000-descriptor hard limit
#: (two descriptors each, plus the listeners and the log).
PER_PROCESS = 9900
#: Sessions one load process opens (its own limit, with room).
PER_CLIENT = 7500
#: Handshakes in flight at once, over all load processes.
BURST = 500
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def processes_for(sessions: int) -> int:
    return max(1, math.ceil(sessions / PER_PROCESS))


def time_wait() -> int:
    """Sockets in TIME_WAIT, from /proc/net/sockstat."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("tw") + 1])
    return 0


def settle(limit: int = 2000, timeout: float = 75.0) -> None:
    """Until the last run's TIME_WAIT sockets are nearly gone (Linux keeps
    them 60 s): tens of thousands of them make every ephemeral-port search
    slow, and the next run would measure that."""
    end = time.monotonic() + timeout
    while time_wait() > limit and time.monotonic() < end:
        time.sleep(1.0)


def netstat() -> dict[str, int]:
    """TcpExt counters of /proc/net/netstat."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return dict(zip(names.split()[1:], (int(v) for v in values.split()[1:]), strict=False))
    return {}


# -- the proxies, each in front of two backends --------------------------------


class Proxy:
    """One proxy under test: its processes (several for HAProxy above
    PER_PROCESS), the port clients use, wsproxy's admin port."""

    def __init__(self, name: str, targets: list[Target], port: int, admin: int = 0) -> None:
        self.name = name
        self.targets = targets
        self.port = port
        self.admin = admin

    def rss_kb(self) -> float:
        return sum(rss_kb(t.pid) for t in self.targets)

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(t.pid) for t in self.targets)

    def stop(self) -> None:
        for target in self.targets:
            target.stop()


def start_nginx(workdir: Path, backends: list[int], processes: int) -> Proxy:
    port = free_port()
    conf = workdir / "nginx.conf"
    servers = "".join(f"server 127.0.0.1:{b}; " for b in backends)
    reuse = " reuseport" if processes > 1 else ""
    conf.write_text(
        f"""\
worker_processes {processes};
worker_rlimit_nofile 20000;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 19990; }}
http {{
  access_log {workdir}/nginx-access.log;
  client_body_temp_path {workdir}/tmp-body;
  proxy_temp_path {workdir}/tmp-proxy;
  fastcgi_temp_path {workdir}/tmp-fcgi;
  uwsgi_temp_path {workdir}/tmp-uwsgi;
  scgi_temp_path {workdir}/tmp-scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
  upstream ws {{ {servers}}}
  server {{
    listen 127.0.0.1:{port} backlog=4096{reuse};
    location / {{
      proxy_pass http://ws;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_read_timeout 1h;
    }}
  }}
}}
"""
    )
    target = _spawn("nginx", [need("nginx"), "-p", str(workdir), "-c", str(conf)], port, workdir)
    return Proxy("nginx", [target], port)


def start_haproxy(workdir: Path, backends: list[int], processes: int) -> Proxy:
    port = free_port()
    conf = workdir / "haproxy.cfg"
    servers = "".join(f"  server s{i} 127.0.0.1:{b}\n" for i, b in enumerate(backends))
    conf.write_text(
        f"""\
global
  nbthread 1
  maxconn 9950

defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout tunnel 1h

frontend fe
  bind 127.0.0.1:{port} backlog 4096
  default_backend ws

backend ws
  balance roundrobin
{servers}"""
    )
    argv = [need("haproxy"), "-db", "-f", str(conf)]
    targets = [_spawn(f"haproxy-{i}", argv, port, workdir) for i in range(processes)]
    return Proxy("haproxy", targets, port)


def start_wsproxy(workdir: Path, backends: list[int], processes: int) -> Proxy:
    """Shipped defaults (JSON access log to stdout, here /dev/null; frame
    observer on), ``workers`` above one process's sessions."""
    port = free_port()
    admin = free_port()
    workers = f"workers: {processes}\n" if processes > 1 else ""
    servers = ", ".join(f'"127.0.0.1:{b}"' for b in backends)
    conf = workdir / "wsproxy.yaml"
    conf.write_text(
        f"""\
{workers}listen:
  - host: 127.0.0.1
    port: {port}
admin:
  host: 127.0.0.1
  port: {admin}
upstreams:
  ws:
    servers: [{servers}]
routes:
  - path_prefix: /
    upstream: ws
"""
    )
    argv = [sys.executable, "-m", "wsproxy", "serve", "-c", str(conf)]
    target = _spawn("wsproxy", argv, port, workdir)
    target.stop_timeout = 45.0
    wait_ready(target, admin)
    return Proxy("wsproxy", [target], port, admin)


def start_floor(workdir: Path, backends: list[int], processes: int) -> Proxy:
    """bench/floor.py --websocket: what opening a session costs any Python
    proxy on uvloop and llhttp (one process only)."""
    port = free_port()
    servers = ",".join(f"127.0.0.1:{b}" for b in backends)
    argv = [sys.executable, str(HERE / "floor.py"), "--websocket", "--port", str(port)]
    target = _spawn("floor", [*argv, "--upstream", servers], port, workdir)
    return Proxy("floor", [target], port)


STARTERS = {
    "nginx": start_nginx,
    "haproxy": start_haproxy,
    "floor": start_floor,
    "wsproxy": start_wsproxy,
}


# -- measuring -------------------------------------------------------------------


def fetch(port: int, path: str) -> tuple[float, int]:
    """(ms, bytes) of one admin request."""
    began = time.perf_counter()
    with OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        size = len(response.read())
    return (time.perf_counter() - began) * 1000, size


def admin_costs(port: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, path in (("metrics", "/metrics"), ("status", "/status.json")):
        samples = [fetch(port, path) for _ in range(5)]
        out[f"{name}_ms"] = round(statistics.median(ms for ms, _ in samples), 2)
        out[f"{name}_kb"] = round(samples[-1][1] / 1024, 1)
    return out


def sessions_ended(port: int) -> int:
    """Sessions wsproxy counted as ended (the duration histogram's count)."""
    with OPENER.open(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("wsproxy_websocket_connection_duration_seconds_count"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def pin(pids: list[int], cpus: set[int]) -> None:
    """Run every thread of ``pids`` and their children on ``cpus``."""
    for pid in pids:
        for each in process_tree(pid):
            try:
                threads = [int(t.name) for t in Path(f"/proc/{each}/task").iterdir()]
            except OSError:
                continue
            for thread in threads:
                with contextlib.suppress(OSError):  # gone meanwhile
                    os.sched_setaffinity(thread, cpus)


class StallWatch(threading.Thread):
    """Asks ``/healthz`` back to back on one kept-alive connection; the
    longest answer is the longest stretch the loop did nothing else."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.longest_ms = 0.0
        self.asked = 0
        self.stop = threading.Event()

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            while not self.stop.is_set():
                began = time.perf_counter()
                connection.request("GET", "/healthz")
                connection.getresponse().read()
                self.longest_ms = max(self.longest_ms, (time.perf_counter() - began) * 1000)
                self.asked += 1
        finally:
            connection.close()


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(fraction * len(values)))]


def ask(clients: list[subprocess.Popen[str]], command: str) -> list[dict[str, Any]]:
    answers = []
    for client in clients:
        assert client.stdin is not None
        assert client.stdout is not None
        client.stdin.write(command + "\n")
        client.stdin.flush()
        answers.append(json.loads(client.stdout.readline()))
    return answers


def extra_session(port: int) -> dict[str, Any]:
    """One more session's 64 B round trip while N are open."""
    out = subprocess.run(
        [
            *(sys.executable, str(HERE / "loadgen.py"), "pingpong"),
            *(f"ws://127.0.0.1:{port}/ws", "--connections", "1", "--seconds", "2"),
            # Its own source address: 127.0.0.1's ports are the proxy's
            # upstream connections' (30,000 of them at the largest N).
            *("--source", "127.0.0.9"),
        ],
        capture_output=True,
        text=True,
        cwd=HERE,
    )
    if out.returncode != 0:
        return {"rtt_error": out.stderr.strip().splitlines()[-1][:200] if out.stderr else "failed"}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"rtt_p50_us": result["p50_us"], "rtt_p99_us": result["p99_us"]}


def measure(name: str, sessions: int, settle_limit: int = 2000) -> dict[str, Any]:
    settle(settle_limit)
    everything = os.sched_getaffinity(0)  # given back at the end (the mass close pins)
    processes = processes_for(sessions)
    with tempfile.TemporaryDirectory(prefix=f"scale-{name}-") as tmp:
        workdir = Path(tmp)
        backend_ports = [free_port(), free_port()]
        backends = [
            _spawn(f"backend-{i}", [sys.executable, str(HERE / "backend.py"), str(p)], p, workdir)
            for i, p in enumerate(backend_ports)
        ]
        proxy: Proxy | None = None
        clients: list[subprocess.Popen[str]] = []
        try:
            proxy = STARTERS[name](workdir, backend_ports, processes)
            time.sleep(1.0)
            row: dict[str, Any] = {"proxy": name, "sessions": sessions, "processes": processes}
            rss_before = proxy.rss_kb()
            cpu_before_open = proxy.cpu_seconds()
            counters = netstat()
            count = max(2, math.ceil(sessions / PER_CLIENT))
            shares = [sessions // count + (1 if i < sessions % count else 0) for i in range(count)]
            url = f"ws://127.0.0.1:{proxy.port}/ws"
            for i, share in enumerate(shares):
                argv = [sys.executable, str(HERE / "scaleclient.py"), url, "--count", str(share)]
                argv += ["--burst", str(BURST // count), "--source", f"127.0.0.{10 + i}"]
                clients.append(
                    subprocess.Popen(
                        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=HERE
                    )
                )
            bursts = []
            for client in clients:
                assert client.stdout is not None
                line = client.stdout.readline()
                if not line:
                    raise RuntimeError(f"a load process of {name} ended early")
                bursts.append(json.loads(line))
            after = netstat()
            cpu_open = proxy.cpu_seconds() - cpu_before_open
            opened = sum(b["opened"] for b in bursts)
            span = max(b["ended"] for b in bursts) - min(b["began"] for b in bursts)
            latencies = sorted(ms for b in bursts for ms in b["latencies_ms"])
            row.update(
                opened=opened,
                failed=sum(b["failed"] for b in bursts),
                failures=sorted({f for b in bursts for f in b["failures"]})[:5],
                sessions_per_s=round(opened / span, 1),
                connect_p50_ms=round(percentile(latencies, 0.5), 1),
                connect_p99_ms=round(percentile(latencies, 0.99), 1),
                open_cpu_us=round(cpu_open / max(1, opened) * 1e6),
                listen_overflows=after.get("ListenOverflows", 0)
                - counters.get("ListenOverflows", 0),
                listen_drops=after.get("ListenDrops", 0) - counters.get("ListenDrops", 0),
            )
            time.sleep(1.0)
            rss_open = proxy.rss_kb()
            row["rss_before_mb"] = round(rss_before / 1024, 1)
            row["rss_open_mb"] = round(rss_open / 1024, 1)
            row["kb_per_session"] = round((rss_open - rss_before) / max(1, opened), 2)
            cpu = proxy.cpu_seconds()
            time.sleep(5.0)
            row["idle_cpu_pct"] = round((proxy.cpu_seconds() - cpu) / 5.0 * 100, 2)
            row.update(extra_session(proxy.port))
            if proxy.admin:
                row.update(admin_costs(proxy.admin))
                ended_before = sessions_ended(proxy.admin)
            # Sessions older than wsproxy's early-close window (10 s), as a
            # backend restart finds them (younger ones each get a warning line).
            age = time.monotonic() - max(b["ended"] for b in bursts)
            if age < 11.0:
                time.sleep(11.0 - age)
            # For the close the proxy gets a CPU to itself, and everything
            # else (the killed backends' exit, which closes thousands of
            # sockets in the kernel, the clients, this bench) the others:
            # else a stall would count the time the machine spent there.
            first = min(everything)
            others = everything - {first}
            # One process only: several would share that core.
            if others and processes == 1:
                os.sched_setaffinity(0, others)  # threads started from here inherit it
                pin([t.pid for t in proxy.targets], {first})
                pin([b.pid for b in backends] + [c.pid for c in clients], others)
            watch = StallWatch(proxy.admin) if proxy.admin and processes == 1 else None
            if watch is not None:
                watch.start()
            cpu_before_close = proxy.cpu_seconds()
            killed = time.monotonic()
            for backend in backends:
                assert backend.process is not None
                backend.process.kill()
            deadline = killed + 120
            last: list[Any] = [None]
            while time.monotonic() < deadline:
                last = [answer["last_closed"] for answer in ask(clients, "closed")]
                if all(value is not None for value in last):
                    break
                time.sleep(0.05)
            if watch is not None:
                watch.stop.set()
                watch.join()
                row["close_stall_ms"] = round(watch.longest_ms, 1)
            row["close_cpu_ms"] = round((proxy.cpu_seconds() - cpu_before_close) * 1000)
            if all(value is not None for value in last):
                row["close_s"] = round(max(last) - killed, 3)
            else:
                row["close_s"] = None
                row["still_open"] = sum(a["open"] for a in ask(clients, "count"))
            if proxy.admin:
                # Ends are counted a few dozen per loop turn (observe.EndReports).
                counted = 0
                while time.monotonic() < killed + 60:
                    counted = sessions_ended(proxy.admin) - ended_before
                    if counted >= opened:
                        break
                    time.sleep(0.05)
                row["close_counted"] = counted
                row["close_counted_s"] = round(time.monotonic() - killed, 2)
            time.sleep(4.0)  # wsproxy gives memory back 2 s after a burst of ends
            row["rss_after_close_mb"] = round(proxy.rss_kb() / 1024, 1)
            return row
        finally:
            os.sched_setaffinity(0, everything)
            for client in clients:
                if client.stdin is not None:
                    client.stdin.close()
            for client in clients:
                try:
                    client.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    client.kill()
            if proxy is not None:
                proxy.stop()
            for backend in backends:
                backend.stop()


# -- the report ---------------------------------------------------------------------


COLUMNS = (
    ("sessions/s", "sessions_per_s", "{:,.0f}"),
    ("connect p50 / p99 ms", ("connect_p50_ms", "connect_p99_ms"), "{:,.0f} / {:,.0f}"),
    ("proxy CPU per session opened µs", "open_cpu_us", "{:,.0f}"),
    ("listen overflows", "listen_overflows", "{:,}"),
    ("KB/session", "kb_per_session", "{:.1f}"),
    ("idle CPU %", "idle_cpu_pct", "{:.1f}"),
    ("extra session RTT p50 / p99 µs", ("rtt_p50_us", "rtt_p99_us"), "{:,.0f} / {:,.0f}"),
    ("mass close s", "close_s", "{:.2f}"),
    ("proxy CPU in the mass close ms", "close_cpu_ms", "{:,.0f}"),
    ("RSS before / open / after close MB", ("rss_before_mb", "rss_open_mb", "rss_after_close_mb"),
     "{:.0f} / {:.0f} / {:.0f}"),
)  # fmt: skip
ADMIN = (
    ("`/metrics` ms (KB)", ("metrics_ms", "metrics_kb"), "{:.1f} ({:.0f})"),
    ("`/status.json` ms (KB)", ("status_ms", "status_kb"), "{:.1f} ({:.0f})"),
    ("longest stall in the mass close ms", "close_stall_ms", "{:.0f}"),
    (
        "sessions counted at the close (s after the kill)",
        ("close_counted", "close_counted_s"),
        "{:,} ({:.1f})",
    ),
)


def cell(row: dict[str, Any], keys: str | tuple[str, ...], form: str) -> str:
    names = (keys,) if isinstance(keys, str) else keys
    values = [row.get(k) for k in names]
    if any(v is None for v in values):
        return "–"
    return form.format(*values)


def render(result: dict[str, Any]) -> str:
    rows: list[dict[str, Any]] = result["rows"]
    sizes = sorted({r["sessions"] for r in rows})
    lines = [f"Run of {result['when']} ({result['file']}).", ""]
    for sessions in sizes:
        some = [r for r in rows if r["sessions"] == sessions]
        lines.append(f"**{sessions:,} idle sessions** ({some[0]['processes']} process(es) each)")
        lines.append("")
        lines.append("| | " + " | ".join(r["proxy"] for r in some) + " |")
        lines.append("| --- |" + " --- |" * len(some))
        for title, keys, form in COLUMNS:
            lines.append(f"| {title} | " + " | ".join(cell(r, keys, form) for r in some) + " |")
        for title, keys, form in ADMIN:
            lines.append(f"| {title} | " + " | ".join(cell(r, keys, form) for r in some) + " |")
        failed = [f"{r['proxy']}: {r['failed']} failed ({'; '.join(r['failures'])})" for r in some]
        failed = [f for r, f in zip(some, failed, strict=True) if r["failed"]]
        if failed:
            lines.append("")
            lines.append("Failed handshakes: " + "; ".join(failed) + ".")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def chart(result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[dict[str, Any]] = result["rows"]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = (
        ("sessions_per_s", "sessions opened per second"),
        ("kb_per_session", "KB of RSS per idle session"),
        ("connect_p99_ms", "connect p99 during the burst (ms)"),
    )
    for axis, (key, title) in zip(axes, panels, strict=True):
        for proxy in PROXIES:
            points = sorted(
                (r["sessions"], r[key]) for r in rows if r["proxy"] == proxy and key in r
            )
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", label=proxy)
        axis.set_xscale("log")
        axis.set_xlabel("idle sessions open (N)")
        axis.set_title(title, fontsize=10)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(CHART, dpi=100)


def report(path: Path) -> None:
    result = json.loads(path.read_text())
    result["file"] = f"bench/results/{path.name}"
    text = DOC.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{START}\n{render(result)}{END}{tail}")
    chart(result)
    print(f"{DOC.relative_to(ROOT)} and {CHART.relative_to(ROOT)} rendered from {path.name}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--proxies", default=",".join(PROXIES))
    parser.add_argument("--report", type=Path, help="render this result, measure nothing")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the result goes")
    parser.add_argument(
        "--settle",
        type=int,
        default=2000,
        metavar="N",
        help="before each proxy, wait (75 s at most) until fewer sockets are in TIME_WAIT",
    )
    args = parser.parse_args()
    if args.report:
        report(args.report)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for sessions in sizes:
        for name in args.proxies.split(","):
            if name == "floor" and processes_for(sessions) > 1:
                continue  # one process: a yardstick, not a server
            print(f"{name}, {sessions:,} sessions ...", flush=True)
            row = measure(name, sessions, args.settle)
            print("  " + json.dumps(row), flush=True)
            rows.append(row)
    when = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"scale-{when}.json"
    result = {"when": when, "cpus": os.cpu_count(), "rows": rows}
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    if args.out == RESULTS and DOC.exists() and START in DOC.read_text():
        report(path)


if __name__ == "__main__":
    main()
