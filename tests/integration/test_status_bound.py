"""/status.json stays bounded whatever the number of open sessions: whole
counts by route, and only the newest and the oldest sessions listed
(``?sessions=N``, at most 1000 of each)."""

from __future__ import annotations

import json

from tests.support.backends import swoole_like
from tests.support.observe_helpers import observed_proxy
from tests.support.proxy import config_text
from tests.support.ws_helpers import open_sessions

SESSIONS = 120


async def test_the_status_document_lists_the_ends_and_counts_the_rest() -> None:
    async with swoole_like() as backend, observed_proxy(config_text(backend.port)) as obs:
        writers = [writer for _, writer in await open_sessions(obs.port, SESSIONS)]
        try:
            await obs.sessions_open(SESSIONS)
            started = [info.request_id for info in obs.server.sessions.values()]

            whole = await obs.status_json()  # the default: 50 of each end
            assert whole["open_sessions"] == SESSIONS
            assert whole["open_by_route"] == {"/": SESSIONS}
            assert len(whole["active_sessions"]) == 100

            async with obs.http.get(obs.admin_url + "/status.json?sessions=5") as response:
                assert response.status == 200
                text = await response.text()
            status = json.loads(text)
            listed = [session["request_id"] for session in status["active_sessions"]]
            assert sorted(listed) == sorted(started[-5:] + started[:5])
            assert status["open_sessions"] == SESSIONS
            assert status["sessions_listed_per_end"] == 5
            small = len(text)
            # The document does not grow with the sessions it does not list.
            assert small < 10_000, small

            for bad in ("-1", "1001", "x", "²", "+5", "9" * 5000):
                async with obs.http.get(obs.admin_url + f"/status.json?sessions={bad}") as response:
                    assert response.status == 400
                    assert "sessions must be a number from 0 to 1000" in await response.text()
        finally:
            for writer in writers:
                writer.close()
        await obs.sessions_ended()
        status = await obs.status_json()
        assert status["open_sessions"] == 0
        assert status["open_by_route"] == {}
