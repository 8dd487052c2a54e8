"""``/v1/files``: OpenAI's Files API, enough for batches (see :mod:`spine.platform.batches.files`).

``POST /v1/files`` takes a multipart upload (``file`` and ``purpose``: ``batch`` or
``user_data``) as the official clients send it; ``GET /v1/files`` lists (``purpose``,
``after``, ``limit``, ``order``), ``GET /v1/files/{id}`` describes, ``GET
/v1/files/{id}/content`` downloads and ``DELETE /v1/files/{id}`` deletes. A batch's output and
error files (purpose ``batch_output``) are here too. Errors are in OpenAI's shape.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from spine.platform.app.api._openai import openai_errors
from spine.platform.app.api.auth import authenticate, platform_of
from spine.platform.app.api.batches import JSONL_MEDIA, page_limit
from spine.platform.errors import BadRequest
from spine.platform.models.openai_errors import GatewayError

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["files"])

_MAX_LISTED = 10_000


@router.post("/files", response_model=None)
@openai_errors
async def upload_file(request: Request) -> Response:
    """Store an uploaded file."""
    caller = await authenticate(request)
    files = platform_of(request).files
    try:
        form = await request.form(max_files=1, max_fields=8)
    except HTTPException as exc:
        if exc.status_code == 413:
            raise
        raise GatewayError(exc.status_code, f"cannot read the upload: {exc.detail}") from None
    try:
        upload = form.get("file")
        purpose = form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise BadRequest("send the file as multipart/form-data field 'file'", field="file")
        if not isinstance(purpose, str) or not purpose:
            raise BadRequest("purpose is required (use 'batch')", field="purpose")
        # One byte over the limit is enough to refuse it.
        content = await upload.read(files.limits.max_file_bytes + 1)
        stored = await files.upload(
            tenant=caller.tenant,
            purpose=purpose,
            filename=upload.filename or "upload.jsonl",
            content=content,
        )
    finally:
        await form.close()
    return JSONResponse(stored.openai())


@router.get("/files", response_model=None)
@openai_errors
async def list_files(request: Request) -> Response:
    """List the caller's files (``purpose``, ``after``, ``limit``, ``order``)."""
    caller = await authenticate(request)
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest("order must be 'asc' or 'desc'", field="order")
    page = await platform_of(request).files.list_page(
        tenant=caller.tenant,
        purpose=request.query_params.get("purpose") or None,
        limit=page_limit(request, default=_MAX_LISTED, maximum=_MAX_LISTED),
        after=request.query_params.get("after") or None,
        order="asc" if order == "asc" else "desc",
    )
    data = [stored.openai() for stored in page.files]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": page.has_more,
        }
    )


@router.get("/files/{file_id}", response_model=None)
@openai_errors
async def get_file(file_id: str, request: Request) -> Response:
    """Describe one of the caller's files."""
    caller = await authenticate(request)
    stored = await platform_of(request).files.get(file_id, tenant=caller.tenant)
    return JSONResponse(stored.openai())


@router.get("/files/{file_id}/content", response_model=None)
@openai_errors
async def file_content(file_id: str, request: Request) -> Response:
    """Download one of the caller's files."""
    caller = await authenticate(request)
    files = platform_of(request).files
    stored = await files.get(file_id, tenant=caller.tenant)
    content = await files.content(file_id, tenant=caller.tenant)
    media = JSONL_MEDIA if stored.filename.endswith(".jsonl") else "application/octet-stream"
    return Response(content, media_type=media)


@router.delete("/files/{file_id}", response_model=None)
@openai_errors
async def delete_file(file_id: str, request: Request) -> Response:
    """Delete one of the caller's files."""
    caller = await authenticate(request)
    await platform_of(request).files.delete(file_id, tenant=caller.tenant)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})
