"""The learning loop from the command line (over the HTTP API): feedback, the router's
decisions and weights, experiments, and the platform's event contracts (AsyncAPI)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from spine.platform.app.cli._http import api_client, json_or_exit, resolve_id
from spine.platform.app.cli._shared import add_literal_row, console, literal, read_text
from spine.platform.errors import ConfigurationError

__all__ = ["commands", "experiments_app", "routing_app"]

commands = typer.Typer()
routing_app = typer.Typer(
    help="See how the router decides and what it learned.", no_args_is_help=True
)
experiments_app = typer.Typer(help="A/B tests of routing.", no_args_is_help=True)


@commands.command()
def feedback(
    score: Annotated[float, typer.Argument(help="0 (useless) to 1 (exactly right).")],
    call: Annotated[str | None, typer.Option(help="A model call's id.")] = None,
    task: Annotated[str | None, typer.Option(help="A task's id (rates its model calls).")] = None,
    completion: Annotated[
        str | None, typer.Option(help="A gateway answer's id (chatcmpl-...).")
    ] = None,
    label: Annotated[str | None, typer.Option(help="A short label, e.g. 'wrong'.")] = None,
    comment: Annotated[str | None, typer.Option(help="Free text.")] = None,
) -> None:
    """Rate a model call, a task or a completion; the learner takes it into account."""
    target = {
        name: value
        for name, value in (("call_id", call), ("task_id", task), ("completion_id", completion))
        if value
    }
    if len(target) != 1:
        raise ConfigurationError("give exactly one of --call, --task, --completion", field="target")
    body: dict[str, Any] = {"target": target, "score": score, "label": label, "comment": comment}
    with api_client() as client:
        given = json_or_exit(client.post("/v1/feedback", json=body))
    console.print(literal(f"feedback {given['id']} on {len(given['call_ids'])} call(s)"))


@commands.command()
def asyncapi() -> None:
    """Print the AsyncAPI document of the platform's NATS subjects (its event contracts)."""
    from spine.events.contracts import asyncapi_document

    console.print_json(json.dumps(asyncapi_document()))


@routing_app.command("decisions")
def routing_decisions(
    model: Annotated[str | None, typer.Option()] = None,
    strategy: Annotated[str | None, typer.Option()] = None,
    task: Annotated[str | None, typer.Option(help="A task's id.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
) -> None:
    """List recent routing decisions: the strategy, the chosen model, whether it explored."""
    params = {"model": model, "strategy": strategy, "task_id": task, "limit": limit}
    with api_client() as client:
        page = json_or_exit(
            client.get(
                "/v1/routing/decisions", params={k: v for k, v in params.items() if v is not None}
            )
        )
    table = Table("time", "strategy", "model", "outcome", "explored", "weights", "call id")
    for item in page["data"]:
        decision = item["decision"] or {}
        add_literal_row(
            table,
            item["time"][:19],
            item["strategy"] or "",
            item["model"],
            item["outcome"],
            "yes" if decision.get("explored") else "",
            decision.get("weights_version", ""),
            item["call_id"],
        )
    console.print(table)


@routing_app.command("weights")
def routing_weights(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show the current learned estimates per model, with counts and uncertainty."""
    with api_client() as client:
        weights = json_or_exit(client.get("/v1/routing/weights"))
    if as_json:
        console.print_json(json.dumps(weights))
        return
    console.print(
        literal(f"weights version {weights.get('version')} from {weights.get('events', 0)} events")
    )
    table = Table("model", "observations", "quality", "± (sd)", "latency ms", "cost")
    for row in weights.get("models", []):
        add_literal_row(
            table,
            row["model"],
            row.get("observations", 0),
            _number(row.get("quality")),
            _number(row.get("quality_sd")),
            _number(row.get("latency_ms")),
            _number(row.get("cost")),
        )
    console.print(table)


@experiments_app.command("create")
def experiments_create(
    spec: Annotated[Path, typer.Argument(help="A JSON file: {name, scope, arms}.")],
) -> None:
    """Start an experiment described by a JSON file (see POST /v1/experiments)."""
    try:
        body = json.loads(read_text(spec, option="SPEC"))
    except ValueError as exc:
        raise ConfigurationError(f"SPEC: {spec} is not JSON: {exc}", field="SPEC") from None
    with api_client() as client:
        created = json_or_exit(client.post("/v1/experiments", json=body))
    console.print(literal(f"experiment {created['id']} running"))


@experiments_app.command("list")
def experiments_list() -> None:
    """List the tenant's experiments."""
    with api_client() as client:
        listing = json_or_exit(client.get("/v1/experiments"))
    table = Table(Column("id", no_wrap=True), "name", "scope", "arms", "status")
    for item in listing["data"]:
        scope = item["scope"]["kind"] + (
            f":{item['scope']['agent']}" if item["scope"].get("agent") else ""
        )
        add_literal_row(
            table,
            item["id"],
            item["name"],
            scope,
            ", ".join(a["name"] for a in item["arms"]),
            item["status"],
        )
    console.print(table)


@experiments_app.command("show")
def experiments_show(experiment_id: str) -> None:
    """Show per-arm results: calls, quality with its 95% interval, cost, latency."""
    with api_client() as client:
        experiment_id = resolve_id(client, "/v1/experiments", experiment_id, noun="experiment")
        report = json_or_exit(client.get(f"/v1/experiments/{experiment_id}"))
    table = Table("arm", "calls", "errors", "quality (n)", "95% interval", "cost", "latency ms")
    for arm in report["arms"]:
        interval = arm["quality_ci"]
        add_literal_row(
            table,
            arm["arm"],
            arm["calls"],
            arm["errors"],
            f"{_number(arm['quality_mean'])} ({arm['quality_n']})",
            f"{_number(interval[0])}..{_number(interval[1])}" if interval else "",
            _number(arm["cost_mean"]),
            _number(arm["latency_ms_mean"]),
        )
    console.print(table)
    verdict = "significant" if report["significant"] else "not significant"
    console.print(
        literal(f"best arm: {report['best_arm']} ({verdict}, p={_number(report['p_value'])})")
    )


@experiments_app.command("stop")
def experiments_stop(experiment_id: str) -> None:
    """End an experiment; calls route as before it."""
    with api_client() as client:
        experiment_id = resolve_id(client, "/v1/experiments", experiment_id, noun="experiment")
        json_or_exit(client.post(f"/v1/experiments/{experiment_id}/stop"))
    console.print(literal(f"experiment {experiment_id} stopped"))


@experiments_app.command("promote")
def experiments_promote(experiment_id: str, arm: str) -> None:
    """Give one arm all of the experiment's traffic from now on."""
    with api_client() as client:
        experiment_id = resolve_id(client, "/v1/experiments", experiment_id, noun="experiment")
        json_or_exit(client.post(f"/v1/experiments/{experiment_id}/promote", json={"arm": arm}))
    console.print(literal(f"arm {arm} of experiment {experiment_id} promoted"))


def _number(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
