"""Headless Chromium (Debian's, through its chromedriver) and a running demo.

Selenium is blocking, so the pages are served by a ``wsproxy demo``
subprocess, never by a proxy on the test's own event loop.  Every wait is a
DOM condition under a deadline (WebDriverWait), never a sleep.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from tests.support.process import free_port
from tests.support.proxy import need_program

#: How long a page may take to show what a test waits for.
WAIT = 15.0

_URL = re.compile(r"http://localhost:(\d+)/")


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[WebDriver]:
    """A headless Chromium; skipped (failed in CI) where it is not installed."""
    binary = need_program("chromium")
    driver_path = need_program("chromedriver", package="chromium-driver")
    options = Options()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",  # as root, in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@dataclass
class Demo:
    process: subprocess.Popen[str]
    port: int
    admin_port: int

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}/"

    @property
    def status_url(self) -> str:
        return f"http://localhost:{self.admin_port}/"


def _lines(process: subprocess.Popen[str], count: int) -> list[str]:
    """The demo's next ``count`` lines on stdout, within WAIT (a demo that
    stalls fails the test instead of hanging it)."""
    assert process.stdout is not None
    stdout = process.stdout
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(stdout.readline() for _ in range(count)), daemon=True
    )
    reader.start()
    reader.join(WAIT)
    assert len(lines) == count, f"wsproxy demo said {lines!r} within {WAIT}s"
    return lines


@contextlib.contextmanager
def running_demo() -> Iterator[Demo]:
    """``wsproxy demo`` on a free port; its two first lines give both URLs."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "wsproxy", "demo", "--port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        assert process.stdout is not None
        first, second = _lines(process, 2)
        ports = [int(m[1]) for m in (_URL.search(first), _URL.search(second)) if m]
        assert len(ports) == 2, f"the demo said {first!r} {second!r}"
        assert ports[0] == port
        yield Demo(process, port, ports[1])
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
