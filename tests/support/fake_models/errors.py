"""Error answers in the OpenAI and Ollama shapes.

Scripted ones come from ``Rule.status``; the server also answers a bad request (400) and a request
cut short by its shutdown (503) this way.
"""

from __future__ import annotations

import math

from starlette.responses import JSONResponse, Response

from .replies import CONTEXT_LENGTH, message_tokens
from .scripting import ModelRequest, Rule

_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: (
        "invalid_request_error",
        "context_length_exceeded",
        "This model's maximum context length is {limit} tokens. However, your messages resulted "
        "in {used} tokens. Please reduce the length of the messages.",
    ),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    404: ("invalid_request_error", "model_not_found", "The model `{model}` does not exist."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for {model}. Please try again."),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


def error_response(
    ollama: bool,
    status: int,
    message: str,
    *,
    code: str | None = None,
    kind: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Answer ``status`` with ``message`` in Ollama's or OpenAI's error body."""
    if ollama:
        return JSONResponse({"error": message}, status, headers)
    kind = kind or ("server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status, headers)


def rule_error(request: ModelRequest, rule: Rule) -> Response:
    """Answer the error ``rule`` scripts, with the provider's usual message and headers."""
    status = rule.status or 500
    kind, code, template = _OPENAI_ERRORS.get(status, (None, None, f"Fake error {status}."))
    used = message_tokens(request.messages)
    message = rule.error or template.format(
        model=request.model, limit=CONTEXT_LENGTH, used=max(used, CONTEXT_LENGTH + 1)
    )
    retry_after = (
        rule.retry_after if rule.retry_after is not None else (1.0 if status == 429 else None)
    )
    headers = {}
    if retry_after is not None:
        headers["retry-after"] = str(math.ceil(retry_after))
        headers["retry-after-ms"] = str(round(retry_after * 1000))
    ollama = request.protocol == "ollama"
    return error_response(ollama, status, message, code=code, kind=kind, headers=headers)
