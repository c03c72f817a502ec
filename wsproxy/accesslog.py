"""Access log lines on stdout: one per HTTP request, one per WebSocket session.

``access_log.format``: ``json`` (default; one JSON object per line, for log
shippers), ``text`` (``key=value`` pairs for people), or ``off``.  Lines are
kept in a list and written together within ``FLUSH_DELAY`` (at most
``MAX_PENDING_LINES`` wait; all are written at shutdown), so a container's
log follows traffic closely without a write per request: a system call per
line cost about a tenth of the plain-HTTP throughput, and a buffered
stream's ``write`` per line still a few percent.

With several workers (``workers``) every line carries ``"worker": N`` and
the lines go out in writes of whole lines of at most ``PIPE_BUF`` bytes: the
workers share one stdout, and a pipe keeps such writes whole, so lines from
different processes never interleave mid-line (a line longer than
``PIPE_BUF``, 4 KiB, goes alone and could).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import re
import select
import sys
import time
import weakref
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, TextIO

from wsproxy.config import AccessLogSettings

if TYPE_CHECKING:
    from wsproxy.observe import Exchange
    from wsproxy.sessions import SessionReport

log = logging.getLogger("wsproxy")


class _Stamp:
    """The last timestamp formatted, and the millisecond it is right for."""

    __slots__ = ("second", "second_text", "since", "text", "until")

    def __init__(self) -> None:
        self.second = -1
        self.second_text = ""
        self.since = self.until = 0.0
        self.text = ""


_STAMP = _Stamp()


def timestamp(now: float) -> str:
    """RFC 3339 UTC with milliseconds (formatted once a millisecond: under load
    many lines share one)."""
    stamp = _STAMP
    if stamp.since <= now < stamp.until:
        return stamp.text
    milli = int(now * 1000)
    second = milli // 1000
    if stamp.second != second:
        stamp.second = second
        stamp.second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    stamp.text = f"{stamp.second_text}.{milli % 1000:03d}Z"
    stamp.since = milli / 1000
    stamp.until = (milli + 1) / 1000
    return stamp.text


#: One encoder for every line: ``json.dumps`` with non-default arguments builds a
#: new encoder per call, which cost more than encoding a line.
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)


def format_json(fields: dict[str, object]) -> str:
    return _JSON.encode(fields)


#: What makes a text value need quotes: whitespace (str.isspace's, the same
#: set), a quote or an equals sign.  One search instead of a test per character.
_NEEDS_QUOTES = re.compile(r'[\s"=]')


def format_text(fields: dict[str, object]) -> str:
    parts = []
    for name, value in fields.items():
        if value is None:
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if not text or _NEEDS_QUOTES.search(text):
            text = json.dumps(text, ensure_ascii=False)
        parts.append(f"{name}={text}")
    return " ".join(parts)


#: Longest a line waits before it is written and flushed.
FLUSH_DELAY = 0.1
#: Lines kept before they are written, whatever the delay.
MAX_PENDING_LINES = 256
#: Encoded field groups kept (AccessLog._fields); the table starts over when full.
_FIELDS_KEPT = 4096
#: Longest path whose group is kept: the table stays a few MB whatever clients send.
_FIELDS_KEPT_PATH = 512


#: Every access log with lines that may still wait: written at exit, so a line
#: logged as the event loop ends (a session closed during shutdown) is not lost.
_OPEN_LOGS: weakref.WeakSet[AccessLog] = weakref.WeakSet()


#: How long a worker waits for a full, non-blocking stdout to take a line
#: (once: after a wait in vain it drops lines until a write goes through).
_WRITABLE_WAIT = 1.0


class _SharedOut:
    """Writes of whole lines to a stdout that several workers share.

    A stdout is non-blocking when someone made it so (a shared pipe's other
    user, say).  When it is full the worker waits once, at most
    ``_WRITABLE_WAIT``; after a wait in vain it stops waiting (the event
    loop must not stall on every flush) and drops lines until a write goes
    through again.  A write cut short leaves half a line out there: the next
    write starts with a newline, so another worker's line is not glued to it.
    """

    __slots__ = ("broken", "waiting")

    def __init__(self) -> None:
        self.waiting = True
        self.broken = False

    def write(self, fd: int, data: bytes) -> int:
        """Write ``data`` (whole lines); return how many of its lines were
        lost (0 when all went out)."""
        prefix = b"\n" if self.broken else b""
        out = prefix + data
        view = memoryview(out)
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                if self.waiting:
                    _ready, writable, _failed = select.select([], [fd], [], _WRITABLE_WAIT)
                    if writable:
                        continue
                self.waiting = False
                written = len(out) - len(view)
                if written:  # part went out: does it end inside a line?
                    self.broken = out[written - 1] != 0x0A
                sent = out.count(b"\n", len(prefix), written) if written > len(prefix) else 0
                return data.count(b"\n") - sent
        self.waiting = True
        self.broken = False
        return 0


@atexit.register
def _flush_at_exit() -> None:
    for access_log in list(_OPEN_LOGS):
        with contextlib.suppress(Exception):  # a closed stream: nothing to save
            access_log.flush()


class AccessLog:
    __slots__ = (
        "__weakref__",
        "_fields",
        "_flush_handle",
        "_flush_loop",
        "_format",
        "_out",
        "_pending",
        "_stream",
        "_warned",
        "_worker",
        "_worker_json",
        "lines_lost",
    )

    def __init__(
        self, settings: AccessLogSettings, stream: TextIO | None = None, worker: int | None = None
    ) -> None:
        self._format = settings.format
        self._stream = stream
        #: This process's worker number (workers > 1), written in each line.
        self._worker = worker
        self._worker_json = "" if worker is None else f',"worker":{worker}'
        #: How a worker writes to the stdout it shares (None: one process).
        self._out = None if worker is None else _SharedOut()
        self._flush_handle: asyncio.TimerHandle | None = None
        #: The loop the flush timer runs on (it never runs once that loop closed).
        self._flush_loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[str] = []
        #: Lines dropped because the stream could not take them (_lost).
        self.lines_lost = 0
        self._warned = False
        #: The JSON of a line's fields from ``route`` to ``version``, by their
        #: values: on a kept-alive connection most lines repeat them.
        self._fields: dict[tuple[str | None, ...], str] = {}
        _OPEN_LOGS.add(self)

    def reconfigure(self, settings: AccessLogSettings) -> None:
        """A reload's settings: the format of the lines from now on."""
        self._format = settings.format
        self._fields.clear()

    @property
    def enabled(self) -> bool:
        return self._format != "off"

    def write(self, fields: dict[str, object]) -> None:
        if self._format == "off":
            return
        if self._format == "json":
            # The timestamp goes in front without copying the fields.
            body = _JSON.encode(fields)
            line = f'{{"ts":"{timestamp(time.time())}"{self._worker_json}' + (
                "," + body[1:] if fields else "}"
            )
        elif self._worker is None:
            line = format_text({"ts": timestamp(time.time()), **fields})
        else:
            line = format_text({"ts": timestamp(time.time()), "worker": self._worker, **fields})
        self._emit(line)

    def _emit(self, line: str) -> None:
        pending = self._pending
        pending.append(line)
        if len(pending) >= MAX_PENDING_LINES:
            self._write_pending()
        if self._flush_handle is not None:
            loop = self._flush_loop
            if loop is None or not loop.is_closed():
                return  # the timer writes this line
            self._flush_handle = None  # its loop ended before it ran
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop: nothing will flush later
            self.flush()
            return
        self._flush_handle = loop.call_later(FLUSH_DELAY, self.flush)
        self._flush_loop = loop

    def _write_pending(self) -> None:
        lines, self._pending = self._pending, []
        if not lines:
            return
        if self._out is not None:
            self._write_whole_lines(lines)
            return
        lines.append("")
        try:
            (self._stream or sys.stdout).write("\n".join(lines))
        except (OSError, ValueError) as exc:  # a closed or broken stdout
            self._lost(len(lines) - 1, exc)

    def _write_whole_lines(self, lines: list[str]) -> None:
        """Several workers share stdout: writes of whole lines, each at most
        PIPE_BUF bytes when it can be (a longer line goes alone), which a
        pipe takes whole or not at all."""
        assert self._out is not None
        stream = self._stream or sys.stdout
        try:
            stream.flush()  # whatever the stream holds goes first
            fd = stream.fileno()
        except (OSError, ValueError) as exc:
            self._lost(len(lines), exc)
            return
        chunks: list[bytes] = []
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            data = line.encode() + b"\n"
            if chunk and size + len(data) > select.PIPE_BUF:
                chunks.append(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(data)
            size += len(data)
        if chunk:
            chunks.append(b"".join(chunk))
        for index, data in enumerate(chunks):
            try:
                lost = self._out.write(fd, data)
            except OSError as exc:  # a closed or broken stdout
                self._lost(sum(c.count(b"\n") for c in chunks[index:]), exc)
                return
            if lost:
                self._lost(lost, BlockingIOError(f"stdout stayed full for {_WRITABLE_WAIT:g}s"))

    def _lost(self, count: int, exc: Exception) -> None:
        """Lines that could not be written: traffic goes on, one warning says so."""
        self.lines_lost += count
        if not self._warned:
            self._warned = True
            log.warning(
                "access log lines cannot be written (%s); lines are dropped while this lasts "
                "(said once)",
                exc,
            )

    def write_http(self, exchange: Exchange, status: int, duration: float) -> None:
        """One plain-HTTP request's line (``duration`` in seconds): JSON from a
        prepared template, no dict."""
        if self._format != "json":
            duration_ms = round(duration * 1000, 3)
            self.write(
                {
                    "type": "http",
                    "request_id": exchange.request_id,
                    "route": exchange.route,
                    "client": exchange.client,
                    "upstream": exchange.server,
                    "method": exchange.method,
                    "path": exchange.path,
                    "version": exchange.version,
                    "status": status,
                    "duration_ms": duration_ms,
                    **(exchange.extra or {}),
                    **(
                        {"bytes_to_client": exchange.bytes_to_client}
                        if exchange.bytes_to_client
                        else {}
                    ),
                }
            )
            return
        route, client, server = exchange.route, exchange.client, exchange.server
        method, path, version = exchange.method, exchange.path, exchange.version
        key = (route, client, server, method, path, version)
        fields = self._fields.get(key)
        if fields is None:
            q = encode_basestring  # C; None only where a request was never parsed or routed
            fields = (
                f'"route":{q(route)},"client":{q(client)},'
                f'"upstream":{"null" if server is None else q(server)},'
                f'"method":{"null" if method is None else q(method)},'
                f'"path":{"null" if path is None else q(path)},'
                f'"version":{"null" if version is None else q(version)}'
            )
            if path is None or len(path) <= _FIELDS_KEPT_PATH:  # long ones: not kept
                if len(self._fields) >= _FIELDS_KEPT:
                    self._fields.clear()
                self._fields[key] = fields
        ts = timestamp(time.time())
        wj = self._worker_json
        # A request ID is ours (hex) or a client's that matched
        # headers.REQUEST_ID, whose characters JSON takes as they are.
        line = (
            f'{{"ts":"{ts}"{wj},"type":"http","request_id":"{exchange.request_id}",{fields},'
            f'"status":{status},"duration_ms":{duration * 1000:.3f}'
        )
        extra = exchange.extra
        if extra:
            line += "," + _JSON.encode(extra)[1:-1]
        if exchange.bytes_to_client:
            line += f',"bytes_to_client":{exchange.bytes_to_client}'
        self._emit(line + "}")

    def write_session(self, report: SessionReport) -> None:
        """One WebSocket session's line: in JSON, written straight from the
        report (the same text as ``write(report.fields())``, without the dict
        and the encoder's set-up, which cost more than the encoding)."""
        if self._format != "json":
            if self._format != "off":
                self.write(report.fields())
            return
        q = encode_basestring  # C
        info = report.info
        c2u, u2c = report.client_to_upstream, report.upstream_to_client
        e1, e2 = c2u.error, u2c.error
        line = (
            f'{{"ts":"{timestamp(time.time())}"{self._worker_json},"type":"websocket",'
            f'"request_id":{q(info.request_id)},"route":{q(info.route)},'
            f'"client":{q(info.client)},"upstream":{q(info.server)},"path":{q(info.path)},'
            f'"status":101,"duration_ms":{round(report.duration * 1000, 3)!r},'
            f'"closed_by":{q(report.closed_by)},"how":{q(report.how)},'
            f'"code":{q(report.code)},"close_reason":{q(report.close_reason)},'
            f'"close_frame":{"true" if report.close_frame_seen else "false"},'
            f'"early":{"true" if report.early else "false"},'
            f'"bytes_client_to_upstream":{c2u.bytes},"bytes_upstream_to_client":{u2c.bytes},'
            f'"frames_client_to_upstream":{c2u.frames},"frames_upstream_to_client":{u2c.frames},'
            f'"messages_client_to_upstream":{c2u.messages},'
            f'"messages_upstream_to_client":{u2c.messages},'
            f'"protocol_error_client_to_upstream":{"null" if e1 is None else q(e1)},'
            f'"protocol_error_upstream_to_client":{"null" if e2 is None else q(e2)},'
            f'"upstream_request":'
            f"{q(f'{info.upstream_version} Connection: {info.upstream_connection}')}}}"
        )
        self._emit(line)

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._write_pending()
        try:
            (self._stream or sys.stdout).flush()
        except (OSError, ValueError) as exc:
            self._lost(0, exc)
