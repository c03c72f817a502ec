"""Keep bench/observer.py working: a seconds-long run, no thresholds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
