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

Invariants: this package imports neither asyncio nor aiohttp, never prints
and never exits (only ``cli.py`` does), and reads no file but the
configuration itself (building TLS contexts, say, belongs elsewhere); the
rest of wsproxy never sees a raw dict.

Positions are 1-based.  A bad value is reported at the value node, an unknown
or duplicate key at the key node, a missing required key at the enclosing
mapping.  Scalar types come from the YAML 1.1 tag the resolver gave the node:
``port: "8080"`` is a string, not an integer, and ``yes`` is a boolean, not a
string.  An empty value (``admin:`` with nothing under it) counts as an empty
mapping or list, so commenting out every entry of an optional section works.

The modules, by role:

* ``issues``: ``ConfigIssue`` and ``ConfigError``;
* ``settings``: the frozen settings types and their defaults;
* ``walker``: the context, the YAML front end, mappings, lists and the
  generic value parsers;
* ``values``: checkers for one kind of value each (hosts, paths, addresses);
* ``sections``: the schema, one section at a time, and the cross checks;
* ``load``: ``parse_config``, ``load_config``, ``read_config``.
"""

from __future__ import annotations

from wsproxy.config.issues import ConfigError, ConfigIssue
from wsproxy.config.load import load_config, parse_config, read_config
from wsproxy.config.settings import (
    DEFAULT_ADMIN,
    DEFAULT_LISTEN,
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

__all__ = [
    "DEFAULT_ADMIN",
    "DEFAULT_LISTEN",
    "AccessLogSettings",
    "Address",
    "Balance",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "HeaderEdits",
    "HealthCheck",
    "Http10Upgrade",
    "ListenSettings",
    "ListenTls",
    "ProxySettings",
    "Rewrite",
    "Route",
    "ServerSettings",
    "ShutdownSettings",
    "Upstream",
    "UpstreamTls",
    "WebSocketSettings",
    "Workers",
    "load_config",
    "parse_config",
    "read_config",
]
