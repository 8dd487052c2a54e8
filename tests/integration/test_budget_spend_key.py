"""A budget's daily, weekly and monthly counters may all start on one day, on either database."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from support.databases import migrated_database

pytestmark = pytest.mark.integration

MONDAY_THE_FIRST = date(2026, 6, 1)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_every_period_of_a_scope_gets_its_row_on_the_same_day(
    backend: str, tmp_path: Path, pg_url: str
) -> None:
    # SQLite's copy of the table (migration 0009) had left period out of its primary key.
    async with migrated_database(backend, tmp_path, pg_url) as db:
        async with db.transaction() as conn:
            for period in ("daily", "weekly", "monthly"):
                await conn.execute(
                    sa.text(
                        "INSERT INTO budget_spend (scope, period, day, spent, reserved) "
                        "VALUES ('key:k1', :period, :day, 0, 0)"
                    ),
                    {"period": period, "day": MONDAY_THE_FIRST},
                )
            count = await conn.scalar(sa.text("SELECT count(*) FROM budget_spend"))
        assert count == 3
