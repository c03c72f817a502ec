"""Origin rules (wsproxy.origins): pure."""

from __future__ import annotations

import pytest

from wsproxy.config import ConfigError, parse_config
from wsproxy.origins import origin_allowed, parse_rule

RULES = (
    parse_rule("https://app.example.org"),
    parse_rule("https://*.example.net"),
    parse_rule("http://localhost:3000"),
)


@pytest.mark.parametrize(
    ("values", "allowed"),
    [
        (["https://app.example.org"], True),
        (["HTTPS://App.Example.org:443"], True),  # the same origin, normalized
        (["https://app.example.org:8443"], False),  # another port
        (["http://app.example.org"], False),  # another scheme
        (["https://evil.example"], False),
        (["https://app.example.org.evil.example"], False),
        (["https://a.example.net"], True),
        (["https://a.b.example.net"], True),
        (["https://example.net"], False),  # the apex is not under itself
        (["https://badexample.net"], False),
        (["http://localhost:3000"], True),
        (["http://localhost"], False),
        (["null"], False),
        (["https://app.example.org/path"], False),  # not an origin
        (["garbage"], False),
        (["https://app.example.org", "https://app.example.org"], False),  # two fields
        (["https://app.example.org https://evil.example"], False),  # a list
        ([], True),  # no Origin: not a browser, not a hijack
        (["https://.example.net"], False),  # not a host name under the domain
        (["https://a..example.net"], False),
        (["https://_.example.net"], False),
        (["https://app.example.org\x85"], False),  # not HTTP whitespace
        (["https://app.example.org:0443"], False),  # no leading zeros
        ([" https://app.example.org\t"], True),  # HTTP whitespace around it
    ],
)
def test_origins(values: list[str], allowed: bool) -> None:
    assert origin_allowed(RULES, values) is allowed


def test_ipv6_origins_are_compared_as_addresses() -> None:
    rules = (parse_rule("https://[0:0:0:0:0:0:0:1]:8443"),)
    assert origin_allowed(rules, ["https://[::1]:8443"])
    assert not origin_allowed(rules, ["https://[::2]:8443"])


def test_no_rules_allow_everything_and_null_only_when_listed() -> None:
    assert origin_allowed((), ["https://evil.example"])
    assert origin_allowed((parse_rule("null"),), ["null"])
    assert not origin_allowed((parse_rule("null"),), ["https://app.example.org"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("app.example.org", "expected scheme://host"),
        ("https://app.example.org/", "no path"),
        ("https://*.*.example.org", "expected scheme://host"),
        ("https://*.org", "too broad"),
        ("ftp://example.org", "must be http or https"),
        ("wss://app.example.org", "must be http or https"),
        ("https://*.1.2.3.4", "must precede a domain name"),
        ("https://[:::]", "expected scheme://host"),
        ("https://app.example.org:0", "expected scheme://host"),
    ],
)
def test_a_bad_rule_says_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rule(text)


def test_the_configuration_reads_allowed_origins_and_reports_a_bad_one_where_it_is() -> None:
    base = """\
upstreams:
  app:
    servers: ["127.0.0.1:9000"]
routes:
  - path_prefix: /
    upstream: app
    websocket:
      allowed_origins: [{}]
"""
    config = parse_config(base.format('"https://app.example.org", "https://*.example.net"'))
    rules = config.routes[0].websocket.allowed_origins
    assert [rule.text for rule in rules] == ["https://app.example.org", "https://*.example.net"]
    with pytest.raises(ConfigError) as error:
        parse_config(base.format('"https://app.example.org", "app.example.net"'), "p.yaml")
    assert str(error.value).startswith(
        "p.yaml:8:52: routes[0].websocket.allowed_origins[1]: invalid origin 'app.example.net'"
    )
