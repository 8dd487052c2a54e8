"""Commands that run the platform: ``up``, ``down``, ``status``, ``api``, ``worker``, ``migrate``,
``config`` and ``doctor``."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
from collections.abc import Callable
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from spine.platform.app.cli._shared import (
    add_literal_row,
    console,
    literal,
    require,
    settings_for_command,
)
from spine.platform.app.launcher import StackRunner, describe_config, plan_local_model
from spine.platform.errors import ConfigurationError
from spine.platform.logs import configure_logging
from spine.platform.settings import Settings, load_settings

__all__ = ["commands"]

commands = typer.Typer()

# -- running the platform ---------------------------------------------------------------------


@commands.command()
def up(
    workers: Annotated[int, typer.Option(help="Worker processes to run.")] = 1,
    concurrency: Annotated[int | None, typer.Option(help="Tasks per worker process.")] = None,
    detach: Annotated[bool, typer.Option(help="Start only the backing servers, detached.")] = False,
) -> None:
    """Start every backing service that is not configured, then the API and the workers."""
    settings = load_settings()
    configure_logging(settings.log_level)
    runner = StackRunner(settings, console=console)
    raise typer.Exit(runner.run(workers=workers, concurrency=concurrency, detach=detach))


@commands.command()
def down() -> None:
    """Stop the ``spine up`` running in this data dir, or the servers of ``spine up --detach``."""
    settings = load_settings()
    stopped = StackRunner(settings, console=console).stop_detached()
    console.print(
        literal(f"stopped {', '.join(stopped)}")
        if stopped
        else "no spine up or detached servers running"
    )


@commands.command()
def status() -> None:
    """Show the servers and processes ``spine up`` runs in this data dir (and their restarts)."""
    settings = load_settings()
    rows = StackRunner(settings, console=console).status()
    if not rows:
        console.print(literal(f"no embedded servers recorded under {settings.data_dir}"))
        return
    table = Table("name", "state", "pid", "detail")
    for row in rows:
        add_literal_row(table, *row)
    console.print(table)


@commands.command()
def api() -> None:
    """Run the HTTP API (port 8100 by default)."""
    import uvicorn

    from spine.platform.app.api import create_app
    from spine.platform.app.api.serving import server_config
    from spine.platform.telemetry import setup_tracing, shutdown_tracing

    settings = settings_for_command()
    setup_tracing(settings.otel, role="api")  # before the app: its server spans need it
    try:
        app = create_app(settings)
        # What start-up allocated (the imports, the app) lives as long as the process: out of
        # the collector's generations, a full collection no longer walks it (measured: ~0.2 M
        # objects, 110 ms a full collection, which every request in flight waits through).
        gc.freeze()
        # Deadlines for slow clients, a connection limit, keep-alive: see GENAI_API__*.
        uvicorn.Server(server_config(app, settings.api)).run()
    finally:
        shutdown_tracing()
    gc.freeze()  # exit promptly (see `worker`)


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop for the long-running consumers when installed, else asyncio's (None).

    The API runs on it already (uvicorn picks it); a worker spends a third of its CPU in the
    event loop itself, and uvloop's costs it 7 % less CPU per task (``bench/dispatch.py``).
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


@commands.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Tasks run at once.")] = None,
) -> None:
    """Run an agent worker until SIGINT or SIGTERM, then finish the tasks in hand."""
    from spine.platform.telemetry import setup_tracing, shutdown_tracing

    settings = settings_for_command(role="worker")
    if concurrency is not None:
        settings = settings.model_copy(
            update={"worker": settings.worker.model_copy(update={"concurrency": concurrency})}
        )
    setup_tracing(settings.otel, role="worker")
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(_run_worker(settings))
    finally:
        shutdown_tracing()  # export the spans still buffered
    # Exit promptly: a final collection over LiteLLM's thousands of modules takes seconds.
    gc.freeze()


async def _run_worker(settings: Settings) -> None:
    from spine.platform.app.wiring import Platform
    from spine.platform.telemetry import process_server

    platform = Platform.build(settings, name=f"spine-worker-{os.getpid()}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # GET /metrics on a port of its own (GENAI_METRICS__PORT, the first free one of its span).
    metrics = process_server(settings.metrics, role="worker")
    await metrics.start()
    try:
        await platform.start()
        gc.freeze()  # start-up's objects out of the collector's walk, as in `api`
        try:
            # Graph ingestion and triggers run beside the agent worker (they consume EVENTS).
            # A task group, not a bare gather: a part that fails stops the others and is
            # awaited, so nothing is left running or unretrieved when the process ends.
            async with asyncio.TaskGroup() as parts:
                parts.create_task(platform.worker().run(stop))
                parts.create_task(platform.run_event_consumers(stop))
                parts.create_task(platform.follow_weights(stop))
                parts.create_task(platform.keep_budget_holds(stop))
        finally:
            await platform.close()
    finally:
        await metrics.close()


@commands.command()
def learner(
    replay: Annotated[
        bool, typer.Option(help="Forget the stored weights and learn the stream again.")
    ] = False,
) -> None:
    """Run the learning consumer: outcomes and feedback into routing weights."""
    from spine.platform.telemetry import setup_tracing, shutdown_tracing

    settings = settings_for_command(role="learner")

    async def go() -> None:
        from spine.platform.app.learner import run_learner

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_learner(settings, stop, replay=replay)

    setup_tracing(settings.otel, role="learner")
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(go())
    finally:
        shutdown_tracing()


@commands.command()
def migrate() -> None:
    """Bring the database schema up to date."""
    settings = settings_for_command()

    async def go() -> None:
        from spine.platform.db import Database

        db = Database(require(settings.database_url, "GENAI_DATABASE_URL"))
        await db.migrate()
        await db.dispose()

    asyncio.run(go())
    console.print("database schema is up to date")


# -- configuration and diagnosis --------------------------------------------------------------


@commands.command()
def config(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the effective configuration (secrets masked) and what ``spine up`` would embed."""
    settings = load_settings()
    rows, embedded = describe_config(settings)
    if as_json:
        console.print_json(json.dumps({"settings": dict(rows), "embedded": embedded}))
        return
    table = Table("variable", "value")
    for name, value in rows:
        add_literal_row(table, name, value)
    console.print(table)
    console.print(
        literal(
            "embedded by `spine up`: " + (", ".join(embedded) if embedded else "nothing (all set)")
        )
    )
    try:
        note = plan_local_model(settings).note
    except ConfigurationError as exc:
        note = exc.message
    if note:
        console.print(Text(note, style="yellow"))


@commands.command()
def doctor() -> None:
    """Check each backing service and the model provider; say what is wrong and how to fix it."""
    from spine.platform.app.doctor import run_checks

    settings = settings_for_command()
    results = asyncio.run(run_checks(settings))
    table = Table("check", "status", "detail")
    for result in results:
        mark = Text("ok", style="green") if result.ok else Text("FAIL", style="red")
        add_literal_row(table, result.name, mark, result.detail)
    console.print(table)
    failed = [r for r in results if not r.ok]
    for result in failed:
        if result.fix:
            console.print(Text.assemble((result.name, "yellow"), f": {result.fix}"))
    raise typer.Exit(1 if failed else 0)
