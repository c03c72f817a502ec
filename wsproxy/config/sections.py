"""The schema, one section at a time, and the checks across sections
(unknown upstreams, duplicate routes, clashing listen addresses)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from types import MappingProxyType

from yaml.nodes import MappingNode, Node, ScalarNode

from wsproxy.config.settings import (
    _ACCESS_LOG_DEFAULTS,
    _NAME_RE,
    _PROXY_DEFAULTS,
    _SHUTDOWN_DEFAULTS,
    _UPSTREAM_DEFAULTS,
    _WEBSOCKET_DEFAULTS,
    DEFAULT_ADMIN,
    DEFAULT_LISTEN,
    MAX_WORKERS,
    AccessLogFormat,
    AccessLogSettings,
    Address,
    Balance,
    Config,
    HeaderEdits,
    HealthCheck,
    Http10Upgrade,
    ListenSettings,
    ListenTls,
    ProxySettings,
    Rewrite,
    Route,
    ServerSettings,
    ShutdownSettings,
    Upstream,
    UpstreamTls,
    WebSocketSettings,
    Workers,
)
from wsproxy.config.values import (
    _bind_host,
    _file,
    _header_name,
    _header_value,
    _health_path,
    _network,
    _path_prefix,
    _route_host,
    _route_name,
    _server,
    _server_name,
    _upstream_host,
)
from wsproxy.config.walker import (
    _BOOL,
    _INT,
    _STR,
    _all,
    _boolean,
    _choice,
    _Ctx,
    _describe,
    _did_you_mean,
    _duration,
    _integer,
    _is_null,
    _Item,
    _items,
    _key_path,
    _list,
    _Map,
    _Parser,
    _size,
    _string,
    _text,
)
from wsproxy.origins import parse_rule

_PORT = _integer(0, 65535, what="port")
_HOST = _text(_bind_host)


_FILE = _text(_file)


def _listen_tls(ctx: _Ctx, node: Node, path: str) -> ListenTls | None:
    m = _Map(ctx, node, path)
    cert = m.require("cert_file", _FILE)
    key = m.require("key_file", _FILE)
    m.finish()
    if cert is None or key is None or not m.ok:
        return None
    return ListenTls(cert, key)


def _listen_entry(ctx: _Ctx, node: Node, path: str) -> ListenSettings | None:
    """A ``{host, port, max_connections, proxy_protocol, tls}`` mapping."""
    m = _Map(ctx, node, path)
    host = m.get("host", _HOST, "127.0.0.1")
    port = m.require("port", _PORT)
    limit = m.get("max_connections", _integer(0), 0)
    proxy_protocol = m.get("proxy_protocol", _boolean, False)
    tls = m.get("tls", _listen_tls, None)
    backlog = m.get("backlog", _integer(1, 65535, what="backlog"), 0)
    m.finish()
    if (
        host is None
        or port is None
        or limit is None
        or backlog is None
        or proxy_protocol is None
        or (tls is None and m.node("tls") is not None)
        or not m.ok
    ):
        return None
    return ListenSettings(host, port, limit, proxy_protocol, tls, backlog)


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


def _upstream_tls(ctx: _Ctx, node: Node, path: str) -> UpstreamTls | None:
    d = UpstreamTls()
    m = _Map(ctx, node, path)
    ca_file = m.get("ca_file", _FILE, d.ca_file)
    server_name = m.get("server_name", _text(_server_name), d.server_name)
    cert = m.get("cert_file", _FILE, d.cert_file)
    key = m.get("key_file", _FILE, d.key_file)
    verify = m.get("verify", _boolean, d.verify)
    m.finish()
    if verify is None or not m.ok:
        return None
    if (cert is None) != (key is None):
        given, missing = ("cert_file", "key_file") if key is None else ("key_file", "cert_file")
        ctx.add(
            m.node(given) or node,
            _key_path(path, given),
            f"{given} needs {missing} too (a client certificate is the pair)",
        )
        return None
    if not verify and ca_file is not None:
        ctx.add(
            m.node("ca_file") or node,
            _key_path(path, "ca_file"),
            "ca_file has no effect with verify: false (nothing is verified)",
        )
        return None
    return UpstreamTls(ca_file, server_name, cert, key, verify)


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
        tls = m.get("tls", _upstream_tls, d.tls)
        m.finish()
        if (
            tls is not None
            and m.node("tls") is not None
            and servers is not None
            and not any(server.tls for server in servers)
        ):
            ctx.add(
                m.node("tls") or node,
                _key_path(path, "tls"),
                "tls is set but no server uses it: write the servers as https://HOST:PORT",
            )
            return None
        if (
            servers is None
            or tls is None
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
            tls,
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
    origins = m.get("allowed_origins", _ORIGINS, d.allowed_origins)
    m.finish()
    if idle is None or early is None or lifetime is None or origins is None or not m.ok:
        return None
    return WebSocketSettings(idle, early, lifetime, origins)


_ORIGINS = _list(_text(parse_rule), what="origin")


def _header_set(ctx: _Ctx, node: Node, path: str) -> tuple[tuple[str, str], ...] | None:
    m = _Map(ctx, node, path)
    if not m.valid:
        return None
    result: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, key_node, value_node in m.items():
        sub = _key_path(path, name)
        try:
            _header_name(name)
        except ValueError as exc:
            ctx.add(key_node, sub, str(exc))
            continue
        spelled = name.lower().replace("_", "-")  # X_User is X-User to a CGI backend
        if spelled in seen:
            ctx.add(key_node, sub, f"header {name!r} is set twice (names are case-insensitive)")
            continue
        seen.add(spelled)
        value = _text(_header_value)(ctx, value_node, sub)
        if value is not None:
            result.append((name, value))
    return tuple(result) if m.ok else None


_HEADER_NAMES = _list(_text(_header_name), what="header name")


def _header_edits(ctx: _Ctx, node: Node, path: str) -> HeaderEdits | None:
    m = _Map(ctx, node, path)
    no_fields: tuple[tuple[str, str], ...] = ()
    no_names: tuple[str, ...] = ()
    set_fields = m.get("set", _header_set, no_fields)
    remove = m.get("remove", _HEADER_NAMES, no_names)
    m.finish()
    if set_fields is None or remove is None or not m.ok:
        return None
    removed = frozenset(name.lower() for name in remove)
    both = [name for name, _ in set_fields if name.lower() in removed]
    if both:
        ctx.add(
            m.node("remove") or node,
            _key_path(path, "remove"),
            f"header {both[0]!r} is both set and removed (set replaces it already)",
        )
        return None
    return HeaderEdits(set_fields, removed)


def _rewrite(ctx: _Ctx, node: Node, path: str) -> Rewrite | None:
    m = _Map(ctx, node, path)
    strip = m.get("strip_prefix", _boolean, False)
    host = m.get("host", _text(_upstream_host), None)
    request = m.get("request_headers", _header_edits, HeaderEdits())
    response = m.get("response_headers", _header_edits, HeaderEdits())
    m.finish()
    if strip is None or request is None or response is None or not m.ok:
        return None
    return Rewrite(strip, host, request, response)


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
        rewrite = m.get("rewrite", _rewrite, Rewrite())
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
            and rewrite is not None
        ):
            if rewrite.strip_prefix and prefix == "/":
                ctx.add(
                    m.node("rewrite") or node,
                    f"{path}.rewrite.strip_prefix",
                    "strip_prefix needs a path_prefix other than '/' (there is nothing to strip)",
                )
                return _RouteDraft(None, identity, name, m.node("name"))
            route = Route(name, host, prefix, upstream, websocket, rewrite)
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
