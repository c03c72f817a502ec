"""YAML configuration -> immutable, typed settings; every mistake reported at once.

Theory of operation
-------------------
1. **Compose, don't load.**  ``yaml.compose`` (SafeLoader) turns the text into
   a tree of Mapping/Sequence/Scalar nodes.  Unlike ``yaml.safe_load`` every
   node keeps its start mark, so each issue can say ``FILE:LINE:COLUMN``.  A
   YAML syntax error is the only thing that stops early: there is no tree to
   walk, so it becomes a single issue at the parser's problem mark.
2. **Walk with a path.**  The walker descends the tree along the schema,
   carrying the dotted path of the current node (``routes[1].websocket``).
   One small parser per kind of value (string, integer, boolean, duration,
   size, choice, list, mapping) takes ``(ctx, node, path)``, returns the typed
   value or ``None``, and *appends* an issue to the context instead of
   raising.  That is what lets one run report every mistake.  Mappings are
   read through :class:`_Map`: each key the schema asks for becomes "known";
   whatever is left over is an unknown key (with a "did you mean").
3. **Cross checks** (unknown upstream, duplicate routes, names and listen
   addresses) run on whatever parsed cleanly and point at the node that
   introduced the conflict: the *second* occurrence.
4. **Build only from clean input.**  A section's frozen dataclass is built
   only when that section produced no issue, and :func:`parse_config` returns
   a :class:`Config` only when there is no issue at all; otherwise it raises
   :class:`ConfigError` carrying every issue, sorted in file order.

Invariants: this module imports neither asyncio nor aiohttp, never prints and
never exits (only ``cli.py`` does); the rest of wsproxy never sees a raw dict.

Positions are 1-based.  A bad value is reported at the value node, an unknown
or duplicate key at the key node, a missing required key at the enclosing
mapping.  Scalar types come from the YAML 1.1 tag the resolver gave the node:
``port: "8080"`` is a string, not an integer, and ``yes`` is a boolean, not a
string.  An empty value (``admin:`` with nothing under it) counts as an empty
mapping or list, so commenting out every entry of an optional section works.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from types import MappingProxyType
from typing import Generic, Literal, TypeVar

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

from wsproxy.target import BadTarget, normalize_prefix
from wsproxy.units import format_size, parse_duration, parse_size

__all__ = [
    "DEFAULT_ADMIN",
    "DEFAULT_LISTEN",
    "AccessLogSettings",
    "Address",
    "Balance",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "HealthCheck",
    "Http10Upgrade",
    "ListenSettings",
    "ProxySettings",
    "Route",
    "ServerSettings",
    "ShutdownSettings",
    "Upstream",
    "WebSocketSettings",
    "Workers",
    "load_config",
    "parse_config",
    "read_config",
]

# --------------------------------------------------------------------------
# Issues
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a configuration file, with 1-based line and column.

    ``line == 0`` means the problem concerns the whole file (it could not be
    read); ``path`` is empty for problems not tied to a key (YAML syntax).
    """

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line == 0 else f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration is unusable; ``issues`` lists every problem found."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: tuple[ConfigIssue, ...] = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)

    def __reduce__(self) -> tuple[type[ConfigError], tuple[tuple[ConfigIssue, ...]]]:
        return (type(self), (self.issues,))


# --------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------

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
class ListenSettings(Address):
    """A front listener: where, and how many client connections at once."""

    #: Client connections open at once (WebSocket sessions included); past
    #: it new ones wait in the kernel's listen backlog.  0: no limit.
    max_connections: int = 0

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


@dataclass(frozen=True, slots=True)
class WebSocketSettings:
    idle_timeout: float = 3600.0
    early_close_window: float = 10.0
    #: Sessions older than this (±10% jitter) get 1001 at a frame boundary; 0: never.
    max_lifetime: float = 0.0


@dataclass(frozen=True, slots=True)
class Route:
    """``host`` is None (any host), an exact lower-case name or ``*.suffix``."""

    name: str
    host: str | None
    path_prefix: str
    upstream: str
    websocket: WebSocketSettings = WebSocketSettings()


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

# --------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------


def parse_config(text: str, filename: str = "<config>") -> Config:
    """Parse and validate configuration *text*; raise :class:`ConfigError`
    listing every problem, in file order, when there is any."""
    ctx = _Ctx(filename)
    root = _compose(ctx, text)
    config = None if ctx.issues else _config(ctx, root, filename)
    if ctx.issues:
        raise ConfigError(sorted(ctx.issues, key=lambda issue: (issue.line, issue.column)))
    assert config is not None, "every rejected value must have recorded an issue"
    return config


def load_config(path: str | os.PathLike[str], *, name: str | None = None) -> Config:
    """Read *path* (UTF-8) and :func:`parse_config` it; unreadable files raise
    :class:`ConfigError` too.  *name*: the file name messages and
    ``Config.source`` give (a worker reads the supervisor's copy of the
    operator's file, and names the operator's)."""
    return read_config(path, name=name)[0]


def read_config(path: str | os.PathLike[str], *, name: str | None = None) -> tuple[Config, bytes]:
    """:func:`load_config`, and the exact bytes the configuration came from."""
    filename = name if name is not None else os.fspath(path)
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([ConfigIssue(filename, 0, 0, "", f"cannot read: {reason}")]) from None
    return _decode(data, filename), data


def _decode(data: bytes, filename: str) -> Config:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        byte = data[exc.start]
        raise ConfigError(
            [ConfigIssue(filename, line, column, "", f"not valid UTF-8 (byte 0x{byte:02x})")]
        ) from None
    return parse_config(text, filename)


# --------------------------------------------------------------------------
# The walker: context, YAML front end, generic parsers
# --------------------------------------------------------------------------

_T = TypeVar("_T")

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"
_KINDS = {
    _STR: "a string",
    _INT: "an integer",
    _FLOAT: "a number",
    _BOOL: "a boolean",
    "tag:yaml.org,2002:timestamp": "a date",
}
# Only used for its int/bool resolution (0x10, 1_000, yes/no); stateless for those.
_CONSTRUCTOR = SafeConstructor()


@dataclass(slots=True)
class _Ctx:
    filename: str
    issues: list[ConfigIssue] = field(default_factory=list)

    def add(self, node: Node, path: str, message: str) -> None:
        mark = node.start_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        self.issues.append(ConfigIssue(self.filename, line, column, path, message))

    def add_at(self, line: int, column: int, path: str, message: str) -> None:
        self.issues.append(ConfigIssue(self.filename, line, column, path, message))


# A parser reads one node at a path: the typed value, or None after recording
# at least one issue.
_Parser = Callable[[_Ctx, Node, str], _T | None]


def _compose(ctx: _Ctx, text: str) -> Node | None:
    """The node tree of *text*, or None (empty file, or an issue recorded)."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        ctx.add_at(line, column, "", f"yaml: {_yaml_message(exc)}")
    except ReaderError as exc:  # a character YAML does not allow, e.g. NUL
        position = int(exc.position)
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        ctx.add_at(
            line, column, "", f"yaml: unacceptable character #x{exc.character:04x}: {exc.reason}"
        )
    except yaml.YAMLError as exc:  # pragma: no cover - every PyYAML error above has a position
        ctx.add_at(1, 1, "", f"yaml: {exc}")
    except RecursionError:
        ctx.add_at(1, 1, "", "yaml: the document is nested too deeply")
    return None


def _yaml_message(exc: yaml.MarkedYAMLError) -> str:
    problem = exc.problem or exc.context or "invalid YAML"
    if exc.context is None or problem == exc.context:
        return problem
    if problem.startswith("but "):  # "expected a single document ... but found another document"
        return f"{exc.context} {problem}"
    where = ""
    if exc.context_mark is not None and exc.context_mark is not exc.problem_mark:
        where = f" at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}"
    return f"{problem} ({exc.context}{where})"


def _describe(node: Node) -> str:
    """'a list', 'an integer '8080'', 'an empty value' ... for messages."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "an empty value" if node.value == "" else f"null {node.value!r}"
    kind = _KINDS.get(node.tag, f"a value tagged {node.tag!r}")
    return f"{kind} {node.value!r}"


def _key_path(path: str, key: str) -> str:
    segment = key if _NAME_RE.fullmatch(key) else f"[{key!r}]"
    if not path:
        return segment
    return f"{path}{segment}" if segment.startswith("[") else f"{path}.{segment}"


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _one_of(choices: Sequence[str]) -> str:
    quoted = [repr(choice) for choice in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL


class _Map:
    """Reads one mapping node by key.

    Every key the schema asks for (``get``/``require``) becomes known;
    :meth:`finish` reports the rest as unknown.  Duplicate keys are reported
    at the second occurrence and the first one wins.  ``ok`` says whether
    anything under this mapping recorded an issue since it was opened.
    """

    def __init__(self, ctx: _Ctx, node: Node, path: str) -> None:
        self._ctx = ctx
        self._node = node
        self._path = path
        self._start = len(ctx.issues)
        self._known: list[str] = []
        self._entries: dict[str, tuple[Node, Node]] = {}
        self.valid = True
        if _is_null(node):
            return
        if not isinstance(node, MappingNode):
            ctx.add(node, path or "(top level)", f"expected a mapping, got {_describe(node)}")
            self.valid = False
            return
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                ctx.add(
                    key_node,
                    path or "(top level)",
                    "merge keys ('<<') are not supported; repeat the keys, "
                    "or reuse a whole mapping with an alias (*name)",
                )
                continue
            if not isinstance(key_node, ScalarNode) or key_node.tag == _NULL:
                ctx.add(
                    key_node, path or "(top level)", f"expected a key, got {_describe(key_node)}"
                )
                continue
            key = str(key_node.value)
            first = self._entries.get(key)
            if first is not None:
                mark = first[0].start_mark
                line = f" (first defined at line {mark.line + 1})" if mark is not None else ""
                ctx.add(key_node, _key_path(path, key), f"duplicate key{line}")
                continue
            self._entries[key] = (key_node, value_node)

    @property
    def ok(self) -> bool:
        return self.valid and len(self._ctx.issues) == self._start

    def node(self, key: str) -> Node | None:
        """The value node of *key*, when present."""
        entry = self._entries.get(key)
        return entry[1] if entry is not None else None

    def get(self, key: str, parse: _Parser[_T], default: _T | None) -> _T | None:
        """Parse *key* when present, else return *default*."""
        self._known.append(key)
        entry = self._entries.get(key)
        if not self.valid:
            return None
        if entry is None:
            return default
        return parse(self._ctx, entry[1], _key_path(self._path, key))

    def require(self, key: str, parse: _Parser[_T]) -> _T | None:
        """Parse *key*; its absence is an issue at this mapping."""
        self._known.append(key)
        entry = self._entries.get(key)
        if not self.valid:
            return None
        if entry is None:
            self._ctx.add(self._node, _key_path(self._path, key), "required key missing")
            return None
        return parse(self._ctx, entry[1], _key_path(self._path, key))

    def items(self) -> list[tuple[str, Node, Node]]:
        """All entries as (key, key node, value node), for mappings whose
        keys are names rather than settings; marks them all known."""
        self._known.extend(self._entries)
        return [(key, knode, vnode) for key, (knode, vnode) in self._entries.items()]

    def finish(self) -> None:
        for key, (key_node, _) in self._entries.items():
            if key in self._known:
                continue
            hint = _did_you_mean(key, self._known)
            if not hint and self._known:
                hint = f" (expected one of: {', '.join(self._known)})"
            self._ctx.add(key_node, _key_path(self._path, key), f"unknown key{hint}")


@dataclass(frozen=True, slots=True)
class _Item(Generic[_T]):
    """One list entry: where it is, and its value (None when invalid)."""

    node: Node | None
    path: str
    value: _T | None


def _items(
    ctx: _Ctx, node: Node, path: str, parse: _Parser[_T], *, min_items: int, what: str
) -> list[_Item[_T]] | None:
    """Parse every entry of a list node; None when *node* is not a list."""
    if _is_null(node):
        children: list[Node] = []
    elif isinstance(node, SequenceNode):
        children = list(node.value)
    else:
        ctx.add(node, path, f"expected a list, got {_describe(node)}")
        return None
    if len(children) < min_items:
        count = "one" if min_items == 1 else str(min_items)
        ctx.add(node, path, f"expected at least {count} {what}, got an empty list")
    items = []
    for index, child in enumerate(children):
        child_path = f"{path}[{index}]"
        items.append(_Item(child, child_path, parse(ctx, child, child_path)))
    return items


def _all(items: Iterable[_Item[_T]]) -> tuple[_T, ...] | None:
    values = []
    for item in items:
        if item.value is None:
            return None
        values.append(item.value)
    return tuple(values)


def _list(parse: _Parser[_T], *, what: str, min_items: int = 0) -> _Parser[tuple[_T, ...]]:
    def parse_list(ctx: _Ctx, node: Node, path: str) -> tuple[_T, ...] | None:
        items = _items(ctx, node, path, parse, min_items=min_items, what=what)
        return None if items is None else _all(items)

    return parse_list


def _string(ctx: _Ctx, node: Node, path: str) -> str | None:
    if isinstance(node, ScalarNode) and node.tag == _STR:
        return str(node.value)
    quote = (
        " (quote it to make it a string)"
        if isinstance(node, ScalarNode) and not _is_null(node)
        else ""
    )
    ctx.add(node, path, f"expected a string, got {_describe(node)}{quote}")
    return None


def _text(convert: Callable[[str], _T]) -> _Parser[_T]:
    """A string parser whose *convert* validates/normalizes, raising
    ``ValueError`` with the full message."""

    def parse(ctx: _Ctx, node: Node, path: str) -> _T | None:
        text = _string(ctx, node, path)
        if text is None:
            return None
        try:
            return convert(text)
        except ValueError as exc:
            ctx.add(node, path, str(exc))
            return None

    return parse


def _integer(minimum: int, maximum: int | None = None, *, what: str = "value") -> _Parser[int]:
    expected = (
        f"an integer from {minimum} to {maximum}"
        if maximum is not None
        else f"an integer of at least {minimum}"
    )

    def parse(ctx: _Ctx, node: Node, path: str) -> int | None:
        if not (isinstance(node, ScalarNode) and node.tag == _INT):
            ctx.add(node, path, f"expected {expected}, got {_describe(node)}")
            return None
        value = _CONSTRUCTOR.construct_yaml_int(node)
        if value < minimum or (maximum is not None and value > maximum):
            ctx.add(node, path, f"invalid {what} {node.value!r} (expected {expected})")
            return None
        return value

    return parse


def _boolean(ctx: _Ctx, node: Node, path: str) -> bool | None:
    """A real YAML boolean (true/false, yes/no, on/off); not 0/1, not a string."""
    if isinstance(node, ScalarNode) and node.tag == _BOOL:
        return _CONSTRUCTOR.construct_yaml_bool(node)
    ctx.add(node, path, f"expected true or false, got {_describe(node)}")
    return None


def _number_text(ctx: _Ctx, node: Node, path: str, what: str, example: str) -> str | None:
    """The source text of a scalar meant as a duration or size."""
    if isinstance(node, ScalarNode) and node.tag in (_STR, _INT, _FLOAT):
        return str(node.value)
    ctx.add(node, path, f"expected {what}, e.g. {example}, got {_describe(node)}")
    return None


def _duration(*, positive: bool) -> _Parser[float]:
    """Seconds, from ``10``, ``'250ms'``, ``'1.5s'``, ``'5m'``, ``'1h'``; never
    negative, and not zero when *positive*."""

    def parse(ctx: _Ctx, node: Node, path: str) -> float | None:
        text = _number_text(ctx, node, path, "a duration", "'10s'")
        if text is None:
            return None
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            ctx.add(node, path, str(exc))
            return None
        if positive and seconds == 0:
            ctx.add(node, path, f"invalid duration {text!r} (must be greater than 0)")
            return None
        return seconds

    return parse


def _size(*, minimum: int) -> _Parser[int]:
    """Bytes, from ``4096``, ``'64KiB'``, ``'1MB'``; at least *minimum*."""

    def parse(ctx: _Ctx, node: Node, path: str) -> int | None:
        text = _number_text(ctx, node, path, "a size", "'64KiB'")
        if text is None:
            return None
        try:
            size = parse_size(text)
        except ValueError as exc:
            ctx.add(node, path, str(exc))
            return None
        if size < minimum:
            ctx.add(node, path, f"invalid size {text!r} (must be at least {format_size(minimum)})")
            return None
        return size

    return parse


def _choice(choices: Mapping[str, _T]) -> _Parser[_T]:
    def parse(ctx: _Ctx, node: Node, path: str) -> _T | None:
        text = _string(ctx, node, path)
        if text is None:
            return None
        if text in choices:
            return choices[text]
        hint = _did_you_mean(text, choices)
        ctx.add(node, path, f"invalid value {text!r} (expected {_one_of(list(choices))}){hint}")
        return None

    return parse


# --------------------------------------------------------------------------
# Value checkers (raise ValueError with the user-facing message)
# --------------------------------------------------------------------------


def _bind_host(text: str) -> str:
    """A host to listen on: IP address (IPv6 without brackets) or host name."""
    if text.startswith("[") and text.endswith("]"):
        raise ValueError(
            f"invalid host {text!r} (write an IPv6 address without brackets here, "
            f"e.g. {text[1:-1]!r})"
        )
    if ":" in text:
        try:
            return str(ipaddress.IPv6Address(text))
        except ValueError:
            pass
    else:
        checked = _hostname(text)
        if checked is not None:
            return checked
    raise ValueError(
        f"invalid host {text!r} (expected an IP address or host name, "
        "e.g. '127.0.0.1', '0.0.0.0', '::1' or 'localhost')"
    )


def _route_host(text: str) -> str:
    """``example.com``, ``*.example.com`` or ``[::1]``; lower-cased, without
    the trailing dot (the router strips it from requests too)."""
    hint = "expected a host name or '*.' and a domain, e.g. 'example.com' or '*.example.com'"
    if "://" in text or "/" in text:
        raise ValueError(
            f"invalid host {text!r} ({hint}; no scheme or path, put the path in path_prefix)"
        )
    if text == "*":
        raise ValueError(f"invalid host {text!r} (leave host out to match every host)")
    if text.startswith("[") and text.endswith("]"):
        try:
            return f"[{ipaddress.IPv6Address(text[1:-1])}]"
        except ValueError:
            raise ValueError(
                f"invalid host {text!r} (expected an IPv6 address in brackets)"
            ) from None
    if ":" in text:
        raise ValueError(f"invalid host {text!r} ({hint}; without a port)")
    wildcard = text.startswith("*.")
    name = text[2:] if wildcard else text
    name = name[:-1] if name.endswith(".") else name
    if "*" in name:
        raise ValueError(f"invalid host {text!r} (a wildcard is only allowed as a leading '*.')")
    checked = _hostname(name)
    if checked is None:
        raise ValueError(f"invalid host {text!r} ({hint})")
    return f"*.{checked}" if wildcard else checked


def _path_prefix(text: str) -> str:
    """The prefix in the normal form request paths are matched in (wsproxy.target)."""
    if not text.startswith("/"):
        raise ValueError(
            f"invalid path_prefix {text!r} (expected a path starting with '/', e.g. '/api')"
        )
    if any(char in text for char in "?#") or any(
        char.isspace() or ord(char) < 0x20 for char in text
    ):
        raise ValueError(
            f"invalid path_prefix {text!r} (expected a URL path without spaces, query or fragment)"
        )
    try:
        return normalize_prefix(text)
    except BadTarget as exc:
        raise ValueError(f"invalid path_prefix {text!r} ({exc})") from None


def _route_name(text: str) -> str:
    if not text.strip():
        raise ValueError(f"invalid name {text!r} (expected a non-empty name)")
    if text == "none":
        # route="none" is the metrics label of requests that matched no route.
        raise ValueError("invalid name 'none' (reserved for requests that match no route)")
    return text


def _server_address(text: str) -> Address:
    """``HOST:PORT`` or ``http://HOST:PORT``."""
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme.lower() == "https":
            raise ValueError(
                f"invalid server {text!r} (TLS to upstreams, https://, is not supported "
                "in this version; use http:// or HOST:PORT)"
            )
        if scheme.lower() != "http":
            raise ValueError(
                f"invalid server {text!r} (the scheme must be http://, or none: HOST:PORT)"
            )
        if rest.endswith("/"):
            rest = rest[:-1]
        if "/" in rest:
            raise ValueError(f"invalid server {text!r} (a server is HOST:PORT, without a path)")
        text = rest
    return Address.parse(text, what="server")


_WEIGHT = _integer(1, MAX_WEIGHT, what="weight")


def _server(ctx: _Ctx, node: Node, path: str) -> ServerSettings | None:
    """``"HOST:PORT"`` or ``{address: "HOST:PORT", weight: N}``."""
    if isinstance(node, MappingNode):
        m = _Map(ctx, node, path)
        address = m.require("address", _text(_server_address))
        weight = m.get("weight", _WEIGHT, 1)
        m.finish()
        if address is None or weight is None or not m.ok:
            return None
        return ServerSettings(address, weight)
    address = _text(_server_address)(ctx, node, path)
    return ServerSettings(address) if address is not None else None


def _health_path(text: str) -> str:
    if not text.startswith("/") or any(not "!" <= ch <= "~" for ch in text):
        raise ValueError(
            f"invalid path {text!r} (expected an absolute path such as '/healthz', "
            "printable ASCII without spaces)"
        )
    return text


def _network(text: str) -> IPv4Network | IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(
            f"invalid trusted proxy {text!r} (expected an IP address or CIDR network, "
            "e.g. '10.0.0.0/8' or '::1')"
        ) from None


# --------------------------------------------------------------------------
# The schema, one section at a time
# --------------------------------------------------------------------------

_PORT = _integer(0, 65535, what="port")
_HOST = _text(_bind_host)


def _listen_entry(ctx: _Ctx, node: Node, path: str) -> ListenSettings | None:
    """A ``{host, port, max_connections}`` mapping."""
    m = _Map(ctx, node, path)
    host = m.get("host", _HOST, "127.0.0.1")
    port = m.require("port", _PORT)
    limit = m.get("max_connections", _integer(0), 0)
    m.finish()
    if host is None or port is None or limit is None or not m.ok:
        return None
    return ListenSettings(host, port, limit)


def _admin(ctx: _Ctx, node: Node, path: str) -> Address | None:
    m = _Map(ctx, node, path)
    host = m.get("host", _HOST, DEFAULT_ADMIN.host)
    port = m.get("port", _PORT, DEFAULT_ADMIN.port)
    m.finish()
    if host is None or port is None or not m.ok:
        return None
    return Address(host, port)


def _clash(a: Address, b: Address) -> str | None:
    """Why *a* and *b* cannot both be bound, or None.  Port 0 never clashes
    (the kernel picks a free port); a wildcard address covers its family.
    asyncio binds IPv6 sockets with IPV6_V6ONLY, so '::' and '0.0.0.0' coexist."""
    if a.port == 0 or a.port != b.port:
        return None
    if a.host == b.host:
        return "same"
    try:
        ip_a, ip_b = ipaddress.ip_address(a.host), ipaddress.ip_address(b.host)
    except ValueError:
        return None
    if ip_a.version == ip_b.version and (ip_a.is_unspecified or ip_b.is_unspecified):
        return "overlap"
    return None


def _listen(ctx: _Ctx, node: Node, path: str) -> list[_Item[ListenSettings]] | None:
    items = _items(ctx, node, path, _listen_entry, min_items=1, what="listen address")
    if items is None:
        return None
    for index, item in enumerate(items):
        for earlier in items[:index]:
            if item.value is None or earlier.value is None or item.node is None:
                continue
            clash = _clash(item.value, earlier.value)
            if clash == "same":
                message = f"duplicate listen address {str(item.value)!r} (same as {earlier.path})"
            elif clash == "overlap":
                message = (
                    f"listen address {str(item.value)!r} overlaps {earlier.path} "
                    f"{str(earlier.value)!r} (a wildcard address covers its whole family)"
                )
            else:
                continue
            ctx.add(item.node, item.path, message)
            break
    return items


def _servers(ctx: _Ctx, node: Node, path: str) -> tuple[ServerSettings, ...] | None:
    items = _items(ctx, node, path, _server, min_items=1, what="server")
    if items is None:
        return None
    seen: dict[Address, str] = {}
    for item in items:
        if item.value is None or item.node is None:
            continue
        address = item.value.address
        if address in seen:
            ctx.add(
                item.node,
                item.path,
                f"duplicate server {str(address)!r} (same as {seen[address]})",
            )
        else:
            seen[address] = item.path.rpartition(".")[2]
    return _all(items)


_COUNT = _integer(1, 100, what="count")


def _health(ctx: _Ctx, node: Node, path: str) -> HealthCheck | None:
    d = HealthCheck("/")
    m = _Map(ctx, node, path)
    check_path = m.require("path", _text(_health_path))
    interval = m.get("interval", _duration(positive=True), d.interval)
    timeout = m.get("timeout", _duration(positive=True), d.timeout)
    fails = m.get("fails", _COUNT, d.fails)
    passes = m.get("passes", _COUNT, d.passes)
    m.finish()
    if (
        check_path is None
        or interval is None
        or timeout is None
        or fails is None
        or passes is None
        or not m.ok
    ):
        return None
    if timeout > interval:
        ctx.add(
            m.node("timeout") or node,
            _key_path(path, "timeout"),
            f"timeout ({timeout:g}s) must not be longer than interval ({interval:g}s)",
        )
        return None
    return HealthCheck(check_path, interval, timeout, fails, passes)


_BALANCE: _Parser[Balance] = _choice(
    {"round_robin": "round_robin", "least_conn": "least_conn", "ip_hash": "ip_hash"}
)


def _upstream(name: str) -> _Parser[Upstream]:
    d = _UPSTREAM_DEFAULTS

    def parse(ctx: _Ctx, node: Node, path: str) -> Upstream | None:
        m = _Map(ctx, node, path)
        servers = m.require("servers", _servers)
        connect = m.get("connect_timeout", _duration(positive=True), d.connect_timeout)
        read = m.get("read_timeout", _duration(positive=True), d.read_timeout)
        keepalive = m.get("keepalive_timeout", _duration(positive=False), d.keepalive_timeout)
        max_conn = m.get("max_connections", _integer(0), d.max_connections)
        # The annotation keeps mypy from widening the Literal to str.
        balance: Balance | None = m.get("balance", _BALANCE, d.balance)
        max_fails = m.get("max_fails", _integer(0, 100), d.max_fails)
        fail_timeout = m.get("fail_timeout", _duration(positive=True), d.fail_timeout)
        health = m.get("health", _health, None)
        m.finish()
        if (
            servers is None
            or connect is None
            or read is None
            or keepalive is None
            or max_conn is None
            or balance is None
            or max_fails is None
            or fail_timeout is None
            or (health is None and m.node("health") is not None)
            or not m.ok
        ):
            return None
        return Upstream(
            name,
            servers,
            connect,
            read,
            keepalive,
            max_conn,
            balance,
            max_fails,
            fail_timeout,
            health,
        )

    return parse


def _upstreams(ctx: _Ctx, node: Node, path: str) -> dict[str, Upstream | None] | None:
    """Every upstream by name (invalid ones as None, so routes naming them
    are not also reported as unknown); None when this is not a mapping."""
    m = _Map(ctx, node, path)
    if not m.valid:
        return None
    entries = m.items()
    if not entries:
        ctx.add(node, path, "expected at least one upstream, got an empty mapping")
    result: dict[str, Upstream | None] = {}
    for name, key_node, value_node in entries:
        sub = _key_path(path, name)
        if not _NAME_RE.fullmatch(name):
            ctx.add(
                key_node,
                sub,
                f"invalid upstream name {name!r} (expected letters, digits, '_', '.' or '-')",
            )
        result[name] = _upstream(name)(ctx, value_node, sub)
    return result


def _websocket(ctx: _Ctx, node: Node, path: str) -> WebSocketSettings | None:
    d = _WEBSOCKET_DEFAULTS
    m = _Map(ctx, node, path)
    idle = m.get("idle_timeout", _duration(positive=True), d.idle_timeout)
    early = m.get("early_close_window", _duration(positive=False), d.early_close_window)
    lifetime = m.get("max_lifetime", _duration(positive=False), d.max_lifetime)
    m.finish()
    if idle is None or early is None or lifetime is None or not m.ok:
        return None
    return WebSocketSettings(idle, early, lifetime)


def _upstream_ref(known: frozenset[str] | None) -> _Parser[str]:
    """An upstream name; checked against *known* unless that is unavailable
    (upstreams missing or broken, which is reported on its own)."""

    def parse(ctx: _Ctx, node: Node, path: str) -> str | None:
        name = _string(ctx, node, path)
        if name is None or not known or name in known:
            return name
        message = f"unknown upstream {name!r} (known: {', '.join(sorted(known))})"
        ctx.add(node, path, message + _did_you_mean(name, sorted(known)))
        return None

    return parse


@dataclass(frozen=True, slots=True)
class _RouteDraft:
    """What the cross checks need from one route, even when it has errors."""

    route: Route | None
    identity: tuple[str | None, str] | None  # (host, path_prefix), None when invalid
    name: str | None  # explicit or default; None when not computable
    name_node: Node | None  # the explicit name's node


def _route(known: frozenset[str] | None) -> _Parser[_RouteDraft]:
    def parse(ctx: _Ctx, node: Node, path: str) -> _RouteDraft | None:
        m = _Map(ctx, node, path)
        explicit_name = m.get("name", _text(_route_name), None)
        host = m.get("host", _text(_route_host), None)
        prefix = m.get("path_prefix", _text(_path_prefix), "/")
        upstream = m.require("upstream", _upstream_ref(known))
        websocket = m.get("websocket", _websocket, _WEBSOCKET_DEFAULTS)
        m.finish()
        if not m.valid:
            return None
        host_ok = host is not None or m.node("host") is None
        identity = (host, prefix) if host_ok and prefix is not None else None
        name = explicit_name
        if name is None and m.node("name") is None and identity is not None:
            name = f"{host}{prefix}" if host is not None else prefix
        route = None
        if (
            m.ok
            and name is not None
            and prefix is not None
            and upstream is not None
            and websocket is not None
        ):
            route = Route(name, host, prefix, upstream, websocket)
        return _RouteDraft(route, identity, name, m.node("name"))

    return parse


def _routes(known: frozenset[str] | None) -> _Parser[tuple[Route, ...]]:
    def parse(ctx: _Ctx, node: Node, path: str) -> tuple[Route, ...] | None:
        items = _items(ctx, node, path, _route(known), min_items=1, what="route")
        if items is None:
            return None
        identities: dict[tuple[str | None, str], str] = {}
        names: dict[str, str] = {}
        for item in items:
            draft = item.value
            if draft is None or item.node is None:
                continue
            duplicate_route = False
            if draft.identity is not None:
                first = identities.setdefault(draft.identity, item.path)
                if first != item.path:
                    duplicate_route = True
                    host, prefix = draft.identity
                    what = (
                        f"host {host!r} and path_prefix {prefix!r}"
                        if host is not None
                        else f"path_prefix {prefix!r} and no host"
                    )
                    ctx.add(item.node, item.path, f"duplicate route for {what} (same as {first})")
            if draft.name is None or (duplicate_route and draft.name_node is None):
                continue  # a defaulted name of a duplicate route: already reported
            first = names.setdefault(draft.name, item.path)
            if first != item.path:
                if draft.name_node is not None:
                    ctx.add(
                        draft.name_node,
                        f"{item.path}.name",
                        f"duplicate route name {draft.name!r} (same as {first})",
                    )
                else:
                    ctx.add(
                        item.node,
                        item.path,
                        f"duplicate route name {draft.name!r} (same as {first}); this is the "
                        "default name, from host and path_prefix: give this route a unique name",
                    )
        drafts = _all(items)
        if drafts is None:
            return None
        routes = tuple(draft.route for draft in drafts if draft.route is not None)
        return routes if len(routes) == len(drafts) else None

    return parse


def _shutdown(ctx: _Ctx, node: Node, path: str) -> ShutdownSettings | None:
    m = _Map(ctx, node, path)
    d = _SHUTDOWN_DEFAULTS
    grace = m.get("grace_period", _duration(positive=False), d.grace_period)
    spread = m.get("close_spread", _duration(positive=False), d.close_spread)
    m.finish()
    if grace is None or spread is None or not m.ok:
        return None
    if spread > grace:
        ctx.add(
            m.node("close_spread") or node,
            _key_path(path, "close_spread"),
            f"close_spread ({spread:g}s) must not be longer than grace_period ({grace:g}s): "
            "sessions closed after the grace period would be reset instead",
        )
        return None
    return ShutdownSettings(grace, spread)


_HTTP10_UPGRADE: _Parser[Http10Upgrade] = _choice({"accept": "accept", "ignore": "ignore"})


def _proxy(ctx: _Ctx, node: Node, path: str) -> ProxySettings | None:
    d = _PROXY_DEFAULTS
    m = _Map(ctx, node, path)
    # The annotation keeps mypy from widening the Literal to str.
    http10: Http10Upgrade | None = m.get("http10_upgrade", _HTTP10_UPGRADE, d.http10_upgrade)
    trusted = m.get(
        "trusted_proxies", _list(_text(_network), what="trusted proxy"), d.trusted_proxies
    )
    tunnel_buffer = m.get("tunnel_buffer", _size(minimum=4 * 1024), d.tunnel_buffer)
    max_header = m.get("max_header_size", _size(minimum=1024), d.max_header_size)
    observe = m.get("observe_frames", _boolean, d.observe_frames)
    underscores = m.get("allow_underscore_headers", _boolean, d.allow_underscore_headers)
    max_body = m.get("max_body_size", _size(minimum=0), d.max_body_size)
    timers = {
        key: m.get(key, _duration(positive=True), getattr(d, key))
        for key in (
            "client_header_timeout",
            "client_body_timeout",
            "send_timeout",
            "keepalive_timeout",
        )
    }
    timers["tcp_keepalive"] = m.get("tcp_keepalive", _duration(positive=False), d.tcp_keepalive)
    per_client = m.get("max_websockets_per_client", _integer(0), d.max_websockets_per_client)
    m.finish()
    if (
        http10 is None
        or trusted is None
        or tunnel_buffer is None
        or max_header is None
        or observe is None
        or underscores is None
        or max_body is None
        or per_client is None
        or any(value is None for value in timers.values())
        or not m.ok
    ):
        return None
    return ProxySettings(
        http10,
        trusted,
        tunnel_buffer,
        max_header,
        observe,
        underscores,
        max_body,
        **{key: float(value) for key, value in timers.items() if value is not None},
        max_websockets_per_client=per_client,
    )


_FORMAT_CHOICE: _Parser[AccessLogFormat] = _choice({"json": "json", "text": "text", "off": "off"})


def _access_log_format(ctx: _Ctx, node: Node, path: str) -> AccessLogFormat | None:
    # YAML 1.1 reads a bare `off` as the boolean false; it means "off" here.
    if isinstance(node, ScalarNode) and node.tag == _BOOL and node.value.lower() in ("off", "no"):
        return "off"
    return _FORMAT_CHOICE(ctx, node, path)


def _access_log(ctx: _Ctx, node: Node, path: str) -> AccessLogSettings | None:
    d = _ACCESS_LOG_DEFAULTS
    m = _Map(ctx, node, path)
    # The annotation keeps mypy from widening the Literal to str.
    log_format: AccessLogFormat | None = m.get("format", _access_log_format, d.format)
    redact = m.get("redact_query", _boolean, d.redact_query)
    m.finish()
    if log_format is None or redact is None or not m.ok:
        return None
    return AccessLogSettings(log_format, redact)


def _workers(ctx: _Ctx, node: Node, path: str) -> Workers | None:
    """A number of processes, or ``auto``."""
    if isinstance(node, ScalarNode) and node.tag == _STR and node.value == "auto":
        return "auto"
    if isinstance(node, ScalarNode) and node.tag == _INT:
        return _integer(1, MAX_WORKERS, what="number of workers")(ctx, node, path)
    ctx.add(
        node,
        path,
        f"expected a number of workers from 1 to {MAX_WORKERS} or 'auto', got {_describe(node)}",
    )
    return None


def _config(ctx: _Ctx, root: Node | None, filename: str) -> Config | None:
    if root is None or (_is_null(root) and root.value == ""):  # "" or only "---"
        ctx.add_at(
            1,
            1,
            "(top level)",
            "the file is empty (expected a mapping with at least upstreams and routes)",
        )
        return None
    if not isinstance(root, MappingNode):
        ctx.add_at(
            1,
            1,
            "(top level)",
            f"expected a mapping of settings (upstreams, routes, ...), got {_describe(root)}",
        )
        return None
    m = _Map(ctx, root, "")
    default_listen = [_Item(None, f"listen[{i}]", a) for i, a in enumerate(DEFAULT_LISTEN)]
    listen = m.get("listen", _listen, default_listen)
    admin = m.get("admin", _admin, DEFAULT_ADMIN)
    upstreams = m.require("upstreams", _upstreams)
    known = frozenset(upstreams) if upstreams is not None else None
    routes = m.require("routes", _routes(known))
    shutdown = m.get("shutdown", _shutdown, _SHUTDOWN_DEFAULTS)
    proxy = m.get("proxy", _proxy, _PROXY_DEFAULTS)
    access_log = m.get("access_log", _access_log, _ACCESS_LOG_DEFAULTS)
    workers: Workers | None = m.get("workers", _workers, 1)
    m.finish()

    if workers is not None and workers != 1 and listen is not None:
        # Each worker binds its own socket (SO_REUSEPORT): port 0 would give
        # each a different port.
        for item in listen:
            if item.value is not None and item.value.port == 0 and item.node is not None:
                ctx.add(
                    item.node,
                    f"{item.path}.port",
                    f"port 0 (any free port) cannot be shared by several workers "
                    f"(workers: {workers}); choose a port",
                )

    admin_node = m.node("admin")
    if admin is not None and listen is not None:
        for item in listen:
            if item.value is None or _clash(admin, item.value) is None:
                continue
            if admin_node is not None:
                ctx.add(
                    admin_node,
                    "admin",
                    f"admin address {str(admin)!r} conflicts with {item.path} {str(item.value)!r}",
                )
            elif item.node is not None:
                ctx.add(
                    item.node,
                    item.path,
                    f"listen address {str(item.value)!r} conflicts with the default admin "
                    f"address {str(admin)!r} (set admin.port to another port)",
                )
            break

    if ctx.issues:
        return None
    listen_addresses = _all(listen) if listen is not None else None
    if (
        listen_addresses is None
        or admin is None
        or upstreams is None
        or routes is None
        or shutdown is None
        or proxy is None
        or access_log is None
        or workers is None
    ):
        return None
    built = {name: upstream for name, upstream in upstreams.items() if upstream is not None}
    if len(built) != len(upstreams):
        return None
    return Config(
        listen=listen_addresses,
        admin=admin,
        upstreams=MappingProxyType(built),
        routes=routes,
        shutdown=shutdown,
        proxy=proxy,
        source=filename,
        access_log=access_log,
        workers=workers,
    )
