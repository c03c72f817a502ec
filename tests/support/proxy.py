"""Starting the real proxy in-process on loopback port 0."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator

import pytest

from wsproxy.config import parse_config
from wsproxy.server import ProxyServer

REQUIRE_ENV = "WSPROXY_REQUIRE_SYSTEM_PROGRAMS"


def config_text(
    upstream_port: int, extra: str = "", route_extra: str = "", upstream_extra: str = ""
) -> str:
    """The minimal configuration, on port 0, plus optional YAML additions.

    ``upstream_extra`` goes under ``upstreams.app`` (indent 4), ``route_extra``
    under the route (indent 4), ``extra`` at the top level.
    """
    return f"""\
listen:
  - host: 127.0.0.1
    port: 0
admin:
  host: 127.0.0.1
  port: 0
upstreams:
  app:
    servers: ["127.0.0.1:{upstream_port}"]
{upstream_extra}routes:
  - path_prefix: /
    upstream: app
{route_extra}{extra}"""


@contextlib.asynccontextmanager
async def running_proxy(text: str) -> AsyncIterator[tuple[ProxyServer, int]]:
    server = ProxyServer(parse_config(text, "test.yaml"))
    await server.start()
    try:
        yield server, server.addresses[0][1]
    finally:
        await server.stop()


def need_program(name: str) -> str:
    """Path of a system program; skip (or fail in CI) when it is absent."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if path is None:
        message = (
            f"{name} is not installed (apt-get install {name}); "
            f"{REQUIRE_ENV}=1 makes this a failure"
        )
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path
