"""``spine budgets set|show|remove``: a round trip on a SQLite file, each change audited.

In-process (Typer's runner), as ``test_admin_cli.py`` runs the other admin commands.
"""

from __future__ import annotations

import asyncio
import re
from decimal import Decimal
from pathlib import Path

import pytest

from spine.platform.audit import AuditLog
from spine.platform.db import Database
from spine.platform.errors import ConfigurationError, NotFound
from spine.platform.metering.budgets import BudgetLedger, BudgetLimits
from support.cli import in_process_cli

pytestmark = pytest.mark.integration

KEY = re.compile(r"key id ([0-9a-f]{12})")


def test_budgets_are_set_shown_and_removed_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENAI_BUDGETS__TENANTS", "acme=40")
    spine = in_process_cli(tmp_path, monkeypatch)
    url = f"sqlite:///{tmp_path}/genai.db"

    def row(output: str, period: str) -> list[str]:
        line = next(line for line in output.splitlines() if f" {period} " in line)
        return [cell.strip() for cell in line.strip(" │|").split("│")]

    spine("tenants", "create", "acme")
    member = KEY.search(spine("keys", "create", "--tenant", "acme"))
    assert member is not None
    shown = spine("budgets", "show", "--tenant", "acme")
    assert row(shown, "daily")[2:4] == ["40", "settings"]
    assert row(shown, "weekly")[2:4] == ["unlimited", ""]

    assert "12.5" in spine("budgets", "set", "12.50", "--tenant", "acme", "--period", "weekly")
    spine("budgets", "set", "3", "--tenant", "acme")  # daily: over the settings' 40
    spine("budgets", "set", "1", "--key", member[1], "--period", "monthly")
    shown = spine("budgets", "show", "--tenant", "acme")
    assert row(shown, "weekly")[2:4] == ["12.5", "stored"]
    assert row(shown, "daily")[2:4] == ["3", "stored"]
    assert row(spine("budgets", "show", "--key", member[1]), "monthly")[2:4] == ["1", "stored"]

    spine("budgets", "remove", "--tenant", "acme")
    shown = spine("budgets", "show", "--tenant", "acme")
    assert row(shown, "daily")[2:4] == ["40", "settings"]  # the default is back
    with pytest.raises(NotFound, match="no daily budget is stored"):
        spine(*["budgets", "remove", "--tenant", "acme"])
    with pytest.raises(NotFound):
        spine(*["budgets", "set", "1", "--tenant", "nobody"])
    for bad in (["1", "--period", "yearly"], ["lots"], ["0.123456789"], ["--", "-1"]):
        with pytest.raises(ConfigurationError):
            spine(*["budgets", "set", "--tenant", "acme", *bad])

    async def check() -> None:
        db = Database(url)
        try:
            ledger = BudgetLedger(db, BudgetLimits())
            limits = await ledger.current_limits()
            assert limits.limit("tenant:acme", "weekly") == Decimal("12.5")
            assert limits.limit(f"key:{member[1]}", "monthly") == Decimal(1)
            page = await AuditLog(db).page(tenant="acme")
            budget_rows = [e for e in page.data[::-1] if e.action.startswith("budget.")]
            assert [(e.action, e.target, e.details.get("period")) for e in budget_rows] == [
                ("budget.set", "tenant:acme", "weekly"),
                ("budget.set", "tenant:acme", "daily"),
                ("budget.set", f"key:{member[1]}", "monthly"),
                ("budget.remove", "tenant:acme", "daily"),
            ]
            assert all(e.via == "cli" and e.key_id is None for e in budget_rows)
            await ledger.close()
        finally:
            await db.dispose()

    asyncio.run(check())
