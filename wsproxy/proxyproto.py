"""PROXY protocol v1 and v2 headers (HAProxy's specification): pure, sans-IO.

An L4 load balancer in front (AWS NLB, HAProxy in TCP mode, a Kubernetes
Service with a PROXY-speaking balancer) opens the TCP connection itself, so
the peer address wsproxy sees is the balancer's.  With PROXY protocol the
balancer writes one header first, saying whose connection it relays; a
listener with ``proxy_protocol: true`` reads that header before the HTTP
parser (or the TLS handshake) sees a byte.

``parse(data)`` looks at the bytes received so far and returns:

* ``None``: not enough bytes yet (never more than ``MAX_V2`` are needed);
* a :class:`ProxyHeader`: the addresses and how many bytes the header took
  (the rest belongs to the connection: HTTP, or a TLS ClientHello);
* or raises :class:`ProxyProtocolError` when the bytes cannot be a valid
  header: at once for a wrong signature or v2 fixed part, at the line's end
  (CRLF, or 107 bytes) for v1.  The connection is then dropped and counted.

Theory of operation, from the specification (haproxy.org
``proxy-protocol.txt``):

* v1 is one text line, ``PROXY TCP4|TCP6|UNKNOWN ...\\r\\n``, at most 107
  bytes with its CRLF (§2.1); ``UNKNOWN`` says nothing about the client.
* v2 starts with a 12-byte signature that cannot begin an HTTP request or a
  TLS record, then a version/command byte (``0x21`` PROXY, ``0x20`` LOCAL:
  a health check from the balancer itself, to be treated as a direct
  connection), a family/protocol byte and a 16-bit length of what follows:
  the addresses (12 bytes for TCP over IPv4, 36 over IPv6) then optional
  TLVs, which are skipped (§2.2).
* Only what the specification allows is accepted: one space between v1
  fields, addresses that parse for their family, ports 0-65535 without
  leading zeros, a STREAM protocol in v2.  Whole, split at every offset or
  one byte at a time, the result is the same (tested).
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass
from typing import Final

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX: Final = b"PROXY "
#: §2.1: "a 108-byte buffer is always enough" (107 plus a NUL).
MAX_V1: Final = 107
#: A v2 header's fixed part: signature, version/command, family, length.
V2_FIXED: Final = 16
#: The largest v2 header (its length field is 16 bits).
MAX_V2: Final = V2_FIXED + 0xFFFF

_PORT = rb"(0|[1-9][0-9]{0,4})"
_V1_TCP = re.compile(
    rb"PROXY (TCP4|TCP6) ([0-9a-fA-F.:]+) ([0-9a-fA-F.:]+) " + _PORT + b" " + _PORT + b"\r\n"
)
_V1_UNKNOWN = re.compile(rb"PROXY UNKNOWN(?: [^\r\n]*)?\r\n")


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY protocol header (the reason, short)."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    version: int
    #: The client's (source) and the balancer's listening (destination)
    #: address, or None when the header gives none (v1 UNKNOWN, v2 LOCAL or
    #: UNSPEC): the connection is then taken as it is.
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    #: Bytes the header took; what follows is the connection's own data.
    length: int


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of ``data``, or None if more bytes are needed."""
    if data[:1] == b"P":
        return _v1(data)
    if data[:1] == b"\r":
        return _v2(data)
    if not data:
        return None
    raise ProxyProtocolError("no PROXY protocol header")


def _v1(data: bytes) -> ProxyHeader | None:
    head = data[: len(V1_PREFIX)]
    if not V1_PREFIX.startswith(head):
        raise ProxyProtocolError("no PROXY protocol header")
    end = data.find(b"\r\n", 0, MAX_V1)
    if end < 0:
        if len(data) >= MAX_V1:
            raise ProxyProtocolError(f"a PROXY v1 line longer than {MAX_V1} bytes")
        if b"\n" in data or b"\r" in data[:-1]:
            raise ProxyProtocolError("a malformed PROXY v1 line")
        return None
    line = data[: end + 2]
    if _V1_UNKNOWN.fullmatch(line):
        return ProxyHeader(1, None, None, len(line))
    match = _V1_TCP.fullmatch(line)
    if match is None:
        raise ProxyProtocolError("a malformed PROXY v1 line")
    family = 4 if match[1] == b"TCP4" else 6
    source = _address(match[2], family), _port(match[4])
    destination = _address(match[3], family), _port(match[5])
    return ProxyHeader(1, source, destination, len(line))


def _address(text: bytes, family: int) -> str:
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except ValueError:
        raise ProxyProtocolError("a PROXY v1 address that is not an IP address") from None
    if address.version != family:
        raise ProxyProtocolError(f"a PROXY v1 address that is not IPv{family}")
    return _text(address)


def _text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An IPv4-mapped IPv6 address (a dual-stack balancer's) as the IPv4
    address it is, so trusted_proxies, ip_hash and the per-client limit see
    one client, not two."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _port(text: bytes) -> int:
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError("a PROXY v1 port above 65535")
    return port


def _v2(data: bytes) -> ProxyHeader | None:
    head = data[: len(V2_SIGNATURE)]
    if not V2_SIGNATURE.startswith(head):
        raise ProxyProtocolError("no PROXY protocol header")
    if len(data) < V2_FIXED:
        if len(data) > 12 and data[12] >> 4 != 2:
            raise ProxyProtocolError(f"PROXY protocol version {data[12] >> 4}, not 2")
        return None
    version_command, family_protocol, length = struct.unpack_from("!BBH", data, 12)
    if version_command >> 4 != 2:
        raise ProxyProtocolError(f"PROXY protocol version {version_command >> 4}, not 2")
    command = version_command & 0x0F
    if command not in (0, 1):
        raise ProxyProtocolError(f"an unknown PROXY v2 command {command}")
    total = V2_FIXED + length
    if len(data) < total:
        return None
    if command == 0:  # LOCAL: the balancer's own connection (a health check)
        return ProxyHeader(2, None, None, total)
    family, protocol = family_protocol >> 4, family_protocol & 0x0F
    if family_protocol == 0:  # AF_UNSPEC, UNSPEC: nothing said about the client
        return ProxyHeader(2, None, None, total)
    if family > 3 or protocol > 2 or family == 0 or protocol == 0:
        raise ProxyProtocolError(f"an unspecified PROXY v2 family/protocol 0x{family_protocol:02x}")
    if protocol != 1:
        raise ProxyProtocolError("a PROXY v2 header for a protocol other than TCP")
    body = data[V2_FIXED:total]
    if family == 1:
        if len(body) < 12:
            raise ProxyProtocolError("a PROXY v2 header too short for IPv4 addresses")
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", body)
    elif family == 2:
        if len(body) < 36:
            raise ProxyProtocolError("a PROXY v2 header too short for IPv6 addresses")
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", body)
    else:
        raise ProxyProtocolError("a PROXY v2 header for an address family other than IP")
    source = _text(ipaddress.ip_address(src)), sport
    destination = _text(ipaddress.ip_address(dst)), dport
    return ProxyHeader(2, source, destination, total)
