"""Random valid requests through the proxy, pipelined and split at random points.

Hypothesis draws a batch of requests (methods, normalized targets with
queries, header sets, bodies framed by ``Content-Length`` or chunked with
random chunk sizes), the byte stream is cut at random offsets and written
piece by piece, and the backend must receive each request byte-equivalent
after the documented rewrites (headers.upstream_request_headers): the same
request line (as HTTP/1.1), the same end-to-end headers in the same order,
then ``X-Forwarded-*`` and ``X-Request-ID``, the body whole, re-chunked when it
came chunked.  Each example runs its own proxy and backend on a fresh loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.http_backends import RecordingBackend, read_response
from tests.support.proxy import config_text, running_proxy

#: Names the proxy rewrites or that frame the message: not drawn as "other" headers.
_RESERVED = {
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
}

_names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True).filter(
    lambda name: name.lower() not in _RESERVED
)
_values = st.from_regex(r"[!-~]([ -~]{0,30}[!-~])?", fullmatch=True)
_segment = st.from_regex(r"[A-Za-z0-9_~-]{1,10}", fullmatch=True)
_query = st.from_regex(r"[A-Za-z0-9=&]{0,20}", fullmatch=True)


@dataclass
class Sample:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    framing: str  # "none", "length" or "chunked"
    chunks: list[int]

    def encode(self) -> bytes:
        lines = [f"{self.method} {self.target} HTTP/1.1", "Host: fuzz.example"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        if self.framing == "length":
            lines.append(f"Content-Length: {len(self.body)}")
        elif self.framing == "chunked":
            lines.append("Transfer-Encoding: chunked")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if self.framing != "chunked":
            return head + self.body
        out, rest = [head], self.body
        for size in self.chunks:
            piece, rest = rest[:size], rest[size:]
            if piece:
                out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
        if rest:
            out.append(b"%x\r\n%s\r\n" % (len(rest), rest))
        out.append(b"0\r\n\r\n")
        return b"".join(out)


@st.composite
def samples(draw: st.DrawFn) -> Sample:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]))
    path = "/" + "/".join(draw(st.lists(_segment, max_size=4)))
    query = draw(_query)
    target = path + (f"?{query}" if query else "")
    headers = draw(st.lists(st.tuples(_names, _values), max_size=8))
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    body = b"" if framing == "none" else draw(st.binary(max_size=3000))
    chunks = draw(st.lists(st.integers(1, 700), max_size=6))
    return Sample(method, target, headers, body, framing, chunks)


async def _exchange(batch: list[Sample], cuts: list[int]) -> None:
    stream = b"".join(sample.encode() for sample in batch)
    async with (
        RecordingBackend() as backend,
        running_proxy(config_text(backend.port)) as (_server, port),
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**24)
        try:
            start = 0
            for cut in [*sorted({c % (len(stream) + 1) for c in cuts}), len(stream)]:
                writer.write(stream[start:cut])
                await writer.drain()
                await asyncio.sleep(0)
                start = cut
            async with asyncio.timeout(10):
                for _sample in batch:
                    head, body = await read_response(reader)
                    assert (head.status, body) == (200, b"ok")
        finally:
            writer.close()
    assert len(backend.requests) == len(batch)
    for sample, received in zip(batch, backend.requests, strict=True):
        assert received.head.start_line == f"{sample.method} {sample.target} HTTP/1.1"
        expected = [("Host", "fuzz.example"), *sample.headers]
        if sample.framing == "length":
            expected.append(("Content-Length", str(len(sample.body))))
        names = [name for name, _ in received.head.headers]
        tail = ["X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Request-ID"]
        if sample.framing == "chunked":
            tail.append("Transfer-Encoding")
        assert received.head.headers[: len(expected)] == expected
        assert names[len(expected) :] == tail
        assert received.body == sample.body


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=st.lists(samples(), min_size=1, max_size=5), cuts=st.lists(st.integers(0, 10**6)))
def test_random_valid_requests_arrive_byte_equivalent(batch: list[Sample], cuts: list[int]) -> None:
    asyncio.run(_exchange(batch, cuts))
