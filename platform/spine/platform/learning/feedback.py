"""Explicit feedback: a client rates a model call, a task or a gateway completion (0..1).

The target is resolved within the caller's tenant — another tenant's call, task or completion
is not found (404), like any other cross-tenant read — to the model calls it covers, and the
feedback is stored once per (target, key): giving it again with the same key returns the first
one unchanged. Stored first, then announced as an event for the learner; what could not be
announced (NATS down) the API's sweeper finds with :meth:`FeedbackStore.unannounced`.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.dialects import postgresql, sqlite

from spine.platform.db import Database
from spine.platform.errors import NotFound
from spine.platform.keys import Principal
from spine.platform.schema import FeedbackRow, ModelCallRow, TaskRow, utcnow

__all__ = ["Feedback", "FeedbackInput", "FeedbackStore", "FeedbackTarget", "TargetKind"]

TargetKind = Literal["call", "task", "completion"]
_FEEDBACK: sa.Table = FeedbackRow.__table__  # type: ignore[assignment]
_CALLS: sa.Table = ModelCallRow.__table__  # type: ignore[assignment]
_TASKS: sa.Table = TaskRow.__table__  # type: ignore[assignment]


class FeedbackTarget(BaseModel):
    """What is rated: exactly one of a model call's id, a task's id, a completion's id."""

    model_config = ConfigDict(extra="forbid")

    call_id: str | None = Field(None, min_length=1, max_length=100)
    task_id: str | None = Field(None, min_length=1, max_length=100)
    completion_id: str | None = Field(
        None, min_length=1, max_length=100, description="The gateway's answer id (chatcmpl-...)."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> FeedbackTarget:
        given = [name for name in ("call_id", "task_id", "completion_id") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("give exactly one of call_id, task_id, completion_id")
        return self

    @property
    def kind(self) -> TargetKind:
        """Which kind of thing is rated."""
        if self.call_id:
            return "call"
        return "task" if self.task_id else "completion"

    @property
    def id(self) -> str:
        """The id of what is rated."""
        return self.call_id or self.task_id or self.completion_id or ""


class FeedbackInput(BaseModel):
    """The body of ``POST /v1/feedback``."""

    model_config = ConfigDict(extra="forbid")

    target: FeedbackTarget
    score: float = Field(ge=0.0, le=1.0, description="0 (useless) to 1 (exactly right).")
    label: str | None = Field(None, max_length=100)
    comment: str | None = Field(None, max_length=2000)


class Feedback(BaseModel):
    """Stored feedback, as clients see it."""

    id: str
    tenant: str
    key_id: str
    target_kind: TargetKind
    target_id: str
    call_ids: list[str]
    score: float
    label: str | None
    comment: str | None
    created_at: datetime


class FeedbackStore:
    """Stores feedback idempotently and finds what was not announced yet."""

    def __init__(self, db: Database) -> None:
        self._db = db
        insert = sqlite.insert if db.is_sqlite else postgresql.insert
        self._insert = insert(_FEEDBACK).on_conflict_do_nothing(
            index_elements=["tenant", "target_kind", "target_id", "key_id"]
        )

    async def give(self, given: FeedbackInput, *, principal: Principal) -> tuple[Feedback, bool]:
        """Store feedback on a target of the caller's tenant; return it and whether it is new.

        Raises:
            NotFound: No such call, task or completion for this tenant.
        """
        target = given.target
        call_ids = await self._calls_of(target, principal.tenant)
        row = {
            "id": str(uuid.uuid4()),
            "tenant": principal.tenant,
            "key_id": principal.key_id,
            "target_kind": target.kind,
            "target_id": target.id,
            "call_ids": call_ids,
            "score": given.score,
            "label": given.label,
            "comment": given.comment,
            "created_at": utcnow(),
        }
        async with self._db.transaction() as conn:
            inserted = await conn.execute(self._insert.returning(_FEEDBACK.c.id), [row])
            created = inserted.first() is not None
            if not created:
                found = await conn.execute(
                    sa.select(_FEEDBACK).where(
                        _FEEDBACK.c.tenant == principal.tenant,
                        _FEEDBACK.c.target_kind == target.kind,
                        _FEEDBACK.c.target_id == target.id,
                        _FEEDBACK.c.key_id == principal.key_id,
                    )
                )
                row = dict(found.mappings().one())
        return Feedback.model_validate(row), created

    async def unannounced(self, *, grace: float, limit: int) -> list[Feedback]:
        """Feedback stored more than ``grace`` seconds ago that no event announced yet."""
        query = (
            sa.select(_FEEDBACK)
            .where(
                _FEEDBACK.c.announced_at.is_(None),
                _FEEDBACK.c.created_at < utcnow() - timedelta(seconds=grace),
            )
            .order_by(_FEEDBACK.c.created_at)
            .limit(limit)
        )
        async with self._db.transaction() as conn:
            return [
                Feedback.model_validate(dict(r)) for r in (await conn.execute(query)).mappings()
            ]

    async def announced(self, feedback_ids: list[str]) -> None:
        """Record that JetStream acknowledged the events of this feedback."""
        if not feedback_ids:
            return
        async with self._db.transaction() as conn:
            await conn.execute(
                sa.update(_FEEDBACK)
                .where(_FEEDBACK.c.id.in_(feedback_ids))
                .values(announced_at=utcnow())
            )

    async def _calls_of(self, target: FeedbackTarget, tenant: str) -> list[str]:
        async with self._db.transaction() as conn:
            if target.kind == "task":
                owner = await conn.execute(
                    sa.select(_TASKS.c.id).where(
                        _TASKS.c.id == target.id, _TASKS.c.tenant == tenant
                    )
                )
                if owner.first() is None:
                    raise NotFound(f"no task {target.id!r}", field="target.task_id")
                where = _CALLS.c.task_id == target.id
            elif target.kind == "call":
                where = _CALLS.c.id == target.id
            else:
                where = _CALLS.c.completion_id == target.id
            calls = await conn.execute(
                sa.select(_CALLS.c.id)
                .where(where, _CALLS.c.tenant == tenant)
                .order_by(_CALLS.c.created_at)
            )
            found = [str(r[0]) for r in calls]
        if not found and target.kind != "task":
            raise NotFound(
                f"no {target.kind} {target.id!r}",
                field=f"target.{target.kind}_id",
            )
        return found
