"""Server choice and health, without sockets: the balancers and the state machine."""

from __future__ import annotations

import collections
import itertools

import pytest

from wsproxy.config import Address, HealthCheck, ServerSettings, Upstream
from wsproxy.errors import UpstreamFailure
from wsproxy.upstreams.balancer import WeightedRoundRobin, least_loaded, rendezvous
from wsproxy.upstreams.servers import Server, Upstreams

REFUSED = UpstreamFailure("refused", "connection refused", connecting=True)


class Recorder:
    """upstreams.HealthEvents that keeps what it was told."""

    def __init__(self) -> None:
        self.states: list[tuple[str, bool]] = []
        self.whys: list[str] = []
        self.failures: list[tuple[str, str]] = []

    def server_state(self, server: Server, up: bool, why: str) -> None:
        self.states.append((server.label, up))
        self.whys.append(why)

    def server_failed(self, server: Server, failure: UpstreamFailure) -> None:
        self.failures.append((server.label, failure.kind))


def upstreams(*weights: int, **settings: object) -> tuple[Upstreams, Recorder]:
    events = Recorder()
    servers = tuple(
        ServerSettings(Address("127.0.0.1", port), weight)
        for port, weight in enumerate(weights, start=1)
    )
    upstream = Upstream("app", servers, **settings)  # type: ignore[arg-type]
    return Upstreams({"app": upstream}, events), events


def labels(picked: list[Server | None]) -> list[str]:
    return [server.label.rpartition(":")[2] if server else "-" for server in picked]


# --- balancers -----------------------------------------------------------------


def test_smooth_weighted_round_robin_interleaves_by_weight() -> None:
    rotation = WeightedRoundRobin([5, 1, 1])
    picks = [rotation.pick([0, 1, 2]) for _ in range(7)]
    assert picks == [0, 0, 1, 0, 2, 0, 0]  # nginx's sequence: a a b a c a a
    rotation = WeightedRoundRobin([1, 1, 1])
    assert [rotation.pick([0, 1, 2]) for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_weighted_round_robin_skips_what_is_not_a_candidate() -> None:
    rotation = WeightedRoundRobin([2, 1, 1])
    picks = collections.Counter(rotation.pick([1, 2]) for _ in range(100))
    assert picks == {1: 50, 2: 50}


def test_least_loaded_compares_load_per_weight_and_alternates_ties() -> None:
    rotation = WeightedRoundRobin([1, 1, 2])
    assert least_loaded([0, 1, 2], [3, 1, 3], [1, 1, 2], rotation) == 1
    # 2/1 against 3/2: the heavier server is less loaded for its weight.
    assert least_loaded([0, 1, 2], [2, 2, 3], [1, 1, 2], rotation) == 2
    ties = [least_loaded([0, 1], [4, 4, 0], [1, 1, 2], rotation) for _ in range(4)]
    assert sorted(collections.Counter(ties).values()) == [2, 2]


def test_rendezvous_is_stable_spreads_by_weight_and_moves_only_a_dead_servers_keys() -> None:
    names = [b"10.0.0.1:80", b"10.0.0.2:80", b"10.0.0.3:80"]
    weights = [1, 1, 2]
    keys = [f"192.0.2.{i}".encode() for i in range(256)] + [
        f"2001:db8::{i:x}".encode() for i in range(1744)
    ]
    before = {key: rendezvous([0, 1, 2], key, names, weights) for key in keys}
    assert before == {key: rendezvous([0, 1, 2], key, names, weights) for key in keys}
    shares = collections.Counter(before.values())
    assert 0.40 < shares[2] / len(keys) < 0.60  # weight 2 of 4
    after = {key: rendezvous([0, 2], key, names, weights) for key in keys}
    moved = [key for key in keys if before[key] != after[key]]
    assert moved
    assert all(before[key] == 1 for key in moved)  # only the dead server's keys


# --- groups --------------------------------------------------------------------


def test_group_picks_by_weight_in_turn() -> None:
    ups, _ = upstreams(3, 1)
    group = ups.groups["app"]
    assert labels([group.pick() for _ in range(8)]) == ["1", "1", "2", "1", "1", "1", "2", "1"]


def test_least_conn_counts_open_tunnels_as_load() -> None:
    ups, _ = upstreams(1, 1, 1, balance="least_conn")
    one, two, three = ups.groups["app"].servers
    one.tunnels = 5
    three.in_flight = 1
    assert ups.groups["app"].pick() is two
    two.tunnels = 2
    assert ups.groups["app"].pick() is three


def test_ip_hash_keeps_a_client_on_its_server_until_that_server_is_down() -> None:
    ups, _ = upstreams(1, 1, 1, balance="ip_hash", fail_timeout=10.0)
    group = ups.groups["app"]
    picks = {f"198.51.100.{i}": group.pick(client=f"198.51.100.{i}") for i in range(60)}
    assert len(set(picks.values())) == 3
    assert all(group.pick(client=ip) is server for ip, server in picks.items())
    down = next(iter(picks.values()))
    assert down is not None
    ups.failed(down, REFUSED, now=100.0)
    for ip, server in picks.items():
        again = group.pick(client=ip, now=100.0)
        assert again is not down
        if server is not down:
            assert again is server


def test_tried_servers_are_skipped_and_none_is_left_at_the_end() -> None:
    ups, _ = upstreams(1, 1, 1)
    group = ups.groups["app"]
    tried: set[Server] = set()
    for _ in range(3):
        server = group.pick(tried=frozenset(tried))
        assert server is not None
        assert server not in tried
        tried.add(server)
    assert group.pick(tried=frozenset(tried)) is None


# --- passive health --------------------------------------------------------------


def test_max_fails_in_a_row_take_a_server_out_then_one_trial_brings_it_back() -> None:
    ups, events = upstreams(1, 1, max_fails=2, fail_timeout=10.0)
    group = ups.groups["app"]
    one, two = group.servers
    ups.failed(one, REFUSED, now=100.0)
    ups.ok(one)  # a success in between: the count starts again
    ups.failed(one, REFUSED, now=100.0)
    assert one.health.up
    ups.failed(one, REFUSED, now=100.0)
    assert not one.health.up
    assert labels([group.pick(now=105.0) for _ in range(3)]) == ["2", "2", "2"]
    # fail_timeout passed: on probation, and the next pick is its one trial.
    picks = [group.pick(now=110.0) for _ in range(4)]
    assert picks.count(one) == 1
    assert one.health.up  # counted up (it will be tried), gauge 1
    ups.failed(one, REFUSED, now=110.5)  # the trial failed: out again at once
    assert not one.health.up
    assert [group.pick(now=120.5) for _ in range(3)].count(one) == 1
    ups.ok(one)  # the trial answered
    assert one.health.up
    assert not ups.health.watch
    assert events.states == [
        ("127.0.0.1:1", False),
        ("127.0.0.1:1", True),
        ("127.0.0.1:1", False),
        ("127.0.0.1:1", True),
    ]
    assert events.whys[0].startswith("2 attempts in a row failed (refused: connection refused)")
    assert events.failures == [("127.0.0.1:1", "refused")] * 4
    assert two.health.up


def test_a_trial_left_unanswered_frees_the_server_for_another_after_fail_timeout() -> None:
    ups, _ = upstreams(1, 1, fail_timeout=10.0)
    group = ups.groups["app"]
    one, _two = group.servers
    ups.failed(one, REFUSED, now=100.0)
    trial = [group.pick(now=110.0) for _ in range(2)]
    assert trial.count(one) == 1  # claimed; its client went away, no outcome
    assert one not in [group.pick(now=119.0) for _ in range(4)]
    assert one in [group.pick(now=120.0) for _ in range(2)]


def test_max_fails_zero_never_takes_a_server_out() -> None:
    ups, events = upstreams(1, max_fails=0)
    (one,) = ups.groups["app"].servers
    for _ in range(5):
        ups.failed(one, REFUSED, now=1.0)
    assert one.health.up
    assert events.states == []
    assert len(events.failures) == 5


def test_when_every_server_is_out_one_is_tried_anyway_and_readyz_says_down() -> None:
    ups, _ = upstreams(1, 1)
    group = ups.groups["app"]
    for server in group.servers:
        ups.failed(server, REFUSED, now=100.0)
    assert ups.all_down(100.0)
    assert group.pick(now=101.0) in group.servers
    assert ups.states(101.0) == {"app": {"127.0.0.1:1": "down", "127.0.0.1:2": "down"}}
    assert not ups.all_down(110.0)  # on probation: counted up until its trial says otherwise


# --- active health ---------------------------------------------------------------


@pytest.mark.parametrize(("fails", "passes"), [(1, 1), (3, 2)])
def test_checks_take_a_server_out_after_fails_and_back_after_passes(
    fails: int, passes: int
) -> None:
    check = HealthCheck("/healthz", fails=fails, passes=passes)
    ups, events = upstreams(1, 1, health=check)
    group = ups.groups["app"]
    one, _two = group.servers
    for _ in range(fails - 1):
        ups.health.check_result(one, False, "503")
        ups.health.check_result(one, True)  # not in a row: no change
    for _ in range(fails):
        assert one.health.up
        ups.health.check_result(one, False, "503")
    assert not one.health.up
    assert one not in {group.pick(now=1.0) for _ in range(4)}
    ups.ok(one)  # a request's answer does not override the checks
    assert not one.health.up
    for _ in range(passes):
        assert not one.health.up
        ups.health.check_result(one, True)
    assert one.health.up
    assert events.states == [("127.0.0.1:1", False), ("127.0.0.1:1", True)]
    assert "503" in events.whys[0]


# --- reload ----------------------------------------------------------------------


def test_a_reload_keeps_the_servers_it_names_again_with_their_load_and_health() -> None:
    events = Recorder()
    old_settings = Upstream(
        "app", tuple(ServerSettings(Address("127.0.0.1", port)) for port in (1, 2))
    )
    old = Upstreams({"app": old_settings}, events)
    one, two = old.groups["app"].servers
    one.tunnels = 3
    old.failed(two, REFUSED, now=1.0)
    new_settings = Upstream(
        "app",
        (ServerSettings(Address("127.0.0.1", 2), 5), ServerSettings(Address("127.0.0.1", 3))),
        read_timeout=5.0,
    )
    new = Upstreams({"app": new_settings}, events, reuse=old)
    kept, added = new.groups["app"].servers
    assert kept is two
    assert (kept.weight, kept.settings.read_timeout, kept.pool.upstream.read_timeout) == (
        5,
        5.0,
        5.0,
    )
    assert not kept.health.up
    assert kept in new.health.watch
    assert added.label == "127.0.0.1:3"
    assert new.dropped == [one]


def test_pick_sequences_do_not_depend_on_how_many_groups_exist() -> None:
    ups, _ = upstreams(1, 1)
    group = ups.groups["app"]
    assert labels(list(itertools.islice(iter(group.pick, None), 4))) == ["1", "2", "1", "2"]


def test_a_failure_reported_to_the_old_configuration_after_a_reload_counts() -> None:
    """Requests in flight across a reload report to the same health table."""
    old, _events = upstreams(1)
    new = Upstreams({"app": old.groups["app"].settings}, Recorder(), reuse=old)
    (server,) = new.groups["app"].servers
    old.failed(server, REFUSED, now=100.0)
    assert new.all_down(100.0)
    assert not new.all_down(110.0)  # fail_timeout passed: on probation
    new.ok(server)
    assert server.health.up
    assert not new.health.watch


def test_a_reload_that_removes_the_checks_lets_a_server_they_held_out_back() -> None:
    check = HealthCheck("/h", fails=1, passes=1)
    old, events = upstreams(1, 1, health=check)
    one, two = old.groups["app"].servers
    old.health.check_result(one, False, "status 500")
    assert not one.health.up
    settings = Upstream("app", old.groups["app"].settings.servers)
    new = Upstreams({"app": settings}, events, reuse=old)
    assert one.health.up
    assert {new.groups["app"].pick(now=1.0) for _ in range(4)} == {one, two}
    assert events.whys[-1] == "its health checks were removed"
