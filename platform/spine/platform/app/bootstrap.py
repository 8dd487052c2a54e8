"""Prepare the database for ``spine up``, in a one-shot child process of its own.

``python -m spine.platform.app.bootstrap`` migrates the database of ``GENAI_DATABASE_URL`` and,
on a fresh database, issues the first operator key, whose secret it prints on stdout (a pipe
``spine up`` reads: never a command line, never a file here). A child, so that ``spine up``,
which lives as long as the platform, never holds the migrations, the ORM's mappers and a pool;
and a module of its own, so that the child imports only the database and the keys.

Exit codes: 0 done (stdout holds the new secret, or nothing when keys already exist), 1 a
platform error (its message on stderr, last line).
"""

from __future__ import annotations

import asyncio
import sys

from spine.platform.db import Database
from spine.platform.errors import ConfigurationError, SpineError
from spine.platform.keys import KeyStore
from spine.platform.settings import load_settings

__all__ = ["prepare_database"]


async def prepare_database(database_url: str) -> str | None:
    """Migrate, and on a fresh database issue the first operator key; return its secret."""
    db = Database(database_url)
    try:
        await db.migrate()
        keys = KeyStore(db)
        if await keys.any_exist():
            return None
        issued = await keys.create(tenant="default", role="operator", name="first operator key")
        return issued.secret
    finally:
        await db.dispose()


def main() -> int:
    """Prepare the database of the settings; print the new key's secret, if one was issued."""
    try:
        url = load_settings().database_url
        if url is None:
            raise ConfigurationError("no database URL to prepare", field="GENAI_DATABASE_URL")
        secret = asyncio.run(prepare_database(url))
    except SpineError as exc:
        print(f"{type(exc).__name__}: {exc.message}", file=sys.stderr)
        return 1
    if secret is not None:
        print(secret)
    return 0


if __name__ == "__main__":
    sys.exit(main())
