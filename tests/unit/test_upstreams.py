"""Server choice and passive health, without sockets."""

from __future__ import annotations

from wsproxy.config import Address, Upstream
from wsproxy.errors import UpstreamFailure
from wsproxy.upstreams.balancer import RoundRobin
from wsproxy.upstreams.health import DOWN_FOR
from wsproxy.upstreams.servers import Server, Upstreams


class Recorder:
    """upstreams.HealthEvents that keeps what it was told."""

    def __init__(self) -> None:
        self.states: list[tuple[str, bool, str]] = []
        self.failures: list[tuple[str, str]] = []

    def server_state(self, server: Server, up: bool, why: str) -> None:
        self.states.append((server.label, up, why))

    def server_failed(self, server: Server, failure: UpstreamFailure) -> None:
        self.failures.append((server.label, failure.kind))


def upstreams(*ports: int) -> tuple[Upstreams, Recorder]:
    events = Recorder()
    settings = Upstream("app", tuple(Address("127.0.0.1", port) for port in ports))
    return Upstreams({"app": settings}, events), events


def test_round_robin_rotates_through_positions() -> None:
    rotation = RoundRobin(3)
    assert [rotation.pick_index() for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_group_picks_servers_in_turn() -> None:
    ups, _ = upstreams(1, 2, 3)
    group = ups.groups["app"]
    assert [group.pick().label for _ in range(4)] == [
        "127.0.0.1:1",
        "127.0.0.1:2",
        "127.0.0.1:3",
        "127.0.0.1:1",
    ]


def test_a_failure_marks_down_until_an_answer_or_the_time_passes() -> None:
    ups, events = upstreams(1, 2)
    one, two = ups.groups["app"].servers
    ups.failed(one, UpstreamFailure("refused", "x"), now=100.0)
    assert events.failures == [("127.0.0.1:1", "refused")]
    assert not ups.all_down(100.0)
    ups.failed(two, UpstreamFailure("timeout", "x"), now=100.0)
    assert ups.all_down(100.0)
    ups.ok(one)
    assert ups.states(100.0)["app"] == {"127.0.0.1:1": "up", "127.0.0.1:2": "down"}
    assert not ups.all_down(100.0 + DOWN_FOR)
    assert events.states == [
        ("127.0.0.1:1", False, "failed"),
        ("127.0.0.1:2", False, "failed"),
        ("127.0.0.1:1", True, "answered"),
        ("127.0.0.1:2", True, "expired"),
    ]
