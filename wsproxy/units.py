"""Durations and sizes as people write them in configuration files.

Pure: no I/O, no asyncio.  Parsers raise ``ValueError`` whose message is a
complete, user-facing sentence fragment (``invalid duration '10 sec'
(expected ...)``) so :mod:`wsproxy.config` can put it next to a file position
unchanged.

Arithmetic goes through :class:`decimal.Decimal` so that
``parse_duration(format_duration(x)) == x`` and
``parse_size(format_size(n)) == n`` hold exactly: ``'250ms'`` is the float
nearest to 0.25, not ``250 * 0.001`` with its extra rounding step.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

__all__ = [
    "DURATION_HINT",
    "SIZE_HINT",
    "format_duration",
    "format_size",
    "parse_duration",
    "parse_size",
]

DURATION_HINT = (
    "expected a number of seconds or a number with ms, s, m or h, e.g. '250ms', '10s', '5m', '1h'"
)
SIZE_HINT = (
    "expected a number of bytes or a number with B, KB, MB, GB, KiB, MiB or GiB, "
    "e.g. '4096', '64KiB', '1MB'"
)

_NUMBER = r"(?P<number>-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
_DURATION_RE = re.compile(_NUMBER + r"\s*(?P<unit>ms|s|m|h)?")
_SIZE_RE = re.compile(_NUMBER + r"\s*(?P<unit>[kmg]i?b|b)?", re.IGNORECASE)

_DURATION_FACTORS: dict[str, Decimal] = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
}
_SIZE_FACTORS: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def parse_duration(value: str | int | float) -> float:
    """Return *value* in seconds.

    Accepts a bare number (seconds) or a numeric string with an optional unit:
    ``'250ms'``, ``'10s'``, ``'1.5s'``, ``'5m'``, ``'1h'``, ``'30'``.
    Negative, infinite and NaN values raise ``ValueError``.
    """
    if isinstance(value, bool):  # bool is an int subclass; True is not "1 second"
        raise ValueError(f"invalid duration {str(value)!r} ({DURATION_HINT})")
    if isinstance(value, (int, float)):
        seconds = float(value)
        if math.isnan(seconds) or math.isinf(seconds):
            raise ValueError(f"invalid duration {str(value)!r} ({DURATION_HINT})")
        if seconds < 0:
            raise ValueError(f"invalid duration {str(value)!r} (must not be negative)")
        return seconds
    match = _DURATION_RE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"invalid duration {value!r} ({DURATION_HINT})")
    number = Decimal(match["number"])
    if number < 0:
        raise ValueError(f"invalid duration {value!r} (must not be negative)")
    seconds = float(number * _DURATION_FACTORS[match["unit"] or "s"])
    if math.isinf(seconds):
        raise ValueError(f"invalid duration {value!r} (too large)")
    return seconds


def parse_size(value: str | int) -> int:
    """Return *value* in bytes.

    Accepts a bare integer (bytes) or a numeric string with an optional unit:
    ``B``; binary ``KiB``, ``MiB``, ``GiB`` (powers of 1024); decimal ``KB``,
    ``MB``, ``GB`` (powers of 1000).  Units are case-insensitive.  The result
    must be a whole, non-negative number of bytes (``'1.5KiB'`` is fine,
    ``'0.5B'`` is not).
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid size {str(value)!r} ({SIZE_HINT})")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid size {str(value)!r} (must not be negative)")
        return value
    match = _SIZE_RE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"invalid size {value!r} ({SIZE_HINT})")
    number = Decimal(match["number"])
    if number < 0:
        raise ValueError(f"invalid size {value!r} (must not be negative)")
    total = number * _SIZE_FACTORS[(match["unit"] or "b").lower()]
    if total != total.to_integral_value():
        raise ValueError(f"invalid size {value!r} (not a whole number of bytes)")
    return int(total)


def _plain(number: Decimal) -> str:
    """``Decimal`` to text without exponent or trailing zeros: 3.6E+3 -> '3600'."""
    return format(number.normalize(), "f")


def format_duration(seconds: float) -> str:
    """Shortest exact rendering in the largest unit that fits: 3600.0 -> '1h',
    90.0 -> '90s', 0.25 -> '250ms', 1.5 -> '1.5s'.  Round-trips through
    :func:`parse_duration`."""
    if isinstance(seconds, bool) or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format duration {seconds!r} (expected a finite number >= 0)")
    try:
        exact = Decimal(repr(float(seconds)))
    except InvalidOperation as exc:  # pragma: no cover - repr of a finite float is valid
        raise ValueError(f"cannot format duration {seconds!r}") from exc
    if exact == 0:
        return "0s"
    for unit in ("h", "m"):
        factor = _DURATION_FACTORS[unit]
        if exact >= factor and exact % factor == 0:
            return f"{_plain(exact / factor)}{unit}"
    if exact >= 1:
        return f"{_plain(exact)}s"
    return f"{_plain(exact * 1000)}ms"


def format_size(n: int) -> str:
    """Exact rendering in the largest unit that divides *n*, binary units
    first: 262144 -> '256KiB', 1000 -> '1KB', 1500 -> '1500B'.  Round-trips
    through :func:`parse_size`."""
    if isinstance(n, bool) or n < 0:
        raise ValueError(f"cannot format size {n!r} (expected an integer >= 0)")
    for unit in ("GiB", "MiB", "KiB", "GB", "MB", "KB"):
        factor = _SIZE_FACTORS[unit.lower()]
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}B"
