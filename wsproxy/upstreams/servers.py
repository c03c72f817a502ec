"""Servers, groups and the upstreams of one configuration (see the package docstring)."""

from __future__ import annotations

from collections.abc import Mapping

from wsproxy.config import Address, Upstream
from wsproxy.errors import UpstreamFailure
from wsproxy.http.pool import ServerPool
from wsproxy.upstreams.balancer import RoundRobin
from wsproxy.upstreams.health import Health, HealthEvents


class Server:
    """One server of one upstream, with its connection pool."""

    __slots__ = ("address", "group", "label", "pool")

    def __init__(self, group: str, settings: Upstream, address: Address) -> None:
        self.group = group
        self.address = address
        #: ``HOST:PORT``, the ``server`` label of metrics and logs.
        self.label = str(address)
        self.pool = ServerPool(settings, address)

    def __repr__(self) -> str:
        return f"<Server {self.group}/{self.label}>"


class Group:
    """One upstream: its servers in configuration order and its balancer."""

    __slots__ = ("_rotation", "name", "servers", "settings")

    def __init__(self, settings: Upstream) -> None:
        self.name = settings.name
        self.settings = settings
        self.servers = tuple(Server(settings.name, settings, a) for a in settings.servers)
        self._rotation = RoundRobin(len(self.servers))

    def pick(self) -> Server:
        """The server for the next request."""
        return self.servers[self._rotation.pick_index()]


class Upstreams:
    """Every upstream of one configuration, and their servers' health."""

    def __init__(self, upstreams: Mapping[str, Upstream], events: HealthEvents) -> None:
        self.groups = {name: Group(settings) for name, settings in upstreams.items()}
        self.health = Health(events)

    @property
    def servers(self) -> list[Server]:
        return [server for group in self.groups.values() for server in group.servers]

    def ok(self, server: Server) -> None:
        """A valid answer came from ``server``."""
        self.health.ok(server)

    def failed(self, server: Server, failure: UpstreamFailure, now: float) -> None:
        self.health.failed(server, failure, now)

    def all_down(self, now: float) -> bool:
        """Whether every server of every upstream is down (``/readyz``)."""
        self.health.refresh(now)
        servers = self.servers
        return bool(servers) and all(self.health.is_down(server) for server in servers)

    def states(self, now: float) -> dict[str, dict[str, str]]:
        """``up`` or ``down`` by upstream and server (``/status.json``)."""
        self.health.refresh(now)
        return {
            group.name: {
                server.label: "down" if self.health.is_down(server) else "up"
                for server in group.servers
            }
            for group in self.groups.values()
        }

    def close(self) -> None:
        for group in self.groups.values():
            for server in group.servers:
                server.pool.close()
