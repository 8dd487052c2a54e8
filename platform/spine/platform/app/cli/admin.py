"""Administration: ``spine keys create|list|revoke`` (straight on the database), and
``spine keys nats`` (credentials of the embedded NATS for external publishers)."""

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


@keys_app.command("nats")
def keys_nats(
    tenant: Annotated[
        str | None,
        typer.Option(help="Mint a NATS user that may publish events of this tenant only."),
    ] = None,
    revoke: Annotated[
        str | None, typer.Option(help="Remove this minted NATS user (by its name).")
    ] = None,
) -> None:
    """Mint NATS credentials for an external publisher of one tenant's events (embedded NATS).

    Without an option, list the minted users. The user may publish on
    ``spine.events.<tenant>.>`` only, and must connect with the inbox prefix printed (its
    replies, JetStream's acknowledgements among them, land there). The running NATS of
    ``spine up`` takes the change at once.
    """
    import secrets

    from spine.events.permissions import publisher_grant, publisher_inbox_prefix
    from spine.events.subjects import subject_token
    from spine.platform.embedded.credentials import (
        NatsUser,
        add_nats_user,
        load_credentials,
        new_password,
        remove_nats_user,
    )
    from spine.platform.embedded.stack import read_state, reload_nats

    settings = settings_for_command(attach=False)
    if settings.nats_url is not None:
        raise ConfigurationError(
            "GENAI_NATS_URL names a NATS of your own: give the publisher a user there that may "
            "publish on spine.events.<tenant>.> only",
            field="GENAI_NATS_URL",
        )
    data_dir = settings.data_dir.resolve()
    if revoke is not None:
        remove_nats_user(data_dir, revoke)
        reload_nats(data_dir)
        console.print(f"removed NATS user {revoke}")
        return
    if tenant is None:
        credentials = load_credentials(data_dir)
        table = Table("user", "tenant", "publishes on", "inbox prefix")
        for user in credentials.nats_users.values() if credentials else []:
            if user.tenant is not None:
                table.add_row(
                    user.user, user.tenant, ", ".join(user.publish or ()), user.inbox_prefix or ""
                )
        console.print(table)
        return
    name = f"publisher-{subject_token(tenant)}-{secrets.token_hex(3)}"
    grant = publisher_grant(tenant, name)
    user = NatsUser(
        user=name,
        password=new_password(),
        publish=grant.publish,
        subscribe=grant.subscribe,
        tenant=tenant,
        inbox_prefix=publisher_inbox_prefix(name),
    )
    credentials = add_nats_user(data_dir, user)
    running = reload_nats(data_dir)
    state = read_state(data_dir)
    record = state.servers.get("nats") if state else None
    address = f"127.0.0.1:{record.ports['client']}" if record else "<host>:<port>"
    console.print(f"NATS user {name} for tenant {tenant!r} (kept in the data dir's credentials):")
    console.print(credentials.nats_url(f"nats://{address}", name), soft_wrap=True)
    console.print(f"publishes on: {', '.join(grant.publish)}")
    console.print(f"connect with inbox prefix: {user.inbox_prefix}")
    if not running:
        console.print("[yellow]the embedded NATS is not running; it takes the user when it starts")


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
