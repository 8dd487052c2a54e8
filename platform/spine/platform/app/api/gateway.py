"""The OpenAI-compatible gateway: ``POST /v1/chat/completions`` and ``GET /v1/models[/{id}]``.

A call is checked before any model sees it (:class:`ChatCompletionRequest`): the body's types
are strict (``"stream": "yes"`` and ``"max_tokens": true`` are refused), the parameters are
in OpenAI's ranges, and each message follows its role's rules, so a client's malformed
request is a 400 naming the parameter and never a provider failure that moves a breaker. The
deprecated ``functions``/``function_call`` are served as tools and answered as a
``function_call`` (see :meth:`ChatCompletionRequest.messages_out` and :func:`completion_body`).

Every call goes through the process's one :class:`~spine.platform.router.ModelRouter`: an
explicit ``model`` wins, ``model: "auto"`` lets the strategy choose (``spine_strategy`` in the
body or the ``X-Spine-Strategy`` header, else ``GENAI_ROUTING_STRATEGY``). The answer says who
answered and why in ``X-Spine-Model``, ``X-Spine-Provider``, ``X-Spine-Strategy`` and
``X-Spine-Fallback`` (the models tried, ``llama3.2>gpt-4o-mini``).

Calls are metered by :class:`~spine.platform.metering.MeteredModels`: answered from the response
cache when possible, reserved against the caller's daily budgets and recorded in the usage
ledger. ``X-Spine-Cost`` says what the answer cost (USD; 0 for a cache hit) and
``X-Spine-Cache`` whether it was a ``hit``, a ``miss`` or a ``bypass`` (a request with
``Cache-Control: no-cache`` or ``X-Spine-Cache: bypass``). A stream's cost is known only at its
end, so its headers carry ``X-Spine-Cost`` only for a hit (0); the usage ledger has it. A spent
budget is a 429 with code ``budget_exceeded``, naming the budget, the spend and when it resets.

Rate limits (:mod:`spine.platform.limits`) count each call against its key's and tenant's
requests per minute before it runs, and the tokens it used after; a call over a limit is a 429
with code ``rate_limit_exceeded``, type ``requests`` or ``tokens``, and ``Retry-After``. Every
answer of a limited caller carries OpenAI's ``x-ratelimit-limit-*``, ``x-ratelimit-remaining-*``
and ``x-ratelimit-reset-*`` headers (a stream's, as they stood when it began).

A streamed answer falls back while no token has been sent; a failure after that ends the
stream with ``data: {"error": {...}}`` and ``data: [DONE]``. Errors are in OpenAI's shape.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from spine.platform.app.api._openai import (
    DONE,
    chunk,
    error_headers,
    fallback_header,
    rate_limited,
    sse,
)
from spine.platform.app.api.auth import authenticate, platform_of, rate_limits_of
from spine.platform.app.api.errors import documented, loggable
from spine.platform.app.api.hot_routes import FastJSONResponse
from spine.platform.app.api.input_guard import checked_json
from spine.platform.errors import RateLimited, SpineError
from spine.platform.keys import Principal
from spine.platform.limits import Admission, RateLimits
from spine.platform.metering import CallContext, MeteredCompletion, MeteredModels, MeteredStream
from spine.platform.models import Attempt, ChatRequest, CompletionDelta
from spine.platform.models.openai_errors import GatewayError, error_body
from spine.platform.models.openai_wire import (
    ChatCompletionRequest,
    completion_body,
    new_completion_id,
    usage_body,
)
from spine.platform.router import ModelRouter, ModelSpec
from spine.platform.schema import money_text

__all__ = ["ChatChunks", "GatewayCall", "StreamWriter", "gateway_error", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["gateway"])

STRATEGY_HEADER = "x-spine-strategy"
CACHE_HEADER = "x-spine-cache"
EXPLICIT = "explicit"


@router.post("/chat/completions", response_model=None, responses=documented(404, 429, 499, 502))
async def chat_completions(request: Request) -> Response:
    """Answer a chat completion, streamed or not, through the model router."""
    try:
        caller = await authenticate(request)
        chat = ChatCompletionRequest.parse(
            await request.body(), checked=checked_json(request.scope)
        )
        completion_id, created = new_completion_id()
        call = await GatewayCall.admit(request, caller, chat, completion_id)
        if chat.stream:
            return await call.streamed(
                request, lambda opened: ChatChunks(chat, completion_id, created, opened.model)
            )
        metered = await call.complete()
    except RateLimited as exc:
        return gateway_error(rate_limited(exc))
    except SpineError as exc:
        return gateway_error(GatewayError.of(exc))
    answer = metered.completion
    body = completion_body(
        answer, completion_id=completion_id, created=created, functions=chat.uses_functions
    )
    return FastJSONResponse(body, headers=call.headers(metered))


@router.get("/models", response_model=None)
async def list_models(request: Request) -> Response:
    """List the catalog in OpenAI's shape, with our facts under ``spine``."""
    try:
        await authenticate(request)
        models: ModelRouter = await platform_of(request).warm_router()
    except SpineError as exc:
        return gateway_error(GatewayError.of(exc))
    data = [_model_object(spec) for spec in sorted(models.catalog, key=lambda s: s.name)]
    return JSONResponse({"object": "list", "data": data})


@router.get("/models/{model:path}", response_model=None, responses=documented(404))
async def retrieve_model(request: Request, model: str) -> Response:
    """Describe one model of the catalog as ``GET /v1/models`` lists it (names may hold ``/``)."""
    try:
        await authenticate(request)
        models: ModelRouter = await platform_of(request).warm_router()
    except SpineError as exc:
        return gateway_error(GatewayError.of(exc))
    spec = models.catalog.get(model)
    if spec is None:
        return gateway_error(
            GatewayError(
                404,
                f"The model '{model}' does not exist; GET /v1/models lists the models",
                param="model",
                code="model_not_found",
            )
        )
    return JSONResponse(_model_object(spec))


def _model_object(spec: ModelSpec) -> dict[str, Any]:
    return {
        "id": spec.name,
        "object": "model",
        "created": 0,
        "owned_by": spec.provider,
        "spine": {
            "provider": spec.provider,
            "model": spec.model,
            "tags": sorted(spec.tags),
            "capabilities": spec.capabilities.model_dump(),
            "quality": spec.quality,
            "context_window": spec.context_window,
            "input_price": _price(spec.input_price),
            "output_price": _price(spec.output_price),
        },
    }


class StreamWriter(Protocol):
    """Writes a streamed answer in one API's wire format."""

    def opening(self) -> bytes:
        """What is sent before the model's first delta."""

    def delta(self, delta: CompletionDelta) -> bytes:
        """What one delta of the answer is sent as (maybe nothing)."""

    async def ended(self, input_tokens: int, output_tokens: int) -> bytes:
        """What ends an answer that ended normally."""

    def failed(self, error: GatewayError) -> bytes:
        """What ends an answer that failed after it began (no falling back then)."""


@dataclass(slots=True)
class GatewayCall:
    """One admitted call of an OpenAI-compatible route: routed, metered and rate limited."""

    chat: ChatCompletionRequest
    limits: RateLimits
    admission: Admission
    models: MeteredModels
    call: ChatRequest
    context: CallContext

    @classmethod
    async def admit(
        cls, request: Request, caller: Principal, chat: ChatCompletionRequest, answer_id: str
    ) -> GatewayCall:
        """Count the call against the caller's rate limits, and prepare it.

        Raises:
            RateLimited: A limit of the caller's key or tenant is reached.
        """
        limits = rate_limits_of(request)
        admission = await limits.admit(caller)
        models = await platform_of(request).metered_models()
        context = CallContext(
            tenant=caller.tenant,
            key_id=caller.key_id,
            use_cache=not _bypasses_cache(request),
            completion_id=answer_id,
        )
        call = chat.to_request(strategy=request.headers.get(STRATEGY_HEADER))
        return cls(chat, limits, admission, models, call, context)

    async def complete(self) -> MeteredCompletion:
        """The whole answer; its tokens counted against the limits (a cache hit used none)."""
        metered = await self.models.complete(self.call, self.context)
        answer = metered.completion
        if not answer.cache_hit:
            await self.limits.settle(self.admission, answer.input_tokens + answer.output_tokens)
        return metered

    def headers(self, metered: MeteredCompletion) -> dict[str, str]:
        """The headers of a whole answer: who answered and why, its cost, cache and limits."""
        answer = metered.completion
        headers = self._who(answer.model, answer.provider, answer.strategy, answer.fallback_path)
        headers["X-Spine-Cost"] = money_text(metered.cost)
        headers["X-Spine-Cache"] = metered.cache
        headers.update(self.admission.headers())
        return headers

    async def streamed(
        self, request: Request, writer_of: Callable[[MeteredStream], StreamWriter]
    ) -> Response:
        """Open the stream and answer with it, written by ``writer_of(stream)``.

        Raises:
            SpineError: The call failed before its first token (after falling back).
        """
        opened = await self.models.stream(self.call, self.context)
        if await request.is_disconnected():
            # The client left while the model was still thinking. Stop here: a quick stream
            # could otherwise be written to the closed socket in full and be counted as
            # answered before the server noticed.
            await opened.aclose()
            return Response(status_code=499)
        writer = writer_of(opened)
        limits, admission = self.limits, self.admission

        async def frames() -> AsyncIterator[bytes]:
            deltas = opened.__aiter__()
            try:
                yield writer.opening()
                async for delta in deltas:
                    frame = writer.delta(delta)
                    if frame:
                        yield frame
            except SpineError as exc:
                # Tokens were sent: no fallback now, only a clean end the client can read.
                yield writer.failed(GatewayError.of(exc))
                return
            finally:
                # Also when the client went away: stop reading the model and free its breaker.
                await deltas.aclose()
                if opened.cache != "hit":
                    await limits.settle(admission, opened.input_tokens + opened.output_tokens)
            yield await writer.ended(opened.input_tokens, opened.output_tokens)

        headers = self._who(opened.model, opened.provider, opened.strategy, opened.fallback_path)
        headers["Cache-Control"] = "no-cache"
        # The cost of a stream is known at its end: in the usage ledger, not in a header.
        headers["X-Spine-Cache"] = opened.cache
        if opened.cache == "hit":
            headers["X-Spine-Cost"] = "0"
        headers.update(admission.headers())
        return StreamingResponse(frames(), media_type="text/event-stream", headers=headers)

    def _who(
        self, model: str, provider: str, strategy: str | None, path: list[Attempt]
    ) -> dict[str, str]:
        return {
            "X-Spine-Model": model,
            "X-Spine-Provider": provider,
            "X-Spine-Strategy": EXPLICIT if self.chat.routed_model else (strategy or ""),
            "X-Spine-Fallback": fallback_header(path),
        }


class ChatChunks:
    """A chat answer streamed as ``chat.completion.chunk`` frames ending with ``[DONE]``."""

    def __init__(
        self, chat: ChatCompletionRequest, completion_id: str, created: int, model: str
    ) -> None:
        self.chat = chat
        self.frame: dict[str, Any] = {
            "completion_id": completion_id,
            "created": created,
            "model": model,
            "include_usage": chat.include_usage,
            "functions": chat.uses_functions,
        }
        self.finished = False

    def opening(self) -> bytes:
        return chunk({"role": "assistant", "content": ""}, **self.frame)

    def delta(self, delta: CompletionDelta) -> bytes:
        if not (delta.has_output or delta.finish_reason):
            return b""
        self.finished = self.finished or delta.finish_reason is not None
        return chunk(delta, **self.frame)

    async def ended(self, input_tokens: int, output_tokens: int) -> bytes:
        frames = b""
        if not self.finished:
            frames += chunk(CompletionDelta(finish_reason="stop"), **self.frame)
        if self.chat.include_usage:
            usage = usage_body(input_tokens, output_tokens)
            frames += chunk(None, **self.frame, usage=usage)
        return frames + DONE

    def failed(self, error: GatewayError) -> bytes:
        return sse(error_body(error)) + DONE


def _bypasses_cache(request: Request) -> bool:
    directives = request.headers.get("cache-control", "").lower()
    if any(d.strip() in {"no-cache", "no-store"} for d in directives.split(",")):
        return True
    return request.headers.get(CACHE_HEADER, "").strip().lower() == "bypass"


def gateway_error(error: GatewayError) -> JSONResponse:
    """Answer an error in OpenAI's shape (a 5xx is logged)."""
    if error.status >= 500:
        logger.warning("gateway answered %d: %s", error.status, loggable(error))
    return JSONResponse(error_body(error), status_code=error.status, headers=error_headers(error))


def _price(value: object) -> str | None:
    return None if value is None else str(value)
