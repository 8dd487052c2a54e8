"""OpenAI's Responses API: ``POST /v1/responses``, served as a chat call through the router.

The request is read and turned into a chat call by :mod:`spine.platform.models.responses_wire`;
from there it is the gateway's call (:class:`~spine.platform.app.api.gateway.GatewayCall`):
the same routing, fallbacks, cache, budgets, rate limits, usage row and ``X-Spine-*`` headers.
The answer is a ``response`` object, or OpenAI's stream of response events. The response id
(``resp_...``) is the usage row's completion id: ``POST /v1/feedback`` rates it as it rates a
chat completion.

No response is stored: ``GET``, ``DELETE`` and the other routes under ``/v1/responses/{id}``
answer 404 saying so, in OpenAI's shape.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from spine.platform.app.api._openai import GatewayError, rate_limited
from spine.platform.app.api.auth import authenticate
from spine.platform.app.api.errors import documented
from spine.platform.app.api.gateway import GatewayCall, gateway_error
from spine.platform.app.api.hot_routes import FastJSONResponse
from spine.platform.app.api.input_guard import checked_json
from spine.platform.errors import RateLimited, SpineError
from spine.platform.models.responses_wire import (
    ResponseEvents,
    ResponsesRequest,
    new_response_id,
    response_body,
)

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["gateway"])


@router.post("/responses", response_model=None, responses=documented(404, 429, 499, 502))
async def create_response(request: Request) -> Response:
    """Answer a Responses API request, streamed or not, through the model router."""
    try:
        caller = await authenticate(request)
        asked = ResponsesRequest.parse(await request.body(), checked=checked_json(request.scope))
        chat = asked.to_chat()
        response_id, created = new_response_id()
        call = await GatewayCall.admit(request, caller, chat, response_id)
        if asked.stream:
            return await call.streamed(
                request,
                lambda opened: ResponseEvents(
                    asked, response_id=response_id, created=created, model=opened.model
                ),
            )
        metered = await call.complete()
    except RateLimited as exc:
        return gateway_error(rate_limited(exc))
    except SpineError as exc:
        return gateway_error(GatewayError.of(exc))
    body = response_body(metered.completion, asked, response_id=response_id, created=created)
    return FastJSONResponse(body, headers=call.headers(metered))


@router.api_route(
    "/responses/{response_id}{rest:path}",
    methods=["GET", "POST", "DELETE"],
    response_model=None,
    responses=documented(404),
)
async def stored_response(request: Request, response_id: str, rest: str) -> Response:
    """Answer 404: no response is stored here, so none can be read, cancelled or deleted."""
    try:
        await authenticate(request)
    except SpineError as exc:
        return gateway_error(GatewayError.of(exc))
    return gateway_error(
        GatewayError(
            404,
            f"No response found with id '{response_id}': this gateway stores no responses "
            "(send the whole conversation in 'input')",
            param="response_id",
            code="response_not_found",
        )
    )
