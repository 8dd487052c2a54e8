"""The floor of any gateway in this stack: a pass-through with no gateway logic at all.

The same HTTP server as ``spine api`` (uvicorn with httptools) and the same upstream client as
its OpenAI-compatible provider (one aiohttp session, keep-alive): it forwards the request body
to the upstream and returns the answer. No authentication, validation, routing, cache, budget
or usage row. What it adds to a direct call is what one more Python HTTP hop costs on this
machine, measured in the same run as the gateways, so the gateway's own cost is what it adds
beyond this.

Run as ``python bench/_passthrough.py UPSTREAM_BASE_URL PORT``.
"""

from __future__ import annotations

import sys
from typing import Any


def create_app(upstream: str) -> Any:
    """A Starlette app forwarding ``POST /v1/chat/completions`` to ``upstream``."""
    import aiohttp
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    session: dict[str, aiohttp.ClientSession] = {}

    async def forward(request: Request) -> Response:
        body = await request.body()
        async with session["upstream"].post(
            f"{upstream}/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as answer:
            payload = await answer.read()
            return Response(payload, status_code=answer.status, media_type="application/json")

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def lifespan(app: Any) -> Any:
        session["upstream"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=120)
        )
        yield
        await session["upstream"].close()

    return Starlette(
        routes=[
            Route("/v1/chat/completions", forward, methods=["POST"]),
            Route("/healthz", healthz),
        ],
        lifespan=lifespan,
    )


def main() -> None:
    import uvicorn

    upstream, port = sys.argv[1], int(sys.argv[2])
    uvicorn.run(
        create_app(upstream),
        host="127.0.0.1",
        port=port,
        http="httptools",
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
