"""One JSON error shape for every failure, the request body size limit, and the documented codes.

Every error body is ``{"error": {"type": ..., "message": ..., "field": ...}}``; no stack trace
ever reaches a client. Under the OpenAI-compatible paths (:data:`OPENAI_PATHS`) the body is
OpenAI's, ``{"error": {"message", "type", "param", "code"}}``, for every answer there: an
unknown path, a method the path does not take, a body over its limit, an unexpected error. A 503 (a backing service is down) carries ``Retry-After``; a 405 carries
``Allow`` with every method the path answers. An unexpected error is logged by its type and
where it was raised, never its message: the messages of database and validation errors quote
the values they refused, and those may be a user's prompt.
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spine.platform.app.api.path_templates import match_path
from spine.platform.errors import RunFailure, SpineError
from spine.platform.models.openai_errors import GatewayError

__all__ = [
    "OPENAI_PATHS",
    "BodySizeLimit",
    "ErrorBody",
    "UnexpectedErrors",
    "document_errors",
    "documented",
    "error_response",
    "install_error_handlers",
    "loggable",
    "retry_after_of",
]

logger = logging.getLogger(__name__)

_HTTP_TYPES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    431: "headers_too_large",
    503: "service_unavailable",
}
DEFAULT_RETRY_AFTER = 2
_OPENAI_UNSERVED = (
    "/v1/completions",
    "/v1/moderations",
    "/v1/images",
    "/v1/audio",
    "/v1/assistants",
    "/v1/threads",
    "/v1/vector_stores",
    "/v1/fine_tuning",
    "/v1/uploads",
    "/v1/realtime",
    "/v1/conversations",
)
"""OpenAI APIs the gateway does not serve: an official client calling one is told so."""
OPENAI_PATHS = (
    "/v1/chat/",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/models",
    "/v1/files",
    "/v1/batches",
    *_OPENAI_UNSERVED,
)
"""Path prefixes of the routes that answer errors in OpenAI's shape."""
# OpenAI's error type of a status its routes answer on their own (other statuses: the request).
_OPENAI_TYPES = {404: "invalid_request_error", 500: "server_error"}


class ErrorDetail(BaseModel):
    """What went wrong; OpenAI-compatible routes add ``param`` and ``code``."""

    model_config = ConfigDict(extra="allow")

    type: str
    message: str
    field: str | None = Field(None, description="The field, parameter or header at fault.")


class ErrorBody(BaseModel):
    """The one error shape."""

    error: ErrorDetail


_MEANINGS = {
    400: "The request cannot be carried out as asked, or holds a value that cannot be stored",
    401: "The API key is missing, malformed, unknown or revoked",
    403: "The key may not do this",
    404: "Not found (also another tenant's object)",
    409: "The object's state does not allow it",
    413: "The body is over its size limit",
    415: "The content type is not accepted",
    422: "A parameter or field is missing, or of the wrong type, shape or range",
    429: "A budget is spent, or the provider limits the rate",
    499: "The client went away before the answer",
    501: "Not supported by this deployment's database",
    502: "The model provider refused or failed the call",
    503: "A backing service is down; try again after Retry-After",
}


def documented(*codes: int) -> dict[int | str, dict[str, Any]]:
    """Return FastAPI ``responses=`` for the error codes an operation answers."""
    return {
        code: {"model": ErrorBody, "description": _MEANINGS.get(code, "Error")} for code in codes
    }


def document_errors(app: FastAPI, *, openai_paths: tuple[str, ...] = ()) -> None:
    """List in the OpenAPI document the error codes every operation answers.

    Routes declare their own (``responses=documented(409)``); these follow from what every
    route shares: on ``/v1``, 400 (a value refused), 401 (the key) and 503 (a backing service,
    with ``Retry-After``); 422 where the input guard and FastAPI answer in the platform's shape
    (OpenAI-compatible routes answer 400 instead); 404 where a path names an object or a
    ``tenant`` parameter another tenant; 413 where a body is sent. FastAPI's own 422 schema is replaced: our validation errors have the one shape.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        error_schema = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(error_schema.pop("$defs", {}))
        components.setdefault("ErrorBody", error_schema)
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                responses = operation.setdefault("responses", {})
                openai = path.startswith(openai_paths)
                if openai:
                    # Their parameters are plain strings: FastAPI's 422 never comes.
                    responses.pop("422", None)
                for code in _shared_codes(path, method, operation, openai=openai):
                    shared = _error_response(code)
                    if code == 422 or str(code) not in responses:
                        responses[str(code)] = shared
                    elif "headers" in shared:
                        responses[str(code)].setdefault("headers", shared["headers"])
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _shared_codes(path: str, method: str, operation: dict[str, Any], *, openai: bool) -> list[int]:
    if not path.startswith("/v1"):
        return []
    codes = [400, 401, 503]
    if not openai:
        codes.append(422)
    names = {p.get("name") for p in operation.get("parameters", [])}
    if "{" in path or "tenant" in names:  # another tenant's object is not found, like none
        codes.append(404)
    if method.lower() in ("post", "put", "patch"):
        codes.append(413)
    return codes


def _error_response(code: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _MEANINGS.get(code, "Error"),
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }
    if code == 503:
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before trying again",
                "schema": {"type": "integer"},
            }
        }
    if code == 401:
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return response


def error_response(
    status: int,
    error_type: str,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    retry_after: int = DEFAULT_RETRY_AFTER,
    request_path: str | None = None,
    **extra: Any,
) -> JSONResponse:
    """Build a response in the one error shape (401: ``WWW-Authenticate``; 503: ``Retry-After``).

    A ``request_path`` under :data:`OPENAI_PATHS` is answered in OpenAI's shape instead, with
    ``error_type`` as its ``code``.
    """
    body = {"type": error_type, "message": message, **{k: v for k, v in extra.items() if v}}
    if request_path is not None and request_path.startswith(OPENAI_PATHS):
        kind = _OPENAI_TYPES.get(status, "invalid_request_error")
        body = {"message": message, "type": kind, "param": None, "code": error_type}
    sent = dict(headers or {})
    if status == 401:
        sent["WWW-Authenticate"] = "Bearer"
    if status == 503:
        sent.setdefault("Retry-After", str(retry_after))
    return JSONResponse({"error": body}, status_code=status, headers=sent or None)


def loggable(exc: SpineError) -> str:
    """Say what failed, for the logs: the message, unless it may quote a user's words.

    A model call's failure carries the provider's message, and a provider may quote the prompt
    back; those are logged by their type and cause only (the client still gets the message).
    """
    if isinstance(exc, RunFailure | GatewayError) or isinstance(exc.__cause__, RunFailure):
        cause = exc.details.get("cause")
        return f"{exc.error_type}{f' ({cause})' if cause else ''}"
    return exc.message


def retry_after_of(exc: SpineError, default: int = DEFAULT_RETRY_AFTER) -> int:
    """Return the seconds a 503 asks to wait: the error's own ``retry_after``, else ``default``."""
    given = exc.details.get("retry_after")
    if isinstance(given, int | float) and not isinstance(given, bool) and math.isfinite(given):
        return max(math.ceil(given), 1)
    return default


def install_error_handlers(app: FastAPI) -> None:
    """Render platform, validation and HTTP errors in the one shape.

    Unexpected errors are :class:`UnexpectedErrors`' (a middleware): an exception handler for
    ``Exception`` would answer, then hand the error on to the server, which logs its message.
    """

    @app.exception_handler(SpineError)
    async def _spine(_: Request, exc: SpineError) -> JSONResponse:
        if exc.status_code >= 500:
            logger.warning("answered %d: %s", exc.status_code, loggable(exc))
        body = exc.to_dict()
        return error_response(
            exc.status_code,
            body.pop("type"),
            body.pop("message"),
            retry_after=retry_after_of(exc),
            **body,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [_problem(e) for e in exc.errors()]
        first = problems[0] if problems else {"field": None, "message": "invalid request"}
        return error_response(
            422,
            "validation_error",
            f"{first['field']}: {first['message']}",
            field=first["field"],
            errors=problems,
        )

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request.scope))
        message = str(exc.detail)
        if exc.status_code == 404 and request.url.path.startswith(OPENAI_PATHS):
            message = f"Invalid URL ({request.method} {request.url.path})"  # OpenAI's words
            if request.url.path.startswith(_OPENAI_UNSERVED):
                message += (
                    ": this gateway serves OpenAI's chat completions, responses, embeddings, "
                    "models, files and batches, not this API"
                )
        return error_response(
            exc.status_code,
            _HTTP_TYPES.get(exc.status_code, "http_error"),
            message,
            headers=headers,
            request_path=request.url.path,
        )


def _allowed_methods(scope: Scope) -> list[str]:
    # Starlette's Allow names the methods of the first route on the path only; a path is
    # often served by several (GET and POST /v1/tasks).
    methods: set[str] = set()
    for template, _ in match_path(scope["app"], scope["path"]):
        methods |= template.methods
    return sorted(methods)


class UnexpectedErrors:
    """Answer an unexpected error with a 500 in the one shape, logged without its message."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        except ClientDisconnect:
            return  # the client left (or was cut off) while sending: nobody to answer
        except Exception as exc:
            logger.error(
                "unhandled error on %s %s: %s", scope["method"], scope["path"], described(exc)
            )
            if not started:
                response = error_response(
                    500,
                    "internal_error",
                    "an internal error occurred; see the logs",
                    request_path=scope["path"],
                )
                await response(scope, receive, send)


def described(exc: BaseException) -> str:
    """Describe an error by its types and where it was raised, never by its message."""
    parts: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(parts) < 5:
        code = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        kind = f"{type(current).__module__}.{type(current).__qualname__}"
        frames = traceback.extract_tb(current.__traceback__)[-6:]
        where = "; ".join(f"{f.filename}:{f.lineno} in {f.name}" for f in frames)
        parts.append(f"{kind}{f' (SQLSTATE {code})' if code else ''} at {where or '?'}")
        current = current.__cause__ or current.__context__
    return " <- ".join(parts)


def _problem(error: Any) -> dict[str, Any]:
    if error.get("type") == "json_invalid":
        # FastAPI puts the character offset where a field name would be: name the body instead.
        loc = list(error.get("loc") or [])
        where = f" at character {loc[-1]}" if len(loc) > 1 else ""
        reason = (error.get("ctx") or {}).get("error") or error["msg"]
        return {"field": "body", "message": f"the body is not valid JSON ({reason}{where})"}
    return {"field": _field(error["loc"]), "message": error["msg"]}


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        parts = parts[1:] or parts
    return ".".join(parts)


class BodySizeLimit:
    """Reject request bodies over a limit with 413, declared or streamed.

    ``overrides`` give some paths a limit of their own (batch uploads are larger).
    """

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, overrides: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.overrides = dict(overrides or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.overrides.get(scope["path"], self.max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(scope, receive, send, limit)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge(limit)
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge:
            await self._reject(scope, receive, send, limit)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = error_response(
            413,
            "request_too_large",
            f"the request body is over {limit} bytes",
            request_path=scope["path"],
        )
        await response(scope, receive, send)


class _TooLarge(HTTPException):
    # An HTTPException, because FastAPI turns any other error raised while it reads the body
    # into "400 There was an error parsing the body"; this one it lets through to `_http`.
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body is over {max_bytes} bytes")
