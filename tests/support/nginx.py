"""A real nginx in the foreground, configured as the outage in PRODUCT.md had it.

``http11=False`` is the beta configuration: ``Upgrade``/``Connection``
forwarded, no ``proxy_http_version 1.1``, so nginx speaks HTTP/1.0 upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

from tests.support.process import free_port
from tests.support.proxy import need_program

STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def nginx_conf(prefix: Path, port: int, backend_port: int, *, http11: bool) -> str:
    # Every path nginx would otherwise take from its compiled-in defaults
    # (/var/lib/nginx, /var/log/nginx, /run) is moved under the temporary prefix.
    user = "user root;\n" if os.geteuid() == 0 else ""
    version = "            proxy_http_version 1.1;\n" if http11 else ""
    return f"""\
{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{
    worker_connections 64;
}}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{backend_port};
{version}            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
        }}
    }}
}}
"""


def _diagnostics(prefix: Path) -> str:
    parts = []
    for name in ("stderr.log", "error.log"):
        path = prefix / name
        text = path.read_text(errors="replace") if path.exists() else "(absent)"
        parts.append(f"--- nginx {name} ---\n{text}")
    return "\n".join(parts)


async def _port_accepts(port: int) -> bool:
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


@contextlib.asynccontextmanager
async def running_nginx(prefix: Path, backend_port: int, *, http11: bool) -> AsyncIterator[int]:
    """Run nginx in the foreground under ``prefix``; yields its port."""
    nginx = need_program("nginx")
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, port, backend_port, http11=http11))
    # Startup errors go to stderr before nginx has read its error_log directive.
    stderr = os.open(prefix / "stderr.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        process = await asyncio.create_subprocess_exec(
            nginx,
            "-p",
            str(prefix),
            "-c",
            str(conf),
            "-g",
            "daemon off;",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
        )
    finally:
        os.close(stderr)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not await _port_accepts(port):
            if process.returncode is not None:
                raise AssertionError(
                    f"nginx exited with status {process.returncode} before listening on "
                    f"{port}\n{_diagnostics(prefix)}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"nginx did not listen on {port} within {STARTUP_TIMEOUT}s\n"
                    f"{_diagnostics(prefix)}"
                )
            await asyncio.sleep(0.02)  # polling a condition under a deadline
        yield port
        if process.returncode is not None:
            raise AssertionError(
                f"nginx exited with status {process.returncode} during the test\n"
                f"{_diagnostics(prefix)}"
            )
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
