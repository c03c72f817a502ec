"""TLS on both sides, over real sockets, with certificates made here (trustme):
termination with ``wss://`` and a certificate rotated on SIGHUP while a
session stays open; ``https://`` upstreams, verified by default."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from websockets.asyncio.client import connect

from tests.support.backends import RawBackend, switching_protocols, swoole_like
from tests.support.certs import Issued, issue, server_context, write_authority
from tests.support.observe_helpers import Observed, eventually, observed_proxy
from tests.support.proxy import config_text
from tests.support.tls_client import RawTls
from tests.support.wire import Head
from tests.support.ws_helpers import request_bytes, ws_headers
from wsproxy import tunnel
from wsproxy.cli import main
from wsproxy.config import Address, ServerSettings, Upstream, UpstreamTls
from wsproxy.http.pool import ServerPool
from wsproxy.tls import client_context

LOOPBACK = "127.0.0.1"


def tls_listener(issued: Issued, *, proxy_protocol: bool = False) -> str:
    return f"""\
listen:
  - host: 127.0.0.1
    port: 0
    proxy_protocol: {"true" if proxy_protocol else "false"}
    tls:
      cert_file: {issued.cert_file}
      key_file: {issued.key_file}
admin:
  host: 127.0.0.1
  port: 0
"""


def behind_tls(issued: Issued, upstream_port: int, extra: str = "") -> str:
    """config_text's upstream and route behind a TLS listener."""
    text = config_text(upstream_port, extra=extra)
    return tls_listener(issued) + text[text.index("upstreams:") :]


async def _peer_certificate(port: int, context: ssl.SSLContext) -> bytes:
    _reader, writer = await asyncio.open_connection(
        LOOPBACK, port, ssl=context, server_hostname="localhost"
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert der is not None
        return bytes(der)
    finally:
        writer.close()


async def test_a_wss_echo_through_tls_termination(tmp_path: Path) -> None:
    issued = issue(tmp_path)
    async with swoole_like() as backend, observed_proxy(behind_tls(issued, backend.port)) as obs:
        async with connect(
            f"wss://localhost:{obs.port}/ws", ssl=issued.client_context()
        ) as session:
            await session.send("over TLS")
            assert await session.recv() == "over TLS"
        # The backend hears that the client came over TLS.
        (seen,) = backend.seen
        assert seen.head.get("X-Forwarded-Proto") == "https"
        assert seen.head.get("Connection") == "upgrade"


async def test_https_requests_negotiate_http11_and_tls12_at_least(tmp_path: Path) -> None:
    issued = issue(tmp_path)
    async with swoole_like() as backend, observed_proxy(behind_tls(issued, backend.port)) as obs:
        context = issued.client_context()
        context.set_alpn_protocols(["h2", "http/1.1"])
        reader, writer = await asyncio.open_connection(
            LOOPBACK, obs.port, ssl=context, server_hostname="localhost"
        )
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
        writer.write(b"GET /plain HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        writer.close()

        old = issued.client_context()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the point of the test
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        # Debian's OpenSSL may refuse TLS 1.1 on the client side already:
        # either way no TLS 1.1 session comes up.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.open_connection(LOOPBACK, obs.port, ssl=old, server_hostname="localhost")


async def test_plain_http_to_a_tls_listener_is_dropped_and_counted(tmp_path: Path) -> None:
    issued = issue(tmp_path)
    async with swoole_like() as backend, observed_proxy(behind_tls(issued, backend.port)) as obs:
        reader, writer = await asyncio.open_connection(LOOPBACK, obs.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        labels = {"listener": "127.0.0.1:0", "reason": "handshake"}
        scrape = await obs.sample("wsproxy_tls_handshake_errors_total", **labels)
        assert scrape.value("wsproxy_tls_handshake_errors_total", **labels) == 1
        assert backend.seen == []
        # The gate counted the connection and released it.
        (listener,) = obs.server._listeners.values()
        assert listener.gate.open == 0


async def test_a_rotated_certificate_is_served_after_sighup_and_sessions_stay(
    tmp_path: Path,
) -> None:
    first = issue(tmp_path)
    config = tmp_path / "wsproxy.yaml"
    async with swoole_like() as backend:
        text = behind_tls(first, backend.port)
        config.write_text(text)
        async with (
            observed_proxy(text) as obs,
            connect(f"wss://localhost:{obs.port}/ws", ssl=first.client_context()) as session,
        ):
            await session.send("before")
            assert await session.recv() == "before"
            # The operator (or cert-manager) replaces the files in place.
            second = issue(tmp_path)  # a new authority, same file names
            assert second.cert_file == first.cert_file
            assert await obs.server.reload_from(str(config))
            # New handshakes get the new certificate...
            with pytest.raises(ssl.SSLCertVerificationError):
                await _peer_certificate(obs.port, first.client_context())
            await _peer_certificate(obs.port, second.client_context())
            # ...and the session opened before goes on, on the old one.
            await session.send("after")
            assert await session.recv() == "after"


async def test_a_certificate_that_does_not_load_fails_the_reload(tmp_path: Path) -> None:
    issued = issue(tmp_path)
    config = tmp_path / "wsproxy.yaml"
    async with swoole_like() as backend:
        text = behind_tls(issued, backend.port)
        config.write_text(text)
        async with observed_proxy(text) as obs:
            before = await _peer_certificate(obs.port, issued.client_context())
            # A key that is not the certificate's.
            other = issue(tmp_path, "other")
            issued.key_file.write_bytes(other.key_file.read_bytes())
            assert not await obs.server.reload_from(str(config))
            assert await _peer_certificate(obs.port, issued.client_context()) == before
            labels = {"result": "failure"}
            scrape = await obs.scrape()
            assert scrape.value("wsproxy_config_reloads_total", **labels) == 1


def test_check_names_a_certificate_that_does_not_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    issued = issue(tmp_path)
    issued.cert_file.unlink()
    config = tmp_path / "wsproxy.yaml"
    config.write_text(behind_tls(issued, 9))
    assert main(["check", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}: listen[0].tls: cert_file '{issued.cert_file}'" in err
    assert "No such file or directory" in err
    issue(tmp_path)  # the files again
    issued.key_file.write_text("not a key")
    assert main(["check", "-c", str(config)]) == 2
    assert "not a PEM certificate or key" in capsys.readouterr().err
    issued.key_file.write_bytes(issue(tmp_path, "other").key_file.read_bytes())
    assert main(["check", "-c", str(config)]) == 2
    assert "the key does not match the certificate" in capsys.readouterr().err


# --- TLS to upstreams ---------------------------------------------------------------


def https_upstream(port: int, tls: str = "", route_extra: str = "") -> str:
    text = config_text(port, route_extra=route_extra)
    text = text.replace(f'"127.0.0.1:{port}"', f'"https://127.0.0.1:{port}"')
    return text.replace("routes:", f"{tls}routes:", 1) if tls else text


@pytest.fixture
async def tls_backend(tmp_path: Path) -> AsyncIterator[tuple[Issued, int, list[object]]]:
    issued = issue(tmp_path, "backend")
    backend = swoole_like(tls=server_context(issued))
    async with backend:
        yield issued, backend.port, backend.seen  # type: ignore[misc]


async def _get(obs: Observed, path: str = "/x") -> tuple[int, str]:
    async with obs.http.get(f"http://127.0.0.1:{obs.port}{path}") as response:
        return response.status, await response.text()


async def test_an_https_upstream_verified_with_ca_file(
    tmp_path: Path, tls_backend: tuple[Issued, int, list[object]]
) -> None:
    issued, port, seen = tls_backend
    ca = write_authority(issued.authority, tmp_path / "ca.pem")
    tls = f"    tls:\n      ca_file: {ca}\n"
    async with observed_proxy(https_upstream(port, tls)) as obs:
        assert await _get(obs) == (200, "version=HTTP/1.1\n")
        # A WebSocket handshake over the same upstream TLS.
        async with connect(f"ws://127.0.0.1:{obs.port}/ws") as session:
            await session.send("through https upstream")
            assert await session.recv() == "through https upstream"
    assert len(seen) == 2


async def test_an_untrusted_upstream_certificate_is_a_502_of_kind_tls(
    tls_backend: tuple[Issued, int, list[object]], caplog: pytest.LogCaptureFixture
) -> None:
    _issued, port, seen = tls_backend
    # Verification is on by default, against the system's store: trustme's
    # authority is not in it.
    async with observed_proxy(https_upstream(port)) as obs:
        status, _body = await _get(obs)
        assert status == 502
        labels = {"upstream": "app", "server": f"127.0.0.1:{port}", "kind": "tls"}
        scrape = await obs.sample("wsproxy_upstream_errors_total", **labels)
        assert scrape.value("wsproxy_upstream_errors_total", **labels) == 1
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await http.ws_connect(f"http://127.0.0.1:{obs.port}/ws")
            assert info.value.status == 502
    assert seen == []
    lines = [
        r.getMessage() for r in caplog.records if "certificate verify failed" in r.getMessage()
    ]
    assert lines, [r.getMessage() for r in caplog.records]


async def test_server_name_is_checked_against_the_certificate(
    tmp_path: Path, tls_backend: tuple[Issued, int, list[object]]
) -> None:
    issued, port, _seen = tls_backend
    ca = write_authority(issued.authority, tmp_path / "ca.pem")
    wrong = f"    tls:\n      ca_file: {ca}\n      server_name: other.example\n"
    async with observed_proxy(https_upstream(port, wrong)) as obs:
        assert (await _get(obs))[0] == 502
    right = f"    tls:\n      ca_file: {ca}\n      server_name: localhost\n"
    async with observed_proxy(https_upstream(port, right)) as obs:
        assert (await _get(obs))[0] == 200


async def test_verify_false_accepts_any_certificate(
    tls_backend: tuple[Issued, int, list[object]],
) -> None:
    _issued, port, _seen = tls_backend
    async with observed_proxy(https_upstream(port, "    tls:\n      verify: false\n")) as obs:
        assert (await _get(obs))[0] == 200


async def test_a_client_certificate_for_an_upstream_that_asks_for_one(tmp_path: Path) -> None:
    issued = issue(tmp_path, "backend")
    clients = trustme.CA()
    client = issue(tmp_path, "client", authority=clients, hosts=("wsproxy.internal",))
    backend = swoole_like(tls=server_context(issued, client_authority=clients))
    ca = write_authority(issued.authority, tmp_path / "ca.pem")
    async with backend:
        without = f"    tls:\n      ca_file: {ca}\n"
        async with observed_proxy(https_upstream(backend.port, without)) as obs:
            assert (await _get(obs))[0] == 502
        with_cert = (
            without + f"      cert_file: {client.cert_file}\n      key_file: {client.key_file}\n"
        )
        async with observed_proxy(https_upstream(backend.port, with_cert)) as obs:
            assert await _get(obs) == (200, "version=HTTP/1.1\n")


def test_a_key_with_a_passphrase_is_refused_without_asking(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    issued = issue(tmp_path)
    key = serialization.load_pem_private_key(issued.key_file.read_bytes(), password=None)
    issued.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    config = tmp_path / "wsproxy.yaml"
    config.write_text(behind_tls(issued, 9))
    # Without a terminal OpenSSL would fail obscurely; with one it would wait
    # for a passphrase, and a reload would freeze the event loop.
    assert main(["check", "-c", str(config)]) == 2
    assert "the key is protected by a passphrase" in capsys.readouterr().err


async def test_a_handshake_that_never_comes_times_out_and_is_counted(tmp_path: Path) -> None:
    issued = issue(tmp_path)
    extra = "proxy:\n  client_header_timeout: 0.3s\n"
    async with (
        swoole_like() as backend,
        observed_proxy(behind_tls(issued, backend.port, extra)) as obs,
    ):
        reader, writer = await asyncio.open_connection(LOOPBACK, obs.port)
        writer.write(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        labels = {"listener": "127.0.0.1:0", "reason": "timeout"}
        scrape = await obs.sample("wsproxy_tls_handshake_errors_total", **labels)
        assert scrape.value("wsproxy_tls_handshake_errors_total", **labels) == 1


async def test_tls_sessions_end_without_asyncio_warnings(
    tmp_path: Path,
    tls_backend: tuple[Issued, int, list[object]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Both sides over TLS: the client to wsproxy, wsproxy to the backend.
    issued, port, _seen = tls_backend
    ca = write_authority(issued.authority, tmp_path / "ca.pem")
    text = https_upstream(port, f"    tls:\n      ca_file: {ca}\n")
    text = tls_listener(issued) + text[text.index("upstreams:") :]
    async with observed_proxy(text) as obs:
        for _ in range(3):
            async with connect(
                f"wss://localhost:{obs.port}/ws", ssl=issued.client_context()
            ) as session:
                await session.send("x")
                assert await session.recv() == "x"
        await obs.sessions_ended()
    warnings_seen = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [m for m in warnings_seen if "eof_received" in m], warnings_seen


async def test_a_reload_that_tightens_upstream_tls_reaches_pooled_connections(
    tmp_path: Path, tls_backend: tuple[Issued, int, list[object]]
) -> None:
    _issued, port, _seen = tls_backend
    loose = https_upstream(port, "    tls:\n      verify: false\n").replace(
        "routes:", "    keepalive_timeout: 60s\nroutes:", 1
    )
    other = write_authority(trustme.CA(), tmp_path / "other-ca.pem")
    strict = loose.replace("verify: false", f"ca_file: {other}")
    config = tmp_path / "wsproxy.yaml"
    config.write_text(loose)
    async with observed_proxy(loose) as obs:
        assert (await _get(obs))[0] == 200  # a pooled connection now exists
        config.write_text(strict)
        assert await obs.server.reload_from(str(config))
        # The CA that signed the backend is no longer trusted: not even the
        # connection pooled before the reload may serve another request.
        assert (await _get(obs))[0] == 502


async def test_a_tls_client_that_sends_close_notify_and_stops_reading_is_reset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client half-closes its TLS session and reads nothing more while the
    backend floods, then closes: the tunnel closes the client gently, then
    resets it. asyncio's TLS transport closed twice could no longer be reset
    (the session, its slot and the drain hung, with loop errors)."""
    monkeypatch.setattr(tunnel, "CLOSE_TIMEOUT", 0.5)
    loop = asyncio.get_running_loop()
    errors: list[str] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(str(context.get("message"))))

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: Head) -> bool:
        writer.write(switching_protocols(head))
        frame = b"\x82\x7e" + struct.pack("!H", 60000) + b"y" * 60000
        for _ in range(50):  # 3 MB: more than the socket buffers hold
            writer.write(frame)
        await writer.drain()
        while await reader.read(65536):
            pass
        return False  # the proxy's EOF came: the backend closes

    issued = issue(tmp_path)
    async with (
        RawBackend(flood) as backend,
        observed_proxy(behind_tls(issued, backend.port)) as obs,
    ):
        client = RawTls(issued.client_context(), rcvbuf=4096)
        await client.connect(obs.port)
        await client.send(request_bytes("GET /ws HTTP/1.1", ws_headers(obs.port)))
        assert b" 101 " in (await client.recv_head())[:16]
        await obs.sessions_open(1)
        await client.close_notify()
        await obs.sessions_ended()
        (listener,) = obs.server._listeners.values()
        await eventually(
            lambda: _true_when(listener.gate.open == 0), "the connection's slot to be freed"
        )
        client.close()
    assert errors == []


async def _true_when(condition: bool) -> bool | None:
    return True if condition else None


def endless_body(status_line: bytes) -> RawBackend:
    """Answers ``status_line`` with a 100 MB body, written as the client reads."""

    async def answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: Head
    ) -> bool:
        writer.write(status_line + b"\r\nContent-Length: 100000000\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            for _ in range(1000):
                writer.write(b"x" * 65536)
                await writer.drain()
        return False

    return RawBackend(answer)


async def test_a_relay_cut_by_its_client_does_not_blame_the_upstream() -> None:
    backend = endless_body(b"HTTP/1.1 200 OK")
    async with backend, observed_proxy(config_text(backend.port)) as obs:
        reader, writer = await asyncio.open_connection(LOOPBACK, obs.port)
        writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(65536)
        writer.transport.abort()  # the client leaves in the middle of the body
        await obs.log_has(1)
        (record,) = obs.log_records()
        assert record["status"] == 200
        scrape = await obs.scrape()
        server = f"127.0.0.1:{backend.port}"
        assert scrape.value("wsproxy_upstream_server_up", upstream="app", server=server) == 1
        for kind in ("reset", "timeout", "protocol"):
            assert not scrape.value(
                "wsproxy_upstream_errors_total", upstream="app", server=server, kind=kind
            )


async def test_a_reload_that_leaves_upstream_tls_alone_keeps_pooled_connections(
    tmp_path: Path,
) -> None:
    issued = issue(tmp_path, "backend")
    connections = 0

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server = await asyncio.start_server(counted, LOOPBACK, 0, ssl=server_context(issued))
    port = server.sockets[0].getsockname()[1]
    ca = write_authority(issued.authority, tmp_path / "ca.pem")
    text = https_upstream(port, f"    tls:\n      ca_file: {ca}\n").replace(
        "routes:", "    keepalive_timeout: 60s\nroutes:", 1
    )
    config = tmp_path / "wsproxy.yaml"
    config.write_text(text)
    try:
        async with observed_proxy(text) as obs:
            assert (await _get(obs))[0] == 200
            assert await obs.server.reload_from(str(config))  # the same file
            assert (await _get(obs))[0] == 200
            assert connections == 1  # one TLS handshake for both requests
            issue(tmp_path, "backend", authority=issued.authority)  # a new certificate...
            write_authority(issued.authority, ca)  # ...and the CA file rewritten
            ca.write_bytes(ca.read_bytes() + b"\n")  # its bytes changed
            assert await obs.server.reload_from(str(config))
            assert (await _get(obs))[0] == 200
            assert connections == 2  # the files changed: a new connection
    finally:
        server.close()


async def test_a_connection_being_made_during_a_reload_keeps_its_old_generation(
    tls_backend: tuple[Issued, int, list[object]],
) -> None:
    _issued, port, _seen = tls_backend
    settings = Upstream("app", (ServerSettings(Address(LOOPBACK, port), tls=True),))
    pool = ServerPool(settings, Address(LOOPBACK, port))
    loose = client_context(UpstreamTls(verify=False))
    pool.renew(loose, LOOPBACK, b"loose")
    making = asyncio.ensure_future(pool.connect_new())
    await asyncio.sleep(0)  # the connect has begun, with the loose context
    pool.renew(client_context(UpstreamTls()), LOOPBACK, b"strict")
    conn = await making
    # Made with the old settings: never pooled for a request under the new ones.
    assert conn.generation != pool.generation
    pool.release(conn)
    assert pool.idle == []
    pool.close()


async def test_a_handshake_cut_by_its_client_does_not_blame_the_upstream() -> None:
    backend = endless_body(b"HTTP/1.1 403 Forbidden")
    async with backend, observed_proxy(config_text(backend.port)) as obs:
        reader, writer = await asyncio.open_connection(LOOPBACK, obs.port)
        writer.write(request_bytes("GET /ws HTTP/1.1", ws_headers(obs.port)))
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(65536)
        writer.transport.abort()  # the client leaves during the refusal's body
        await obs.log_has(1)
        scrape = await obs.scrape()
        server = f"127.0.0.1:{backend.port}"
        assert scrape.value("wsproxy_upstream_server_up", upstream="app", server=server) == 1
        assert not scrape.value(
            "wsproxy_upstream_errors_total", upstream="app", server=server, kind="reset"
        )


async def test_a_connection_handed_over_just_before_a_renew_is_not_used(
    tls_backend: tuple[Issued, int, list[object]],
) -> None:
    _issued, port, _seen = tls_backend
    settings = Upstream(
        "app", (ServerSettings(Address(LOOPBACK, port), tls=True),), max_connections=1
    )
    pool = ServerPool(settings, Address(LOOPBACK, port))
    pool.renew(client_context(UpstreamTls(verify=False)), LOOPBACK, b"loose")
    first = await pool.connect_new()
    waiting = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0)  # queued: the only slot is taken
    first._keep_alive = True  # as after a kept-alive response
    pool.release(first)  # handed to the waiter...
    pool.renew(client_context(UpstreamTls(verify=False)), LOOPBACK, b"changed")  # ...then a reload
    second = await waiting
    assert second is not first
    assert second.generation == pool.generation
    second.close()
    pool.close()
