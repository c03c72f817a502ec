"""/status.json stays bounded whatever the number of open sessions: whole
counts by route, and only the newest and the oldest sessions listed
(``?sessions=N``, at most 1000 of each)."""

from __future__ import annotations

import json

from tests.support.backends import swoole_like
from tests.support.observe_helpers import observed_proxy
from tests.support.proxy import config_text
from tests.support.wire import encode_frame
from tests.support.ws_helpers import open_sessions, read_frame

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


async def test_the_busiest_sessions_are_those_that_moved_most_since_the_last_look() -> None:
    async with swoole_like() as backend, observed_proxy(config_text(backend.port)) as obs:
        pairs = await open_sessions(obs.port, 10)
        try:
            await obs.sessions_open(10)
            ids = [info.request_id for info in obs.server.sessions.values()]
            # Sessions 3, 7 and 5 move 30, 20 and 10 KB (echoed back); the rest none.
            for index, size in ((3, 30_000), (7, 20_000), (5, 10_000)):
                reader, writer = pairs[index]
                writer.write(encode_frame(0x2, b"x" * size, mask=True))
                echo = await read_frame(reader)
                assert len(echo.payload) == size

            async with obs.http.get(obs.admin_url + "/status.json?sessions=2") as response:
                status = json.loads(await response.text())
            busiest = status["busiest_sessions"]
            assert [s["request_id"] for s in busiest] == [ids[3], ids[7]]
            for session in busiest:
                both = session["bytes_client_to_upstream"] + session["bytes_upstream_to_client"]
                assert session["bytes_moved"] == both  # everything, since nothing was folded
                assert session["over_seconds"] >= 0

            # Nothing moved since that look: no busiest, whatever was moved before.
            assert (await obs.status_json())["busiest_sessions"] == []
            reader, writer = pairs[5]
            writer.write(encode_frame(0x2, b"y" * 100, mask=True))
            await read_frame(reader)
            [only] = (await obs.status_json())["busiest_sessions"]
            assert only["request_id"] == ids[5]
            assert only["bytes_moved"] < 300  # this frame and its echo, not the 10 KB before
        finally:
            for _, writer in pairs:
                writer.close()
