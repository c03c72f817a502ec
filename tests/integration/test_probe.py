"""``wsproxy probe`` over real sockets, run as a user runs it.

Against the Swoole-like backend, a healthy ``websockets`` server, the outage's
exact chain (nginx without ``proxy_http_version 1.1`` in front of the
Swoole-like backend), wsproxy in front of the same backend, and backends
that fail in one respect each; plus every kind of bad input.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import WSMsgType
from websockets.asyncio.server import ServerConnection, serve

from tests.support.backends import (
    RawBackend,
    Seen,
    connection_tokens,
    echo_frames,
    is_upgrade,
    switching_protocols,
    swoole_like,
)
from tests.support.nginx import running_nginx
from tests.support.observe_helpers import observed_proxy
from tests.support.process import free_port
from tests.support.proxy import config_text, running_proxy
from tests.support.wire import Head

HOLD = "0.5s"


async def run_probe(*args: str, timeout: float = 30) -> tuple[int, str, str]:
    """``wsproxy probe ARGS``: exit status, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wsproxy",
        "probe",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(timeout):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def probe_json(url: str, *args: str) -> tuple[int, dict[str, Any]]:
    code, out, err = await run_probe(url, "--hold", HOLD, "--json", *args)
    assert "Traceback" not in err, err
    return code, json.loads(out)


def flat(text: str) -> str:
    """The output with its line wrapping undone."""
    return " ".join(text.split())


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variant["name"]: variant for variant in report["variants"]}


def findings(report: dict[str, Any]) -> str:
    return "\n".join(report["diagnosis"])


# --- backends that fail in one respect ------------------------------------------


def answering(response: bytes) -> RawBackend:
    """Answers every request with ``response`` and closes."""

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: Head
    ) -> bool:
        writer.write(response)
        await writer.drain()
        return False

    return RawBackend(handler)


def literal_connection_check() -> RawBackend:
    """A server that compares ``Connection`` as one string: Firefox's
    ``keep-alive, Upgrade`` gets 400, ``Upgrade`` works."""
    backend: RawBackend

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: Head
    ) -> bool:
        if (head.get("Connection") or "").lower() != "upgrade" or not is_upgrade(head):
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return False
        writer.write(switching_protocols(head))
        seen = Seen(head, writer=writer)
        backend.seen.append(seen)
        await echo_frames(reader, writer, seen)
        return False

    backend = RawBackend(handler)
    return backend


def wrong_accept() -> RawBackend:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: Head
    ) -> bool:
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        )
        await writer.drain()
        await echo_frames(reader, writer, Seen(head))
        return False

    return RawBackend(handler)


async def _echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


# --- the article's chain and its fixes -----------------------------------------------


async def test_the_swoole_like_backend_is_diagnosed_by_name() -> None:
    async with swoole_like() as backend:
        code, report = await probe_json(f"ws://127.0.0.1:{backend.port}/ws")
    variants = by_name(report)
    assert code == 0  # the standard handshake holds
    assert variants["1.0"]["held"] is False
    assert variants["1.0"]["closed_by"] in ("FIN", "RST")
    assert variants["1.0"]["closed_after_ms"] < 500
    assert variants["1.0 keep-alive"]["held"] is True
    assert all(variants[name]["held"] for name in ("1.1", "1.1 deflate", "1.1 keep-alive"))
    assert variants["1.1"]["ping_answered"] is True
    assert variants["1.1"]["messages_received"] == 1  # the echo of the probe's message
    text = findings(report)
    assert "arrive as HTTP/1.0 right after 101" in text
    assert "as Swoole does" in text
    assert "proxy_http_version 1.1" in text


async def test_the_article_chain_through_nginx_is_diagnosed(tmp_path: Path) -> None:
    """nginx with the Upgrade/Connection lines, without proxy_http_version 1.1,
    in front of the Swoole-like backend: every form dies after 101."""
    async with (
        swoole_like() as backend,
        running_nginx(tmp_path, backend.port, http11=False) as port,
    ):
        code, out, err = await run_probe(f"ws://127.0.0.1:{port}/ws", "--hold", HOLD)
        versions = {seen.head.version for seen in backend.seen}
    assert code == 1, out + err
    assert versions == {"HTTP/1.0"}  # what nginx sent upstream, whatever the client sent
    assert out.count(" no ") >= 5  # no form held
    assert "handshake got 101 and the connection was dropped without a close frame" in flat(out)
    assert "Server: nginx/" in out
    assert "proxy_http_version 1.1;" in flat(out)
    assert err == ""


async def test_nginx_with_http11_upstream_holds_every_http11_form(tmp_path: Path) -> None:
    async with swoole_like() as backend, running_nginx(tmp_path, backend.port, http11=True) as port:
        code, report = await probe_json(f"ws://127.0.0.1:{port}/ws")
    assert code == 0
    assert all(variant["held"] for variant in report["variants"])


async def test_wsproxy_in_front_of_the_same_backend_holds_every_form() -> None:
    async with swoole_like() as backend, running_proxy(config_text(backend.port)) as (_, port):
        code, report = await probe_json(f"ws://127.0.0.1:{port}/ws")
    assert code == 0
    assert [v["held"] for v in report["variants"]] == [True] * 5
    assert "every form held" in findings(report)


async def test_a_healthy_websockets_server_holds_every_http11_form_and_refuses_http10() -> None:
    """``websockets`` answers HTTP/1.0 with 505 (RFC 6455 requires 1.1): a
    refusal, which the diagnosis tells apart from Swoole's early close."""
    async with serve(_echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        code, report = await probe_json(f"ws://127.0.0.1:{port}/")
    variants = by_name(report)
    assert code == 0
    assert all(variants[name]["held"] for name in ("1.1", "1.1 deflate", "1.1 keep-alive"))
    assert variants["1.1 deflate"]["extensions"].startswith("permessage-deflate")
    assert variants["1.0"]["status"] == 505
    text = findings(report)
    assert "does not accept a WebSocket handshake over HTTP/1.0 (505" in text
    assert "Swoole" not in text


async def test_a_backend_that_rejects_firefoxs_form() -> None:
    async with literal_connection_check() as backend:
        code, report = await probe_json(f"ws://127.0.0.1:{backend.port}/ws")
    variants = by_name(report)
    assert code == 0
    assert variants["1.1 keep-alive"]["status"] == 400
    assert variants["1.1"]["held"] is True
    text = findings(report)
    assert "refuses Firefox's handshake" in text
    assert "HTTP/1.0 with the same Connection header is refused the same way" in text
    assert "HTTP/1.0 handshakes fail" not in text
    assert "Swoole" not in text


async def test_a_backend_that_answers_200() -> None:
    body = b"<html>hello</html>"
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    async with answering(response) as backend:
        code, out, err = await run_probe(f"ws://127.0.0.1:{backend.port}/ws", "--hold", HOLD)
    assert code == 1, out + err
    assert "got 200 OK instead of 101" in flat(out)


async def test_a_backend_with_a_wrong_accept() -> None:
    async with wrong_accept() as backend:
        code, report = await probe_json(f"ws://127.0.0.1:{backend.port}/ws")
    assert code == 1
    assert by_name(report)["1.1"]["accept_ok"] is False
    assert "wrong Sec-WebSocket-Accept" in findings(report)


async def test_the_headers_and_origin_asked_for_are_sent() -> None:
    async with swoole_like() as backend:
        code, _ = await probe_json(
            f"ws://127.0.0.1:{backend.port}/ws?x=1",
            "--origin",
            "https://app.example",
            "-H",
            "X-Probe: yes",
        )
        heads = [seen.head for seen in backend.seen]
    assert code == 0
    assert len(heads) == 5
    assert {head.start_line.split(" ")[1] for head in heads} == {"/ws?x=1"}
    assert {head.get("Origin") for head in heads} == {"https://app.example"}
    assert {head.get("X-Probe") for head in heads} == {"yes"}
    assert {frozenset(connection_tokens(head)) for head in heads} == {
        frozenset({"upgrade"}),
        frozenset({"keep-alive", "upgrade"}),
    }


# --- from the alarm to the cause -------------------------------------------------------


async def test_an_early_close_names_the_probe_that_finds_its_cause(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """wsproxy in front of the outage's nginx: the early close it sees names
    the probe command for the next hop, and that command finds nginx."""
    caplog.set_level(logging.WARNING, logger="wsproxy.early_close")
    async with (
        swoole_like() as backend,
        running_nginx(tmp_path, backend.port, http11=False) as nginx,
        observed_proxy(config_text(nginx)) as obs,
    ):
        async with obs.http.ws_connect(f"http://127.0.0.1:{obs.port}/ws?token=secret") as ws:
            assert (await ws.receive(timeout=5)).type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
        await obs.sessions_ended()
        [early] = (await obs.status_json())["recent_early_closes"]
        # The command as an operator pastes it into a shell.
        argv = shlex.split(early["probe"])
        assert argv[:2] == ["wsproxy", "probe"]
        code, out, _ = await run_probe(*argv[2:], "--hold", HOLD)
    command = f"wsproxy probe ws://127.0.0.1:{nginx}/ws"
    assert early["probe"] == command
    [warning] = [r.getMessage() for r in caplog.records]
    assert f"to test that server's handshakes: {command};" in warning
    assert "secret" not in warning
    assert code == 1
    assert "Server: nginx/" in out
    assert "proxy_http_version 1.1;" in flat(out)


# --- hostile or odd servers ---------------------------------------------------------


async def test_a_per_client_limit_is_not_blamed_on_the_forms() -> None:
    """wsproxy allowing 2 sessions per client: 3 of the 5 concurrent
    handshakes get 429, which says nothing about their form."""
    limited = config_text(0).replace(
        "upstreams:", "proxy:\n  max_websockets_per_client: 2\nupstreams:"
    )
    async with swoole_like() as backend:
        text = limited.replace('"127.0.0.1:0"', f'"127.0.0.1:{backend.port}"')
        async with running_proxy(text) as (_, port):
            _, report = await probe_json(f"ws://127.0.0.1:{port}/ws")
    statuses = sorted(v["status"] for v in report["variants"])
    assert statuses.count(429) == 3, statuses
    text = findings(report)
    assert "concurrent handshakes got 429" in text
    assert "Firefox" not in text
    assert "HTTP/1.0" not in text
    assert "every form held" not in text


async def test_a_server_that_is_not_http_is_said_at_once() -> None:
    """An SSH-like banner and an open connection: no wait for --timeout."""
    handlers: list[asyncio.Task[Any]] = []

    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        writer.write(b"SSH-2.0-OpenSSH_9.2p1\r\n")
        try:
            await reader.read()  # holds the connection open until the client goes
        finally:
            writer.close()

    server = await asyncio.start_server(banner, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        code, out, _ = await run_probe(f"ws://127.0.0.1:{port}/", "--timeout", "60s", timeout=20)
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()
    assert code == 1
    assert "not an HTTP response (it began b'SSH-2.0" in flat(out)


async def test_a_servers_escape_sequences_do_not_reach_the_terminal() -> None:
    response = (
        b"HTTP/1.1 403 \x1b]0;pwned\x07\x1b[2J\r\n"
        b"Server: nginx\x1b[31m\r\nContent-Length: 0\r\n\r\n"
    )
    async with answering(response) as backend:
        code, out, err = await run_probe(f"ws://127.0.0.1:{backend.port}/", "--hold", HOLD)
    assert code == 1
    assert "\x1b" not in out + err
    assert "\\x1b]0;pwned" in out


# --- bad input: one clear line each --------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["not a url"], "not a WebSocket URL"),
        (["ws://127.0.0.1:0/"], "not a number from 1 to 65535"),
        (["ws://h/", "--hold", "soon"], "invalid duration 'soon'"),
        (["ws://h/", "-H", "Bad"], "expected 'Name: value'"),
        (["ws://h/", "--hold", "0s"], "--hold must be more than 0"),
        (["ws://h/", "--origin", "x\r\nX-Injected: yes"], "--origin: the value must be"),
        (["ws://h/", "--subprotocol", "a b"], "a subprotocol is a token"),
        (["ws://[::1/"], "not a valid URL"),
        (["ws://u:hunter2@h/"], "credentials in the URL are not sent"),
    ],
)
async def test_a_usage_error_exits_2_with_one_line(args: list[str], message: str) -> None:
    code, out, err = await run_probe(*args)
    assert code == 2
    assert message in err
    assert out == ""
    assert "Traceback" not in err


async def test_a_refused_connection_is_one_line() -> None:
    port = free_port()
    code, out, err = await run_probe(f"ws://127.0.0.1:{port}/")
    assert code == 1
    assert err == f"wsproxy probe: cannot connect to 127.0.0.1:{port}: connection refused\n"
    assert out == ""


@pytest.mark.parametrize("host", ["a..b", "x" * 64 + ".example"])
async def test_a_host_name_that_cannot_be_one_is_one_line(host: str) -> None:
    code, out, err = await run_probe(f"ws://{host}/")
    assert code == 1
    assert err.startswith(f"wsproxy probe: cannot resolve {host!r}")
    assert err.count("\n") == 1
    assert out == ""


async def test_an_unknown_host_is_one_line() -> None:
    code, _, err = await run_probe("ws://no-such-host.invalid/")
    assert code == 1
    assert err.startswith("wsproxy probe: cannot resolve 'no-such-host.invalid'")
    assert err.count("\n") == 1


async def test_tls_against_a_plain_http_server_is_one_line() -> None:
    async def bad_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # a ClientHello is no HTTP: 400, as nginx answers it
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(bad_request, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        code, _, err = await run_probe(f"wss://127.0.0.1:{port}/")
    finally:
        server.close()
        await server.wait_closed()
    assert code == 1
    assert err.startswith(f"wsproxy probe: TLS handshake with 127.0.0.1:{port} failed")
    assert "not a TLS port?" in err
    assert err.count("\n") == 1


async def test_tls_against_a_server_that_waits_is_one_line() -> None:
    async with swoole_like() as backend:  # waits for a request head that never comes
        code, _, err = await run_probe(f"wss://127.0.0.1:{backend.port}/", "--timeout", "0.5s")
    assert code == 1
    assert err == (
        f"wsproxy probe: TLS handshake with 127.0.0.1:{backend.port} did not complete "
        "within 0.5s (not a TLS port?)\n"
    )


async def test_a_non_http_answer_is_said_per_handshake() -> None:
    async with answering(b"SSH-2.0-OpenSSH_9.2p1\r\n") as backend:
        code, out, err = await run_probe(f"ws://127.0.0.1:{backend.port}/", "--hold", HOLD)
    assert code == 1
    assert "not an HTTP response (it began b'SSH-2.0" in flat(out)
    assert "Traceback" not in err


@pytest.fixture
async def wss_server() -> AsyncIterator[int]:
    """A ``websockets`` echo over TLS, with a certificate from a CA nobody trusts."""
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    async with serve(_echo, "127.0.0.1", 0, ssl=context) as server:
        yield server.sockets[0].getsockname()[1]


async def test_an_untrusted_certificate_is_one_line(wss_server: int) -> None:
    code, out, err = await run_probe(f"wss://127.0.0.1:{wss_server}/")
    assert code == 1
    assert err.startswith("wsproxy probe: TLS: the certificate of 127.0.0.1 is not trusted")
    assert err.endswith("; --insecure skips the check\n")
    assert out == ""


async def test_insecure_probes_a_wss_server(wss_server: int) -> None:
    code, report = await probe_json(f"wss://127.0.0.1:{wss_server}/", "--insecure")
    assert code == 0
    assert by_name(report)["1.1"]["held"] is True


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """Accepts and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_server_that_never_answers(silent_server: int) -> None:
    code, out, err = await run_probe(
        f"ws://127.0.0.1:{silent_server}/", "--timeout", "0.3s", "--hold", HOLD
    )
    assert code == 1
    assert "no response within 0.3s" in flat(out)
    assert "Traceback" not in err
