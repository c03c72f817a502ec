"""The request-head budget, read by read.

The front door counts a head's fields one by one only once the bytes read
for it are many enough that it could be over ``max_header_size`` or
``MAX_HEADERS`` (a field counts four bytes besides its name and value, and
may take three on the wire); a head that passes that mark in a later read is
counted from what was parsed before.  Socket writes may be merged into one read, so these tests
call ``data_received`` themselves, one read at a time, with a transport
that only records.
"""

from __future__ import annotations

import asyncio
from typing import Any

from wsproxy.http.front import MAX_HEADERS, ClientConnection, FrontSettings, Request


class _App:
    def __init__(self) -> None:
        self.handled: list[Request] = []
        self.refusals: list[tuple[int, str]] = []

    def handle(self, request: Request) -> None:
        self.handled.append(request)
        request.answer(200, "ok")

    def finished(self, request: Request) -> None:
        pass

    def refused(self, request: Request, status: int, message: str) -> None:
        self.refusals.append((status, message))


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _reads(budget: int, *reads: bytes) -> tuple[_App, _Transport]:
    app = _App()
    transport = _Transport()
    connection = ClientConnection(app, FrontSettings(max_header_size=budget))
    connection.connection_made(transport)
    for data in reads:
        connection.data_received(data)
    return app, transport


START = b"GET / HTTP/1.1\r\nHost: h\r\n"


async def test_a_head_over_the_budget_only_in_its_second_read_is_431() -> None:
    # llhttp reports a field when the next one begins: X-A is parsed (and
    # not counted, the read being under the budget) in the first read.
    first = START + b"X-A: " + b"a" * 1400 + b"\r\nX-C: c\r\n"
    second = b"X-B: " + b"b" * 700 + b"\r\n\r\n"  # within budget alone, not with the first
    assert len(first) < 2048 < len(first + second)
    app, transport = _reads(2048, first, second)
    assert app.refusals == [(431, "request header fields too large")]
    assert app.handled == []
    assert transport.written.startswith(b"HTTP/1.1 431 ")


async def test_the_same_head_under_the_budget_is_served() -> None:
    first = START + b"X-A: " + b"a" * 1400 + b"\r\nX-C: c\r\n"
    second = b"X-B: " + b"b" * 300 + b"\r\n\r\n"
    app, transport = _reads(2048, first, second)
    assert app.refusals == []
    assert [r.header("x-b") for r in app.handled] == [["b" * 300]]
    assert transport.written.startswith(b"HTTP/1.1 200 ")


async def test_too_many_small_fields_in_one_small_read_are_431() -> None:
    fields = b"".join(b"F%d: v\r\n" % i for i in range(MAX_HEADERS + 1))
    app, _ = _reads(32 * 1024, START + fields + b"\r\n")  # far under the byte budget
    assert app.refusals == [(431, "too many request header fields")]
    assert app.handled == []


async def test_as_many_fields_as_allowed_are_served() -> None:
    fields = b"".join(b"F%d: v\r\n" % i for i in range(MAX_HEADERS - 1))  # plus Host
    app, _ = _reads(32 * 1024, START + fields + b"\r\n")
    assert app.refusals == []
    assert len(app.handled[0].headers) == MAX_HEADERS


async def test_fields_without_a_space_are_counted_as_the_budget_says() -> None:
    # "aN:b\r\n" takes a byte less on the wire than the budget counts
    # (name, value and four); 200 of them make a head of exactly the budget's
    # bytes that counts over it.  Sent alone, in one read, it is still 431.
    fields = b"".join(b"a%d:b\r\n" % i for i in range(200))
    head = b"GET / HTTP/1.1\r\nHost:h\r\n" + fields
    pad = 32 * 1024 - len(head) - len(b"x:\r\n\r\n")
    head += b"x:" + b"p" * pad + b"\r\n\r\n"
    assert len(head) == 32 * 1024
    app, _ = _reads(32 * 1024, head)
    assert app.refusals == [(431, "request header fields too large")]
