"""The test and bench port pickers never name one port twice.

A listener and its admin took two ports from two calls; the kernel can give
the same port to both once the probe socket is closed, and wsproxy then
refused the configuration (a CI run failed so).  The kernel here is faked to
repeat itself: a real one does so too rarely to test.
"""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support import process

ROOT = Path(__file__).resolve().parents[2]


def _bench_procs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_procs", ROOT / "bench" / "procs.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


@pytest.mark.parametrize("module", [process, _bench_procs()], ids=["tests", "bench"])
def test_a_port_the_kernel_repeats_is_not_handed_out_again(
    module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module, "_GIVEN", set())
    monkeypatch.setattr(socket, "socket", _RepeatingKernel([40001, 40001, 40001, 40002]))
    pick: Callable[[], int] = module.free_port
    assert [pick(), pick()] == [40001, 40002]
