"""Unit tests for wsproxy.config and wsproxy.units (pure: no sockets, no event loop)."""

from __future__ import annotations

import dataclasses
import ipaddress
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from wsproxy.config import (
    DEFAULT_ADMIN,
    DEFAULT_LISTEN,
    AccessLogSettings,
    Address,
    Config,
    ConfigError,
    ConfigIssue,
    HealthCheck,
    ListenSettings,
    ProxySettings,
    Route,
    ServerSettings,
    ShutdownSettings,
    Upstream,
    WebSocketSettings,
    load_config,
    parse_config,
)
from wsproxy.config.walker import _boolean, _Ctx
from wsproxy.units import format_duration, format_size, parse_duration, parse_size

MINIMAL = """\
listen:
  - host: 127.0.0.1
    port: 8080
admin:
  host: 127.0.0.1
  port: 9090
upstreams:
  app:
    servers: ["127.0.0.1:1215"]
routes:
  - path_prefix: /
    upstream: app
"""

# Only what has no default.
BARE = """\
upstreams:
  app:
    servers: ["127.0.0.1:1215"]
routes:
  - upstream: app
"""


def parse(text: str) -> Config:
    return parse_config(textwrap.dedent(text), "proxy.yaml")


def errors(text: str) -> list[str]:
    """Every issue *text* produces, rendered, in the order reported."""
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), "proxy.yaml")
    assert str(info.value) == "\n".join(str(issue) for issue in info.value.issues)
    return [str(issue) for issue in info.value.issues]


def with_routes(routes: str) -> str:
    """BARE's upstreams plus the given ``routes:`` block (routes start on line 4)."""
    return 'upstreams:\n  app:\n    servers: ["127.0.0.1:1215"]\n' + textwrap.dedent(routes)


# ---------------------------------------------------------------------------
# units.py
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("10s", 10.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("0", 0.0),
        ("30", 30.0),
        ("2.5", 2.5),
        (" 10s ", 10.0),
        ("10 s", 10.0),
        ("0.001ms", 0.000001),
        (30, 30.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration_valid(value: str | float, seconds: float) -> None:
    result = parse_duration(value)
    assert result == seconds
    assert isinstance(result, float)


@pytest.mark.parametrize(
    "value", ["10 sec", "", "s", "ms", "1d", "1e3", "ten", "1.2.3s", "1S", "5 m s", "0x10"]
)
def test_parse_duration_invalid(value: str) -> None:
    with pytest.raises(ValueError, match="invalid duration") as info:
        parse_duration(value)
    assert str(info.value) == (
        f"invalid duration {value!r} (expected a number of seconds or a number with "
        "ms, s, m or h, e.g. '250ms', '10s', '5m', '1h')"
    )


@pytest.mark.parametrize(("value", "shown"), [("-5s", "'-5s'"), (-1, "'-1'"), (-0.5, "'-0.5'")])
def test_parse_duration_negative(value: str | float, shown: str) -> None:
    with pytest.raises(ValueError, match="must not be negative") as info:
        parse_duration(value)
    assert str(info.value) == f"invalid duration {shown} (must not be negative)"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True, "9" * 400 + "h"])
def test_parse_duration_rejects_non_finite_and_bool(value: str | float) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (4096, 4096),
        (0, 0),
        ("4096", 4096),
        ("10B", 10),
        ("64KiB", 65536),
        ("1MiB", 1048576),
        ("1GiB", 1073741824),
        ("1KB", 1000),
        ("1MB", 1000000),
        ("1GB", 1000000000),
        ("1.5KiB", 1536),
        ("64kib", 65536),
        ("8 KiB", 8192),
    ],
)
def test_parse_size_valid(value: str | int, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["64 KB B", "1TB", "", "KiB", "1e3", "lots", "1Ki"])
def test_parse_size_invalid(value: str) -> None:
    with pytest.raises(ValueError, match="invalid size") as info:
        parse_size(value)
    assert str(info.value) == (
        f"invalid size {value!r} (expected a number of bytes or a number with B, KB, MB, GB, "
        "KiB, MiB or GiB, e.g. '4096', '64KiB', '1MB')"
    )


def test_parse_size_negative_fractional_and_bool() -> None:
    with pytest.raises(ValueError, match=r"^invalid size '-1KiB' \(must not be negative\)$"):
        parse_size("-1KiB")
    with pytest.raises(ValueError, match=r"^invalid size '-1' \(must not be negative\)$"):
        parse_size(-1)
    with pytest.raises(ValueError, match=r"^invalid size '0.5B' \(not a whole number of bytes\)$"):
        parse_size("0.5B")
    with pytest.raises(ValueError, match="invalid size 'True'"):
        parse_size(True)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (0.25, "250ms"),
        (0.001, "1ms"),
        (0.0105, "10.5ms"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (10.0, "10s"),
        (90.0, "90s"),
        (300.0, "5m"),
        (5400.0, "90m"),
        (3600.0, "1h"),
        (7200.0, "2h"),
        (1e-08, "0.00001ms"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0B"),
        (1, "1B"),
        (1500, "1500B"),
        (1000, "1KB"),
        (1024, "1KiB"),
        (8192, "8KiB"),
        (262144, "256KiB"),
        (1048576, "1MiB"),
        (2000000, "2MB"),
        (1073741824, "1GiB"),
        (3000000000, "3GB"),
    ],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text
    assert parse_size(text) == size


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_format_duration_rejects(value: float) -> None:
    with pytest.raises(ValueError, match="cannot format duration"):
        format_duration(value)


def test_format_size_rejects_negative() -> None:
    with pytest.raises(ValueError, match="cannot format size"):
        format_size(-1)


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False))
def test_duration_round_trip(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**50))
def test_size_round_trip(size: int) -> None:
    assert parse_size(format_size(size)) == size


# ---------------------------------------------------------------------------
# A valid configuration
# ---------------------------------------------------------------------------


def test_minimal_config_parses_with_all_defaults() -> None:
    config = parse_config(MINIMAL, "proxy.yaml")
    upstream = Upstream(
        name="app",
        servers=(ServerSettings(Address("127.0.0.1", 1215)),),
        connect_timeout=5.0,
        read_timeout=60.0,
        keepalive_timeout=4.0,
        max_connections=0,
    )
    assert config == Config(
        listen=(ListenSettings("127.0.0.1", 8080),),
        admin=Address("127.0.0.1", 9090),
        upstreams={"app": upstream},
        routes=(
            Route(
                name="/",
                host=None,
                path_prefix="/",
                upstream="app",
                websocket=WebSocketSettings(idle_timeout=3600.0, early_close_window=10.0),
            ),
        ),
        shutdown=ShutdownSettings(grace_period=30.0),
        proxy=ProxySettings(
            http10_upgrade="accept",
            trusted_proxies=(),
            tunnel_buffer=262144,
            max_header_size=32768,
        ),
        source="proxy.yaml",
    )


@pytest.mark.parametrize(
    ("prefix", "normalized"),
    [("/api", "/api"), ("/%61pi/", "/api/"), ("/x%2fy", "/x%2Fy"), ("/café", "/caf%C3%A9")],
)
def test_path_prefix_takes_the_normal_form_of_request_paths(prefix: str, normalized: str) -> None:
    text = with_routes(f"routes:\n  - upstream: app\n    path_prefix: {prefix}\n")
    (route,) = parse_config(text).routes
    assert route.path_prefix == normalized
    assert route.name == normalized


def test_allow_underscore_headers_is_a_boolean_off_by_default() -> None:
    assert parse_config(BARE).proxy.allow_underscore_headers is False
    on = parse_config(BARE + "proxy:\n  allow_underscore_headers: true\n")
    assert on.proxy.allow_underscore_headers is True
    assert errors(BARE + "proxy:\n  allow_underscore_headers: sometimes\n") == [
        "proxy.yaml:7:29: proxy.allow_underscore_headers: expected true or false, "
        "got a string 'sometimes'"
    ]


def test_every_default() -> None:
    config = parse_config(BARE)
    assert config.source == "<config>"
    assert config.listen == DEFAULT_LISTEN == (ListenSettings("127.0.0.1", 8080),)
    assert config.admin == DEFAULT_ADMIN == Address("127.0.0.1", 9090)
    upstream = config.upstreams["app"]
    assert upstream.connect_timeout == 5.0
    assert upstream.read_timeout == 60.0
    assert upstream.keepalive_timeout == 4.0
    assert upstream.max_connections == 0
    (route,) = config.routes
    assert route.name == "/"
    assert route.host is None
    assert route.path_prefix == "/"
    assert route.websocket.idle_timeout == 3600.0
    assert route.websocket.early_close_window == 10.0
    assert config.shutdown.grace_period == 30.0
    assert config.proxy.http10_upgrade == "accept"
    assert config.proxy.trusted_proxies == ()
    assert config.proxy.tunnel_buffer == 256 * 1024
    assert config.proxy.max_header_size == 32 * 1024
    assert config.proxy.max_body_size == 0
    assert (config.proxy.client_header_timeout, config.proxy.client_body_timeout) == (30.0, 60.0)
    assert (config.proxy.send_timeout, config.proxy.keepalive_timeout) == (60.0, 75.0)


def test_every_setting() -> None:
    config = parse(
        """\
        listen:
          - port: 0
          - host: "::1"
            port: 8443
          - host: 0.0.0.0
            port: 8080
        admin:
          host: localhost
          port: 0
        upstreams:
          app:
            servers: ["127.0.0.1:1215", "[::1]:8000", "Backend.internal:80"]
            connect_timeout: 250ms
            read_timeout: 2m
            keepalive_timeout: 0
            max_connections: 0
          chat.v2:
            servers:
              - 10.0.0.2:9000
        routes:
          - name: chat
            host: "*.Example.COM"
            path_prefix: /ws
            upstream: chat.v2
            websocket:
              idle_timeout: 90
              early_close_window: 0s
          - upstream: app
        shutdown:
          grace_period: 1.5s
        proxy:
          http10_upgrade: ignore
          trusted_proxies: [10.0.0.1/8, "::1", 192.168.1.7]
          tunnel_buffer: 1MiB
          max_header_size: 16384
          max_body_size: 10MiB
          client_header_timeout: 5s
          client_body_timeout: 10s
          send_timeout: 15s
          keepalive_timeout: 20s
        """
    )
    assert config.listen == (
        ListenSettings("127.0.0.1", 0),
        ListenSettings("::1", 8443),
        ListenSettings("0.0.0.0", 8080),
    )
    assert config.admin == Address("localhost", 0)
    assert list(config.upstreams) == ["app", "chat.v2"]
    app = config.upstreams["app"]
    assert [server.address for server in app.servers] == [
        Address("127.0.0.1", 1215),
        Address("::1", 8000),
        Address("backend.internal", 80),
    ]
    assert (app.connect_timeout, app.read_timeout) == (0.25, 120.0)
    assert (app.keepalive_timeout, app.max_connections) == (0.0, 0)
    assert config.upstreams["chat.v2"].servers == (ServerSettings(Address("10.0.0.2", 9000)),)
    chat, fallback = config.routes
    assert chat == Route("chat", "*.example.com", "/ws", "chat.v2", WebSocketSettings(90.0, 0.0))
    assert fallback == Route("/", None, "/", "app", WebSocketSettings())
    assert config.shutdown == ShutdownSettings(1.5)
    assert config.proxy == ProxySettings(
        http10_upgrade="ignore",
        trusted_proxies=(
            ipaddress.IPv4Network("10.0.0.0/8"),
            ipaddress.IPv6Network("::1/128"),
            ipaddress.IPv4Network("192.168.1.7/32"),
        ),
        tunnel_buffer=1048576,
        max_header_size=16384,
        max_body_size=10 * 1024 * 1024,
        client_header_timeout=5.0,
        client_body_timeout=10.0,
        send_timeout=15.0,
        keepalive_timeout=20.0,
    )


def test_config_is_immutable() -> None:
    config = parse_config(MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.routes = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.upstreams["other"] = config.upstreams["app"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.upstreams["app"].read_timeout = 1.0  # type: ignore[misc]
    assert isinstance(config.routes, tuple)
    assert isinstance(config.upstreams["app"].servers, tuple)


@pytest.mark.parametrize(
    ("route", "name"),
    [
        ("  - upstream: app\n", "/"),
        ("  - upstream: app\n    path_prefix: /api\n", "/api"),
        ("  - upstream: app\n    host: example.com\n    path_prefix: /api\n", "example.com/api"),
        ("  - upstream: app\n    host: Example.com\n", "example.com/"),
        ("  - upstream: app\n    host: '*.example.com'\n", "*.example.com/"),
        ("  - upstream: app\n    name: api\n    path_prefix: /api\n", "api"),
    ],
)
def test_route_name_default(route: str, name: str) -> None:
    (parsed,) = parse_config(with_routes("routes:\n" + route)).routes
    assert parsed.name == name


def test_address_parse_and_str() -> None:
    assert Address.parse("127.0.0.1:8000") == Address("127.0.0.1", 8000)
    assert Address.parse("[::1]:8000") == Address("::1", 8000)
    assert Address.parse("[0:0::1]:1") == Address("::1", 1)
    assert Address.parse("LocalHost:65535") == Address("localhost", 65535)
    assert str(Address("::1", 8000)) == "[::1]:8000"
    assert str(Address("127.0.0.1", 8000)) == "127.0.0.1:8000"
    with pytest.raises(ValueError, match=r"^invalid address '\[::1\]' \(expected HOST:PORT"):
        Address.parse("[::1]")


def test_empty_optional_sections_mean_defaults() -> None:
    config = parse(
        """\
        admin:
        shutdown:
        proxy:
          trusted_proxies:
        upstreams:
          app:
            servers: ["127.0.0.1:1215"]
        routes:
          - upstream: app
            websocket:
        """
    )
    assert config.admin == DEFAULT_ADMIN
    assert config.shutdown == ShutdownSettings()
    assert config.proxy == ProxySettings()
    assert config.routes[0].websocket == WebSocketSettings()


def test_yaml_int_forms_and_explicit_str_tag() -> None:
    config = parse(
        """\
        listen:
          - port: 0x1F90
        upstreams:
          app:
            servers: ["127.0.0.1:1215"]
            max_connections: 1_000
        routes:
          - upstream: !!str 123
        """.replace("!!str 123", "app")
    )
    assert config.listen[0].port == 8080
    assert config.upstreams["app"].max_connections == 1000
    tagged = parse(
        """\
        upstreams:
          "123":
            servers: ["127.0.0.1:1215"]
        routes:
          - upstream: !!str 123
        """
    )
    assert tagged.routes[0].upstream == "123"


def test_anchors_and_aliases_work() -> None:
    config = parse(
        """\
        upstreams:
          app:
            servers: ["127.0.0.1:1215"]
        routes:
          - path_prefix: /a
            upstream: app
            websocket: &ws
              idle_timeout: 5m
          - path_prefix: /b
            upstream: app
            websocket: *ws
        """
    )
    assert [route.websocket.idle_timeout for route in config.routes] == [300.0, 300.0]


# ---------------------------------------------------------------------------
# Errors: one kind at a time, exact positions
# ---------------------------------------------------------------------------


def test_unknown_upstream_with_suggestion() -> None:
    text = with_routes(
        """\
        routes:
          - path_prefix: /
            upstream: ap
        """
    )
    assert errors(text) == [
        "proxy.yaml:6:15: routes[0].upstream: unknown upstream 'ap' (known: app); "
        "did you mean 'app'?"
    ]


def test_unknown_upstream_without_suggestion_lists_sorted_names() -> None:
    text = """\
    upstreams:
      web:
        servers: ["127.0.0.1:1"]
      api:
        servers: ["127.0.0.1:2"]
    routes:
      - upstream: zzzzzz
    """
    assert errors(text) == [
        "proxy.yaml:7:15: routes[0].upstream: unknown upstream 'zzzzzz' (known: api, web)"
    ]


def test_unknown_key_with_suggestion() -> None:
    text = """\
    listen:
      - host: 127.0.0.1
        prot: 8080
    upstreams:
      app:
        servers: ["127.0.0.1:1215"]
    routes:
      - upstream: app
    """
    assert errors(text) == [
        "proxy.yaml:2:5: listen[0].port: required key missing",
        "proxy.yaml:3:5: listen[0].prot: unknown key; did you mean 'port'?",
    ]


def test_unknown_key_without_suggestion_lists_known_keys() -> None:
    assert errors(BARE + "shutdown:\n  xyzzy: 1\n") == [
        "proxy.yaml:7:3: shutdown.xyzzy: unknown key (expected one of: grace_period, close_spread)"
    ]
    assert errors(BARE + "rotues: []\n") == [
        "proxy.yaml:6:1: rotues: unknown key; did you mean 'routes'?"
    ]


def test_invalid_server() -> None:
    text = """\
    upstreams:
      app:
        servers:
          - 127.0.0.1:8000
          - 127.0.0.1
    routes:
      - upstream: app
    """
    assert errors(text) == [
        "proxy.yaml:5:9: upstreams.app.servers[1]: invalid server '127.0.0.1' "
        "(expected HOST:PORT, e.g. '127.0.0.1:8000' or '[::1]:8000')"
    ]


@pytest.mark.parametrize(
    ("server", "reason"),
    [
        ("'::1:8000'", "(put an IPv6 address in brackets, e.g. '[::1]:8000')"),
        ("'[::g]:80'", "(expected an IPv6 address inside the brackets, e.g. '[::1]:8000')"),
        ("'x:0'", "(the port must be a number from 1 to 65535)"),
        ("'x:65536'", "(the port must be a number from 1 to 65535)"),
        ("'x:http'", "(the port must be a number from 1 to 65535)"),
        ("'a b:80'", "(invalid host 'a b'; expected HOST:PORT"),
        ("'999.1.1.1:80'", "(invalid host '999.1.1.1'; expected HOST:PORT"),
        ("'ws://x:80'", "(the scheme must be http:// or https://, or none: HOST:PORT)"),
        ("'http://x:80/api'", "(a server is HOST:PORT, without a path)"),
        ("':80'", "(expected HOST:PORT"),
    ],
)
def test_invalid_server_reasons(server: str, reason: str) -> None:
    text = f"upstreams:\n  app:\n    servers: [{server}]\nroutes:\n  - upstream: app\n"
    (message,) = errors(text)
    assert message.startswith(
        f"proxy.yaml:3:15: upstreams.app.servers[0]: invalid server {server.strip(chr(39))!r} "
    )
    assert reason in message


def test_duplicate_server() -> None:
    text = """\
    upstreams:
      app:
        servers: ["127.0.0.1:1215", "[::1]:80", "127.0.0.1:1215"]
    routes:
      - upstream: app
    """
    assert errors(text) == [
        "proxy.yaml:3:45: upstreams.app.servers[2]: duplicate server '127.0.0.1:1215' "
        "(same as servers[0])"
    ]


def test_required_key_missing_is_reported_at_the_enclosing_mapping() -> None:
    text = """\
    # proxy.yaml
    upstreams:
      app:
        servers: ["127.0.0.1:1215"]
    """
    assert errors(text) == ["proxy.yaml:2:1: routes: required key missing"]
    assert errors("upstreams:\n  app:\n    read_timeout: 1s\nroutes:\n  - upstream: app\n") == [
        "proxy.yaml:3:5: upstreams.app.servers: required key missing"
    ]
    assert errors(with_routes("routes:\n  - path_prefix: /\n")) == [
        "proxy.yaml:5:5: routes[0].upstream: required key missing"
    ]


def test_invalid_duration() -> None:
    text = with_routes(
        """\
        routes:
          - upstream: app
            websocket:
              idle_timeout: 10 sec
        """
    )
    assert errors(text) == [
        "proxy.yaml:7:21: routes[0].websocket.idle_timeout: invalid duration '10 sec' "
        "(expected a number of seconds or a number with ms, s, m or h, "
        "e.g. '250ms', '10s', '5m', '1h')"
    ]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("connect_timeout", "0", "invalid duration '0' (must be greater than 0)"),
        ("read_timeout", "0ms", "invalid duration '0ms' (must be greater than 0)"),
        ("keepalive_timeout", "-1s", "invalid duration '-1s' (must not be negative)"),
        ("read_timeout", "yes", "expected a duration, e.g. '10s', got a boolean 'yes'"),
        ("read_timeout", "[1]", "expected a duration, e.g. '10s', got a list"),
        ("read_timeout", ".inf", "invalid duration '.inf' (expected a number of seconds"),
        ("max_connections", "-1", "invalid value '-1' (expected an integer of at least 0)"),
        ("max_connections", "1.5", "expected an integer of at least 0, got a number '1.5'"),
    ],
)
def test_upstream_value_errors(key: str, value: str, message: str) -> None:
    text = f'upstreams:\n  app:\n    servers: ["127.0.0.1:1215"]\n    {key}: {value}\nroutes:\n'
    text += "  - upstream: app\n"
    (error,) = errors(text)
    assert error.startswith(f"proxy.yaml:4:{len(key) + 7}: upstreams.app.{key}: {message}")


def test_zero_durations_where_allowed() -> None:
    text = with_routes(
        """\
        routes:
          - upstream: app
            websocket:
              early_close_window: 0
        shutdown:
          grace_period: 0s
        """
    )
    config = parse_config(text)
    assert config.routes[0].websocket.early_close_window == 0.0
    assert config.shutdown.grace_period == 0.0
    assert errors(
        with_routes("routes:\n  - upstream: app\n    websocket: {idle_timeout: 0}\n")
    ) == [
        "proxy.yaml:6:31: routes[0].websocket.idle_timeout: invalid duration '0' "
        "(must be greater than 0)"
    ]


def test_sizes_and_their_minimums() -> None:
    text = BARE + "proxy:\n  tunnel_buffer: 4KiB\n  max_header_size: 1024\n"
    assert parse_config(text).proxy.tunnel_buffer == 4096
    assert parse_config(text).proxy.max_header_size == 1024
    assert errors(BARE + "proxy:\n  tunnel_buffer: 4095\n  max_header_size: 1000B\n") == [
        "proxy.yaml:7:18: proxy.tunnel_buffer: invalid size '4095' (must be at least 4KiB)",
        "proxy.yaml:8:20: proxy.max_header_size: invalid size '1000B' (must be at least 1KiB)",
    ]
    assert errors(BARE + "proxy:\n  tunnel_buffer: 64 KB B\n") == [
        "proxy.yaml:7:18: proxy.tunnel_buffer: invalid size '64 KB B' (expected a number of "
        "bytes or a number with B, KB, MB, GB, KiB, MiB or GiB, e.g. '4096', '64KiB', '1MB')"
    ]


def test_yaml_syntax_error_location() -> None:
    text = 'upstreams:\n  app:\n    servers: ["127.0.0.1:1215"\nroutes:\n  - upstream: app\n'
    (message,) = errors(text)
    assert message.startswith("proxy.yaml:4:1: yaml: ")
    assert "expected ',' or ']'" in message
    assert errors("a: b: c\n") == ["proxy.yaml:1:5: yaml: mapping values are not allowed here"]
    assert errors("a: 1\n---\nb: 2\n") == [
        "proxy.yaml:2:1: yaml: expected a single document in the stream but found another document"
    ]
    assert errors("routes: 'x\x00'\n") == [
        "proxy.yaml:1:11: yaml: unacceptable character #x0000: special characters are not allowed"
    ]


def test_deeply_nested_yaml_is_an_issue_not_a_crash() -> None:
    (message,) = errors("[" * 100_000)
    assert message.startswith("proxy.yaml:1:1: yaml: ")


@pytest.mark.parametrize("text", ["", "\n", "# nothing here\n", "---\n"])
def test_empty_file(text: str) -> None:
    assert errors(text) == [
        "proxy.yaml:1:1: (top level): the file is empty "
        "(expected a mapping with at least upstreams and routes)"
    ]


@pytest.mark.parametrize(
    ("text", "got"),
    [
        ("- a\n- b\n", "a list"),
        ("\n\nhello\n", "a string 'hello'"),
        ("42\n", "an integer '42'"),
        ("~\n", "null '~'"),
    ],
)
def test_top_level_not_a_mapping(text: str, got: str) -> None:
    assert errors(text) == [
        "proxy.yaml:1:1: (top level): expected a mapping of settings "
        f"(upstreams, routes, ...), got {got}"
    ]


def test_duplicate_key_reported_at_second_key() -> None:
    text = """\
    upstreams:
      app:
        servers: ["127.0.0.1:1215"]
        read_timeout: 1s
        read_timeout: 2s
    routes:
      - upstream: app
    """
    assert errors(text) == [
        "proxy.yaml:5:5: upstreams.app.read_timeout: duplicate key (first defined at line 4)"
    ]
    assert errors(BARE + "upstreams: {}\n") == [
        "proxy.yaml:6:1: upstreams: duplicate key (first defined at line 1)"
    ]


def test_booleans_and_integers_are_not_interchangeable() -> None:
    assert errors(BARE + "admin:\n  port: yes\n") == [
        "proxy.yaml:7:9: admin.port: expected an integer from 0 to 65535, got a boolean 'yes'"
    ]
    assert errors(BARE + 'admin:\n  port: "9090"\n') == [
        "proxy.yaml:7:9: admin.port: expected an integer from 0 to 65535, got a string '9090'"
    ]
    assert errors(BARE + "admin:\n  port: 70000\n") == [
        "proxy.yaml:7:9: admin.port: invalid port '70000' (expected an integer from 0 to 65535)"
    ]
    assert errors(BARE + "admin:\n  port:\n") == [
        "proxy.yaml:7:8: admin.port: expected an integer from 0 to 65535, got an empty value"
    ]


def test_boolean_parser_wants_real_yaml_booleans() -> None:
    def node(text: str) -> yaml.Node:
        root = yaml.compose(f"k: {text}", Loader=yaml.SafeLoader)
        assert isinstance(root, yaml.MappingNode)
        value: yaml.Node = root.value[0][1]
        return value

    ctx = _Ctx("proxy.yaml")
    assert _boolean(ctx, node("true"), "k") is True
    assert _boolean(ctx, node("off"), "k") is False
    assert ctx.issues == []
    assert _boolean(ctx, node("1"), "k") is None
    assert _boolean(ctx, node("'true'"), "k") is None
    assert [str(issue) for issue in ctx.issues] == [
        "proxy.yaml:1:4: k: expected true or false, got an integer '1'",
        "proxy.yaml:1:4: k: expected true or false, got a string 'true'",
    ]


def test_strings_must_be_strings() -> None:
    assert errors(with_routes("routes:\n  - upstream: app\n    name: 2024\n")) == [
        "proxy.yaml:6:11: routes[0].name: expected a string, got an integer '2024' "
        "(quote it to make it a string)"
    ]
    assert errors(with_routes("routes:\n  - upstream: no\n")) == [
        "proxy.yaml:5:15: routes[0].upstream: expected a string, got a boolean 'no' "
        "(quote it to make it a string)"
    ]


def test_wrong_container_types() -> None:
    assert errors("upstreams: [app]\nroutes:\n  - upstream: app\n") == [
        "proxy.yaml:1:12: upstreams: expected a mapping, got a list"
    ]
    assert errors(with_routes("routes:\n  upstream: app\n")) == [
        "proxy.yaml:5:3: routes: expected a list, got a mapping"
    ]
    assert errors(BARE + "listen: 127.0.0.1:8080\n") == [
        "proxy.yaml:6:9: listen: expected a list, got a string '127.0.0.1:8080'"
    ]
    assert errors(BARE + "listen:\n  - 127.0.0.1:8080\n") == [
        "proxy.yaml:7:5: listen[0]: expected a mapping, got a string '127.0.0.1:8080'"
    ]


def test_empty_required_lists_and_mappings() -> None:
    assert errors("upstreams: {}\nroutes: []\n") == [
        "proxy.yaml:1:12: upstreams: expected at least one upstream, got an empty mapping",
        "proxy.yaml:2:9: routes: expected at least one route, got an empty list",
    ]
    assert errors(BARE + "listen: []\n") == [
        "proxy.yaml:6:9: listen: expected at least one listen address, got an empty list"
    ]
    assert errors("upstreams:\n  app:\n    servers: []\nroutes:\n  - upstream: app\n") == [
        "proxy.yaml:3:14: upstreams.app.servers: expected at least one server, got an empty list"
    ]


def test_invalid_upstream_name() -> None:
    text = """\
    upstreams:
      "my app":
        servers: ["127.0.0.1:1215"]
    routes:
      - upstream: my app
    """
    # The route naming it is not also reported as an unknown upstream.
    assert errors(text) == [
        "proxy.yaml:2:3: upstreams['my app']: invalid upstream name 'my app' "
        "(expected letters, digits, '_', '.' or '-')"
    ]


@pytest.mark.parametrize(
    ("host", "normalized"),
    [
        ("example.com", "example.com"),
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("'*.example.com'", "*.example.com"),
        ("127.0.0.1", "127.0.0.1"),
        ("'[::1]'", "[::1]"),
        ("localhost", "localhost"),
    ],
)
def test_route_host_normalized(host: str, normalized: str) -> None:
    text = with_routes(f"routes:\n  - upstream: app\n    host: {host}\n")
    assert parse_config(text).routes[0].host == normalized


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("example.com:8080", "without a port)"),
        ("http://example.com", "no scheme or path"),
        ("example.com/api", "no scheme or path"),
        ("'*'", "(leave host out to match every host)"),
        ("'a.*.com'", "(a wildcard is only allowed as a leading '*.')"),
        ("'*example.com'", "(a wildcard is only allowed as a leading '*.')"),
        ("'exa mple.com'", "(expected a host name or '*.' and a domain"),
        ("'[::g]'", "(expected an IPv6 address in brackets)"),
        ("''", "(expected a host name"),
    ],
)
def test_route_host_invalid(host: str, reason: str) -> None:
    text = with_routes(f"routes:\n  - upstream: app\n    host: {host}\n")
    (message,) = errors(text)
    assert message.startswith(
        f"proxy.yaml:6:11: routes[0].host: invalid host {host.strip(chr(39))!r} ("
    )
    assert reason in message


@pytest.mark.parametrize(
    ("prefix", "reason"),
    [
        ("api", "(expected a path starting with '/', e.g. '/api')"),
        ("'/a b'", "(expected a URL path without spaces, query or fragment)"),
        ("'/a?b'", "(expected a URL path without spaces, query or fragment)"),
        ("/a/../b", "(a path_prefix cannot contain '.' or '..' segments)"),
        ("/a/%2e", "(a path_prefix cannot contain '.' or '..' segments)"),
        ("/a//b", "(a path_prefix cannot contain an empty segment ('//'))"),
        ("/a%zz", "(malformed percent-escape in the path)"),
    ],
)
def test_path_prefix_invalid(prefix: str, reason: str) -> None:
    text = with_routes(f"routes:\n  - upstream: app\n    path_prefix: {prefix}\n")
    assert errors(text) == [
        f"proxy.yaml:6:18: routes[0].path_prefix: invalid path_prefix "
        f"{prefix.strip(chr(39))!r} {reason}"
    ]


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("'[::1]'", "invalid host '[::1]' (write an IPv6 address without brackets here"),
        ("'a b'", "invalid host 'a b' (expected an IP address or host name"),
        ("''", "invalid host '' (expected an IP address or host name"),
    ],
)
def test_listen_host_invalid(host: str, message: str) -> None:
    (error,) = errors(BARE + f"listen:\n  - host: {host}\n    port: 1\n")
    assert error.startswith(f"proxy.yaml:7:11: listen[0].host: {message}")


def test_http10_upgrade_choice() -> None:
    assert errors(BARE + "proxy:\n  http10_upgrade: acept\n") == [
        "proxy.yaml:7:19: proxy.http10_upgrade: invalid value 'acept' "
        "(expected 'accept' or 'ignore'); did you mean 'accept'?"
    ]
    assert errors(BARE + "proxy:\n  http10_upgrade: strict\n") == [
        "proxy.yaml:7:19: proxy.http10_upgrade: invalid value 'strict' "
        "(expected 'accept' or 'ignore')"
    ]


def test_invalid_trusted_proxy() -> None:
    assert errors(BARE + "proxy:\n  trusted_proxies: [10.0.0.0/8, 10.0.0.300]\n") == [
        "proxy.yaml:7:33: proxy.trusted_proxies[1]: invalid trusted proxy '10.0.0.300' "
        "(expected an IP address or CIDR network, e.g. '10.0.0.0/8' or '::1')"
    ]


def test_merge_keys_are_refused_clearly() -> None:
    text = BARE + "shutdown:\n  <<: {grace_period: 1s}\n"
    assert errors(text) == [
        "proxy.yaml:7:3: shutdown: merge keys ('<<') are not supported; repeat the keys, "
        "or reuse a whole mapping with an alias (*name)"
    ]


# ---------------------------------------------------------------------------
# Cross checks
# ---------------------------------------------------------------------------


def test_duplicate_route_reported_at_the_second() -> None:
    text = with_routes(
        """\
        routes:
          - host: example.com
            path_prefix: /api
            upstream: app
          - path_prefix: /api
            upstream: app
          - host: EXAMPLE.com
            path_prefix: /api
            upstream: app
        """
    )
    assert errors(text) == [
        "proxy.yaml:10:5: routes[2]: duplicate route for host 'example.com' and "
        "path_prefix '/api' (same as routes[0])"
    ]
    assert errors(with_routes("routes:\n  - upstream: app\n  - upstream: app\n")) == [
        "proxy.yaml:6:5: routes[1]: duplicate route for path_prefix '/' and no host "
        "(same as routes[0])"
    ]


def test_duplicate_route_name() -> None:
    text = with_routes(
        """\
        routes:
          - name: api
            path_prefix: /a
            upstream: app
          - name: api
            path_prefix: /b
            upstream: app
          - path_prefix: /c
            upstream: app
          - name: /c
            path_prefix: /d
            upstream: app
        """
    )
    assert errors(text) == [
        "proxy.yaml:8:11: routes[1].name: duplicate route name 'api' (same as routes[0])",
        "proxy.yaml:13:11: routes[3].name: duplicate route name '/c' (same as routes[2])",
    ]


def test_default_name_clashing_with_an_explicit_one() -> None:
    text = with_routes(
        """\
        routes:
          - name: /api
            path_prefix: /other
            upstream: app
          - path_prefix: /api
            upstream: app
        """
    )
    (message,) = errors(text)
    assert message.startswith(
        "proxy.yaml:8:5: routes[1]: duplicate route name '/api' (same as routes[0]); "
    )
    assert "give this route a unique name" in message


def test_duplicate_listen_address() -> None:
    text = BARE + (
        "listen:\n"
        "  - port: 8080\n"
        "  - host: 127.0.0.1\n"
        "    port: 8081\n"
        "  - host: 127.0.0.1\n"
        "    port: 8080\n"
    )
    assert errors(text) == [
        "proxy.yaml:10:5: listen[2]: duplicate listen address '127.0.0.1:8080' (same as listen[0])"
    ]


def test_wildcard_listen_address_overlaps() -> None:
    text = BARE + "listen:\n  - {host: 0.0.0.0, port: 80}\n  - {host: 10.1.2.3, port: 80}\n"
    assert errors(text) == [
        "proxy.yaml:8:5: listen[1]: listen address '10.1.2.3:80' overlaps listen[0] "
        "'0.0.0.0:80' (a wildcard address covers its whole family)"
    ]
    # IPv6 sockets are bound with IPV6_V6ONLY, so the two wildcards coexist.
    ok = BARE + "listen:\n  - {host: 0.0.0.0, port: 80}\n  - {host: '::', port: 80}\n"
    assert len(parse_config(ok).listen) == 2


def test_port_zero_never_clashes() -> None:
    text = BARE + "listen:\n  - port: 0\n  - port: 0\nadmin:\n  port: 0\n"
    config = parse_config(text)
    assert config.listen == (ListenSettings("127.0.0.1", 0), ListenSettings("127.0.0.1", 0))
    assert config.admin == Address("127.0.0.1", 0)


def test_admin_same_as_listen() -> None:
    text = BARE + "listen:\n  - port: 8080\nadmin:\n  host: 127.0.0.1\n  port: 8080\n"
    assert errors(text) == [
        "proxy.yaml:9:3: admin: admin address '127.0.0.1:8080' conflicts with "
        "listen[0] '127.0.0.1:8080'"
    ]


def test_listen_on_the_default_admin_address() -> None:
    text = BARE + "listen:\n  - port: 9090\n"
    assert errors(text) == [
        "proxy.yaml:7:5: listen[0]: listen address '127.0.0.1:9090' conflicts with the "
        "default admin address '127.0.0.1:9090' (set admin.port to another port)"
    ]


# ---------------------------------------------------------------------------
# Every error at once
# ---------------------------------------------------------------------------


def test_several_errors_at_once_in_file_order() -> None:
    text = """\
    listen:
      - host: 127.0.0.1
        prot: 8080
    upstreams:
      app:
        servers: ["127.0.0.1:1215", "127.0.0.1"]
    routes:
      - upstream: ap
        websocket:
          idle_timeout: 10 sec
    """
    assert errors(text) == [
        "proxy.yaml:2:5: listen[0].port: required key missing",
        "proxy.yaml:3:5: listen[0].prot: unknown key; did you mean 'port'?",
        "proxy.yaml:6:33: upstreams.app.servers[1]: invalid server '127.0.0.1' "
        "(expected HOST:PORT, e.g. '127.0.0.1:8000' or '[::1]:8000')",
        "proxy.yaml:8:15: routes[0].upstream: unknown upstream 'ap' (known: app); "
        "did you mean 'app'?",
        "proxy.yaml:10:21: routes[0].websocket.idle_timeout: invalid duration '10 sec' "
        "(expected a number of seconds or a number with ms, s, m or h, "
        "e.g. '250ms', '10s', '5m', '1h')",
    ]


def test_four_mistakes_four_issues_sorted_even_across_sections() -> None:
    # proxy comes before upstreams in the file, though the walker reads
    # upstreams first: issues still come out in file order.
    text = """\
    proxy:
      tunnel_buffer: 1KiB
    upstreams:
      app:
        servers: ["127.0.0.1:0"]
    routes:
      - upstream: app
        path_prefix: api
    shutdown:
      grace_period: soon
    """
    issues = [str(issue).split(": ")[1] for issue in _issues(text)]
    assert issues == [
        "proxy.tunnel_buffer",
        "upstreams.app.servers[0]",
        "routes[0].path_prefix",
        "shutdown.grace_period",
    ]


def _issues(text: str) -> tuple[ConfigIssue, ...]:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), "proxy.yaml")
    return info.value.issues


# ---------------------------------------------------------------------------
# ConfigIssue, ConfigError, load_config
# ---------------------------------------------------------------------------


def test_issue_rendering() -> None:
    assert str(ConfigIssue("f.yaml", 3, 5, "a.b", "bad")) == "f.yaml:3:5: a.b: bad"
    assert str(ConfigIssue("f.yaml", 3, 5, "", "yaml: bad")) == "f.yaml:3:5: yaml: bad"
    assert str(ConfigIssue("f.yaml", 0, 0, "", "cannot read: gone")) == "f.yaml: cannot read: gone"


def test_config_error_carries_issues_and_pickles() -> None:
    issues = (ConfigIssue("f", 1, 1, "a", "x"), ConfigIssue("f", 2, 1, "b", "y"))
    error = ConfigError(issues)
    assert error.issues == issues
    assert str(error) == "f:1:1: a: x\nf:2:1: b: y"
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, ConfigError)
    assert copy.issues == issues


def test_load_config_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    (issue,) = info.value.issues
    assert (issue.file, issue.line, issue.column, issue.path) == (str(missing), 0, 0, "")
    assert str(info.value) == f"{missing}: cannot read: No such file or directory"


def test_load_config_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read: Is a directory"):
        load_config(tmp_path)


def test_load_config_reads_and_names_the_source(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(MINIMAL, encoding="utf-8")
    config = load_config(path)
    assert config.source == str(path)
    assert config == parse_config(MINIMAL, str(path))
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())  # a BOM is fine
    assert load_config(str(path)) == config


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(BARE + "admin:\n  port: -1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}:7:9: admin.port: invalid port '-1' (expected an integer from 0 to 65535)"
    )


def test_load_config_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_bytes(b"upstreams:\n  caf\xe9: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:2:6: not valid UTF-8 (byte 0xe9)"


# ---------------------------------------------------------------------------
# Robustness and purity
# ---------------------------------------------------------------------------

_PIECES = st.sampled_from(
    [
        "listen", "admin", "upstreams", "routes", "proxy", "shutdown", "host", "port",
        "servers", "upstream", "path_prefix", "name", "websocket", "idle_timeout",
        "trusted_proxies", "tunnel_buffer", "app", "- ", ": ", "\n", "  ", "[", "]", "{",
        "}", ",", "1", "yes", "~", "10s", "127.0.0.1:80", "'", '"', "*", "&a ", "*a", "<<",
        "!!str ", "-1", "\t", "#",
    ]
)  # fmt: skip


def _outcome(text: str) -> tuple[ConfigIssue, ...] | None:
    """None when *text* is a valid configuration, else its issues; any other
    exception escapes and fails the test."""
    try:
        parse_config(text)
    except ConfigError as error:
        return error.issues
    return None


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=200), st.lists(_PIECES, max_size=40).map("".join)))
def test_any_text_gives_a_config_or_config_error(text: str) -> None:
    issues = _outcome(text)
    assert issues is None or issues
    assert all(issue.line >= 1 and issue.column >= 1 for issue in issues or ())


@settings(max_examples=500, deadline=None)
@given(
    st.integers(0, len(MINIMAL)),
    st.integers(0, 8),
    st.text(alphabet="ab1:-[]{}\n ,*&!'\"#~./s", max_size=6),
)
def test_mutated_minimal_config_never_crashes(position: int, cut: int, insert: str) -> None:
    issues = _outcome(MINIMAL[:position] + insert + MINIMAL[position + cut :])
    assert issues is None or issues


def test_config_and_units_import_neither_asyncio_nor_aiohttp() -> None:
    code = (
        "import sys, wsproxy.config, wsproxy.units\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('asyncio', 'aiohttp')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.stdout.strip() == "[]"


def test_access_log_and_observer_defaults() -> None:
    config = parse(MINIMAL)
    assert config.access_log == AccessLogSettings(format="json", redact_query=True)
    assert config.proxy.observe_frames is True


def test_access_log_and_observer_settings() -> None:
    config = parse(
        MINIMAL
        + "access_log:\n  format: text\n  redact_query: false\n"
        + "proxy:\n  observe_frames: false\n"
    )
    assert config.access_log == AccessLogSettings(format="text", redact_query=False)
    assert config.proxy.observe_frames is False


def test_access_log_errors() -> None:
    found = errors(MINIMAL + "access_log:\n  format: xml\n  redact_query: 1\n  colour: no\n")
    assert len(found) == 3
    assert "access_log.format: " in found[0]
    assert "'xml'" in found[0]
    assert "access_log.redact_query: " in found[1]
    assert "access_log.colour: unknown key" in found[2]


@pytest.mark.parametrize("value", ["off", '"off"', "Off"])
def test_access_log_off_may_be_written_bare(value: str) -> None:
    """YAML 1.1 reads a bare `off` as false; for this key it means "off"."""
    assert parse(MINIMAL + f"access_log:\n  format: {value}\n").access_log.format == "off"


def test_route_name_none_is_reserved_for_unmatched_requests() -> None:
    found = errors(MINIMAL.replace("  - path_prefix: /\n", "  - path_prefix: /\n    name: none\n"))
    assert len(found) == 1
    assert "routes[0].name: invalid name 'none' (reserved" in found[0]


def test_close_spread_defaults_to_zero_and_may_not_outlast_the_grace_period() -> None:
    config = parse_config(BARE, "proxy.yaml")
    assert config.shutdown.close_spread == 0.0
    spread = parse_config(BARE + "shutdown:\n  close_spread: 2s\n", "proxy.yaml")
    assert spread.shutdown.close_spread == 2.0
    assert errors(BARE + "shutdown:\n  grace_period: 5s\n  close_spread: 10s\n") == [
        "proxy.yaml:8:17: shutdown.close_spread: close_spread (10s) must not be longer than "
        "grace_period (5s): sessions closed after the grace period would be reset instead"
    ]


def test_servers_with_weights_balance_and_health() -> None:
    config = parse(
        """\
        upstreams:
          app:
            servers:
              - "http://10.0.0.1:80/"
              - {address: "[::1]:8000", weight: 3}
            balance: least_conn
            max_fails: 3
            fail_timeout: 30s
            health:
              path: /healthz?deep=1
              interval: 2s
              timeout: 500ms
              fails: 2
              passes: 1
        routes:
          - upstream: app
        """
    )
    app = config.upstreams["app"]
    assert app.servers == (
        ServerSettings(Address("10.0.0.1", 80), 1),
        ServerSettings(Address("::1", 8000), 3),
    )
    assert (app.balance, app.max_fails, app.fail_timeout) == ("least_conn", 3, 30.0)
    assert app.health == HealthCheck("/healthz?deep=1", 2.0, 0.5, 2, 1)
    defaults = parse_config(BARE, "proxy.yaml").upstreams["app"]
    assert (defaults.balance, defaults.max_fails, defaults.fail_timeout) == ("round_robin", 1, 10)
    assert defaults.health is None


def test_balancing_and_health_mistakes_are_reported_at_their_place() -> None:
    text = """\
    upstreams:
      app:
        servers:
          - {address: "10.0.0.1:80", weight: 0}
          - {adress: "10.0.0.2:80"}
          - {address: "10.0.0.1:80"}
        balance: leastconn
        max_fails: -1
        health:
          interval: 1s
          timeout: 2s
    routes:
      - upstream: app
    """
    assert errors(text) == [
        "proxy.yaml:4:42: upstreams.app.servers[0].weight: invalid weight '0' "
        "(expected an integer from 1 to 1000)",
        "proxy.yaml:5:9: upstreams.app.servers[1].address: required key missing",
        "proxy.yaml:5:10: upstreams.app.servers[1].adress: unknown key; did you mean 'address'?",
        "proxy.yaml:7:14: upstreams.app.balance: invalid value 'leastconn' "
        "(expected 'round_robin', 'least_conn' or 'ip_hash'); did you mean 'least_conn'?",
        "proxy.yaml:8:16: upstreams.app.max_fails: invalid value '-1' "
        "(expected an integer from 0 to 100)",
        "proxy.yaml:10:7: upstreams.app.health.path: required key missing",
    ]
    assert errors(
        BARE.replace(
            "    servers", "    health: {path: /h, interval: 1s, timeout: 2s}\n    servers"
        )
    ) == [
        "proxy.yaml:3:47: upstreams.app.health.timeout: timeout (2s) must not be longer "
        "than interval (1s)"
    ]


def test_max_lifetime_and_tcp_keepalive() -> None:
    defaults = parse_config(BARE, "proxy.yaml")
    assert defaults.routes[0].websocket.max_lifetime == 0.0
    assert defaults.proxy.tcp_keepalive == 60.0
    config = parse_config(
        BARE.replace(
            "  - upstream: app\n", "  - upstream: app\n    websocket:\n      max_lifetime: 1h\n"
        )
        + "proxy:\n  tcp_keepalive: 0s\n",
        "proxy.yaml",
    )
    assert config.routes[0].websocket.max_lifetime == 3600.0
    assert config.proxy.tcp_keepalive == 0.0
    assert errors(BARE + "proxy:\n  tcp_keepalive: soon\n") == [
        "proxy.yaml:7:18: proxy.tcp_keepalive: invalid duration 'soon' (expected a number "
        "of seconds or a number with ms, s, m or h, e.g. '250ms', '10s', '5m', '1h')"
    ]


def test_connection_limits() -> None:
    config = parse(
        """\
        listen:
          - port: 8080
            max_connections: 10000
        upstreams:
          app:
            servers: ["127.0.0.1:1215"]
        routes:
          - upstream: app
        proxy:
          max_websockets_per_client: 50
        """
    )
    assert config.listen == (ListenSettings("127.0.0.1", 8080, 10000),)
    assert config.proxy.max_websockets_per_client == 50
    defaults = parse_config(BARE, "proxy.yaml")
    assert defaults.listen[0].max_connections == 0
    assert defaults.proxy.max_websockets_per_client == 0
    assert errors(BARE + "proxy:\n  max_websockets_per_client: -1\n") == [
        "proxy.yaml:7:30: proxy.max_websockets_per_client: invalid value '-1' "
        "(expected an integer of at least 0)"
    ]
