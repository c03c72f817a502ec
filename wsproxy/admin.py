"""The admin listener: metrics and health, on its own address, away from traffic.

``/healthz`` answers 200 while the process runs (liveness: restart me if
not).  ``/readyz`` answers 503 while draining or when every server of every
upstream is held out by health (upstreams.health), so a load balancer stops
sending traffic that could only get 502s (readiness); a server whose
``fail_timeout`` passed counts as up again, so it comes back by itself.
``/metrics`` is the Prometheus text format; ``/`` is the status page for
people (``static/status.html`` and ``status.js``: no CDN, no inline script,
a Content-Security-Policy that allows only this origin), which polls
``/status.json``.

A worker among several serves the same application on a Unix socket, to the
supervisor only (wsproxy.workers), plus ``POST /publish``: write the
metrics counted in plain integers to the multiprocess files, so the
supervisor's scrape that follows is exact.
"""

from __future__ import annotations

import ipaddress
import re
import time
from importlib import resources
from typing import Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest, multiprocess

from wsproxy.observe import LISTED_SESSIONS, MAX_LISTED_SESSIONS, Observability
from wsproxy.upstreams.servers import Upstreams

#: Pinned, not CONTENT_TYPE_LATEST: newer prometheus-client releases announce
#: 1.0.0, which older scrapers reject; the body is the 0.0.4 text format.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


#: The page may load only its own script and ask only its own origin; its
#: style is inline.  Data reaches the page as text nodes, never as markup.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; "
    "style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def _static(name: str) -> bytes:
    return resources.files("wsproxy").joinpath("static", name).read_bytes()


def admin_binding(host: str) -> dict[str, object]:
    """Where the admin listener is bound, as the status page says it."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    return {"host": host, "loopback_only": loopback}


def _status_response(status: dict[str, object], admin_host: str) -> web.Response:
    """``/status.json``: the document, where the admin listener is bound, never cached."""
    status["admin"] = admin_binding(admin_host)
    return web.json_response(status, headers={"Cache-Control": "no-store"})


def _add_page(app: web.Application) -> None:
    """``GET /`` and its script, with headers that keep it to itself."""
    page, script = _static("status.html"), _static("status.js")
    headers = {
        "Content-Security-Policy": PAGE_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8", headers=headers)

    async def js(request: web.Request) -> web.Response:
        return web.Response(
            body=script, content_type="text/javascript", charset="utf-8", headers=headers
        )

    app.router.add_get("/", index)
    app.router.add_get("/status.js", js)


class AdminView(Protocol):
    """What the admin endpoints read: the server state (wsproxy.server)."""

    @property
    def draining(self) -> bool: ...

    @property
    def admin_host(self) -> str:
        """The admin listener's configured host."""

    @property
    def observability(self) -> Observability: ...

    @property
    def upstreams(self) -> Upstreams:
        """The current configuration's upstreams."""


class SupervisorView(Protocol):
    """What the admin endpoints read with several workers (wsproxy.workers)."""

    @property
    def draining(self) -> bool: ...

    @property
    def admin_host(self) -> str: ...

    @property
    def metrics_dir(self) -> str:
        """prometheus-client's multiprocess directory."""

    async def publish(self) -> None:
        """Every worker writes its counts to the multiprocess files."""

    async def ready(self) -> tuple[bool, str]: ...

    async def status(self, listed: int) -> dict[str, object]: ...


def supervisor_app(view: SupervisorView) -> web.Application:
    """The admin listener of a supervisor: every worker's metrics and state."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=view.metrics_dir)  # type: ignore[no-untyped-call]

    async def metrics(request: web.Request) -> web.Response:
        await view.publish()
        body = generate_latest(registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = METRICS_CONTENT_TYPE
        return response

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        ready, why = await view.ready()
        return web.Response(status=200 if ready else 503, text=why + "\n")

    async def status(request: web.Request) -> web.Response:
        return _status_response(await view.status(listed_sessions(request)), view.admin_host)

    app = web.Application()
    _add_page(app)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status.json", status)
    return app


_COUNT = re.compile(r"[0-9]{1,4}")


def listed_sessions(request: web.Request) -> int:
    """``?sessions=N``: how many of the newest and of the oldest sessions
    /status.json lists (HTTPBadRequest outside 0..MAX_LISTED_SESSIONS)."""
    text = request.query.get("sessions")
    if text is None:
        return LISTED_SESSIONS
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
    if not _COUNT.fullmatch(text) or int(text) > MAX_LISTED_SESSIONS:
        raise web.HTTPBadRequest(
            text=f"sessions must be a number from 0 to {MAX_LISTED_SESSIONS}\n"
        )
    return int(text)


def admin_app(view: AdminView) -> web.Application:
    observability = view.observability

    async def metrics(request: web.Request) -> web.Response:
        view.upstreams.health.refresh(time.monotonic())
        body = generate_latest(observability.metrics.registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = METRICS_CONTENT_TYPE
        return response

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        if view.draining:
            return web.Response(status=503, text="draining\n")
        if view.upstreams.all_down(time.monotonic()):
            return web.Response(status=503, text="every upstream server is down\n")
        return web.Response(text="ready\n")

    async def status(request: web.Request) -> web.Response:
        listed = listed_sessions(request)
        now = time.monotonic()
        status = observability.status(
            now, view.upstreams.states(now), draining=view.draining, listed=listed
        )
        return _status_response(status, view.admin_host)

    app = web.Application()
    _add_page(app)
    publisher = observability.metrics.publisher
    if publisher is not None:

        async def publish(request: web.Request) -> web.Response:
            view.upstreams.health.refresh(time.monotonic())
            publisher.publish()
            return web.Response(text="published\n")

        app.router.add_post("/publish", publish)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status.json", status)
    return app
