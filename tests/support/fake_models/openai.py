"""The OpenAI protocol: chat completions (JSON and SSE chunks), embeddings, model cards."""

from __future__ import annotations

import base64
import json
import struct
import time
from typing import Any

from .replies import Rendered, Reply
from .scripting import ModelRequest, chat_request, embed_request


def parse_chat(body: dict[str, Any], path: str) -> ModelRequest:
    """Read a ``/chat/completions`` body."""
    return chat_request("openai", body, path, stream_default=False)


def parse_embed(body: dict[str, Any], path: str) -> ModelRequest:
    """Read an ``/embeddings`` body."""
    return embed_request("openai", body["input"], body, path)


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


def render_chat(request: ModelRequest, reply: Reply) -> Rendered:
    """Render the answer as a chat completion and as ``chat.completion.chunk`` SSE frames."""
    envelope = {
        "id": f"chatcmpl-fake{reply.seq}",
        "created": int(time.time()),
        "model": reply.model,
        "system_fingerprint": "fp_fake",
    }
    usage = {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }
    calls = [(c.id, c.name, json.dumps(c.arguments)) for c in reply.tool_calls]
    message: dict[str, Any] = {
        "role": "assistant",
        "content": reply.text if reply.tokens or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
            for i, n, a in calls
        ]
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish}
    content = {**envelope, "object": "chat.completion", "choices": [choice], "usage": usage}
    asked = bool((request.body.get("stream_options") or {}).get("include_usage"))
    with_usage = asked and reply.stream_usage

    def chunk(delta: dict[str, Any] | None, finish: str | None = None) -> bytes:
        """One chunk; ``delta=None`` makes the usage-only chunk that ends the stream."""
        payload: dict[str, Any] = {**envelope, "object": "chat.completion.chunk", "choices": []}
        if delta is not None:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            payload["choices"] = [choice]
        if with_usage:
            payload["usage"] = usage if delta is None else None
        return _sse(payload)

    frames = [chunk({"content": token}) for token in reply.tokens]
    for index, (ident, name, args) in enumerate(calls):
        function = {"name": name, "arguments": ""}
        opening = {"index": index, "id": ident, "type": "function", "function": function}
        frames.append(chunk({"tool_calls": [opening]}))
        for part in (args[: len(args) // 2], args[len(args) // 2 :]):
            frames.append(
                chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
            )
    tail = [chunk({}, reply.finish), *([chunk(None)] if with_usage else []), _sse("[DONE]")]
    return Rendered(content, [chunk({"role": "assistant", "content": ""})], frames, tail)


def render_embeddings(
    request: ModelRequest, vectors: list[list[float]], used: int
) -> dict[str, Any]:
    """Render an embeddings list, as floats or base64 float32 as the request asks."""
    as_base64 = request.body.get("encoding_format") == "base64"
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
            if as_base64
            else v,
        }
        for i, v in enumerate(vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": {"prompt_tokens": used, "total_tokens": used},
    }


def model_card(model: str) -> dict[str, Any]:
    """Describe ``model`` as ``/v1/models`` does."""
    return {"id": model, "object": "model", "created": 0, "owned_by": "fake-models"}
