"""Fake model server speaking the OpenAI and Ollama HTTP protocols.

The only test double for model providers: a real HTTP server (Starlette on uvicorn) that tests
script per rule and that records every inference request it receives.

Example:
    with FakeModelServer() as server:
        server.add(Rule(model="llama3.2", status=429, retry_after=0.05, times=2))
        server.add(Rule(containing="weather", tool_calls=[ToolCall(name="get_weather")]))
        await litellm.acompletion(model="ollama_chat/llama3.2", api_base=server.url, ...)
        await litellm.acompletion(model="openai/gpt-4o", api_base=server.openai_url, ...)
        assert server.count(containing="weather") == 1

Rules are tried in order; the first that matches (and whose ``times`` is not used up) answers.
Unmatched requests get ``"echo: <last user message>"``. Metadata endpoints (``/v1/models``,
``/api/tags``, ``/api/show``, ``/api/version``) are answered but not recorded.

Run it as its own process (benchmarks) with ``python tests/support/fake_models.py --port 0``;
the first line on stdout is ``LISTENING <url>``. :class:`FakeModelProcess` does that for you.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import fnmatch
import hashlib
import itertools
import json
import logging
import math
import re
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple, Self

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = [
    "DEFAULT_MODELS",
    "FakeModelProcess",
    "FakeModelServer",
    "ModelRequest",
    "RecordedCall",
    "Rule",
    "ToolCall",
    "fake_embedding",
]

Protocol = Literal["openai", "ollama"]
Kind = Literal["chat", "embed"]

DEFAULT_MODELS: tuple[str, ...] = (
    "llama3.2",
    "gpt-4o-mini",
    "nomic-embed-text",
    "text-embedding-3-small",
)
OLLAMA_VERSION = "0.12.6"
CONTEXT_LENGTH = 8192
_POLL_S = 0.02
_TOKEN_RE = re.compile(r"\s*\S+|\s+$")


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
        if self.model is not None and not _model_matches(self.model, request.model):
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


def fake_embedding(text: str, dims: int = 384) -> list[float]:
    """Return the deterministic unit vector the server gives ``text``.

    Values are exact float32 numbers, so float and base64 encodings decode to the same list.
    """
    raw = struct.unpack(f"<{dims}H", hashlib.shake_256(text.encode()).digest(2 * dims))
    vec = [v / 32767.5 - 1.0 for v in raw]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return list(struct.unpack(f"<{dims}f", struct.pack(f"<{dims}f", *(v / norm for v in vec))))


class FakeModelServer:
    """Scriptable fake of Ollama and OpenAI-compatible providers, served over real HTTP.

    Use as a context manager (``with FakeModelServer() as server:``) or ``start()``/``stop()``;
    it serves from a background thread on a free 127.0.0.1 port. All methods are thread-safe.

    Args:
        models: Names listed by ``/v1/models`` and ``/api/tags`` (plus exact rule models).
        default_reply: Answer when no rule matches; default ``"echo: <last user message>"``.
        latency: Default seconds before the first byte.
        token_delay: Default seconds between streamed tokens.
        embedding_dims: Embedding size when the request does not ask for ``dimensions``.
        host: Interface to bind.
        port: Port to bind; 0 picks a free one.
    """

    def __init__(
        self,
        *,
        models: Iterable[str] = DEFAULT_MODELS,
        default_reply: str | Callable[[ModelRequest], str] | None = None,
        latency: float = 0.0,
        token_delay: float = 0.0,
        embedding_dims: int = 384,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.models = list(models)
        self.default_reply = default_reply
        self.latency = latency
        self.token_delay = token_delay
        self.embedding_dims = embedding_dims
        self.host = host
        self._port = port
        self._lock = threading.RLock()
        self._arrived = threading.Condition(self._lock)
        self._rules: list[Rule] = []
        self._records: list[RecordedCall] = []
        self._seq = itertools.count(1)
        self._stopping = False
        self._uvicorn: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = self._build_app()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """Bound port (after ``start``)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL, also the Ollama ``api_base``."""
        return f"http://{self.host}:{self._port}"

    @property
    def openai_url(self) -> str:
        """OpenAI-compatible base URL (``<url>/v1``)."""
        return f"{self.url}/v1"

    def start(self, timeout: float = 10.0) -> Self:
        """Serve from a background thread and wait until the server answers."""
        if self._thread is not None:
            return self
        sock = self._bind()
        self._stopping = False
        self._uvicorn = _Uvicorn(self, _uvicorn_config(self.app, loop="asyncio"))
        self._thread = threading.Thread(
            target=self._uvicorn.run,
            kwargs={"sockets": [sock]},
            name=f"fake-models:{self._port}",
            daemon=True,
        )
        self._thread.start()
        try:
            _wait_until_up(self.url, timeout, alive=self._thread.is_alive)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving; pending hangs and streams end at once."""
        if self._thread is None or self._uvicorn is None:
            return
        self._stopping = True
        self._uvicorn.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._uvicorn.force_exit = True
            self._thread.join(timeout)
        self._thread = None
        self._uvicorn = None

    def serve_forever(self) -> None:
        """Serve in this thread until SIGINT/SIGTERM, announcing ``LISTENING <url>`` on stdout."""
        sock = self._bind()
        print(f"LISTENING {self.url}", flush=True)
        _Uvicorn(self, _uvicorn_config(self.app, loop="auto")).run(sockets=[sock])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._port))
        self._port = sock.getsockname()[1]
        return sock

    # -- scripting -------------------------------------------------------------------------

    def add(self, *rules: Rule) -> Rule:
        """Append rules (tried in order after the existing ones); return the last one."""
        if not rules:
            raise TypeError("add() needs at least one Rule")
        with self._lock:
            self._rules.extend(rules)
        return rules[-1]

    def rule(self, **fields: Any) -> Rule:
        """Append ``Rule(**fields)`` and return it."""
        return self.add(Rule(**fields))

    def reset(self) -> None:
        """Forget all rules and records, and restart the request numbering."""
        with self._lock:
            self._rules.clear()
            self._records.clear()
            self._seq = itertools.count(1)

    @property
    def rules(self) -> list[Rule]:
        """A copy of the current rules."""
        with self._lock:
            return list(self._rules)

    # -- records ---------------------------------------------------------------------------

    def calls(
        self, model: str | None = None, containing: str | None = None, kind: Kind | None = None
    ) -> list[RecordedCall]:
        """Return recorded inference requests, oldest first, filtered like rules match."""
        with self._lock:
            return [c for c in self._records if _selected(c, model, containing, kind)]

    def count(
        self, model: str | None = None, containing: str | None = None, kind: Kind | None = None
    ) -> int:
        """Return how many recorded requests pass the filters."""
        return len(self.calls(model, containing, kind))

    @property
    def last_call(self) -> RecordedCall:
        """The most recent request; raises LookupError when there is none."""
        with self._lock:
            if not self._records:
                raise LookupError("the fake model server has received no request")
            return self._records[-1]

    def wait_for_calls(
        self,
        count: int = 1,
        *,
        model: str | None = None,
        containing: str | None = None,
        kind: Kind | None = None,
        timeout: float = 5.0,
    ) -> list[RecordedCall]:
        """Block until ``count`` matching requests have arrived; return them.

        Raises:
            TimeoutError: Fewer arrived within ``timeout`` seconds.
        """
        with self._arrived:
            if self._arrived.wait_for(
                lambda: self.count(model, containing, kind) >= count, timeout
            ):
                return self.calls(model, containing, kind)
        raise TimeoutError(self._shortfall(count, model, containing))

    async def await_calls(
        self,
        count: int = 1,
        *,
        model: str | None = None,
        containing: str | None = None,
        kind: Kind | None = None,
        timeout: float = 5.0,
    ) -> list[RecordedCall]:
        """Like :meth:`wait_for_calls`, without blocking the event loop."""
        deadline = time.monotonic() + timeout
        while len(found := self.calls(model, containing, kind)) < count:
            if time.monotonic() >= deadline:
                raise TimeoutError(self._shortfall(count, model, containing))
            await asyncio.sleep(_POLL_S)
        return found

    def _shortfall(self, count: int, model: str | None, containing: str | None) -> str:
        seen = [(c.model, c.prompt[:60]) for c in self.calls()]
        return f"expected {count} call(s) for model={model!r} containing={containing!r}; saw {seen}"

    def _record(self, request: ModelRequest) -> RecordedCall:
        with self._arrived:
            rule = next((r for r in self._rules if not r.exhausted and r.matches(request)), None)
            if rule is not None:
                rule.hits += 1
            call = RecordedCall(request=request, rule=rule, at=time.time(), seq=next(self._seq))
            self._records.append(call)
            self._arrived.notify_all()
        return call

    # -- HTTP ------------------------------------------------------------------------------

    def _build_app(self) -> Starlette:
        def chat(parse: Callable[[dict[str, Any], str], ModelRequest]) -> Callable[..., Any]:
            async def endpoint(http: Request) -> Response:
                return await self._answer(http, parse)

            return endpoint

        return Starlette(
            routes=[
                Route("/v1/chat/completions", chat(_openai_chat_request), methods=["POST"]),
                Route("/chat/completions", chat(_openai_chat_request), methods=["POST"]),
                Route("/v1/embeddings", chat(_openai_embed_request), methods=["POST"]),
                Route("/embeddings", chat(_openai_embed_request), methods=["POST"]),
                Route("/v1/models", self._openai_models, methods=["GET"]),
                Route("/v1/models/{model:path}", self._openai_model, methods=["GET"]),
                Route("/api/chat", chat(_ollama_chat_request), methods=["POST"]),
                Route("/api/generate", chat(_ollama_generate_request), methods=["POST"]),
                Route("/api/embed", chat(_ollama_embed_request), methods=["POST"]),
                Route("/api/embeddings", chat(_ollama_embed_request), methods=["POST"]),
                Route("/api/tags", self._ollama_tags, methods=["GET"]),
                Route("/api/show", self._ollama_show, methods=["POST"]),
                Route("/api/version", self._ollama_version, methods=["GET"]),
                Route("/", self._root, methods=["GET", "HEAD"]),
            ]
        )

    async def _answer(
        self, http: Request, parse: Callable[[dict[str, Any], str], ModelRequest]
    ) -> Response:
        try:
            body = await http.json()
            if not isinstance(body, dict):
                raise ValueError("the body is not a JSON object")
            request = parse(body, http.url.path)
        except (ValueError, KeyError, TypeError) as exc:
            return _error(http.url.path.startswith("/api/"), 400, f"bad request: {exc}")
        call = self._record(request)
        rule = call.rule or Rule()
        latency = self.latency if rule.latency is None else rule.latency
        token_delay = self.token_delay if rule.token_delay is None else rule.token_delay
        if rule.hang:
            await self._pause(None, http)
            return self._stopped(request)
        if not await self._pause(latency, http):
            return self._stopped(request)
        if rule.status is not None:
            return _rule_error(request, rule)
        if request.kind == "embed":
            rendered = _Rendered(_embed_body(request, self.embedding_dims), [], [], [])
            generation = 0.0
        else:
            reply = _Reply.build(
                request,
                rule,
                seq=call.seq,
                default=self.default_reply,
                latency=latency,
                token_delay=token_delay,
            )
            generate = request.path.endswith("/generate")
            rendered = _RENDERERS[request.protocol, generate](request, reply)
            generation = token_delay * max(len(reply.tokens) - 1, 0)
        if request.stream:
            media = "text/event-stream" if request.protocol == "openai" else "application/x-ndjson"
            frames = self._frames(rendered, token_delay, rule.disconnect_after)
            return StreamingResponse(frames, media_type=media)
        if not await self._pause(generation, http):
            return self._stopped(request)
        if rule.disconnect_after is None:
            return JSONResponse(rendered.content)
        data = json.dumps(rendered.content).encode()
        partial = _Rendered(rendered.content, [], [data[: len(data) // 2]], [])
        return StreamingResponse(self._frames(partial, 0.0, 1), media_type="application/json")

    async def _frames(
        self, rendered: _Rendered, token_delay: float, disconnect_after: int | None
    ) -> AsyncIterator[bytes]:
        """Yield head and token frames, then the tail; drop the connection when scripted."""
        for frame in rendered.head:
            yield frame
        for sent, frame in enumerate(rendered.tokens):
            if disconnect_after is not None and sent >= disconnect_after:
                raise _Disconnect
            if sent and not await self._pause(token_delay):
                raise _Disconnect
            yield frame
        if disconnect_after is not None or self._stopping:
            raise _Disconnect
        for frame in rendered.tail:
            yield frame

    async def _pause(self, seconds: float | None, http: Request | None = None) -> bool:
        """Sleep ``seconds`` (None: forever); False if the server stops or the client leaves."""
        if seconds is not None and seconds <= 0:
            return not self._stopping
        deadline = None if seconds is None else time.monotonic() + seconds
        while not self._stopping:
            if http is not None and await http.is_disconnected():
                return False
            left = _POLL_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return True
            await asyncio.sleep(min(left, _POLL_S))
        return False

    def _stopped(self, request: ModelRequest) -> Response:
        return _error(request.protocol == "ollama", 503, "fake model server is shutting down")

    def _listed_models(self) -> list[str]:
        with self._lock:
            scripted = [r.model for r in self._rules if r.model and not _is_glob(r.model)]
        return list(dict.fromkeys([*self.models, *scripted]))

    async def _openai_models(self, http: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [_model_card(m) for m in self._listed_models()]}
        )

    async def _openai_model(self, http: Request) -> Response:
        return JSONResponse(_model_card(http.path_params["model"]))

    async def _ollama_tags(self, http: Request) -> Response:
        return JSONResponse({"models": [_ollama_tag(m) for m in self._listed_models()]})

    async def _ollama_show(self, http: Request) -> Response:
        body = await http.json()
        family = "bert" if "embed" in str(body.get("model") or body.get("name")) else "llama"
        return JSONResponse(
            {
                "modelfile": "",
                "parameters": "",
                "template": "{{- if .Tools }}tools{{ end }}{{ .Prompt }}",
                "details": {"format": "gguf", "family": family, "parameter_size": "1B"},
                "model_info": {
                    "general.architecture": family,
                    f"{family}.context_length": CONTEXT_LENGTH,
                },
                "capabilities": ["completion", "tools"],
            }
        )

    async def _ollama_version(self, http: Request) -> Response:
        return JSONResponse({"version": OLLAMA_VERSION})

    async def _root(self, http: Request) -> Response:
        return PlainTextResponse("Ollama is running")


# -- request parsing ---------------------------------------------------------------------------


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    return next(
        (_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
    )


def _chat_request(
    protocol: Protocol, body: dict[str, Any], path: str, *, stream_default: bool
) -> ModelRequest:
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


def _openai_chat_request(body: dict[str, Any], path: str) -> ModelRequest:
    return _chat_request("openai", body, path, stream_default=False)


def _ollama_chat_request(body: dict[str, Any], path: str) -> ModelRequest:
    return _chat_request("ollama", body, path, stream_default=True)


def _ollama_generate_request(body: dict[str, Any], path: str) -> ModelRequest:
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


def _embed_request(protocol: Protocol, raw: Any, body: dict[str, Any], path: str) -> ModelRequest:
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


def _openai_embed_request(body: dict[str, Any], path: str) -> ModelRequest:
    return _embed_request("openai", body["input"], body, path)


def _ollama_embed_request(body: dict[str, Any], path: str) -> ModelRequest:
    return _embed_request("ollama", body.get("input", body.get("prompt", "")), body, path)


def _model_matches(pattern: str, model: str) -> bool:
    pattern, model = pattern.removesuffix(":latest"), model.removesuffix(":latest")
    return fnmatch.fnmatchcase(model, pattern) if _is_glob(pattern) else model == pattern


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _selected(
    call: RecordedCall, model: str | None, containing: str | None, kind: Kind | None
) -> bool:
    return (
        (model is None or _model_matches(model, call.model))
        and (containing is None or containing in call.prompt)
        and (kind is None or call.request.kind == kind)
    )


# -- answers -----------------------------------------------------------------------------------


def _tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall(text)


@dataclass(slots=True, kw_only=True)
class _Reply:
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
    ) -> _Reply:
        source = rule.reply
        if source is None:
            source = "" if rule.tool_calls else default
        if source is None:
            text = f"echo: {request.prompt}"
        else:
            text = source(request) if callable(source) else source
        tokens = _tokens(text)
        limit = _max_tokens(request.body)
        truncated = limit is not None and len(tokens) > limit
        tokens = tokens[:limit] if truncated else tokens
        calls = [
            ToolCall(name=c.name, arguments=c.arguments, id=c.id or f"call_{seq}_{i}")
            for i, c in enumerate(rule.tool_calls)
        ]
        spent = sum(len(_tokens(f"{c.name} {json.dumps(c.arguments)}")) for c in calls)
        return cls(
            model=request.model,
            seq=seq,
            tokens=tokens,
            tool_calls=calls,
            finish="tool_calls" if calls else "length" if truncated else "stop",
            prompt_tokens=sum(len(_tokens(_text(m.get("content")))) for m in request.messages),
            completion_tokens=len(tokens) + spent,
            latency=latency,
            token_delay=token_delay,
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


class _Rendered(NamedTuple):
    """One answer in a protocol's shape: the whole body, and the frames of its stream."""

    content: dict[str, Any]
    head: list[bytes]
    tokens: list[bytes]
    tail: list[bytes]


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


def _openai_chat(request: ModelRequest, reply: _Reply) -> _Rendered:
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
    with_usage = bool((request.body.get("stream_options") or {}).get("include_usage"))

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
    return _Rendered(content, [chunk({"role": "assistant", "content": ""})], frames, tail)


def _ollama_stats(reply: _Reply) -> dict[str, Any]:
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


def _ollama(request: ModelRequest, reply: _Reply, *, generate: bool) -> _Rendered:
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
    done |= _ollama_stats(reply)
    content = {**base, **body(reply.text, tool_calls), **done}

    def line(payload: dict[str, Any]) -> bytes:
        return json.dumps(payload).encode() + b"\n"

    frames = [line({**base, **body(token), "done": False}) for token in reply.tokens]
    if tool_calls:
        frames.append(line({**base, **body("", tool_calls), "done": False}))
    return _Rendered(content, [], frames, [line({**base, **body(""), **done})])


_RENDERERS: dict[tuple[Protocol, bool], Callable[[ModelRequest, _Reply], _Rendered]] = {
    ("openai", False): _openai_chat,
    ("ollama", False): lambda r, a: _ollama(r, a, generate=False),
    ("ollama", True): lambda r, a: _ollama(r, a, generate=True),
}


def _embed_body(request: ModelRequest, default_dims: int) -> dict[str, Any]:
    dims = int(request.body.get("dimensions") or default_dims)
    texts = [m["content"] for m in request.messages]
    vectors = [fake_embedding(t, dims) for t in texts]
    used = sum(len(_tokens(t)) for t in texts)
    if request.protocol == "ollama":
        if request.path.endswith("/embeddings"):
            return {"embedding": vectors[0]}
        return {
            "model": request.model,
            "embeddings": vectors,
            "total_duration": 1_000_000,
            "load_duration": 1_000_000,
            "prompt_eval_count": used,
        }
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


# -- errors ------------------------------------------------------------------------------------

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


def _error(
    ollama: bool,
    status: int,
    message: str,
    *,
    code: str | None = None,
    kind: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    if ollama:
        return JSONResponse({"error": message}, status, headers)
    kind = kind or ("server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status, headers)


def _rule_error(request: ModelRequest, rule: Rule) -> Response:
    status = rule.status or 500
    kind, code, template = _OPENAI_ERRORS.get(status, (None, None, f"Fake error {status}."))
    used = sum(len(_tokens(_text(m.get("content")))) for m in request.messages)
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
    return _error(ollama, status, message, code=code, kind=kind, headers=headers)


def _model_card(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": "fake-models"}


def _ollama_tag(model: str) -> dict[str, Any]:
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


# -- serving -----------------------------------------------------------------------------------


class _Disconnect(Exception):
    """Raised inside a stream to drop the connection without finishing the body."""


class _QuietDisconnects(logging.Filter):
    """Keep scripted disconnects out of uvicorn's error log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BaseExceptionGroup):
            return not all(isinstance(e, _Disconnect) for e in exc.exceptions)
        return not isinstance(exc, _Disconnect)


class _Uvicorn(uvicorn.Server):
    """uvicorn server that ends hangs and streams as soon as a shutdown is asked for."""

    def __init__(self, fake: FakeModelServer, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._fake = fake

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._fake._stopping = True
        super().handle_exit(sig, frame)


def _uvicorn_config(app: Starlette, *, loop: Literal["asyncio", "auto"]) -> uvicorn.Config:
    error_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDisconnects) for f in error_log.filters):
        error_log.addFilter(_QuietDisconnects())
    return uvicorn.Config(
        app,
        loop=loop,
        lifespan="off",
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )


def _wait_until_up(url: str, timeout: float, *, alive: Callable[[], bool]) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"fake model server at {url} exited during startup")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/api/version", timeout=1.0, trust_env=False).status_code == 200:
                return
        time.sleep(_POLL_S)
    raise TimeoutError(f"fake model server at {url} did not answer within {timeout} s")


class FakeModelProcess:
    """The fake server in its own process, for benchmarks; scripted only by CLI defaults.

    Args:
        port: Port to bind; 0 picks a free one.
        latency: Seconds before the first byte of every answer.
        token_delay: Seconds between streamed tokens.
        reply: Fixed reply text instead of the echo.
        embedding_dims: Default embedding size.
        startup_timeout: Seconds to wait for the server to answer.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        latency: float = 0.0,
        token_delay: float = 0.0,
        reply: str | None = None,
        embedding_dims: int = 384,
        startup_timeout: float = 20.0,
    ) -> None:
        self.args = [
            "--port", str(port),
            "--latency-ms", str(latency * 1000),
            "--token-delay-ms", str(token_delay * 1000),
            "--embedding-dims", str(embedding_dims),
        ]  # fmt: skip
        if reply is not None:
            self.args += ["--reply", reply]
        self.startup_timeout = startup_timeout
        self.url = ""
        self.process: subprocess.Popen[str] | None = None

    @property
    def openai_url(self) -> str:
        """OpenAI-compatible base URL (``<url>/v1``)."""
        return f"{self.url}/v1"

    def start(self) -> Self:
        """Spawn the server process and wait until it answers."""
        command = [sys.executable, str(Path(__file__).resolve()), *self.args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            ready = selector.select(self.startup_timeout)
        line = self.process.stdout.readline() if ready else ""
        self.process.stdout.close()
        if not line.startswith("LISTENING "):
            self.stop()
            raise RuntimeError(f"fake model process did not start (said {line!r})")
        self.url = line.split()[1]
        _wait_until_up(
            self.url,
            self.startup_timeout,
            alive=lambda: self.process is not None and self.process.poll() is None,
        )
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the process (kill it if it does not exit in ``timeout`` seconds)."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)
        self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the fake model server in the foreground."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    parser.add_argument("--reply", default=None, help="fixed reply text (default: echo)")
    parser.add_argument("--embedding-dims", type=int, default=384)
    parser.add_argument("--model", action="append", help="model to list (repeatable)")
    args = parser.parse_args(argv)
    FakeModelServer(
        models=args.model or DEFAULT_MODELS,
        default_reply=args.reply,
        latency=args.latency_ms / 1000,
        token_delay=args.token_delay_ms / 1000,
        embedding_dims=args.embedding_dims,
        host=args.host,
        port=args.port,
    ).serve_forever()


if __name__ == "__main__":
    main()
