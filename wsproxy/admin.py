"""The admin listener: metrics and health, on its own address, away from traffic.

``/healthz`` answers 200 while the process runs (liveness: restart me if
not).  ``/readyz`` answers 503 while draining or when every server of every
upstream is held out by health (upstreams.health), so a load balancer stops
sending traffic that could only get 502s (readiness); a server whose
``fail_timeout`` passed counts as up again, so it comes back by itself.
``/metrics`` is the Prometheus text format; ``/status.json`` is what the
status page will show.
"""

from __future__ import annotations

import time
from typing import Protocol

from aiohttp import web
from prometheus_client import generate_latest

from wsproxy.observe import Observability
from wsproxy.upstreams.servers import Upstreams

#: Pinned, not CONTENT_TYPE_LATEST: newer prometheus-client releases announce
#: 1.0.0, which older scrapers reject; the body is the 0.0.4 text format.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class AdminView(Protocol):
    """What the admin endpoints read: the server state (wsproxy.server)."""

    @property
    def draining(self) -> bool: ...

    @property
    def observability(self) -> Observability: ...

    @property
    def upstreams(self) -> Upstreams:
        """The current configuration's upstreams."""


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
        now = time.monotonic()
        status = observability.status(now, view.upstreams.states(now), draining=view.draining)
        return web.json_response(status)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status.json", status)
    return app
