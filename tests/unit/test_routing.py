"""Route matching and server rotation: pure."""

from __future__ import annotations

import pytest

from wsproxy.config import Route, WebSocketSettings
from wsproxy.routing import Router, path_matches, request_host
from wsproxy.target import parse_target


def matched(router: Router, host: str, path: str) -> str | None:
    found = router.match(host, path)
    return None if found is None else found.name


def route(name: str, path_prefix: str = "/", host: str | None = None) -> Route:
    return Route(
        name=name,
        host=host,
        path_prefix=path_prefix,
        upstream="app",
        websocket=WebSocketSettings(),
    )


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("Example.TEST", "example.test"),
        ("example.test:8080", "example.test"),
        ("example.test.", "example.test"),
        ("[::1]:8080", "[::1]"),
        ("", None),
        (None, None),
    ],
)
def test_request_host_normalizes(header: str | None, host: str | None) -> None:
    assert request_host(header) == host


@pytest.mark.parametrize(
    ("prefix", "path", "matches"),
    [
        ("/", "/anything", True),
        ("/api", "/api", True),
        ("/api", "/api/v1", True),
        ("/api", "/apix", False),
        ("/api/", "/api/v1", True),
        ("/api/", "/api", False),
        ("/api", "/api;jsessionid=1/x", True),  # Tomcat: /api/x
        ("/api/", "/api;x/y", True),
        ("/api", "/apis;x", False),
        ("/", "*", False),
    ],
)
def test_path_prefix_matches_whole_segments(prefix: str, path: str, matches: bool) -> None:
    assert path_matches(prefix, path) is matches


def test_a_segment_cannot_hide_from_its_route_behind_a_parameter_or_a_separator() -> None:
    router = Router([route("public"), route("admin", "/admin")])
    for raw in (
        "/admin;x/secret",
        "/admin%2Fsecret",
        "/admin%5csecret",
        "/admin\\secret",
        "/admin%3Bx",
        "//admin/secret",
        "/%2Fadmin/secret",
        "/\\admin",
        "/admin",
    ):
        assert matched(router, "h", parse_target(raw).route_path) == "admin", raw
    assert matched(router, "h", "/administrator") == "public"


def test_longest_prefix_wins() -> None:
    router = Router([route("root"), route("api", "/api"), route("v1", "/api/v1")])
    assert matched(router, "h", "/api/v1/x") == "v1"
    assert matched(router, "h", "/api/v2") == "api"
    assert matched(router, "h", "/other") == "root"


def test_host_specificity_beats_prefix_length() -> None:
    router = Router(
        [
            route("generic-api", "/api"),
            route("wild", "/", "*.example.test"),
            route("exact", "/", "www.example.test"),
        ]
    )
    assert matched(router, "www.example.test", "/api") == "exact"
    assert matched(router, "a.example.test", "/api") == "wild"
    assert matched(router, "other.test", "/api") == "generic-api"


def test_wildcard_does_not_match_the_bare_domain() -> None:
    router = Router([route("wild", "/", "*.example.test")])
    assert router.match("example.test", "/") is None
    assert router.match("deep.sub.example.test", "/") is not None


def test_host_route_falls_through_to_hostless_routes_for_other_paths() -> None:
    router = Router([route("catch-all"), route("api-host", "/api", "api.test")])
    assert matched(router, "api.test", "/status") == "catch-all"


def test_no_match_is_none() -> None:
    assert Router([route("api", "/api")]).match("h", "/") is None
