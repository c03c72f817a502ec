"""A little steady traffic through wsproxy, so the compose example's dashboard has data.

Runs in the wsproxy image like echo.py:

    python3 /srv/echo/traffic.py --url http://wsproxy:8080 [--sessions 5] [--drop-every 60]

It keeps ``--sessions`` WebSockets open on ``/ws``, each sending a message a
second (and pinging, so control frames show up too), requests ``/api/seen``
every two seconds, and every ``--drop-every`` seconds (0: never) opens
``/ws/drop``, whose backend drops the connection right after ``101``: an early
close by the upstream, code 1006, which wsproxy counts, logs with a diagnosis
and the WsproxyWebSocketEarlyCloses alert reports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

import aiohttp

log = logging.getLogger("traffic")


async def session(client: aiohttp.ClientSession, url: str, number: int) -> None:
    """One long-lived WebSocket that echoes a message a second; reconnects on failure."""
    while True:
        try:
            async with client.ws_connect(url + "/ws", heartbeat=15) as ws:
                sent = 0
                while True:
                    sent += 1
                    await ws.send_str(f"session {number} message {sent}")
                    reply = await ws.receive(timeout=10)
                    if reply.type is not aiohttp.WSMsgType.TEXT:
                        break
                    await asyncio.sleep(1)
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning("session %d: %s", number, error)
        await asyncio.sleep(2)


async def plain(client: aiohttp.ClientSession, url: str) -> None:
    while True:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with client.get(url + "/api/seen") as response:
                await response.read()
        await asyncio.sleep(2)


async def drops(client: aiohttp.ClientSession, url: str, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with client.ws_connect(url + "/ws/drop") as ws:
                await ws.receive(timeout=5)


async def run(url: str, sessions: int, drop_every: float) -> None:
    # PID 1 in a container: SIGTERM (docker stop) has no default action, so
    # end the run on it explicitly.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    timeout = aiohttp.ClientTimeout(total=None, connect=5, sock_read=30)
    async with aiohttp.ClientSession(timeout=timeout) as client, asyncio.TaskGroup() as group:
        for number in range(sessions):
            group.create_task(session(client, url, number), name=f"session-{number}")
        group.create_task(plain(client, url), name="plain")
        if drop_every > 0:
            group.create_task(drops(client, url, drop_every), name="drops")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://wsproxy:8080")
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--drop-every", type=float, default=60.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(run(args.url.rstrip("/"), args.sessions, args.drop_every))


if __name__ == "__main__":
    main()
