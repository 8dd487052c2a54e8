"""How the client commands reach the running API: the base URL, the key, errors in one line."""

from __future__ import annotations

import os
from typing import Any

import httpx
import typer

from spine.platform.app.cli._shared import err_console
from spine.platform.app.launcher import ADMIN_KEY_FILE
from spine.platform.errors import ConfigurationError
from spine.platform.settings import Settings, load_settings

__all__ = ["api_client", "json_or_exit"]


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
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _saved_key(settings: Settings) -> str | None:
    path = settings.data_dir / ADMIN_KEY_FILE
    return path.read_text().strip() if path.exists() else None


def json_or_exit(response: httpx.Response) -> Any:
    """Return the JSON body, or print the error in one line and exit 1."""
    body = response.json()
    if response.is_error:
        error = body.get("error", {})
        err_console.print(
            f"[red]{response.status_code} {error.get('type')}:[/red] {error.get('message')}"
        )
        raise typer.Exit(1)
    return body
