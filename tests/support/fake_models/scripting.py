"""What tests script and inspect: rules, tool calls, and the requests the server records.

Also how a decoded wire body becomes a :class:`ModelRequest`, and how rules and record filters
match one.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Protocol = Literal["openai", "ollama"]
Kind = Literal["chat", "embed"]


@dataclass(slots=True, kw_only=True)
class ToolCall:
    """A tool call the fake model returns.

    Attributes:
        name: Function name.
        arguments: Arguments as a JSON object.
        id: Call id; a deterministic ``call_<request>_<index>`` when None.
    """

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(slots=True, kw_only=True)
class ModelRequest:
    """An inference request as the fake server understood it.

    Attributes:
        protocol: ``"openai"`` or ``"ollama"``.
        kind: ``"chat"`` (chat completions and Ollama generate) or ``"embed"``.
        path: URL path that was called.
        model: Model name as sent on the wire (no LiteLLM prefix).
        messages: Chat messages; for generate and embed, one user message per input.
        prompt: Text of the last user message (generate: the prompt; embed: inputs joined).
        stream: Whether a streamed answer was asked for.
        tools: Tool definitions sent with the request.
        body: The decoded JSON body.
        api_key: The bearer token the client sent ("" without one): tells apart two
            providers served by this one server.
    """

    protocol: Protocol
    kind: Kind
    path: str
    model: str
    messages: list[dict[str, Any]]
    prompt: str
    stream: bool
    tools: list[dict[str, Any]]
    body: dict[str, Any]
    api_key: str = ""

    @property
    def last_role(self) -> str | None:
        """Role of the last message (``"tool"`` when the model is shown a tool result)."""
        return self.messages[-1].get("role") if self.messages else None


@dataclass(slots=True, kw_only=True, eq=False)
class Rule:
    """How to answer the requests that match; compared by identity.

    Every matching criterion given must hold; an agent loop's follow-up call (after a tool result)
    has the same last user message, so script it with ``times=1`` or ``when``.

    Attributes:
        model: Wire model name or glob (``"gpt-*"``); ``:latest`` is ignored.
        containing: Substring of the last user message (embed: of any input).
        when: Predicate on the request.
        kind: ``"chat"`` (default), ``"embed"``, or None for both.
        reply: Text, or a function of the request; None gives the default echo (or no text when
            ``tool_calls`` are set).
        tool_calls: Tool calls to return.
        latency: Seconds before the first byte (also before an error); None: server default.
        token_delay: Seconds between streamed tokens; non-streamed answers wait the same total.
            None: the server's default.
        status: Answer with this HTTP error status in the protocol's error shape. Defaults per
            status: 429 rate limit (with ``Retry-After``), 400 context length exceeded, 5xx server.
        error: Error message replacing the default one for ``status``.
        retry_after: Seconds sent as ``Retry-After``/``retry-after-ms`` (429 defaults to 1).
        hang: Never answer until the client disconnects or the server stops (then 503).
        disconnect_after: Drop the connection after this many streamed tokens (non-streamed:
            after half of the body).
        times: Apply only this many times, then fall through to later rules.
        stream_usage: Send the usage chunk a stream asked for with ``stream_options``
            (False: leave it out, as llama-cpp-python's server does).
        name: Label shown in records and reprs.
        hits: How many requests this rule has answered.
    """

    model: str | None = None
    containing: str | None = None
    when: Callable[[ModelRequest], bool] | None = None
    kind: Kind | None = "chat"
    reply: str | Callable[[ModelRequest], str] | None = None
    tool_calls: Sequence[ToolCall] = ()
    latency: float | None = None
    token_delay: float | None = None
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    hang: bool = False
    disconnect_after: int | None = None
    times: int | None = None
    stream_usage: bool = True
    name: str = ""
    hits: int = field(default=0, init=False)

    @property
    def exhausted(self) -> bool:
        """Whether ``times`` is used up."""
        return self.times is not None and self.hits >= self.times

    def matches(self, request: ModelRequest) -> bool:
        """Tell whether this rule applies to ``request`` (ignores ``times``)."""
        if self.kind is not None and request.kind != self.kind:
            return False
        if self.model is not None and not model_matches(self.model, request.model):
            return False
        if self.containing is not None and self.containing not in request.prompt:
            return False
        return self.when is None or self.when(request)


@dataclass(slots=True, kw_only=True)
class RecordedCall:
    """One inference request the server received.

    Attributes:
        request: The request.
        rule: The rule that answered it, None for the default answer.
        at: Wall-clock time (``time.time()``) when it arrived.
        seq: Arrival order, from 1.
    """

    request: ModelRequest
    rule: Rule | None
    at: float
    seq: int

    @property
    def model(self) -> str:
        """Wire model name."""
        return self.request.model

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Messages sent."""
        return self.request.messages

    @property
    def prompt(self) -> str:
        """Last user message."""
        return self.request.prompt

    @property
    def stream(self) -> bool:
        """Whether streaming was asked for."""
        return self.request.stream


# -- building requests -------------------------------------------------------------------------


def content_text(content: Any) -> str:
    """Return the text of a message's ``content`` (a string or a list of text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    return next(
        (content_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"),
        "",
    )


def chat_request(
    protocol: Protocol, body: dict[str, Any], path: str, *, stream_default: bool
) -> ModelRequest:
    """Read a chat body (OpenAI chat completions or Ollama ``/api/chat``)."""
    messages = list(body.get("messages") or [])
    return ModelRequest(
        protocol=protocol,
        kind="chat",
        path=path,
        model=str(body["model"]),
        messages=messages,
        prompt=_last_user_text(messages),
        stream=bool(body.get("stream", stream_default)),
        tools=list(body.get("tools") or []),
        body=body,
    )


def embed_request(protocol: Protocol, raw: Any, body: dict[str, Any], path: str) -> ModelRequest:
    """Read an embedding body whose input (text, texts or token ids) is ``raw``."""
    inputs = [raw] if isinstance(raw, str | int) or (raw and isinstance(raw[0], int)) else raw
    texts = [x if isinstance(x, str) else json.dumps(x) for x in inputs]
    return ModelRequest(
        protocol=protocol,
        kind="embed",
        path=path,
        model=str(body["model"]),
        messages=[{"role": "user", "content": t} for t in texts],
        prompt="\n".join(texts),
        stream=False,
        tools=[],
        body=body,
    )


# -- matching ----------------------------------------------------------------------------------


def model_matches(pattern: str, model: str) -> bool:
    """Tell whether ``model`` is ``pattern`` or matches it as a glob; ``:latest`` is ignored."""
    pattern, model = pattern.removesuffix(":latest"), model.removesuffix(":latest")
    return fnmatch.fnmatchcase(model, pattern) if is_glob(pattern) else model == pattern


def is_glob(pattern: str) -> bool:
    """Tell whether ``pattern`` has glob characters."""
    return any(c in pattern for c in "*?[")


def selected(
    call: RecordedCall, model: str | None, containing: str | None, kind: Kind | None
) -> bool:
    """Tell whether ``call`` passes the record filters (None: any)."""
    return (
        (model is None or model_matches(model, call.model))
        and (containing is None or containing in call.prompt)
        and (kind is None or call.request.kind == kind)
    )
