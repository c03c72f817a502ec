"""Run every async test on both event loops wsproxy runs on.

``wsproxy serve`` uses uvloop where it is installed and asyncio otherwise;
their transports differ (uvloop's are not ``asyncio.Transport`` subclasses,
flow-control timing differs), so the suite exercises both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": asyncio.new_event_loop
    }
    try:
        import uvloop
    except ImportError:
        return factories
    factories["uvloop"] = uvloop.new_event_loop
    return factories
