"""The relational schema: tenants, keys, the audit log, tasks (events, step journal), model calls, budgets, files,
batches, events, documents, and the learning loop (feedback, weights, experiments).

The database is the source of truth for tasks; JetStream only carries work. Alembic migrations
under ``migrations/`` create exactly these tables; a test compares the two.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "EMBEDDING_DIMENSIONS",
    "ApiKeyRow",
    "AuditRow",
    "Base",
    "BatchLineRow",
    "BatchRow",
    "BudgetAlertRow",
    "BudgetHoldRow",
    "BudgetHolderRow",
    "BudgetLimitRow",
    "BudgetSpendRow",
    "ChunkRow",
    "DocumentRow",
    "EventRow",
    "ExperimentRow",
    "FeedbackRow",
    "FileRow",
    "JsonType",
    "LearnedEventRow",
    "ModelCallRow",
    "Money",
    "RoutingWeightPartRow",
    "RoutingWeightsRow",
    "TaskEventRow",
    "TaskRow",
    "TaskStepRow",
    "TenantRow",
    "UtcDateTime",
    "money_text",
    "utcnow",
]

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


def money_text(amount: Decimal) -> str:
    """An amount as it leaves the platform: text, exact, without exponent or trailing zeros
    ("0" for zero); JSON cannot carry a Decimal."""
    if not amount:
        return "0"
    return format(amount.normalize(), "f") if amount.is_finite() else str(amount)


class Money(TypeDecorator[Decimal]):
    """An exact amount with 8 decimal places: NUMERIC(18, 8), or integer units on SQLite.

    SQLite keeps NUMERIC values as binary floats, so sums and budget comparisons would drift;
    there the column holds whole units of 10^-8 instead. Statements that compute with amounts
    must give their parameters this type (``sa.bindparam(..., type_=Money())``).
    """

    impl = sa.Numeric(18, 8)
    cache_ok = True
    SCALE = 8

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.BigInteger())
        return dialect.type_descriptor(sa.Numeric(18, self.SCALE, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        amount = value if isinstance(value, Decimal) else Decimal(str(value))
        if dialect.name == "sqlite":
            return int(amount.scaleb(self.SCALE).to_integral_value())
        return amount

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return Decimal(int(value)).scaleb(-self.SCALE)
        return Decimal(value)


class Base(DeclarativeBase):
    """Declarative base of all tables."""

    type_annotation_map = {
        datetime: UtcDateTime(),
        dict[str, Any]: JsonType,
        Decimal: Money(),
        date: sa.Date(),
    }


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
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    rotated_from: Mapped[str | None] = mapped_column(sa.String(32), default=None)
    # The key's own rate limits (spine.platform.limits); None: the settings' defaults.
    requests_per_minute: Mapped[int | None] = mapped_column(default=None)
    tokens_per_minute: Mapped[int | None] = mapped_column(default=None)


class TenantRow(Base):
    """A tenant: it exists before its first key and after its last one is revoked."""

    __tablename__ = "tenants"

    name: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditRow(Base):
    """One security-relevant action; rows are only ever inserted (a trigger refuses the rest).

    ``tenant`` is the tenant acted upon, ``key_id`` the key that acted (None from the CLI,
    whose ``via`` is ``cli``), ``address`` where the request came from.
    """

    __tablename__ = "audit_log"
    __table_args__ = (
        sa.Index("ix_audit_log_at", "at", "id"),
        sa.Index("ix_audit_log_tenant_at", "tenant", "at"),
        sa.Index("ix_audit_log_key_at", "key_id", "at"),
    )

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    tenant: Mapped[str] = mapped_column(sa.String(128))
    key_id: Mapped[str | None] = mapped_column(sa.String(32), default=None)
    via: Mapped[str] = mapped_column(sa.String(8))
    action: Mapped[str] = mapped_column(sa.String(64))
    target: Mapped[str] = mapped_column(sa.String(300))
    outcome: Mapped[str] = mapped_column(sa.String(16))
    address: Mapped[str | None] = mapped_column(sa.String(300), default=None)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class TaskRow(Base):
    """One agent task and its lifecycle."""

    __tablename__ = "tasks"
    __table_args__ = (
        sa.UniqueConstraint("tenant", "idempotency_key", name="uq_tasks_tenant_idempotency_key"),
        sa.Index("ix_tasks_tenant_created", "tenant", "created_at"),
        sa.Index("ix_tasks_state_published", "state", "published_at"),
        sa.Index("ix_tasks_state_approval", "state", "approval_expires_at"),
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
    # Paused for a human's approval until then; each pause ends an attempt without a failure.
    approval: Mapped[dict[str, Any] | None] = mapped_column(JsonType, default=None)
    approval_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    resumes: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))


class TaskStepRow(Base):
    """One journalled step of an agent's loop: a model answer, a tool result, an approval.

    The key names the step within the task (``s3.model``, ``s3.tool.<call id>``); the first
    write of a key wins, so a redelivered task replays its steps instead of repeating them.
    """

    __tablename__ = "task_steps"

    task_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    attempt: Mapped[int] = mapped_column()
    data: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


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


class ModelCallRow(Base):
    """One model call: who made it, what it cost, how it went (see :mod:`spine.platform.metering.usage`)."""

    __tablename__ = "model_calls"
    __table_args__ = (sa.Index("ix_model_calls_tenant_created", "tenant", "created_at"),)

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(128))
    key_id: Mapped[str | None] = mapped_column(sa.String(32), default=None)
    task_id: Mapped[str | None] = mapped_column(sa.String(36), default=None)
    model: Mapped[str] = mapped_column(sa.String(200))
    provider: Mapped[str] = mapped_column(sa.String(64))
    input_tokens: Mapped[int] = mapped_column(default=0)
    output_tokens: Mapped[int] = mapped_column(default=0)
    cost: Mapped[Decimal] = mapped_column(default=Decimal(0))
    latency_ms: Mapped[float] = mapped_column(sa.Float(), default=0.0)
    cache_hit: Mapped[bool] = mapped_column(default=False)
    fallback_path: Mapped[list[str]] = mapped_column(JsonType, default=list)
    outcome: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    strategy: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    task_category: Mapped[str | None] = mapped_column(sa.String(100), default=None)
    completion_id: Mapped[str | None] = mapped_column(sa.String(64), default=None, index=True)
    decision: Mapped[dict[str, Any] | None] = mapped_column(JsonType, default=None)
    experiment_id: Mapped[str | None] = mapped_column(sa.String(36), default=None)
    arm: Mapped[str | None] = mapped_column(sa.String(100), default=None)


class FeedbackRow(Base):
    """A quality signal a client gave on a call, a task or a completion (see ``learning``).

    One row per (tenant, target, key): giving feedback again with the same key replaces
    nothing and is answered with the first row (idempotent).
    """

    __tablename__ = "feedback"
    __table_args__ = (
        sa.UniqueConstraint("tenant", "target_kind", "target_id", "key_id", name="uq_feedback"),
    )

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(128))
    key_id: Mapped[str] = mapped_column(sa.String(32))
    target_kind: Mapped[str] = mapped_column(sa.String(16))
    target_id: Mapped[str] = mapped_column(sa.String(100))
    call_ids: Mapped[list[str]] = mapped_column(JsonType, default=list)
    score: Mapped[float] = mapped_column(sa.Float())
    label: Mapped[str | None] = mapped_column(sa.String(100), default=None)
    comment: Mapped[str | None] = mapped_column(sa.Text(), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    announced_at: Mapped[datetime | None] = mapped_column(default=None)


class RoutingWeightsRow(Base):
    """One version of the learned routing weights (the learner appends; routers read the newest)."""

    __tablename__ = "routing_weights"

    version: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    state: Mapped[dict[str, Any]] = mapped_column(JsonType)
    events: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RoutingWeightPartRow(Base):
    """A large value of weights versions, stored once by its digest (see learning.snapshots)."""

    __tablename__ = "routing_weight_parts"

    digest: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    data: Mapped[str] = mapped_column(sa.Text())
    last_version: Mapped[int] = mapped_column(index=True)
    """The newest version that refers to it: older than every kept version, it is deleted."""


class LearnedEventRow(Base):
    """An event the learner already applied: replays and duplicates change nothing."""

    __tablename__ = "learned_events"

    id: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    applied_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class ExperimentRow(Base):
    """An A/B test of routing: arms, a traffic split over a scope, and its state."""

    __tablename__ = "experiments"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(128))
    name: Mapped[str] = mapped_column(sa.String(200))
    scope: Mapped[dict[str, Any]] = mapped_column(JsonType)
    arms: Mapped[list[dict[str, Any]]] = mapped_column(JsonType)
    status: Mapped[str] = mapped_column(sa.String(16))
    promoted_arm: Mapped[str | None] = mapped_column(sa.String(100), default=None)
    created_by: Mapped[str | None] = mapped_column(sa.String(32), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(default=None)


class BudgetSpendRow(Base):
    """What one budget scope spent and holds reserved in one period (``day``: its first day)."""

    __tablename__ = "budget_spend"

    scope: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    period: Mapped[str] = mapped_column(
        sa.String(8), primary_key=True, default="daily", server_default="daily"
    )
    day: Mapped[date] = mapped_column(primary_key=True)
    spent: Mapped[Decimal] = mapped_column(default=Decimal(0))
    reserved: Mapped[Decimal] = mapped_column(default=Decimal(0))


class BudgetHoldRow(Base):
    """What one call holds reserved in one counter, and the process (``holder``) holding it.

    Written with the reservation and deleted by its settlement or release; the holds of a
    process that stopped beating are given back by the others (see
    :mod:`spine.platform.metering.budgets`).
    """

    __tablename__ = "budget_holds"
    __table_args__ = (sa.Index("ix_budget_holds_holder", "holder"),)

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    scope: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    period: Mapped[str] = mapped_column(sa.String(8), primary_key=True)
    day: Mapped[date] = mapped_column(primary_key=True)
    holder: Mapped[str] = mapped_column(sa.String(36))
    amount: Mapped[Decimal] = mapped_column()


class BudgetHolderRow(Base):
    """A process that holds reservations, and when it last said it was alive."""

    __tablename__ = "budget_holders"

    holder: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column()


class BudgetLimitRow(Base):
    """A budget's limit stored by an operator; it wins over the settings' default."""

    __tablename__ = "budget_limits"

    scope: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    period: Mapped[str] = mapped_column(sa.String(8), primary_key=True)
    amount: Mapped[Decimal] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str | None] = mapped_column(sa.String(32), default=None)


class BudgetAlertRow(Base):
    """A threshold (80 or 100 percent) a budget reached in one period: written once, by the
    first process that saw it (the primary key decides)."""

    __tablename__ = "budget_alerts"

    scope: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    period: Mapped[str] = mapped_column(sa.String(8), primary_key=True)
    period_start: Mapped[date] = mapped_column(primary_key=True)
    threshold: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    tenant: Mapped[str | None] = mapped_column(sa.String(128), default=None)
    amount: Mapped[Decimal] = mapped_column()
    spent: Mapped[Decimal] = mapped_column()
    reached_at: Mapped[datetime] = mapped_column(default=utcnow)


class FileRow(Base):
    """An uploaded or produced file (batch input, output and error JSONL); its bytes inline."""

    __tablename__ = "files"
    __table_args__ = (sa.Index("ix_files_tenant_created", "tenant", "created_at"),)

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(128))
    purpose: Mapped[str] = mapped_column(sa.String(32))
    filename: Mapped[str] = mapped_column(sa.String(255))
    size: Mapped[int] = mapped_column("bytes", sa.BigInteger())
    content: Mapped[bytes] = mapped_column(sa.LargeBinary())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ResponseRow(Base):
    """A Responses API answer kept (``store``) for ``previous_response_id`` and reading back.

    ``body`` is the ``response`` object as answered, ``conversation`` the chat messages up to
    and including its answer (its ``instructions`` left out: they do not carry over), and
    ``input_items`` the input as given, each with an id.
    """

    __tablename__ = "responses"
    __table_args__ = (sa.Index("ix_responses_created", "created_at"),)

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(128))
    body: Mapped[str] = mapped_column(sa.Text())
    conversation: Mapped[str] = mapped_column(sa.Text())
    input_items: Mapped[str] = mapped_column(sa.Text())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BatchRow(Base):
    """A batch of OpenAI requests; its lines run as tasks (see :mod:`spine.platform.batches.store`).

    ``completed`` and ``failed`` are written when the batch is finalized; until then they are
    counted from the line tasks. ``invalid`` counts the lines rejected when the batch was made.
    """

    __tablename__ = "batches"
    __table_args__ = (sa.Index("ix_batches_tenant_created", "tenant", "created_at"),)

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(128))
    key_id: Mapped[str | None] = mapped_column(sa.String(32), default=None)
    endpoint: Mapped[str] = mapped_column(sa.String(64))
    completion_window: Mapped[str] = mapped_column(sa.String(16))
    status: Mapped[str] = mapped_column(sa.String(16))
    input_file_id: Mapped[str] = mapped_column(sa.String(64))
    output_file_id: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    error_file_id: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    model: Mapped[str | None] = mapped_column(sa.String(200), default=None)
    total: Mapped[int] = mapped_column(default=0)
    invalid: Mapped[int] = mapped_column(default=0)
    completed: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JsonType, default=None)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JsonType, default=None)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JsonType, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    in_progress_at: Mapped[datetime | None] = mapped_column(default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    finalizing_at: Mapped[datetime | None] = mapped_column(default=None)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    failed_at: Mapped[datetime | None] = mapped_column(default=None)
    cancelling_at: Mapped[datetime | None] = mapped_column(default=None)
    cancelled_at: Mapped[datetime | None] = mapped_column(default=None)


class BatchLineRow(Base):
    """One line of a batch's input: the task that runs it, or why it was rejected."""

    __tablename__ = "batch_lines"

    batch_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    line: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    custom_id: Mapped[str | None] = mapped_column(sa.Text(), default=None)
    task_id: Mapped[str | None] = mapped_column(sa.String(36), default=None)
    error: Mapped[dict[str, Any] | None] = mapped_column(JsonType, default=None)


EMBEDDING_DIMENSIONS = 384
"""The size of a stored vector (all-MiniLM-L6-v2's; migration 0006 creates ``vector(384)``)."""


class DocumentRow(Base):
    """A document given to the vector store; its text lives in its chunks.

    ``status`` is ``queued`` until every chunk has its embedding (``embedded``), or ``failed``
    when it never can (see :mod:`spine.platform.documents.store`).
    """

    __tablename__ = "documents"
    __table_args__ = (
        sa.Index("ix_documents_tenant_created", "tenant", "created_at"),
        sa.Index("ix_documents_status_updated", "status", "updated_at"),
    )

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(128))
    key_id: Mapped[str | None] = mapped_column(sa.String(32), default=None)
    source: Mapped[str | None] = mapped_column(sa.String(1000), default=None)
    format: Mapped[str] = mapped_column(sa.String(16))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    status: Mapped[str] = mapped_column(sa.String(16))
    size: Mapped[int] = mapped_column(sa.BigInteger())
    chunk_count: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    model: Mapped[str | None] = mapped_column(sa.String(200), default=None)
    attempts: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    error: Mapped[dict[str, Any] | None] = mapped_column(JsonType, default=None)
    task_id: Mapped[str | None] = mapped_column(sa.String(36), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    embedded_at: Mapped[datetime | None] = mapped_column(default=None)


class ChunkRow(Base):
    """One chunk of a document: its text, where it came from, and its embedding.

    ``metadata`` repeats the document's, so a search filters on the row the index returns;
    ``embedding`` and ``model`` (the model whose vector space it is in) are NULL until every
    chunk of the document is embedded, then written in one transaction (``embedding`` is a
    ``vector`` on PostgreSQL with pgvector, never written on SQLite).
    """

    __tablename__ = "chunks"
    __table_args__ = (
        sa.Index("ix_chunks_tenant", "tenant"),
        sa.Index(
            "ix_chunks_embedding",
            "embedding",
            postgresql_using="hnsw",
            # 128, not pgvector's 64: recall 0.95 at ef_search 120, not ~300 (see migration 0011).
            postgresql_with={"m": 16, "ef_construction": 128},
            postgresql_ops={"embedding": "vector_cosine_ops"},
        ),
        sa.Index(
            "ix_chunks_metadata",
            "metadata",
            postgresql_using="gin",
            postgresql_ops={"metadata": "jsonb_path_ops"},
        ),
    )

    document_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    tenant: Mapped[str] = mapped_column(sa.String(128))
    text: Mapped[str] = mapped_column(sa.Text())
    heading: Mapped[str | None] = mapped_column(sa.Text(), default=None)
    char_start: Mapped[int] = mapped_column()
    char_end: Mapped[int] = mapped_column()
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    model: Mapped[str | None] = mapped_column(sa.String(200), default=None)
    embedding: Mapped[list[float] | None] = mapped_column(
        Vector(EMBEDDING_DIMENSIONS).with_variant(sa.LargeBinary(), "sqlite"), default=None
    )


class EventRow(Base):
    """A CloudEvent received (over HTTP or NATS) and what ingestion made of it.

    ``id`` is the event's dedupe id: a hash of (tenant, source, CloudEvents id), also its
    ``Nats-Msg-Id``. ``status`` is ``pending``, ``mapped``, ``unmapped`` or ``dead_lettered``
    (with the ``reason``); ``envelope`` is the whole CloudEvent as JSON.
    """

    __tablename__ = "events"
    __table_args__ = (sa.Index("ix_events_tenant_received", "tenant", "received_at"),)

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(128))
    source: Mapped[str] = mapped_column(sa.String(1000))
    event_id: Mapped[str] = mapped_column(sa.String(500))
    type: Mapped[str] = mapped_column(sa.String(255))
    subject: Mapped[str | None] = mapped_column(sa.String(1000), default=None)
    time: Mapped[datetime | None] = mapped_column(default=None)
    envelope: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(sa.String(16))
    reason: Mapped[str | None] = mapped_column(sa.Text(), default=None)
    attempts: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
