"""Refuse, before any route runs, request values the platform cannot store.

:class:`InputGuard` applies the rules of :mod:`spine.platform.inputs` to every request:

1. path parameters (``/v1/tasks/%00``) and query parameters (``?agent=%00``): no NUL
   character, no lone surrogate — the refusal names the parameter;
2. a JSON body (``application/json``, any ``+json`` type, or no content type at all): read
   whole, then decoded and checked — depth bounded by ``max_depth``, no NUL or lone surrogate
   in any key or string, no infinite number nor integer beyond 64 bits — the refusal names the
   field by its path (``metadata.k``, ``messages.0.content``). A body that is not JSON at all is
   passed on: the route says so in its own words. The body is then handed to the route as it
   came, and the value decoded and checked beside it (:func:`checked_json`): the hot routes
   take it from there rather than decoding and checking the body a second time.

Refusals are 400 ``invalid_request`` in the one error shape (as the platform refuses a value
elsewhere; a value of the wrong type or shape stays FastAPI's 422); on the OpenAI-compatible
routes they are 400 ``invalid_request_error`` in OpenAI's shape, as their other errors are.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spine.platform.app.api._openai import GatewayError, openai_error
from spine.platform.app.api.errors import error_response
from spine.platform.app.api.path_templates import match_path
from spine.platform.inputs import MAX_JSON_DEPTH, InvalidInput, load_json, text_problem

__all__ = ["InputGuard", "checked_json", "replay"]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_CHECKED = "spine.checked_json"
"""Scope key of ``(max_depth, value)``: the JSON body as the guard decoded and checked it."""


class InputGuard:
    """ASGI middleware: refuse unstorable parameters and JSON bodies with a 4xx naming them."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_depth: int = MAX_JSON_DEPTH,
        openai_paths: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.max_depth = max_depth
        self.openai_paths = tuple(openai_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = _parameter_refusal(scope)
        if refusal is not None:
            await self._refuse(refusal, scope, receive, send)
            return
        if scope["method"] not in _BODY_METHODS or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        body, last = await _read_body(receive)
        if body.strip():
            try:
                scope[_CHECKED] = (
                    self.max_depth,
                    load_json(body, max_depth=self.max_depth, field=""),
                )
            except InvalidInput as exc:
                await self._refuse(exc, scope, receive, send)
                return
            except ValueError:
                pass  # not JSON: the route answers that in its own words
        await self.app(scope, replay(body, receive, last), send)

    async def _refuse(self, exc: InvalidInput, scope: Scope, receive: Receive, send: Send) -> None:
        field = exc.field or "body"
        if scope["path"].startswith(self.openai_paths):
            # OpenAI names the top-level parameter; the message says where inside it.
            response = openai_error(GatewayError.unstorable(exc))
        else:
            response = error_response(exc.status_code, exc.error_type, exc.message, field=field)
        await response(scope, receive, send)


def checked_json(scope: Scope, *, max_depth: int = MAX_JSON_DEPTH) -> Any | None:
    """The request's JSON body as the guard decoded it and found it storable, nested at most
    ``max_depth`` levels; None when it did not (not JSON, or checked to a deeper bound)."""
    checked = scope.get(_CHECKED)
    if checked is None or checked[0] > max_depth:
        return None
    return checked[1]


def _parameter_refusal(scope: Scope) -> InvalidInput | None:
    path: str = scope["path"]
    reason = text_problem(path)
    if reason:
        name = _path_parameter_at_fault(scope) or "path"
        return InvalidInput(f"{name}: {reason}", field=name)
    query: bytes = scope.get("query_string", b"")
    if query:
        # Parsed as Starlette parses it, so the values checked are the values routes see.
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            reason = text_problem(name) or text_problem(value)
            if reason:
                field = name if text_problem(name) is None else "query"
                return InvalidInput(f"{field}: {reason}", field=field)
    return None


def _path_parameter_at_fault(scope: Scope) -> str | None:
    for _, values in match_path(scope["app"], scope["path"]):
        for name, value in values.items():
            if text_problem(value):
                return name
    return None


def _is_json(scope: Scope) -> bool:
    content_type = b""
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value
            break
    media = content_type.split(b";", 1)[0].strip().lower()
    return media in (b"", b"application/json", b"text/json") or media.endswith(b"+json")


async def _read_body(receive: Receive) -> tuple[bytes, Message | None]:
    """Read the whole body; also return a disconnect met on the way, to hand on."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), message
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), None


def replay(body: bytes, receive: Receive, last: Message | None = None) -> Receive:
    """A channel that gives ``body`` (read already), then ``last`` if given, then ``receive``."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    if last is not None:
        pending.append(last)

    async def replayed() -> Message:
        # After the body, the real channel: streaming routes wait on it for the disconnect.
        return pending.pop(0) if pending else await receive()

    return replayed
