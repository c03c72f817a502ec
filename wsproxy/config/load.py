"""Public entry points: text, a file, or a file and its bytes, to a Config."""

from __future__ import annotations

import os

from wsproxy.config.issues import ConfigError, ConfigIssue
from wsproxy.config.sections import _config
from wsproxy.config.settings import Config
from wsproxy.config.walker import _compose, _Ctx


def parse_config(text: str, filename: str = "<config>") -> Config:
    """Parse and validate configuration *text*; raise :class:`ConfigError`
    listing every problem, in file order, when there is any."""
    ctx = _Ctx(filename)
    root = _compose(ctx, text)
    config = None if ctx.issues else _config(ctx, root, filename)
    if ctx.issues:
        raise ConfigError(sorted(ctx.issues, key=lambda issue: (issue.line, issue.column)))
    assert config is not None, "every rejected value must have recorded an issue"
    return config


def load_config(path: str | os.PathLike[str], *, name: str | None = None) -> Config:
    """Read *path* (UTF-8) and :func:`parse_config` it; unreadable files raise
    :class:`ConfigError` too.  *name*: the file name messages and
    ``Config.source`` give (a worker reads the supervisor's copy of the
    operator's file, and names the operator's)."""
    return read_config(path, name=name)[0]


def read_config(path: str | os.PathLike[str], *, name: str | None = None) -> tuple[Config, bytes]:
    """:func:`load_config`, and the exact bytes the configuration came from."""
    filename = name if name is not None else os.fspath(path)
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([ConfigIssue(filename, 0, 0, "", f"cannot read: {reason}")]) from None
    return _decode(data, filename), data


def _decode(data: bytes, filename: str) -> Config:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        byte = data[exc.start]
        raise ConfigError(
            [ConfigIssue(filename, line, column, "", f"not valid UTF-8 (byte 0x{byte:02x})")]
        ) from None
    return parse_config(text, filename)
