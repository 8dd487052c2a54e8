"""Administration, straight on the database (no running API needed, no key either):
``spine keys create|list|revoke|rotate|limits``, ``spine tenants create|list``, ``spine audit``;
and ``spine keys nats`` (credentials of the embedded NATS for external publishers). Budgets are
in :mod:`.budgets`.

Every change is recorded in the audit log as made ``via`` the CLI, with no key, from
``cli:<user>@<host>``. A running API takes a revocation or rotation within
``GENAI_API__KEY_CACHE_SECONDS`` (5 s by default). The same actions are in the HTTP API
(``/v1/tenants``, ``/v1/keys``, ``/v1/budgets``, ``/v1/audit``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Column, Table
from rich.text import Text

from spine.platform.app.cli._administering import Admin, administer, when
from spine.platform.app.cli._shared import (
    add_literal_row,
    console,
    literal,
    settings_for_command,
)
from spine.platform.errors import ConfigurationError

if TYPE_CHECKING:
    from spine.platform.keys import ApiKey

__all__ = ["commands", "keys_app", "tenants_app"]

keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
tenants_app = typer.Typer(help="Manage tenants.", no_args_is_help=True)
commands = typer.Typer()

EXPIRES_IN = typer.Option(
    "--expires-in", help="The key stops working after this long: 30d, 12h, 90m, or seconds."
)

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
    expires_in: Annotated[str | None, EXPIRES_IN] = None,
) -> None:
    """Create an API key; its secret is printed once."""
    from spine.platform.keys import ROLES

    chosen = "admin" if admin else role
    if chosen not in ROLES:
        raise ConfigurationError(
            f"--role must be one of {', '.join(ROLES)}, not {chosen!r}", field="--role"
        )
    expires_at = _expiry(expires_in)

    async def go(admin: Admin) -> Any:
        issued = await admin.keys.create(
            tenant=tenant, name=name, role=chosen, expires_at=expires_at
        )
        await admin.audit_key("key.create", issued.key, role=chosen, name=name)
        return issued

    issued = administer(go)
    until = f", expires {issued.key.expires_at.isoformat(' ', 'seconds')}" if expires_at else ""
    console.print(
        literal(
            f"key id {issued.key.id} for tenant {tenant!r}{until}; "
            "store it now, it is not shown again:"
        )
    )
    console.print(literal(issued.secret), soft_wrap=True)


@keys_app.command("list")
def keys_list(tenant: Annotated[str | None, typer.Option()] = None) -> None:
    """List keys (never their secrets)."""

    async def go(admin: Admin) -> list[ApiKey]:
        return await admin.keys.list_keys(tenant=tenant)

    now = datetime.now(UTC)
    # The id is what `keys revoke|rotate|limits` take: never shortened, whatever the width.
    table = Table(
        Column("id", no_wrap=True, min_width=12),
        "tenant",
        "role",
        "name",
        "created",
        "expires",
        "revoked",
        Column("state", no_wrap=True, min_width=7),
    )
    for key in administer(go):
        add_literal_row(
            table,
            key.id,
            key.tenant,
            key.role,
            key.name,
            when(key.created_at),
            when(key.expires_at),
            when(key.revoked_at),
            "revoked" if key.revoked_at else "active" if key.usable(now) else "expired",
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key; a running API refuses it within the key cache time (5 s)."""

    async def go(admin: Admin) -> ApiKey:
        key = await admin.keys.revoke(key_id, keep_an_operator=False)  # the way back
        await admin.audit_key("key.revoke", key)
        return key

    administer(go)
    console.print(literal(f"revoked {key_id}"))


@keys_app.command("rotate")
def keys_rotate(key_id: str, expires_in: Annotated[str | None, EXPIRES_IN] = None) -> None:
    """Issue a new key with the same tenant, role and name, and revoke the old one."""
    expires_at = _expiry(expires_in)

    async def go(admin: Admin) -> Any:
        issued = await admin.keys.rotate(key_id, expires_at=expires_at)
        await admin.audit_key("key.rotate", issued.key, target=key_id, new_key=issued.key.id)
        return issued

    issued = administer(go)
    console.print(
        literal(
            f"key {key_id} revoked; its successor {issued.key.id} (tenant {issued.key.tenant!r}, "
            f"role {issued.key.role}); store it now, it is not shown again:"
        )
    )
    console.print(literal(issued.secret), soft_wrap=True)


@keys_app.command("limits")
def keys_limits(
    key_id: str,
    requests_per_minute: Annotated[
        int | None,
        typer.Option("--rpm", min=0, max=2_000_000_000, help="Requests per minute; 0: no limit."),
    ] = None,
    tokens_per_minute: Annotated[
        int | None,
        typer.Option("--tpm", min=0, max=2_000_000_000, help="Tokens per minute; 0: no limit."),
    ] = None,
    default: Annotated[
        bool, typer.Option("--default", help="Drop the key's own limits: the settings hold.")
    ] = False,
) -> None:
    """Show a key's own rate limits, or set them (--rpm, --tpm; --default drops them)."""
    from spine.platform.limits import KeyLimits, KeyLimitStore

    changing = default or requests_per_minute is not None or tokens_per_minute is not None

    async def go(admin: Admin) -> KeyLimits:
        store = KeyLimitStore(admin.db, cache_seconds=0)
        key = await admin.keys.get(key_id)
        if not changing:
            return await store.get(key_id)
        current = KeyLimits() if default else await store.get(key_id)
        wanted = KeyLimits(
            requests_per_minute=requests_per_minute
            if requests_per_minute is not None
            else current.requests_per_minute,
            tokens_per_minute=tokens_per_minute
            if tokens_per_minute is not None
            else current.tokens_per_minute,
        )
        stored = await store.set(key_id, wanted)
        await admin.audit_key(
            "key.limits",
            key,
            requests_per_minute=stored.requests_per_minute,
            tokens_per_minute=stored.tokens_per_minute,
        )
        return stored

    own = administer(go)

    def shown(value: int | None) -> str:
        return "default" if value is None else "no limit" if value == 0 else f"{value}/min"

    console.print(
        literal(
            f"key {key_id}: requests {shown(own.requests_per_minute)}, "
            f"tokens {shown(own.tokens_per_minute)}"
            + (" (a running API applies it within the key cache time, 5 s)" if changing else "")
        )
    )


# -- tenants ----------------------------------------------------------------------------------


@tenants_app.command("create")
def tenants_create(name: str) -> None:
    """Register a tenant (keys for it are then created with `spine keys create`)."""

    async def go(admin: Admin) -> None:
        await admin.keys.create_tenant(name)
        await admin.audit_change("tenant.create", tenant=name, target=name)

    administer(go)
    console.print(literal(f"tenant {name!r} created"))


@tenants_app.command("list")
def tenants_list() -> None:
    """List the tenants, newest first."""

    async def go(admin: Admin) -> list[Any]:
        tenants: list[Any] = []
        cursor: str | None = None
        while True:
            page = await admin.keys.tenants_page(limit=500, cursor=cursor)
            tenants.extend(page.tenants)
            if page.next_cursor is None:
                return tenants
            cursor = page.next_cursor

    table = Table("tenant", "created")
    for tenant in administer(go):
        add_literal_row(table, tenant.name, when(tenant.created_at))
    console.print(table)


# -- audit ------------------------------------------------------------------------------------


@commands.command("audit")
def audit(
    action: Annotated[str | None, typer.Option(help="Only this action (key.create, ...).")] = None,
    key: Annotated[str | None, typer.Option(help="Only what this key id did.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only what was done to this tenant.")] = None,
    since: Annotated[
        str | None, typer.Option(help="From this ISO time (UTC if no offset).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Before this ISO time.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    cursor: Annotated[str | None, typer.Option(help="Continue after an earlier page.")] = None,
) -> None:
    """Show the audit log, newest first; the last line gives the cursor of the next page."""
    start, end = _moment(since, "--since"), _moment(until, "--until")

    async def go(admin: Admin) -> Any:
        return await admin.audit.page(
            tenant=tenant,
            action=action,
            key_id=key,
            since=start,
            until=end,
            limit=limit,
            cursor=cursor,
        )

    page = administer(go)
    table = Table(
        "time",
        Column("action", no_wrap=True, min_width=18),  # experiment.promote, whole
        "outcome",
        "tenant",
        "target",
        Column("key", no_wrap=True, min_width=12),
        "via",
        "from",
    )
    for entry in page.data:
        add_literal_row(
            table,
            when(entry.at),
            entry.action,
            entry.outcome,
            entry.tenant,
            entry.target,
            entry.key_id or "",
            entry.via,
            entry.address or "",
        )
    console.print(table)
    if page.next_cursor is not None:
        console.print(literal(f"next page: --cursor {page.next_cursor}"), soft_wrap=True)


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
    from spine.events.subjects import tenant_token
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
        credentials = load_credentials(data_dir)
        known = credentials.nats_users.get(revoke) if credentials else None
        remove_nats_user(data_dir, revoke)
        reload_nats(data_dir)

        async def record_revoke(admin: Admin) -> None:
            owner = known.tenant if known is not None and known.tenant else "default"
            await admin.audit_change("nats_user.revoke", tenant=owner, target=revoke)

        administer(record_revoke)
        console.print(literal(f"removed NATS user {revoke}"))
        return
    if tenant is None:
        credentials = load_credentials(data_dir)
        table = Table("user", "tenant", "publishes on", "inbox prefix")
        for user in credentials.nats_users.values() if credentials else []:
            if user.tenant is not None:
                add_literal_row(
                    table,
                    user.user,
                    user.tenant,
                    ", ".join(user.publish or ()),
                    user.inbox_prefix or "",
                )
        console.print(table)
        return
    name = f"publisher-{tenant_token(tenant)}-{secrets.token_hex(3)}"
    grant = publisher_grant(tenant, name)

    async def exists(admin: Admin) -> None:
        await admin.keys.tenant(tenant)  # a NotFound naming --tenant: create the tenant first

    administer(exists)
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

    async def record_create(admin: Admin) -> None:
        await admin.audit_change(
            "nats_user.create", tenant=tenant, target=name, details={"publish": list(grant.publish)}
        )

    administer(record_create)
    state = read_state(data_dir)
    record = state.servers.get("nats") if state else None
    address = f"127.0.0.1:{record.ports['client']}" if record else "<host>:<port>"
    console.print(
        literal(f"NATS user {name} for tenant {tenant!r} (kept in the data dir's credentials):")
    )
    console.print(literal(credentials.nats_url(f"nats://{address}", name)), soft_wrap=True)
    console.print(literal(f"publishes on: {', '.join(grant.publish)}"))
    console.print(literal(f"connect with inbox prefix: {user.inbox_prefix}"))
    if not running:
        console.print(
            Text(
                "the embedded NATS is not running; it takes the user when it starts", style="yellow"
            )
        )


def _expiry(expires_in: str | None) -> datetime | None:
    if expires_in is None:
        return None
    from spine.platform.keys import parse_lifetime

    return datetime.now(UTC) + parse_lifetime(expires_in, field="--expires-in")


def _moment(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be an ISO time, not {value!r}", field=name) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
