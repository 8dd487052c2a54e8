"""How the client commands reach the running API: the base URL, the key, errors in one line."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import typer
from rich.text import Text

from spine.platform.app.cli._shared import err_console
from spine.platform.app.launcher import ADMIN_KEY_FILE
from spine.platform.errors import ConfigurationError
from spine.platform.settings import Settings, load_settings

if TYPE_CHECKING:
    import httpx

__all__ = ["api_client", "json_or_exit", "resolve_id"]

PREFIX_SCAN = 1000
"""How many of the newest items an id prefix is looked for among."""
_PAGE = 200


def api_client() -> httpx.Client:
    """A client of the running API, with the key from GENAI_API_KEY or the data dir."""
    settings = load_settings()
    key = os.environ.get("GENAI_API_KEY") or _saved_key(settings)
    if not key:
        raise ConfigurationError(
            "no API key: set GENAI_API_KEY (create one with `spine keys create --tenant T`)",
            field="GENAI_API_KEY",
        )
    host = "127.0.0.1" if settings.api.host in {"0.0.0.0", "::"} else settings.api.host
    base = os.environ.get("GENAI_API_URL") or f"http://{host}:{settings.api.port}"
    import httpx  # here, not at the top: `spine up` and the admin commands never need it

    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _saved_key(settings: Settings) -> str | None:
    path = settings.data_dir / ADMIN_KEY_FILE
    return path.read_text().strip() if path.exists() else None


def json_or_exit(response: httpx.Response) -> Any:
    """Return the JSON body, or print the error in one line and exit 1."""
    try:
        body = response.json()
    except ValueError:  # not JSON: a proxy's page, an empty redirect
        err_console.print(
            Text.assemble(
                (f"{response.status_code}:", "red"),
                f" {response.request.method} {response.request.url.path} answered no JSON",
            )
        )
        raise typer.Exit(1) from None
    if response.is_error:
        error = body.get("error", {})
        err_console.print(
            Text.assemble(
                (f"{response.status_code} {error.get('type')}:", "red"), f" {error.get('message')}"
            )
        )
        raise typer.Exit(1)
    return body


def resolve_id(
    client: httpx.Client, collection: str, given: str, *, noun: str, field: str = "id"
) -> str:
    """Return the full id of the item of ``collection`` whose id is or starts with ``given``.

    The id as given is tried first; else the newest :data:`PREFIX_SCAN` items are searched
    for ids that start with it. None or several is an error naming what to give instead.

    Args:
        client: A client of the running API.
        collection: The list route, e.g. ``/v1/tasks``.
        given: A whole id or the start of one.
        noun: What the items are called in messages (``task``).
        field: The listed items' field that holds the id.
    """
    if not given.strip():
        raise ConfigurationError(f"give a {noun} id (or the start of one)", field=field)
    exact = client.get(f"{collection}/{given}")
    if exact.status_code != 404:
        return given
    found: list[str] = []
    cursor: str | None = None
    seen = 0
    while seen < PREFIX_SCAN:
        params: dict[str, Any] = {"limit": _PAGE}
        if cursor:
            params["cursor"] = cursor
        page = json_or_exit(client.get(collection, params=params))
        items = page.get("data") or []
        seen += len(items)
        found += [str(i[field]) for i in items if str(i.get(field, "")).startswith(given)]
        cursor = page.get("next_cursor")
        if not cursor or not items:
            break
    if len(found) == 1:
        return found[0]
    if not found:
        err_console.print(
            Text.assemble(
                ("404 not_found:", "red"),
                f" no {noun} id is or starts with {given!r} "
                f"(among the newest {PREFIX_SCAN}); give the whole id",
            )
        )
    else:
        err_console.print(
            Text.assemble(
                ("ambiguous:", "red"),
                f" {len(found)} {noun} ids start with {given!r}; give more of the id: "
                + ", ".join(found[:10])
                + (", ..." if len(found) > 10 else ""),
            )
        )
    raise typer.Exit(1)
