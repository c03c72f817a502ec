"""The settings types: frozen dataclasses the rest of wsproxy reads, and their defaults.

Addresses parse themselves (``Address.parse``) because the walker and the
upstream code both need the same rules."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Literal

from wsproxy.origins import OriginRule

Http10Upgrade = Literal["accept", "ignore"]

_HOSTNAME_RE = re.compile(
    r"(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
    r"(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*",
    re.IGNORECASE,
)
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_PORT_RE = re.compile(r"[0-9]{1,5}")


def _hostname(text: str) -> str | None:
    """*text* lower-cased if it is a DNS name or dotted IPv4 address, else None."""
    if not _HOSTNAME_RE.fullmatch(text):
        return None
    if all(label.isdigit() for label in text.split(".")):  # looks like IPv4: must be one
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            return None
    return text.lower()


@dataclass(frozen=True, slots=True)
class Address:
    """A host and port; ``host`` is an IPv6 address without brackets, an
    IPv4 address or a lower-case host name."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, *, what: str = "address") -> Address:
        """Parse ``HOST:PORT`` or ``[IPv6]:PORT`` (port 1-65535).

        Raises ``ValueError`` with a message naming *what* was expected.
        """
        hint = "expected HOST:PORT, e.g. '127.0.0.1:8000' or '[::1]:8000'"
        if "://" in text:
            raise ValueError(f"invalid {what} {text!r} ({hint}, without a scheme)")
        if text.startswith("["):
            close = text.find("]")
            if close == -1 or text[close + 1 : close + 2] != ":":
                raise ValueError(f"invalid {what} {text!r} ({hint})")
            try:
                host = str(ipaddress.IPv6Address(text[1:close]))
            except ValueError:
                raise ValueError(
                    f"invalid {what} {text!r} (expected an IPv6 address inside the brackets, "
                    "e.g. '[::1]:8000')"
                ) from None
            port_text = text[close + 2 :]
        else:
            host_text, colon, port_text = text.rpartition(":")
            if not colon or not host_text:
                raise ValueError(f"invalid {what} {text!r} ({hint})")
            if ":" in host_text:
                raise ValueError(
                    f"invalid {what} {text!r} (put an IPv6 address in brackets, e.g. '[::1]:8000')"
                )
            checked = _hostname(host_text)
            if checked is None:
                raise ValueError(f"invalid {what} {text!r} (invalid host {host_text!r}; {hint})")
            host = checked
        if not _PORT_RE.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"invalid {what} {text!r} (the port must be a number from 1 to 65535)")
        return cls(host, int(port_text))


@dataclass(frozen=True, slots=True)
class ListenTls:
    """TLS termination on a listener: the files are read by wsproxy.tls (at
    start and on every SIGHUP), not here."""

    cert_file: str
    key_file: str


@dataclass(frozen=True, slots=True)
class ListenSettings(Address):
    """A front listener: where, how many client connections at once, and
    what comes before HTTP on each (a PROXY protocol header, TLS)."""

    #: Client connections open at once (WebSocket sessions included); past
    #: it new ones wait in the kernel's listen backlog.  0: no limit.
    max_connections: int = 0
    #: A PROXY protocol v1/v2 header is required first on each connection.
    proxy_protocol: bool = False
    tls: ListenTls | None = None
    #: The kernel's listen queue for this address; 0: net.core.somaxconn.
    backlog: int = 0

    @property
    def address(self) -> Address:
        return Address(self.host, self.port)


#: How a group picks a server (upstreams.balancer).
Balance = Literal["round_robin", "least_conn", "ip_hash"]

#: Largest server weight (a weight is a share, not a count).
MAX_WEIGHT = 1000


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """One server of an upstream: where it is and its share of the traffic."""

    address: Address
    weight: int = 1
    #: Written ``https://HOST:PORT``: TLS to this server (Upstream.tls says how).
    tls: bool = False

    def __str__(self) -> str:
        return str(self.address)


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active health checks: ``GET path`` every ``interval``; a server is taken
    out after ``fails`` failed checks in a row and back after ``passes``."""

    path: str
    interval: float = 5.0
    timeout: float = 2.0
    fails: int = 3
    passes: int = 2


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """How wsproxy speaks TLS to an upstream's ``https://`` servers."""

    #: CA bundle to verify servers with; None: the system's.
    ca_file: str | None = None
    #: Sent as SNI and checked against the certificate; None: the server's host.
    server_name: str | None = None
    #: A client certificate, for servers that ask for one.
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True


@dataclass(frozen=True, slots=True)
class Upstream:
    """A named group of servers that routes send requests to."""

    name: str
    servers: tuple[ServerSettings, ...]
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    keepalive_timeout: float = 4.0
    max_connections: int = 0
    balance: Balance = "round_robin"
    #: Passive health: this many failed attempts in a row take a server out
    #: for ``fail_timeout`` (0: never); then one trial request may go to it.
    max_fails: int = 1
    fail_timeout: float = 10.0
    health: HealthCheck | None = None
    tls: UpstreamTls = UpstreamTls()


@dataclass(frozen=True, slots=True)
class WebSocketSettings:
    idle_timeout: float = 3600.0
    early_close_window: float = 10.0
    #: Sessions older than this (±10% jitter) get 1001 at a frame boundary; 0: never.
    max_lifetime: float = 0.0
    #: Handshakes from other origins get 403 (wsproxy.origins); empty: any origin.
    allowed_origins: tuple[OriginRule, ...] = ()


@dataclass(frozen=True, slots=True)
class HeaderEdits:
    """Fields a route sets (replacing any of the same name) or removes."""

    #: ``(name, value)`` in file order; names as written.
    set: tuple[tuple[str, str], ...] = ()
    #: Lower-case names.
    remove: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.set or self.remove)

    @property
    def names(self) -> frozenset[str]:
        """Lower-case names whose fields go: removed, or replaced by ``set``."""
        return self.remove | {name.lower() for name, _ in self.set}


@dataclass(frozen=True, slots=True)
class Rewrite:
    """What a route changes between the client and the upstream (wsproxy.rewrite)."""

    #: Remove the route's ``path_prefix`` from the path sent upstream.
    strip_prefix: bool = False
    #: The ``Host`` sent upstream instead of the client's.
    host: str | None = None
    request_headers: HeaderEdits = HeaderEdits()
    response_headers: HeaderEdits = HeaderEdits()

    def __bool__(self) -> bool:
        return bool(self.strip_prefix or self.host or self.request_headers or self.response_headers)

    @property
    def request_rewritten(self) -> bool:
        """Whether the request's fields change (not only its path)."""
        return self.host is not None or bool(self.request_headers)


@dataclass(frozen=True, slots=True)
class Route:
    """``host`` is None (any host), an exact lower-case name or ``*.suffix``."""

    name: str
    host: str | None
    path_prefix: str
    upstream: str
    websocket: WebSocketSettings = WebSocketSettings()
    rewrite: Rewrite = Rewrite()


@dataclass(frozen=True, slots=True)
class ShutdownSettings:
    grace_period: float = 30.0
    #: ``1001`` close frames are spread evenly over this long (0: all at once).
    close_spread: float = 0.0


@dataclass(frozen=True, slots=True)
class ProxySettings:
    http10_upgrade: Http10Upgrade = "accept"
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    tunnel_buffer: int = 262144
    #: The whole request head: request line plus header fields.
    max_header_size: int = 32 * 1024
    observe_frames: bool = True
    allow_underscore_headers: bool = False
    #: 0: unlimited.
    max_body_size: int = 0
    client_header_timeout: float = 30.0
    client_body_timeout: float = 60.0
    send_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    #: TCP keepalive on both sockets of a WebSocket session: idle time before
    #: the first probe (0: off).
    tcp_keepalive: float = 60.0
    #: WebSocket sessions open at once from one client address (429 past
    #: it); 0: no limit.
    max_websockets_per_client: int = 0


AccessLogFormat = Literal["json", "text", "off"]
Workers = int | Literal["auto"]
#: More processes than this is a typo, not a deployment.
MAX_WORKERS = 256


@dataclass(frozen=True, slots=True)
class AccessLogSettings:
    format: AccessLogFormat = "json"
    redact_query: bool = True


@dataclass(frozen=True, slots=True)
class Config:
    listen: tuple[ListenSettings, ...]
    admin: Address
    upstreams: Mapping[str, Upstream]  # a read-only MappingProxyType, in file order
    routes: tuple[Route, ...]
    shutdown: ShutdownSettings
    proxy: ProxySettings
    source: str  # the file name the configuration came from
    access_log: AccessLogSettings = AccessLogSettings()
    #: Processes sharing the listeners: a number, or "auto" (the CPUs this
    #: process may use; wsproxy.workers.available_cpus).
    workers: Workers = 1


DEFAULT_LISTEN: tuple[ListenSettings, ...] = (ListenSettings("127.0.0.1", 8080),)
DEFAULT_ADMIN = Address("127.0.0.1", 9090)
_UPSTREAM_DEFAULTS = Upstream("", ())
_WEBSOCKET_DEFAULTS = WebSocketSettings()
_SHUTDOWN_DEFAULTS = ShutdownSettings()
_PROXY_DEFAULTS = ProxySettings()
_ACCESS_LOG_DEFAULTS = AccessLogSettings()
