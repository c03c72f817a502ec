"""A /metrics scrape visits only the sessions that moved since the last one,
never every open session; checked by counting folds, not by timing, and the
counts stay exact."""

from __future__ import annotations

import pytest

from tests.support.backends import swoole_like
from tests.support.observe_helpers import observed_proxy
from tests.support.proxy import config_text
from tests.support.wire import encode_frame
from tests.support.ws_helpers import open_sessions
from wsproxy.metrics import SessionCollector

SESSIONS = 60


async def test_a_scrape_folds_only_the_sessions_that_moved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folds: list[object] = []
    original = SessionCollector._fold

    def counted(self: SessionCollector, route: str, session: object) -> None:
        folds.append(session)
        original(self, route, session)  # type: ignore[arg-type]

    monkeypatch.setattr(SessionCollector, "_fold", counted)
    async with swoole_like() as backend, observed_proxy(config_text(backend.port)) as obs:
        sessions = await open_sessions(obs.port, SESSIONS)
        readers = [reader for reader, _ in sessions]
        writers = [writer for _, writer in sessions]
        try:
            await obs.sessions_open(SESSIONS)
            first = await obs.scrape()  # every new session is looked at once
            assert first.value("wsproxy_websocket_active_connections", route="/") == SESSIONS
            folds.clear()

            quiet = await obs.scrape()  # nothing moved: nothing visited
            assert folds == []
            assert quiet.value("wsproxy_websocket_active_connections", route="/") == SESSIONS

            frame = encode_frame(0x1, b"hello", mask=True)
            writers[7].write(frame)
            await readers[7].readexactly(len(frame) - 4)  # the echo, unmasked
            moved = await obs.scrape()
            assert len(folds) == 1  # one session moved: one visited, of 60
            labels = {"route": "/", "direction": "client_to_upstream"}
            assert moved.value("wsproxy_websocket_messages_total", **labels) == 1
            assert moved.value("wsproxy_websocket_bytes_total", **labels) == len(frame)
            back = {"route": "/", "direction": "upstream_to_client"}
            assert moved.value("wsproxy_websocket_bytes_total", **back) == len(frame) - 4
            # The idle ones keep no copy of their counts.
            copies = [t for t in obs.server.sessions if t.folded is not None]
            assert len(copies) == 1
        finally:
            for writer in writers:
                writer.close()
        await obs.sessions_ended()
        ended = await obs.scrape()
        assert ended.value("wsproxy_websocket_active_connections", route="/") == 0
        labels = {"route": "/", "direction": "client_to_upstream"}
        assert ended.value("wsproxy_websocket_messages_total", **labels) == 1
        assert obs.server.observability.metrics.sessions.dirty == set()
