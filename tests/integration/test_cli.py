"""The command line as a user runs it: real processes, real ports, exit statuses.

PRODUCT.md fixes the interface: ``serve``/``check``/``demo``, ``python -m
wsproxy`` equal to the ``wsproxy`` script, configuration errors as
``FILE:LINE:COLUMN: dotted.path: what is wrong`` with exit status 2 and
nothing started, runtime failures (a port in use) exit 1, SIGTERM stops
``serve`` cleanly with exit status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import subprocess
import sys
import sysconfig
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from tests.support.process import TIMEOUT, Process, free_port, spawn

SCRIPT = Path(sysconfig.get_path("scripts")) / "wsproxy"

#: ``FILE:LINE:COLUMN: dotted.path: message``
ISSUE_RE = re.compile(
    r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<path>[\w.\[\]']+): (?P<msg>.+)$"
)


@pytest.fixture(params=["python-m", "console-script"])
def wsproxy_cmd(request: pytest.FixtureRequest) -> list[str]:
    """Both ways of running wsproxy; the script only where it is installed."""
    if request.param == "python-m":
        return [sys.executable, "-m", "wsproxy"]
    if not SCRIPT.exists():
        pytest.skip(f"console script {SCRIPT} is not installed")
    return [str(SCRIPT)]


def config(port: int, upstream_port: int, *, upstream_ref: str = "app") -> str:
    return f"""\
listen:
  - host: 127.0.0.1
    port: {port}
admin:
  host: 127.0.0.1
  port: {free_port()}
upstreams:
  app:
    servers: ["127.0.0.1:{upstream_port}"]
routes:
  - path_prefix: /
    upstream: {upstream_ref}
"""


THREE_MISTAKES = """\
listen:
  - host: 127.0.0.1
    port: 99999
admin:
  host: 127.0.0.1
  port: 9090
upstreams:
  app:
    servers: ["127.0.0.1:1215"]
routes:
  - path_prefix: /
    upstream: ap
    websocket:
      idle_timeout: soon
"""


def run(cmd: list[str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cmd, *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# --- check ------------------------------------------------------------------


def test_check_accepts_a_valid_file(wsproxy_cmd: list[str], tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(config(8080, 1215))
    result = run(wsproxy_cmd, "check", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "valid" in result.stdout


def test_check_reports_every_mistake_with_its_position(
    wsproxy_cmd: list[str], tmp_path: Path
) -> None:
    (tmp_path / "proxy.yaml").write_text(THREE_MISTAKES)
    result = run(wsproxy_cmd, "check", "-c", "proxy.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 3, result.stderr
    issues = []
    for line in lines:
        match = ISSUE_RE.match(line)
        assert match is not None, f"not FILE:LINE:COL: path: message: {line!r}"
        issues.append(match)
    assert [(m["file"], m["line"], m["col"], m["path"]) for m in issues] == [
        ("proxy.yaml", "3", "11", "listen[0].port"),
        ("proxy.yaml", "12", "15", "routes[0].upstream"),
        ("proxy.yaml", "14", "21", "routes[0].websocket.idle_timeout"),
    ]
    assert "99999" in issues[0]["msg"]
    assert "unknown upstream 'ap' (known: app)" in issues[1]["msg"]
    assert "'soon'" in issues[2]["msg"]


def test_check_a_missing_file_is_a_clear_error(wsproxy_cmd: list[str], tmp_path: Path) -> None:
    result = run(wsproxy_cmd, "check", "-c", "missing.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("missing.yaml: ")
    assert "no such file" in line.lower()


def test_no_command_is_a_usage_error(wsproxy_cmd: list[str]) -> None:
    result = run(wsproxy_cmd)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: ")
    assert "Traceback" not in result.stderr


# --- serve --------------------------------------------------------------------


def test_serve_with_an_invalid_file_starts_nothing(wsproxy_cmd: list[str], tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "proxy.yaml"
    path.write_text(config(port, 1215, upstream_ref="ap"))
    result = run(wsproxy_cmd, "serve", "-c", str(path))
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    match = ISSUE_RE.match(line)
    assert match is not None, line
    assert match["path"] == "routes[0].upstream"
    assert "listening" not in result.stderr
    assert not accepts(port)


def test_serve_on_a_port_in_use_fails_with_one_line(wsproxy_cmd: list[str], tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        path = tmp_path / "proxy.yaml"
        path.write_text(config(port, 1215))
        result = run(wsproxy_cmd, "serve", "-c", str(path))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert str(port) in line
    assert "in use" in line.lower()


@contextlib.asynccontextmanager
async def echo_backend() -> AsyncIterator[int]:
    """A small aiohttp app: a page that reports its HTTP version, a WebSocket echo."""

    async def hello(request: web.Request) -> web.Response:
        version = f"HTTP/{request.version.major}.{request.version.minor}"
        return web.Response(text=f"hello over {version}")

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                await ws.send_str(message.data)
        return ws

    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_get("/ws", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


async def websocket_echo(url: str, text: str, process: Process) -> None:
    """Send ``text`` over a WebSocket to ``url``; expect it back."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
        try:
            ws = await http.ws_connect(url)
        except aiohttp.WSServerHandshakeError as exc:
            raise AssertionError(
                f"WebSocket handshake through wsproxy failed ({exc.status}); "
                f"wsproxy's stderr:\n{process.stderr()}"
            ) from None
        async with ws:
            await ws.send_str(text)
            message = await ws.receive(timeout=TIMEOUT)
            assert message.type is WSMsgType.TEXT, message
            assert message.data == text


async def test_serve_proxies_http_and_websocket_then_stops_on_sigterm(
    wsproxy_cmd: list[str], tmp_path: Path
) -> None:
    port = free_port()
    async with echo_backend() as backend_port:
        path = tmp_path / "proxy.yaml"
        path.write_text(config(port, backend_port))
        async with spawn(
            wsproxy_cmd, "serve", "-c", str(path), stderr=tmp_path / "stderr.log"
        ) as proxy:
            await proxy.wait_listening(port)
            base = f"http://127.0.0.1:{port}"
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
                http.get(f"{base}/hello") as response,
            ):
                assert response.status == 200
                assert await response.text() == "hello over HTTP/1.1"
            await websocket_echo(f"{base}/ws", "through the proxy", proxy)
            status = await proxy.stop(signal.SIGTERM)
            stderr = proxy.stderr()
        assert status == 0, stderr
        assert "Traceback" not in stderr
        assert not accepts(port)


async def test_serve_stops_cleanly_on_sigterm(wsproxy_cmd: list[str], tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "proxy.yaml"
    path.write_text(config(port, 1215))
    async with spawn(wsproxy_cmd, "serve", "-c", str(path), stderr=tmp_path / "stderr.log") as p:
        await p.wait_listening(port)
        status = await p.stop(signal.SIGTERM)
        stderr = p.stderr()
    assert status == 0, stderr
    assert "Traceback" not in stderr
    assert not accepts(port)


# --- demo ---------------------------------------------------------------------

URL_RE = re.compile(r"https?://[^\s/]+:(?P<port>\d+)/")


async def demo_url(demo: Process, port: int) -> str:
    """The URL the demo prints on stdout, once it accepts connections."""
    stdout = demo.process.stdout
    assert stdout is not None
    async with asyncio.timeout(TIMEOUT):
        first = (await stdout.readline()).decode()
    match = URL_RE.search(first)
    assert match is not None, f"no URL in {first!r}; stderr:\n{demo.stderr()}"
    assert int(match["port"]) == port
    await demo.wait_listening(port)
    return match[0]


async def test_demo_serves_page_websocket_and_http11_then_stops_on_sigint(
    wsproxy_cmd: list[str], tmp_path: Path
) -> None:
    port = free_port()
    async with spawn(
        wsproxy_cmd, "demo", "--port", str(port), stderr=tmp_path / "stderr.log"
    ) as demo:
        url = await demo_url(demo, port)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            async with http.get(url) as response:
                assert response.status == 200
                assert response.content_type == "text/html"
                assert "new WebSocket" in await response.text()
            async with http.get(f"{url}api/seen") as response:
                assert response.status == 200
                seen = await response.json()
            assert seen["http_version"] == "1.1"
        await websocket_echo(f"{url}ws", "hello demo", demo)
        status = await demo.stop(signal.SIGINT)  # Ctrl-C, as the demo says
        stderr = demo.stderr()
    assert "Traceback" not in stderr
    assert status == 0, stderr
    assert not accepts(port)


async def test_demo_stops_cleanly_on_sigterm(wsproxy_cmd: list[str], tmp_path: Path) -> None:
    # docker stop and kubectl delete send SIGTERM; as PID 1 in a container a
    # process without a SIGTERM handler ignores it until SIGKILL comes.
    port = free_port()
    async with spawn(
        wsproxy_cmd, "demo", "--port", str(port), stderr=tmp_path / "stderr.log"
    ) as demo:
        await demo_url(demo, port)
        status = await demo.stop(signal.SIGTERM)
        stderr = demo.stderr()
    assert "Traceback" not in stderr
    assert status == 0, f"exit status {status} after SIGTERM (-15: killed by it):\n{stderr}"
    assert not accepts(port)
