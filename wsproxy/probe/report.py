"""The probe's results as a table a person reads, or as JSON."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from typing import Any

from wsproxy.probe.model import Diagnosis, Outcome, Target, format_ms

#: Where the diagnosis wraps.
WIDTH = 100
_CODE = re.compile(r"`[^`]*`")
_KEEP = "\x00"


def describe(outcome: Outcome) -> str:
    return outcome.variant.label


def _row(outcome: Outcome) -> list[str]:
    if outcome.error is not None:
        return [describe(outcome), "-", "-", "-", "-", outcome.error, "-"]
    status = f"{outcome.status}"
    accept = "-"
    if outcome.switched:
        accept = "wrong" if outcome.accept_wrong else "ok"
        if outcome.problems and accept == "ok":
            accept = "bad 101"
        if outcome.body_headers:
            status += " +" + ",".join(h.lower() for h in outcome.body_headers)
    held = "yes" if outcome.survived else "no" if outcome.switched else "-"
    closed = outcome.closing() if outcome.switched else f"{outcome.reason}".strip() or "-"
    if outcome.protocol_error:
        closed = f"protocol error: {outcome.protocol_error}"
    ping = (
        format_ms(outcome.pong_ms)
        if outcome.pong_ms is not None
        else "none"
        if outcome.switched
        else "-"
    )
    return [describe(outcome), status, accept, format_ms(outcome.first_byte_ms), held, closed, ping]


_COLUMNS = ["handshake", "status", "accept", "first byte", "held", "ended", "pong"]


def table(target: Target, hold: float, outcomes: Sequence[Outcome], diagnosis: Diagnosis) -> str:
    rows = [_COLUMNS, *(_row(o) for o in outcomes)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = [f"wsproxy probe {target.url} (each session held {hold:g}s)", ""]
    for row in rows:
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    lines.append("")
    lines.append("Diagnosis:" if diagnosis.findings else "")
    for finding in diagnosis.findings:
        # A `code span` is never cut: it is a line to copy into a config.
        whole = _CODE.sub(lambda m: m[0].replace(" ", _KEEP), finding[0].upper() + finding[1:])
        wrapped = textwrap.wrap(
            whole, width=WIDTH, initial_indent="- ", subsequent_indent="  ", break_on_hyphens=False
        )
        lines.extend(line.replace(_KEEP, " ") for line in wrapped)
    return "\n".join(lines) + "\n"


def as_json(
    target: Target, hold: float, outcomes: Sequence[Outcome], diagnosis: Diagnosis
) -> dict[str, Any]:
    return {
        "url": target.url,
        "hold_s": hold,
        "ok": diagnosis.ok,
        "variants": [
            {
                "name": o.variant.name,
                "description": describe(o),
                "request": {
                    "version": o.variant.version,
                    "connection": o.variant.connection,
                    "permessage_deflate": o.variant.deflate,
                },
                "error": o.error,
                "status": o.status,
                "reason": o.reason or None,
                "headers": [list(pair) for pair in o.headers],
                "first_byte_ms": _round(o.first_byte_ms),
                "accept_ok": None if not o.switched else not o.accept_wrong,
                "problems": o.problems,
                "body_headers_in_101": o.body_headers,
                "extensions": o.extensions,
                "held": o.survived,
                "closed_by": o.closed_by,
                "closed_after_ms": _round(o.closed_after_ms),
                "close_code": o.close_code,
                "close_reason": o.close_reason or None,
                "ping_answered": None if not o.switched else o.pong_ms is not None,
                "pong_ms": _round(o.pong_ms),
                "messages_received": o.messages,
                "protocol_error": o.protocol_error,
            }
            for o in outcomes
        ],
        "diagnosis": list(diagnosis.findings),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
