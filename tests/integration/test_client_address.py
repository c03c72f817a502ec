"""The client address in the access log and on the status page: the peer's,
unless the peer is one of ``proxy.trusted_proxies`` (then the address its
X-Forwarded-For names, as nginx's realip module resolves it)."""

from __future__ import annotations

import asyncio

from tests.support.backends import swoole_like
from tests.support.observe_helpers import observed_proxy
from tests.support.proxy import config_text
from tests.support.wire import read_head

GET = "GET /plain HTTP/1.1\r\nHost: example\r\nX-Forwarded-For: {}\r\nConnection: close\r\n\r\n"


async def _get(port: int, forwarded_for: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(GET.format(forwarded_for).encode())
    head = await asyncio.wait_for(read_head(reader), 5)
    writer.close()
    return head.status


async def test_a_trusted_proxy_names_the_client_in_the_log() -> None:
    extra = 'proxy:\n  trusted_proxies: ["127.0.0.0/8", "10.0.0.0/8"]\n'
    async with (
        swoole_like() as backend,
        observed_proxy(config_text(backend.port, extra=extra)) as obs,
    ):
        assert await _get(obs.port, "203.0.113.9, 10.1.2.3") == 200
        await obs.log_has(1)
        (record,) = obs.log_records()
        # Read from the right past every trusted hop: 10.1.2.3 is ours too.
        assert record["client"] == "203.0.113.9"
        assert str(record["peer"]).startswith("127.0.0.1:")
        (seen,) = backend.seen
        assert seen.head.get("X-Forwarded-For") == "203.0.113.9, 10.1.2.3, 127.0.0.1"


async def test_an_untrusted_peer_cannot_change_the_logged_client() -> None:
    extra = 'proxy:\n  trusted_proxies: ["10.0.0.0/8"]\n'
    async with (
        swoole_like() as backend,
        observed_proxy(config_text(backend.port, extra=extra)) as obs,
    ):
        assert await _get(obs.port, "203.0.113.9") == 200
        await obs.log_has(1)
        (record,) = obs.log_records()
        assert str(record["client"]).startswith("127.0.0.1:")
        assert "peer" not in record
        (seen,) = backend.seen
        assert seen.head.get("X-Forwarded-For") == "127.0.0.1"  # the forgery replaced
