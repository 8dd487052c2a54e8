"""The ``spine`` command, by audience: running the platform (:mod:`.running`), administration
(:mod:`.admin`, :mod:`.budgets`), and the commands that talk to a running platform over HTTP (:mod:`.client`)."""

from __future__ import annotations

import inspect
import os
import re
import sys

import typer
from rich.text import Text

from spine.platform.app.cli import admin, budgets, client, learn, learning, running
from spine.platform.app.cli._shared import err_console
from spine.platform.errors import SpineError

__all__ = ["app", "main"]

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

app = typer.Typer(help="GenAI Spine: an event-driven agentic platform.", no_args_is_help=True)
for group in (running.commands, client.commands, learning.commands, admin.commands):
    app.registered_commands.extend(group.registered_commands)
app.add_typer(client.tasks_app, name="tasks")
app.add_typer(admin.keys_app, name="keys")
app.add_typer(admin.tenants_app, name="tenants")
app.add_typer(budgets.budgets_app, name="budgets")
app.add_typer(client.graph_app, name="graph")
app.add_typer(client.events_app, name="events")
app.add_typer(client.docs_app, name="docs")
app.add_typer(learning.routing_app, name="routing")
app.add_typer(learning.experiments_app, name="experiments")
app.add_typer(learn.learn_app, name="learn")

_ROLE = re.compile(r":[a-z]+:`~?\.?([^`]+)`")


def _plain_help(text: str) -> str:
    """Return a docstring as a terminal shows it: no reStructuredText markup."""
    return _ROLE.sub(r"\1", text).replace("``", "'")


def _clean_help(tree: typer.Typer) -> None:
    # Docstrings are written for the API docs (``code``); help text is read in a terminal.
    if tree.info.help:
        tree.info.help = _plain_help(str(tree.info.help))
    for command in tree.registered_commands:
        doc = command.help or (command.callback and inspect.getdoc(command.callback))
        if doc:
            command.help = _plain_help(str(doc))
    for group in tree.registered_groups:
        if group.help:
            group.help = _plain_help(str(group.help))
        if group.typer_instance is not None:
            _clean_help(group.typer_instance)


_clean_help(app)


def main() -> None:
    """Run the CLI, turning platform errors into one clear line and exit code 1."""
    try:
        app()
    except SpineError as exc:
        # The message quotes what was given (a path, a value): printed as it is.
        err_console.print(Text.assemble(("error:", "red"), f" {exc.message}"))
        sys.exit(1)
    except Exception as exc:
        import httpx  # the client commands' transport; a failure to reach the API is one line

        if not isinstance(exc, httpx.TransportError):
            raise
        where = exc.request.url.copy_with(path="/", query=None) if _has_request(exc) else "the API"
        err_console.print(
            Text.assemble(
                ("error:", "red"),
                f" cannot reach the API at {where} ({type(exc).__name__}: {exc or 'no answer'}); "
                "is `spine up` running? `spine status` tells",
            )
        )
        sys.exit(1)


def _has_request(exc: Exception) -> bool:
    try:
        return exc.request is not None  # type: ignore[attr-defined]
    except RuntimeError:  # httpx raises when the error carries no request
        return False
