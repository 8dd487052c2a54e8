"""What the administration commands share: the database with its key store and audit log,
opened for one command, and how a change made from the CLI is recorded (``via`` the CLI, from
``cli:<user>@<host>``)."""

from __future__ import annotations

import asyncio
import getpass
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from spine.platform.app.cli._shared import require, settings_for_command

if TYPE_CHECKING:
    from spine.platform.audit import AuditLog
    from spine.platform.db import Database
    from spine.platform.keys import ApiKey, KeyStore
    from spine.platform.settings import Settings

__all__ = ["Admin", "administer", "origin", "when"]

_T = TypeVar("_T")


@dataclass(slots=True, kw_only=True)
class Admin:
    """The stores one administration command works with."""

    settings: Settings
    db: Database
    keys: KeyStore
    audit: AuditLog

    async def audit_change(
        self, action: str, *, tenant: str, target: str, details: dict[str, Any] | None = None
    ) -> None:
        """Record a change made from the CLI (no key; from :func:`origin`)."""
        await self.audit.record(
            action,
            tenant=tenant,
            target=target,
            key_id=None,
            address=origin(),
            via="cli",
            details=details,
        )

    async def audit_key(
        self, action: str, key: ApiKey, *, target: str | None = None, **details: Any
    ) -> None:
        """Record a change to ``key``."""
        await self.audit_change(action, tenant=key.tenant, target=target or key.id, details=details)


def administer(action: Callable[[Admin], Awaitable[_T]]) -> _T:
    """Run ``action`` with the database migrated and opened, then closed."""
    settings = settings_for_command()

    async def go() -> _T:
        from spine.platform.audit import AuditLog
        from spine.platform.db import Database
        from spine.platform.keys import KeyStore

        db = Database(require(settings.database_url, "GENAI_DATABASE_URL"))
        try:
            await db.migrate()
            admin = Admin(settings=settings, db=db, keys=KeyStore(db), audit=AuditLog(db))
            return await action(admin)
        finally:
            await db.dispose()

    return asyncio.run(go())


def origin() -> str:
    """Where a change made from the CLI comes from: ``cli:<user>@<host>``."""
    return f"cli:{getpass.getuser()}@{socket.gethostname()}"


def when(moment: datetime | None) -> str:
    """A moment as the tables show it (empty when there is none)."""
    return moment.isoformat(" ", "seconds") if moment is not None else ""
