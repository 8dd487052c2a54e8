"""Converters shared by the two upstream adapters (LiteLLM and the OpenAI-protocol one).

Both answer in OpenAI's shape (LiteLLM as objects, the OpenAI-protocol adapter as the decoded
JSON); these turn either into the platform's own values and adapt the parameters a provider's
server spells its own way. The text they read (content, tool calls, the finish reason) is made
storable on the way in (:func:`model_text`): an answer holding ``"\\u0000"`` or a lone
surrogate is mended, not a failed call.
"""

from __future__ import annotations

import math
from typing import Any

from spine.platform.errors import PermanentFailure
from spine.platform.inputs import storable_text
from spine.platform.models.providers import ProviderTarget
from spine.platform.models.values import CompletionDelta

__all__ = [
    "checked_vectors",
    "delta_of",
    "field_of",
    "model_text",
    "params_for",
    "retry_after_of",
    "says_too_long",
    "tool_calls_of",
]


def params_for(target: ProviderTarget, params: dict[str, Any]) -> dict[str, Any]:
    """Adapt OpenAI parameters a provider's server spells its own way.

    llama-cpp-python's server rejects OpenAI's ``{"type": "json_schema", "json_schema":
    {"schema": ...}}`` (a 500, which would count as an outage) and takes the same constraint
    as ``{"type": "json_object", "schema": ...}``.
    """
    response_format = params.get("response_format")
    if target.provider != "local" or not isinstance(response_format, dict):
        return params
    if response_format.get("type") != "json_schema":
        return params
    wanted = response_format.get("json_schema") or {}
    adapted: dict[str, Any] = {"type": "json_object"}
    if isinstance(wanted, dict) and isinstance(wanted.get("schema"), dict):
        adapted["schema"] = wanted["schema"]
    return {**params, "response_format": adapted}


def says_too_long(message: str) -> bool:
    """Tell whether a provider's error says the input did not fit the model's context.

    Decided by the message, whatever the status: OpenAI says so with a 400
    (``context_length_exceeded``), Ollama with a plain 400 for chat and a 500 for an embedding
    input. Both adapters must agree on it: it moves the router on to a model with a larger
    window, and it is the caller's input, not an outage (no breaker counts it).
    """
    lowered = message.lower()
    return "context length" in lowered or "input length exceeds" in lowered


def field_of(value: Any, name: str) -> Any:
    """Read ``name`` of a JSON object (a dict) or of an object of OpenAI's shape; None if absent."""
    if isinstance(value, dict):
        return value.get(name)
    return getattr(value, name, None)


def model_text(value: Any) -> Any:
    """A string of a model's answer with what cannot be stored replaced (U+FFFD); anything
    else as it is. PostgreSQL refuses NUL, and UTF-8 (the answer's encoding, the cache's)
    lone surrogates, which JSON can spell and some servers send."""
    return storable_text(value) if isinstance(value, str) else value


def tool_calls_of(calls: Any, *, delta: bool = False) -> list[dict[str, Any]]:
    """Render tool calls (or tool call deltas) of OpenAI's shape as plain dicts."""
    rendered: list[dict[str, Any]] = []
    for position, call in enumerate(calls or []):
        function = field_of(call, "function")
        name = model_text(field_of(function, "name"))
        arguments = model_text(field_of(function, "arguments"))
        ident = model_text(field_of(call, "id"))
        if not delta:
            rendered.append(
                {
                    "id": ident or f"call_{position}",
                    "type": "function",
                    "function": {"name": name or "", "arguments": arguments or ""},
                }
            )
            continue
        part: dict[str, Any] = {"index": field_of(call, "index") or position}
        if ident:
            part["id"] = ident
            part["type"] = "function"
        fn: dict[str, Any] = {}
        if name:
            fn["name"] = name
        if arguments is not None:
            fn["arguments"] = arguments
        if fn:
            part["function"] = fn
        rendered.append(part)
    return rendered


def delta_of(chunk: Any) -> CompletionDelta:
    """Turn one streamed chunk of OpenAI's shape into a :class:`CompletionDelta`."""
    usage = field_of(chunk, "usage")
    found = CompletionDelta(
        input_tokens=field_of(usage, "prompt_tokens") if usage else None,
        output_tokens=field_of(usage, "completion_tokens") if usage else None,
    )
    choices = field_of(chunk, "choices")
    if choices:
        choice = choices[0]
        delta = field_of(choice, "delta")
        found.text = model_text(field_of(delta, "content")) or ""
        found.tool_calls = tool_calls_of(field_of(delta, "tool_calls"), delta=True)
        found.finish_reason = model_text(field_of(choice, "finish_reason"))
    return found


def retry_after_of(headers: Any) -> float | None:
    """The wait an upstream's answer asks for: ``retry-after-ms`` (OpenAI's), else
    ``Retry-After`` in seconds (an HTTP date is not read: providers send seconds)."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            wait = float(headers.get(name, "")) / scale
        except (TypeError, ValueError):
            continue
        if math.isfinite(wait) and wait >= 0:
            return wait
    return None


def checked_vectors(
    vectors: list[list[float]], texts: list[str], target: ProviderTarget
) -> list[list[float]]:
    """Return ``vectors``, one per text, once they are known to hold finite numbers only.

    A NaN or an infinity (JSON readers take ``NaN``, and base64 float32 can spell both) would
    fail the vector store's write and read as null in an answer.

    Raises:
        PermanentFailure: There are not as many vectors as texts, or a number is not finite.
    """
    if len(vectors) != len(texts):
        raise PermanentFailure(
            f"{target.provider} model {target.model} returned {len(vectors)} vectors "
            f"for {len(texts)} texts",
            provider=target.provider,
        )
    for position, vector in enumerate(vectors):
        # A NaN or an infinity makes the sum so; numbers a vector store can keep (float32)
        # cannot add up past a double's range.
        if not math.isfinite(sum(vector)):
            raise PermanentFailure(
                f"{target.provider} model {target.model} returned a vector holding a number "
                f"that is not finite (for text {position})",
                provider=target.provider,
            )
    return vectors
