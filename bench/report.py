"""Turn a bench/run.py result into docs/performance.md's table and chart.

    .venv/bin/python bench/report.py [bench/results/bench-....json]

Without an argument, the newest result is used. The table replaces what
stands between the ``results:start`` and ``results:end`` markers of
docs/performance.md; the chart is docs/performance.png. A target that did not
run a workload (``wsproxy-2w`` runs three) has no row or bar there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DOC = ROOT / "docs" / "performance.md"
CHART = ROOT / "docs" / "performance.png"
#: Table and chart order; a target not listed here comes after these.
TARGETS = ("direct", "nginx", "haproxy", "caddy", "wsproxy", "wsproxy-2w")
#: How a target is named in the tables (bold: ours) and under the chart's bars.
LABELS = {"wsproxy": "**wsproxy**", "wsproxy-2w": "**wsproxy, 2 workers**"}
SHORT = {"wsproxy-2w": "wsproxy\n2 workers"}
START, END = "<!-- results:start -->", "<!-- results:end -->"

TITLES = {
    "pingpong_1": "64 B ping-pong, 1 connection",
    "pingpong_50": "64 B ping-pong, 50 connections",
    "stream_1mib_4": "1 MiB messages streamed, 4 connections",
    "http_get": "plain HTTP GET, keep-alive, 50 connections (wrk)",
    "http_64k": "64 KiB responses, keep-alive, 50 connections (wrk)",
    "http_1m": "1 MiB responses, keep-alive, 10 connections (wrk)",
    "upload_100m": "100 MiB upload streamed, 1 connection (curl)",
}
UNITS = {"msgs_per_s": "msgs/s", "mb_per_s": "MB/s", "requests_per_s": "req/s"}


def fmt(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def ordered(names: Any) -> list[str]:
    """``names`` (those that ran) in TARGETS' order, any others after."""
    present = list(names)
    return [name for name in TARGETS if name in present] + [
        name for name in present if name not in TARGETS
    ]


def workers_note(result: dict[str, Any]) -> str | None:
    """What the 2-worker row can and cannot show on this machine."""
    if not any("wsproxy-2w" in summary["targets"] for summary in result["summary"].values()):
        return None
    cpus = result["machine"]["cpus"]
    note = (
        "**wsproxy, 2 workers** is the same wsproxy with `workers: 2` (a supervisor and two "
        "worker processes sharing the listener with `SO_REUSEPORT`; its CPU is all three "
        "processes'), run on plain GET and 64 B ping-pong only."
    )
    if cpus < 4:
        note += (
            f" On this {cpus}-CPU machine the load generator (wrk, or the picows load "
            f"generator) and the backend share the {cpus} CPUs with the proxy, so that row "
            "shows the overhead of the supervisor and of spreading connections with "
            "`SO_REUSEPORT`, not the scaling: workers scale on a machine with more cores "
            "than the load needs."
        )
    return note


def each_round(result: dict[str, Any], workload: str, name: str, metric: str) -> str:
    """The target's ratio to nginx in each round, paired (the same round's nginx).

    Medians over rounds hide how far this VM drifts within a run; a ratio
    per round shows it (and cancels a drift that slows every target alike).
    """
    runs = result.get("raw", {}).get(workload, {})
    ratios = [
        mine[metric] / nginx[metric]
        for mine, nginx in zip(runs.get(name, []), runs.get("nginx", []), strict=False)
        if mine.get(metric) and nginx.get(metric)
    ]
    return " / ".join(f"{ratio:.2f}" for ratio in ratios) or "–"


def table(result: dict[str, Any]) -> str:
    lines = [
        f"Run of {result['when']}, {result['rounds']} interleaved rounds, medians; "
        f"{result['machine']['cpus']} CPUs, Python {result['machine']['python']}.",
        "",
    ]
    note = workers_note(result)
    if note is not None:
        lines += [note, ""]
    for workload, summary in result["summary"].items():
        metric = summary["metric"]
        title = TITLES.get(workload, workload)
        lines.append(f"**{title}** ({UNITS[metric]})")
        if summary["generator_bound"]:
            lines.append("")
            lines.append(
                "_Direct is not clearly faster than every proxy here: this workload is "
                "limited by the load generator or the backend, not only by the proxies._"
            )
        lines.append("")
        extra = " | p50 µs | p99 µs" if workload == "pingpong_1" else ""
        cpu = "CPU s / 100k msgs" if metric != "mb_per_s" else "CPU s / GB"
        lines.append(
            f"| target | {UNITS[metric]} | × nginx | × nginx, each round | × best of three "
            f"| × direct | {cpu}{extra} |"
        )
        lines.append("|---" * (7 + (2 if extra else 0)) + "|")
        for name in ordered(summary["targets"]):
            row = summary["targets"][name]
            cost = row.get("cpu_s_per_gb" if metric == "mb_per_s" else "cpu_s_per_100k_msgs")
            cells = [
                LABELS.get(name, name),
                fmt(row.get(metric)),
                fmt(row.get("ratio_to_nginx"), 2),
                each_round(result, workload, name, metric),
                fmt(row.get("ratio_to_best_of_three"), 2),
                fmt(row.get("ratio_to_direct"), 2),
                fmt(cost, 2),
            ]
            if extra:
                cells += [fmt(row.get("p50_us"), 1), fmt(row.get("p99_us"), 1)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    idle = result.get("idle") or {}
    if idle:
        lines.append(
            f"**Idle WebSockets** ({next(iter(idle.values()))['connections']:,} held open): "
            "proxy RSS per connection"
        )
        lines.append("")
        lines.append("| proxy | KB per connection |")
        lines.append("|---|---|")
        for name in ordered(idle):
            value = idle[name]["kb_per_connection"]
            lines.append(f"| {LABELS.get(name, name)} | {value:.1f} |")
        lines.append("")
    return "\n".join(lines)


def chart(result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(result["summary"])
    idle = result.get("idle") or {}
    panels = len(workloads) + (1 if idle else 0)
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 4), squeeze=False)
    axes = axes[0]
    colors = {
        "direct": "#999999",
        "nginx": "#2f9e44",
        "haproxy": "#1971c2",
        "caddy": "#e8590c",
        "wsproxy": "#862e9c",
        "wsproxy-2w": "#cc5de8",
    }
    for axis, workload in zip(axes, workloads, strict=False):
        summary = result["summary"][workload]
        metric = summary["metric"]
        names = ordered(summary["targets"])
        axis.bar(
            [SHORT.get(name, name) for name in names],
            [summary["targets"][name][metric] for name in names],
            color=[colors.get(name, "#444444") for name in names],
        )
        axis.set_title(TITLES.get(workload, workload), fontsize=9)
        axis.set_ylabel(UNITS[metric])
        axis.tick_params(axis="x", labelrotation=45, labelsize=8)
    if idle:
        idle_axis = axes[-1]
        names = ordered(idle)
        idle_axis.bar(
            [SHORT.get(name, name) for name in names],
            [idle[name]["kb_per_connection"] for name in names],
            color=[colors.get(name, "#444444") for name in names],
        )
        idle_axis.set_title("RSS per idle WebSocket (lower is better)", fontsize=9)
        idle_axis.set_ylabel("KB")
        idle_axis.tick_params(axis="x", labelrotation=45, labelsize=8)
    fig.tight_layout()
    fig.savefig(CHART, dpi=110)


def main() -> int:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else max((HERE / "results").glob("bench-*.json"))
    result = json.loads(path.read_text())
    text = DOC.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{DOC} lacks the {START} / {END} markers")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    source = f"Source: `{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}`.\n\n"
    DOC.write_text(before + START + "\n" + source + table(result) + END + after)
    chart(result)
    print(f"updated {DOC.relative_to(ROOT)} and {CHART.relative_to(ROOT)} from {path.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
