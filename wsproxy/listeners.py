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

What comes before HTTP (:class:`Preamble`): a listener with
``proxy_protocol`` or ``tls`` accepts in its own loop too, and gives each
connection a task that reads the PROXY protocol header (:func:`read_proxy_header`)
and then runs the TLS handshake, before the HTTP front end exists.  The
header is read with ``MSG_PEEK`` and only its own bytes are consumed, so
the TLS ClientHello (or the first request) behind it stays in the socket for
the layer that owns it: ``loop.start_tls`` cannot be handed bytes already
read.  Both steps are bounded by ``proxy.client_header_timeout``; a
connection that fails either is closed and reported (``on_refused``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from wsproxy.proxyproto import ProxyHeader, ProxyProtocolError, parse
from wsproxy.tunnel import TLS_SHUTDOWN_TIMEOUT, keepalive_options

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


def system_backlog() -> int:
    """The kernel's cap on a listen backlog (``net.core.somaxconn``): the
    default, so a burst of connections waits in the queue instead of being
    dropped (their clients would retry only after a 1-second SYN timeout).
    Python's ``socket.SOMAXCONN`` is a compile-time constant, not the
    running kernel's value."""
    try:
        with open("/proc/sys/net/core/somaxconn") as stream:
            return max(1, int(stream.read().strip()))
    except (OSError, ValueError):
        return socket.SOMAXCONN


def listen_length(backlog: int) -> int:
    """The length ``listen()`` gets for a configured ``backlog`` (0: the system's)."""
    return backlog or system_backlog()


def bind(
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    listen: bool = True,
    backlog: int = 0,
) -> list[socket.socket]:
    """Listening sockets for every address ``host`` resolves to (OSError if
    one cannot be bound: then none is left open).

    ``reuse_port``: ``SO_REUSEPORT``, so each worker process binds its own
    socket on the same address and the kernel spreads new connections over
    them (by a hash of the connection's addresses).  Off for a single
    process: a second program on the same port is then an error, not a
    silent share.

    ``backlog``: the listen queue's length (0: :func:`system_backlog`).

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
                sock.listen(listen_length(backlog))
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


@dataclass(frozen=True, slots=True)
class Arrival:
    """What the listener learnt about a connection before HTTP."""

    #: The client's address from a PROXY protocol header (None: the socket peer's).
    source: tuple[str, int] | None = None
    #: The connection came over TLS.
    tls: bool = False


PLAIN = Arrival()


@dataclass(frozen=True, slots=True)
class Preamble:
    """What a listener expects before HTTP on each connection."""

    proxy_protocol: bool = False
    tls: ssl.SSLContext | None = None
    #: For the PROXY header and for the TLS handshake, each.
    timeout: float = 30.0

    @property
    def needed(self) -> bool:
        return self.proxy_protocol or self.tls is not None


#: Builds the protocol for one accepted connection, given the listener's gate
#: (which the connection releases when its socket closes) and what came
#: before HTTP.  A protocol whose ``connection_made`` never runs (a failed TLS
#: handshake) does not release the gate: the listener does (``made``).
Factory = Callable[[Gate, Arrival], asyncio.Protocol]

#: Told why a connection was dropped before HTTP: ``proxy_protocol`` with
#: ``invalid``, ``timeout`` or ``closed``, or ``tls`` with ``handshake`` or
#: ``timeout``; and the peer's address.
Refused = Callable[[str, str, str], None]


async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not waiter.done():
            waiter.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await waiter
    finally:
        loop.remove_reader(fd)


#: How much is peeked at once: a v1 header, a v2 header with its usual TLVs.
_PEEK = 4096


async def read_proxy_header(sock: socket.socket) -> ProxyHeader:
    """Read exactly one PROXY protocol header from ``sock`` (non-blocking).

    Whatever :func:`wsproxy.proxyproto.parse` still calls incomplete is all
    header, so it is consumed; once it decides, only the header's remaining
    bytes are.  ProxyProtocolError for an invalid header; EOFError when the
    peer closes first.
    """
    got = b""
    while True:
        await _readable(sock)
        try:
            peeked = sock.recv(_PEEK, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            continue
        if not peeked:
            raise EOFError("closed before a PROXY protocol header")
        data = got + peeked
        header = parse(data)
        if header is None:
            got += sock.recv(len(peeked))  # all of it is header
            continue
        rest = header.length - len(got)
        taken = sock.recv(rest)
        if len(taken) != rest:  # the kernel holds what was peeked: cannot happen
            raise ProxyProtocolError("short read of a peeked header")
        return header


class Listener:
    """One configured listen address: its sockets and what accepts on them."""

    def __init__(
        self,
        sockets: list[socket.socket],
        factory: Factory,
        limit: int = 0,
        preamble: Preamble = Preamble(),
        on_refused: Refused | None = None,
        backlog: int = 0,
        keepalive: float = 0.0,
    ) -> None:
        self.sockets = sockets
        #: The listen queue's length (0: the system's); create_server listens again with it.
        self.backlog = backlog
        #: ``proxy.tcp_keepalive`` of the connections it accepts (set_keepalive).
        self.keepalive: float | None = None
        self.set_keepalive(keepalive)
        self.gate = Gate(limit)
        self.preamble = preamble
        self._factory = factory
        self._on_refused = on_refused
        self._servers: list[asyncio.Server] = []
        self._tasks: list[asyncio.Task[None]] = []
        #: Connections in their preamble (PROXY header, TLS handshake).
        self._arriving: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def _own_loop(self) -> bool:
        """Whether accepting needs our loop (a limit or a preamble)."""
        return bool(self.gate.limit) or self.preamble.needed

    async def start(self) -> None:
        """Accept on the sockets, as the limit says; on failure nothing is left half started."""
        loop = asyncio.get_running_loop()
        servers: list[asyncio.Server] = []
        tasks: list[asyncio.Task[None]] = []
        try:
            if self._own_loop:
                for sock in self.sockets:
                    name = f"accept on {sock.getsockname()}"
                    tasks.append(asyncio.create_task(self._accept(sock), name=name))
            else:
                for sock in self.sockets:
                    servers.append(
                        await loop.create_server(
                            self._connection,
                            sock=sock.dup(),
                            backlog=listen_length(self.backlog),
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
        return self._factory(self.gate, PLAIN)

    async def configure(self, limit: int, preamble: Preamble) -> None:
        """A reload's ``max_connections``, PROXY protocol and TLS context;
        the sockets stay open throughout.  Connections already accepted
        keep what they started with."""
        was_own = self._own_loop
        before = (self.gate.limit, self.preamble)
        self.gate.set_limit(limit)
        self.preamble = preamble
        if self._own_loop == was_own:
            return
        servers, tasks = self._servers, self._tasks
        try:
            await self.start()  # the new way of accepting first, then the old one goes
        except BaseException:
            self.gate.set_limit(before[0])  # the old way still accepts
            self.preamble = before[1]
            raise
        await self._stop_accepting(servers, tasks)

    def set_backlog(self, backlog: int) -> None:
        """A reload's ``backlog``: Linux takes a new length from ``listen()``
        on a socket that already listens, and keeps its queue."""
        if backlog != self.backlog:
            self.backlog = backlog
            for sock in self.sockets:
                sock.listen(listen_length(backlog))

    def set_keepalive(self, idle: float) -> None:
        """TCP keepalive (``proxy.tcp_keepalive``, 0: off) on the listening
        sockets, which Linux copies to each connection they accept: the
        client's side of a WebSocket session has it with no system call of
        its own.  A reload's value reaches the connections accepted after it."""
        if idle != self.keepalive:
            self.keepalive = idle
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    keepalive_options(sock, idle)

    async def set_limit(self, limit: int) -> None:
        """A reload's ``max_connections`` alone."""
        await self.configure(limit, self.preamble)

    def close(self) -> None:
        """Stop accepting; connections already accepted go on."""
        if self._closed:
            return
        self._closed = True
        for server in self._servers:
            server.close()
        for task in self._tasks:
            task.cancel()
        for task in self._arriving:
            task.cancel()  # not served yet: dropped with the listener
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
            preamble = self.preamble
            if preamble.needed:
                task = asyncio.create_task(self._arrive(conn, preamble))
                self._arriving.add(task)
                task.add_done_callback(self._arriving.discard)
                continue
            made: list[asyncio.Protocol] = []
            try:
                await loop.connect_accepted_socket(partial(self._made, made, PLAIN), conn)
            except OSError:
                if not made:
                    gate.release()  # no connection exists to release it
                conn.close()

    async def _arrive(self, conn: socket.socket, preamble: Preamble) -> None:
        """One connection's preamble, then its HTTP front end."""
        loop = asyncio.get_running_loop()
        made: list[asyncio.Protocol] = []
        stage = "proxy_protocol"
        peer = "unknown"
        try:
            with contextlib.suppress(OSError):
                peer = peer_text(conn.getpeername())
            source = None
            if preamble.proxy_protocol:
                async with asyncio.timeout(preamble.timeout):
                    header = await read_proxy_header(conn)
                source = header.source
            stage = "tls"
            arrival = Arrival(source, preamble.tls is not None)
            await loop.connect_accepted_socket(
                partial(self._made, made, arrival),
                conn,
                ssl=preamble.tls,
                ssl_handshake_timeout=preamble.timeout if preamble.tls is not None else None,
                # A peer that never answers our close_notify must not hold its
                # slot (and the drain) for asyncio's default 30 s.
                ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT if preamble.tls is not None else None,
            )
            return
        except asyncio.CancelledError:
            self._drop(conn, made)
            raise
        except TimeoutError:
            self._refused(stage, "timeout", peer)
        except ProxyProtocolError as exc:
            log.debug("connection from %s: invalid PROXY protocol header: %s", peer, exc)
            self._refused(stage, "invalid", peer)
        except EOFError:
            self._refused(stage, "closed", peer)
        except ConnectionAbortedError:
            # How asyncio and uvloop end a handshake past ssl_handshake_timeout.
            self._refused(stage, "timeout" if stage == "tls" else "closed", peer)
        except (OSError, ssl.SSLError) as exc:
            # A reset, a refused handshake (unknown CA, wrong version), bytes
            # that are not TLS: the client's problem, logged at debug.
            log.debug("connection from %s: %s failed: %s", peer, stage, exc)
            self._refused(stage, "handshake" if stage == "tls" else "closed", peer)
        except Exception:
            # A bug of ours: the connection goes, the listener and its count stay right.
            log.exception("connection from %s: %s failed", peer, stage)
        self._drop(conn, made)

    def _drop(self, conn: socket.socket, made: list[asyncio.Protocol]) -> None:
        # A protocol made but never connected (its TLS handshake failed)
        # cannot release the gate itself.
        if not made or not getattr(made[0], "connected", True):
            self.gate.release()
        conn.close()

    def _refused(self, stage: str, reason: str, peer: str) -> None:
        if self._on_refused is not None:
            self._on_refused(stage, reason, peer)

    def _made(self, made: list[asyncio.Protocol], arrival: Arrival) -> asyncio.Protocol:
        made.append(self._factory(self.gate, arrival))
        return made[0]


def peer_text(peer: object) -> str:
    """A socket address as logs write it: ``ip:port``, ``[ipv6]:port``."""
    if isinstance(peer, tuple):
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return "unknown"
