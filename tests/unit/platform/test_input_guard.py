"""The input guard hands the routes the JSON body it decoded and checked, and only that."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from spine.platform.app.api.input_guard import InputGuard, checked_json
from spine.platform.inputs import MAX_JSON_DEPTH


def guarded(guard_depth: int, route_depth: int) -> tuple[Starlette, list[tuple[Any, bytes]]]:
    seen: list[tuple[Any, bytes]] = []

    async def echo(request: Request) -> Response:
        seen.append((checked_json(request.scope, max_depth=route_depth), await request.body()))
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
    app.add_middleware(InputGuard, max_depth=guard_depth)
    return app, seen


async def post(app: Starlette, content: bytes, content_type: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://guarded") as client:
        return await client.post("/echo", content=content, headers={"content-type": content_type})


async def test_a_checked_body_reaches_the_route_decoded_beside_its_bytes() -> None:
    app, seen = guarded(MAX_JSON_DEPTH, MAX_JSON_DEPTH)
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    assert (await post(app, raw, "application/json")).status_code == 200
    assert seen == [({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, raw)]


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b"{not json", "application/json"),  # the route refuses it in its own words
        (b'{"a": 1}', "text/plain"),  # not a JSON body: never decoded
        (b"", "application/json"),
    ],
)
async def test_what_the_guard_did_not_decode_is_not_handed_on(
    raw: bytes, content_type: str
) -> None:
    app, seen = guarded(MAX_JSON_DEPTH, MAX_JSON_DEPTH)
    assert (await post(app, raw, content_type)).status_code == 200
    assert seen == [(None, raw)]


async def test_a_body_checked_to_a_deeper_bound_than_the_routes_is_not_trusted() -> None:
    app, seen = guarded(guard_depth=64, route_depth=8)
    raw = b'{"a": {"b": 1}}'
    assert (await post(app, raw, "application/json")).status_code == 200
    assert seen == [(None, raw)]
    shallower, seen = guarded(guard_depth=8, route_depth=64)
    assert (await post(shallower, raw, "application/json")).status_code == 200
    assert seen == [({"a": {"b": 1}}, raw)]


async def test_a_body_the_guard_refuses_never_reaches_the_route() -> None:
    app, seen = guarded(MAX_JSON_DEPTH, MAX_JSON_DEPTH)
    answer = await post(app, b'{"text": "a\\u0000b"}', "application/json")
    assert answer.status_code == 400
    assert answer.json()["error"]["field"] == "text"
    assert seen == []
