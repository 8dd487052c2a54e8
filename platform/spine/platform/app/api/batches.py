"""``/v1/batches``: OpenAI's Batch API over the task backbone (see :mod:`spine.platform.batches.store`).

The official clients' flow works as it is: upload the JSONL with ``files.create(purpose=
"batch")``, then ``batches.create(input_file_id=..., endpoint="/v1/chat/completions",
completion_window="24h")``, ``batches.retrieve`` until ``completed``, and read
``files.content(output_file_id)`` and ``files.content(error_file_id)``; ``batches.cancel`` and
``batches.list`` too. As a shortcut, the JSONL itself may be posted to ``POST /v1/batches``
with ``Content-Type: application/jsonl`` (or ``application/x-ndjson``); ``?endpoint=`` and
``?completion_window=`` are optional there. ``GET /v1/batches/{id}/output`` and ``/errors``
give a finished batch's files directly. Errors are in OpenAI's shape.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from spine.platform.app.api._openai import openai_errors
from spine.platform.app.api.auth import authenticate, platform_of
from spine.platform.app.api.errors import documented
from spine.platform.batches.input import CHAT_COMPLETIONS, COMPLETION_WINDOW, BatchCreate
from spine.platform.batches.output import Batch
from spine.platform.errors import BadRequest
from spine.platform.models.openai_errors import GatewayError

__all__ = ["JSONL_TYPES", "page_limit", "router"]

router = APIRouter(prefix="/v1", tags=["batches"])

JSONL_TYPES = frozenset(
    {"application/jsonl", "application/x-ndjson", "application/x-jsonlines", "text/jsonl"}
)
JSONL_MEDIA = "application/jsonl"


@router.post("/batches", response_model=None, responses=documented(404, 415))
@openai_errors
async def create_batch(request: Request) -> Response:
    """Start a batch over an uploaded file, or over JSONL posted as the body."""
    caller = await authenticate(request)
    batches = platform_of(request).batches
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    body = await request.body()
    if media in JSONL_TYPES:
        batch = await batches.create_from_jsonl(
            body,
            principal=caller,
            endpoint=request.query_params.get("endpoint", CHAT_COMPLETIONS),
            completion_window=request.query_params.get("completion_window", COMPLETION_WINDOW),
        )
    elif media in ("", "application/json"):
        batch = await batches.create(BatchCreate.parse(body), principal=caller)
    else:
        raise GatewayError(
            415,
            f"Content-Type {media!r} is not accepted: send application/json "
            "({input_file_id, endpoint, completion_window}) or application/jsonl (the requests)",
            param="Content-Type",
            code="unsupported_media_type",
        )
    return JSONResponse(batch.openai())


@router.get("/batches", response_model=None)
@openai_errors
async def list_batches(request: Request) -> Response:
    """List the caller's batches, newest first (``after``, ``limit`` up to 100)."""
    caller = await authenticate(request)
    batches, has_more = await platform_of(request).batches.list_page(
        principal=caller,
        limit=page_limit(request, default=20, maximum=100),
        after=request.query_params.get("after") or None,
    )
    return JSONResponse(_page(batches, has_more))


@router.get("/batches/{batch_id}", response_model=None)
@openai_errors
async def get_batch(batch_id: str, request: Request) -> Response:
    """Return a batch and its progress; the first read after its last line ends finalizes it."""
    caller = await authenticate(request)
    batch = await platform_of(request).batches.get(batch_id, principal=caller)
    return JSONResponse(batch.openai())


@router.post("/batches/{batch_id}/cancel", response_model=None, responses=documented(409))
@openai_errors
async def cancel_batch(batch_id: str, request: Request) -> Response:
    """Cancel the lines that have not ended; the batch is ``cancelled`` once they all have."""
    caller = await authenticate(request)
    batch = await platform_of(request).batches.cancel(batch_id, principal=caller)
    return JSONResponse(batch.openai())


@router.get("/batches/{batch_id}/output", response_model=None)
@openai_errors
async def batch_output(batch_id: str, request: Request) -> Response:
    """Return a finished batch's answers as JSONL, in line order."""
    return await _result_file(batch_id, request, "output")


@router.get("/batches/{batch_id}/errors", response_model=None)
@openai_errors
async def batch_errors(batch_id: str, request: Request) -> Response:
    """Return a finished batch's error file: every line that has no answer, and why."""
    return await _result_file(batch_id, request, "error")


async def _result_file(
    batch_id: str, request: Request, kind: Literal["output", "error"]
) -> Response:
    caller = await authenticate(request)
    content = await platform_of(request).batches.result_file(batch_id, principal=caller, kind=kind)
    return Response(content, media_type=JSONL_MEDIA)


def page_limit(request: Request, *, default: int, maximum: int) -> int:
    """Read the ``limit`` query parameter, 1 to ``maximum``."""
    raw = request.query_params.get("limit")
    if raw is None or not raw.strip():
        return default
    if not raw.strip().isdigit() or not 1 <= int(raw) <= maximum:
        raise BadRequest(f"limit must be a whole number from 1 to {maximum}", field="limit")
    return int(raw)


def _page(batches: list[Batch], has_more: bool) -> dict[str, object]:
    return {
        "object": "list",
        "data": [batch.openai() for batch in batches],
        "first_id": batches[0].id if batches else None,
        "last_id": batches[-1].id if batches else None,
        "has_more": has_more,
    }
