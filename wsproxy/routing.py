"""Route matching: pure, no I/O.

Matching rules (documented in the README):

* A route with ``host`` matches only that host: an exact name, or
  ``*.example.com`` for any subdomain (not ``example.com`` itself).  The
  request's host comes from ``Host`` without port, lower-cased, trailing dot
  removed.
* ``path_prefix`` matches whole path segments: ``/api`` matches ``/api`` and
  ``/api/x`` but not ``/apix``; a prefix that ends in ``/`` matches anything
  below it.  The path is the normalized one as routes see it
  (``Target.route_path``: encoded slashes and backslashes read as ``/``,
  repeated slashes merged), and a segment also ends at a path parameter
  (``/api;v=1/x``), because backends split segments there.
* Among matching routes the most specific host wins (exact, then the longest
  wildcard, then routes without ``host``), then the longest ``path_prefix``.
  A host-specific route that does not match the path falls through to the
  host-less routes, so a catch-all ``/`` route keeps serving other paths.
"""

from __future__ import annotations

from collections.abc import Sequence

from wsproxy.config import Route


def request_host(host_header: str | None) -> str | None:
    """The host name from a ``Host`` header, without port, for matching."""
    if not host_header:
        return None
    host = host_header.strip().lower()
    if host.startswith("["):  # IPv6 literal, "[::1]:8080"
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    host = host.rsplit(":", 1)[0] if ":" in host else host
    return host.rstrip(".") or None


#: After a prefix, where its last segment may end: "/", or a path parameter
#: (Tomcat and Jetty read "/admin;x/y" as "/admin/y"), so "/admin;x/secret"
#: is routed with "/admin/secret" and cannot slip past an "/admin" route.
#: Encoded slashes and backslashes are already "/" in the path routes see
#: (Target.route_path).
_SEGMENT_ENDS = ("/", ";")


def path_matches(prefix: str, path: str) -> bool:
    """Whether the normalized ``path`` lies under ``prefix`` (whole segments)."""
    stem = prefix[:-1] if prefix.endswith("/") else prefix
    if not path.startswith(stem):
        return False
    rest = path[len(stem) :]
    if not rest:
        return stem == prefix  # "/api" matches itself; "/api/" needs more
    return rest.startswith(_SEGMENT_ENDS)


def host_specificity(pattern: str | None, host: str | None) -> int | None:
    """How well a route's ``host`` matches; None when it does not.

    Higher is more specific: exact names beat wildcards, longer wildcards beat
    shorter ones, and routes without ``host`` match everything at 0.
    """
    if pattern is None:
        return 0
    if host is None:
        return None
    if pattern.startswith("*."):
        suffix = pattern[1:]  # ".example.com"
        return len(suffix) if host.endswith(suffix) and len(host) > len(suffix) else None
    return 1_000_000 if host == pattern else None


class Router:
    """Chooses the route for a request; built once per configuration."""

    __slots__ = ("_routes",)

    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes = tuple(routes)

    def match(self, host_header: str | None, path: str) -> Route | None:
        host = request_host(host_header)
        best: Route | None = None
        best_key = (-1, -1)
        for route in self._routes:
            specificity = host_specificity(route.host, host)
            if specificity is None or not path_matches(route.path_prefix, path):
                continue
            key = (specificity, len(route.path_prefix))
            if key > best_key:
                best, best_key = route, key
        return best
