"""Access log lines on stdout: one per HTTP request, one per WebSocket session.

``access_log.format``: ``json`` (default; one JSON object per line, for log
shippers), ``text`` (``key=value`` pairs for people), or ``off``.  Lines are
flushed within ``FLUSH_DELAY`` of being written (and at shutdown), so a
container's log follows traffic closely without a write system call per
request, which cost about a tenth of the plain-HTTP throughput.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import TextIO

from wsproxy.config import AccessLogSettings


def timestamp(now: float) -> str:
    """RFC 3339 UTC with milliseconds."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
    return f"{seconds}.{int(now * 1000) % 1000:03d}Z"


#: One encoder for every line: ``json.dumps`` with non-default arguments builds a
#: new encoder per call, which cost more than encoding a line.
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)


def format_json(fields: dict[str, object]) -> str:
    return _JSON.encode(fields)


def format_text(fields: dict[str, object]) -> str:
    parts = []
    for name, value in fields.items():
        if value is None:
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if not text or any(c.isspace() or c in '"=' for c in text):
            text = json.dumps(text, ensure_ascii=False)
        parts.append(f"{name}={text}")
    return " ".join(parts)


#: Longest a written line waits in the buffer before it is flushed.
FLUSH_DELAY = 0.1


class AccessLog:
    __slots__ = ("_flush_handle", "_format", "_stream")

    def __init__(self, settings: AccessLogSettings, stream: TextIO | None = None) -> None:
        self._format = settings.format
        self._stream = stream
        self._flush_handle: asyncio.TimerHandle | None = None

    @property
    def enabled(self) -> bool:
        return self._format != "off"

    def write(self, fields: dict[str, object]) -> None:
        if self._format == "off":
            return
        entry: dict[str, object] = {"ts": timestamp(time.time()), **fields}
        line = format_json(entry) if self._format == "json" else format_text(entry)
        stream = self._stream or sys.stdout
        stream.write(line + "\n")
        if self._flush_handle is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop: nothing will flush later
                stream.flush()
                return
            self._flush_handle = loop.call_later(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        (self._stream or sys.stdout).flush()
