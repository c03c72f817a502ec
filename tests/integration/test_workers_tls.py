"""TLS with several workers: each worker reads the certificate, the
supervisor checks it once on SIGHUP, and a rotated one reaches every worker."""

from __future__ import annotations

import signal
from pathlib import Path

import aiohttp
import pytest

from tests.integration.test_workers import (  # runtime: the same TMPDIR fixture
    CONNECTIONS,
    _found,
    runtime,  # noqa: F401
    two_workers,
)
from tests.support.certs import Issued, issue
from tests.support.http_backends import aiohttp_backend, named_app
from tests.support.observe_helpers import eventually


def tls_config(upstream: int, port: int, admin: int, issued: Issued) -> str:
    return f"""\
workers: 2
listen:
  - host: 127.0.0.1
    port: {port}
    tls:
      cert_file: {issued.cert_file}
      key_file: {issued.key_file}
admin:
  host: 127.0.0.1
  port: {admin}
upstreams:
  app:
    servers: ["127.0.0.1:{upstream}"]
routes:
  - path_prefix: /
    upstream: app
shutdown:
  grace_period: 5s
"""


async def _get_fresh(port: int, issued: Issued) -> str:
    """One HTTPS GET on a new connection, trusting only ``issued``'s authority."""
    connector = aiohttp.TCPConnector(force_close=True, ssl=issued.client_context())
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"https://localhost:{port}/") as response,
    ):
        assert response.status == 200
        return await response.text()


async def test_a_certificate_rotated_on_sighup_reaches_every_worker(tmp_path: Path) -> None:
    first = issue(tmp_path)
    async with (
        aiohttp_backend(named_app("one")) as upstream,
        two_workers(tmp_path, upstream, lambda u, p, a: tls_config(u, p, a, first)) as workers,
    ):
        proxy, port = workers.proxy, workers.port
        assert "listening on https://127.0.0.1" in proxy.stderr()
        for _ in range(CONNECTIONS):
            assert await _get_fresh(port, first) == "one /"
        served = {line["worker"] for line in await workers.read_http_lines(CONNECTIONS)}
        assert served == {0, 1}

        # A key that is not the certificate's: refused once, by the supervisor.
        key = first.key_file.read_bytes()
        first.key_file.write_bytes(issue(tmp_path, "other").key_file.read_bytes())
        proxy.process.send_signal(signal.SIGHUP)
        await eventually(
            lambda: _found(proxy, "the key does not match the certificate"), "the refusal"
        )
        first.key_file.write_bytes(key)

        second = issue(tmp_path)  # same file names, a new authority
        proxy.process.send_signal(signal.SIGHUP)
        for index in (0, 1):
            await eventually(
                lambda index=index: _found(proxy, f"[worker {index}]: reloaded"),  # type: ignore[misc]
                f"worker {index} to reload",
            )
        for _ in range(CONNECTIONS):
            assert await _get_fresh(port, second) == "one /"
        served = {line["worker"] for line in await workers.read_http_lines(CONNECTIONS)}
        assert served == {0, 1}
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await _get_fresh(port, first)
        scrape = await workers.scrape()
    assert scrape.value("wsproxy_config_reloads_total", result="failure") == 1
    assert scrape.value("wsproxy_config_reloads_total", result="success") == 1
    errors = [line for line in proxy.stderr().splitlines() if "does not match" in line]
    assert len(errors) == 1, errors
    assert "[worker" not in errors[0]
