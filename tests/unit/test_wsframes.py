"""The passive frame observer: counts, close frames, errors, any chunking.

Frames are encoded by wsproto (an independent implementation), and expected
counts come from the generator's own list of what it encoded.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol

from tests.support.wire import encode_frame
from wsproxy.wsframes import (
    NO_STATUS_CODE,
    OPCODE_NAMES,
    RSV1,
    FrameBudget,
    FrameObserver,
    allowed_rsv_bits,
    close_code_is_valid,
    encode_close,
)


@dataclass
class Expected:
    frames: list[int] = field(default_factory=lambda: [0] * 16)
    messages: int = 0
    close_code: int | None = None
    close_reason: str = ""
    data: bytearray = field(default_factory=bytearray)


# One item per message or control frame: ("text"|"binary", [fragments]) or
# ("ping"|"pong", payload) or ("close", (code, reason)).
fragments = st.lists(st.binary(max_size=300), min_size=1, max_size=4)
texts = st.lists(st.text(max_size=80), min_size=1, max_size=4)
items = st.one_of(
    st.tuples(st.just("binary"), fragments),
    st.tuples(st.just("text"), texts),
    st.tuples(st.just("ping"), st.binary(max_size=125)),
    st.tuples(st.just("pong"), st.binary(max_size=125)),
)
closes = st.tuples(
    st.sampled_from([1000, 1001, 1011, 3000, 4001, 4999]), st.text(max_size=30)
).filter(lambda cr: len(cr[1].encode()) <= 123)


def encode(
    sequence: list[tuple[str, object]], client: bool, close: tuple[int, str] | None
) -> Expected:
    proto = FrameProtocol(client=client, extensions=[])
    expected = Expected()
    for kind, payload in sequence:
        if kind in ("text", "binary"):
            assert isinstance(payload, list)
            for index, part in enumerate(payload):
                fin = index == len(payload) - 1
                expected.data += proto.send_data(part, fin)
                opcode = 0 if index else (1 if kind == "text" else 2)
                expected.frames[opcode] += 1
            expected.messages += 1
        elif kind == "ping":
            assert isinstance(payload, bytes)
            expected.data += proto.ping(payload)
            expected.frames[9] += 1
        else:
            assert isinstance(payload, bytes)
            expected.data += proto.pong(payload)
            expected.frames[10] += 1
    if close is not None:
        expected.data += proto.close(close[0], close[1])
        expected.frames[8] += 1
        expected.close_code, expected.close_reason = close
    return expected


def observe(chunks: list[bytes], client: bool) -> FrameObserver:
    observer = FrameObserver(client_side=client)
    for chunk in chunks:
        observer.feed(chunk)
    return observer


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def assert_matches(observer: FrameObserver, expected: Expected) -> None:
    assert observer.error is None
    assert list(observer.frames) == expected.frames
    assert observer.messages == expected.messages
    assert observer.bytes == len(expected.data)
    assert observer.close_code == expected.close_code
    assert observer.close_reason == expected.close_reason
    assert not observer.in_frame


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    sequence=st.lists(items, max_size=12),
    close=st.one_of(st.none(), closes),
    client=st.booleans(),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
)
def test_random_streams_count_the_same_whole_and_split(
    sequence: list[tuple[str, object]],
    close: tuple[int, str] | None,
    client: bool,
    cuts: list[int],
) -> None:
    expected = encode(sequence, client, close)
    data = bytes(expected.data)
    assert_matches(observe([data], client), expected)
    assert_matches(observe(split(data, cuts), client), expected)


def observe_budgeted(
    chunks: list[bytes], client: bool, per_feed: int, per_turn: int
) -> tuple[FrameObserver, list[int]]:
    """Feed as the tunnel does: each chunk waits until the backlog is parsed.

    Returns the observer and how many frames each call parsed at most, turn
    by turn (the budget is refilled between "turns").
    """
    turns: list[int] = []
    budget = FrameBudget(per_turn=per_turn, per_feed=per_feed, floor=1)
    observer = FrameObserver(client_side=client, budget=budget)

    def turn(done: bool) -> bool:
        turns.append(per_turn - budget.left)
        budget.refill()
        return done

    for chunk in chunks:
        done = turn(observer.feed(chunk))
        while not done:
            assert observer.pending
            assert observer.in_frame  # no boundary is known while bytes wait
            done = turn(observer.resume())
        assert not observer.pending
    return observer, turns


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    sequence=st.lists(items, max_size=30),
    close=st.one_of(st.none(), closes),
    client=st.booleans(),
    cuts=st.lists(st.integers(min_value=0), max_size=6),
    per_feed=st.integers(min_value=1, max_value=5),
)
def test_a_budget_parses_later_but_counts_the_same(
    sequence: list[tuple[str, object]],
    close: tuple[int, str] | None,
    client: bool,
    cuts: list[int],
    per_feed: int,
) -> None:
    expected = encode(sequence, client, close)
    data = bytes(expected.data)
    observer, turns = observe_budgeted(split(data, cuts), client, per_feed, per_feed)
    assert_matches(observer, expected)
    assert max(turns, default=0) <= per_feed


def test_a_flood_of_tiny_frames_is_parsed_a_budget_at_a_time() -> None:
    flood = encode_frame(0x2, b"", mask=True) * 10_000
    close = encode_frame(0x8, (1000).to_bytes(2, "big"), mask=True)
    observer, turns = observe_budgeted([flood + close], True, per_feed=256, per_turn=512)
    assert observer.frames[0x2] == 10_000
    assert observer.close_code == 1000
    assert turns[:-1] == [256] * (len(turns) - 1)  # every call but the last used its grant
    assert len(turns) == -(-10_001 // 256)


def test_the_floor_lets_a_small_chunk_through_when_the_turn_is_spent() -> None:
    budget = FrameBudget(per_turn=100, per_feed=100, floor=8)
    flooder = FrameObserver(client_side=True, budget=budget)
    assert not flooder.feed(encode_frame(0x2, b"", mask=True) * 1000)
    assert budget.left <= 0
    victim = FrameObserver(client_side=True, budget=budget)
    assert victim.feed(encode_frame(0x1, b"hi", mask=True) * 3)
    assert victim.messages == 3


def test_the_first_spend_of_a_turn_asks_for_a_refill_once() -> None:
    calls: list[int] = []
    budget = FrameBudget(per_turn=10, per_feed=10, on_first_spend=lambda: calls.append(1))
    budget.spend(0)
    assert calls == []
    budget.spend(3)
    budget.spend(3)
    assert calls == [1]
    budget.refill()
    assert budget.left == 10
    budget.spend(1)
    assert calls == [1, 1]


def test_every_offset_and_byte_by_byte_give_the_same_counts() -> None:
    sequence: list[tuple[str, object]] = [
        ("text", ["héllo", " wörld"]),
        ("binary", [b"\x00" * 126]),
        ("ping", b"p"),
        ("binary", [b"x" * 70000]),
        ("pong", b""),
    ]
    expected = encode(sequence, True, (4001, "bye"))
    data = bytes(expected.data)
    for offset in range(0, len(data), 97):
        assert_matches(observe([data[:offset], data[offset:]], True), expected)
    for offset in range(0, 40):  # every split inside the first headers
        assert_matches(observe([data[:offset], data[offset:]], True), expected)
    assert_matches(observe([data[i : i + 1] for i in range(len(data))], True), expected)


@given(st.binary(max_size=2000), st.booleans(), st.lists(st.integers(min_value=0), max_size=8))
def test_arbitrary_bytes_never_raise(data: bytes, client: bool, cuts: list[int]) -> None:
    observer = observe(split(data, cuts), client)
    assert observer.bytes == len(data)


def test_close_without_code_is_1005() -> None:
    observer = observe([encode_frame(0x8, b"", mask=True)], True)
    assert observer.close_code == NO_STATUS_CODE
    assert observer.saw_close


def test_close_code_and_reason_are_unmasked_from_a_client_frame() -> None:
    observer = observe([encode_frame(0x8, (4001).to_bytes(2, "big") + b"gone", mask=True)], True)
    assert (observer.close_code, observer.close_reason) == (4001, "gone")


def test_only_the_first_close_frame_counts() -> None:
    data = encode_frame(0x8, (1000).to_bytes(2, "big"), mask=False)
    data += encode_frame(0x8, (1001).to_bytes(2, "big"), mask=False)
    observer = observe([data], False)
    assert observer.close_code == 1000
    assert observer.frames[8] == 2


@pytest.mark.parametrize(
    ("frame", "client", "error"),
    [
        (encode_frame(0x3, b"x"), True, "reserved data opcode 0x3"),
        (encode_frame(0xB, b"x"), True, "reserved control opcode 0xb"),
        (encode_frame(0x1, b"x", rsv1=True), True, "reserved bits"),
        (encode_frame(0x1, b"x", mask=False), True, "unmasked client frame"),
        (encode_frame(0x1, b"x", mask=True), False, "masked server frame"),
        (encode_frame(0x9, b"x" * 126), True, "control frame longer than 125 bytes"),
        (encode_frame(0x9, b"x", fin=False), True, "fragmented control frame"),
        (encode_frame(0x0, b"x"), True, "continuation frame without a message"),
        (encode_frame(0x1, b"a", fin=False) + encode_frame(0x2, b"b"), True, "new data frame"),
        (encode_frame(0x8, b"\x03"), True, "close frame with a 1-byte payload"),
    ],
)
def test_protocol_errors_are_flagged_and_observation_stops(
    frame: bytes, client: bool, error: str
) -> None:
    after = encode_frame(0x1, b"more", mask=client)
    observer = observe([frame + after], client)
    assert observer.error is not None
    assert error in observer.error
    assert observer.bytes == len(frame) + len(after)
    assert observer.frames[1] <= 1  # the frame after the error was not counted


def test_rsv1_is_legal_with_permessage_deflate() -> None:
    allowed = allowed_rsv_bits("permessage-deflate; client_max_window_bits")
    assert allowed == RSV1
    observer = FrameObserver(client_side=True, allowed_rsv=allowed)
    observer.feed(encode_frame(0x1, b"compressed", rsv1=True))
    assert observer.error is None
    assert observer.messages == 1


@pytest.mark.parametrize(
    "frame",
    [
        encode_frame(0x1, b"a", fin=False) + encode_frame(0x0, b"b", rsv1=True),
        encode_frame(0x9, b"p", rsv1=True),
    ],
)
def test_rsv1_only_on_the_first_frame_of_a_message(frame: bytes) -> None:
    observer = FrameObserver(client_side=True, allowed_rsv=RSV1)
    observer.feed(frame)
    assert observer.error == "RSV1 set on a continuation or control frame"


def test_in_frame_is_false_only_at_boundaries() -> None:
    frame = encode_frame(0x2, b"x" * 1000, mask=False)
    observer = FrameObserver(client_side=False)
    observer.feed(frame[:1])
    assert observer.in_frame
    observer.feed(frame[1:500])
    assert observer.in_frame
    observer.feed(frame[500:])
    assert not observer.in_frame


def test_opcode_names_cover_all_sixteen_values() -> None:
    assert OPCODE_NAMES[0x1] == "text"
    assert OPCODE_NAMES[0x0] == "continuation"
    assert OPCODE_NAMES[0xA] == "pong"
    assert OPCODE_NAMES.count("reserved") == 10


@pytest.mark.parametrize(
    ("code", "valid"),
    [
        (1000, True),
        (1004, False),
        (1005, False),
        (1006, False),
        (1014, True),
        (1015, False),
        (2999, False),
        (3000, True),
        (4999, True),
        (5000, False),
        (0, False),
    ],
)
def test_close_code_validity_follows_rfc_6455(code: int, valid: bool) -> None:
    assert close_code_is_valid(code) is valid


def test_a_malformed_frame_is_counted_under_its_opcode() -> None:
    observer = observe([encode_frame(0x3, b"x") + encode_frame(0x1, b"after")], True)
    assert observer.frames[0x3] == 1
    assert OPCODE_NAMES[0x3] == "reserved"
    assert observer.frames[0x1] == 0  # observation stopped at the error


# --- the drain: where the proxy may insert its own close frame ---------------


@pytest.mark.parametrize("client", [True, False])
def test_feed_to_boundary_stops_exactly_at_the_end_of_the_frame_in_progress(
    client: bool,
) -> None:
    """Whatever the cut the stream is in when the drain starts, and however the
    rest arrives, the bytes taken end exactly where the frame in progress ends."""
    frames = [
        encode_frame(0x1, b"x" * 300, mask=client, fin=False),
        encode_frame(0x9, b"ping", mask=client),  # control frames may sit inside a message
        encode_frame(0x0, b"z" * 50, mask=client),
        encode_frame(0x2, b"y" * 70_000, mask=client),
        encode_frame(0x8, (1000).to_bytes(2, "big") + b"bye", mask=client),
    ]
    stream = b"".join(frames)
    ends = list(itertools.accumulate(len(f) for f in frames))
    # Every offset through the small frames and the big frame's header, a few inside it.
    cuts = [*range(0, ends[2] + 20), ends[3] - 70_000 // 2, ends[3] - 1, ends[3] + 3]
    for cut in cuts:
        for step in (1, 4096, len(stream)) if cut < ends[2] else (4096, len(stream)):
            observer = FrameObserver(client_side=client)
            observer.feed(stream[:cut])
            boundary = next(end for end in [0, *ends] if end >= cut)
            pos = cut
            taken_to = None
            while pos < len(stream):
                chunk = stream[pos : pos + step]
                taken = observer.feed_to_boundary(chunk)
                if not observer.in_frame:
                    taken_to = pos + taken
                    break
                assert taken == len(chunk)
                pos += len(chunk)
            assert taken_to == boundary, (cut, step)
            assert observer.error is None


def test_encode_close_is_a_valid_frame_both_ways() -> None:
    for mask, client in ((None, False), (b"\x01\x02\x03\x04", True)):
        frame = encode_close(1001, mask)
        protocol = FrameProtocol(client=not client, extensions=[])
        protocol.receive_bytes(frame)
        [parsed] = list(protocol.received_frames())
        assert parsed.opcode.name == "CLOSE"
        assert parsed.payload == (1001, "")
        observer = FrameObserver(client_side=client)
        observer.feed(frame)
        assert (observer.close_code, observer.error) == (1001, None)
