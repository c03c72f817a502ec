"""The plain response head (Request.hold_plain_head) against the general one.

A length-framed answer to an HTTP/1.1 request without a body takes a short
way in the relay (forward.Relay.on_head); it must hold exactly the head that
``send_head`` holds for it, and step aside whenever the connection is not
staying open.  The front door runs on a real event loop with a transport
that only records; no socket is needed to compare two byte strings.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from wsproxy.http.front import _FIELD_NAMES, ClientConnection, FrontSettings, Request
from wsproxy.http.wire import Framing


class _App:
    def handle(self, request: Request) -> None:
        return None

    def finished(self, request: Request) -> None:
        pass

    def refused(self, request: Request, status: int, message: str) -> None:
        pass


class _Transport(asyncio.Transport):
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass


def _request(*, closing: bool = False, keep_alive: bool = True) -> Request:
    connection = ClientConnection(_App(), FrontSettings())
    connection.connection_made(_Transport())
    connection.closing = closing
    request = Request(connection, 0.0)
    request.method = "GET"
    request.version = (1, 1)
    request.keep_alive = keep_alive
    request.body_done = True
    return request


FIELDS = [
    b"",
    b"Content-Length: 2\r\n",
    b"Server: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 07:00:00 GMT\r\nContent-Length: 11\r\n",
]


@pytest.mark.parametrize("status", [200, 201, 206, 301, 404, 500, 599])
@pytest.mark.parametrize("reason", [b"OK", b"", b"Custom Reason Phrase"])
@pytest.mark.parametrize("fields", FIELDS)
async def test_the_plain_head_is_the_head_send_head_holds(
    status: int, reason: bytes, fields: bytes
) -> None:
    plain, general = _request(), _request()
    assert plain.hold_plain_head(status, reason, fields)
    general.send_head(status, reason, fields, Framing.LENGTH, flush=False)
    assert plain.connection._held_head == general.connection._held_head
    for request in (plain, general):
        assert (request.response_started, request.status, request.framing) == (
            True,
            status,
            Framing.LENGTH,
        )
    assert not plain.connection.closing


@pytest.mark.parametrize(
    "state", [{"closing": True}, {"keep_alive": False}], ids=["closing", "not-kept-alive"]
)
async def test_the_plain_head_steps_aside_when_the_connection_closes(
    state: dict[str, bool],
) -> None:
    request = _request(**state)
    assert not request.hold_plain_head(200, b"OK", b"Content-Length: 2\r\n")
    assert request.connection._held_head is None
    assert not request.response_started


class _StuckTransport(_Transport):
    """close() waits for a buffer the client never reads; abort() is final."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = False
        self.aborted = False

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True  # and connection_lost never comes: the buffer waits

    def abort(self) -> None:
        self.aborted = True


async def test_a_close_that_cannot_flush_is_reset_after_send_timeout() -> None:
    connection = ClientConnection(_App(), FrontSettings(send_timeout=0.05))
    transport = _StuckTransport()
    connection.connection_made(transport)
    connection.shutdown()  # idle: closes now
    assert transport.closing
    assert not transport.aborted
    await asyncio.sleep(0.2)
    assert transport.aborted


def test_the_field_name_table_gives_what_decoding_and_lowering_give() -> None:
    for raw, (text, lower) in _FIELD_NAMES.items():
        assert (text, lower) == (raw.decode("latin-1"), raw.decode("latin-1").lower())


class _Keeping(_App):
    def __init__(self) -> None:
        self.requests: list[Request] = []

    def handle(self, request: Request) -> None:
        self.requests.append(request)
        request.pending = True  # never answered: only its fields matter here


async def test_fields_read_the_same_with_names_in_the_table_and_not() -> None:
    app = _Keeping()
    connection = ClientConnection(app, FrontSettings())
    connection.connection_made(_Transport())
    fields = [
        ("Host", "a.test"),
        ("HOST", "b.test"),
        ("cookie", "x=1"),
        ("X-Custom", "\xe9\xff"),
        ("Cookie", "y=2"),
        ("Sec-WebSocket-Key", "k"),
    ]
    head = "GET / HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields) + "\r\n"
    connection.data_received(head.encode("latin-1"))
    [request] = app.requests
    assert request.headers == fields
    assert request.index == {
        "host": ["a.test", "b.test"],
        "cookie": ["x=1", "y=2"],
        "x-custom": ["\xe9\xff"],
        "sec-websocket-key": ["k"],
    }
