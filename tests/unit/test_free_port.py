"""The port picker of the tests and benches never names one port twice.

A listener and its admin took two ports from two calls; the kernel can give
the same port to both once the probe socket is closed, and wsproxy then
refused the configuration (a CI run failed so).  The kernel here is faked to
repeat itself: a real one does so too rarely to test.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from bench import procs


class _RepeatingKernel:
    """socket.socket whose bind to port 0 hands out ports from a fixed list."""

    def __init__(self, ports: list[int]) -> None:
        self.ports: Iterator[int] = iter(ports)

    def __call__(self, *_args: Any) -> _RepeatingKernel._Socket:
        return self._Socket(next(self.ports))

    class _Socket:
        def __init__(self, port: int) -> None:
            self.port = port

        def __enter__(self) -> _RepeatingKernel._Socket:
            return self

        def __exit__(self, *_exc: object) -> None:
            pass

        def bind(self, _address: tuple[str, int]) -> None:
            pass

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)


def test_a_port_the_kernel_repeats_is_not_handed_out_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(procs, "_GIVEN", set())
    monkeypatch.setattr(socket, "socket", _RepeatingKernel([40001, 40001, 40001, 40002]))
    assert [procs.free_port(), procs.free_port()] == [40001, 40002]
