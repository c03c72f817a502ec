"""Configuration of the edge keys: listen TLS and PROXY protocol, TLS to
upstreams, per-route rewrites."""

from __future__ import annotations

import textwrap

import pytest

from wsproxy.config import (
    Address,
    Config,
    ConfigError,
    HeaderEdits,
    ListenTls,
    Rewrite,
    ServerSettings,
    UpstreamTls,
    parse_config,
)


def parse(text: str) -> Config:
    return parse_config(textwrap.dedent(text), "proxy.yaml")


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), "proxy.yaml")
    return [str(issue) for issue in info.value.issues]


UPSTREAMS = """\
upstreams:
  app:
    servers: ["127.0.0.1:1215"]
"""


def test_defaults_keep_todays_behaviour() -> None:
    config = parse(UPSTREAMS + "routes:\n  - upstream: app\n")
    (listen,) = config.listen
    assert listen.proxy_protocol is False
    assert listen.tls is None
    assert config.upstreams["app"].tls == UpstreamTls()
    assert config.upstreams["app"].servers[0].tls is False
    assert config.routes[0].rewrite == Rewrite()
    assert not config.routes[0].rewrite


def test_listen_tls_and_proxy_protocol() -> None:
    config = parse(
        textwrap.dedent(
            """\
        listen:
          - port: 8443
            proxy_protocol: true
            tls:
              cert_file: /etc/wsproxy/cert.pem
              key_file: /etc/wsproxy/key.pem
          - port: 8080
        """
        )
        + UPSTREAMS
        + "routes:\n  - upstream: app\n"
    )
    tls_listener, plain = config.listen
    assert tls_listener.proxy_protocol is True
    assert tls_listener.tls == ListenTls("/etc/wsproxy/cert.pem", "/etc/wsproxy/key.pem")
    assert plain.tls is None
    assert plain.proxy_protocol is False


def test_listen_tls_needs_both_files() -> None:
    text = (
        "listen:\n  - port: 8443\n    tls:\n      cert_file: c.pem\n"
        + UPSTREAMS
        + "routes:\n  - upstream: app\n"
    )
    assert errors(text) == ["proxy.yaml:4:7: listen[0].tls.key_file: required key missing"]


def test_listen_proxy_protocol_must_be_a_boolean() -> None:
    text = (
        "listen:\n  - port: 8443\n    proxy_protocol: v2\n"
        + UPSTREAMS
        + "routes:\n  - upstream: app\n"
    )
    (message,) = errors(text)
    assert message.startswith("proxy.yaml:3:21: listen[0].proxy_protocol: expected true or false")


def test_https_servers_and_upstream_tls() -> None:
    config = parse(
        """\
        upstreams:
          app:
            servers: ["https://api.internal:8443", {address: "http://10.0.0.2:80", weight: 2}]
            tls:
              ca_file: /etc/wsproxy/ca.pem
              server_name: API.internal
              cert_file: client.pem
              key_file: client.key
        routes:
          - upstream: app
        """
    )
    upstream = config.upstreams["app"]
    assert upstream.servers == (
        ServerSettings(Address("api.internal", 8443), 1, True),
        ServerSettings(Address("10.0.0.2", 80), 2, False),
    )
    assert upstream.tls == UpstreamTls(
        "/etc/wsproxy/ca.pem", "api.internal", "client.pem", "client.key", True
    )


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        (
            "{cert_file: c.pem}",
            "upstreams.app.tls.cert_file: cert_file needs key_file too",
        ),
        (
            "{verify: false, ca_file: ca.pem}",
            "upstreams.app.tls.ca_file: ca_file has no effect with verify: false",
        ),
        ("{verify: false, server_name: 'a b'}", "invalid server_name 'a b'"),
        ("{server_name: 'a b'}", "upstreams.app.tls.server_name: invalid server_name 'a b'"),
        ("{verify: maybe}", "upstreams.app.tls.verify: expected true or false"),
        ("{ca: x}", "upstreams.app.tls.ca: unknown key"),
    ],
)
def test_bad_upstream_tls(tls: str, message: str) -> None:
    text = (
        f'upstreams:\n  app:\n    servers: ["https://x:443"]\n    tls: {tls}\n'
        "routes:\n  - upstream: app\n"
    )
    (got,) = errors(text)
    assert message in got


def test_server_name_with_verify_false_is_still_sent_as_sni() -> None:
    text = (
        'upstreams:\n  app:\n    servers: ["https://10.0.0.1:443"]\n'
        "    tls: {verify: false, server_name: app.example.org}\n"
        "routes:\n  - upstream: app\n"
    )
    assert parse(text).upstreams["app"].tls == UpstreamTls(
        server_name="app.example.org", verify=False
    )


def test_upstream_tls_without_an_https_server_is_an_error() -> None:
    text = (
        'upstreams:\n  app:\n    servers: ["x:80"]\n    tls: {verify: false}\n'
        "routes:\n  - upstream: app\n"
    )
    assert errors(text) == [
        "proxy.yaml:4:10: upstreams.app.tls: tls is set but no server uses it: "
        "write the servers as https://HOST:PORT"
    ]


def test_rewrite() -> None:
    config = parse(
        UPSTREAMS
        + textwrap.dedent(
            """\
        routes:
          - path_prefix: /api/
            upstream: app
            rewrite:
              strip_prefix: true
              host: App.Internal:8080
              request_headers:
                set: {X-Env: prod, X-Empty: ""}
                remove: [X-Debug, cookie]
              response_headers:
                set: {Strict-Transport-Security: "max-age=63072000"}
                remove: [Server]
        """
        )
    )
    rewrite = config.routes[0].rewrite
    assert rewrite == Rewrite(
        True,
        "app.internal:8080",
        HeaderEdits((("X-Env", "prod"), ("X-Empty", "")), frozenset({"x-debug", "cookie"})),
        HeaderEdits((("Strict-Transport-Security", "max-age=63072000"),), frozenset({"server"})),
    )


@pytest.mark.parametrize(
    ("rewrite", "message"),
    [
        ("{request_headers: {set: {Connection: close}}}", "cannot be set or removed"),
        ("{request_headers: {remove: [Upgrade]}}", "cannot be set or removed"),
        ("{request_headers: {set: {Host: x}}}", "use rewrite.host"),
        ("{request_headers: {set: {X-Forwarded-For: 1.2.3.4}}}", "proxy.trusted_proxies"),
        ("{response_headers: {set: {Sec-WebSocket-Accept: x}}}", "cannot be set or removed"),
        ("{response_headers: {set: {Transfer-Encoding: chunked}}}", "cannot be set or removed"),
        ("{request_headers: {remove: [Expect]}}", "cannot be set or removed"),
        ("{request_headers: {remove: [Content_Length]}}", "cannot be set or removed"),
        ("{request_headers: {set: {x_forwarded_for: x}}}", "proxy.trusted_proxies"),
        ("{request_headers: {remove: [Sec_WebSocket_Key]}}", "cannot be set or removed"),
        ("{request_headers: {set: {X-Request-ID: x}}}", "cannot be set or removed"),
        ("{request_headers: {set: {'a b': x}}}", "invalid header name 'a b'"),
        ('{request_headers: {set: {X-A: "a\\r\\nX-B: b"}}}', "invalid header value"),
        ("{request_headers: {set: {X-A: ' x'}}}", "no leading or trailing whitespace"),
        ("{request_headers: {set: {X-A: 1}}}", "expected a string"),
        ("{request_headers: {set: {X-A: a, x-a: b}}}", "is set twice"),
        ("{request_headers: {set: {X-A: a, X_A: b}}}", "is set twice"),
        ("{request_headers: {set: {X-A: a}, remove: [x-a]}}", "both set and removed"),
        ("{host: 'a/b'}", "invalid host 'a/b'"),
        ("{host: 'a:99999'}", "invalid host 'a:99999'"),
        ("{strip_prefix: yes please}", "expected true or false"),
        ("{headers: {}}", "unknown key"),
    ],
)
def test_bad_rewrite(rewrite: str, message: str) -> None:
    text = (
        UPSTREAMS + f"routes:\n  - path_prefix: /api\n    upstream: app\n    rewrite: {rewrite}\n"
    )
    got = errors(text)
    assert len(got) == 1, got
    assert message in got[0]
    assert ".rewrite." in got[0]


def test_strip_prefix_needs_a_prefix() -> None:
    text = UPSTREAMS + "routes:\n  - upstream: app\n    rewrite: {strip_prefix: true}\n"
    (message,) = errors(text)
    assert "routes[0].rewrite.strip_prefix: strip_prefix needs a path_prefix other than '/'" in (
        message
    )


def test_listen_backlog() -> None:
    routes = "routes:\n  - upstream: app\n"
    text = "listen:\n  - port: 8080\n    backlog: 8192\n" + UPSTREAMS + routes
    assert parse(text).listen[0].backlog == 8192
    assert parse(UPSTREAMS + routes).listen[0].backlog == 0
    (message,) = errors(text.replace("8192", "0"))
    assert "listen[0].backlog: invalid backlog '0' (expected an integer from 1 to 65535)" in message
