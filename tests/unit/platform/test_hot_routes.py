"""The hot routes are answered by their endpoints directly, ahead of FastAPI's own routes."""

from __future__ import annotations

import json
import math

import httpx
import pytest
from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from spine.platform.app.api.hot_routes import FastJSONResponse, serve_directly
from spine.platform.app.api.tasks import submit_task_fast


def app_with(router: APIRouter) -> FastAPI:
    app = FastAPI()

    @app.exception_handler(HTTPException)
    async def shaped(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": {"status": exc.status_code}}, status_code=exc.status_code)

    app.include_router(router)
    return app


async def test_a_hot_path_is_answered_by_its_endpoint_before_fastapis_route() -> None:
    router = APIRouter(prefix="/v1")
    seen: list[tuple[bool, str | None]] = []

    @router.post("/chat/completions", response_model=None)
    async def complete(request: Request) -> Response:
        route = request.scope.get("route")
        seen.append((isinstance(route, APIRoute), getattr(route, "path", None)))
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
    # FastAPI's route did not answer; the direct one names itself in the scope, with the
    # template the metrics label the request by. The path stays in the OpenAPI document.
    assert seen == [(False, "/v1/chat/completions")] * 2
    assert "/v1/chat/completions" in schema["paths"]


def test_a_hot_endpoint_that_needs_fastapis_arguments_is_refused() -> None:
    router = APIRouter(prefix="/v1")

    @router.post("/embeddings", response_model=None)
    async def embed(request: Request, model: str) -> Response:
        return JSONResponse({})

    with pytest.raises(TypeError, match="/v1/embeddings"):
        serve_directly(app_with(router), router)


class Thing(BaseModel):
    name: str
    fast: bool = False


async def test_a_fast_handler_answers_what_it_can_and_fastapis_route_the_rest() -> None:
    router = APIRouter(prefix="/v1")

    @router.post("/things", status_code=201)
    async def create(thing: Thing) -> Thing:
        return thing

    async def fast(request: Request) -> Response | None:
        try:
            thing = Thing.model_validate_json(await request.body())
        except ValidationError:
            return None
        if not thing.fast:
            return None
        return JSONResponse(thing.model_dump(), status_code=201, headers={"X-Fast": "1"})

    app = FastAPI()
    app.include_router(router)
    serve_directly(app, router, fast={("/v1/things", "POST"): fast})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        quick = await client.post("/v1/things", json={"name": "a", "fast": True})
        declined = await client.post("/v1/things", json={"name": "b"})
        invalid = await client.post("/v1/things", json={"name": 5})
    assert (quick.status_code, quick.json(), quick.headers.get("x-fast")) == (
        201,
        {"name": "a", "fast": True},
        "1",
    )
    # FastAPI's route read the body the fast handler had read already.
    assert (declined.status_code, declined.json(), declined.headers.get("x-fast")) == (
        201,
        {"name": "b", "fast": False},
        None,
    )
    assert invalid.status_code == 422 and invalid.json()["detail"][0]["loc"] == ["body", "name"]


def test_a_fast_handler_for_a_route_that_does_not_exist_is_refused() -> None:
    async def fast(request: Request) -> Response | None:
        return None

    router = APIRouter(prefix="/v1")
    with pytest.raises(TypeError, match="/v1/missing"):
        serve_directly(app_with(router), router, fast={("/v1/missing", "POST"): fast})


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"content-type": "text/plain"}, b'{"agent": "chat", "input": {}}'),
        ({}, b'{"agent": "chat", "input": {}}'),  # no content type: FastAPI does not decode it
        ({"content-type": "application/json"}, b'{"agent": "chat"'),  # not JSON
        ({"content-type": "application/json"}, b"\xff\xfe"),  # not UTF-8
        ({"content-type": "application/json"}, b"[]"),
        ({"content-type": "application/json"}, b'{"input": {}}'),  # no agent
        ({"content-type": "application/json", "idempotency-key": "k" * 256}, b'{"agent": "c"}'),
    ],
)
async def test_a_submission_fastapi_must_refuse_is_declined_before_anything_happens(
    headers: dict[str, str], body: bytes
) -> None:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/tasks",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    # No platform, no key: declining must come before authentication and the dispatcher.
    assert await submit_task_fast(Request(scope, receive)) is None


async def test_two_idempotency_keys_are_left_to_fastapi() -> None:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/tasks",
        "headers": [
            (b"content-type", b"application/json"),
            (b"idempotency-key", b"a"),
            (b"idempotency-key", b"b"),
        ],
    }

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b'{"agent": "chat"}', "more_body": False}

    assert await submit_task_fast(Request(scope, receive)) is None


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(st.characters(exclude_categories=["Cs"])), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_a_fast_json_answer_reads_back_as_the_value_json_response_writes(value: object) -> None:
    fast, plain = bytes(FastJSONResponse(value).body), bytes(JSONResponse(value).body)
    assert json.loads(fast) == json.loads(plain) == value


def test_a_fast_json_answer_is_byte_for_byte_a_json_responses_and_writes_no_nan() -> None:
    body = {
        "id": "chatcmpl-1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": 'né 🙂 "q"\n'}}],
        "usage": {"prompt_tokens": 3, "total_tokens": 5},
        "system_fingerprint": None,
    }
    assert FastJSONResponse(body).body == JSONResponse(body).body
    # json.dumps refuses a non-finite number (the answer would be a 500); JSON has no NaN.
    with pytest.raises(ValueError, match="Out of range float values"):
        JSONResponse({"logprob": math.nan})
    assert FastJSONResponse({"logprob": math.nan, "top": math.inf}).body == (
        b'{"logprob":null,"top":null}'
    )
