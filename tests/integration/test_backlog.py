"""``listen[].backlog`` reaches ``listen()``: at start (where the event loop's
server listens again), and on a reload that changes it. Checked by recording
the calls, not by timing a burst (the scale bench measures drops)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from tests.support.observe_helpers import observed_proxy
from tests.support.proxy import config_text
from wsproxy.listeners import bind, system_backlog


@pytest.fixture
def listened(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every backlog passed to socket.socket.listen from here on."""
    calls: list[int] = []
    original = socket.socket.listen

    def listen(self: socket.socket, backlog: int = 128) -> None:
        calls.append(backlog)
        original(self, backlog)

    monkeypatch.setattr(socket.socket, "listen", listen)
    return calls


def test_the_default_is_the_kernels_somaxconn(listened: list[int]) -> None:
    for sock in bind("127.0.0.1", 0):
        sock.close()
    expected = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert listened == [expected]
    assert system_backlog() == expected


def test_a_configured_backlog(listened: list[int]) -> None:
    for sock in bind("127.0.0.1", 0, backlog=7):
        sock.close()
    assert listened == [7]


async def test_the_backlog_reaches_listen_at_start_and_on_reload(
    tmp_path: Path, listened: list[int]
) -> None:
    if asyncio.get_running_loop().__class__.__module__.startswith("uvloop"):
        pytest.skip("uvloop listens again through libuv, not through socket.listen")
    text = config_text(9).replace("    port: 0\n", "    port: 0\n    backlog: 77\n", 1)
    async with observed_proxy(text) as obs:
        # bind() listens, then the loop's server (create_server(sock=...))
        # again; then the admin listener, with aiohttp's own backlog.
        assert listened[:2] == [77, 77]
        config = tmp_path / "wsproxy.yaml"
        # The same listen entry (127.0.0.1:0 names the listener), another backlog.
        config.write_text(text.replace("backlog: 77", "backlog: 99"))
        assert await obs.server.reload_from(str(config))
        assert listened[-1] == 99
        assert obs.server._listeners[next(iter(obs.server._listeners))].backlog == 99
