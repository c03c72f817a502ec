"""The allocator settings ``wsproxy serve`` applies (wsproxy.memory)."""

from __future__ import annotations

import platform
import sys

import pytest

from wsproxy.memory import tune_malloc


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt thresholds are glibc's",
)
def test_glibc_thresholds_are_raised() -> None:
    assert tune_malloc() is True


@pytest.mark.parametrize("name", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"])
def test_an_operators_environment_wins(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "131072")
    assert tune_malloc() is False
