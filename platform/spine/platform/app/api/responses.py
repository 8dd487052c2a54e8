"""OpenAI's Responses API: ``/v1/responses``, served as a chat call through the router.

``POST /v1/responses`` is read and turned into a chat call by
:mod:`spine.platform.models.responses_wire`; from there it is the gateway's call
(:class:`~spine.platform.app.api.gateway.GatewayCall`): the same routing, fallbacks, cache,
budgets, rate limits, usage row and ``X-Spine-*`` headers. The answer is a ``response``
object, or OpenAI's stream of response events. The response id (``resp_...``) is the usage
row's completion id: ``POST /v1/feedback`` rates it as it rates a chat completion.

A response asked with ``store`` (on unless false, as at OpenAI) is kept
(:class:`~spine.platform.responses.ResponseStore`) before it is answered, or before a stream's
``response.completed``: ``previous_response_id`` continues from it at once, and
``GET /v1/responses/{id}``, ``GET /v1/responses/{id}/input_items`` and ``DELETE
/v1/responses/{id}`` read and delete it. Another tenant's response is not found.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from spine.platform.app.api._openai import GatewayError, openai_errors, rate_limited
from spine.platform.app.api.auth import authenticate, platform_of
from spine.platform.app.api.batches import page_limit
from spine.platform.app.api.errors import documented
from spine.platform.app.api.gateway import GatewayCall, gateway_error
from spine.platform.app.api.hot_routes import FastJSONResponse
from spine.platform.app.api.input_guard import checked_json
from spine.platform.errors import BadRequest, NotFound, RateLimited, SpineError
from spine.platform.keys import Principal
from spine.platform.models.responses_wire import (
    ResponseEvents,
    ResponsesRequest,
    answer_message,
    new_response_id,
    response_body,
)
from spine.platform.responses import ResponseStore, StoredResponse

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["gateway"])


@router.post("/responses", response_model=None, responses=documented(404, 429, 499, 502, 503))
async def create_response(request: Request) -> Response:
    """Answer a Responses API request, streamed or not, through the model router."""
    try:
        caller = await authenticate(request)
        asked = ResponsesRequest.parse(await request.body(), checked=checked_json(request.scope))
        store = platform_of(request).responses
        conversation = [*await _continued(store, asked, caller), *asked.input_messages()]
        chat = asked.to_chat(conversation)
        response_id, created = new_response_id()
        call = await GatewayCall.admit(request, caller, chat, response_id)

        async def keep(body: dict[str, Any]) -> None:
            await store.keep(
                tenant=caller.tenant,
                body=body,
                conversation=[*conversation, answer_message(body["output"])],
                input_items=asked.input_items(response_id),
            )

        if asked.stream:
            return await call.streamed(
                request,
                lambda opened: ResponseEvents(
                    asked,
                    response_id=response_id,
                    created=created,
                    model=opened.model,
                    keep=keep if asked.stores else None,
                ),
            )
        metered = await call.complete()
        body = response_body(metered.completion, asked, response_id=response_id, created=created)
        if asked.stores:
            await keep(body)
    except RateLimited as exc:
        return gateway_error(rate_limited(exc))
    except SpineError as exc:
        return gateway_error(GatewayError.of(exc))
    return FastJSONResponse(body, headers=call.headers(metered))


async def _continued(
    store: ResponseStore, asked: ResponsesRequest, caller: Principal
) -> list[dict[str, Any]]:
    """The kept conversation ``previous_response_id`` continues (none without one)."""
    if asked.previous_response_id is None:
        return []
    try:
        kept = await store.get(asked.previous_response_id, tenant=caller.tenant)
    except NotFound:
        raise GatewayError(
            404,
            f"Previous response with id '{asked.previous_response_id}' not found.",
            param="previous_response_id",
            code="previous_response_not_found",
        ) from None
    return kept.conversation


@router.get("/responses/{response_id}", response_model=None, responses=documented(404))
@openai_errors
async def retrieve_response(request: Request, response_id: str) -> Response:
    """Return a kept response as it was answered."""
    caller = await authenticate(request)
    kept = await _kept(request, response_id, caller)
    return JSONResponse(kept.body)


@router.delete("/responses/{response_id}", response_model=None, responses=documented(404))
@openai_errors
async def delete_response(request: Request, response_id: str) -> Response:
    """Delete a kept response; ``previous_response_id`` cannot continue from it any more."""
    caller = await authenticate(request)
    try:
        await platform_of(request).responses.delete(response_id, tenant=caller.tenant)
    except NotFound:
        raise _not_found(response_id) from None
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


@router.get("/responses/{response_id}/input_items", response_model=None, responses=documented(404))
@openai_errors
async def list_input_items(request: Request, response_id: str) -> Response:
    """List a kept response's input items (``limit`` up to 100, ``after``, ``order``: newest
    first unless ``asc``), as the files and batches are listed."""
    caller = await authenticate(request)
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest("order must be 'asc' or 'desc'", field="order")
    limit = page_limit(request, default=20, maximum=100)
    items = (await _kept(request, response_id, caller)).input_items
    if order == "desc":
        items = items[::-1]
    after = request.query_params.get("after") or None
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise BadRequest(f"no input item {after!r} to list after", field="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return JSONResponse(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )


async def _kept(request: Request, response_id: str, caller: Principal) -> StoredResponse:
    try:
        return await platform_of(request).responses.get(response_id, tenant=caller.tenant)
    except NotFound:
        raise _not_found(response_id) from None


def _not_found(response_id: str) -> GatewayError:
    return GatewayError(
        404,
        f"No response found with id '{response_id}'.",
        param="response_id",
        code="response_not_found",
    )
