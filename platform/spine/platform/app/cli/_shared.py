"""What every ``spine`` command shares: the consoles, the settings, required values, files read
as text, and data printed as it is."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.text import Text

from spine.platform.app.launcher import attach_detached_stack
from spine.platform.errors import ConfigurationError
from spine.platform.logs import configure_logging
from spine.platform.settings import Settings, load_settings

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "add_literal_row",
    "console",
    "err_console",
    "literal",
    "read_text",
    "require",
    "settings_for_command",
]

console = Console()
err_console = Console(stderr=True)


def settings_for_command(*, attach: bool = True, role: str = "api") -> Settings:
    """Load the settings, set up logging, and attach to a detached stack's servers.

    Args:
        attach: Fill unset URLs from the servers ``spine up --detach`` runs here.
        role: Whose NATS credentials the URL carries (``api``; ``worker`` for a worker).
    """
    settings = load_settings()
    configure_logging(settings.log_level)
    return attach_detached_stack(settings, role=role) if attach else settings


def require(value: str | None, name: str) -> str:
    """Return a setting that must be set, or say how to set it."""
    if value is None:
        raise ConfigurationError(f"{name} is not set; run `spine up` or set it", field=name)
    return value


def read_text(path: Path | str, *, option: str) -> str:
    """Return a file's text; one that cannot be read as UTF-8 is an error naming ``option``."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(
            f"{option}: cannot read {path} as UTF-8 text: {exc}", field=option
        ) from None


def literal(value: object) -> Text:
    """Return ``value`` as text that prints as it is.

    Whatever came from a user, an event, a model or the server is data: read as Rich markup,
    ``[red]`` in it would vanish and a stray ``[/bold]`` would stop the command; emoji codes
    (``:warning:``) would be replaced even with markup off. A ``Text`` is neither.
    """
    return Text(str(value))


def add_literal_row(table: Table, *cells: object) -> None:
    """Add a row of data to ``table``: each cell a :func:`literal`; a ``Text`` as it is, and
    None an empty cell."""
    table.add_row(
        *(cell if cell is None or isinstance(cell, Text) else literal(cell) for cell in cells)
    )
