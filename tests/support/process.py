"""wsproxy as a user runs it: a subprocess, its stderr in a file, its exit status."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

# One picker for the tests and the benches (bench/ is a namespace package here).
from bench.procs import free_port as free_port

#: How long a subprocess may take to start listening or to answer.
TIMEOUT = 10.0
#: How long after a stop signal the process must have exited.
STOP_TIMEOUT = 5.0


class Process:
    """A wsproxy subprocess with stderr in a file, for failure messages."""

    def __init__(self, process: asyncio.subprocess.Process, stderr: Path) -> None:
        self.process = process
        self.stderr_path = stderr

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def wait_listening(self, port: int) -> None:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                pass
            else:
                writer.close()
                await writer.wait_closed()
                return
            if self.process.returncode is not None:
                raise AssertionError(
                    f"wsproxy exited with {self.process.returncode} before listening on {port}:\n"
                    f"{self.stderr()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"wsproxy not listening on {port}:\n{self.stderr()}")
            await asyncio.sleep(0.02)  # polling a condition under a deadline

    async def stop(self, signum: int, within: float = STOP_TIMEOUT) -> int:
        """Send ``signum``; the exit status, which must come ``within`` seconds."""
        self.process.send_signal(signum)
        try:
            async with asyncio.timeout(within):
                await self.process.communicate()
        except TimeoutError:
            raise AssertionError(
                f"wsproxy still running {within}s after signal {signum}:\n{self.stderr()}"
            ) from None
        assert self.process.returncode is not None
        return self.process.returncode


@contextlib.asynccontextmanager
async def spawn(cmd: list[str], *args: str, stderr: Path) -> AsyncIterator[Process]:
    fd = os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        process = await asyncio.create_subprocess_exec(
            *cmd,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=fd,
        )
    finally:
        os.close(fd)
    try:
        yield Process(process, stderr)
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()
