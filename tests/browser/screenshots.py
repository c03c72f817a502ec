"""Screenshots of the status page and the demo page, for README (`make screenshots`).

A real proxy in front of the demo's echo backend (route ``/``) and of a
backend that drops every WebSocket right after ``101`` (route ``/legacy``,
the outage's symptom), with a few sessions open and two early closes, so
the status page shows each of its parts.  Written to ``docs/``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import threading
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support.backends import Seen, recording
from tests.support.browser import WAIT, chromium
from tests.support.proxy import LISTENERS_ON_PORT_0
from wsproxy.config import parse_config
from wsproxy.demo import backend_app
from wsproxy.server import ProxyServer


async def _drop(seen: Seen) -> None:
    assert seen.writer is not None
    seen.writer.close()


def _config(echo: int, dropper: int) -> str:
    return f"""\
{LISTENERS_ON_PORT_0}upstreams:
  echo:
    servers: ["127.0.0.1:{echo}"]
  legacy:
    servers: ["127.0.0.1:{dropper}"]
routes:
  - path_prefix: /legacy
    upstream: legacy
  - path_prefix: /
    upstream: echo
"""


@contextlib.contextmanager
def running_proxy() -> Iterator[tuple[int, int]]:
    """(proxy port, admin port), served from a thread's event loop."""
    loop = asyncio.new_event_loop()
    ready: asyncio.Future[tuple[int, int]] = loop.create_future()
    stop = asyncio.Event()

    async def main() -> None:
        runner = web.AppRunner(backend_app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        echo = int(runner.addresses[0][1])
        async with recording(_drop) as dropper:
            config = parse_config(_config(echo, dropper.port), "screenshots.yaml")
            proxy = ProxyServer(config, access_log=io.StringIO())
            await proxy.start()
            ready.set_result((proxy.addresses[0][1], proxy.admin_address[1]))
            await stop.wait()
            await proxy.stop()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        yield asyncio.run_coroutine_threadsafe(_wait(ready), loop).result(timeout=WAIT)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=WAIT)


async def _wait(future: asyncio.Future[tuple[int, int]]) -> tuple[int, int]:
    return await future


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with running_proxy() as (port, admin), chromium(1280, 1500) as browser:
        sessions: list[ClientConnection] = []
        for name in ("chat-alice", "chat-bob", "feed-carol"):
            ws = connect(
                f"ws://127.0.0.1:{port}/ws?token=not-shown",
                additional_headers={"X-Request-ID": name},
            )
            for _ in range(3):
                ws.send(f"hello from {name}")
                ws.recv(timeout=WAIT)
            sessions.append(ws)
        for index in range(2):  # two sessions the legacy backend drops after 101
            with (
                contextlib.suppress(ConnectionClosed, TimeoutError),
                connect(
                    f"ws://127.0.0.1:{port}/legacy/ws",
                    additional_headers={"X-Request-ID": f"legacy-{index}"},
                ) as ws,
            ):
                ws.recv(timeout=WAIT)
        wait = WebDriverWait(browser, WAIT)
        browser.get(f"http://localhost:{admin}/")
        wait.until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "#sessions tr[data-request-id]")) == 3
        )
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#early .early")) == 2)
        browser.save_screenshot(str(args.out / "status-page.png"))
        browser.get(f"http://localhost:{port}/")
        wait.until(lambda d: "echo: first message" in d.find_element(By.ID, "log").text)
        browser.set_window_size(1280, 700)
        browser.save_screenshot(str(args.out / "demo-page.png"))
        for ws in sessions:
            ws.close()
    print(f"wrote {args.out / 'status-page.png'} and {args.out / 'demo-page.png'}")


if __name__ == "__main__":
    main()
