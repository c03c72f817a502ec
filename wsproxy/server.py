"""The server state and lifecycle: listeners, the drain, open sessions, signals.

A :class:`ProxyServer` owns what outlives one request and one configuration:
the front listeners and their connections, the admin listener, the draining
flag and the set of open WebSocket sessions (taken over from their client
connections at the ``101``).  Requests go to its :class:`~wsproxy.dispatch.Proxy`.

With several workers (wsproxy.workers) each worker process runs one
ProxyServer in a :class:`WorkerRole`: its listeners share their ports with
the other workers' (``SO_REUSEPORT``), its admin endpoints answer only the
supervisor, on a Unix socket, and the supervisor counts reloads.
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
from wsproxy.config import Address, Config, ConfigError, ListenSettings, load_config
from wsproxy.dispatch import Proxy
from wsproxy.http.front import ClientConnection, FrontSettings
from wsproxy.listeners import Arrival, Gate, Listener, Preamble, bind, system_backlog
from wsproxy.memory import FullCollections, Trimmer, tune_collector
from wsproxy.observe import EndReports, Observability
from wsproxy.sessions import SessionInfo
from wsproxy.tls import TlsContexts
from wsproxy.tls import load as load_tls
from wsproxy.tunnel import Tunnel, end_gate, turn_budget
from wsproxy.upstreams.servers import Upstreams
from wsproxy.workers import WorkerRole
from wsproxy.wsframes import FrameBudget

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

    def __init__(
        self, config: Config, access_log: TextIO | None = None, role: WorkerRole | None = None
    ) -> None:
        self.config = config
        self.role = role
        #: The open WebSocket sessions, from their 101 to their end.
        self.sessions: dict[Tunnel, SessionInfo] = {}
        #: Gives freed memory back after a mass close (wsproxy.memory).
        self.trimmer = Trimmer()
        #: Ended sessions reported a few dozen per loop turn (observe.EndReports).
        self.ends = EndReports(self._report_end)
        #: Set once shutdown began: no new sessions, /readyz 503.
        self.draining = False
        #: WebSocket sessions (and handshakes in flight) per client address,
        #: for proxy.max_websockets_per_client.
        self._per_client: dict[str, int] = {}
        self.observability = Observability(
            config, self.sessions, access_log, None if role is None else role.index
        )
        self.proxy = Proxy(config, self.observability, self)
        self.connections: set[ClientConnection] = set()
        #: Each configured listen address's listener (an unchanged one is kept
        #: across reloads, so no connection is refused in between).
        self._listeners: dict[Address, Listener] = {}
        self._settings = front_settings(config)
        #: The certificates in force (read at start and on every reload).
        self.tls = TlsContexts()
        self._admin: web.AppRunner | None = None
        self._admin_site: web.BaseSite | None = None
        self._frame_budget: FrameBudget | None = None
        #: One reload at a time (signals that come meanwhile wait their turn).
        self._reloading = asyncio.Lock()
        self._stopping: asyncio.Future[None] | None = None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) of each listener (port 0 resolved)."""
        return [(host, port) for _scheme, host, port in self.listening]

    @property
    def listening(self) -> list[tuple[str, str, int]]:
        """(scheme, host, port) of each listening socket, for the start's log lines."""
        return [
            (
                "https" if listener.preamble.tls is not None else "http",
                str(sock.getsockname()[0]),
                int(sock.getsockname()[1]),
            )
            for listener in self._listeners.values()
            for sock in listener.sockets
        ]

    @property
    def upstreams(self) -> Upstreams:
        return self.proxy.upstreams

    @property
    def admin_host(self) -> str:
        return self.config.admin.host

    # --- websocket.SessionOwner ---------------------------------------------

    def admit(self, client: str, limit: int) -> bool:
        count = self._per_client.get(client, 0)
        if count >= limit:
            return False
        self._per_client[client] = count + 1
        return True

    def release(self, client: str) -> None:
        count = self._per_client.get(client, 0) - 1
        if count > 0:
            self._per_client[client] = count
        else:
            self._per_client.pop(client, None)  # the table holds only clients with sessions

    def session_started(self, tunnel: Tunnel, info: SessionInfo, method: str) -> None:
        self.sessions[tunnel] = info
        self.observability.session_started(tunnel, info, method)

    def session_ended(self, tunnel: Tunnel) -> None:
        info = self.sessions.pop(tunnel, None)
        if info is not None:
            self.observability.session_left(info)
            self.ends.ended(tunnel, info)

    def _report_end(self, tunnel: Tunnel, info: SessionInfo) -> None:
        self.observability.session_ended(tunnel, info)
        self.trimmer.ended()

    @property
    def admin_address(self) -> tuple[str, int]:
        assert self._admin is not None
        assert self.role is None
        address = self._admin.addresses[0]
        return str(address[0]), int(address[1])

    async def start(self) -> None:
        self._frame_budget = turn_budget(asyncio.get_running_loop())
        # ConfigError (wsproxy check and the supervisor already said so).
        self.tls = load_tls(self.config)
        await self.proxy.open(self._frame_budget, self.tls)
        self._admin = web.AppRunner(
            admin_app(self),
            access_log=None,
            handle_signals=False,
        )
        await self._admin.setup()
        try:
            for listen in self.config.listen:
                self._listeners[listen.address] = await self._listen(listen)
            if self.role is None:
                self._admin_site = await self._admin_listen(self.config.admin)
            else:
                self._admin_site = web.UnixSite(self._admin, self.role.control_path)
                await self._admin_site.start()
        except BaseException:
            await self.stop()
            raise

    def _connection(self, gate: Gate, arrival: Arrival) -> ClientConnection:
        """A new client connection, for the configuration in force now."""
        return ClientConnection(self.proxy, self._settings, self.connections, gate, arrival)

    def _preamble(self, listen: ListenSettings, config: Config, tls: TlsContexts) -> Preamble:
        return Preamble(
            listen.proxy_protocol,
            tls.listeners.get(listen.address),
            config.proxy.client_header_timeout,
        )

    async def _listen(
        self, listen: ListenSettings, config: Config | None = None, tls: TlsContexts | None = None
    ) -> Listener:
        label = str(listen.address)
        cap = system_backlog()
        if listen.backlog > cap:
            log.warning(
                "listen %s: backlog %d is cut to %d by the kernel (net.core.somaxconn)",
                label,
                listen.backlog,
                cap,
            )
        listener = Listener(
            bind(
                listen.host,
                listen.port,
                reuse_port=self.role is not None,
                backlog=listen.backlog,
            ),
            self._connection,
            listen.max_connections,
            self._preamble(listen, config or self.config, tls or self.tls),
            lambda stage, reason, peer: self.observability.refused(label, stage, reason, peer),
            listen.backlog,
            (config or self.config).proxy.tcp_keepalive,
        )
        try:
            await listener.start()
        except BaseException:
            listener.close()
            raise
        return listener

    async def _admin_listen(self, admin: Address) -> web.BaseSite:
        assert self._admin is not None
        site = web.TCPSite(self._admin, admin.host, admin.port, reuse_address=True)
        await site.start()
        return site

    # --- reload -------------------------------------------------------------

    async def reload_from(self, path: str) -> bool:
        """SIGHUP: read and check ``path``, then apply it; False when it was
        not applied (every reason logged; the configuration in force stays)."""
        async with self._reloading:
            # A worker's reloads are counted by the supervisor, once each.
            reloads = self.observability.metrics.reloads if self.role is None else None
            name = None if self.role is None else self.role.config_name
            try:
                config = load_config(path, name=name)
                tls = load_tls(config)  # a certificate that does not load fails the reload
            except ConfigError as exc:
                for issue in exc.issues:
                    log.error("reload: %s", issue)
                log.error(
                    "reload: %s has %d error(s); kept the configuration in force",
                    name or path,
                    len(exc.issues),
                )
                if reloads is not None:
                    reloads.labels("failure").inc()
                return False
            try:
                await self.reload(config, tls)
            except OSError as exc:
                log.error("reload: %s; kept the configuration in force", exc)
                if reloads is not None:
                    reloads.labels("failure").inc()
                return False
            if reloads is not None:
                reloads.labels("success").inc()
            log.info(
                "reloaded %s: %d route(s), %d upstream(s); %d WebSocket session(s) go on unchanged",
                name or path,
                len(config.routes),
                len(config.upstreams),
                len(self.sessions),
            )
            return True

    async def reload(self, config: Config, tls: TlsContexts | None = None) -> None:
        """Put ``config`` in force without dropping anything.

        * New listen addresses are bound first: if one cannot be, nothing
          changes (OSError).  Unchanged ones keep their socket, so no
          connection is refused in between; removed ones stop accepting, and
          their open connections go on.
        * New requests, on new connections and on kept-alive ones, use the
          new routes, upstreams and settings.  A server named again keeps its
          pool, health and load (least_conn); the others' pools close once
          their requests are answered.
        * Open WebSocket sessions are not touched: they own their sockets, on
          their old upstream connections, until they end (a removed route's
          sessions too).  Connections already open keep their header and
          timer limits until they close.
        * Certificates (``tls``, read by the caller; read here when None) take
          effect for new handshakes; a connection keeps the one it began with.
        """
        if self.draining:
            raise OSError("shutting down")
        if tls is None:
            tls = load_tls(config)
        # Everything that can fail comes first, and is undone if something does.
        added: dict[Address, Listener] = {}
        site = None
        wanted = {listen.address: listen for listen in config.listen}
        changed: list[tuple[Listener, int, Preamble]] = []
        try:
            for listen in config.listen:
                if listen.address not in self._listeners:
                    added[listen.address] = await self._listen(listen, config, tls)
            if self.role is None and config.admin != self.config.admin:
                site = await self._admin_listen(config.admin)
            for address, listener in self._listeners.items():
                kept = wanted.get(address)
                if kept is None:
                    continue  # closed below, once nothing can fail
                limit, preamble = kept.max_connections, self._preamble(kept, config, tls)
                if (listener.gate.limit, listener.preamble) != (limit, preamble):
                    before = (listener.gate.limit, listener.preamble)
                    await listener.configure(limit, preamble)
                    changed.append((listener, *before))
        except BaseException:
            for listener, limit, preamble in reversed(changed):
                try:
                    await listener.configure(limit, preamble)
                except OSError as exc:
                    log.error("reload: could not restore a listener's settings: %s", exc)
            for listener in added.values():
                listener.close()
                await listener.wait_closed()
            if site is not None:
                await site.stop()
            raise
        # From here nothing waits on the network or the file system.
        old = self.proxy
        proxy = Proxy(config, self.observability, self, reuse=old.upstreams)
        await proxy.open(self._frame_budget, tls)
        self.proxy = proxy
        self.config = config
        self.tls = tls
        self._settings = front_settings(config)
        for address, listener in self._listeners.items():
            if address in wanted:
                listener.set_backlog(wanted[address].backlog)
                listener.set_keepalive(config.proxy.tcp_keepalive)
        for connection in self.connections:
            connection.app = proxy
            # Its client info (trusted_proxies, the X-Forwarded-* lines) is
            # made again from the new settings at its next request.
            connection.app_data = None
        self.observability.reconfigure(config)
        for address in list(self._listeners):
            if address not in wanted:
                self._listeners.pop(address).close()
        self._listeners.update(added)
        if site is not None:
            old_site, self._admin_site = self._admin_site, site
            if old_site is not None:
                await old_site.stop()
        await old.retire(proxy)

    async def stop(self) -> None:
        """The drain: stop accepting, finish what is in flight, then close.

        * The listeners close first: new connections are refused (a load
          balancer's health check already sees ``/readyz`` 503).
        * Keep-alive connections close when idle, busy ones after their
          answer (``Connection: close``); a handshake on one gets ``503``.
        * Every WebSocket session gets ``1001 Going Away`` both ways at a
          frame boundary (Tunnel.shutdown), spread evenly over
          ``shutdown.close_spread`` so its clients do not all reconnect in
          the same millisecond.
        * At ``shutdown.grace_period`` whatever is still open is reset; the
          resets are reported within half a second more.
        """
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop_once())
        # Shielded: a second caller (a signal during the drain) waits for the
        # same drain; cancelling one caller does not cut it short for others.
        await asyncio.shield(self._stopping)

    async def _stop_once(self) -> None:
        try:
            await self._stop()
        finally:
            end_gate(asyncio.get_running_loop()).flush()  # ends still waiting for a turn
            self.ends.flush()  # counted and logged before the last lines go out
            self.trimmer.close()
            # Every line logged so far, however the stop ended.
            self.observability.access_log.flush()

    async def _stop(self) -> None:
        self.draining = True
        loop = asyncio.get_running_loop()
        shutdown = self.config.shutdown
        deadline = loop.time() + shutdown.grace_period
        for listener in self._listeners.values():
            listener.close()  # no new connections from here on
        for connection in list(self.connections):
            connection.shutdown()
        spread = self._spread_shutdowns(shutdown.close_spread)
        try:
            # Sessions are no connection's any more (taken over at the 101); a
            # handshake whose 101 arrives meanwhile is shut down at once
            # (websocket.py) and waited for in the next round.  A round waits
            # for all it saw (not the first to end: 10,000 sessions would cost
            # 10,000 rounds, each over every one left).
            while (self.sessions or self.connections) and (remaining := deadline - loop.time()) > 0:
                waits = [t.finished for t in self.sessions] + [c.closed for c in self.connections]
                await asyncio.wait(waits, timeout=remaining)
        finally:
            for handle in spread:
                handle.cancel()
        # The last ends come as they may, none waiting for a later turn
        # (tunnel.EndGate): every one is reported before the process ends.
        with end_gate(loop).unbounded():
            leftovers = [tunnel.finished for tunnel in self.sessions]
            # One connection that cannot be reset must not stop the rest of the drain.
            for tunnel in list(self.sessions):
                try:
                    tunnel.close("drain", reset=True)
                except Exception:
                    log.exception("drain: resetting a WebSocket session failed")
            for connection in list(self.connections):
                try:
                    connection.reset()
                except Exception:
                    log.exception("drain: resetting a client connection failed")
            leftovers += [connection.closed for connection in self.connections]
            if leftovers:  # a reset is reported on the next loop turns
                await asyncio.wait(leftovers, timeout=0.5)
        for listener in self._listeners.values():
            await listener.wait_closed()
        self._listeners.clear()
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None
        await self.proxy.close()

    def _spread_shutdowns(self, spread: float) -> list[asyncio.TimerHandle]:
        """Shut every open session down, evenly over ``spread`` seconds."""
        tunnels = list(self.sessions)
        if not spread or len(tunnels) < 2:
            for tunnel in tunnels:
                tunnel.shutdown()
            return []
        loop = asyncio.get_running_loop()
        step = spread / len(tunnels)
        tunnels[0].shutdown()
        return [
            loop.call_later(index * step, tunnel.shutdown)
            for index, tunnel in enumerate(tunnels[1:], start=1)
        ]


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


@contextlib.contextmanager
def reload_signal() -> Iterator[asyncio.Event]:
    """An event set by SIGHUP (which would otherwise end the process)."""
    reload = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    try:
        yield reload
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


async def serve(
    config: Config,
    path: str | None = None,
    role: WorkerRole | None = None,
    channel: socket.socket | None = None,
) -> None:
    """Run until SIGINT or SIGTERM, then drain; SIGHUP reloads ``path``.

    A worker (``role``) says ``ready`` on ``channel``, its socket to the
    supervisor, once it listens, and drains when the supervisor is gone
    (the channel's end of file), so no worker outlives it.
    """
    server = ProxyServer(config, role=role)
    collections: FullCollections | None = None
    with stop_signals() as stop, reload_signal() as reload:
        try:
            await server.start()
            tune_collector()  # what start-up made lives as long as the process
            collections = FullCollections(lambda: len(server.sessions) + len(server.connections))
            collections.start()
            for scheme, host, port in server.listening:
                log.info("listening on %s://%s:%d", scheme, host, port)
            if role is None:
                log.info(
                    "admin on http://%s:%d (/ the status page, /metrics, /healthz, /readyz)",
                    *server.admin_address,
                )
            if channel is not None:
                _tell_ready(channel, stop)
            await _until_stopped(server, stop, reload, path)
            log.info("stopping")
        finally:
            if collections is not None:
                collections.close()
            await server.stop()
            publisher = server.observability.metrics.publisher
            if publisher is not None:
                try:
                    publisher.publish()  # what the drain counted, for the next scrape
                except OSError as exc:  # the supervisor and its files are gone
                    log.warning("could not publish the last metrics: %s", exc)


def _tell_ready(channel: socket.socket, stop: asyncio.Event) -> None:
    """Say ``ready`` to the supervisor; set ``stop`` when its end closes."""
    channel.setblocking(True)
    channel.sendall(b"ready\n")
    channel.setblocking(False)
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            data = channel.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the supervisor is gone
            loop.remove_reader(channel)
            if not stop.is_set():
                log.warning("the supervisor is gone; stopping")
            stop.set()

    loop.add_reader(channel, readable)


async def _until_stopped(
    server: ProxyServer, stop: asyncio.Event, reload: asyncio.Event, path: str | None
) -> None:
    """Serve, reloading on each SIGHUP (one at a time), until SIGINT or SIGTERM."""
    stopping = asyncio.ensure_future(stop.wait())
    reloading = asyncio.ensure_future(reload.wait())
    try:
        while not stop.is_set():
            await asyncio.wait([stopping, reloading], return_when=asyncio.FIRST_COMPLETED)
            if reload.is_set() and not stop.is_set():
                reload.clear()  # a SIGHUP during this reload asks for one more
                reloading = asyncio.ensure_future(reload.wait())
                if path is None:
                    log.warning("SIGHUP: no configuration file to reload")
                else:
                    await server.reload_from(path)
    finally:
        stopping.cancel()
        reloading.cancel()
