"""``spine learn``: offline proofs of the learning loop on recorded outcomes."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from spine.platform.app.cli._shared import err_console, read_text, settings_for_command
from spine.platform.errors import ConfigurationError

__all__ = ["learn_app"]

learn_app = typer.Typer(help="Learn offline from recorded outcomes.", no_args_is_help=True)


@learn_app.command("replay")
def replay(
    recording: Annotated[
        Path, typer.Argument(metavar="FILE", help="JSON Lines, one prompt a line.")
    ],
    models: Annotated[
        str | None,
        typer.Option(
            help="Models to route among (default: the first record's; every record must have them)."
        ),
    ] = None,
    knob: Annotated[float | None, typer.Option(help="One cost weight (0..1).")] = None,
    sweep: Annotated[
        bool, typer.Option("--sweep", help="Every knob of the standard sweep.")
    ] = False,
    no_category: Annotated[
        bool, typer.Option("--no-category", help="Ignore the records' categories.")
    ] = False,
    models_file: Annotated[
        Path | None, typer.Option(help="A models file whose prices to use.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the exploration draws.")] = 0,
    parallel: Annotated[
        int, typer.Option(min=1, help="Knobs replayed side by side in each process.")
    ] = 21,
    processes: Annotated[
        int,
        typer.Option(
            min=1,
            help="Processes the knobs are dealt to (default: one per CPU; each is CPU bound).",
        ),
    ] = max(1, os.cpu_count() or 1),
    lag: Annotated[
        int,
        typer.Option(
            min=0, help="Prompts whose outcomes may still be in flight at a decision (0: none)."
        ),
    ] = 0,
) -> None:
    """Replay a recording through the learner online (bandit feedback) and print the curve.

    Prints one JSON object: prompts, one point per knob (accuracy, share of calls to the most
    accurate model, mean cost, calls per model), cpt95 and each model's accuracy alone.
    """
    from spine.platform.app.replay import listed_price, prices_of
    from spine.platform.app.replay import replay as run_replay
    from spine.platform.learning.replay import SWEEP_KNOBS, read_records
    from spine.platform.router.catalog import load_models_file

    if (knob is None) == (not sweep):
        raise ConfigurationError("give --knob V or --sweep", field="--knob")
    # A running stack's NATS is reached as its ``replay`` user: the run's own stream and
    # subjects, none of the platform's work, events or outcomes.
    settings = settings_for_command(role="replay")
    wanted = [m.strip() for m in models.split(",") if m.strip()] if models else None
    lines = read_text(recording, option="FILE").splitlines()
    records = read_records(lines, models=wanted, use_category=not no_category)
    catalog: dict[str, float] = {}
    if models_file is not None:
        for spec in load_models_file(models_file):
            if spec.input_price is not None and spec.output_price is not None:
                catalog[spec.name] = float(spec.input_price + spec.output_price) * 500
    knobs = list(SWEEP_KNOBS) if sweep else [float(knob or 0.0)]
    prices, notes = prices_of(records, catalog, known=listed_price)
    for note in notes:
        err_console.print(Text(note, style="yellow"))
    report = asyncio.run(
        run_replay(
            records,
            prices,
            knobs,
            settings=settings,
            seed=seed,
            parallel=parallel,
            processes=processes,
            lag=lag,
        )
    )
    print(report.model_dump_json())  # one JSON object, nothing else on stdout
