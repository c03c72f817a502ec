"""The request target, normalized once: what routing matches and the upstream receives.

Theory of operation
-------------------
A route is a promise about which backend sees which paths: with only
``path_prefix: /public``, no request may make the ``static`` backend serve
``/admin/secret.txt``.  Backends resolve dot segments themselves, so a proxy
that routes on the raw target (``/public/../admin/secret.txt``) and forwards
it unchanged breaks that promise.  Like nginx, wsproxy routes on the path after
RFC 3986 normalization and forwards that normalized path, so what it matched
is exactly what the backend gets:

1. Percent-escapes of unreserved characters are decoded (§6.2.2.2; ``%2e`` is
   ``.``, ``%41`` is ``A``) and every other escape is written in upper case
   (§6.2.2.1).  A ``%`` not followed by two hex digits is a ``400``.
2. Dot segments are removed (§5.2.4, ``remove_dot_segments``).  A path whose
   ``..`` would climb above the root is a ``400``, not silently clamped.
3. What RFC 3986 cannot see but backends do is refused with ``400``: a ``.`` or
   ``..`` segment bounded by an encoded slash or backslash (``..%2f``,
   ``%2f..%2f``, ``%5c..``) or a raw backslash (``..\\``), which a backend that
   decodes ``%2F`` or treats ``\\`` as ``/`` (IIS, some static servers) would
   resolve; a dot segment with a path parameter (``..;x``, ``..%3Bx``), which
   Tomcat and Jetty resolve as ``..``; and an encoded NUL (``%00``), where a backend
   written in C may end the path (``..%00`` would become ``..``).
4. The query is not touched; a fragment (``#``) has no place in a request
   target (RFC 9112 §3.2) and is a ``400``.

Routes match ``route_path``, which reads the path the way the most lenient
backend would split it: encoded slashes and backslashes and raw backslashes
as ``/``, ``%3B`` as ``;``, repeated slashes merged (nginx decodes ``%2F`` and
merges slashes before matching locations too).  So ``/admin%2Fsecret`` and
``//admin/secret`` match an ``/admin`` route rather than slipping to a
catch-all one behind which a backend would serve ``/admin/secret``; the
forwarded path keeps its spelling.

This module is pure: no I/O, no asyncio.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from urllib.parse import quote

#: RFC 3986 §2.3.
UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_HEX = frozenset(string.hexdigits)
#: Separators a backend may honour inside a segment: RFC 3986's own, its
#: percent-encoded form, and the backslash (raw or encoded).
_SEPARATORS = re.compile(r"(/|%2F|%5C|\\)")
_DOT_SEGMENTS = frozenset({".", ".."})
#: Where a path parameter starts, raw or encoded (``..;x``, ``..%3Bx``).
_PARAMETER = re.compile(r";|%3B")
_REPEATED_SLASHES = re.compile(r"/{2,}")
#: What some backends read as a separator although RFC 3986 does not.
_LENIENT_SEPARATORS = re.compile(r"%2F|%5C|\\|%3B")
#: Characters allowed unencoded in a path (RFC 3986 pchar and "/"), plus "%".
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"


class BadTarget(ValueError):
    """The request target cannot be routed safely; the client gets ``status``."""

    status = 400


@dataclass(frozen=True, slots=True)
class Target:
    """A request target after normalization."""

    path: str  # normalized, forwarded upstream ("*" for OPTIONS *)
    query: str | None  # after "?", exactly as received; None without "?"

    @property
    def origin_form(self) -> str:
        """What the request line sent upstream carries (RFC 9112 §3.2.1)."""
        return self.path if self.query is None else f"{self.path}?{self.query}"

    @property
    def route_path(self) -> str:
        """The path routes are matched against, segments split the way the most
        lenient backend splits them: encoded and raw backslashes and encoded
        slashes read as ``/``, ``%3B`` as ``;``, repeated slashes merged."""
        path = self.path
        if "%" in path or "\\" in path:
            path = _LENIENT_SEPARATORS.sub(lambda m: ";" if m[0] == "%3B" else "/", path)
        return _REPEATED_SLASHES.sub("/", path) if "//" in path else path


def parse_target(raw: str) -> Target:
    """Normalize a request target (origin, absolute or asterisk form).

    Raises :class:`BadTarget` with a reason a client may read.
    """
    if raw == "*":
        return Target("*", None)
    if "#" in raw:
        raise BadTarget("request target with a fragment ('#')")
    if not raw.startswith("/"):
        raw = _strip_absolute_form(raw)
    path, question, query = raw.partition("?")
    return Target(normalize_path(path), query if question else None)


def _strip_absolute_form(raw: str) -> str:
    """``http://host/p?q`` -> ``/p?q`` (RFC 9112 §3.2.2; the authority is Host's job)."""
    scheme, sep, rest = raw.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise BadTarget("request target is neither a path nor an http(s) URL")
    start = min((i for i in (rest.find("/"), rest.find("?")) if i != -1), default=len(rest))
    rest = rest[start:]
    return rest if rest.startswith("/") else "/" + rest


def normalize_path(path: str) -> str:
    """Steps 1-3 of the module docstring for an absolute path."""
    if not path.startswith("/"):
        raise BadTarget("path does not start with '/'")
    if "%" not in path and "\\" not in path and "/." not in path:
        return path  # nothing to decode, no dot segment: the common case
    if "%" in path:
        path = _normalize_escapes(path)
    if "\\" in path or "%2F" in path or "%5C" in path or ";" in path or "%3B" in path:
        _refuse_hidden_dot_segments(path)
    return _remove_dot_segments(path)


def _normalize_escapes(path: str) -> str:
    parts = path.split("%")
    out = [parts[0]]
    for part in parts[1:]:
        code = part[:2]
        if len(code) < 2 or not (code[0] in _HEX and code[1] in _HEX):
            raise BadTarget("malformed percent-escape in the path")
        char = chr(int(code, 16))
        if char == "\0":
            raise BadTarget("encoded NUL ('%00') in the path")
        out.append(char if char in UNRESERVED else "%" + code.upper())
        out.append(part[2:])
    return "".join(out)


def _refuse_hidden_dot_segments(path: str) -> None:
    pieces = _SEPARATORS.split(path)
    # pieces alternate: segment, separator, segment, ..., segment
    for index in range(0, len(pieces), 2):
        segment = pieces[index]
        name = _PARAMETER.split(segment, 1)[0]
        if name not in _DOT_SEGMENTS:
            continue
        if name != segment:
            raise BadTarget("dot segment with a path parameter ('..;')")
        before = pieces[index - 1] if index else "/"
        after = pieces[index + 1] if index + 1 < len(pieces) else "/"
        if before != "/" or after != "/":
            raise BadTarget("encoded slash or backslash next to a dot segment")


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 on an absolute path, refusing to climb above the root."""
    segments = path[1:].split("/")
    out: list[str] = []
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment == "..":
            if not out:
                raise BadTarget("path climbs above the root ('..')")
            out.pop()
        elif segment != ".":
            out.append(segment)
            continue
        if index == last:
            out.append("")  # "/a/." and "/a/b/.." end in "/"
    return "/" + "/".join(out)


def normalize_prefix(text: str) -> str:
    """A configured ``path_prefix`` in the same normal form as request paths.

    Characters a client would have to percent-encode (non-ASCII) are encoded
    as UTF-8, so ``/café`` matches the ``/caf%C3%A9`` a browser sends.  Dot
    segments and empty segments are refused: a normalized request path never
    contains them, so such a prefix could never match.  Raises
    :class:`BadTarget`.
    """
    path = quote(text, safe=_PATH_SAFE)
    if not path.startswith("/"):
        raise BadTarget("path does not start with '/'")
    if "%" in path:
        path = _normalize_escapes(path)
    if any(segment.split(";", 1)[0] in _DOT_SEGMENTS for segment in path.split("/")):
        raise BadTarget("a path_prefix cannot contain '.' or '..' segments")
    if "//" in path:
        raise BadTarget("a path_prefix cannot contain an empty segment ('//')")
    return path
