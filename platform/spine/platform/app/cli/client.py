"""Commands that talk to a running platform over its HTTP API: tasks, events, the graph,
documents and search."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Column, Table
from rich.text import Text

from spine.platform.app.cli._http import api_client, json_or_exit, resolve_id
from spine.platform.app.cli._shared import add_literal_row, console, literal, read_text
from spine.platform.errors import ConfigurationError

if TYPE_CHECKING:
    import httpx  # imported by _http when a command talks to the API

__all__ = ["commands", "docs_app", "events_app", "graph_app", "tasks_app"]

commands = typer.Typer()
tasks_app = typer.Typer(help="Inspect tasks, and decide on paused ones.", no_args_is_help=True)
graph_app = typer.Typer(help="Explore the knowledge graph.", no_args_is_help=True)
events_app = typer.Typer(
    help="List received events, and map unmapped ones again.", no_args_is_help=True
)
docs_app = typer.Typer(
    help="Add, list, show and delete searchable documents.", no_args_is_help=True
)

# -- tasks over the HTTP API ------------------------------------------------------------------


@commands.command()
def submit(
    prompt: str,
    agent: Annotated[str, typer.Option(help="The agent to run.")] = "chat",
    follow: Annotated[bool, typer.Option(help="Show live progress until the task ends.")] = False,
    priority: Annotated[str, typer.Option(help="high, normal or low.")] = "normal",
) -> None:
    """Submit a task over the HTTP API."""
    with api_client() as client:
        response = client.post(
            "/v1/tasks", json={"agent": agent, "input": {"prompt": prompt}, "priority": priority}
        )
        task = json_or_exit(response)
        console.print(Text.assemble("task ", (str(task["id"]), "bold"), f" {task['state']}"))
        if follow:
            _follow(client, task["id"])


def _follow(client: httpx.Client, task_id: str) -> None:
    """Print the task's events until its final one, then its answer.

    A feed that drops (the API restarted, a backing service went away) is resumed after the
    last event seen, waiting 1 s doubling to 30 s between tries: the task goes on meanwhile.
    """
    import httpx
    from httpx_sse import connect_sse

    from spine.platform.tasks.models import TERMINAL_STATES

    final: dict[str, Any] = {}
    seen, wait = 0, 1.0
    with console.status("waiting for a worker..."):
        while final.get("state") not in TERMINAL_STATES:
            try:
                with connect_sse(
                    client,
                    "GET",
                    f"/v1/tasks/{task_id}/events",
                    params={"after": seen} if seen else None,
                    timeout=None,
                ) as source:
                    if source.response.status_code in (400, 401, 403, 404):
                        source.response.read()
                        json_or_exit(source.response)
                    if source.response.is_error:
                        source.response.read()
                        raise _FeedDropped(f"the API answered {source.response.status_code}")
                    for sse in source.iter_sse():
                        if not sse.data:
                            # The API's keep-alive ping (a comment line every 15 s while a task
                            # is quiet): httpx-sse hands it on as an empty event.
                            continue
                        data = json.loads(sse.data)
                        _print_event(sse.event, data)
                        seen, wait = data["seq"], 1.0
                        final = data
                        if final.get("state") in TERMINAL_STATES:
                            break
            except (httpx.TransportError, _FeedDropped) as exc:
                console.print(
                    literal(f"      the live feed dropped ({exc}); resuming in {wait:g} s"),
                    style="dim",
                )
                time.sleep(wait)
                wait = min(wait * 2, 30.0)
    task = json_or_exit(client.get(f"/v1/tasks/{task_id}"))
    if task.get("result"):
        answer = task["result"].get("text", task["result"])
        # The model's answer as written; a result without text is pretty-printed, also literally.
        console.print(literal(answer) if isinstance(answer, str) else answer)
    raise typer.Exit(0 if final.get("state") == "succeeded" else 1)


class _FeedDropped(Exception):
    """The task's feed answered an error that may pass (a 503 while a service is away)."""


def _print_event(kind: str, data: dict[str, Any]) -> None:
    detail = data.get("state") or ", ".join(
        f"{k}={v}" for k, v in data.items() if k not in {"seq", "type", "at"}
    )
    console.print(Text.assemble("  ", (f"{data['seq']:>3}", "dim"), f" {kind}: {detail}"))
    if data.get("error"):
        console.print(Text.assemble("      ", (str(data["error"].get("message")), "red")))


@tasks_app.command("list")
def tasks_list(
    state: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option()] = 20,
    ids: Annotated[bool, typer.Option("--ids", help="Print only the ids, one a line.")] = False,
) -> None:
    """List your recent tasks, newest first (ids in full: any unique start of one will do)."""
    params: dict[str, Any] = {"limit": limit}
    if state:
        params["state"] = state
    with api_client() as client:
        page = json_or_exit(client.get("/v1/tasks", params=params))
    if ids:
        for task in page["data"]:
            typer.echo(task["id"])
        return
    table = Table(
        _id_column(), "agent", Column("state", no_wrap=True, min_width=16), "attempts", "created"
    )
    for task in page["data"]:
        add_literal_row(
            table, task["id"], task["agent"], task["state"], task["attempts"], task["created_at"]
        )
    console.print(table)


_TASK_ID = Annotated[str, typer.Argument(metavar="ID", help="A task id, or its unique start.")]


def _id_column() -> Column:
    # Ids are copied from here: never shortened, whatever the terminal's width.
    return Column("id", no_wrap=True, min_width=36)


@tasks_app.command("show")
def tasks_show(task_id: _TASK_ID) -> None:
    """Show one task."""
    with api_client() as client:
        task_id = resolve_id(client, "/v1/tasks", task_id, noun="task")
        console.print_json(json.dumps(json_or_exit(client.get(f"/v1/tasks/{task_id}"))))


@tasks_app.command("approve")
def tasks_approve(task_id: _TASK_ID) -> None:
    """Let a paused task make the tool call it proposed."""
    with api_client() as client:
        task_id = resolve_id(client, "/v1/tasks", task_id, noun="task")
        task = json_or_exit(client.post(f"/v1/tasks/{task_id}/approve", json={}))
    console.print(literal(f"task {task['id']} approved; it is {task['state']}"))


@tasks_app.command("reject")
def tasks_reject(
    task_id: _TASK_ID,
    reason: Annotated[str | None, typer.Option(help="Told to the model.")] = None,
) -> None:
    """Refuse a paused task's proposed tool call; the model is told, with the reason."""
    with api_client() as client:
        task_id = resolve_id(client, "/v1/tasks", task_id, noun="task")
        task = json_or_exit(client.post(f"/v1/tasks/{task_id}/reject", json={"reason": reason}))
    console.print(literal(f"task {task['id']} rejected; it is {task['state']}"))


def require(value: str | None, name: str) -> str:
    if value is None:
        raise ConfigurationError(f"{name} is not set; run `spine up` or set it", field=name)
    return value


# -- events and the knowledge graph over the HTTP API -----------------------------------------


@commands.command()
def publish(
    event_type: Annotated[str, typer.Argument(metavar="TYPE", help="The CloudEvents type.")],
    data: Annotated[str, typer.Option(help="JSON data, or @file.json to read it from a file.")],
    source: Annotated[str, typer.Option(help="The CloudEvents source.")] = "/spine/cli",
    event_id: Annotated[
        str | None, typer.Option("--id", help="The event id (default: a new UUID).")
    ] = None,
    subject: Annotated[str | None, typer.Option(help="The CloudEvents subject.")] = None,
) -> None:
    """Publish a CloudEvent (structured mode) to POST /v1/events."""
    import uuid

    text = read_text(data[1:], option="--data") if data.startswith("@") else data
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"--data is not JSON: {exc}", field="--data") from exc
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": source,
        "type": event_type,
        "datacontenttype": "application/json",
        "data": payload,
    }
    if subject:
        event["subject"] = subject
    with api_client() as client:
        answer = json_or_exit(
            client.post(
                "/v1/events",
                content=json.dumps(event),
                headers={"Content-Type": "application/cloudevents+json"},
            )
        )
    for accepted in answer["events"]:
        note = " (duplicate)" if accepted["duplicate"] else ""
        console.print(
            literal(f"event {accepted['event_id']} accepted: key {accepted['key']}{note}")
        )


@events_app.command("list")
def events_list(
    status: Annotated[
        str | None, typer.Option(help="pending, mapped, unmapped or dead_lettered.")
    ] = None,
    event_type: Annotated[str | None, typer.Option("--type", help="Only this type.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 20,
    wide: Annotated[
        bool, typer.Option("--wide", help="Show each whole key, not its start.")
    ] = False,
) -> None:
    """List your received events, newest first, with their status.

    A key is shown by its start, which `spine events show` takes; `--wide` shows it whole.
    """
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    if event_type:
        params["type"] = event_type
    with api_client() as client:
        page = json_or_exit(client.get("/v1/events", params=params))
    console.print(_events_table(page["data"], wide=wide))


_SHORT_KEY = 12
"""Characters of an event's key that ``spine events list`` shows (48 bits of a SHA-256)."""


def _events_table(events: list[dict[str, Any]], *, wide: bool = False) -> Table:
    """Return the table of ``spine events list``: readable on an 80-column terminal.

    The key is shortened to its first :data:`_SHORT_KEY` characters (``wide``: whole, folded
    over lines when the terminal is narrow); the status never wraps, and long values of the
    other columns fold rather than squeeze their neighbours out.
    """
    table = Table(
        Column("key", overflow="fold", no_wrap=not wide),
        Column("event_id", overflow="fold"),
        Column("type", overflow="fold"),
        Column("status", no_wrap=True),
        Column("reason", overflow="fold"),
        Column("received", overflow="fold"),
    )
    for event in events:
        key = str(event["key"])
        add_literal_row(
            table,
            key if wide else key[:_SHORT_KEY],
            event["event_id"],
            event["type"],
            event["status"],
            event["reason"] or "",
            event["received_at"],
        )
    return table


@events_app.command("show")
def events_show(
    key: Annotated[str, typer.Argument(help="The event's key, or its unique start.")],
) -> None:
    """Show one received event: its status and the event as received."""
    with api_client() as client:
        key = resolve_id(client, "/v1/events", key, noun="event", field="key")
        console.print_json(json.dumps(json_or_exit(client.get(f"/v1/events/{key}"))))


@events_app.command("remap")
def events_remap(
    event_type: Annotated[str | None, typer.Option("--type", help="Only this type.")] = None,
) -> None:
    """Send your unmapped events to ingestion again, after adding mappings (triggers stay quiet)."""
    body: dict[str, Any] = {"type": event_type} if event_type else {}
    with api_client() as client:
        answer = json_or_exit(client.post("/v1/events/remap", json=body))
    console.print(literal(f"{answer['remapped']} unmapped event(s) sent to ingestion again"))


@graph_app.command("neighbors")
def graph_neighbors(
    node_id: Annotated[str, typer.Argument(metavar="ID", help="A node id, <Label>:<key>.")],
    depth: Annotated[int, typer.Option(min=1, max=3)] = 1,
    types: Annotated[str | None, typer.Option(help="Relationship types, comma-separated.")] = None,
    direction: Annotated[str, typer.Option(help="out, in or both.")] = "both",
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON graph.")] = False,
) -> None:
    """Show a node's neighbors and the relationships between them."""
    from urllib.parse import quote

    params: dict[str, Any] = {"depth": depth, "direction": direction, "limit": limit}
    if types:
        params["types"] = types
    with api_client() as client:
        view = json_or_exit(
            client.get(f"/v1/graph/nodes/{quote(node_id, safe=':')}/neighbors", params=params)
        )
    if as_json:
        console.print_json(json.dumps(view))
        return
    table = Table("node", "labels", "properties")
    for node in view["nodes"]:
        shown = {k: v for k, v in node["properties"].items() if k not in _PROVENANCE}
        add_literal_row(
            table, node["id"], ",".join(node["labels"]), json.dumps(shown, ensure_ascii=False)
        )
    console.print(table)
    edges = Table("from", "relationship", "to", "valid")
    for edge in view["edges"]:
        props = edge["properties"]
        valid = f"{props.get('valid_from', '')}..{props.get('valid_to') or ''}"
        add_literal_row(edges, edge["source"], edge["type"], edge["target"], valid)
    console.print(edges)


@graph_app.command("query")
def graph_query(
    query: Annotated[str, typer.Argument(help="Read-only Cypher; anchor it on {tenant: $tenant}.")],
    param: Annotated[
        list[str] | None, typer.Option(help="A parameter as name=JSON (repeatable).")
    ] = None,
) -> None:
    """Run a read-only Cypher query (needs an admin key) and print its rows."""
    params: dict[str, Any] = {}
    for item in param or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigurationError(f"--param {item!r} must be name=value", field="--param")
        try:
            params[name] = json.loads(value)
        except ValueError:
            params[name] = value
    with api_client() as client:
        result = json_or_exit(
            client.post("/v1/graph/query", json={"query": query, "params": params})
        )
    # The column names are the query's own aliases: data too.
    columns = [Column(literal(name)) for name in result["columns"]]
    table = Table(*columns) if columns else Table("(no rows)")
    for row in result["rows"]:
        add_literal_row(
            table,
            *(json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v for v in row),
        )
    console.print(table)
    if result["truncated"]:
        console.print("[yellow]more rows than the row cap; the rest were left out[/yellow]")


_PROVENANCE = {"uid", "event_id", "source", "event_time", "valid_from", "valid_to", "superseded_by"}


# -- documents and vector search over the HTTP API --------------------------------------------

_MARKDOWN_SUFFIXES = {".md", ".markdown", ".mdx"}


@docs_app.command("add")
def docs_add(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    meta: Annotated[
        list[str] | None, typer.Option(help="Metadata as name=value, JSON or text (repeatable).")
    ] = None,
    source: Annotated[str | None, typer.Option(help="Where it came from; the file name.")] = None,
    wait: Annotated[bool, typer.Option(help="Wait until it is embedded (or failed).")] = False,
) -> None:
    """Store a text or markdown file as a document; it is embedded in the background."""
    body = {
        "text": read_text(file, option="FILE"),
        "format": "markdown" if file.suffix.lower() in _MARKDOWN_SUFFIXES else "text",
        "metadata": _pairs(meta or [], "--meta"),
        "source": source or file.name,
    }
    with api_client() as client:
        document = json_or_exit(client.post("/v1/documents", json=body))
        console.print(
            Text.assemble(
                "document ",
                (str(document["id"]), "bold"),
                f" {document['status']}: {document['chunk_count']} chunks for {document['model']}",
            )
        )
        if wait:
            document = _wait_for_document(client, document["id"])
            console.print(literal(f"document {document['id']} {document['status']}"))
            if document["status"] != "embedded":
                raise typer.Exit(1)


def _wait_for_document(client: httpx.Client, document_id: str) -> Any:
    import time

    with console.status("embedding..."):
        while True:
            document = json_or_exit(client.get(f"/v1/documents/{document_id}"))
            if document["status"] != "queued":
                return document
            if document.get("error"):
                message = document["error"]["message"]
                console.print(Text.assemble("  ", (f"waiting: {message}", "yellow")))
            time.sleep(1.0)


@docs_app.command("list")
def docs_list(
    status: Annotated[str | None, typer.Option(help="queued, embedded or failed.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
) -> None:
    """List your documents, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    with api_client() as client:
        page = json_or_exit(client.get("/v1/documents", params=params))
    table = Table(_id_column(), "status", "chunks", "model", "source", "created")
    for document in page["data"]:
        add_literal_row(
            table,
            document["id"],
            document["status"],
            document["chunk_count"],
            document["model"] or "",
            document["source"] or "",
            document["created_at"],
        )
    console.print(table)


_DOCUMENT_ID = Annotated[
    str, typer.Argument(metavar="ID", help="A document id, or its unique start.")
]


@docs_app.command("show")
def docs_show(document_id: _DOCUMENT_ID) -> None:
    """Show one document: its status, chunks, model and last error."""
    with api_client() as client:
        document_id = resolve_id(client, "/v1/documents", document_id, noun="document")
        console.print_json(json.dumps(json_or_exit(client.get(f"/v1/documents/{document_id}"))))


@docs_app.command("delete")
def docs_delete(document_id: _DOCUMENT_ID) -> None:
    """Delete a document and its chunks."""
    with api_client() as client:
        document_id = resolve_id(client, "/v1/documents", document_id, noun="document")
        response = client.delete(f"/v1/documents/{document_id}")
        if response.is_error:
            json_or_exit(response)
    console.print(literal(f"deleted {document_id}"))


@commands.command("search")
def search(
    query: str,
    k: Annotated[int, typer.Option(min=1, max=100, help="How many passages.")] = 5,
    where: Annotated[
        list[str] | None,
        typer.Option("--filter", help="Metadata the documents must have, name=value (repeatable)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON answer.")] = False,
) -> None:
    """Find the passages of your documents nearest in meaning to QUERY."""
    body = {"query": query, "k": k, "filter": _pairs(where or [], "--filter")}
    with api_client() as client:
        result = json_or_exit(client.post("/v1/search", json=body))
    if as_json:
        console.print_json(json.dumps(result))
        return
    if not result["hits"]:
        console.print("no passages found")
        return
    table = Table("score", "source", "heading", "text")
    for hit in result["hits"]:
        text = " ".join(hit["text"].split())
        add_literal_row(
            table,
            f"{hit['score']:.3f}",
            f"{hit['source'] or hit['document_id']}#{hit['chunk']}",
            hit["heading"] or "",
            text[:200] + ("..." if len(text) > 200 else ""),
        )
    console.print(table)


def _pairs(items: list[str], option: str) -> dict[str, Any]:
    """Read name=value options; a value that is JSON (a number, true, a list) is taken as such."""
    found: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigurationError(f"{option} {item!r} must be name=value", field=option)
        try:
            found[name] = json.loads(value)
        except ValueError:
            found[name] = value
    return found
