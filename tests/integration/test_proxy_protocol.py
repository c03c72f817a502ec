"""``listen[].proxy_protocol`` over real sockets: v1 and v2 headers from a raw
socket name the client in the access log, in ``X-Forwarded-For``, for
``ip_hash`` and for the per-client limit; a bad or missing header drops the
connection and is counted; the header comes before a TLS handshake."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from pathlib import Path

import pytest

from tests.support.backends import swoole_like
from tests.support.certs import issue
from tests.support.http_backends import aiohttp_backend, named_app
from tests.support.observe_helpers import Observed, observed_proxy
from tests.support.proxy import config_text
from tests.support.wire import read_head
from tests.support.ws_helpers import request_bytes, ws_headers
from wsproxy.proxyproto import V2_SIGNATURE

LOOPBACK = "127.0.0.1"


def with_proxy_protocol(text: str, tls: str = "") -> str:
    listen = "listen:\n  - host: 127.0.0.1\n    port: 0\n"
    assert text.startswith(listen)
    return text.replace(listen, listen + "    proxy_protocol: true\n" + tls, 1)


def v1(source: str, port: int = 40000) -> bytes:
    family = "TCP6" if ":" in source else "TCP4"
    destination = "2001:db8::1" if ":" in source else "10.0.0.1"
    return f"PROXY {family} {source} {destination} {port} 443\r\n".encode()


def v2(source: str, port: int = 40000, *, command: int = 0x21, tlvs: bytes = b"") -> bytes:
    address = ipaddress.ip_address(source)
    if address.version == 4:
        body = address.packed + bytes([10, 0, 0, 1]) + struct.pack("!HH", port, 443)
        family = 0x11
    else:
        body = address.packed + bytes(15) + b"\x01" + struct.pack("!HH", port, 443)
        family = 0x21
    body += tlvs
    return V2_SIGNATURE + bytes([command, family]) + struct.pack("!H", len(body)) + body


async def _exchange(port: int, header: bytes, request: bytes) -> bytes:
    """Send ``header`` and ``request`` in one write; the response head."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(header + request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        return head
    finally:
        writer.close()


GET = b"GET /plain HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize(
    ("header", "client"),
    [
        (v1("203.0.113.7", 51000), "203.0.113.7:51000"),
        (v1("2001:db8::7", 51000), "[2001:db8::7]:51000"),
        (v2("198.51.100.9", 52000), "198.51.100.9:52000"),
        (v2("2001:db8::9", 52000), "[2001:db8::9]:52000"),
        (v2("198.51.100.9", 52000, tlvs=b"\x04\x00\x02hi"), "198.51.100.9:52000"),
    ],
)
async def test_the_header_names_the_client(header: bytes, client: str) -> None:
    async with (
        swoole_like() as backend,
        observed_proxy(with_proxy_protocol(config_text(backend.port))) as obs,
    ):
        head = await _exchange(obs.port, header, GET)
        assert head.startswith(b"HTTP/1.1 200")
        (record,) = await _records(obs, 1)
        assert record["client"] == client
        (seen,) = backend.seen
        assert seen.head.get("X-Forwarded-For") == client.rpartition(":")[0].strip("[]")


async def _records(obs: Observed, count: int) -> list[dict[str, object]]:
    await obs.log_has(count)
    return obs.log_records()


async def test_a_v2_local_header_is_a_direct_connection() -> None:
    async with (
        swoole_like() as backend,
        observed_proxy(with_proxy_protocol(config_text(backend.port))) as obs,
    ):
        local = V2_SIGNATURE + b"\x20\x00\x00\x00"  # LOCAL: the balancer's own health check
        assert (await _exchange(obs.port, local, GET)).startswith(b"HTTP/1.1 200")
        (record,) = await _records(obs, 1)
        assert str(record["client"]).startswith("127.0.0.1:")


async def test_a_header_split_over_many_writes() -> None:
    async with (
        swoole_like() as backend,
        observed_proxy(with_proxy_protocol(config_text(backend.port))) as obs,
    ):
        reader, writer = await asyncio.open_connection(LOOPBACK, obs.port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in v1("192.0.2.1", 1234):
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0)
        writer.write(GET)
        assert (await asyncio.wait_for(read_head(reader), 5)).status == 200
        writer.close()
        (record,) = await _records(obs, 1)
        assert record["client"] == "192.0.2.1:1234"


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (GET, "invalid"),  # no header at all: plain HTTP
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "invalid"),  # a leading zero in a port
        (b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n", "invalid"),
        (V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12), "invalid"),  # version 3
        (b"", "closed"),
    ],
)
async def test_a_connection_without_a_valid_header_is_dropped_and_counted(
    first: bytes, reason: str
) -> None:
    async with (
        swoole_like() as backend,
        observed_proxy(with_proxy_protocol(config_text(backend.port))) as obs,
    ):
        reader, writer = await asyncio.open_connection(LOOPBACK, obs.port)
        if first:
            writer.write(first + GET)
        else:
            writer.write_eof()
        assert await _closed_without_answer(reader)
        writer.close()
        labels = {"listener": "127.0.0.1:0", "reason": reason}
        scrape = await obs.sample("wsproxy_proxy_protocol_errors_total", **labels)
        assert scrape.value("wsproxy_proxy_protocol_errors_total", **labels) == 1
        assert backend.seen == []
        (listener,) = obs.server._listeners.values()
        assert listener.gate.open == 0


async def _closed_without_answer(reader: asyncio.StreamReader) -> bool:
    """Closed (FIN, or RST when our bytes were left unread) with no byte sent."""
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        return True


async def test_a_missing_header_times_out() -> None:
    extra = "proxy:\n  client_header_timeout: 0.3s\n"
    async with (
        swoole_like() as backend,
        observed_proxy(with_proxy_protocol(config_text(backend.port, extra=extra))) as obs,
    ):
        reader, writer = await asyncio.open_connection(LOOPBACK, obs.port)
        assert await _closed_without_answer(reader)
        writer.close()
        labels = {"listener": "127.0.0.1:0", "reason": "timeout"}
        scrape = await obs.sample("wsproxy_proxy_protocol_errors_total", **labels)
        assert scrape.value("wsproxy_proxy_protocol_errors_total", **labels) == 1


async def test_ip_hash_uses_the_address_from_the_header() -> None:
    async with (
        aiohttp_backend(named_app("a")) as a,
        aiohttp_backend(named_app("b")) as b,
    ):
        text = config_text(a, upstream_extra="    balance: ip_hash\n").replace(
            f'["127.0.0.1:{a}"]', f'["127.0.0.1:{a}", "127.0.0.1:{b}"]'
        )
        async with observed_proxy(with_proxy_protocol(text)) as obs:
            chosen: dict[str, set[str]] = {}
            for n in range(16):
                source = f"198.51.100.{n + 1}"
                for _ in range(3):
                    head, body = await _get_body(obs.port, v1(source))
                    assert head.startswith(b"HTTP/1.1 200")
                    chosen.setdefault(source, set()).add(body)
            # Each client sticks to one server, and the clients spread over
            # both: the hash saw the header's address, not the socket's.
            assert all(len(servers) == 1 for servers in chosen.values()), chosen
            assert set().union(*chosen.values()) == {"a /plain", "b /plain"}


async def _get_body(port: int, header: bytes) -> tuple[bytes, str]:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(header + GET)
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body.decode()


async def test_the_per_client_limit_counts_the_address_from_the_header() -> None:
    extra = "proxy:\n  max_websockets_per_client: 1\n"
    async with (
        swoole_like() as backend,
        observed_proxy(with_proxy_protocol(config_text(backend.port, extra=extra))) as obs,
    ):
        opened = []
        for source, status in (("192.0.2.1", 101), ("192.0.2.2", 101), ("192.0.2.1", 429)):
            reader, writer = await asyncio.open_connection(LOOPBACK, obs.port)
            writer.write(v2(source) + request_bytes("GET /ws HTTP/1.1", ws_headers(obs.port)))
            head = await asyncio.wait_for(read_head(reader), 5)
            assert head.status == status, source
            opened.append(writer)
        for writer in opened:
            writer.close()


async def test_the_header_comes_before_the_tls_handshake(tmp_path: Path) -> None:
    issued = issue(tmp_path)
    tls = f"    tls:\n      cert_file: {issued.cert_file}\n      key_file: {issued.key_file}\n"
    async with (
        swoole_like() as backend,
        observed_proxy(with_proxy_protocol(config_text(backend.port), tls)) as obs,
    ):
        reader, writer = await asyncio.open_connection(LOOPBACK, obs.port)
        writer.write(v1("203.0.113.50", 4444))
        await writer.drain()
        await writer.start_tls(issued.client_context(), server_hostname="localhost")
        writer.write(GET)
        assert (await asyncio.wait_for(read_head(reader), 5)).status == 200
        writer.close()
        (record,) = await _records(obs, 1)
        assert record["client"] == "203.0.113.50:4444"
        (seen,) = backend.seen
        assert seen.head.get("X-Forwarded-Proto") == "https"
        assert seen.head.get("X-Forwarded-For") == "203.0.113.50"
