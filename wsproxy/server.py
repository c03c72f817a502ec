"""The server state and lifecycle: listeners, the drain, open sessions, signals.

A :class:`ProxyServer` owns what outlives one request and one configuration:
the front listeners and their connections, the admin listener, the draining
flag and the set of open WebSocket sessions (taken over from their client
connections at the ``101``).  Requests go to its :class:`~wsproxy.dispatch.Proxy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator
from typing import TextIO

from aiohttp import web

from wsproxy.admin import admin_app
from wsproxy.config import Config
from wsproxy.dispatch import Proxy
from wsproxy.http.front import ClientConnection, FrontSettings
from wsproxy.observe import Observability
from wsproxy.sessions import SessionInfo
from wsproxy.tunnel import Tunnel
from wsproxy.upstreams.servers import Upstreams

log = logging.getLogger("wsproxy")


def front_settings(config: Config) -> FrontSettings:
    proxy = config.proxy
    return FrontSettings(
        max_header_size=proxy.max_header_size,
        max_body_size=proxy.max_body_size,
        client_header_timeout=proxy.client_header_timeout,
        client_body_timeout=proxy.client_body_timeout,
        send_timeout=proxy.send_timeout,
        keepalive_timeout=proxy.keepalive_timeout,
    )


class ProxyServer:
    """The front listeners of one process, started and stopped as a unit."""

    def __init__(self, config: Config, access_log: TextIO | None = None) -> None:
        self.config = config
        #: The open WebSocket sessions, from their 101 to their end.
        self.sessions: dict[Tunnel, SessionInfo] = {}
        #: Set once shutdown began: no new sessions, /readyz 503.
        self.draining = False
        self.observability = Observability(config, self.sessions, access_log)
        self.proxy = Proxy(config, self.observability, self)
        self.connections: set[ClientConnection] = set()
        self._listeners: list[asyncio.Server] = []
        self._admin: web.AppRunner | None = None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) of each listener (port 0 resolved)."""
        return [
            (str(sock.getsockname()[0]), int(sock.getsockname()[1]))
            for listener in self._listeners
            for sock in listener.sockets
        ]

    @property
    def upstreams(self) -> Upstreams:
        return self.proxy.upstreams

    # --- websocket.SessionOwner ---------------------------------------------

    def session_started(self, tunnel: Tunnel, info: SessionInfo, method: str) -> None:
        self.sessions[tunnel] = info
        self.observability.session_started(info, method)

    def session_ended(self, tunnel: Tunnel) -> None:
        info = self.sessions.pop(tunnel, None)
        if info is not None:
            self.observability.session_ended(tunnel, info)

    @property
    def admin_address(self) -> tuple[str, int]:
        assert self._admin is not None
        address = self._admin.addresses[0]
        return str(address[0]), int(address[1])

    async def start(self) -> None:
        await self.proxy.open()
        loop = asyncio.get_running_loop()
        settings = front_settings(self.config)
        proxy = self.proxy
        connections = self.connections

        def factory() -> ClientConnection:
            return ClientConnection(proxy, settings, connections)

        self._admin = web.AppRunner(
            admin_app(self),
            access_log=None,
            handle_signals=False,
        )
        await self._admin.setup()
        try:
            for listen in self.config.listen:
                listener = await loop.create_server(
                    factory,
                    listen.host,
                    listen.port,
                    reuse_address=True,
                    backlog=socket.SOMAXCONN,
                )
                self._listeners.append(listener)
            admin = self.config.admin
            await web.TCPSite(self._admin, admin.host, admin.port, reuse_address=True).start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop accepting, end open sessions, let requests finish, then close.

        Graceful drain with ``1001`` close frames at a frame boundary comes
        with the production-behaviour work; until then sessions end with FIN
        (``how=drain``), and whatever remains after the grace period is reset.
        """
        try:
            await self._stop()
        finally:
            # Every line logged so far, however the stop ended.
            self.observability.access_log.flush()

    async def _stop(self) -> None:
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.shutdown.grace_period
        for listener in self._listeners:
            listener.close()  # no new connections from here on
        # Sessions are no connection's any more (taken over at the 101): end
        # them and wait, so each is counted and logged; a handshake whose 101
        # arrives meanwhile is closed at once (websocket.py), so this converges.
        while self.sessions and (remaining := deadline - loop.time()) > 0:
            tunnels = list(self.sessions)
            for tunnel in tunnels:
                tunnel.shutdown()
            await asyncio.wait([tunnel.finished for tunnel in tunnels], timeout=remaining)
        leftovers = list(self.sessions)
        for tunnel in leftovers:
            tunnel.close("drain", reset=True)
        if leftovers:  # a reset is reported on the next loop turns
            await asyncio.wait([tunnel.finished for tunnel in leftovers], timeout=1.0)
        # Keep-alive connections close now when idle, busy ones after their
        # answer (a handshake on one meanwhile got 503).
        for connection in list(self.connections):
            connection.shutdown()
        busy = [connection.closed for connection in self.connections]
        remaining = deadline - loop.time()
        if busy and remaining > 0:
            await asyncio.wait(busy, timeout=remaining)
        for connection in list(self.connections):
            connection.reset()
        if self.connections:
            await asyncio.wait([c.closed for c in self.connections], timeout=1.0)
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners.clear()
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None
        await self.proxy.close()


@contextlib.contextmanager
def stop_signals() -> Iterator[asyncio.Event]:
    """An event set by the first SIGINT or SIGTERM (a container's stop).

    Enter it before opening any listener: once a port accepts connections,
    a supervisor may send SIGTERM, and without a handler that signal kills
    the process instead of stopping it cleanly.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        yield stop
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


async def serve(config: Config) -> None:
    """Run until SIGINT or SIGTERM, then stop cleanly."""
    server = ProxyServer(config)
    with stop_signals() as stop:
        try:
            await server.start()
            for host, port in server.addresses:
                log.info("listening on http://%s:%d", host, port)
            log.info("admin on http://%s:%d (/metrics, /healthz, /readyz)", *server.admin_address)
            await stop.wait()
            log.info("stopping")
        finally:
            await server.stop()
