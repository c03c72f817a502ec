"""The probe's sockets: one connection per variant, all at once.

Each connection sends its handshake, reads the response head (at most
``MAX_HEAD`` bytes, within ``timeout``), and after a ``101`` holds the
session for ``hold`` seconds: it sends a ping and a text message at once
(as an application does on ``open``), reads the server's frames with the
proxy's own observer, and notes who ended the session and how.  A session
that held is closed with ``1000`` at the end, politely.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time

from wsproxy.probe.model import (
    BODY_HEADERS,
    MAX_HEAD,
    PING_PAYLOAD,
    TEXT_PAYLOAD,
    VARIANTS,
    BadResponse,
    Options,
    Outcome,
    Target,
    Variant,
    build_request,
    client_frame,
    handshake_problems,
    new_key,
    parse_response_head,
)
from wsproxy.wsframes import FrameObserver, Opcode, allowed_rsv_bits, encode_close

#: How long a session that held waits for the server's answer to its close.
CLOSE_WAIT = 1.0


class ProbeError(Exception):
    """Nothing to probe (the name does not resolve): one line, exit 1."""


async def probe(target: Target, options: Options) -> list[Outcome]:
    """Every variant's outcome, in VARIANTS order."""
    await _resolve(target, options)
    tls = _tls_context(options) if target.tls else None
    return list(
        await asyncio.gather(
            *(
                asyncio.create_task(
                    _one(target, variant, options, tls), name=f"wsproxy-probe-{variant.name}"
                )
                for variant in VARIANTS
            )
        )
    )


async def _resolve(target: Target, options: Options) -> None:
    """Once, before the variants, within ``--timeout``: a name that does not
    resolve is one clear line, not five connection failures."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(options.timeout):
            await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except TimeoutError:
        raise ProbeError(
            f"cannot resolve {target.host!r}: no answer within {options.timeout:g}s"
        ) from None
    except (socket.gaierror, UnicodeError) as exc:
        raise ProbeError(_unresolved(target, exc)) from None


def _unresolved(target: Target, exc: socket.gaierror | UnicodeError) -> str:
    if isinstance(exc, UnicodeError):  # an empty or over-long label (IDNA)
        return f"cannot resolve {target.host!r}: not a valid host name"
    return f"cannot resolve {target.host!r}: {exc.strerror}"


def _tls_context(options: Options) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    if options.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def _one(
    target: Target, variant: Variant, options: Options, tls: ssl.SSLContext | None
) -> Outcome:
    outcome = Outcome(variant)
    where = target.address
    try:
        async with asyncio.timeout(options.timeout):
            reader, writer = await asyncio.open_connection(target.host, target.port, limit=MAX_HEAD)
    except TimeoutError:
        return _fatal(outcome, f"{where} did not accept a connection within {options.timeout:g}s")
    except (socket.gaierror, UnicodeError) as exc:  # resolved once already: rare
        return _fatal(outcome, _unresolved(target, exc))
    except OSError as exc:
        return _fatal(outcome, f"cannot connect to {where}: {_reason(exc)}")
    if tls is not None:
        # After the connection, so a silent or plain port is told apart
        # from one that refuses.
        try:
            async with asyncio.timeout(options.timeout):
                await writer.start_tls(tls, server_hostname=target.host)
        except TimeoutError:
            writer.close()
            return _fatal(
                outcome,
                f"TLS handshake with {where} did not complete within {options.timeout:g}s "
                "(not a TLS port?)",
            )
        except ssl.SSLCertVerificationError as exc:
            writer.close()
            return _fatal(
                outcome,
                f"TLS: the certificate of {target.host} is not trusted "
                f"({exc.verify_message}); --insecure skips the check",
            )
        except (ssl.SSLError, OSError) as exc:
            writer.close()
            hint = " (not a TLS port?)" if "WRONG_VERSION_NUMBER" in str(exc) else ""
            return _fatal(outcome, f"TLS handshake with {where} failed: {_reason(exc)}{hint}")
    try:
        await _exchange(target, variant, options, reader, writer, outcome)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT):
                await writer.wait_closed()
    return outcome


def _fatal(outcome: Outcome, message: str) -> Outcome:
    outcome.error = message
    outcome.fatal = True
    return outcome


async def _exchange(
    target: Target,
    variant: Variant,
    options: Options,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    outcome: Outcome,
) -> None:
    key = new_key()
    sent = time.monotonic()
    data = b""
    try:
        writer.write(build_request(target, variant, options, key))
        async with asyncio.timeout(options.timeout):
            while b"\r\n\r\n" not in data and len(data) <= MAX_HEAD:
                chunk = await reader.read(MAX_HEAD)
                if outcome.first_byte_ms is None and chunk:
                    outcome.first_byte_ms = (time.monotonic() - sent) * 1000
                if not chunk:
                    break
                data += chunk
                if not b"HTTP/".startswith(data[:5]):
                    break  # not HTTP: said at once, not after the timeout
    except TimeoutError:
        outcome.error = (
            f"no response within {options.timeout:g}s"
            if not data
            else f"the response head was not complete within {options.timeout:g}s"
        )
        return
    except (OSError, ssl.SSLError) as exc:
        outcome.error = f"the connection failed before a response ({_reason(exc)})"
        return
    if not data:
        outcome.error = "the server closed the connection without a response"
        return
    if len(data) > MAX_HEAD and b"\r\n\r\n" not in data[:MAX_HEAD]:
        outcome.error = f"a response head longer than {MAX_HEAD} bytes"
        return
    try:
        head, rest = parse_response_head(data)
    except BadResponse as exc:
        outcome.error = str(exc)
        return
    outcome.status, outcome.reason, outcome.version = head.status, head.reason, head.version
    outcome.headers = head.headers
    if head.status != 101:
        return
    outcome.problems = handshake_problems(head, key, options)
    outcome.body_headers = [name for name, _ in head.headers if name.lower() in BODY_HEADERS]
    outcome.extensions = head.get("sec-websocket-extensions")
    await _hold(options, reader, writer, outcome, rest)


async def _hold(
    options: Options,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    outcome: Outcome,
    rest: bytes,
) -> None:
    observer = FrameObserver(client_side=False, allowed_rsv=allowed_rsv_bits(outcome.extensions))
    switched = time.monotonic()

    def elapsed() -> float:
        return (time.monotonic() - switched) * 1000

    def seen(chunk: bytes) -> None:
        observer.feed(chunk)
        if outcome.pong_ms is None and observer.frames[Opcode.PONG]:
            outcome.pong_ms = elapsed()
        outcome.messages = observer.messages

    with contextlib.suppress(OSError):
        writer.write(
            client_frame(Opcode.PING, PING_PAYLOAD) + client_frame(Opcode.TEXT, TEXT_PAYLOAD)
        )
    seen(rest)
    deadline = switched + options.hold
    while not observer.saw_close and observer.error is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            chunk = await asyncio.wait_for(reader.read(65536), remaining)
        except TimeoutError:
            break
        except (OSError, ssl.SSLError) as exc:
            outcome.closed_by = "RST" if isinstance(exc, ConnectionResetError) else _reason(exc)
            outcome.closed_after_ms = elapsed()
            return
        if not chunk:
            outcome.closed_by = "FIN"
            outcome.closed_after_ms = elapsed()
            return
        seen(chunk)
    outcome.protocol_error = observer.error
    if observer.error is not None:
        with contextlib.suppress(OSError):  # RFC 6455 §7.4.1: 1002, protocol error
            writer.write(encode_close(1002, mask=_mask()))
        return
    if observer.saw_close:
        outcome.closed_by = "close frame"
        outcome.closed_after_ms = elapsed()
        outcome.close_code, outcome.close_reason = observer.close_code, observer.close_reason
        with contextlib.suppress(OSError):
            writer.write(encode_close(1000, mask=_mask()))
        return
    outcome.survived = True
    with contextlib.suppress(OSError):  # done: a polite close, answered or not
        writer.write(encode_close(1000, mask=_mask()))
        async with asyncio.timeout(CLOSE_WAIT):
            while not observer.saw_close and (chunk := await reader.read(65536)):
                observer.feed(chunk)


def _mask() -> bytes:
    return os.urandom(4)


def _reason(exc: BaseException) -> str:
    """A few words for an error, without Python's wrapping."""
    if isinstance(exc, ssl.SSLError):
        return (exc.reason or str(exc)).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__
