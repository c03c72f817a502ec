"""TLS with several workers: each worker reads the certificate, the
supervisor checks it once on SIGHUP, and a rotated one reaches every worker."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.integration.test_workers import CONNECTIONS, Workers, _found
from tests.support.certs import Issued, issue
from tests.support.http_backends import aiohttp_backend, named_app
from tests.support.observe_helpers import eventually
from tests.support.process import free_port, spawn


@pytest.fixture(autouse=True)
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "tmp"
    path.mkdir()
    monkeypatch.setenv("TMPDIR", str(path))
    return path


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
    port, admin = free_port(), free_port()
    path = tmp_path / "proxy.yaml"
    async with aiohttp_backend(named_app("one")) as upstream:
        path.write_text(tls_config(upstream, port, admin, first))
        async with (
            aiohttp.ClientSession() as http,
            spawn(
                [sys.executable, "-m", "wsproxy"], "serve", "-c", str(path), stderr=tmp_path / "e"
            ) as proxy,
        ):
            await proxy.wait_listening(admin)
            workers = Workers(proxy, port, admin, http)

            async def ready() -> bool | None:
                return True if (await workers.admin_get("/readyz"))[0] == 200 else None

            await eventually(ready, "every worker to be ready", timeout=10)
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
