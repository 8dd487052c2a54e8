"""What a new user meets in the first hour, piece by piece: ids, input, help, names, times."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest
import typer
from typer.testing import CliRunner

from spine.graph.explore import _shown, _shown_time
from spine.graph.identifiers import Allowlist, UnknownIdentifier
from spine.platform.app.cli import app
from spine.platform.app.cli._http import resolve_id
from spine.platform.app.launcher import server_url
from spine.platform.periodic import unless_stopped
from spine.platform.tasks import TaskSubmission

IDS = [
    "0b5e2c1a-0000-4000-8000-000000000001",
    "0b5e9f00-0000-4000-8000-000000000002",
    "7d41aa00-0000-4000-8000-000000000003",
]


def tasks_api(ids: list[str], page: int = 2) -> httpx.Client:
    """A client of a fake ``/v1/tasks``: 404 for anything but a whole id, pages of ``page``."""

    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/tasks":
            start = int(request.url.params.get("cursor") or 0)
            rows = [{"id": i} for i in ids[start : start + page]]
            more = start + page < len(ids)
            return httpx.Response(
                200, json={"data": rows, "next_cursor": str(start + page) if more else None}
            )
        found = path.rsplit("/", 1)[1]
        if found in ids:
            return httpx.Response(200, json={"id": found})
        return httpx.Response(404, json={"error": {"type": "not_found", "message": "no task"}})

    return httpx.Client(base_url="http://spine", transport=httpx.MockTransport(answer))


def test_a_whole_id_or_a_unique_start_finds_the_task() -> None:
    with tasks_api(IDS) as client:
        assert resolve_id(client, "/v1/tasks", IDS[2], noun="task") == IDS[2]
        assert resolve_id(client, "/v1/tasks", "7d4", noun="task") == IDS[2]
        assert resolve_id(client, "/v1/tasks", "0b5e9", noun="task") == IDS[1]


def test_an_ambiguous_or_unknown_start_is_an_error_naming_the_candidates(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with tasks_api(IDS) as client:
        with pytest.raises(typer.Exit) as ambiguous:
            resolve_id(client, "/v1/tasks", "0b5e", noun="task")
        assert ambiguous.value.exit_code == 1
        said = capsys.readouterr().err
        assert "2 task ids start with '0b5e'" in said
        assert IDS[0] in said and IDS[1] in said
        with pytest.raises(typer.Exit):
            resolve_id(client, "/v1/tasks", "ffff", noun="task")
        assert "no task id is or starts with 'ffff'" in capsys.readouterr().err


def test_a_bare_string_input_is_the_prompt() -> None:
    assert TaskSubmission(agent="chat", input="Say hello").input == {"prompt": "Say hello"}
    assert TaskSubmission(agent="chat", input={"prompt": "x"}).input == {"prompt": "x"}
    with pytest.raises(ValueError, match="input"):
        TaskSubmission(agent="chat", input=["Say hello"])
    schema = TaskSubmission.model_json_schema()["properties"]["input"]
    assert {"type": "string", "minLength": 1} in schema["anyOf"]
    assert '{"prompt": <string>}' in schema["description"]


@pytest.mark.parametrize(
    "args", [["--help"], ["tasks", "--help"], ["events", "--help"], ["up", "--help"]]
)
def test_help_text_has_no_restructured_text(args: list[str]) -> None:
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert "``" not in result.output
    assert not re.search(r":(mod|class|func|data):`", result.output)


def test_the_help_of_spine_down_reads_plainly() -> None:
    result = CliRunner().invoke(app, ["down", "--help"], env={"COLUMNS": "200"})
    assert "Stop the 'spine up' running in this data dir" in result.output


def test_spine_status_shows_urls() -> None:
    assert server_url("nats", "client", 4222) == "nats://127.0.0.1:4222"
    assert server_url("nats", "monitor", 8222) == "monitor http://127.0.0.1:8222"
    assert server_url("postgres", "client", 5432) == "postgresql://127.0.0.1:5432"
    assert server_url("falkordb", "client", 6379) == "redis://127.0.0.1:6379"
    assert server_url("llama", "client", 8080) == "http://127.0.0.1:8080/v1"


def test_an_unknown_label_with_no_mappings_names_the_setting() -> None:
    with pytest.raises(UnknownIdentifier) as empty:
        Allowlist.of([], [], []).label("Person", field="id")
    assert "'Person' is not a known label (known: none)" in empty.value.message
    assert "GENAI_KNOWLEDGE__MAPPINGS_DIR" in empty.value.message
    with pytest.raises(UnknownIdentifier) as known:
        Allowlist.of(["Company"], [], []).label("Person", field="id")
    assert "GENAI_KNOWLEDGE__MAPPINGS_DIR" not in known.value.message


def test_graph_times_are_iso_8601() -> None:
    shown = _shown({"valid_from": 1_796_282_548_123, "valid_to": None, "name": "Ada", "n": 3})
    assert shown == {
        "valid_from": "2026-12-03T07:22:28.123Z",
        "valid_to": None,
        "name": "Ada",
        "n": 3,
    }
    assert _shown_time(10**30) == 10**30  # beyond any date: left as it is
    assert json.dumps(_shown({"event_time": 0})) == '{"event_time": "1970-01-01T00:00:00.000Z"}'


async def test_a_wait_a_stop_comes_before_is_cancelled_and_one_that_ends_gives_its_outcome() -> (
    None
):
    stop = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow_warm_up() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def answer() -> int:
        await asyncio.sleep(0)
        return 7

    async def failure() -> None:
        raise ValueError("no")

    stop.set()
    assert await unless_stopped(slow_warm_up(), stop) is None
    assert cancelled.is_set()
    done = await unless_stopped(answer(), asyncio.Event())
    assert done is not None and done.result() == 7
    failed = await unless_stopped(failure(), asyncio.Event())
    assert failed is not None and isinstance(failed.exception(), ValueError)
