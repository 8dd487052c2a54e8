"""The audit log: an append-only record of who did what, when, from where, to which tenant.

This module is its one writer and its one reader. What is recorded (``action``):

- ``tenant.create``; ``key.create``, ``key.revoke``, ``key.rotate``, ``key.limits`` (its rate
  limits; ``details``: the limits set) (target: the key id);
- ``budget.set``, ``budget.remove`` (target: the budget scope; ``details``: the period, the
  limit and the stored limit it replaced);
- ``task.approve``, ``task.reject`` (target: the task id);
- ``graph.query`` (an admin's Cypher; the query text, cut at 2,000 characters, is in
  ``details``);
- ``experiment.create``, ``experiment.stop``, ``experiment.promote`` (target: the experiment).

Each row names the key that acted (``key_id``; None for the CLI, which runs with the database's
own credentials, ``via`` ``cli``), the ``tenant`` acted upon, the ``outcome`` (``ok``, or
``denied`` when the key's role refused it), and the client ``address`` (the peer, or the one a
trusted proxy forwarded: see ``GENAI_API__TRUSTED_PROXIES``).

Rows are written after the action commits and before its answer is sent: an answered request
has its row; a process that dies between the two loses it. Rows are never updated nor deleted:
no code here does, and the database refuses it (a trigger, see migration 0008).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field

from spine.platform.cursors import decode_cursor, encode_cursor
from spine.platform.db import Database
from spine.platform.schema import AuditRow, utcnow

__all__ = ["ACTIONS", "AuditEntry", "AuditLog", "AuditPage", "Outcome", "Via"]

ACTIONS = frozenset(
    {
        "tenant.create",
        "key.create",
        "key.revoke",
        "key.rotate",
        "key.limits",
        "nats_user.create",
        "nats_user.revoke",
        "budget.set",
        "budget.remove",
        "task.approve",
        "task.reject",
        "graph.query",
        "experiment.create",
        "experiment.stop",
        "experiment.promote",
    }
)
Outcome = Literal["ok", "denied"]
Via = Literal["api", "cli"]
_AUDIT: sa.Table = AuditRow.__table__  # type: ignore[assignment]
_TARGET_LENGTH = 300
_ADDRESS_LENGTH = 300


class AuditEntry(BaseModel):
    """One recorded action."""

    id: str
    at: datetime
    tenant: str = Field(description="The tenant acted upon.")
    key_id: str | None = Field(description="The key that acted; None from the CLI.")
    via: Via
    action: str
    target: str
    outcome: Outcome
    address: str | None = Field(description="Where the request came from.")
    details: dict[str, Any]


class AuditPage(BaseModel):
    """A page of the audit log, newest first."""

    data: list[AuditEntry]
    next_cursor: str | None


class AuditLog:
    """Appends to and reads the audit log."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(
        self,
        action: str,
        *,
        tenant: str,
        target: str,
        key_id: str | None,
        address: str | None,
        via: Via = "api",
        outcome: Outcome = "ok",
        details: dict[str, Any] | None = None,
    ) -> AuditEntry:
        """Append one row and return it."""
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}")
        entry = AuditEntry(
            id=uuid.uuid4().hex,
            at=utcnow(),
            tenant=tenant,
            key_id=key_id,
            via=via,
            action=action,
            target=target[:_TARGET_LENGTH],
            outcome=outcome,
            address=address[:_ADDRESS_LENGTH] if address is not None else None,
            details=details or {},
        )
        async with self._db.transaction() as conn:
            await conn.execute(sa.insert(_AUDIT).values(**entry.model_dump()))
        return entry

    async def page(
        self,
        *,
        tenant: str | None = None,
        action: str | None = None,
        key_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> AuditPage:
        """Read rows newest first, filtered, ``limit`` at a time; ``since`` <= at < ``until``.

        Raises:
            BadRequest: The cursor is not one this log gave out (field ``cursor``).
        """
        query = sa.select(_AUDIT)
        for column, value in (
            (_AUDIT.c.tenant, tenant),
            (_AUDIT.c.action, action),
            (_AUDIT.c.key_id, key_id),
        ):
            if value is not None:
                query = query.where(column == value)
        if since is not None:
            query = query.where(_AUDIT.c.at >= since)
        if until is not None:
            query = query.where(_AUDIT.c.at < until)
        if cursor is not None:
            after, last = decode_cursor(cursor)
            query = query.where(
                sa.or_(_AUDIT.c.at < after, sa.and_(_AUDIT.c.at == after, _AUDIT.c.id < last))
            )
        query = query.order_by(_AUDIT.c.at.desc(), _AUDIT.c.id.desc()).limit(limit + 1)
        async with self._db.transaction() as conn:
            rows = [
                AuditEntry.model_validate(dict(r)) for r in (await conn.execute(query)).mappings()
            ]
        following = (
            encode_cursor(rows[limit - 1].at, rows[limit - 1].id) if len(rows) > limit else None
        )
        return AuditPage(data=rows[:limit], next_cursor=following)
