"""Files: what clients upload for batches and what finished batches produce, per tenant.

A file's bytes live in the database beside its description (uploads are capped by
:class:`~spine.platform.batches.input.BatchLimits`), so a batch's input and output survive with the
database and need no shared disk between API processes. Another tenant's file is not found.
Descriptions render as OpenAI's ``file`` object, so the official clients read them.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal, cast

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncConnection

from spine.platform.batches.input import BatchLimits
from spine.platform.db import Database
from spine.platform.errors import BadRequest, NotFound, PayloadTooLarge
from spine.platform.inputs import storable_text
from spine.platform.schema import FileRow, utcnow

__all__ = [
    "UPLOAD_PURPOSES",
    "FilePage",
    "FilePurpose",
    "FileStore",
    "StoredFile",
    "new_file_id",
]

FilePurpose = Literal["batch", "batch_output", "user_data"]
UPLOAD_PURPOSES: frozenset[str] = frozenset({"batch", "user_data"})
"""Purposes a client may upload with; ``batch_output`` files are made by batches."""


def new_file_id() -> str:
    """Return a fresh file id, ``file-<32 hex digits>``."""
    return f"file-{uuid.uuid4().hex}"


class StoredFile(BaseModel):
    """A file's description, without its bytes."""

    id: str
    tenant: str
    purpose: FilePurpose
    filename: str
    bytes: int
    created_at: datetime

    def openai(self) -> dict[str, Any]:
        """Render as OpenAI's ``file`` object."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": int(self.created_at.timestamp()),
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


class FilePage(BaseModel):
    """One page of a file listing."""

    files: list[StoredFile]
    has_more: bool


class FileStore:
    """Stores, finds, lists and deletes a tenant's files."""

    def __init__(self, db: Database, *, limits: BatchLimits | None = None) -> None:
        self._db = db
        self.limits = limits or BatchLimits()

    async def upload(
        self, *, tenant: str, purpose: str, filename: str, content: bytes
    ) -> StoredFile:
        """Store a client's file after checking its purpose and size."""
        if purpose not in UPLOAD_PURPOSES:
            raise BadRequest(
                f"purpose {purpose!r} is not supported; use one of "
                + ", ".join(repr(p) for p in sorted(UPLOAD_PURPOSES)),
                field="purpose",
            )
        self.check_size(len(content), field="file")
        return await self.create(
            tenant=tenant,
            purpose=cast("FilePurpose", purpose),
            filename=filename,
            content=content,
        )

    def check_size(self, size: int, *, field: str) -> None:
        """Refuse an upload over the size limit with :class:`PayloadTooLarge`."""
        if size > self.limits.max_file_bytes:
            raise PayloadTooLarge(
                f"the file is {size} bytes; the limit is {self.limits.max_file_bytes} bytes",
                field=field,
            )

    async def create(
        self,
        *,
        tenant: str,
        purpose: FilePurpose,
        filename: str,
        content: bytes,
        file_id: str | None = None,
        conn: AsyncConnection | None = None,
    ) -> StoredFile:
        """Store a file, in the caller's transaction when one is given."""
        values: dict[str, Any] = {
            "id": file_id or new_file_id(),
            "tenant": tenant,
            "purpose": purpose,
            # A name is the client's label, not data: what cannot be stored is mended.
            "filename": storable_text(filename)[:255] or "upload.jsonl",
            "bytes": len(content),
            "content": content,
            "created_at": utcnow(),
        }
        if conn is not None:
            await conn.execute(sa.insert(_FILES).values(values))
        else:
            async with self._db.transaction() as own:
                await own.execute(sa.insert(_FILES).values(values))
        return _file(values)

    async def get(self, file_id: str, *, tenant: str) -> StoredFile:
        """Return a file's description; another tenant's file is not found."""
        query = sa.select(*_DESCRIPTION).where(_FILES.c.id == file_id, _FILES.c.tenant == tenant)
        async with self._db.transaction() as conn:
            row = (await conn.execute(query)).mappings().one_or_none()
        if row is None:
            raise NotFound(f"no file {file_id!r}", field="file_id")
        return _file(row)

    async def content(self, file_id: str, *, tenant: str) -> bytes:
        """Return a file's bytes."""
        query = sa.select(_FILES.c.content).where(_FILES.c.id == file_id, _FILES.c.tenant == tenant)
        async with self._db.transaction() as conn:
            content = (await conn.execute(query)).scalar_one_or_none()
        if content is None:
            raise NotFound(f"no file {file_id!r}", field="file_id")
        return bytes(content)

    async def list_page(
        self,
        *,
        tenant: str,
        purpose: str | None = None,
        limit: int = 100,
        after: str | None = None,
        order: Literal["asc", "desc"] = "desc",
    ) -> FilePage:
        """List a tenant's files by creation time; ``after`` is the last file id seen."""
        query = sa.select(*_DESCRIPTION).where(_FILES.c.tenant == tenant)
        if purpose is not None:
            query = query.where(_FILES.c.purpose == purpose)
        newest_first = order == "desc"
        if after is not None:
            created_at = await self._created_at(after, tenant)
            past = sa.or_(
                _FILES.c.created_at < created_at,
                sa.and_(_FILES.c.created_at == created_at, _FILES.c.id < after),
            )
            ahead = sa.or_(
                _FILES.c.created_at > created_at,
                sa.and_(_FILES.c.created_at == created_at, _FILES.c.id > after),
            )
            query = query.where(past if newest_first else ahead)
        keys = (_FILES.c.created_at, _FILES.c.id)
        query = query.order_by(*(k.desc() if newest_first else k.asc() for k in keys))
        async with self._db.transaction() as conn:
            rows = list((await conn.execute(query.limit(limit + 1))).mappings())
        return FilePage(files=[_file(r) for r in rows[:limit]], has_more=len(rows) > limit)

    async def delete(self, file_id: str, *, tenant: str) -> None:
        """Delete a file; another tenant's file is not found."""
        async with self._db.transaction() as conn:
            deleted = await conn.execute(
                sa.delete(_FILES).where(_FILES.c.id == file_id, _FILES.c.tenant == tenant)
            )
        if not deleted.rowcount:
            raise NotFound(f"no file {file_id!r}", field="file_id")

    async def _created_at(self, file_id: str, tenant: str) -> datetime:
        query = sa.select(_FILES.c.created_at).where(
            _FILES.c.id == file_id, _FILES.c.tenant == tenant
        )
        async with self._db.transaction() as conn:
            created_at: datetime | None = (await conn.execute(query)).scalar_one_or_none()
        if created_at is None:
            raise BadRequest(f"no file {file_id!r} to list after", field="after")
        return created_at


_FILES: sa.Table = FileRow.__table__  # type: ignore[assignment]
_DESCRIPTION = (
    _FILES.c.id,
    _FILES.c.tenant,
    _FILES.c.purpose,
    _FILES.c.filename,
    _FILES.c.bytes,
    _FILES.c.created_at,
)


def _file(row: Any) -> StoredFile:
    return StoredFile(
        id=row["id"],
        tenant=row["tenant"],
        purpose=row["purpose"],
        filename=row["filename"],
        bytes=row["bytes"],
        created_at=row["created_at"],
    )
