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


#: The front and admin listeners on loopback, each on a free port.
LISTENERS_ON_PORT_0 = """\
listen:
  - host: 127.0.0.1
    port: 0
admin:
  host: 127.0.0.1
  port: 0
"""


def config_text(
    upstream_port: int,
    extra: str = "",
    route_extra: str = "",
    upstream_extra: str = "",
    path_prefix: str = "/",
) -> str:
    """The minimal configuration, on port 0, plus optional YAML additions.

    ``upstream_extra`` goes under ``upstreams.app`` (indent 4), ``route_extra``
    under the route (indent 4), ``extra`` at the top level; ``path_prefix`` is
    the one route's.
    """
    return f"""\
{LISTENERS_ON_PORT_0}upstreams:
  app:
    servers: ["127.0.0.1:{upstream_port}"]
{upstream_extra}routes:
  - path_prefix: {path_prefix}
    upstream: app
{route_extra}{extra}"""


def two_upstreams_text(app_port: int, dead_port: int, extra: str = "") -> str:
    """Upstream ``app`` behind ``/`` and upstream ``dead`` behind ``/dead``, on port 0."""
    return f"""\
{LISTENERS_ON_PORT_0}upstreams:
  app:
    servers: ["127.0.0.1:{app_port}"]
  dead:
    servers: ["127.0.0.1:{dead_port}"]
routes:
  - path_prefix: /
    upstream: app
  - path_prefix: /dead
    upstream: dead
{extra}"""


@contextlib.asynccontextmanager
async def running_proxy(text: str) -> AsyncIterator[tuple[ProxyServer, int]]:
    server = ProxyServer(parse_config(text, "test.yaml"))
    await server.start()
    try:
        yield server, server.addresses[0][1]
    finally:
        await server.stop()


def need_program(name: str, package: str | None = None) -> str:
    """Path of a system program; skip (or fail in CI) when it is absent.
    ``package``: the Debian package that has it, when not ``name``."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if path is None:
        message = (
            f"{name} is not installed (apt-get install {package or name}); "
            f"{REQUIRE_ENV}=1 makes this a failure"
        )
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path
