"""The usage ledger on its own, on SQLite and on PostgreSQL alike."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from spine.platform.db import Database
from spine.platform.errors import BadRequest
from spine.platform.metering.usage import Grouping, ModelCallRecord, UsageLedger, UsageRow
from spine.platform.schema import ModelCallRow

pytestmark = pytest.mark.integration

DAY_ONE = datetime(2026, 11, 24, 23, 59, 59, 999999, tzinfo=UTC)
DAY_TWO = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)


@pytest.fixture
def ledger(db: Database) -> UsageLedger:
    return UsageLedger(db)


def calls() -> list[ModelCallRecord]:
    """A mix of tenants, models, providers, days, cache hits and failures."""
    made: list[ModelCallRecord] = []
    shapes = [
        ("acme", "gpt", "openai", DAY_ONE, Decimal("0.00012345")),
        ("acme", "llama", "ollama", DAY_ONE, Decimal(0)),
        ("acme", "gpt", "openai", DAY_TWO, Decimal("0.1")),
        ("globex", "gpt", "openai", DAY_ONE, Decimal("0.2")),
        ("globex", "claude", "anthropic", DAY_TWO, Decimal("1.23456789")),
    ]
    for i in range(20):
        tenant, model, provider, day, cost = shapes[i % len(shapes)]
        made.append(
            ModelCallRecord(
                tenant=tenant,
                key_id=f"key-{tenant}",
                task_id=f"task-{i}" if i % 3 == 0 else None,
                model=model,
                provider=provider,
                input_tokens=10 + i,
                output_tokens=3 * i,
                cost=cost,
                latency_ms=12.5 + i,
                cache_hit=i % 4 == 0,
                fallback_path=["llama"] if i % 5 == 2 else [],
                outcome="ok" if i % 7 else "rate_limited",
                # Each day's calls spread over hours; DAY_ONE's end at its last microsecond.
                created_at=day - timedelta(hours=i % 3)
                if day == DAY_ONE
                else day + timedelta(hours=i % 3),
            )
        )
    return made


def expected(
    records: list[ModelCallRecord], group_by: list[Grouping]
) -> dict[tuple[Any, ...], tuple[int, int, int, Decimal, int, int]]:
    totals: dict[tuple[Any, ...], list[Any]] = defaultdict(lambda: [0, 0, 0, Decimal(0), 0, 0])
    for call in records:
        values = {
            "day": call.created_at.astimezone(UTC).date(),
            "model": call.model,
            "tenant": call.tenant,
            "provider": call.provider,
        }
        total = totals[tuple(values[g] for g in group_by)]
        total[0] += 1
        total[1] += call.input_tokens
        total[2] += call.output_tokens
        total[3] += call.cost
        total[4] += call.cache_hit
        total[5] += call.outcome != "ok"
    return {key: tuple(value) for key, value in totals.items()}


def measured(
    rows: list[UsageRow], group_by: list[Grouping]
) -> dict[tuple[Any, ...], tuple[int, int, int, Decimal, int, int]]:
    found = {}
    for row in rows:
        key = tuple(getattr(row, g) for g in group_by)
        assert key not in found, key
        for other in {"day", "model", "tenant", "provider"} - set(group_by):
            assert getattr(row, other) is None
        found[key] = (
            row.calls,
            row.input_tokens,
            row.output_tokens,
            row.cost,
            row.cache_hits,
            row.errors,
        )
    return found


GROUPINGS: list[list[Grouping]] = [
    [],
    ["day"],
    ["model"],
    ["tenant"],
    ["provider"],
    ["day", "model"],
    ["tenant", "day", "provider"],
    ["day", "model", "tenant", "provider"],
]


async def test_record_stores_every_field(ledger: UsageLedger, db: Database) -> None:
    call = ModelCallRecord(
        tenant="acme",
        key_id="k1",
        task_id="t1",
        model="gpt",
        provider="openai",
        input_tokens=7,
        output_tokens=9,
        cost=Decimal("0.12345678"),
        latency_ms=81.25,
        cache_hit=True,
        fallback_path=["llama", "mistral"],
        outcome="timeout",
        created_at=DAY_TWO,
    )
    await ledger.record(call)
    async with db.session() as session:
        row = await session.get(ModelCallRow, call.id)
    assert row is not None
    assert (row.tenant, row.key_id, row.task_id, row.model, row.provider) == (
        "acme",
        "k1",
        "t1",
        "gpt",
        "openai",
    )
    assert (row.input_tokens, row.output_tokens, row.latency_ms) == (7, 9, 81.25)
    assert row.cost == Decimal("0.12345678")
    assert isinstance(row.cost, Decimal)
    assert row.cache_hit is True
    assert row.fallback_path == ["llama", "mistral"]
    assert row.outcome == "timeout"
    assert row.created_at == DAY_TWO


@pytest.mark.parametrize("group_by", GROUPINGS, ids=lambda g: "+".join(g) or "total")
async def test_totals_equal_the_sum_of_recorded_calls(
    ledger: UsageLedger, group_by: list[Grouping]
) -> None:
    records = calls()
    await ledger.record_many(records[:5])
    for call in records[5:]:
        await ledger.record(call)

    everyone = await ledger.summary(tenant=None, group_by=group_by)
    assert measured(everyone, group_by) == expected(records, group_by)
    # Rows come ordered by their groups.
    keys = [tuple(getattr(r, g) for g in group_by) for r in everyone]
    assert keys == sorted(keys)

    for tenant in ("acme", "globex"):
        own = await ledger.summary(tenant=tenant, group_by=group_by)
        mine = [c for c in records if c.tenant == tenant]
        assert measured(own, group_by) == expected(mine, group_by)
        if "tenant" in group_by:
            assert {r.tenant for r in own} == {tenant}


async def test_a_tenant_sees_only_its_own_calls(ledger: UsageLedger) -> None:
    await ledger.record_many(calls())
    assert await ledger.summary(tenant="initech", group_by=["day"]) == []
    [acme] = await ledger.summary(tenant="acme")
    [globex] = await ledger.summary(tenant="globex")
    [total] = await ledger.summary(tenant=None)
    assert acme.calls + globex.calls == total.calls == 20
    assert acme.cost + globex.cost == total.cost
    assert acme.cost == 4 * (Decimal("0.00012345") + Decimal("0.1"))
    assert acme.tenant is None


async def test_days_are_utc_days_and_the_window_is_half_open(ledger: UsageLedger) -> None:
    await ledger.record_many(calls())
    by_day = await ledger.summary(tenant=None, group_by=["day"])
    assert [(r.day, r.calls) for r in by_day] == [(date(2026, 11, 24), 12), (date(2026, 11, 25), 8)]
    assert all(type(r.day) is date for r in by_day)

    second = await ledger.summary(tenant=None, since=DAY_TWO)
    assert [r.calls for r in second] == [8]
    first = await ledger.summary(tenant=None, until=DAY_TWO)
    assert [r.calls for r in first] == [12]
    last_instant = await ledger.summary(
        tenant=None, since=DAY_ONE, until=DAY_ONE + timedelta(microseconds=1)
    )
    assert [r.calls for r in last_instant] == [len([c for c in calls() if c.created_at == DAY_ONE])]
    assert await ledger.summary(tenant=None, since=DAY_TWO + timedelta(days=1)) == []


async def test_an_empty_ledger_and_a_bad_grouping(ledger: UsageLedger) -> None:
    assert await ledger.summary(tenant=None) == []
    assert await ledger.summary(tenant=None, group_by=["model", "day"]) == []
    await ledger.record_many([])
    with pytest.raises(BadRequest) as refused:
        await ledger.summary(tenant=None, group_by=["week"])  # type: ignore[list-item]
    assert refused.value.field == "group_by"


async def test_costs_sum_exactly(ledger: UsageLedger, db: Database) -> None:
    # 0.1 + 0.2 is not 0.3 in binary floating point; the ledger's sums are exact on both.
    for cost in ("0.1", "0.2", "0.00000001"):
        await ledger.record(
            ModelCallRecord(tenant="acme", model="m", provider="openai", cost=Decimal(cost))
        )
    [total] = await ledger.summary(tenant="acme")
    assert total.cost == Decimal("0.30000001")
    async with db.session() as session:
        stored = await session.scalar(sa.select(sa.func.count()).select_from(ModelCallRow))
    assert stored == 3


async def count_rows(db: Database) -> int:
    async with db.session() as session:
        return int(await session.scalar(sa.select(sa.func.count()).select_from(ModelCallRow)) or 0)


async def test_submitted_rows_are_written_behind_and_read_back(db: Database) -> None:
    ledger = UsageLedger(db, flush_interval=10.0)  # the writer would wait: flushes write
    for call in calls():
        await ledger.submit(call)
    assert ledger.pending == len(calls())
    assert await count_rows(db) == 0  # nothing committed on the caller's path
    [total] = await ledger.summary(tenant=None)  # reads this process's own rows back
    assert total.calls == len(calls()) and ledger.pending == 0
    await ledger.submit(ModelCallRecord(tenant="acme", model="m", provider="openai"))
    await ledger.close()  # drains
    assert await count_rows(db) == len(calls()) + 1


async def test_a_batch_written_twice_is_stored_once(ledger: UsageLedger, db: Database) -> None:
    # A retried INSERT whose first commit went through (its answer lost) adds nothing.
    batch = calls()[:4]
    await ledger.record_many(batch)
    await ledger.record_many(batch)
    assert await count_rows(db) == 4
