"""The Ollama protocol: chat and generate (JSON and NDJSON lines), embeddings, model metadata."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from .replies import CONTEXT_LENGTH, Rendered, Reply
from .scripting import ModelRequest, chat_request, embed_request

VERSION = "0.12.6"


def parse_chat(body: dict[str, Any], path: str) -> ModelRequest:
    """Read an ``/api/chat`` body."""
    return chat_request("ollama", body, path, stream_default=True)


def parse_generate(body: dict[str, Any], path: str) -> ModelRequest:
    """Read an ``/api/generate`` body: the system text and the prompt become messages."""
    system = [{"role": "system", "content": body["system"]}] if body.get("system") else []
    messages = [*system, {"role": "user", "content": str(body.get("prompt", ""))}]
    return ModelRequest(
        protocol="ollama",
        kind="chat",
        path=path,
        model=str(body["model"]),
        messages=messages,
        prompt=messages[-1]["content"],
        stream=bool(body.get("stream", True)),
        tools=[],
        body=body,
    )


def parse_embed(body: dict[str, Any], path: str) -> ModelRequest:
    """Read an ``/api/embed`` (``input``) or ``/api/embeddings`` (``prompt``) body."""
    return embed_request("ollama", body.get("input", body.get("prompt", "")), body, path)


def _stats(reply: Reply) -> dict[str, Any]:
    eval_ns = int(reply.token_delay * max(len(reply.tokens), 1) * 1e9) or 1_000_000
    prompt_ns = int(reply.latency * 1e9) or 1_000_000
    return {
        "total_duration": prompt_ns + eval_ns + 1_000_000,
        "load_duration": 1_000_000,
        "prompt_eval_count": reply.prompt_tokens,
        "prompt_eval_duration": prompt_ns,
        "eval_count": reply.completion_tokens,
        "eval_duration": eval_ns,
    }


def _render(request: ModelRequest, reply: Reply, *, generate: bool) -> Rendered:
    """Render the answer as Ollama ``/api/chat`` or ``/api/generate`` JSON and NDJSON lines."""
    created_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    base = {"model": reply.model, "created_at": created_at}
    tool_calls = [
        {"id": c.id, "function": {"index": i, "name": c.name, "arguments": c.arguments}}
        for i, c in enumerate(reply.tool_calls)
    ]

    def body(text: str, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        if generate:
            return {"response": text}
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = calls
        return {"message": message}

    done = {"done": True, "done_reason": "stop" if reply.finish == "tool_calls" else reply.finish}
    done |= {"context": []} if generate else {}
    done |= _stats(reply)
    content = {**base, **body(reply.text, tool_calls), **done}

    def line(payload: dict[str, Any]) -> bytes:
        return json.dumps(payload).encode() + b"\n"

    frames = [line({**base, **body(token), "done": False}) for token in reply.tokens]
    if tool_calls:
        frames.append(line({**base, **body("", tool_calls), "done": False}))
    return Rendered(content, [], frames, [line({**base, **body(""), **done})])


def render_chat(request: ModelRequest, reply: Reply) -> Rendered:
    """Render the answer as ``/api/chat`` JSON and NDJSON lines."""
    return _render(request, reply, generate=False)


def render_generate(request: ModelRequest, reply: Reply) -> Rendered:
    """Render the answer as ``/api/generate`` JSON and NDJSON lines."""
    return _render(request, reply, generate=True)


def render_embeddings(
    request: ModelRequest, vectors: list[list[float]], used: int
) -> dict[str, Any]:
    """Render ``/api/embeddings`` (one vector) or ``/api/embed`` (all of them) JSON."""
    if request.path.endswith("/embeddings"):
        return {"embedding": vectors[0]}
    return {
        "model": request.model,
        "embeddings": vectors,
        "total_duration": 1_000_000,
        "load_duration": 1_000_000,
        "prompt_eval_count": used,
    }


def tag(model: str) -> dict[str, Any]:
    """Describe ``model`` as ``/api/tags`` does."""
    name = model if ":" in model else f"{model}:latest"
    return {
        "name": name,
        "model": name,
        "modified_at": "2025-01-01T00:00:00Z",
        "size": 1_000_000,
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": {
            "format": "gguf",
            "family": "llama",
            "parameter_size": "1B",
            "quantization_level": "Q4_0",
        },
    }


def show(body: dict[str, Any]) -> dict[str, Any]:
    """Answer ``/api/show``: an embedding model (``embed`` in its name) is a BERT, others Llama;
    a model whose name says ``vision`` reads images (its capabilities say so, as Ollama's do)."""
    model = str(body.get("model") or body.get("name"))
    family = "bert" if "embed" in model else "llama"
    if family == "bert":
        capabilities = ["embedding"]
    elif "vision" in model:
        capabilities = ["completion", "tools", "vision"]
    else:
        capabilities = ["completion", "tools"]
    return {
        "modelfile": "",
        "parameters": "",
        "template": "{{- if .Tools }}tools{{ end }}{{ .Prompt }}",
        "details": {"format": "gguf", "family": family, "parameter_size": "1B"},
        "model_info": {
            "general.architecture": family,
            f"{family}.context_length": CONTEXT_LENGTH,
        },
        "capabilities": capabilities,
    }
