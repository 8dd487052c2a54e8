"""``spine tenants``, ``spine keys create --expires-in|rotate``, ``spine budgets``, ``spine audit``.

In-process (Typer's runner) on a SQLite file: the subprocess path of the CLI is
``test_cli.py``'s, and each subprocess pays several seconds of imports.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from spine.platform.db import Database
from spine.platform.errors import BadRequest, Unauthorized
from spine.platform.keys import KeyStore
from support.cli import in_process_cli

pytestmark = pytest.mark.integration

KEY = re.compile(r"\bspn_([0-9a-f]{12})_[A-Za-z0-9_-]{40,}")


def test_the_admin_commands_change_keys_and_record_each_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spine = in_process_cli(tmp_path, monkeypatch)
    url = f"sqlite:///{tmp_path}/genai.db"

    assert "tenant 'acme' created" in spine("tenants", "create", "acme")
    created = spine("keys", "create", "--tenant", "acme", "--role", "admin", "--expires-in", "30d")
    first = KEY.search(created)
    assert first is not None and "expires 20" in created
    rotated = spine("keys", "rotate", first[1])
    second = KEY.search(rotated)
    assert second is not None and second[1] != first[1]
    listing = spine("keys", "list", "--tenant", "acme")
    assert "revoked" in listing and "active" in listing
    assert "tenant:acme" in spine("budgets", "show", "--tenant", "acme")
    assert "acme" in spine("tenants", "list")
    page = spine("audit", "--tenant", "acme", "--limit", "2")
    assert "key.rotate" in page and "key.create" in page and "tenant.create" not in page
    cursor = re.search(r"--cursor (\S+)", page)
    assert cursor is not None
    rest = spine("audit", "--tenant", "acme", "--cursor", cursor[1])
    assert "tenant.create" in rest and "cli:" in rest

    async def check() -> None:
        db = Database(url)
        try:
            keys = KeyStore(db, cache_seconds=0)
            with pytest.raises(Unauthorized):
                await keys.verify(first[0])
            principal = await keys.verify(second[0])
            assert (principal.tenant, principal.role) == ("acme", "admin")
        finally:
            await db.dispose()

    asyncio.run(check())
    with pytest.raises(BadRequest, match="--expires-in"):
        spine(*["keys", "create", "--tenant", "acme", "--expires-in", "soon"])
