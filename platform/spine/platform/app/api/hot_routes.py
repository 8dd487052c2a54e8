"""The hottest routes, answered without FastAPI's per-request machinery.

FastAPI answers a request by walking its included routers to the route, then building the
endpoint's arguments from its declared parameters (the body validated into a model, the
headers, the dependencies), then serializing the answer. On the hottest paths that is a large
share of the API's own work, measured with two API processes on one stack, calls interleaved:

- ``POST /v1/chat/completions``: p50 2.87 ms answered from a direct route, 3.08 ms through
  FastAPI's. Its endpoint (and ``POST /v1/embeddings``'s) takes the request alone and reads the
  body itself, so a plain Starlette route calls it with nothing lost.
- ``POST /v1/tasks``: 0.495 ms of API CPU per submit answered directly, 0.625 ms through
  FastAPI's route (3,000 submits per round, six rounds). Its *fast handler*
  (:func:`~spine.platform.app.api.tasks.submit_task_fast`) answers a well-formed request as the
  route would, and declines anything else (``None``): FastAPI's own route then answers it, from
  the body already read, so every refusal is FastAPI's, word for word.

Their answers are rendered by pydantic-core (:class:`FastJSONResponse`), as FastAPI renders its
response models: 1.0 µs for a chat completion's body against 5.3 µs through ``json.dumps``.

The direct routes are placed first in the app's router. The middlewares are the same, and so
are the exception handlers (the router stays inside the app's exception middleware); FastAPI's
routes stay behind them, for the OpenAPI document and for what a fast handler declines.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pydantic_core
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from spine.platform.app.api.input_guard import replay

__all__ = ["HOT_PATHS", "FastHandler", "FastJSONResponse", "serve_directly"]

HOT_PATHS = frozenset({"/v1/chat/completions", "/v1/embeddings"})
"""Paths whose endpoints take the request alone: called directly, always."""

FastHandler = Callable[[Request], Awaitable[Response | None]]
"""Answers a request its route would answer the same way, or declines it with None."""


class FastJSONResponse(JSONResponse):
    """A JSON answer rendered by pydantic-core: the bytes ``JSONResponse`` gives for plain JSON
    values (compact, UTF-8), at a fifth of the cost. A non-finite number is written as null,
    where ``JSONResponse`` fails the answer with a 500."""

    def render(self, content: Any) -> bytes:
        return pydantic_core.to_json(content, inf_nan_mode="null")


class _FastOrFastAPI:
    """ASGI app: the fast handler's answer, else FastAPI's route's, from the body read."""

    def __init__(self, fast: FastHandler, route: APIRoute) -> None:
        self.fast = fast
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        response = await self.fast(request)
        if response is None:
            body = await request.body()
            await self.route.handle(scope, replay(body, receive), send)
            return
        await response(scope, receive, send)


class _Direct(Route):
    """A Starlette route that names itself in the scope, as FastAPI's routes do: the metrics
    label a request with the route's template from there, without matching the path again."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.NONE:
            child["route"] = self
        return match, child


def serve_directly(
    app: FastAPI,
    *routers: APIRouter,
    fast: Mapping[tuple[str, str], FastHandler] | None = None,
) -> list[Route]:
    """Put direct routes first in ``app``: one for each of :data:`HOT_PATHS` the ``routers``
    hold, and one for each ``(path, method)`` of ``fast`` (FastAPI's route for it answers
    what its handler declines).

    Raises:
        TypeError: A hot endpoint takes more than the request (a change to its signature must
            come here too), or ``fast`` names a route the routers do not hold.
    """
    fast = dict(fast or {})
    direct: list[Route] = []
    for router in routers:
        for route in router.routes:
            if not isinstance(route, APIRoute):
                continue
            for method in sorted(route.methods or ()):
                handler = fast.pop((route.path, method), None)
                if handler is not None:
                    app_ = _FastOrFastAPI(handler, route)
                    direct.append(_Direct(route.path, app_, methods=[method]))
            if route.path not in HOT_PATHS:
                continue
            if list(inspect.signature(route.endpoint).parameters) != ["request"]:
                raise TypeError(
                    f"{route.path} is served without FastAPI: its endpoint must take the "
                    "request alone"
                )
            direct.append(_Direct(route.path, route.endpoint, methods=sorted(route.methods or ())))
    if fast:
        raise TypeError(f"no route for the fast handlers of {sorted(fast)}")
    app.router.routes[0:0] = direct
    return direct
