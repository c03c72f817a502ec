"""What the status page shows beyond live sessions: bounded, pure, mergeable.

* ``CloseTimeline``: how sessions ended (``closed_by`` and close code) in
  fixed wall-clock buckets over the last few minutes: ``BUCKETS`` buckets of
  ``BUCKET_SECONDS``, so its size never depends on traffic.  Buckets start on
  multiples of ``BUCKET_SECONDS`` since the epoch, so the timelines of several
  workers add up bucket by bucket (``merge_timelines``).
* ``upgrade_totals``: WebSocket handshakes by route and result since start,
  read from ``wsproxy_websocket_upgrades_total`` (not counted twice).

Nothing here holds a path, a header or a body: only configured route names,
the fixed result and ``closed_by`` words, and close-code labels (bounded by
``sessions.close_code_label``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Final

#: Width of one bucket of the close timeline, in seconds.
BUCKET_SECONDS: Final = 10
#: Buckets kept: five minutes.
BUCKETS: Final = 30


class CloseTimeline:
    __slots__ = ("_buckets",)

    def __init__(self) -> None:
        #: Bucket start (epoch seconds) -> (closed_by counts, code counts).
        self._buckets: dict[int, tuple[Counter[str], Counter[str]]] = {}

    def add(self, now: float, closed_by: str, code: str) -> None:
        start = int(now // BUCKET_SECONDS) * BUCKET_SECONDS
        bucket = self._buckets.get(start)
        if bucket is None:
            bucket = self._buckets[start] = (Counter(), Counter())
            self._expire(start)
        bucket[0][closed_by] += 1
        bucket[1][code] += 1

    def _expire(self, newest: int) -> None:
        oldest = newest - (BUCKETS - 1) * BUCKET_SECONDS
        for start in [s for s in self._buckets if s < oldest]:
            del self._buckets[start]

    def export(self, now: float) -> dict[str, Any]:
        """Every bucket of the window ending now, oldest first, empty ones too."""
        newest = int(now // BUCKET_SECONDS) * BUCKET_SECONDS
        self._expire(newest)
        buckets = []
        for start in range(newest - (BUCKETS - 1) * BUCKET_SECONDS, newest + 1, BUCKET_SECONDS):
            closed_by, codes = self._buckets.get(start, (Counter(), Counter()))
            buckets.append({"start": start, "closed_by": dict(closed_by), "codes": dict(codes)})
        return {"bucket_seconds": BUCKET_SECONDS, "buckets": buckets}


def merge_timelines(timelines: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Several workers' exported timelines as one (bucket by bucket)."""
    merged: dict[int, tuple[Counter[str], Counter[str]]] = {}
    for timeline in timelines:
        for bucket in timeline.get("buckets", []):
            closed_by, codes = merged.setdefault(int(bucket["start"]), (Counter(), Counter()))
            closed_by.update(bucket.get("closed_by", {}))
            codes.update(bucket.get("codes", {}))
    starts = sorted(merged)[-BUCKETS:]
    return {
        "bucket_seconds": BUCKET_SECONDS,
        "buckets": [
            {"start": s, "closed_by": dict(merged[s][0]), "codes": dict(merged[s][1])}
            for s in starts
        ],
    }


def upgrade_totals(samples: Iterable[tuple[str, str, float]]) -> dict[str, dict[str, int]]:
    """Handshakes by route and result from ``(route, result, value)``: the
    samples of ``wsproxy_websocket_upgrades_total``, which already counts
    them (the series at zero are left out)."""
    out: dict[str, dict[str, int]] = {}
    for route, result, value in sorted(samples):
        if value:
            out.setdefault(route, {})[result] = int(value)
    return out


def merge_upgrades(exports: Iterable[Mapping[str, Mapping[str, int]]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for export in exports:
        for route, results in export.items():
            merged = out.setdefault(route, {})
            for result, count in results.items():
                merged[result] = merged.get(result, 0) + int(count)
    return out
