"""The relational schema: API keys, tasks and their progress events.

The database is the source of truth for tasks; JetStream only carries work. Alembic migrations
under ``migrations/`` create exactly these tables; a test compares the two.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = ["ApiKeyRow", "Base", "TaskEventRow", "TaskRow", "UtcDateTime", "utcnow"]

JsonType = sa.JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    """Return the current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC, also on SQLite (which drops the zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    """Declarative base of all tables."""

    type_annotation_map = {datetime: UtcDateTime(), dict[str, Any]: JsonType}


class ApiKeyRow(Base):
    """An API key: only a hash of its secret is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(128), index=True)
    name: Mapped[str] = mapped_column(sa.String(200), default="")
    role: Mapped[str] = mapped_column(sa.String(16))
    secret_hash: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class TaskRow(Base):
    """One agent task and its lifecycle."""

    __tablename__ = "tasks"
    __table_args__ = (
        sa.UniqueConstraint("tenant", "idempotency_key", name="uq_tasks_tenant_idempotency_key"),
        sa.Index("ix_tasks_tenant_created", "tenant", "created_at"),
        sa.Index("ix_tasks_state_published", "state", "published_at"),
    )

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(128))
    key_id: Mapped[str | None] = mapped_column(sa.String(32), default=None)
    agent: Mapped[str] = mapped_column(sa.String(100))
    input: Mapped[dict[str, Any]] = mapped_column()
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    priority: Mapped[str] = mapped_column(sa.String(8), default="normal")
    deadline: Mapped[datetime | None] = mapped_column(default=None)
    state: Mapped[str] = mapped_column(sa.String(16))
    attempts: Mapped[int] = mapped_column(default=0)
    event_seq: Mapped[int] = mapped_column(default=0)
    error: Mapped[dict[str, Any] | None] = mapped_column(JsonType, default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(JsonType, default=None)
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(255), default=None)
    request_hash: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    published_at: Mapped[datetime | None] = mapped_column(default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class TaskEventRow(Base):
    """A progress event of a task; ``seq`` counts from 1 within each task."""

    __tablename__ = "task_events"
    __table_args__ = (sa.UniqueConstraint("task_id", "seq", name="uq_task_events_task_seq"),)

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    task_id: Mapped[str] = mapped_column(sa.String(36))
    tenant: Mapped[str] = mapped_column(sa.String(128))
    seq: Mapped[int] = mapped_column()
    type: Mapped[str] = mapped_column(sa.String(64))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
