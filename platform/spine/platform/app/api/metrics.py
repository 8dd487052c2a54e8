"""``GET /metrics`` on the API, and the middleware that counts every request by route.

A request is labelled with its route template as the router matched it
(``/v1/tasks/{task_id}``); a path no route matched, or one refused before routing (a body
over its limit), takes its template from the OpenAPI document (:func:`match_path`) or is
``unmatched``: a raw path never becomes a label. The latency is the time until the response's
headers were sent, so a streamed answer (SSE) counts its first byte, not its whole life.

``/metrics`` asks for no key, as ``/healthz`` does, and carries no tenant, task id or prompt
(see :mod:`spine.platform.telemetry.labels`); expose the port only to the scraper.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spine.platform.app.api.path_templates import match_path
from spine.platform.telemetry import ProbeSet, http_in_flight, record_http_request, render

__all__ = ["UNMATCHED", "HttpMetrics", "router"]

UNMATCHED = "unmatched"
"""The route label of a request no route or OpenAPI path matched."""

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Answer with this process's metrics in Prometheus's text format (or OpenMetrics)."""
    probes: ProbeSet | None = getattr(request.app.state, "metric_probes", None)
    if probes is not None:
        await probes.refresh()
    body, content_type = render(request.headers.get("accept"))
    return Response(body, media_type=content_type)


class HttpMetrics:
    """ASGI middleware: counts requests by method, route template and status, with latency."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._in_flight = http_in_flight()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answered: list[float] = []
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
                answered.append(time.perf_counter())
            await send(message)

        self._in_flight.inc()
        try:
            await self.app(scope, receive, sending)
        finally:
            self._in_flight.dec()
            ended = answered[0] if answered else time.perf_counter()
            record_http_request(
                scope.get("method", "GET"), _route_of(scope), status[0], ended - started
            )


def _route_of(scope: Scope) -> str:
    route: Any = scope.get("route")
    template = getattr(route, "path", None)
    if isinstance(template, str):
        return template
    app = scope.get("app")
    if app is not None:
        try:
            found = match_path(app, scope.get("path", ""))
        except Exception:  # the OpenAPI document failed to build: no template, no raw path
            found = []
        if found:
            return found[0][0].template
    return UNMATCHED
