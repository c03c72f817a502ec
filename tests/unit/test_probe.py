"""The probe's pure core: targets, requests, response heads, the diagnosis."""

from __future__ import annotations

import pytest

from wsproxy.headers import websocket_accept
from wsproxy.probe.model import (
    DEFLATE,
    FIREFOX,
    HTTP10,
    HTTP10_KEEP_ALIVE,
    STANDARD,
    VARIANTS,
    BadResponse,
    Options,
    Outcome,
    Target,
    UsageError,
    Variant,
    build_request,
    check_subprotocol,
    check_value,
    diagnose,
    handshake_problems,
    parse_header,
    parse_response_head,
)
from wsproxy.wsframes import Opcode

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


@pytest.mark.parametrize(
    ("url", "tls", "host", "port", "resource", "host_header"),
    [
        ("ws://example.com/chat", False, "example.com", 80, "/chat", "example.com"),
        ("wss://example.com/chat?room=1", True, "example.com", 443, "/chat?room=1", "example.com"),
        ("http://127.0.0.1:8080", False, "127.0.0.1", 8080, "/", "127.0.0.1:8080"),
        ("https://example.com:8443/x", True, "example.com", 8443, "/x", "example.com:8443"),
        ("ws://[::1]:9000/ws", False, "::1", 9000, "/ws", "[::1]:9000"),
    ],
)
def test_a_url_becomes_a_target(
    url: str, tls: bool, host: str, port: int, resource: str, host_header: str
) -> None:
    target = Target.parse(url)
    assert (target.tls, target.host, target.port, target.resource) == (tls, host, port, resource)
    assert target.host_header == host_header


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("example.com/chat", "not a WebSocket URL"),
        ("ftp://example.com/", "not a WebSocket URL"),
        ("ws:///chat", "has no host"),
        ("ws://example.com:99999/", "must be a number from 1 to 65535"),
        ("ws://example.com:http/", "must be a number from 1 to 65535"),
        ("ws://[::1/", "an IPv6 address in brackets"),
        ("ws://[abc]/", "an IPv6 address in brackets"),
        ("wss//user:hunter2@h/", "not a WebSocket URL"),
        ("ws://example.com:0/", "not a number from 1 to 65535"),
        ("ws://user:secret@example.com/", "credentials in the URL"),
        ("ws://example.com/a b", "spaces or control characters"),
        ("ws://example.com/a\r\nX: y", "spaces or control characters"),
    ],
)
def test_a_bad_url_is_a_usage_error(url: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Target.parse(url)


@pytest.mark.parametrize(
    "url", ["ws://user:secret@example.com/", "wss//user:secret@h/", "ws://u:secret@h:x/"]
)
def test_a_usage_error_never_repeats_the_url(url: str) -> None:
    with pytest.raises(UsageError) as error:
        Target.parse(url)
    assert "secret" not in str(error.value)


def test_the_url_shown_has_its_query_values_redacted_and_non_ascii_encoded() -> None:
    target = Target.parse("ws://h:8080/chat/\u00e9t\u00e9?token=abc&room=1")
    assert target.url == "ws://h:8080/chat/%C3%A9t%C3%A9?token=redacted&room=redacted"
    assert target.resource == "/chat/%C3%A9t%C3%A9?token=abc&room=1"
    assert Target.parse("ws://[::1]:9/").address == "[::1]:9"


def test_what_a_server_sends_is_printed_without_control_characters() -> None:
    head, _ = parse_response_head(b"HTTP/1.1 403 \x1b]0;pwned\x07\x1b[2J\r\nServer: x\x1by\r\n\r\n")
    assert "\x1b" not in head.reason
    assert head.reason == "\\x1b]0;pwned\\x07\\x1b[2J"
    assert head.get("server") == "x\\x1by"


@pytest.mark.parametrize("value", ["x\r\nX-Injected: yes", "caf\u00e9", "a\x00b"])
def test_a_value_that_could_smuggle_or_not_encode_is_refused(value: str) -> None:
    with pytest.raises(UsageError, match="printable ASCII"):
        check_value("--origin", value)
    with pytest.raises(UsageError):
        parse_header(f"X-Secret: {value}")


@pytest.mark.parametrize("name", ["chat v2", "a;b", "", "caf\u00e9"])
def test_a_subprotocol_is_a_token(name: str) -> None:
    with pytest.raises(UsageError, match="is a token"):
        check_subprotocol(name)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("NoColon", "expected 'Name: value'"),
        ("Bad Name: x", "expected 'Name: value'"),
        ("X-A: 1\r\nX-B: 2", "line break"),
        ("Connection: close", "sets Connection itself"),
        ("host: other", "sets host itself"),
    ],
)
def test_a_header_that_could_smuggle_or_fight_the_variants_is_refused(
    text: str, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        parse_header(text)


def test_a_header_is_name_and_value() -> None:
    assert parse_header("Authorization:  Bearer x ") == ("Authorization", "Bearer x")


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_each_variant_sends_its_version_and_connection_form(variant: Variant) -> None:
    options = Options(origin="https://app.example", subprotocols=("chat", "v2"))
    request = build_request(Target.parse("ws://h:81/p?q=1"), variant, options, KEY).decode()
    head, _, body = request.partition("\r\n\r\n")
    lines = head.split("\r\n")
    assert lines[0] == f"GET /p?q=1 {variant.version}"
    assert f"Connection: {variant.connection}" in lines
    assert "Host: h:81" in lines
    assert f"Sec-WebSocket-Key: {KEY}" in lines
    assert "Origin: https://app.example" in lines
    assert "Sec-WebSocket-Protocol: chat, v2" in lines
    assert any(line.startswith("Sec-WebSocket-Extensions:") for line in lines) == variant.deflate
    assert body == ""


def test_the_variants_are_the_forms_seen_in_the_wild() -> None:
    forms = {(v.version, v.connection, v.deflate) for v in VARIANTS}
    assert forms == {
        ("HTTP/1.1", "Upgrade", False),
        ("HTTP/1.1", "Upgrade", True),
        ("HTTP/1.1", "keep-alive, Upgrade", False),
        ("HTTP/1.0", "Upgrade", False),
        ("HTTP/1.0", "keep-alive, Upgrade", False),
    }


def _switching(accept: str = websocket_accept(KEY), extra: str = "") -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n{extra}\r\n"
    ).encode()


def test_a_response_head_and_the_bytes_after_it() -> None:
    frame = bytes([0x80 | Opcode.TEXT, 2]) + b"hi"
    head, rest = parse_response_head(_switching() + frame)
    assert (head.version, head.status, head.reason) == ("HTTP/1.1", 101, "Switching Protocols")
    assert head.get("upgrade") == "websocket"
    assert rest == frame
    assert handshake_problems(head, KEY, Options()) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", "not an HTTP response"),
        (b"HTTP/1.1 abc OK\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 101 OK\r\nno colon here\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 101 OK\r\nX: y\r\n", "did not end"),
    ],
)
def test_what_is_not_an_http_response_head_is_said(data: bytes, message: str) -> None:
    with pytest.raises(BadResponse, match=message):
        parse_response_head(data)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (_switching(accept="AAAA"), "wrong Sec-WebSocket-Accept"),
        (_switching().replace(b"Sec-WebSocket-Accept", b"X-Accept"), "no Sec-WebSocket-Accept"),
        (_switching().replace(b"Upgrade: websocket", b"Upgrade: h2c"), "no 'Upgrade: websocket'"),
        (_switching().replace(b"Connection: Upgrade", b"Connection: close"), "no 'upgrade'"),
        (_switching(extra="Sec-WebSocket-Protocol: other\r\n"), "not offered 'other'"),
    ],
)
def test_a_101_a_browser_would_fail_is_flagged(data: bytes, problem: str) -> None:
    head, _ = parse_response_head(data)
    problems = handshake_problems(head, KEY, Options(subprotocols=("chat",)))
    assert any(problem in p for p in problems), problems


# --- the diagnosis, from outcomes -------------------------------------------------


def held(variant: Variant) -> Outcome:
    return Outcome(variant, status=101, reason="Switching Protocols", survived=True, pong_ms=0.5)


def closed(variant: Variant, by: str = "FIN", after: float = 0.4) -> Outcome:
    return Outcome(
        variant, status=101, reason="Switching Protocols", closed_by=by, closed_after_ms=after
    )


def answered(variant: Variant, status: int, reason: str) -> Outcome:
    return Outcome(variant, status=status, reason=reason)


def outcomes(**changed: Outcome) -> list[Outcome]:
    names = {
        "standard": STANDARD,
        "deflate": DEFLATE,
        "firefox": FIREFOX,
        "http10": HTTP10,
        "http10_ka": HTTP10_KEEP_ALIVE,
    }
    return [changed.get(name, held(variant)) for name, variant in names.items()]


def text(result: list[Outcome]) -> tuple[bool, str]:
    diagnosis = diagnose(result, 2.0)
    return diagnosis.ok, "\n".join(diagnosis.findings)


def test_a_server_that_keeps_every_form_is_told_so() -> None:
    ok, findings = text(outcomes())
    assert ok
    assert "every form held for 2s" in findings


def test_swoole_closes_http10_without_keep_alive_and_is_named() -> None:
    ok, findings = text(outcomes(http10=closed(HTTP10)))
    assert ok  # the standard handshake holds: exit 0, with a finding
    assert "arrive as HTTP/1.0 right after 101" in findings
    assert "as Swoole does" in findings
    assert "proxy_http_version 1.1" in findings
    assert "Firefox" not in findings


def test_a_server_closing_every_http10_session_is_told_apart_from_swoole() -> None:
    ok, findings = text(outcomes(http10=closed(HTTP10), http10_ka=closed(HTTP10_KEEP_ALIVE)))
    assert ok
    assert "even with Connection: keep-alive" in findings
    assert "as Swoole does" not in findings


def test_a_server_refusing_http10_gets_its_own_finding() -> None:
    ok, findings = text(
        outcomes(
            http10=answered(HTTP10, 426, "Upgrade Required"),
            http10_ka=answered(HTTP10_KEEP_ALIVE, 426, "Upgrade Required"),
        )
    )
    assert ok
    assert "does not accept a WebSocket handshake over HTTP/1.0 (426 Upgrade Required)" in findings


def test_a_server_failing_only_firefox_is_told_about_token_lists() -> None:
    ok, findings = text(outcomes(firefox=answered(FIREFOX, 400, "Bad Request")))
    assert ok
    assert "refuses Firefox's handshake" in findings
    assert "400 Bad Request" in findings
    assert "HTTP/1.0" not in findings


def test_a_server_failing_when_deflate_is_offered() -> None:
    ok, findings = text(outcomes(deflate=closed(DEFLATE, "close frame")))
    assert ok
    assert "permessage-deflate is offered" in findings


def test_every_form_closed_after_101_is_the_chain_through_an_http10_proxy() -> None:
    result = [closed(v) for v in VARIANTS]
    result[0].headers = (("Server", "nginx/1.22.1"),)
    ok, findings = text(result)
    assert not ok
    assert "every handshake got 101 and the connection was dropped" in findings
    assert "through Server: nginx/1.22.1" in findings
    assert "Probe the backend directly" in findings


def test_a_200_instead_of_101() -> None:
    ok, findings = text(outcomes(standard=answered(STANDARD, 200, "OK")))
    assert not ok
    assert "got 200 OK instead of 101" in findings


def test_a_wrong_accept() -> None:
    bad = held(STANDARD)
    bad.problems = ["a wrong Sec-WebSocket-Accept 'AAAA'"]
    ok, findings = text(outcomes(standard=bad))
    assert not ok
    assert "not a valid WebSocket handshake response" in findings
    assert "Sec-WebSocket-Accept must be" in findings


def test_no_answer_at_all() -> None:
    silent = Outcome(STANDARD, error="no response within 5s")
    ok, findings = text(outcomes(standard=silent))
    assert not ok
    assert "no usable answer: no response within 5s" in findings


def test_unanswered_pings_and_body_headers_in_101_are_noted() -> None:
    result = outcomes()
    for outcome in result:
        outcome.pong_ms = None
    result[1].body_headers = ["Content-Length"]
    ok, findings = text(result)
    assert ok
    assert "no ping was answered" in findings
    assert "the 101 carries Content-Length" in findings


# --- what the review found: nothing explained away, nothing blamed wrongly ----------------


def test_http10_dropped_with_keep_alive_refused_is_still_a_finding_and_no_all_clear() -> None:
    ok, findings = text(
        outcomes(http10=closed(HTTP10), http10_ka=answered(HTTP10_KEEP_ALIVE, 400, "Bad Request"))
    )
    assert ok
    assert "HTTP/1.0 handshakes fail while HTTP/1.1 holds" in findings
    assert "400 Bad Request" in findings
    assert "every form held" not in findings


def test_refusals_for_load_are_not_blamed_on_the_form() -> None:
    ok, findings = text(
        outcomes(
            firefox=answered(FIREFOX, 429, "Too Many Requests"),
            http10=answered(HTTP10, 429, "Too Many Requests"),
            http10_ka=answered(HTTP10_KEEP_ALIVE, 429, "Too Many Requests"),
        )
    )
    assert ok
    assert "3 of the probe's 5 concurrent handshakes got 429 Too Many Requests" in findings
    assert "Firefox" not in findings
    assert "HTTP/1.0" not in findings
    assert "every form held" not in findings


def test_a_protocol_error_is_named_not_called_held() -> None:
    bad = held(STANDARD)
    bad.protocol_error = "reserved opcode 0x3"
    ok, findings = text(outcomes(standard=bad))
    assert not ok
    assert "frames that break RFC 6455 (reserved opcode 0x3)" in findings
    assert "101, held" not in findings


def test_a_close_frame_is_the_application_not_a_keep_alive_rule() -> None:
    result = [closed(v, "close frame", after=1900) for v in VARIANTS]
    for outcome in result:
        outcome.close_code, outcome.close_reason = 4401, "unauthorized"
    ok, findings = text(result)
    assert not ok
    assert "closed the session on purpose (server close 4401 'unauthorized'" in findings
    assert "Swoole" not in findings


def test_every_http11_form_dropped_and_http10_refused_is_not_the_http10_chain() -> None:
    result = [
        closed(STANDARD),
        closed(DEFLATE),
        closed(FIREFOX),
        answered(HTTP10, 400, "Bad Request"),
        answered(HTTP10_KEEP_ALIVE, 400, "Bad Request"),
    ]
    ok, findings = text(result)
    assert not ok
    assert "every handshake got 101" not in findings
    assert "did not hold" in findings
    assert "these forms failed too" in findings


def test_a_late_close_without_a_frame_is_not_the_keep_alive_close() -> None:
    ok, findings = text([closed(v, after=1900) for v in VARIANTS])
    assert not ok
    assert "Swoole" not in findings
    assert "server FIN after 1900 ms" in findings


def test_firefox_failing_for_another_reason_is_said_as_it_was() -> None:
    ok, findings = text(outcomes(firefox=closed(FIREFOX, "close frame", after=500)))
    assert ok
    assert "Firefox's handshake, Connection: keep-alive, Upgrade, failed" in findings
    assert "as a whole" not in findings
