"""The state layer on its own: TaskStore and Database, on SQLite and on PostgreSQL alike."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from spine.platform.db import MIGRATIONS, Database, newest_migration
from spine.platform.errors import BadRequest, Conflict, IdempotencyConflict, NotFound
from spine.platform.metering import ModelCallRecord
from spine.platform.metering.usage import UsageLedger
from spine.platform.schema import Base, ModelCallRow, TaskEventRow, TaskRow
from spine.platform.tasks import StepJournal, TaskError, TaskStore, TaskSubmission
from support.vectors import INDEX

pytestmark = pytest.mark.integration


@pytest.fixture
def store(db: Database) -> TaskStore:
    return TaskStore(db)


def chat(prompt: str = "hello", **extra: Any) -> TaskSubmission:
    return TaskSubmission(agent="chat", input={"prompt": prompt}, **extra)


async def event_seqs(store: TaskStore, task_id: str) -> list[tuple[int, str, Any]]:
    events = await store.events(task_id, tenant=None)
    return [(e.seq, e.type, e.data.get("state")) for e in events]


# -- migrations -------------------------------------------------------------------------------


async def test_migrations_apply_twice_and_match_the_declared_schema(db: Database) -> None:
    await db.migrate()  # the fixture ran it once already: a second run changes nothing

    def inspect(conn: sa.Connection) -> tuple[dict[str, dict[str, Any]], list[Any], str | None]:
        inspector = sa.inspect(conn)
        tables = {
            name: {c["name"]: c for c in inspector.get_columns(name)}
            for name in inspector.get_table_names()
        }
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        return tables, diff, version

    async with db.engine.connect() as conn:
        tables, diff, version = await conn.run_sync(inspect)

    scripts = Config()
    scripts.set_main_option("script_location", str(MIGRATIONS))
    assert version == ScriptDirectory.from_config(scripts).get_current_head()
    assert set(tables) == {*Base.metadata.tables, "alembic_version"}
    for name, table in Base.metadata.tables.items():
        assert set(tables[name]) == {c.name for c in table.columns}, name
        for column in table.columns:
            assert tables[name][column.name]["nullable"] == column.nullable, (name, column.name)
    assert diff == [], diff


def test_the_newest_migration_is_read_from_the_file_names_as_alembic_reads_it() -> None:
    scripts = Config()
    scripts.set_main_option("script_location", str(MIGRATIONS))
    directory = ScriptDirectory.from_config(scripts)
    assert newest_migration() == directory.get_current_head()
    # The names hold the revisions, in order: a migration named otherwise would make every
    # start migrate (or skip one) without this failing.
    for script in directory.walk_revisions():
        assert Path(script.path).name.startswith(f"{script.revision}_"), script.path


async def test_a_start_on_an_up_to_date_schema_does_not_import_alembic(
    db: Database, database_url: str
) -> None:
    code = (
        "import asyncio, sys\n"
        "from spine.platform.db import Database\n"
        f"asyncio.run(Database({database_url!r}).migrate())\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'alembic', 'mako', 'pygments'}))\n"
    )
    ran = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert ran.stdout.strip() == "[]"  # ~11 MiB each API, worker and learner process kept


async def test_a_schema_behind_is_brought_up_to_date(db: Database) -> None:
    def step(conn: sa.Connection, target: str) -> str | None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        command.downgrade(config, target)
        return MigrationContext.configure(conn).get_current_revision()

    async with db.engine.begin() as conn:
        assert await conn.run_sync(step, "-1") != newest_migration()
    await db.dispose()
    await db.migrate()

    def state(conn: sa.Connection) -> tuple[str | None, list[Any]]:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        return MigrationContext.configure(conn).get_current_revision(), diff

    async with db.engine.connect() as conn:
        assert await conn.run_sync(state) == (newest_migration(), [])


async def test_the_chunks_vector_index_is_rebuilt_as_declared_both_ways(db: Database) -> None:
    if db.is_sqlite:
        pytest.skip("the HNSW index exists on PostgreSQL with pgvector only")
    declared = next(i for i in Base.metadata.tables["chunks"].indexes if i.name == INDEX)
    ef_construction = declared.dialect_options["postgresql"]["with"]["ef_construction"]

    def index_and_migrate(conn: sa.Connection, target: str | None) -> str:
        if target is not None:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = conn
            step = command.downgrade if target == "0010" else command.upgrade
            step(config, target)
        query = sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = :name")
        return str(conn.execute(query, {"name": INDEX}).scalar_one())

    async with db.engine.begin() as conn:
        assert f"ef_construction='{ef_construction}'" in await conn.run_sync(
            index_and_migrate, None
        )
        assert "ef_construction='64'" in await conn.run_sync(index_and_migrate, "0010")
        rebuilt = await conn.run_sync(index_and_migrate, "head")
    assert "hnsw" in rebuilt and f"ef_construction='{ef_construction}'" in rebuilt


# -- submit, get, list ------------------------------------------------------------------------


async def test_submit_commits_a_queued_task_with_its_first_event(store: TaskStore) -> None:
    deadline = datetime.now(UTC) + timedelta(hours=1)
    task, events, created = await store.submit(
        chat("hi", metadata={"user": "u1"}, priority="high", deadline=deadline),
        tenant="acme",
        key_id="k1",
    )
    assert created is True
    assert task.state == "queued"
    assert (task.tenant, task.agent, task.priority) == ("acme", "chat", "high")
    assert task.metadata == {"user": "u1"}
    assert task.attempts == 0
    assert [(e.seq, e.type, e.data) for e in events] == [(1, "state", {"state": "queued"})]

    again = await store.get(task.id, tenant="acme")
    assert again.model_dump() == task.model_dump()
    assert again.deadline == deadline
    assert (await store.get(task.id, tenant=None)).id == task.id


async def test_get_of_a_missing_or_foreign_task_is_not_found(store: TaskStore) -> None:
    task, _, _ = await store.submit(chat(), tenant="acme")
    with pytest.raises(NotFound) as missing:
        await store.get("no-such-id", tenant="acme")
    assert missing.value.field == "task_id"
    with pytest.raises(NotFound):
        await store.get(task.id, tenant="globex")
    assert await store.events(task.id, tenant="globex") == []


async def test_deadline_in_the_past_is_refused(store: TaskStore) -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    with pytest.raises(BadRequest) as refused:
        await store.submit(chat(deadline=past), tenant="acme")
    assert refused.value.field == "deadline"
    assert (await store.list_page(tenant="acme")).tasks == []


async def test_list_page_paginates_newest_first_and_filters(store: TaskStore) -> None:
    ids = []
    for i in range(7):
        agent = "chat" if i % 2 == 0 else "other"
        task, _, _ = await store.submit(
            TaskSubmission(agent=agent, input={"prompt": f"p{i}"}), tenant="acme"
        )
        ids.append(task.id)
    await store.submit(chat("foreign"), tenant="globex")
    await store.cancel(ids[0], tenant="acme")

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await store.list_page(tenant="acme", limit=3, cursor=cursor)
        pages += 1
        assert len(page.tasks) <= 3
        seen += [t.id for t in page.tasks]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(ids))

    exact = await store.list_page(tenant="acme", limit=7)
    assert len(exact.tasks) == 7
    assert exact.next_cursor is None

    chats = await store.list_page(tenant="acme", agent="chat")
    assert [t.id for t in chats.tasks] == [ids[6], ids[4], ids[2], ids[0]]
    cancelled = await store.list_page(tenant="acme", state="cancelled")
    assert [t.id for t in cancelled.tasks] == [ids[0]]
    queued_chats = await store.list_page(tenant="acme", state="queued", agent="chat", limit=2)
    assert [t.id for t in queued_chats.tasks] == [ids[6], ids[4]]
    rest = await store.list_page(
        tenant="acme", state="queued", agent="chat", cursor=queued_chats.next_cursor
    )
    assert [t.id for t in rest.tasks] == [ids[2]]
    assert rest.next_cursor is None
    assert [t.tenant for t in (await store.list_page(tenant="globex")).tasks] == ["globex"]
    assert (await store.list_page(tenant="nobody")).tasks == []


async def test_a_garbled_cursor_is_a_bad_request(store: TaskStore) -> None:
    with pytest.raises(BadRequest) as refused:
        await store.list_page(tenant="acme", cursor="%%%")
    assert refused.value.field == "cursor"


# -- idempotency ------------------------------------------------------------------------------


async def test_idempotency_key_returns_the_same_task_or_conflicts(
    store: TaskStore, db: Database
) -> None:
    first, events, created = await store.submit(chat("once"), tenant="acme", idempotency_key="k")
    assert created is True
    assert len(events) == 1
    second, events, created = await store.submit(chat("once"), tenant="acme", idempotency_key="k")
    assert created is False
    assert events == []
    assert second.id == first.id
    with pytest.raises(IdempotencyConflict) as conflict:
        await store.submit(chat("twice"), tenant="acme", idempotency_key="k")
    assert conflict.value.field == "Idempotency-Key"
    assert conflict.value.status_code == 409
    # The same key is free in another tenant, and without a key every submit is new.
    other, _, created = await store.submit(chat("once"), tenant="globex", idempotency_key="k")
    assert created is True
    assert other.id != first.id
    a, _, _ = await store.submit(chat("once"), tenant="acme")
    b, _, _ = await store.submit(chat("once"), tenant="acme")
    assert a.id != b.id
    assert await event_seqs(store, first.id) == [(1, "state", "queued")]
    # The request is hashed only when a key may be reused: keyless submits skip the work.
    async with db.transaction() as conn:
        hashes = dict(
            (await conn.execute(sa.select(TaskRow.id, TaskRow.request_hash))).tuples().all()
        )
    assert hashes[first.id] == chat("once").fingerprint()
    assert hashes[a.id] is None and hashes[b.id] is None


async def test_concurrent_submits_with_one_idempotency_key_make_one_task(
    store: TaskStore, db: Database
) -> None:
    results = await asyncio.gather(
        *(store.submit(chat("race"), tenant="acme", idempotency_key="race") for _ in range(20))
    )
    assert len({task.id for task, _, _ in results}) == 1
    assert sum(created for _, _, created in results) == 1
    async with db.session() as session:
        count = await session.scalar(sa.select(sa.func.count()).select_from(TaskRow))
        events = await session.scalar(sa.select(sa.func.count()).select_from(TaskEventRow))
    assert count == 1
    assert events == 1


# -- claims -----------------------------------------------------------------------------------


async def test_claim_outcomes(store: TaskStore) -> None:
    assert (await store.claim("no-such-id", lease=30)).outcome == "missing"

    task, _, _ = await store.submit(chat(), tenant="acme")
    claim = await store.claim(task.id, lease=30)
    assert claim.outcome == "claimed"
    assert claim.attempt == 1
    assert claim.task is not None and claim.task.state == "running"
    assert claim.task.started_at is not None
    assert [(e.seq, e.data) for e in claim.events] == [(2, {"state": "running", "attempt": 1})]

    busy = await store.claim(task.id, lease=30)
    assert busy.outcome == "busy"
    assert 25 < busy.retry_in <= 30
    assert busy.events == []

    await store.finish(task.id, attempt=1, state="succeeded", result={"text": "ok"})
    finished = await store.claim(task.id, lease=30)
    assert finished.outcome == "finished"
    assert finished.task is not None and finished.task.state == "succeeded"
    assert finished.events == []
    assert (await store.get(task.id, tenant=None)).attempts == 1


async def test_concurrent_claims_let_exactly_one_attempt_run(store: TaskStore) -> None:
    task, _, _ = await store.submit(chat(), tenant="acme")
    claims = await asyncio.gather(*(store.claim(task.id, lease=30) for _ in range(8)))
    assert sorted(c.outcome for c in claims) == ["busy"] * 7 + ["claimed"]
    assert (await store.get(task.id, tenant=None)).attempts == 1
    assert await event_seqs(store, task.id) == [(1, "state", "queued"), (2, "state", "running")]


async def test_claim_of_a_task_whose_cancel_was_requested_cancels_it(store: TaskStore) -> None:
    task, _, _ = await store.submit(chat(), tenant="acme")
    claim = await store.claim(task.id, lease=0)  # the lease lapses at once
    await store.cancel(task.id, tenant="acme")  # running: only a request
    assert await store.cancel_requested(task.id)
    again = await store.claim(task.id, lease=30)
    assert again.outcome == "finished"
    assert again.task is not None and again.task.state == "cancelled"
    assert again.task.error is not None and again.task.error.model_dump()["type"] == "cancelled"
    assert [e.data["state"] for e in again.events] == ["cancelled"]
    assert claim.attempt == 1
    assert (await store.get(task.id, tenant=None)).attempts == 1


async def test_claim_after_the_deadline_fails_the_task(store: TaskStore) -> None:
    deadline = datetime.now(UTC) + timedelta(seconds=1)
    task, _, _ = await store.submit(chat(deadline=deadline), tenant="acme")
    await asyncio.sleep((deadline - datetime.now(UTC)).total_seconds() + 0.05)
    claim = await store.claim(task.id, lease=30)
    assert claim.outcome == "finished"
    assert claim.task is not None and claim.task.state == "failed"
    assert claim.task.error is not None
    assert claim.task.error.model_dump()["type"] == "deadline_exceeded"
    assert claim.task.error.model_dump()["retryable"] is False
    assert claim.task.attempts == 0
    assert claim.task.finished_at is not None


async def test_a_stale_attempt_cannot_finish_or_extend(store: TaskStore) -> None:
    task, _, _ = await store.submit(chat(), tenant="acme")
    first = await store.claim(task.id, lease=0)
    await asyncio.sleep(0.01)
    second = await store.claim(task.id, lease=30)
    assert (first.attempt, second.attempt) == (1, 2)

    assert await store.extend_lease(task.id, attempt=1, lease=30) is False
    assert await store.extend_lease(task.id, attempt=2, lease=30) is True
    stale = await store.finish(task.id, attempt=1, state="succeeded", result={"text": "stale"})
    assert stale == []
    current = await store.get(task.id, tenant=None)
    assert current.state == "running"
    assert current.result is None

    done = await store.finish(task.id, attempt=2, state="succeeded", result={"text": "fresh"})
    assert [(e.data["state"], e.data["attempt"]) for e in done] == [("succeeded", 2)]
    final = await store.get(task.id, tenant=None)
    assert (final.state, final.result, final.attempts) == ("succeeded", {"text": "fresh"}, 2)
    # Once ended, even the owning attempt writes nothing more.
    assert await store.finish(task.id, attempt=2, state="failed") == []
    assert await store.extend_lease(task.id, attempt=2, lease=30) is False
    assert (await store.get(task.id, tenant=None)).state == "succeeded"


async def test_finish_queued_hands_the_task_back_for_a_retry(store: TaskStore) -> None:
    task, _, _ = await store.submit(chat(), tenant="acme")
    await store.claim(task.id, lease=30)
    error = TaskError(type="transient_error", message="try later", retryable=True)
    events = await store.finish(task.id, attempt=1, state="queued", error=error, retry_in=0.5)
    assert events[0].data == {
        "state": "queued",
        "attempt": 1,
        "retry_in": 0.5,
        "error": {"type": "transient_error", "message": "try later", "retryable": True},
    }
    again = await store.claim(task.id, lease=30)
    assert (again.outcome, again.attempt) == ("claimed", 2)
    gave_up = TaskError(type="too_many_attempts", message="gave up", reason="too many attempts")
    dead = await store.dead_letter(task.id, reason=gave_up)
    assert [e.data["state"] for e in dead] == ["dead_lettered"]
    assert await store.dead_letter(task.id, reason=gave_up) == []


async def test_a_retry_keeps_the_error_until_an_attempt_succeeds(store: TaskStore) -> None:
    task, _, _ = await store.submit(chat(), tenant="acme")
    await store.claim(task.id, lease=30)
    error = TaskError(type="transient_error", message="try later", retryable=True)
    await store.finish(task.id, attempt=1, state="queued", error=error, retry_in=0)
    waiting = await store.get(task.id, tenant=None)
    assert waiting.error is not None and waiting.error.message == "try later"
    await store.claim(task.id, lease=30)
    await store.finish(task.id, attempt=2, state="succeeded", result={"text": "ok"})
    done = await store.get(task.id, tenant=None)
    assert (done.state, done.error) == ("succeeded", None)


async def test_finish_commits_the_attempts_last_events_before_its_state(store: TaskStore) -> None:
    task, _, _ = await store.submit(chat(), tenant="acme")
    await store.claim(task.id, lease=30)
    noted: list[tuple[str, dict[str, Any]]] = [
        ("model_call", {"model": "m", "input_tokens": 3}),
        ("final", {"text": "hi"}),
    ]
    written = await store.finish(
        task.id, attempt=1, state="succeeded", result={"text": "hi"}, events=noted
    )
    assert [(e.seq, e.type) for e in written] == [(3, "model_call"), (4, "final"), (5, "state")]
    stored = await store.events(task.id, tenant=None)
    assert [(e.seq, e.type, e.data) for e in stored[2:]] == [
        (3, "model_call", {"model": "m", "input_tokens": 3}),
        (4, "final", {"text": "hi"}),
        (5, "state", {"state": "succeeded", "attempt": 1}),
    ]
    # A stale attempt's last events are not written either.
    assert await store.finish(task.id, attempt=1, state="failed", events=noted) == []
    assert len(await store.events(task.id, tenant=None)) == 5


async def test_finish_writes_the_usage_rows_it_is_given_in_its_commit(db: Database) -> None:
    store, ledger = TaskStore(db), UsageLedger(db)
    task, _, _ = await store.submit(chat(), tenant="acme")
    await store.claim(task.id, lease=30)
    call = ModelCallRecord(
        tenant="acme",
        model="m",
        provider="openai",
        task_id=task.id,
        input_tokens=3,
        output_tokens=5,
        cost=Decimal("0.00000123"),
        latency_ms=1.5,
        fallback_path=["local"],
        decision={"scores": {"m": 0.5}},
        created_at=datetime(2026, 12, 4, 23, 59, 59, 123456, tzinfo=UTC),
    )
    await store.finish(task.id, attempt=1, state="succeeded", result={}, usage=[call])

    async with db.transaction() as conn:
        rows = (await conn.execute(sa.select(ModelCallRow.__table__))).mappings().all()
    assert [dict(row) for row in rows] == [
        {
            "id": call.id,
            "tenant": "acme",
            "key_id": None,
            "task_id": task.id,
            "model": "m",
            "provider": "openai",
            "input_tokens": 3,
            "output_tokens": 5,
            "cost": Decimal("0.00000123"),
            "latency_ms": 1.5,
            "cache_hit": False,
            "fallback_path": ["local"],
            "outcome": "ok",
            "created_at": call.created_at,
            "strategy": None,
            "task_category": None,
            "completion_id": None,
            "decision": {"scores": {"m": 0.5}},
            "experiment_id": None,
            "arm": None,
        }
    ]
    # A row written already (by the ledger's writer behind) is skipped; a stale attempt's
    # calls were made all the same, so its rows are written though its end is not.
    await ledger.record(call)
    late = ModelCallRecord(tenant="acme", model="m", provider="openai", task_id=task.id)
    assert await store.finish(task.id, attempt=1, state="failed", usage=[call, late]) == []
    usage = await ledger.summary(tenant="acme")
    assert [(u.calls, u.input_tokens, u.cost) for u in usage] == [(2, 3, Decimal("0.00000123"))]


async def test_the_journal_is_fenced_by_the_attempt_and_first_write_wins(db: Database) -> None:
    store, journal = TaskStore(db), StepJournal(db)
    task, _, _ = await store.submit(chat(), tenant="acme")
    await store.claim(task.id, lease=30)
    step = {"text": "", "tool_calls": [{"id": "c1"}], "cost": "0.1"}
    written = await journal.record(
        task.id,
        attempt=1,
        key="s1.model",
        kind="model",
        data=step,
        events=[("model_call", {"step": 1}), ("tool_call_started", {"call_id": "c1"})],
    )
    assert written is not None
    assert [(e.seq, e.type, e.tenant) for e in written] == [
        (3, "model_call", "acme"),
        (4, "tool_call_started", "acme"),
    ]
    # The same key again, or another attempt's write: nothing is written.
    again = await journal.record(task.id, attempt=1, key="s1.model", kind="model", data={})
    assert again is None
    stale = await journal.record(
        task.id, attempt=2, key="s1.tool.c1", kind="tool", data={}, events=[("x", {})]
    )
    assert stale is None
    entries = await journal.entries(task.id)
    assert {k: (e.kind, e.attempt, e.data) for k, e in entries.items()} == {
        "s1.model": ("model", 1, step)
    }
    seqs = [(e.seq, e.type) for e in await store.events(task.id, tenant=None)]
    assert seqs == [(1, "state"), (2, "state"), (3, "model_call"), (4, "tool_call_started")]
    appended = await store.append_event(task.id, "delta", {"text": "more"})
    assert (appended.seq, appended.tenant) == (5, "acme")
    assert await store.cancel_requested(task.id) is False


# -- cancel -----------------------------------------------------------------------------------


async def test_cancel_queued_running_finished_and_foreign(store: TaskStore) -> None:
    queued, _, _ = await store.submit(chat(), tenant="acme")
    cancelled, events = await store.cancel(queued.id, tenant="acme")
    assert cancelled.state == "cancelled"
    assert cancelled.finished_at is not None
    assert [e.data["state"] for e in events] == ["cancelled"]
    with pytest.raises(Conflict) as conflict:
        await store.cancel(queued.id, tenant="acme")
    assert conflict.value.details == {"state": "cancelled"}

    running, _, _ = await store.submit(chat(), tenant="acme")
    await store.claim(running.id, lease=30)
    with pytest.raises(NotFound):
        await store.cancel(running.id, tenant="globex")
    assert await store.cancel_requested(running.id) is False
    asked, events = await store.cancel(running.id, tenant="acme")
    assert asked.state == "running"
    assert asked.cancel_requested is True
    assert [e.type for e in events] == ["cancel_requested"]
    with pytest.raises(NotFound):
        await store.cancel("no-such-id", tenant="acme")


# -- events -----------------------------------------------------------------------------------


async def test_event_seq_is_gap_free_and_ordered_across_every_writer(store: TaskStore) -> None:
    task, _, _ = await store.submit(chat(), tenant="acme")
    claim = await store.claim(task.id, lease=30)
    step = await store.append_event(task.id, "step", {"n": 1})
    await store.cancel(task.id, tenant="acme")
    await store.finish(
        task.id, attempt=claim.attempt, state="cancelled", error=TaskError(type="x", message="x")
    )
    assert step.seq == 3
    assert await event_seqs(store, task.id) == [
        (1, "state", "queued"),
        (2, "state", "running"),
        (3, "step", None),
        (4, "cancel_requested", None),
        (5, "state", "cancelled"),
    ]
    after = await store.events(task.id, tenant="acme", after_seq=3)
    assert [e.seq for e in after] == [4, 5]
    assert after[-1].is_final
    assert [e.seq for e in await store.events(task.id, tenant="acme", limit=2)] == [1, 2]
    with pytest.raises(NotFound):
        await store.append_event("no-such-id", "step", {})


async def test_concurrent_event_writers_never_share_a_seq(store: TaskStore) -> None:
    task, _, _ = await store.submit(chat(), tenant="acme")
    await store.claim(task.id, lease=30)
    await asyncio.gather(*(store.append_event(task.id, "step", {"n": i}) for i in range(15)))
    seqs = [e.seq for e in await store.events(task.id, tenant=None)]
    assert seqs == list(range(1, 18))


# -- the outbox -------------------------------------------------------------------------------


async def test_unpublished_mark_published_and_stalled(store: TaskStore) -> None:
    first, _, _ = await store.submit(chat("one"), tenant="acme")
    second, _, _ = await store.submit(chat("two"), tenant="acme")
    await asyncio.sleep(0.01)
    assert [t.id for t in await store.unpublished(grace=0, limit=10)] == [first.id, second.id]
    assert [t.id for t in await store.unpublished(grace=0, limit=1)] == [first.id]
    assert await store.unpublished(grace=60, limit=10) == []  # too young to be missed

    await store.mark_published([first.id])
    await store.mark_published([])
    assert [t.id for t in await store.unpublished(grace=0, limit=10)] == [second.id]
    await store.mark_published([second.id])
    assert await store.unpublished(grace=0, limit=10) == []

    assert await store.stalled(after=60, limit=10) == []
    await asyncio.sleep(0.01)
    stalled = await store.stalled(after=0, limit=10)
    assert [t.id for t in stalled] == [first.id, second.id]
    # The clock restarts, so the next sweep does not publish them again at once.
    assert await store.stalled(after=5, limit=10) == []

    # A running task whose lease lapsed long ago is stalled too; a finished one never is.
    await store.claim(first.id, lease=0)
    await store.finish(
        (await store.claim(second.id, lease=30)).task.id,  # type: ignore[union-attr]
        attempt=1,
        state="succeeded",
    )
    await asyncio.sleep(0.01)
    assert [t.id for t in await store.stalled(after=0, limit=10)] == [first.id]
    # A cancelled queued task is neither unpublished nor stalled.
    third, _, _ = await store.submit(chat("three"), tenant="acme")
    await store.cancel(third.id, tenant="acme")
    await asyncio.sleep(0.01)
    assert await store.unpublished(grace=0, limit=10) == []


async def test_publish_marks_written_behind_are_written_at_close(
    store: TaskStore, db: Database
) -> None:
    tasks = [(await store.submit(chat(f"m{i}"), tenant="acme"))[0] for i in range(3)]
    await store.mark_published([t.id for t in tasks])
    await store.close()  # as a process stops: what is queued is written
    async with db.transaction() as conn:
        stamps = list(
            (
                await conn.execute(
                    sa.select(TaskRow.published_at).where(TaskRow.id.in_([t.id for t in tasks]))
                )
            ).scalars()
        )
    assert len(stamps) == 3 and None not in stamps, stamps


# -- time -------------------------------------------------------------------------------------


async def test_timestamps_are_timezone_aware_utc(store: TaskStore, db: Database) -> None:
    deadline = datetime.now(UTC).astimezone(timezone(timedelta(hours=5))) + timedelta(hours=1)
    task, _, _ = await store.submit(chat(deadline=deadline), tenant="acme")
    claim = await store.claim(task.id, lease=30)
    await store.finish(task.id, attempt=claim.attempt, state="succeeded")
    await store.mark_published([task.id])
    await store.flush_marks()  # written behind

    stored = await store.get(task.id, tenant=None)
    stamps = {
        "created_at": stored.created_at,
        "updated_at": stored.updated_at,
        "started_at": stored.started_at,
        "finished_at": stored.finished_at,
        "deadline": stored.deadline,
    }
    async with db.session() as session:
        row = await session.get(TaskRow, task.id)
        assert row is not None
        stamps["published_at"] = row.published_at
        events = (await session.execute(sa.select(TaskEventRow))).scalars().all()
    stamps |= {f"event {e.seq}": e.created_at for e in events}
    now = datetime.now(UTC)
    for name, stamp in stamps.items():
        assert stamp is not None, name
        assert stamp.tzinfo is not None, name
        assert stamp.utcoffset() == timedelta(0), (name, stamp)
        assert abs(stamp - now) < timedelta(hours=2), (name, stamp)
    assert stored.deadline == deadline
    assert stored.created_at <= stored.started_at <= stored.finished_at  # type: ignore[operator]


async def test_naive_datetimes_are_refused(db: Database) -> None:
    row = TaskRow(
        id="naive",
        tenant="acme",
        agent="chat",
        input={},
        state="queued",
        created_at=datetime.now(),  # naive: the point of the test
        updated_at=datetime.now(UTC),
    )
    with pytest.raises(sa.exc.StatementError, match="naive datetime"):
        async with db.session() as session, session.begin():
            session.add(row)
