"""One JSON error shape for every failure, and the request body size limit.

Every error body is ``{"error": {"type": ..., "message": ..., "field": ...}}``; no stack trace
ever reaches a client.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spine.platform.errors import SpineError

__all__ = ["BodySizeLimit", "error_response", "install_error_handlers"]

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
    503: "service_unavailable",
}


def error_response(status: int, error_type: str, message: str, **extra: Any) -> JSONResponse:
    """Build a response in the one error shape."""
    body = {"type": error_type, "message": message, **{k: v for k, v in extra.items() if v}}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Render platform, validation, HTTP and unexpected errors in the one shape."""

    @app.exception_handler(SpineError)
    async def _spine(_: Request, exc: SpineError) -> JSONResponse:
        if exc.status_code >= 500:
            logger.warning("answered %d: %s", exc.status_code, exc.message)
        body = exc.to_dict()
        return error_response(exc.status_code, body.pop("type"), body.pop("message"), **body)

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
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return error_response(
            exc.status_code, _HTTP_TYPES.get(exc.status_code, "http_error"), str(exc.detail)
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return error_response(500, "internal_error", "an internal error occurred; see the logs")


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
            413, "request_too_large", f"the request body is over {limit} bytes"
        )
        await response(scope, receive, send)


class _TooLarge(HTTPException):
    # An HTTPException, because FastAPI turns any other error raised while it reads the body
    # into "400 There was an error parsing the body"; this one it lets through to `_http`.
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body is over {max_bytes} bytes")
