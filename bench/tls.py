"""TLS termination, side by side: nginx, HAProxy, Caddy and wsproxy, one run.

    make bench-tls                      # about two minutes
    .venv/bin/python bench/tls.py --quick

Every proxy terminates TLS on loopback with the same self-signed certificate
(ECDSA P-256, made here with ``openssl``) in front of the plain backends of
``bench/run.py`` (the static nginx origin, the picows echo). Workloads:

* ``https_get``: 50 keep-alive connections of GET / (wrk), requests per second;
* ``https_handshakes``: 10 connections, each request on a new TLS connection
  (``Connection: close``), so the handshake dominates;
* ``wss_pingpong_50``: 50 ``wss://`` sessions, one 64-byte message in flight
  each (the picows load generator), messages per second.

Rounds are interleaved and the median is kept; each proxy's CPU seconds are
read from /proc. Results: bench/results/tls-<timestamp>.json and a table on
stdout (docs/performance.md quotes it).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from procs import cpu_seconds, free_port  # type: ignore[import-not-found]
from run import loadgen  # type: ignore[import-not-found]
from targets import (  # type: ignore[import-not-found]
    HAPROXY_MAXCONN,
    HERE,
    MAX_CONNECTIONS,
    Target,
    _spawn,
    need,
    spawn_caddy,
    start_backend,
    start_origin,
)

Starter = Callable[[Path, int, int, Path, Path], Target]


def make_certificate(workdir: Path) -> tuple[Path, Path]:
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        [
            need("openssl"),
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    key.chmod(0o644)  # nginx's workers run as nobody
    return cert, key


def start_nginx(workdir: Path, ws: int, http: int, cert: Path, key: Path) -> Target:
    port = free_port()
    conf = workdir / "nginx-tls.conf"
    conf.write_text(
        f"""\
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid {workdir}/nginx-tls.pid;
error_log {workdir}/nginx-tls-error.log warn;
events {{ worker_connections {MAX_CONNECTIONS}; }}
http {{
  access_log {workdir}/nginx-tls-access.log;
  client_body_temp_path {workdir}/tmp-body;
  proxy_temp_path {workdir}/tmp-proxy;
  fastcgi_temp_path {workdir}/tmp-fcgi;
  uwsgi_temp_path {workdir}/tmp-uwsgi;
  scgi_temp_path {workdir}/tmp-scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
  upstream ws {{ server 127.0.0.1:{ws}; }}
  upstream web {{ server 127.0.0.1:{http}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} ssl backlog=4096;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
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
  }}
}}
"""
    )
    return _spawn("nginx", [need("nginx"), "-p", str(workdir), "-c", str(conf)], port, workdir)


def start_haproxy(workdir: Path, ws: int, http: int, cert: Path, key: Path) -> Target:
    port = free_port()
    bundle = workdir / "haproxy.pem"
    bundle.write_bytes(cert.read_bytes() + key.read_bytes())
    conf = workdir / "haproxy-tls.cfg"
    conf.write_text(
        f"""\
global
  nbthread 1
  maxconn {HAPROXY_MAXCONN}
  ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout tunnel 1h

frontend fe
  bind 127.0.0.1:{port} ssl crt {bundle} alpn http/1.1
  use_backend ws if {{ path_beg /ws }}
  default_backend web

backend ws
  server s1 127.0.0.1:{ws}

backend web
  server s1 127.0.0.1:{http}
"""
    )
    return _spawn("haproxy", [need("haproxy"), "-db", "-f", str(conf)], port, workdir)


def start_caddy(workdir: Path, ws: int, http: int, cert: Path, key: Path) -> Target:
    port = free_port()
    conf = workdir / "Caddyfile-tls"
    conf.write_text(
        f"""\
{{
  admin off
  auto_https disable_redirects
}}

https://127.0.0.1:{port}, https://localhost:{port} {{
  tls {cert} {key}
  handle /ws* {{
    reverse_proxy 127.0.0.1:{ws}
  }}
  handle {{
    reverse_proxy 127.0.0.1:{http}
  }}
}}
"""
    )
    return spawn_caddy(workdir, conf, port)


def start_wsproxy(workdir: Path, ws: int, http: int, cert: Path, key: Path) -> Target:
    port, admin = free_port(), free_port()
    conf = workdir / "wsproxy-tls.yaml"
    conf.write_text(
        f"""\
listen:
  - host: 127.0.0.1
    port: {port}
    tls:
      cert_file: {cert}
      key_file: {key}
admin:
  host: 127.0.0.1
  port: {admin}
upstreams:
  ws:
    servers: ["127.0.0.1:{ws}"]
  web:
    servers: ["127.0.0.1:{http}"]
routes:
  - path_prefix: /ws
    upstream: ws
  - path_prefix: /
    upstream: web
"""
    )
    argv = [sys.executable, "-m", "wsproxy", "serve", "-c", str(conf)]
    return _spawn("wsproxy", argv, port, workdir)


PROXIES: dict[str, Starter] = {
    "nginx": start_nginx,
    "haproxy": start_haproxy,
    "caddy": start_caddy,
    "wsproxy": start_wsproxy,
}


def wrk(port: int, seconds: float, connections: int, close: bool) -> dict[str, Any]:
    argv = [need("wrk"), "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    if close:
        argv += ["-H", "Connection: close"]
    result = subprocess.run(
        [*argv, f"https://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    )
    match = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", result.stdout)
    if result.returncode != 0 or match is None or failed is not None:
        raise RuntimeError(f"wrk failed against {port}:\n{result.stdout}\n{result.stderr}")
    return {"requests_per_s": float(match.group(1))}


def run_workload(name: str, target: Target, seconds: float) -> dict[str, Any]:
    before = cpu_seconds(target.pid)
    if name == "https_get":
        result = wrk(target.port, seconds, 50, close=False)
    elif name == "https_handshakes":
        result = wrk(target.port, seconds, 10, close=True)
    else:
        out = loadgen(
            "pingpong",
            f"wss://127.0.0.1:{target.port}/ws",
            "--connections",
            "50",
            "--seconds",
            str(seconds),
            timeout=seconds + 60,
        )
        result = {"messages_per_s": out["messages"] / out["seconds"]}
    result["cpu_seconds"] = round(cpu_seconds(target.pid) - before, 2)
    return result


WORKLOADS = ("https_get", "https_handshakes", "wss_pingpong_50")
METRIC = {
    "https_get": "requests_per_s",
    "https_handshakes": "requests_per_s",
    "wss_pingpong_50": "messages_per_s",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    seconds = 1.0 if args.quick else 5.0
    workdir = Path(tempfile.mkdtemp(prefix="wsproxy-bench-tls-"))
    started: list[Target] = []
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {}
    try:
        cert, key = make_certificate(workdir)
        origin = start_origin(workdir)
        backend = start_backend(workdir)
        started += [origin, backend]
        targets = {}
        for name, start in PROXIES.items():
            targets[name] = start(workdir, backend.port, origin.port, cert, key)
            started.append(targets[name])
        for round_number in range(1, rounds + 1):
            for workload in WORKLOADS:
                for name, target in targets.items():
                    result = run_workload(workload, target, seconds)
                    samples.setdefault(workload, {}).setdefault(name, []).append(result)
                    print(f"round {round_number}/{rounds} {workload:17} {name:8} {result}")
                    time.sleep(0.2)
    finally:
        for target in reversed(started):
            target.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for workload, by_proxy in samples.items():
        key_name = METRIC[workload]
        summary[workload] = {
            name: {
                key_name: statistics.median(s[key_name] for s in runs),
                "cpu_seconds": statistics.median(s["cpu_seconds"] for s in runs),
            }
            for name, runs in by_proxy.items()
        }
    print()
    print(f"{'workload':18} {'nginx':>10} {'haproxy':>10} {'caddy':>10} {'wsproxy':>10}  vs nginx")
    for workload, by_proxy in summary.items():
        key_name = METRIC[workload]
        values = [by_proxy[name][key_name] for name in PROXIES]
        ratio = by_proxy["wsproxy"][key_name] / by_proxy["nginx"][key_name]
        print(f"{workload:18} " + " ".join(f"{v:10.0f}" for v in values) + f"  {ratio:.2f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = args.out / f"tls-{stamp}.json"
    path.write_text(
        json.dumps({"quick": args.quick, "rounds": rounds, "summary": summary}, indent=2)
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
