"""Responses kept per tenant, for ``previous_response_id`` and for reading back.

A response asked with ``store`` (OpenAI's default) is written before it is answered, so the
next request can continue from it at once. What is kept is the ``response`` object as answered,
the conversation in chat messages up to and including the answer (its instructions left out:
OpenAI does not carry them over), and the input items as given. Another tenant's response is
not found. Kept responses older than the retention (``GENAI_API__RESPONSE_RETENTION_DAYS``,
OpenAI keeps them 30 days) are deleted by the API's sweep.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from spine.platform.db import Database
from spine.platform.errors import NotFound
from spine.platform.schema import ResponseRow, utcnow

__all__ = ["ResponseStore", "StoredResponse"]

_RESPONSES: sa.Table = ResponseRow.__table__  # type: ignore[assignment]


@dataclass(slots=True, frozen=True)
class StoredResponse:
    """A kept response: as answered, its conversation so far, and its input items."""

    body: dict[str, Any]
    conversation: list[dict[str, Any]]
    input_items: list[dict[str, Any]]


class ResponseStore:
    """Keeps Responses API answers in the platform's database, per tenant."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def keep(
        self,
        *,
        tenant: str,
        body: dict[str, Any],
        conversation: list[dict[str, Any]],
        input_items: list[dict[str, Any]],
    ) -> None:
        """Write a response (committed when this returns)."""
        values = {
            "id": body["id"],
            "tenant": tenant,
            "body": _text(body),
            "conversation": _text(conversation),
            "input_items": _text(input_items),
            "created_at": utcnow(),
        }
        async with self._db.transaction() as conn:
            await conn.execute(sa.insert(_RESPONSES).values(values))

    async def get(self, response_id: str, *, tenant: str) -> StoredResponse:
        """Return a kept response.

        Raises:
            NotFound: No such response of this tenant (never kept, deleted, or expired).
        """
        query = sa.select(
            _RESPONSES.c.body, _RESPONSES.c.conversation, _RESPONSES.c.input_items
        ).where(_RESPONSES.c.id == response_id, _RESPONSES.c.tenant == tenant)
        async with self._db.transaction() as conn:
            row = (await conn.execute(query)).one_or_none()
        if row is None:
            raise NotFound(f"no response {response_id!r}", field="response_id")
        return StoredResponse(
            body=json.loads(row.body),
            conversation=json.loads(row.conversation),
            input_items=json.loads(row.input_items),
        )

    async def delete(self, response_id: str, *, tenant: str) -> None:
        """Delete a kept response; another tenant's is not found."""
        async with self._db.transaction() as conn:
            deleted = await conn.execute(
                sa.delete(_RESPONSES).where(
                    _RESPONSES.c.id == response_id, _RESPONSES.c.tenant == tenant
                )
            )
        if not deleted.rowcount:
            raise NotFound(f"no response {response_id!r}", field="response_id")

    async def forget_older_than(self, days: float, *, now: datetime | None = None) -> int:
        """Delete the responses kept more than ``days`` ago; return how many."""
        cutoff = (now or utcnow()) - timedelta(days=days)
        async with self._db.transaction() as conn:
            deleted = await conn.execute(
                sa.delete(_RESPONSES).where(_RESPONSES.c.created_at < cutoff)
            )
        return int(deleted.rowcount or 0)


def _text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
