"""What every ``spine`` command shares: the consoles, the settings, and required values."""

from __future__ import annotations

from rich.console import Console

from spine.platform.app.launcher import attach_detached_stack
from spine.platform.errors import ConfigurationError
from spine.platform.logs import configure_logging
from spine.platform.settings import Settings, load_settings

__all__ = ["console", "err_console", "require", "settings_for_command"]

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
