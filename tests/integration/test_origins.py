"""``routes[].websocket.allowed_origins`` over real sockets: a handshake from
another origin gets 403 and is counted as ``bad_handshake``; the allowed
ones reach the backend (cross-site WebSocket hijacking)."""

from __future__ import annotations

import pytest

from tests.support.backends import swoole_like
from tests.support.observe_helpers import observed_proxy
from tests.support.proxy import config_text
from tests.support.ws_helpers import raw_client, read_response, request_bytes, ws_headers

ORIGINS = """\
    websocket:
      allowed_origins: ["https://app.example.org", "https://*.example.net"]
"""


async def _status(port: int, origin: str | None) -> int:
    async with raw_client(port) as (reader, writer):
        writer.write(request_bytes("GET /ws HTTP/1.1", ws_headers(port, Origin=origin)))
        head, _body = await read_response(reader, timeout=5)
        return head.status


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        ("https://app.example.org", 101),
        ("https://chat.example.net", 101),
        (None, 101),  # not a browser
        ("https://evil.example", 403),
        ("https://example.net", 403),
        ("http://app.example.org", 403),
        ("null", 403),
    ],
)
async def test_a_handshake_from_another_origin_gets_403(origin: str | None, status: int) -> None:
    async with (
        swoole_like() as backend,
        observed_proxy(config_text(backend.port, route_extra=ORIGINS)) as obs,
    ):
        assert await _status(obs.port, origin) == status
        if status == 403:
            labels = {"route": "/", "result": "bad_handshake"}
            scrape = await obs.sample("wsproxy_websocket_upgrades_total", **labels)
            assert scrape.value("wsproxy_websocket_upgrades_total", **labels) == 1
            [record] = [r for r in obs.log_records() if r.get("status") == 403]
            assert record["error"] == "origin not allowed"
            assert record["origin"] == origin
            assert backend.seen == []  # the backend never saw it
        else:
            assert len(backend.seen) == 1


async def test_without_the_setting_any_origin_passes() -> None:
    async with swoole_like() as backend, observed_proxy(config_text(backend.port)) as obs:
        assert await _status(obs.port, "https://evil.example") == 101
