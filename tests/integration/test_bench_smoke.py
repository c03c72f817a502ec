"""Keep the benchmarks working: seconds-long runs, no thresholds.

Timing is measured by bench/, never asserted here: the machines are shared
and noisy.  These only check that every part starts, runs and reports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.proxy import need_program

ROOT = Path(__file__).resolve().parents[2]


def test_observer_bench_runs_and_reports_both_modes(tmp_path: Path) -> None:
    """Guards against the benchmark harness rotting between performance runs."""
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "observer.py"),
            "--seconds",
            "0.3",
            "--rounds",
            "1",
            "--connections",
            "1",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    (report,) = tmp_path.glob("observer-*.json")
    results = json.loads(report.read_text())["results"]
    assert set(results) == {"observer on, 1 conn", "observer off, 1 conn"}
    for value in results.values():
        assert value["msgs_per_s"] > 0
        assert value["cpu_us_per_msg"] > 0


def test_flood_bench_runs_and_reports_the_victim_under_each_flood(tmp_path: Path) -> None:
    """Guards bench/flood.py (victim latency while another session floods)."""
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "flood.py"),
            *("--seconds", "0.3", "--rounds", "1", "--warmup", "0.1"),
            *("--targets", "observer on", "--modes", "c2u", "u2c"),
            *("--out", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (report,) = tmp_path.glob("flood-*.json")
    results = json.loads(report.read_text())["results"]
    assert set(results) == {"observer on"}
    assert set(results["observer on"]) == {"c2u", "u2c"}
    for value in results["observer on"].values():
        assert value["count"] > 0
        assert value["flooder_mb"] > 0


def test_side_by_side_bench_quick_run_reports_every_target(tmp_path: Path) -> None:
    """Guards against a competitor or workload silently dropping out of make bench."""
    for program in ("nginx", "haproxy", "caddy", "wrk", "curl"):
        need_program(program)
    result = subprocess.run(
        [sys.executable, "run.py", "--quick", "--idle", "50", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT / "bench",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (report,) = tmp_path.glob("bench-*.json")
    data = json.loads(report.read_text())
    targets = {"direct", "nginx", "haproxy", "caddy", "wsproxy"}
    assert set(data["summary"]) == {
        "pingpong_1",
        "pingpong_50",
        "stream_1mib_4",
        "http_get",
        "http_64k",
        "http_1m",
        "upload_100m",
    }
    # wsproxy with `workers: 2` runs these three only (bench/targets.py, WORKLOADS_OF).
    with_workers = {"pingpong_1", "pingpong_50", "http_get"}
    for name, workload in data["summary"].items():
        expected = targets | {"wsproxy-2w"} if name in with_workers else targets
        assert set(workload["targets"]) == expected, name
        metric = workload["metric"]
        assert all(row[metric] > 0 for row in workload["targets"].values())
    assert set(data["idle"]) == targets - {"direct"}
    # The report's table pairs each round with nginx's same round.
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import report  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(ROOT / "bench"))
    text = report.table(data)
    row = next(line for line in text.splitlines() if line.startswith("| nginx |"))
    assert " / ".join(["1.00"] * data["rounds"]) in row
    rows = [line for line in text.splitlines() if line.startswith("| **wsproxy, 2 workers** |")]
    assert len(rows) == len(with_workers)


def test_scale_bench_opens_and_closes_through_the_floor_and_wsproxy(tmp_path: Path) -> None:
    """Guards bench/scale.py and the WebSocket floor (bench/floor.py --websocket).

    Without nginx and HAProxy: a small N through the two Python proxies, with
    the mass close and wsproxy's admin figures.
    """
    result = subprocess.run(
        [
            *(sys.executable, "scale.py", "--sizes", "60"),
            *("--proxies", "floor,wsproxy", "--out", str(tmp_path)),
            *("--settle", "1000000"),  # sixty sessions need no quiet port space
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT / "bench",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (report,) = tmp_path.glob("scale-*.json")
    rows = {row["proxy"]: row for row in json.loads(report.read_text())["rows"]}
    assert set(rows) == {"floor", "wsproxy"}
    for row in rows.values():
        assert (row["opened"], row["failed"]) == (60, 0), row
        assert row["open_cpu_us"] > 0, row
        assert row["close_s"] is not None, row  # every client saw its session end
    assert rows["wsproxy"]["close_counted"] == 60
