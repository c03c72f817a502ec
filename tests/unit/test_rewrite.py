"""wsproxy.rewrite: the pure part of per-route rewrites."""

from __future__ import annotations

import pytest

from wsproxy.config import HeaderEdits, Rewrite
from wsproxy.rewrite import RawResponseEdits, request_headers, response_headers, strip_prefix


@pytest.mark.parametrize(
    ("prefix", "target", "stripped"),
    [
        ("/api", "/api/users?x=1", "/users?x=1"),
        ("/api/", "/api/users", "/users"),
        ("/api", "/api", "/"),
        ("/api", "/api?x", "/?x"),
        ("/api/", "/api/", "/"),
        ("/a/b", "/a/b/c/d", "/c/d"),
        ("/api", "/apix", None),
        ("/api", "/api;x", None),
        ("/api", "//api/users", None),  # matched only through the lenient reading
        ("/api", "/api%2Fusers", None),
    ],
)
def test_strip_prefix(prefix: str, target: str, stripped: str | None) -> None:
    assert strip_prefix(prefix, target) == stripped


def test_request_headers_set_remove_and_host() -> None:
    rewrite = Rewrite(
        host="app.internal",
        request_headers=HeaderEdits((("X-Env", "prod"),), frozenset({"cookie"})),
    )
    headers = [
        ("Host", "example.org"),
        ("Cookie", "a=1"),
        ("x-env", "client's"),
        ("Accept", "*/*"),
        ("X-Forwarded-Host", "example.org"),
    ]
    assert request_headers(headers, rewrite) == [
        ("Host", "app.internal"),
        ("Accept", "*/*"),
        ("X-Forwarded-Host", "example.org"),
        ("X-Env", "prod"),
    ]


def test_response_edits_text_and_raw_agree() -> None:
    edits = HeaderEdits((("X-Frame-Options", "DENY"),), frozenset({"server"}))
    text = [("Server", "gunicorn"), ("x-frame-options", "SAMEORIGIN"), ("Content-Type", "t")]
    assert response_headers(text, edits) == [("Content-Type", "t"), ("X-Frame-Options", "DENY")]
    raw = RawResponseEdits(edits)
    fields = [(n.encode(), v.encode()) for n, v in text]
    assert raw.without(fields) == [(b"Content-Type", b"t")]
    assert raw.without([(b"Content-Type", b"t")]) is None
    assert raw.lines == b"X-Frame-Options: DENY\r\n"


def test_underscore_twins_of_rewritten_names_are_dropped() -> None:
    # With proxy.allow_underscore_headers, X_User would reach a CGI, PHP or
    # WSGI backend as the same variable as the X-User the operator sets.
    rewrite = Rewrite(
        request_headers=HeaderEdits((("X-User", "operator"),), frozenset({"x-secret"}))
    )
    headers = [("X_User", "evil"), ("x_secret", "s"), ("X_Other", "kept")]
    assert request_headers(headers, rewrite) == [("X_Other", "kept"), ("X-User", "operator")]
