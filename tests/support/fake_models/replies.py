"""What one answer contains, before a protocol gives it its shape.

:class:`Reply` is the protocol-independent answer (tokens, tool calls, usage); a protocol renders
it into :class:`Rendered` (the whole body and the frames of its stream). Embeddings are
deterministic unit vectors from :func:`fake_embedding`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .scripting import ModelRequest, Rule, ToolCall, content_text

CONTEXT_LENGTH = 8192
_TOKEN_RE = re.compile(r"\s*\S+|\s+$")


def tokens(text: str) -> list[str]:
    """Split ``text`` into the fake tokenizer's tokens (words with their leading space)."""
    return _TOKEN_RE.findall(text)


def message_tokens(messages: list[dict[str, Any]]) -> int:
    """Count the tokens of the messages' contents."""
    return sum(len(tokens(content_text(m.get("content")))) for m in messages)


def fake_embedding(text: str, dims: int = 384) -> list[float]:
    """Return the deterministic unit vector the server gives ``text``.

    Values are exact float32 numbers, so float and base64 encodings decode to the same list.
    """
    raw = struct.unpack(f"<{dims}H", hashlib.shake_256(text.encode()).digest(2 * dims))
    vec = [v / 32767.5 - 1.0 for v in raw]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return list(struct.unpack(f"<{dims}f", struct.pack(f"<{dims}f", *(v / norm for v in vec))))


@dataclass(slots=True, kw_only=True)
class Reply:
    """What one answer contains, independent of the protocol."""

    model: str
    seq: int
    tokens: list[str]
    tool_calls: list[ToolCall]
    finish: str
    prompt_tokens: int
    completion_tokens: int
    latency: float
    token_delay: float
    stream_usage: bool = True

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @classmethod
    def build(
        cls,
        request: ModelRequest,
        rule: Rule,
        *,
        seq: int,
        default: str | Callable[[ModelRequest], str] | None,
        latency: float,
        token_delay: float,
    ) -> Reply:
        source = rule.reply
        if source is None:
            source = "" if rule.tool_calls else default
        if source is None:
            text = f"echo: {request.prompt}"
        else:
            text = source(request) if callable(source) else source
        answer = tokens(text)
        limit = _max_tokens(request.body)
        truncated = limit is not None and len(answer) > limit
        answer = answer[:limit] if truncated else answer
        calls = [
            ToolCall(name=c.name, arguments=c.arguments, id=c.id or f"call_{seq}_{i}")
            for i, c in enumerate(rule.tool_calls)
        ]
        spent = sum(len(tokens(f"{c.name} {json.dumps(c.arguments)}")) for c in calls)
        return cls(
            model=request.model,
            seq=seq,
            tokens=answer,
            tool_calls=calls,
            finish="tool_calls" if calls else "length" if truncated else "stop",
            prompt_tokens=message_tokens(request.messages),
            completion_tokens=len(answer) + spent,
            latency=latency,
            token_delay=token_delay,
            stream_usage=rule.stream_usage,
        )


def _max_tokens(body: dict[str, Any]) -> int | None:
    options = body.get("options") or {}
    for value in (
        body.get("max_completion_tokens"),
        body.get("max_tokens"),
        options.get("num_predict"),
    ):
        if isinstance(value, int) and value >= 0:
            return value
    return None


class Rendered(NamedTuple):
    """One answer in a protocol's shape: the whole body, and the frames of its stream."""

    content: dict[str, Any]
    head: list[bytes]
    tokens: list[bytes]
    tail: list[bytes]


def embeddings(request: ModelRequest, default_dims: int) -> tuple[list[list[float]], int]:
    """Return the vectors for an embed request's inputs, and how many tokens they used."""
    dims = int(request.body.get("dimensions") or default_dims)
    texts = [m["content"] for m in request.messages]
    vectors = [fake_embedding(t, dims) for t in texts]
    used = sum(len(tokens(t)) for t in texts)
    return vectors, used
