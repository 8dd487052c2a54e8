"""Administration: ``spine keys create|list|revoke`` (straight on the database)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from rich.table import Table

from spine.platform.app.cli._shared import console, require, settings_for_command
from spine.platform.errors import ConfigurationError
from spine.platform.keys import ROLES

__all__ = ["keys_app"]

keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)

# -- keys -------------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="The tenant the key belongs to.")],
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    role: Annotated[
        str,
        typer.Option(
            help="member (uses the tenant's API), admin (also administers its own tenant) or "
            "operator (runs the whole platform, reads across tenants)."
        ),
    ] = "member",
    admin: Annotated[bool, typer.Option(help="The same as --role admin.")] = False,
) -> None:
    """Create an API key; its secret is printed once."""
    chosen = "admin" if admin else role
    if chosen not in ROLES:
        raise ConfigurationError(
            f"--role must be one of {', '.join(ROLES)}, not {chosen!r}", field="--role"
        )

    async def go(keys: Any) -> Any:
        return await keys.create(tenant=tenant, name=name, role=chosen)

    issued = _with_keys(go)
    console.print(
        f"key id {issued.key.id} for tenant {tenant!r}; store it now, it is not shown again:"
    )
    console.print(issued.secret, soft_wrap=True)


@keys_app.command("list")
def keys_list(tenant: Annotated[str | None, typer.Option()] = None) -> None:
    """List keys (never their secrets)."""

    async def go(keys: Any) -> Any:
        return await keys.list_keys(tenant=tenant)

    table = Table("id", "tenant", "role", "name", "created", "revoked")
    for key in _with_keys(go):
        table.add_row(
            key.id,
            key.tenant,
            key.role,
            key.name,
            key.created_at.isoformat(" ", "seconds"),
            key.revoked_at.isoformat(" ", "seconds") if key.revoked_at else "",
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key."""

    async def go(keys: Any) -> Any:
        return await keys.revoke(key_id)

    _with_keys(go)
    console.print(f"revoked {key_id}")


def _with_keys(action: Any) -> Any:
    settings = settings_for_command()

    async def go() -> Any:
        from spine.platform.db import Database
        from spine.platform.keys import KeyStore

        db = Database(require(settings.database_url, "GENAI_DATABASE_URL"))
        try:
            await db.migrate()
            return await action(KeyStore(db))
        finally:
            await db.dispose()

    return asyncio.run(go())
