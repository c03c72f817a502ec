"""Request-target normalization (wsproxy.target): pure, no sockets.

Besides examples, one property is checked against a model of a lenient
backend (it decodes every escape, treats a backslash as a slash, merges
slashes, resolves dot segments, honours Tomcat's ``..;`` and ends the path at
a NUL): whatever path wsproxy accepts and routes to a prefix, that backend
resolves to a path under the same prefix.  The property is what routes
promise; the examples are the spellings found by black-box testing.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsproxy.routing import path_matches
from wsproxy.target import BadTarget, Target, normalize_prefix, parse_target


@pytest.mark.parametrize(
    ("raw", "path", "query"),
    [
        ("/", "/", None),
        ("/a/b?x=1", "/a/b", "x=1"),
        ("/a?", "/a", ""),
        ("/public/../admin/secret.txt", "/admin/secret.txt", None),
        ("/public/%2e%2e/admin", "/admin", None),
        ("/public/.%2E/admin", "/admin", None),
        ("/public/%2E./admin", "/admin", None),
        ("/a/./b/.", "/a/b/", None),
        ("/a/b/..", "/a/", None),
        ("/a/%2e", "/a/", None),
        ("/a//b/../c", "/a//c", None),
        ("/%7Euser/%41%62c", "/~user/Abc", None),  # unreserved escapes decoded
        ("/x%2fy/%c3%a9", "/x%2Fy/%C3%A9", None),  # others upper-cased, kept
        ("/a;x=1/b", "/a;x=1/b", None),
        ("/a/..%252f", "/a/..%252f", None),  # double encoding is a literal
        ("/q?a=../../etc&b=%2e%2e", "/q", "a=../../etc&b=%2e%2e"),  # query untouched
        ("http://example.com/p/../q?z", "/q", "z"),
        ("HTTPS://example.com", "/", None),
        ("http://example.com?x", "/", "x"),
        ("*", "*", None),
    ],
)
def test_targets_are_normalized(raw: str, path: str, query: str | None) -> None:
    assert parse_target(raw) == Target(path, query)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("/..", "climbs above the root"),
        ("/a/../../b", "climbs above the root"),
        ("/%2e%2e/etc/passwd", "climbs above the root"),
        ("/public/..%2fadmin", "encoded slash or backslash"),
        ("/public/..%2Fadmin", "encoded slash or backslash"),
        ("/public%2f..%2fadmin", "encoded slash or backslash"),
        ("/public/%2e%2e%2fadmin", "encoded slash or backslash"),
        ("/public/.%2e%5cadmin", "encoded slash or backslash"),
        ("/public/..\\admin", "encoded slash or backslash"),
        ("/public\\..\\admin", "encoded slash or backslash"),
        ("/public/x/%5C..", "encoded slash or backslash"),
        ("/public/.%2fx", "encoded slash or backslash"),
        ("/public/..;/admin", "path parameter"),
        ("/public/.;x/y", "path parameter"),
        ("/public/%2e%2e;jsessionid=1/admin", "path parameter"),
        ("/public/..%3Bx/admin", "path parameter"),
        ("/public/..%3b", "path parameter"),
        ("/public/..%00/admin", "NUL"),
        ("/a%", "percent-escape"),
        ("/a%2", "percent-escape"),
        ("/a%zz", "percent-escape"),
        ("/a#frag", "fragment"),
        ("ftp://host/a", "neither a path"),
        ("a/b", "neither a path"),
    ],
)
def test_unsafe_targets_are_refused(raw: str, reason: str) -> None:
    with pytest.raises(BadTarget, match=re.escape(reason)) as caught:
        parse_target(raw)
    assert caught.value.status == 400


def test_route_path_merges_slashes_and_the_forwarded_path_keeps_them() -> None:
    target = parse_target("//public///x?q")
    assert target.route_path == "/public/x"
    assert target.origin_form == "//public///x?q"


@pytest.mark.parametrize(
    ("raw", "route_path", "forwarded"),
    [
        ("/admin%2fsecret", "/admin/secret", "/admin%2Fsecret"),
        ("/admin%5Csecret", "/admin/secret", "/admin%5Csecret"),
        ("/admin\\secret", "/admin/secret", "/admin\\secret"),
        ("/admin%3bx/y", "/admin;x/y", "/admin%3Bx/y"),
        ("/%2F%2Fadmin", "/admin", "/%2F%2Fadmin"),
    ],
)
def test_route_path_reads_separators_as_lenient_backends_do(
    raw: str, route_path: str, forwarded: str
) -> None:
    target = parse_target(raw)
    assert (target.route_path, target.path) == (route_path, forwarded)


def test_the_common_case_returns_the_same_string() -> None:
    raw = "/api/v1/items/42"
    assert parse_target(raw).path is raw


@pytest.mark.parametrize(
    ("prefix", "normalized"),
    [("/", "/"), ("/api", "/api"), ("/api/", "/api/"), ("/café", "/caf%C3%A9"), ("/a%62", "/ab")],
)
def test_prefixes_take_the_normal_form_of_request_paths(prefix: str, normalized: str) -> None:
    assert normalize_prefix(prefix) == normalized


@pytest.mark.parametrize("prefix", ["/a/../b", "/a/.", "/%2e%2e", "/a//b", "/a%zz", "/..;x"])
def test_prefixes_that_could_never_match_are_refused(prefix: str) -> None:
    with pytest.raises(BadTarget):
        normalize_prefix(prefix)


# --- the property --------------------------------------------------------------

PREFIX = "/public"
TOKENS = [
    "/", "//", "\\", "%2f", "%2F", "%5c", "%5C", ".", "..", "%2e", "%2E", "%2e%2e",
    ".%2e", ";", ";x=1", "%3b", "%3B", "%00", "%252e", "%41", "a", "public", "admin", "%25",
    "?", "?a=..", "%2e%2e%2f", "..\\", "%3f",
]  # fmt: skip


def lenient_backend(path: str) -> str:
    """How a forgiving backend resolves a path it received."""
    decoded = unquote(path).split("\0", 1)[0].replace("\\", "/")
    out: list[str] = []
    for segment in re.sub("/+", "/", decoded).split("/")[1:]:
        name = segment.split(";", 1)[0]
        if name == "..":
            if out:
                out.pop()
        elif name != ".":
            out.append(segment)
    return "/" + "/".join(out)


@settings(max_examples=3000)
@given(st.lists(st.sampled_from(TOKENS), max_size=12))
def test_a_routed_path_stays_under_its_prefix_on_a_lenient_backend(tokens: list[str]) -> None:
    raw = PREFIX + "/" + "".join(tokens)
    try:
        target = parse_target(raw)
    except BadTarget:
        return
    assert not re.search(r"(^|/)\.\.?(/|$)", target.path)  # no dot segment forwarded
    assert parse_target(target.path).path == target.path  # idempotent
    if not path_matches(PREFIX, target.route_path):
        return
    seen = lenient_backend(target.path)
    # Path parameters are not part of the name a backend resolves ("/public;"
    # is "/public" with an empty parameter to Tomcat).
    names = re.sub(r";[^/]*", "", seen)
    assert names == PREFIX or names.startswith(PREFIX + "/"), (raw, target.path, seen)


@settings(max_examples=3000)
@given(st.lists(st.sampled_from(TOKENS), max_size=12))
def test_what_a_lenient_backend_serves_under_a_prefix_was_routed_to_it(tokens: list[str]) -> None:
    """The other direction: no spelling reaches ``/admin/...`` on the backend
    through a catch-all route while an ``/admin`` route exists."""
    raw = "/" + "".join(tokens)
    try:
        target = parse_target(raw)
    except BadTarget:
        return
    seen = lenient_backend(target.path)
    if seen == "/admin" or seen.startswith("/admin/"):
        assert path_matches("/admin", target.route_path), (raw, target.path, seen)
