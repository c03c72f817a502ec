"""The benchmark's WebSocket echo backend: picows on uvloop, one process.

Fast enough that it is not what limits any proxy in front of it: picows
parses frames in Cython and echoes each message as it arrives.

    python bench/backend.py PORT
"""

from __future__ import annotations

import sys

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server
from procs import raise_file_limit  # type: ignore[import-not-found]


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
            transport.send(frame.msg_type, frame.get_payload_as_memoryview())


async def main(port: int) -> None:
    def listener(request: WSUpgradeRequest) -> WSListener:
        return Echo()

    server = await ws_create_server(
        listener, "127.0.0.1", port, max_frame_size=64 * 1024 * 1024, backlog=4096
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    raise_file_limit()
    uvloop.run(main(int(sys.argv[1])))
