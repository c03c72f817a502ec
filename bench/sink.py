"""An upload sink for the bench: reads a whole request body, then answers ``ok``.

nginx's ``return 200`` answers before it has read a body, so a proxy that
relays that early answer ends the client's upload at once, and the upload
workload would time the answer, not the upload.  This server answers each
request only after its last body byte (``Content-Length`` bodies; the
workload's curl sends one), with uvloop and a protocol that only counts.

    python sink.py PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"


class Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.remaining = -1  # -1: reading a head

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        while data:
            if self.remaining < 0:
                self.head += data
                end = self.head.find(b"\r\n\r\n")
                if end < 0:
                    return
                head, data = self.head[:end], self.head[end + 4 :]
                self.head = b""
                self.remaining = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        self.remaining = int(value)
            take = min(self.remaining, len(data))
            self.remaining -= take
            data = data[take:]
            if self.remaining == 0:
                self.remaining = -1
                assert self.transport is not None
                self.transport.write(OK)


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Sink, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
