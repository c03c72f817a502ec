"""Side-by-side benchmark: direct, nginx, HAProxy, Caddy and wsproxy, one run.

    make bench                                  # full run (about 10 minutes)
    .venv/bin/python bench/run.py --quick       # seconds, for a smoke test

Rounds are interleaved (direct, nginx, haproxy, caddy, wsproxy, wsproxy-2w,
then again), so a noisy neighbour hits every target alike; medians are
reported, with the ratio to nginx, to the best of nginx/HAProxy/Caddy and to
direct, and each proxy's CPU seconds per 100k messages and per GB from
/proc/PID/stat (summed over the proxy's processes). Where direct is not
clearly faster than every proxy, the workload is limited by the load
generator or the backend, not the proxies, and the run says so.
``wsproxy-2w`` (wsproxy with ``workers: 2``) runs a few workloads only
(targets.WORKLOADS_OF) and not the idle-memory one.

Results: bench/results/bench-<timestamp>.json; ``bench/report.py`` turns
them into docs/performance.md's table and chart. The working directory
(configurations, the proxies' logs) is removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from procs import cpu_seconds, process_tree, rss_kb  # type: ignore[import-not-found]
from targets import (  # type: ignore[import-not-found]
    BODIES,
    HERE,
    PROXIES,
    Target,
    measures,
    need,
    start_backend,
    start_origin,
    start_sink,
)

THE_THREE = ("nginx", "haproxy", "caddy")
#: Where the upload workload's body file is written (once, reused).
UPLOAD_BODY = Path(tempfile.gettempdir()) / "wsproxy-bench-upload.bin"
#: Direct must beat every proxy by this factor, or the workload is generator-bound.
CLEARLY_FASTER = 1.10


def loadgen(*args: str, timeout: float) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, str(HERE / "loadgen.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=HERE,
    )
    if result.returncode != 0:
        raise RuntimeError(f"loadgen {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def wrk(port: int, seconds: float, connections: int, path: str = "/") -> dict[str, Any]:
    result = subprocess.run(
        [
            need("wrk"),
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    )
    match = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", result.stdout)
    if result.returncode != 0 or match is None or errors is not None:
        raise RuntimeError(f"wrk failed against port {port}:\n{result.stdout}\n{result.stderr}")
    requests = re.search(r"(\d+) requests in", result.stdout)
    return {
        "requests_per_s": float(match.group(1)),
        "messages": int(requests.group(1)) if requests else 0,
    }


def workloads(quick: bool) -> dict[str, dict[str, Any]]:
    seconds = 0.5 if quick else 5.0
    return {
        "pingpong_1": {"kind": "pingpong", "connections": 1, "size": 64, "seconds": seconds},
        "pingpong_50": {"kind": "pingpong", "connections": 50, "size": 64, "seconds": seconds},
        "stream_1mib_4": {
            "kind": "stream",
            "connections": 4,
            "size": 1024 * 1024,
            "seconds": seconds,
        },
        "http_get": {"kind": "http", "connections": 50, "seconds": 1.0 if quick else 5.0},
        "http_64k": {
            "kind": "http",
            "path": "/64k",
            "connections": 50,
            "seconds": 1.0 if quick else 5.0,
        },
        "http_1m": {
            "kind": "http",
            "path": "/1m",
            "connections": 10,
            "seconds": 1.0 if quick else 5.0,
        },
        "upload_100m": {"kind": "upload", "size": (8 if quick else 100) * 1024 * 1024},
    }


def upload(port: int, body: Path, size: int) -> dict[str, Any]:
    """One streamed POST of ``body`` (curl -T reads the file as it sends)."""
    result = subprocess.run(
        [
            need("curl"),
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{time_total}",
            "-X",
            "POST",
            "-H",
            "Expect:",
            "-T",
            str(body),
            f"http://127.0.0.1:{port}/upload",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    code, _, seconds = result.stdout.partition(" ")
    if result.returncode != 0 or code != "200":
        raise RuntimeError(f"upload through port {port} failed: {result.stdout} {result.stderr}")
    return {"seconds": float(seconds), "mb_per_s": size / float(seconds) / 1e6, "bytes": size}


def run_one(target: Target, spec: dict[str, Any]) -> dict[str, Any]:
    url = f"ws://127.0.0.1:{target.port}/ws"
    processes = process_tree(target.pid)
    before = cpu_seconds(target.pid)
    timeout = spec.get("seconds", 0) + 60
    if spec["kind"] == "http":
        path = spec.get("path", "/")
        result = wrk(target.port, spec["seconds"], spec["connections"], path)
        if path in BODIES:
            result["mb_per_s"] = result["requests_per_s"] * BODIES[path] / 1e6
    elif spec["kind"] == "upload":
        body = UPLOAD_BODY.with_name(f"upload-{spec['size']}.bin")
        if not body.exists() or body.stat().st_size != spec["size"]:
            body.write_bytes(b"u" * spec["size"])
        result = upload(target.port, body, spec["size"])
    else:
        result = loadgen(
            spec["kind"],
            url,
            "--connections",
            str(spec["connections"]),
            "--seconds",
            str(spec["seconds"]),
            "--size",
            str(spec["size"]),
            timeout=timeout,
        )
    result["cpu_seconds"] = cpu_seconds(target.pid) - before
    if process_tree(target.pid) != processes:
        # A process that ended (a worker restarted) took its CPU time with it.
        print(
            f"warning: {target.name}'s processes changed during the run "
            f"({processes} -> {process_tree(target.pid)}); its CPU seconds are incomplete",
            file=sys.stderr,
            flush=True,
        )
    return result


def idle_memory(target: Target, connections: int) -> dict[str, Any]:
    """Proxy RSS per idle WebSocket: open N sessions, compare RSS, close."""
    before = rss_kb(target.pid)
    process = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "loadgen.py"),
            "idle",
            f"ws://127.0.0.1:{target.port}/ws",
            "--connections",
            str(connections),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=HERE,
    )
    assert process.stdout is not None
    assert process.stdin is not None
    line = process.stdout.readline()
    if not line.startswith('{"ready"'):
        process.kill()
        raise RuntimeError(f"idle loadgen against {target.name} failed: {process.stderr.read()}")
    time.sleep(1.0)  # let the proxy settle its buffers before reading RSS
    during = rss_kb(target.pid)
    process.stdin.close()
    process.wait(timeout=60)
    return {
        "connections": connections,
        "rss_before_kb": before,
        "rss_during_kb": during,
        "kb_per_connection": (during - before) / connections,
    }


def summarize(raw: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Medians per workload and target. A target that did not run a workload
    has no row there (targets.WORKLOADS_OF); a ratio whose reference did not
    run (nginx, the three, direct) is left out."""
    summary: dict[str, Any] = {}
    for workload, per_target in raw.items():
        rows: dict[str, Any] = {}
        for name, runs in per_target.items():
            if not runs:
                continue
            row: dict[str, float] = {}
            for key in ("msgs_per_s", "p50_us", "p99_us", "mb_per_s", "requests_per_s"):
                values = [run[key] for run in runs if key in run]
                if values:
                    row[key] = statistics.median(values)
            messages = sum(run.get("messages", 0) for run in runs)
            byte_count = sum(run.get("bytes", 0) for run in runs)
            cpu = sum(run["cpu_seconds"] for run in runs)
            if name != "direct":
                if messages:
                    row["cpu_s_per_100k_msgs"] = cpu / messages * 100_000
                if byte_count:
                    row["cpu_s_per_gb"] = cpu / byte_count * 1e9
            rows[name] = row
        if not rows:
            continue
        metric = next(
            key
            for key in ("msgs_per_s", "mb_per_s", "requests_per_s")
            if any(key in row for row in rows.values())
        )
        # Nothing without the metric is compared (it would be a row of gaps).
        rows = {name: row for name, row in rows.items() if metric in row}
        references = {
            "ratio_to_nginx": rows.get("nginx", {}).get(metric),
            "ratio_to_best_of_three": max(
                (rows[name][metric] for name in THE_THREE if name in rows), default=None
            ),
            "ratio_to_direct": rows.get("direct", {}).get(metric),
        }
        for row in rows.values():
            for key, reference in references.items():
                if reference:
                    row[key] = row[metric] / reference
        proxies = [row[metric] for name, row in rows.items() if name != "direct"]
        direct = rows.get("direct", {}).get(metric)
        summary[workload] = {
            "metric": metric,
            "targets": rows,
            "generator_bound": bool(
                direct is not None and proxies and direct < CLEARLY_FASTER * max(proxies)
            ),
        }
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--idle", type=int, default=5000, help="idle WebSockets to hold")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument(
        "--only", nargs="+", metavar="WORKLOAD", help="run only these workloads (exploration)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the working directory (configs, proxy logs)"
    )
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    idle_connections = min(args.idle, 200) if args.quick else args.idle
    specs = workloads(args.quick)
    if args.only:
        specs = {name: spec for name, spec in specs.items() if name in args.only}

    workdir = Path(tempfile.mkdtemp(prefix="wsproxy-bench-"))
    started: list[Target] = []
    try:
        backend = start_backend(workdir)
        started.append(backend)
        origin = start_origin(workdir)
        started.append(origin)
        sink = start_sink(workdir)
        started.append(sink)
        targets: dict[str, Target] = {"direct": Target("direct", backend.port, backend.process)}
        for name, start in PROXIES.items():
            # A competitor that fails to start fails the run: no missing column.
            proxy = start(workdir, backend.port, origin.port, sink.port)
            started.append(proxy)
            targets[name] = proxy

        raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for round_number in range(rounds):
            for workload, spec in specs.items():
                for name, target in targets.items():
                    if not measures(name, workload):
                        continue
                    if spec["kind"] == "http" and name == "direct":
                        run_target = Target("direct", origin.port, origin.process)
                    elif spec["kind"] == "upload" and name == "direct":
                        run_target = Target("direct", sink.port, sink.process)
                    else:
                        run_target = target
                    result = run_one(run_target, spec)
                    raw.setdefault(workload, {}).setdefault(name, []).append(result)
                    print(
                        f"round {round_number + 1}/{rounds} {workload:14} {name:10} "
                        + " ".join(
                            f"{key}={value:.1f}"
                            for key, value in result.items()
                            if isinstance(value, float)
                        ),
                        flush=True,
                    )
        idle = {
            name: idle_memory(target, idle_connections)
            for name, target in targets.items()
            if name != "direct" and measures(name, "idle") and not args.only
        }
        for name, value in idle.items():
            print(f"idle {name:10} {value['kb_per_connection']:.2f} KB/connection", flush=True)

        result = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {
                "cpus": len(__import__("os").sched_getaffinity(0)),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "quick": args.quick,
            "rounds": rounds,
            "workloads": specs,
            "summary": summarize(raw),
            "idle": idle,
            "raw": raw,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        out = args.out / f"bench-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
        out.write_text(json.dumps(result, indent=2))
        print(f"results: {out}")
        for workload, value in result["summary"].items():
            if value["generator_bound"]:
                print(
                    f"note: {workload}: direct is not clearly faster than every proxy; "
                    "this workload is limited by the load generator or backend"
                )
    finally:
        for target in reversed(started):
            target.stop()
        if args.keep:
            print(f"working directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
