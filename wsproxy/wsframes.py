"""A passive WebSocket frame observer: reads frame headers, never touches bytes.

Theory of operation
-------------------
The tunnel forwards every chunk unchanged and then shows it to one observer
per direction (``feed``).  The observer keeps only what it needs between
chunks: the number of payload bytes still to skip, and up to 14 bytes of a
frame header that was split across reads (RFC 6455 §5.2: 2 bytes, plus 2 or 8
of extended length, plus 4 of masking key).  Payloads are skipped by length
arithmetic; only a close frame's payload (at most 125 bytes, §5.5) is kept and
unmasked, to read its code and reason (§5.5.1, §7.4).

Invariants:

* ``feed`` never raises on any input and never alters, copies into the output
  or delays the bytes: it only reads them after the tunnel has written them.
* Results do not depend on how the stream was cut into chunks: whole, split at
  every offset, or one byte at a time, the counts are the same (tested with
  hypothesis against frames encoded by wsproto).
* The first protocol violation is recorded in ``error`` and observation of
  that direction stops; bytes keep being counted (``bytes``) and keep flowing.
  Malformed frames are counted, never "fixed".
* ``in_frame`` is False exactly at frame boundaries, where a proxy may insert a
  frame of its own (a ``1001`` close on shutdown) without corrupting the stream.
* **Bounded work per call.**  Bytes are cheap to count but each frame header
  costs a few hundred nanoseconds of Python, and a peer can pack 43,000 empty
  masked frames (131,000 unmasked ones) into one 256 KiB read.  With a
  :class:`FrameBudget`, ``feed`` parses at most the frames the budget grants
  and keeps the rest of the chunk (``pending``, at most that one chunk) for
  :meth:`FrameObserver.resume` on a later event-loop turn; the tunnel stops
  reading that direction meanwhile, so the flood slows its own sender and no
  one else.  Counts stay exact: the same frames are parsed, only later.

RSV bits are legal only when an extension negotiated in the ``101`` claims
them (§5.2): ``permessage-deflate`` claims RSV1 (RFC 7692 §6), so the observer
is built with the bits the handshake allowed.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import Final


class Opcode(IntEnum):
    """RFC 6455 §5.2 opcodes; 0x3-0x7 and 0xB-0xF are reserved."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


#: Label for each of the 16 opcode values (the metrics' ``opcode`` label).
OPCODE_NAMES: Final = tuple(
    Opcode(value).name.lower() if value in Opcode._value2member_map_ else "reserved"
    for value in range(16)
)

#: RFC 6455 §7.4.1: 1005 "no status code present" is never sent on the wire;
#: it is what a close frame without a code reports.
NO_STATUS_CODE: Final = 1005
#: §7.4.1: 1006, the connection closed without any close frame.
ABNORMAL_CLOSURE: Final = 1006

RSV1: Final = 0x40
RSV2: Final = 0x20
RSV3: Final = 0x10


class FrameBudget:
    """How many frame headers the observers may still parse before the loop's next turn.

    One budget is shared by every observer of a server.  ``grant`` is what
    one ``feed`` or ``resume`` call may parse: at most ``per_feed``, at most
    what is left of ``per_turn``, but never less than ``floor``, so a session
    sending a few frames per read is never held back by a flood elsewhere.
    The first ``spend`` after a ``refill`` calls ``on_first_spend``; the
    tunnel uses it to schedule the next ``refill`` on the next loop turn
    (this module knows no event loop).  Defaults: about 0.3 µs per frame on
    this project's reference machine, so ``per_feed`` is under a millisecond
    and ``per_turn`` about 3 ms of parsing per loop turn, whatever the number
    of flooding sessions.
    """

    __slots__ = ("_fresh", "floor", "left", "on_first_spend", "per_feed", "per_turn")

    PER_TURN: Final = 8192
    PER_FEED: Final = 2048
    FLOOR: Final = 64

    def __init__(
        self,
        *,
        per_turn: int = PER_TURN,
        per_feed: int = PER_FEED,
        floor: int = FLOOR,
        on_first_spend: Callable[[], object] | None = None,
    ) -> None:
        self.per_turn = per_turn
        self.per_feed = per_feed
        self.floor = floor
        self.left = per_turn
        self.on_first_spend = on_first_spend
        self._fresh = True

    def grant(self) -> int:
        return max(self.floor, min(self.per_feed, self.left))

    def spend(self, frames: int) -> None:
        if not frames:
            return
        self.left -= frames
        if self._fresh:
            self._fresh = False
            if self.on_first_spend is not None:
                self.on_first_spend()

    def refill(self) -> None:
        self.left = self.per_turn
        self._fresh = True


#: RFC 6455 §7.4.1: 1001 "going away", a server going down (the drain).
GOING_AWAY: Final = 1001


def encode_close(code: int, mask: bytes | None = None) -> bytes:
    """A close frame with ``code`` and no reason (RFC 6455 §5.5.1).

    ``mask``: the 4-byte masking key a client must use (§5.3), for a frame
    the proxy sends upstream; None for one it sends to the client.
    """
    payload = code.to_bytes(2, "big")
    if mask is None:
        return bytes((0x80 | Opcode.CLOSE, len(payload))) + payload
    masked = bytes(byte ^ mask[i & 3] for i, byte in enumerate(payload))
    return bytes((0x80 | Opcode.CLOSE, 0x80 | len(payload))) + mask + masked


def close_code_is_valid(code: int) -> bool:
    """Whether ``code`` may appear in a close frame (RFC 6455 §7.4)."""
    if 1000 <= code <= 1014:
        return code not in (1004, 1005, 1006)
    return 3000 <= code <= 4999


def allowed_rsv_bits(extensions_header: str | None) -> int:
    """RSV bits the negotiated extensions (the 101's header) make legal."""
    if not extensions_header:
        return 0
    names = {item.split(";", 1)[0].strip().lower() for item in extensions_header.split(",")}
    # permessage-deflate uses RSV1 (RFC 7692 §6); for an extension we do not
    # know, allow every bit rather than flag frames we cannot judge.
    known = {"permessage-deflate"}
    if names - known - {""}:
        return RSV1 | RSV2 | RSV3
    return RSV1 if "permessage-deflate" in names else 0


#: The frame counts of an observer that has seen no frame (FrameObserver.frames).
NO_FRAMES: tuple[int, ...] = (0,) * 16


class FrameObserver:
    """Counts one direction's frames, messages and bytes; reads close frames.

    ``client_side`` is True for the client-to-upstream direction, whose frames
    must be masked (§5.1); upstream frames must not be.  Without a ``budget``
    every ``feed`` parses its whole chunk.
    """

    __slots__ = (
        "_allowed_rsv",
        "_budget",
        "_close_buffer",
        "_close_mask",
        "_close_remaining",
        "_fragmented",
        "_head",
        "_pending",
        "_pending_pos",
        "_skip",
        "_want_mask",
        "bytes",
        "close_code",
        "close_reason",
        "error",
        "frames",
        "messages",
        "on_close",
    )

    def __init__(
        self, *, client_side: bool, allowed_rsv: int = 0, budget: FrameBudget | None = None
    ) -> None:
        self._want_mask = 0x80 if client_side else 0
        self._allowed_rsv = allowed_rsv
        self._budget = budget
        #: The rest of a chunk the budget did not cover, from ``_pending_pos``
        #: (always a frame-header boundary).
        self._pending: bytes | None = None
        self._pending_pos = 0
        self._skip = 0
        self._head = b""
        self._fragmented = False
        self._close_buffer: bytearray | None = None
        self._close_mask = b""
        self._close_remaining = 0
        self.bytes = 0
        self.messages = 0
        #: Frames seen by opcode; one shared tuple of zeros until the first
        #: frame (an idle session's two observers hold no list of their own).
        self.frames: list[int] | tuple[int, ...] = NO_FRAMES
        self.close_code: int | None = None
        self.close_reason = ""
        self.error: str | None = None
        #: Called once, when this direction's first close frame is complete.
        self.on_close: Callable[[], None] | None = None

    @property
    def in_frame(self) -> bool:
        """True while a frame has started but not ended (no boundary here).

        Also True while bytes are ``pending``: where the stream ends is not
        known until they are parsed.
        """
        return (
            self._skip > 0
            or bool(self._head)
            or self._close_remaining > 0
            or self._pending is not None
        )

    @property
    def pending(self) -> bool:
        """Bytes already counted (and relayed) whose frames are not parsed yet."""
        return self._pending is not None

    @property
    def frame_count(self) -> int:
        return sum(self.frames)

    @property
    def saw_close(self) -> bool:
        return self.close_code is not None

    def feed(self, data: bytes) -> bool:
        """Observe the next chunk of this direction's stream.

        Returns False when the budget ran out first: the unparsed rest is
        kept and :meth:`resume` parses it.  The caller should stop reading
        this direction until then; a chunk fed meanwhile is queued behind it.
        """
        size = len(data)
        self.bytes += size
        if self.error is not None:
            return True
        if self._pending is not None:
            self._pending = self._pending[self._pending_pos :] + data
            self._pending_pos = 0
            return self.resume()
        skip = self._skip
        if skip >= size and self._close_remaining == 0:
            self._skip = skip - size  # the common case: deep inside a payload
            return True
        pos = 0
        if self._close_remaining:
            pos = self._take_close_payload(data, 0)
            if pos == size:
                return True
        elif skip:
            pos = skip
            self._skip = 0
        if self._head:
            data = self._head + data[pos:]
            self._head = b""
            pos = 0
        return self._parse(data, pos)

    def successor(self) -> FrameObserver:
        """A fresh observer for the rest of this stream, from a frame boundary
        (no budget, no counts): it knows whether a fragmented message is in
        progress, so the next continuation frame is no violation."""
        follower = FrameObserver(client_side=bool(self._want_mask), allowed_rsv=self._allowed_rsv)
        follower._fragmented = self._fragmented
        return follower

    def feed_to_boundary(self, data: bytes) -> int:
        """Observe ``data`` only up to the end of the frame in progress.

        Returns how many bytes were taken: ``len(data)`` when the frame goes
        on past the chunk, else the offset of the first frame boundary (0 at
        one already).  Bytes still ``pending`` must be parsed first
        (:meth:`resume`).  Every call parses at most one frame header, so the
        budget's floor always covers it.
        """
        assert self._pending is None
        size = len(data)
        pos = 0
        while pos < size and self.in_frame and self.error is None:
            if self._head:
                step = 1  # a header split across reads: complete it byte by byte
            elif self._close_remaining:
                step = min(self._close_remaining, size - pos)
            else:
                step = min(self._skip, size - pos)
            self.feed(data[pos : pos + step])
            pos += step
        return pos if not self.in_frame else size

    def resume(self) -> bool:
        """Parse more of the pending bytes; True once none are left."""
        data = self._pending
        if data is None:
            return True
        self._pending = None
        return self._parse(data, self._pending_pos)

    def _parse(self, data: bytes, pos: int) -> bool:
        """Frame headers from ``pos`` on, as many as the budget grants."""
        size = len(data)
        budget = self._budget
        limit = budget.grant() if budget is not None else -1
        parsed = 0
        while pos < size and self.error is None:
            if parsed == limit:
                assert budget is not None
                budget.spend(parsed)
                self._pending = data
                self._pending_pos = pos
                return False
            pos = self._frame(data, pos, size)
            parsed += 1
        if budget is not None:
            budget.spend(parsed)
        return True

    def _frame(self, data: bytes, pos: int, size: int) -> int:
        """Parse one frame header at ``pos``; return where the next one starts.

        Returns ``size`` when the header or the payload runs past the chunk
        (state saved for the next feed) and -1 on a protocol error.
        """
        available = size - pos
        if available < 2:
            self._head = data[pos:]
            return size
        first = data[pos]
        second = data[pos + 1]
        length = second & 0x7F
        header = 2
        if length == 126:
            header = 4
        elif length == 127:
            header = 10
        mask_bit = second & 0x80
        if mask_bit:
            header += 4
        if available < header:
            self._head = data[pos:]
            return size
        if length == 126:
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        elif length == 127:
            length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            if length >> 63:
                return self._fail("64-bit payload length with the most significant bit set")
        opcode = first & 0x0F
        fin = first & 0x80
        # Counted before it is judged: a malformed frame is still a frame seen.
        frames = self.frames
        if isinstance(frames, tuple):
            frames = self.frames = [0] * 16
        frames[opcode] += 1
        if first & 0x70 & ~self._allowed_rsv:
            return self._fail("reserved bits set without a negotiated extension")
        if first & RSV1 and (opcode == 0 or opcode >= 0x8):
            # RFC 7692 §6.1: RSV1 marks a compressed message on its first
            # frame only; continuation and control frames must not set it.
            return self._fail("RSV1 set on a continuation or control frame")
        if mask_bit != self._want_mask:
            return self._fail("unmasked client frame" if self._want_mask else "masked server frame")
        if opcode >= 0x8:
            if opcode > 0xA:
                return self._fail(f"reserved control opcode {opcode:#x}")
            if length > 125:
                return self._fail("control frame longer than 125 bytes")
            if not fin:
                return self._fail("fragmented control frame")
        elif opcode == 0:
            if not self._fragmented:
                return self._fail("continuation frame without a message to continue")
        elif opcode > 0x2:
            return self._fail(f"reserved data opcode {opcode:#x}")
        elif self._fragmented:
            return self._fail("new data frame inside a fragmented message")
        if opcode < 0x8:
            self._fragmented = not fin
            if fin:
                self.messages += 1
        pos += header
        if opcode == 0x8 and self.close_code is None:
            self._close_buffer = bytearray()
            self._close_mask = data[pos - 4 : pos] if mask_bit else b""
            self._close_remaining = length
            return self._take_close_payload(data, pos)
        end = pos + length
        if end > size:
            self._skip = end - size
            return size
        return end

    def _take_close_payload(self, data: bytes, pos: int) -> int:
        buffer = self._close_buffer
        assert buffer is not None
        taken = data[pos : pos + self._close_remaining]
        buffer += taken
        self._close_remaining -= len(taken)
        if self._close_remaining == 0:
            self._read_close(bytes(buffer))
        return pos + len(taken)

    def _read_close(self, payload: bytes) -> None:
        self._close_buffer = None
        if self._close_mask:
            mask = self._close_mask
            payload = bytes(byte ^ mask[i & 3] for i, byte in enumerate(payload))
        if len(payload) == 1:
            self.error = "close frame with a 1-byte payload"
            return
        if payload:
            self.close_code = int.from_bytes(payload[:2], "big")
            self.close_reason = payload[2:].decode("utf-8", errors="replace")
        else:
            self.close_code = NO_STATUS_CODE
        if self.on_close is not None:
            self.on_close()

    def _fail(self, reason: str) -> int:
        self.error = reason
        self._skip = 0
        self._head = b""
        self._pending = None
        return -1


class ByteCounter(FrameObserver):
    """The observer switched off (``proxy.observe_frames: false``): bytes only.

    Frames, messages and close codes stay at zero / unknown, so sessions end
    with code 1006 and ``closed_by`` from FIN or reset alone.
    """

    __slots__ = ()

    def feed(self, data: bytes) -> bool:
        self.bytes += len(data)
        return True
