"""Raw-socket helpers: handshakes and frames written byte by byte.

Test code builds frames itself (including malformed ones) so that what the
proxy receives is exactly what the test decided, never a library's choice.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from dataclasses import dataclass, field

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_for(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def encode_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv1: bool = False,
    mask: bool = True,
) -> bytes:
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        head = struct.pack("!BB", first, mask_bit | length)
    elif length < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


@dataclass
class Head:
    """A parsed HTTP message head."""

    start_line: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def status(self) -> int:
        return int(self.start_line.split(" ", 2)[1])

    @property
    def version(self) -> str:
        first = self.start_line.split(" ")[0]
        return first if first.startswith("HTTP/") else self.start_line.rsplit(" ", 1)[1]

    def get(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


def parse_head(raw: bytes) -> Head:
    lines = raw.decode("latin-1").split("\r\n")
    head = Head(lines[0])
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            head.headers.append((name.strip(), value.strip()))
    return head


async def read_head(reader: asyncio.StreamReader) -> Head:
    raw = await reader.readuntil(b"\r\n\r\n")
    return parse_head(raw[:-4])


def handshake_request(
    host: str,
    port: int,
    *,
    path: str = "/ws",
    version: str = "HTTP/1.1",
    key: str | None = None,
    connection: str = "Upgrade",
    extra: list[tuple[str, str]] | None = None,
) -> bytes:
    lines = [
        f"GET {path} {version}",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        f"Connection: {connection}",
        f"Sec-WebSocket-Key: {key or new_key()}",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{name}: {value}" for name, value in extra or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def open_raw(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, port, limit=2**24)


async def read_until_closed(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:
    async with asyncio.timeout(timeout):
        return await reader.read()
