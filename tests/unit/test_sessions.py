"""Pure session reporting: label values, redaction, wording, log formats."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import re

import pytest

from wsproxy.accesslog import (
    MAX_PENDING_LINES,
    AccessLog,
    _flush_at_exit,
    format_text,
    timestamp,
)
from wsproxy.config import AccessLogSettings
from wsproxy.sessions import (
    DirectionStats,
    SessionInfo,
    SessionReport,
    close_code_label,
    diagnosis,
    method_label,
    needs_attention,
    probe_command,
    redact_target,
)

INFO = SessionInfo(
    route="chat",
    client="192.0.2.1:5000",
    server="127.0.0.1:1215",
    request_id="r1",
    path="/ws",
    upstream_version="HTTP/1.1",
    upstream_connection="upgrade",
    early_close_window=10.0,
)
QUIET = DirectionStats(bytes=0, frames=0, messages=0)


def report(**changes: object) -> SessionReport:
    values: dict[str, object] = {
        "info": INFO,
        "duration": 0.0005,
        "closed_by": "upstream",
        "how": "fin",
        "close_code": None,
        "close_reason": "",
        "client_to_upstream": QUIET,
        "upstream_to_client": QUIET,
    }
    values.update(changes)
    return SessionReport(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "label"),
    [
        (None, "1006"),
        (1000, "1000"),
        (1005, "1005"),
        (4001, "4001"),
        (1006, "invalid"),  # reserved: must never be sent in a frame
        (999, "invalid"),
        (5000, "invalid"),
        (2000, "invalid"),
    ],
)
def test_close_code_labels_are_bounded(code: int | None, label: str) -> None:
    assert close_code_label(code) == label


@pytest.mark.parametrize(
    ("method", "label"), [("GET", "GET"), ("PATCH", "PATCH"), ("PURGE", "other"), ("get", "other")]
)
def test_method_labels_are_bounded(method: str, label: str) -> None:
    assert method_label(method) == label


@pytest.mark.parametrize(
    ("path", "redacted"),
    [
        ("/ws", "/ws"),
        ("/ws?token=secret", "/ws?token=redacted"),
        ("/ws?a=1&b=2&a=3", "/ws?a=redacted&b=redacted&a=redacted"),
        ("/ws?S3CR3T", "/ws?redacted"),  # a bare item is all value
        ("/ws?S3CR3T&t=x&&", "/ws?redacted&t=redacted&&"),
        ("/ws?a=1;S3CR3T", "/ws?a=redacted"),
        ("/ws?a==S3CR3T", "/ws?a=redacted"),
        ("/ws?", "/ws?"),
        ("/ws?we%20ird=x", "/ws?we%20ird=redacted"),
        ("/ws?%53%33CR3T", "/ws?redacted"),
        ("/a;jsessionid=S3CR3T/b", "/a;jsessionid=redacted/b"),
        ("/a;S3CR3T;x=1/b;c", "/a;redacted;x=redacted/b;redacted"),
        ("http://user:S3CR3T@host:80/p?q=1", "http://redacted@host:80/p?q=redacted"),
        ("http://host/p;s=S3CR3T", "http://host/p;s=redacted"),
    ],
)
def test_query_values_and_path_parameters_are_redacted_names_kept(path: str, redacted: str) -> None:
    assert redact_target(path) == redacted
    assert "S3CR3T" not in redact_target(path)


def test_early_is_relative_to_the_route_window() -> None:
    assert report(duration=9.99).early
    assert not report(duration=10.0).early


def test_report_fields_carry_every_log_field() -> None:
    fields = report(
        closed_by="client",
        how="close_frame",
        close_code=4001,
        close_reason="bye",
        client_to_upstream=DirectionStats(bytes=20, frames=2, messages=1),
        upstream_to_client=DirectionStats(bytes=9, frames=1, messages=0, error="masked"),
    ).fields()
    assert fields["code"] == "4001"
    assert fields["close_frame"] is True
    assert fields["closed_by"] == "client"
    assert fields["bytes_client_to_upstream"] == 20
    assert fields["frames_upstream_to_client"] == 1
    assert fields["protocol_error_upstream_to_client"] == "masked"
    assert fields["upstream_request"] == "HTTP/1.1 Connection: upgrade"
    assert fields["duration_ms"] == 0.5


def test_a_prompt_upstream_drop_points_at_an_http10_hop_behind_wsproxy() -> None:
    text = diagnosis(report())
    assert "without a close frame" in text
    assert "wsproxy sent the upgrade as HTTP/1.1 with 'Connection: upgrade'" in text
    assert "signature of an HTTP/1.0 hop between wsproxy and the backend" in text
    assert "proxy_http_version 1.1" in text
    assert "probe" in text
    assert "request ID r1" in text
    # Never the claim the review found wrong behind a downgrading hop.
    assert "not the HTTP/1.0 keep-alive rule" not in text


@pytest.mark.parametrize(
    ("path", "command"),
    [
        ("/ws", "wsproxy probe ws://127.0.0.1:1215/ws"),
        ("/ws?token=redacted", "wsproxy probe ws://127.0.0.1:1215/ws"),
        ("/a;jsessionid=abc/b#x", "wsproxy probe ws://127.0.0.1:1215/a/b"),
        ("/$(touch%20x)`id`", "wsproxy probe 'ws://127.0.0.1:1215/$(touch%20x)`id`'"),
        ("/a&b|c", "wsproxy probe 'ws://127.0.0.1:1215/a&b|c'"),
        ("/it's", """wsproxy probe 'ws://127.0.0.1:1215/it'"'"'s'"""),
        ("*", "wsproxy probe ws://127.0.0.1:1215/"),
    ],
)
def test_the_probe_command_targets_the_server_without_the_query_quoted_for_a_shell(
    path: str, command: str
) -> None:
    assert probe_command(dataclasses.replace(INFO, path=path)) == command


def test_a_late_upstream_drop_is_not_blamed_on_keep_alive() -> None:
    text = diagnosis(report(duration=3.0))
    assert "3000.0 ms after 101" in text
    assert "HTTP/1.0 hop" not in text
    assert "request ID r1" in text


@pytest.mark.parametrize(
    ("closed_by", "how", "code", "attention"),
    [
        ("client", "close_frame", 1000, False),
        ("client", "close_frame", 1001, False),
        ("client", "close_frame", 4001, True),
        ("client", "close_frame", 1011, True),
        ("client", "fin", None, True),
        ("client", "reset", None, True),
        ("upstream", "close_frame", 1000, True),
        ("upstream", "fin", None, True),
        ("proxy", "drain", None, True),
        ("proxy", "idle_timeout", None, True),
    ],
)
def test_only_a_clean_client_close_needs_no_attention(
    closed_by: str, how: str, code: int | None, attention: bool
) -> None:
    early = report(closed_by=closed_by, how=how, close_code=code)
    assert needs_attention(early) is attention


def test_diagnosis_of_an_upstream_close_frame_quotes_the_reason() -> None:
    text = diagnosis(report(close_code=4003, close_reason="forbidden", how="close_frame"))
    assert "4003" in text
    assert "forbidden" in text


def test_text_format_quotes_only_what_needs_it() -> None:
    line = format_text({"a": "plain", "b": "two words", "c": "", "d": True, "e": None, "f": 3})
    assert line == 'a=plain b="two words" c="" d=true f=3'


def test_timestamp_is_rfc3339_utc_with_milliseconds() -> None:
    assert timestamp(0.25) == "1970-01-01T00:00:00.250Z"


@pytest.mark.parametrize("log_format", ["json", "text", "off"])
def test_access_log_formats(log_format: str) -> None:
    stream = io.StringIO()
    AccessLog(AccessLogSettings(format=log_format), stream).write(  # type: ignore[arg-type]
        {"type": "http", "status": 200, "path": "/x y"}
    )
    out = stream.getvalue()
    if log_format == "off":
        assert out == ""
    elif log_format == "json":
        entry = json.loads(out)
        assert entry["status"] == 200
        assert entry["path"] == "/x y"
        assert "ts" in entry
    else:
        assert out.endswith('type=http status=200 path="/x y"\n')


async def test_access_log_lines_wait_for_one_write_in_order() -> None:
    """Lines are kept and written together: at the flush, or at MAX_PENDING_LINES."""
    stream = io.StringIO()
    log = AccessLog(AccessLogSettings(format="json"), stream)
    for number in range(3):
        log.write({"type": "http", "n": number})
    assert stream.getvalue() == ""  # within FLUSH_DELAY: kept
    log.flush()
    assert [json.loads(line)["n"] for line in stream.getvalue().splitlines()] == [0, 1, 2]
    for number in range(MAX_PENDING_LINES):
        log.write({"type": "http", "n": number})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 + MAX_PENDING_LINES  # the bound forced a write
    assert json.loads(lines[-1])["n"] == MAX_PENDING_LINES - 1
    log.flush()


def test_access_log_lines_outlive_the_event_loop() -> None:
    """A line logged as a loop ends (its flush timer never runs) is not lost: the
    next line without a loop writes both, and whatever still waits at exit is
    written then."""
    stream = io.StringIO()
    log = AccessLog(AccessLogSettings(format="json"), stream)

    async def last_words() -> None:
        log.write({"type": "http", "n": 1})

    asyncio.run(last_words())
    assert stream.getvalue() == ""  # its timer died with the loop
    log.write({"type": "http", "n": 2})
    assert [json.loads(line)["n"] for line in stream.getvalue().splitlines()] == [1, 2]

    asyncio.run(last_words())
    _flush_at_exit()
    assert [json.loads(line)["n"] for line in stream.getvalue().splitlines()] == [1, 2, 1]


@pytest.mark.parametrize("worker", [None, 3])
@pytest.mark.parametrize(
    "ended",
    [
        report(),
        report(
            info=dataclasses.replace(INFO, path='/ws?q="é\\\n', client="[::1]:1"),
            duration=12.3456789,
            closed_by="client",
            how="close_frame",
            close_code=1000,
            close_reason='bye "now"\t✓',
            client_to_upstream=DirectionStats(bytes=10, frames=2, messages=1, error="bad\nrsv"),
            upstream_to_client=DirectionStats(bytes=7, frames=1, messages=1),
        ),
        report(duration=0.0, close_code=4999, how="reset", closed_by="proxy"),
    ],
)
def test_a_session_line_is_its_fields_in_json(ended: SessionReport, worker: int | None) -> None:
    """AccessLog.write_session writes what write(report.fields()) writes."""

    class Lines(AccessLog):
        lines: list[str]

        def _emit(self, line: str) -> None:
            self.lines.append(re.sub(r'^\{"ts":"[^"]*"', "", line))

    lines = []
    for write in ("fields", "session"):
        log = Lines(AccessLogSettings(format="json"), io.StringIO(), worker)
        log.lines = []
        if write == "fields":
            log.write(ended.fields())
        else:
            log.write_session(ended)
        lines.append(log.lines)
    assert lines[1] == lines[0]
    assert len(lines[0]) == 1
    assert json.loads("{" + lines[0][0].lstrip(","))["route"] == "chat"
