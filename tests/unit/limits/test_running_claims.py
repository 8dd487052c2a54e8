"""Claims bounded by a tenant's running limit, on both databases: a slot is a running row with
a live lease, so it frees on every end of an attempt and when a dead worker's lease runs out."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
import sqlalchemy as sa

from spine.platform.db import Database
from spine.platform.schema import TaskRow, utcnow
from spine.platform.tasks import TaskStore, TaskSubmission

pytestmark = pytest.mark.integration

LEASE = 30.0


def two_each(tenant: str) -> int | None:
    return 2 if tenant == "acme" else None


async def _submit(store: TaskStore, tenant: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        submission = TaskSubmission(agent="chat", input={"prompt": f"{tenant} {i}"})
        task, _, _ = await store.submit(submission, tenant=tenant)
        ids.append(task.id)
    return ids


async def test_a_tenant_at_its_limit_waits_while_others_run(db: Database) -> None:
    store = TaskStore(db)
    first, second, third = await _submit(store, "acme", 3)
    (other,) = await _submit(store, "globex", 1)
    claims = [await store.claim(t, lease=LEASE, running_limit=two_each) for t in (first, second)]
    assert [c.outcome for c in claims] == ["claimed", "claimed"]
    waiting = await store.claim(third, lease=LEASE, running_limit=two_each)
    assert waiting.outcome == "throttled"
    task = await store.get(third, tenant="acme")
    assert (task.state, task.attempts) == ("queued", 0)  # waiting is no attempt
    assert (await store.claim(other, lease=LEASE, running_limit=two_each)).outcome == "claimed"
    # Without a limit nothing holds it back.
    assert (await store.claim(third, lease=LEASE)).outcome == "claimed"


@pytest.mark.parametrize("ending", ["succeeded", "failed", "queued"])
async def test_every_end_of_an_attempt_frees_its_slot(db: Database, ending: str) -> None:
    store = TaskStore(db)
    first, second = await _submit(store, "acme", 2)
    one = lambda tenant: 1  # noqa: E731
    claim = await store.claim(first, lease=LEASE, running_limit=one)
    assert (await store.claim(second, lease=LEASE, running_limit=one)).outcome == "throttled"
    await store.finish(first, attempt=claim.attempt, state=ending)  # type: ignore[arg-type]
    assert (await store.claim(second, lease=LEASE, running_limit=one)).outcome == "claimed"


async def test_a_dead_workers_slot_frees_when_its_lease_runs_out(db: Database) -> None:
    store = TaskStore(db)
    first, second = await _submit(store, "acme", 2)
    one = lambda tenant: 1  # noqa: E731
    await store.claim(first, lease=LEASE, running_limit=one)  # its worker dies: no finish
    assert (await store.claim(second, lease=LEASE, running_limit=one)).outcome == "throttled"
    async with db.transaction() as conn:  # ... and its lease runs out
        await conn.execute(
            sa.update(TaskRow)
            .where(TaskRow.id == first)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    assert (await store.claim(second, lease=LEASE, running_limit=one)).outcome == "claimed"
    # The dead attempt's task is taken over when its turn comes, like any other.
    assert (await store.claim(first, lease=LEASE, running_limit=one)).outcome == "throttled"


async def test_concurrent_claims_never_pass_the_limit(db: Database) -> None:
    store = TaskStore(db)
    ids = await _submit(store, "acme", 8)
    claims = await asyncio.gather(
        *(store.claim(t, lease=LEASE, running_limit=two_each) for t in ids)
    )
    assert sorted(c.outcome for c in claims) == ["claimed"] * 2 + ["throttled"] * 6


async def test_a_finished_or_cancelled_task_is_not_throttled(db: Database) -> None:
    store = TaskStore(db)
    first, second, third = await _submit(store, "acme", 3)
    one = lambda tenant: 1  # noqa: E731
    claim = await store.claim(first, lease=LEASE, running_limit=one)
    await store.cancel(second, tenant="acme")
    cancelled = await store.claim(second, lease=LEASE, running_limit=one)
    assert cancelled.outcome == "finished"
    await store.finish(first, attempt=claim.attempt, state="succeeded")
    assert (await store.claim(first, lease=LEASE, running_limit=one)).outcome == "finished"
    assert (await store.claim(third, lease=LEASE, running_limit=one)).outcome == "claimed"
