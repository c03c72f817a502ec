"""PROXY protocol headers (wsproxy.proxyproto): pure, fed whole, split and byte by byte."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsproxy.proxyproto import (
    MAX_V1,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    parse,
)

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def v2(
    command: int = 1,
    family: int = 0x11,
    addresses: bytes | None = None,
    tlvs: bytes = b"",
    version: int = 2,
) -> bytes:
    if addresses is None:
        addresses = struct.pack(
            "!4s4sHH",
            ipaddress.ip_address("192.0.2.7").packed,
            ipaddress.ip_address("198.51.100.1").packed,
            51476,
            443,
        )
    body = addresses + tlvs
    return (
        V2_SIGNATURE + bytes([version << 4 | command, family]) + struct.pack("!H", len(body)) + body
    )


def fed(data: bytes) -> ProxyHeader | None:
    """``parse`` on every prefix, as a connection would call it read by read:
    None until the header is complete, then the same header every time."""
    result = None
    for end in range(1, len(data) + 1):
        result = parse(data[:end])
        if result is not None:
            assert parse(data) == result
            return result
    return result


V1_CASES = [
    (
        b"PROXY TCP4 192.0.2.7 198.51.100.1 51476 443\r\n",
        ("192.0.2.7", 51476),
        ("198.51.100.1", 443),
    ),
    (
        b"PROXY TCP6 2001:db8::7 2001:db8::1 51476 443\r\n",
        ("2001:db8::7", 51476),
        ("2001:db8::1", 443),
    ),
    (b"PROXY UNKNOWN\r\n", None, None),
    (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", None, None),
]


@pytest.mark.parametrize(("header", "source", "destination"), V1_CASES)
def test_v1_headers_whole_and_read_by_read(
    header: bytes, source: tuple[str, int] | None, destination: tuple[str, int] | None
) -> None:
    result = fed(header + REQUEST)
    assert result == ProxyHeader(1, source, destination, len(header))
    assert (header + REQUEST)[result.length :] == REQUEST


def test_v2_ipv4_ipv6_local_and_unspec_with_tlvs_skipped() -> None:
    ipv4 = fed(v2(tlvs=b"\x04\x00\x01x") + REQUEST)
    assert ipv4 is not None
    assert (ipv4.version, ipv4.source, ipv4.destination) == (
        2,
        ("192.0.2.7", 51476),
        ("198.51.100.1", 443),
    )
    assert ipv4.length == len(v2(tlvs=b"\x04\x00\x01x"))
    six = struct.pack(
        "!16s16sHH",
        ipaddress.ip_address("2001:db8::7").packed,
        ipaddress.ip_address("2001:db8::1").packed,
        1,
        2,
    )
    ipv6 = fed(v2(family=0x21, addresses=six))
    assert ipv6 is not None
    assert ipv6.source == ("2001:db8::7", 1)
    local = fed(v2(command=0, family=0, addresses=b""))
    assert local == ProxyHeader(2, None, None, 16)
    unspec = fed(v2(family=0x00, addresses=b""))
    assert unspec == ProxyHeader(2, None, None, 16)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (REQUEST, "no PROXY protocol header"),
        (b"\x16\x03\x01\x02\x00", "no PROXY protocol header"),  # a TLS ClientHello
        (b"PROXY TCP4 192.0.2.7 198.51.100.1 51476 443\n", "malformed"),
        (b"PROXY TCP4  192.0.2.7 198.51.100.1 51476 443\r\n", "malformed"),
        (b"PROXY TCP4 192.0.2.7 198.51.100.1 051476 443\r\n", "malformed"),
        (b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 443\r\n", "above 65535"),
        (b"PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n", "not IPv4"),
        (b"PROXY TCP6 192.0.2.7 198.51.100.1 1 2\r\n", "not IPv6"),
        (b"PROXY TCP4 999.0.2.7 198.51.100.1 1 2\r\n", "not an IP address"),
        (b"PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n", "malformed"),
        (b"PROXY TCP4 " + b"1" * MAX_V1, "longer than 107"),
        (v2(version=1), "version 1, not 2"),
        (v2(command=2), "unknown PROXY v2 command"),
        (v2(family=0x12), "other than TCP"),
        (v2(family=0x05, addresses=b""), "unspecified PROXY v2 family/protocol 0x05"),
        (v2(family=0x41, addresses=b""), "unspecified PROXY v2 family/protocol 0x41"),
        (v2(family=0x31, addresses=b"\x00" * 216), "other than IP"),
        (v2(addresses=b"\x00" * 4), "too short for IPv4"),
        (v2(family=0x21), "too short for IPv6"),
    ],
)
def test_a_bad_header_is_refused_as_soon_as_it_is_seen(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyProtocolError, match=reason):
        fed(data)


def test_an_incomplete_header_waits() -> None:
    assert parse(b"") is None
    assert parse(b"PROX") is None
    assert parse(b"PROXY TCP4 192.0.2.7") is None
    assert parse(V2_SIGNATURE[:5]) is None
    assert parse(v2()[:20]) is None


@given(st.binary(max_size=300))
def test_any_bytes_give_a_header_none_or_the_one_error(data: bytes) -> None:
    try:
        result = parse(data)
    except ProxyProtocolError:
        return
    assert result is None or 0 < result.length <= len(data)


@given(st.binary(max_size=64))
def test_what_follows_a_header_is_never_taken(rest: bytes) -> None:
    header = b"PROXY TCP4 192.0.2.7 198.51.100.1 51476 443\r\n"
    result = parse(header + rest)
    assert result is not None
    assert result.length == len(header)
    result2 = parse(v2() + rest)
    assert result2 is not None
    assert result2.length == len(v2())


def test_an_ipv4_mapped_source_is_the_ipv4_address() -> None:
    v1 = b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 4000 443\r\n"
    header = parse(v1)
    assert header is not None
    assert header.source == ("192.0.2.7", 4000)
    mapped = ipaddress.IPv6Address("::ffff:198.51.100.1").packed
    body = mapped + ipaddress.IPv6Address("2001:db8::1").packed + struct.pack("!HH", 5, 443)
    header = parse(v2(family=0x21, addresses=body))
    assert header is not None
    assert header.source == ("198.51.100.1", 5)
