"""The fake model server: scripting, records, and the HTTP app that answers both protocols."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Self

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from . import ollama, openai
from ._uvicorn import POLL_S, Disconnect, Uvicorn, uvicorn_config, wait_until_up
from .errors import error_response, rule_error
from .replies import Rendered, Reply, embeddings
from .scripting import Kind, ModelRequest, Protocol, RecordedCall, Rule, is_glob, selected

DEFAULT_MODELS: tuple[str, ...] = (
    "llama3.2",
    "gpt-4o-mini",
    "nomic-embed-text",
    "text-embedding-3-small",
)

_RENDERERS: dict[tuple[Protocol, bool], Callable[[ModelRequest, Reply], Rendered]] = {
    ("openai", False): openai.render_chat,
    ("ollama", False): ollama.render_chat,
    ("ollama", True): ollama.render_generate,
}
_EMBEDDING_RENDERERS: dict[
    Protocol, Callable[[ModelRequest, list[list[float]], int], dict[str, Any]]
] = {
    "openai": openai.render_embeddings,
    "ollama": ollama.render_embeddings,
}


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
        # uvloop when installed: under the plain asyncio loop in this thread every answer took
        # 44 ms (0.9 ms with uvloop, measured with a 0-latency reply), slowing every test.
        self._uvicorn = Uvicorn(self, uvicorn_config(self.app, loop="auto"))
        self._thread = threading.Thread(
            target=self._uvicorn.run,
            kwargs={"sockets": [sock]},
            name=f"fake-models:{self._port}",
            daemon=True,
        )
        self._thread.start()
        try:
            wait_until_up(self.url, timeout, alive=self._thread.is_alive)
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
        Uvicorn(self, uvicorn_config(self.app, loop="auto")).run(sockets=[sock])

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
            return [c for c in self._records if selected(c, model, containing, kind)]

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
            await asyncio.sleep(POLL_S)
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
                Route("/v1/chat/completions", chat(openai.parse_chat), methods=["POST"]),
                Route("/chat/completions", chat(openai.parse_chat), methods=["POST"]),
                Route("/v1/embeddings", chat(openai.parse_embed), methods=["POST"]),
                Route("/embeddings", chat(openai.parse_embed), methods=["POST"]),
                Route("/v1/models", self._openai_models, methods=["GET"]),
                Route("/v1/models/{model:path}", self._openai_model, methods=["GET"]),
                Route("/api/chat", chat(ollama.parse_chat), methods=["POST"]),
                Route("/api/generate", chat(ollama.parse_generate), methods=["POST"]),
                Route("/api/embed", chat(ollama.parse_embed), methods=["POST"]),
                Route("/api/embeddings", chat(ollama.parse_embed), methods=["POST"]),
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
            return error_response(http.url.path.startswith("/api/"), 400, f"bad request: {exc}")
        request.api_key = http.headers.get("authorization", "").removeprefix("Bearer ")
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
            return rule_error(request, rule)
        if request.kind == "embed":
            vectors, used = embeddings(request, self.embedding_dims)
            content = _EMBEDDING_RENDERERS[request.protocol](request, vectors, used)
            rendered = Rendered(content, [], [], [])
            generation = 0.0
        else:
            reply = Reply.build(
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
            # ASCII-escaped, as json.dumps writes it: a reply may then hold what UTF-8 cannot
            # (a lone surrogate, escaped), as a real server's answer may.
            return Response(json.dumps(rendered.content).encode(), media_type="application/json")
        data = json.dumps(rendered.content).encode()
        partial = Rendered(rendered.content, [], [data[: len(data) // 2]], [])
        return StreamingResponse(self._frames(partial, 0.0, 1), media_type="application/json")

    async def _frames(
        self, rendered: Rendered, token_delay: float, disconnect_after: int | None
    ) -> AsyncIterator[bytes]:
        """Yield head and token frames, then the tail; drop the connection when scripted."""
        for frame in rendered.head:
            yield frame
        for sent, frame in enumerate(rendered.tokens):
            if disconnect_after is not None and sent >= disconnect_after:
                raise Disconnect
            if sent and not await self._pause(token_delay):
                raise Disconnect
            yield frame
        if disconnect_after is not None or self._stopping:
            raise Disconnect
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
            left = POLL_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return True
            await asyncio.sleep(min(left, POLL_S))
        return False

    def _stopped(self, request: ModelRequest) -> Response:
        return error_response(
            request.protocol == "ollama", 503, "fake model server is shutting down"
        )

    def _listed_models(self) -> list[str]:
        with self._lock:
            scripted = [r.model for r in self._rules if r.model and not is_glob(r.model)]
        return list(dict.fromkeys([*self.models, *scripted]))

    async def _openai_models(self, http: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [openai.model_card(m) for m in self._listed_models()]}
        )

    async def _openai_model(self, http: Request) -> Response:
        return JSONResponse(openai.model_card(http.path_params["model"]))

    async def _ollama_tags(self, http: Request) -> Response:
        return JSONResponse({"models": [ollama.tag(m) for m in self._listed_models()]})

    async def _ollama_show(self, http: Request) -> Response:
        return JSONResponse(ollama.show(await http.json()))

    async def _ollama_version(self, http: Request) -> Response:
        return JSONResponse({"version": ollama.VERSION})

    async def _root(self, http: Request) -> Response:
        return PlainTextResponse("Ollama is running")
