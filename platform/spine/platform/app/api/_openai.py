"""OpenAI's wire format on our HTTP routes: streaming frames and errors in OpenAI's shape.

The gateway streams ``chat.completion.chunk`` objects as SSE frames ending with ``[DONE]``. The
OpenAI-compatible routes (batches, files) answer errors as ``{"error": {"message", "type",
"param", "code"}}`` through :func:`openai_errors`, with ``field`` repeating ``param`` as every
platform error names its field. The request model and answers live in
:mod:`spine.platform.models.openai_wire`, :class:`GatewayError` in
:mod:`spine.platform.models.openai_errors` (the agents and batches use them too); both are
re-exported here.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec

from fastapi import Response
from fastapi.responses import JSONResponse

from spine.platform.app.api.errors import OPENAI_PATHS, loggable, retry_after_of
from spine.platform.errors import RateLimited, SpineError
from spine.platform.models import Attempt, CompletionDelta
from spine.platform.models.openai_errors import GatewayError, error_body
from spine.platform.models.openai_wire import (
    AUTO,
    ChatCompletionRequest,
    completion_body,
    function_call_of,
    new_completion_id,
    usage_body,
)

__all__ = [
    "AUTO",
    "DONE",
    "OPENAI_PATHS",
    "ChatCompletionRequest",
    "GatewayError",
    "chunk",
    "completion_body",
    "error_body",
    "error_headers",
    "fallback_header",
    "new_completion_id",
    "openai_error",
    "openai_errors",
    "rate_limited",
    "sse",
    "usage_body",
]

logger = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
P = ParamSpec("P")


def chunk(
    delta: CompletionDelta | dict[str, Any] | None,
    *,
    completion_id: str,
    created: int,
    model: str,
    include_usage: bool,
    functions: bool = False,
    usage: dict[str, int] | None = None,
) -> bytes:
    """Render one ``chat.completion.chunk`` as an SSE frame; ``delta=None`` is the usage chunk.

    With ``functions`` (the caller sent the deprecated ``functions``), the first tool call's
    pieces are ``function_call`` pieces and a ``tool_calls`` finish is ``function_call``.
    """
    payload: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [],
    }
    if delta is not None:
        finish: str | None = None
        if isinstance(delta, CompletionDelta):
            body: dict[str, Any] = {}
            if delta.text:
                body["content"] = delta.text
            finish = delta.finish_reason
            if delta.tool_calls and functions:
                first = [c for c in delta.tool_calls if c.get("index", 0) == 0]
                if first:
                    body["function_call"] = function_call_of(first[0])
            elif delta.tool_calls:
                body["tool_calls"] = delta.tool_calls
            if functions and finish == "tool_calls":
                finish = "function_call"
        else:
            body = delta
        payload["choices"] = [
            {"index": 0, "delta": body, "logprobs": None, "finish_reason": finish}
        ]
    if include_usage:
        payload["usage"] = usage
    return sse(payload)


def sse(payload: dict[str, Any]) -> bytes:
    """Render one SSE ``data:`` frame."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def fallback_header(path: list[Attempt]) -> str:
    """Render the models tried, in order, as ``first>second>...``."""
    return ">".join(attempt.model for attempt in path)


def openai_error(error: GatewayError) -> JSONResponse:
    """Answer an error in OpenAI's shape, ``field`` naming the parameter as ``param`` does."""
    if error.status >= 500:
        logger.warning("answered %d: %s", error.status, loggable(error))
    body = error_body(error)
    if error.body.get("param"):
        body["error"]["field"] = error.body["param"]
    return JSONResponse(body, status_code=error.status, headers=error_headers(error))


def rate_limited(exc: RateLimited) -> GatewayError:
    """Answer a rate limit as OpenAI does: 429, type ``requests`` or ``tokens``, with
    ``Retry-After`` and the ``x-ratelimit-*`` headers."""
    measure = str(exc.details.get("limit_type") or "requests")
    return GatewayError(
        429, exc.message, type=measure, code="rate_limit_exceeded", headers=dict(exc.headers)
    )


def error_headers(error: GatewayError) -> dict[str, str]:
    """Return the headers of an error: its own, ``WWW-Authenticate`` on 401, ``Retry-After`` on 503."""
    headers = dict(error.headers)
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if error.status == 503 and "Retry-After" not in headers:
        headers["Retry-After"] = str(retry_after_of(error))
    return headers


def openai_errors(
    endpoint: Callable[P, Awaitable[Response]],
) -> Callable[P, Awaitable[Response]]:
    """Answer the platform's errors raised by ``endpoint`` in OpenAI's shape."""

    @functools.wraps(endpoint)
    async def answer(*args: P.args, **kwargs: P.kwargs) -> Response:
        try:
            return await endpoint(*args, **kwargs)
        except GatewayError as exc:
            return openai_error(exc)
        except RateLimited as exc:
            return openai_error(rate_limited(exc))
        except SpineError as exc:
            return openai_error(GatewayError.of(exc))

    return answer
