"""The hot routes are answered by their endpoints directly, ahead of FastAPI's own routes."""

from __future__ import annotations

import httpx
import pytest
from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from spine.platform.app.api.hot_routes import serve_directly


def app_with(router: APIRouter) -> FastAPI:
    app = FastAPI()

    @app.exception_handler(HTTPException)
    async def shaped(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": {"status": exc.status_code}}, status_code=exc.status_code)

    app.include_router(router)
    return app


async def test_a_hot_path_is_answered_by_its_endpoint_before_fastapis_route() -> None:
    router = APIRouter(prefix="/v1")
    seen: list[str] = []

    @router.post("/chat/completions", response_model=None)
    async def complete(request: Request) -> Response:
        seen.append(type(request.scope.get("route")).__name__)
        if await request.body() == b"refuse":
            raise HTTPException(status_code=413)
        return JSONResponse({"answered": True})

    @router.post("/other", response_model=None)
    async def other(request: Request) -> Response:
        return JSONResponse({"other": True})

    app = app_with(router)
    direct = serve_directly(app, router)
    assert [r.path for r in direct] == ["/v1/chat/completions"]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        answered = await client.post("/v1/chat/completions", content=b"{}")
        refused = await client.post("/v1/chat/completions", content=b"refuse")
        wrong_method = await client.get("/v1/chat/completions")
        untouched = await client.post("/v1/other")
        schema = (await client.get("/openapi.json")).json()
    assert answered.json() == {"answered": True}
    # The app's exception handlers still shape what the endpoint raises.
    assert refused.status_code == 413 and refused.json() == {"error": {"status": 413}}
    assert wrong_method.status_code == 405
    assert untouched.json() == {"other": True}
    # FastAPI's route did not answer (it names itself in the scope), and the path stays in the
    # OpenAPI document.
    assert seen == ["NoneType", "NoneType"]
    assert "/v1/chat/completions" in schema["paths"]


def test_a_hot_endpoint_that_needs_fastapis_arguments_is_refused() -> None:
    router = APIRouter(prefix="/v1")

    @router.post("/embeddings", response_model=None)
    async def embed(request: Request, model: str) -> Response:
        return JSONResponse({})

    with pytest.raises(TypeError, match="/v1/embeddings"):
        serve_directly(app_with(router), router)
