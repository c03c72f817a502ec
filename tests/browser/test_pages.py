"""The demo page and the status page in a real browser (headless Chromium).

The demo page's WebSocket echo must work through the proxy in the browser;
the status page must show a session the test opened (found by a unique
request ID) and drop it once it closed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from websockets.sync.client import connect

from tests.support.browser import WAIT, Demo, chromium, running_demo


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    with running_demo() as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


def test_the_demo_pages_websocket_echo_works_through_the_proxy(
    demo: Demo, browser: WebDriver
) -> None:
    browser.get(demo.url)
    wait = WebDriverWait(browser, WAIT)
    wait.until(lambda d: d.find_element(By.ID, "status").text == "open")
    wait.until(lambda d: "echo: first message" in d.find_element(By.ID, "log").text)
    marker = f"marker-{uuid.uuid4().hex}"
    field = browser.find_element(By.ID, "text")
    field.clear()
    field.send_keys(marker)
    browser.find_element(By.CSS_SELECTOR, "#form button").click()
    wait.until(lambda d: f"echo: {marker}" in d.find_element(By.ID, "log").text)
    # The plain request the page made went through as HTTP/1.1.
    wait.until(lambda d: '"http_version":"1.1"' in d.find_element(By.ID, "seen").text)


def _rows(browser: WebDriver, request_id: str) -> int:
    return len(
        browser.find_elements(By.CSS_SELECTOR, f'#sessions [data-request-id="{request_id}"]')
    )


def test_the_status_page_shows_an_open_session_and_drops_it_when_it_closes(
    demo: Demo, browser: WebDriver
) -> None:
    marker = f"status-{uuid.uuid4().hex}"
    browser.get(demo.status_url)
    wait = WebDriverWait(browser, WAIT)
    wait.until(lambda d: "loopback only" in d.find_element(By.ID, "binding").text)
    with connect(
        f"ws://127.0.0.1:{demo.port}/ws?token=secret-{marker}",
        additional_headers={"X-Request-ID": marker, "Cookie": f"session=cookie-{marker}"},
    ) as ws:
        ws.send("hello")
        assert ws.recv(timeout=WAIT) == "hello"
        wait.until(lambda d: _rows(d, marker) == 1)
        row = browser.find_element(By.CSS_SELECTOR, f'#sessions [data-request-id="{marker}"]')
        assert "/ws" in row.text
        page = browser.find_element(By.TAG_NAME, "body").text
        assert f"secret-{marker}" not in page  # no query string
        assert f"cookie-{marker}" not in page
        assert "token" not in row.text
    wait.until(lambda d: _rows(d, marker) == 0)
    assert browser.find_element(By.ID, "error").text == ""
    assert "accepted" in browser.find_element(By.ID, "upgrades").text


def test_the_status_page_lists_a_session_that_keeps_moving_among_the_busiest(
    demo: Demo, browser: WebDriver
) -> None:
    marker = f"busy-{uuid.uuid4().hex}"
    browser.get(demo.status_url)
    wait = WebDriverWait(browser, WAIT)
    with connect(
        f"ws://127.0.0.1:{demo.port}/ws", additional_headers={"X-Request-ID": marker}
    ) as ws:

        def busiest_row(driver: WebDriver) -> bool:
            # Bytes between two refreshes of the page: it shows the most
            # bytes since its previous look.
            ws.send("x" * 2000)
            assert ws.recv(timeout=WAIT) == "x" * 2000
            selector = f'#busiest [data-request-id="{marker}"]'
            return bool(driver.find_elements(By.CSS_SELECTOR, selector))

        wait.until(busiest_row)
        row = browser.find_element(By.CSS_SELECTOR, f'#busiest [data-request-id="{marker}"]')
        assert "/ws" in row.text
    assert browser.find_element(By.ID, "error").text == ""
