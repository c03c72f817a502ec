"""The status page's bounded summaries (wsproxy.status): pure."""

from __future__ import annotations

from wsproxy.status import (
    BUCKET_SECONDS,
    BUCKETS,
    CloseTimeline,
    merge_timelines,
    merge_upgrades,
    upgrade_totals,
)

T0 = 1_800_000_000.0  # a multiple of BUCKET_SECONDS


def test_the_timeline_is_a_fixed_window_of_buckets() -> None:
    timeline = CloseTimeline()
    timeline.add(T0 + 1, "upstream", "1006")
    timeline.add(T0 + 2, "upstream", "1006")
    timeline.add(T0 + 3, "client", "1000")
    export = timeline.export(T0 + 5)
    assert export["bucket_seconds"] == BUCKET_SECONDS
    assert len(export["buckets"]) == BUCKETS
    last = export["buckets"][-1]
    assert last == {
        "start": int(T0),
        "closed_by": {"upstream": 2, "client": 1},
        "codes": {"1006": 2, "1000": 1},
    }
    assert all(not b["closed_by"] for b in export["buckets"][:-1])


def test_old_buckets_leave_the_window_and_memory() -> None:
    timeline = CloseTimeline()
    for minute in range(60):  # an hour of closes, one per minute
        timeline.add(T0 + minute * 60, "client", "1000")
    export = timeline.export(T0 + 59 * 60)
    assert sum(sum(b["closed_by"].values()) for b in export["buckets"]) == 5  # five minutes
    assert len(timeline._buckets) <= BUCKETS


def test_workers_timelines_add_up_bucket_by_bucket() -> None:
    one, two = CloseTimeline(), CloseTimeline()
    one.add(T0 + 1, "client", "1000")
    two.add(T0 + 2, "client", "1000")
    two.add(T0 - 5, "proxy", "1001")
    merged = merge_timelines([one.export(T0 + 3), two.export(T0 + 3)])
    assert len(merged["buckets"]) == BUCKETS
    assert merged["buckets"][-1]["closed_by"] == {"client": 2}
    assert merged["buckets"][-2]["codes"] == {"1001": 1}


def test_upgrades_by_route_and_result_and_their_merge() -> None:
    export = upgrade_totals(
        [
            ("chat", "accepted", 2.0),
            ("chat", "bad_handshake", 1.0),
            ("api", "upstream_unavailable", 1.0),
            ("api", "accepted", 0.0),  # a series created at zero
        ]
    )
    assert export == {
        "api": {"upstream_unavailable": 1},
        "chat": {"accepted": 2, "bad_handshake": 1},
    }
    assert merge_upgrades([export, {"chat": {"accepted": 3}}])["chat"] == {
        "accepted": 5,
        "bad_handshake": 1,
    }
