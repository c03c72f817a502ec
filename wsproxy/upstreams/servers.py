"""Servers, groups and the upstreams of one configuration (see the package docstring)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from wsproxy.config import Address, ServerSettings, Upstream
from wsproxy.errors import UpstreamFailure
from wsproxy.http.pool import ServerPool
from wsproxy.tls import TlsContexts, server_hostname
from wsproxy.upstreams.balancer import WeightedRoundRobin, least_loaded, rendezvous
from wsproxy.upstreams.health import Health, HealthEvents, ServerHealth


class Server:
    """One server of one upstream: its pool, health and load."""

    __slots__ = (
        "address",
        "group",
        "health",
        "in_flight",
        "label",
        "name",
        "pool",
        "settings",
        "tls",
        "tunnels",
        "weight",
    )

    def __init__(self, settings: Upstream, server: ServerSettings) -> None:
        #: The upstream's settings (replaced on reload when they change).
        self.settings = settings
        self.group = settings.name
        self.address = server.address
        self.weight = server.weight
        #: Written ``https://``: spoken to over TLS (``use_tls``).
        self.tls = server.tls
        #: ``HOST:PORT``, the ``server`` label of metrics and logs.
        self.label = str(server.address)
        self.name = self.label.encode()
        self.pool = ServerPool(settings, server.address)
        self.health = ServerHealth()
        #: Requests sent and not yet answered, and WebSocket sessions open:
        #: together the load ``least_conn`` compares.
        self.in_flight = 0
        self.tunnels = 0

    @property
    def load(self) -> int:
        return self.in_flight + self.tunnels

    def __repr__(self) -> str:
        return f"<Server {self.group}/{self.label}>"


class Group:
    """One upstream: its servers in configuration order and how it picks one."""

    __slots__ = ("_all", "_rotation", "balance", "health", "name", "servers", "settings")

    def __init__(self, settings: Upstream, servers: Iterable[Server], health: Health) -> None:
        self.name = settings.name
        self.settings = settings
        self.balance = settings.balance
        self.servers = tuple(servers)
        self.health = health
        self._all = tuple(range(len(self.servers)))
        self._rotation = WeightedRoundRobin([server.weight for server in self.servers])

    def pick(
        self,
        client: str | None = None,
        tried: frozenset[Server] = frozenset(),
        now: float | None = None,
    ) -> Server | None:
        """The server for the next attempt; None when every one was ``tried``.

        ``client`` is the resolved client address (``ip_hash``).  Servers that
        health holds out are skipped; when every untried server is held out,
        one is tried anyway (like Envoy's panic threshold at its limit): a
        502 from trying costs no more than one without, and a server that
        answers is proven up again.
        """
        servers = self.servers
        health = self.health
        if health.watch:
            if now is None:
                now = time.monotonic()
            health.refresh(now)
            candidates = [
                i
                for i in self._all
                if servers[i] not in tried and servers[i].health.takes_requests(now)
            ]
            if not candidates:
                candidates = [i for i in self._all if servers[i] not in tried]
        elif tried:
            candidates = [i for i in self._all if servers[i] not in tried]
        elif len(servers) == 1:
            return servers[0]  # the common case: one server, healthy
        else:
            candidates = list(self._all)
        if not candidates:
            return None
        if len(candidates) == 1:
            index = candidates[0]
        elif self.balance == "least_conn":
            loads = [server.load for server in servers]
            weights = self._rotation.weights
            index = least_loaded(candidates, loads, weights, self._rotation)
        elif self.balance == "ip_hash" and client is not None:
            names = [server.name for server in servers]
            index = rendezvous(candidates, client.encode(), names, self._rotation.weights)
        else:
            index = self._rotation.pick(candidates)
        server = servers[index]
        if now is not None:
            health.claim(server, now)
        return server


class Upstreams:
    """Every upstream of one configuration, and their servers' health."""

    def __init__(
        self,
        upstreams: Mapping[str, Upstream],
        events: HealthEvents,
        *,
        reuse: Upstreams | None = None,
    ) -> None:
        """``reuse``: the previous configuration's upstreams (a reload).  A
        server named again in the same upstream keeps its pool, health and
        load; the rest of the old servers are the caller's to close.  The
        health table is the same object across reloads: requests still in
        flight on the old configuration report to it too."""
        self.health: Health = reuse.health if reuse is not None else Health(events)
        # A server that changes between http:// and https:// is a new one:
        # its pooled connections speak the other protocol.
        kept: dict[tuple[str, Address, bool], Server] = {}
        if reuse is not None:
            for group in reuse.groups.values():
                for server in group.servers:
                    kept[(group.name, server.address, server.tls)] = server
        self.groups: dict[str, Group] = {}
        for name, settings in upstreams.items():
            servers = []
            for spec in settings.servers:
                found = kept.pop((name, spec.address, spec.tls), None)
                if found is None:
                    found = Server(settings, spec)
                else:
                    found.settings = found.pool.upstream = settings
                    found.weight = spec.weight
                    if settings.health is None:
                        self.health.checks_removed(found)
                servers.append(found)
            self.groups[name] = Group(settings, servers, self.health)
        #: The previous configuration's servers that this one does not name.
        self.dropped = list(kept.values())
        for server in self.dropped:
            self.health.watch.discard(server)

    def use_tls(self, contexts: TlsContexts) -> None:
        """The TLS contexts of this configuration (wsproxy.tls), for every
        ``https://`` server's new connections."""
        for group in self.groups.values():
            for server in group.servers:
                if server.tls:
                    server.pool.renew(
                        contexts.upstreams[group.name],
                        server_hostname(group.settings.tls, server.address.host),
                        contexts.fingerprints[group.name],
                    )

    @property
    def servers(self) -> list[Server]:
        return [server for group in self.groups.values() for server in group.servers]

    def ok(self, server: Server) -> None:
        """A valid answer came from ``server``."""
        self.health.ok(server)

    def failed(self, server: Server, failure: UpstreamFailure, now: float) -> None:
        self.health.failed(server, failure, now)

    def all_down(self, now: float) -> bool:
        """Whether every server of every upstream is held out (``/readyz``)."""
        self.health.refresh(now)
        servers = self.servers
        return bool(servers) and not any(server.health.up for server in servers)

    def states(self, now: float) -> dict[str, dict[str, str]]:
        """``up`` or ``down`` by upstream and server (``/status.json``)."""
        self.health.refresh(now)
        return {
            group.name: {
                server.label: "up" if server.health.up else "down" for server in group.servers
            }
            for group in self.groups.values()
        }

    def close(self) -> None:
        for server in self.servers:
            server.pool.close()
