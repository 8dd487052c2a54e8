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
from spine.platform.embedded.credentials import ensure_credentials
from spine.platform.errors import BadRequest, NotFound, Unauthorized
from spine.platform.keys import KeyStore
from support.cli import cli_env, in_process_cli
from support.cli import spine as spine_process

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


async def test_an_admin_command_migrates_quietly(tmp_path: Path) -> None:
    env = cli_env(
        GENAI_DATABASE_URL=f"sqlite:///{tmp_path}/genai.db", GENAI_DATA_DIR=str(tmp_path / "data")
    )

    first = await spine_process("tenants", "list", env=env, cwd=tmp_path)
    again = await spine_process("tenants", "list", env=env, cwd=tmp_path)

    assert first.code == 0 and again.code == 0, first.both + again.both
    for run in (first, again):
        assert not [line for line in run.err.splitlines() if "alembic" in line], run.err
    # The schema change gets one line of ours; a run that changes nothing gets none.
    assert first.err.count("migrated the database schema from empty to ") == 1, first.err
    assert "migrated the database schema" not in again.err, again.err


def test_a_tenant_name_that_means_every_tenant_or_no_subject_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "*" reads every tenant's usage where tenants are read: the CLI once created it.
    spine = in_process_cli(tmp_path, monkeypatch)
    for name in ("*", "a b", ".acme", "acme>"):
        with pytest.raises(BadRequest, match="tenant name") as refused:
            spine("tenants", "create", name)
        assert refused.value.field == "name"
        with pytest.raises(BadRequest, match="tenant name") as refused:
            spine("keys", "create", "--tenant", name)
        assert refused.value.field == "tenant"
    assert "*" not in spine("tenants", "list").split()


def test_nats_credentials_are_minted_for_known_tenants_and_audited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spine = in_process_cli(tmp_path, monkeypatch)
    with pytest.raises(NotFound, match=r"no\.such"):
        spine("keys", "nats", "--tenant", "no.such")
    spine("tenants", "create", "acme.eu")
    ensure_credentials(tmp_path / "data")  # what `spine up` writes (its NATS is not running)
    minted = spine("keys", "nats", "--tenant", "acme.eu")
    assert "publishes on: spine.events.acme~2Eeu.>" in minted
    user = re.search(r"NATS user (\S+) for tenant", minted)
    assert user is not None
    spine("keys", "nats", "--revoke", user[1])
    audit = spine("audit", "--tenant", "acme.eu")
    assert "nats_user.create" in audit and "nats_user.revoke" in audit
