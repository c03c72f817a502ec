"""Front listeners: sockets the server owns, and a limit on open connections.

Theory of operation
-------------------
The server binds each listen address itself (:func:`bind`, what
``loop.create_server`` does: every address the host resolves to,
``SO_REUSEADDR``, ``IPV6_V6ONLY``) and keeps those sockets for as long as
the address is configured.  What accepts on them can change without
closing them, so a reload that changes ``max_connections`` refuses nobody:

* no limit: the event loop's own server on a duplicate of each socket
  (``create_server(sock=...)``), which accepts in batches, as fast as asyncio
  and uvloop can;
* ``max_connections``: one accept loop per socket that takes a connection
  only while the listener's :class:`Gate` has room.  Past the limit nothing
  is accepted, so new connections wait in the kernel's listen backlog (and
  the client's SYN retries) until one closes, instead of being accepted and
  dropped (HAProxy's ``maxconn`` does the same).

A connection counts from its accept until its socket closes; a WebSocket
session keeps the client's socket, so it counts until the session ends (the
front door hands its gate to the tunnel at the ``101``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from functools import partial

log = logging.getLogger("wsproxy")

#: How long accepting pauses after the system refused an accept (EMFILE, ENFILE).
_ACCEPT_BACKOFF = 0.1


class Gate:
    """Open connections of one listener against its limit (0: none)."""

    __slots__ = ("_waiter", "limit", "open")

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit
        self.open = 0
        self._waiter: asyncio.Future[None] | None = None

    @property
    def full(self) -> bool:
        return bool(self.limit) and self.open >= self.limit

    def take(self) -> None:
        self.open += 1

    def release(self) -> None:
        self.open -= 1
        self._wake()

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    async def wait(self) -> None:
        """Until there is room for one more connection."""
        while self.full:
            if self._waiter is None or self._waiter.done():
                self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._waiter)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done() and not self.full:
            waiter.set_result(None)


def bind(
    host: str, port: int, *, reuse_port: bool = False, listen: bool = True
) -> list[socket.socket]:
    """Listening sockets for every address ``host`` resolves to (OSError if
    one cannot be bound: then none is left open).

    ``reuse_port``: ``SO_REUSEPORT``, so each worker process binds its own
    socket on the same address and the kernel spreads new connections over
    them (by a hash of the connection's addresses).  Off for a single
    process: a second program on the same port is then an error, not a
    silent share.

    ``listen=False``: bound only, to check that an address is free.  With
    SO_REUSEADDR, Linux still refuses the bind where a socket listens, and a
    socket that never listens cannot take (and then reset) a connection
    meant for someone else.
    """
    infos = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    seen = set()
    try:
        for family, kind, proto, _name, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                # As asyncio does: "::" and "0.0.0.0" can then both be bound.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"error while attempting to bind on address {address!r}: "
                    f"{(exc.strerror or '').lower()}",
                ) from None
            if listen:
                sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


#: Builds the protocol for one accepted connection, given the listener's gate
#: (which the connection releases when its socket closes).
Factory = Callable[[Gate], asyncio.Protocol]


class Listener:
    """One configured listen address: its sockets and what accepts on them."""

    def __init__(self, sockets: list[socket.socket], factory: Factory, limit: int = 0) -> None:
        self.sockets = sockets
        self.gate = Gate(limit)
        self._factory = factory
        self._servers: list[asyncio.Server] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    async def start(self) -> None:
        """Accept on the sockets, as the limit says; on failure nothing is left half started."""
        loop = asyncio.get_running_loop()
        servers: list[asyncio.Server] = []
        tasks: list[asyncio.Task[None]] = []
        try:
            if self.gate.limit:
                for sock in self.sockets:
                    name = f"accept on {sock.getsockname()}"
                    tasks.append(asyncio.create_task(self._accept(sock), name=name))
            else:
                for sock in self.sockets:
                    servers.append(
                        await loop.create_server(
                            self._connection, sock=sock.dup(), backlog=socket.SOMAXCONN
                        )
                    )
        except BaseException:
            await self._stop_accepting(servers, tasks)
            raise
        self._servers, self._tasks = servers, tasks

    def _connection(self) -> asyncio.Protocol:
        """One accepted connection: counted from here (also without a limit,
        so a reload that sets one counts the connections already open)."""
        self.gate.take()
        return self._factory(self.gate)

    async def set_limit(self, limit: int) -> None:
        """A reload's ``max_connections``; the sockets stay open throughout."""
        if bool(limit) == bool(self.gate.limit):
            self.gate.set_limit(limit)
            return
        servers, tasks, before = self._servers, self._tasks, self.gate.limit
        self.gate.set_limit(limit)
        try:
            await self.start()  # the new way of accepting first, then the old one goes
        except BaseException:
            self.gate.set_limit(before)  # the old way still accepts
            raise
        await self._stop_accepting(servers, tasks)

    def close(self) -> None:
        """Stop accepting; connections already accepted go on."""
        if self._closed:
            return
        self._closed = True
        for server in self._servers:
            server.close()
        for task in self._tasks:
            task.cancel()
        for sock in self.sockets:
            sock.close()

    async def wait_closed(self) -> None:
        await self._stop_accepting(self._servers, self._tasks)

    @staticmethod
    async def _stop_accepting(
        servers: list[asyncio.Server], tasks: list[asyncio.Task[None]]
    ) -> None:
        """Stop the loop servers and accept loops.  Not ``Server.wait_closed()``:
        since Python 3.12.1 it waits for every connection the server accepted,
        and a WebSocket session lasts hours (the sockets are ours to close)."""
        for server in servers:
            server.close()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        gate = self.gate
        while True:
            await gate.wait()
            try:
                conn, _address = await loop.sock_accept(sock)
            except OSError as exc:
                # EMFILE and the like: the connection stays in the backlog.
                log.warning("accepting on %s failed: %s", sock.getsockname(), exc)
                await asyncio.sleep(_ACCEPT_BACKOFF)
                continue
            # Another socket of this listener may have taken the last room
            # meanwhile: this connection waits, not yet served, until there
            # is room again.  Nothing is awaited between wait() and take().
            await gate.wait()
            gate.take()
            made: list[asyncio.Protocol] = []
            try:
                await loop.connect_accepted_socket(partial(self._made, made), conn)
            except OSError:
                if not made:
                    gate.release()  # no connection exists to release it
                conn.close()

    def _made(self, made: list[asyncio.Protocol]) -> asyncio.Protocol:
        made.append(self._factory(self.gate))
        return made[0]
