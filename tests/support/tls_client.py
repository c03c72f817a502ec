"""A TLS client on a raw socket (ssl.MemoryBIO): it decides when to read and
when to send close_notify, which asyncio's own TLS transport does not allow."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl


class RawTls:
    def __init__(self, context: ssl.SSLContext, *, rcvbuf: int | None = None) -> None:
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_hostname="localhost")
        self._rcvbuf = rcvbuf
        self.sock = socket.socket()

    async def connect(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        if self._rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf)
        self.sock.setblocking(False)
        await loop.sock_connect(self.sock, ("127.0.0.1", port))
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                data = await loop.sock_recv(self.sock, 65536)
                if not data:
                    raise ConnectionError("closed during the handshake") from None
                self._in.write(data)
        await self._flush()

    async def _flush(self) -> None:
        data = self._out.read()
        if data:
            await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def send(self, data: bytes) -> None:
        self._tls.write(data)
        await self._flush()

    async def recv_head(self) -> bytes:
        """Read until a response head is decrypted (and whatever came with it)."""
        loop = asyncio.get_running_loop()
        got = b""
        while b"\r\n\r\n" not in got:
            data = await loop.sock_recv(self.sock, 1024)
            if not data:
                raise ConnectionError("closed before a response head")
            self._in.write(data)
            with contextlib.suppress(ssl.SSLWantReadError):
                got += self._tls.read(65536)
        return got

    async def close_notify(self) -> None:
        """Send close_notify and keep the socket open (and unread)."""
        with contextlib.suppress(ssl.SSLWantReadError):
            self._tls.unwrap()
        await self._flush()

    def close(self) -> None:
        self.sock.close()
