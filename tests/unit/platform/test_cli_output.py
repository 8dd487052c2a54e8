"""The ``spine`` commands print data as it is, and report unreadable files in one line.

Data is whatever came from a user, an event, a model or the server: Rich markup in it
(``[red]``, ``[/bold]``, ``[link=...]``) or an emoji code must reach the terminal unchanged, and
never stop a command. The API is a fake behind ``httpx.MockTransport``; the commands run in
this process.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from spine.platform.app.cli import _shared, app, client, learning, main
from support.cli import in_process_cli

MARKUP = "see [red]ALERT[/red] [link=https://x]click[/link] :warning:"
CLOSING = "stray [/bold] and [/x]"
TASK_ID = "0b5e2c1a-0000-4000-8000-000000000001"

Answer = Callable[[httpx.Request], httpx.Response]
Routes = dict[str, Any]


def fake_api(routes: Routes) -> Answer:
    """An API answering each path of ``routes`` with its JSON (or its own response), else 404."""

    def answer(request: httpx.Request) -> httpx.Response:
        found = routes.get(request.url.path)
        if isinstance(found, httpx.Response):
            return found
        if found is None:
            error = {"type": "not_found", "message": f"nothing at {request.url.path}"}
            return httpx.Response(404, json={"error": error})
        return httpx.Response(200, json=found)

    return answer


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Routes:
    """The routes of the fake API the client commands talk to; a test fills them in."""
    routes: Routes = {}

    def api_client() -> httpx.Client:
        return httpx.Client(
            base_url="http://spine", transport=httpx.MockTransport(fake_api(routes))
        )

    for module in (client, learning):
        monkeypatch.setattr(module, "api_client", api_client)
    monkeypatch.setenv("COLUMNS", "250")  # a cell never folds what the test looks for
    monkeypatch.setenv("GENAI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(_shared, "configure_logging", lambda level: None)
    return routes


def run(*args: str) -> str:
    """Run ``spine *args`` in this process; return its output, failing on a non-zero exit."""
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def run_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str]:
    """Run the ``spine`` entry point (errors in one line); return its exit code and stderr."""
    monkeypatch.setattr(sys, "argv", ["spine", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    code = exited.value.code
    return code if isinstance(code, int) else 1, capsys.readouterr().err


def flat(text: str) -> str:
    """The output with table borders and line breaks folded to single spaces."""
    return " ".join(text.replace("│", " ").replace("┃", " ").split())


# -- data printed as it is --------------------------------------------------------------------


@pytest.mark.parametrize("value", [MARKUP, CLOSING])
def test_graph_neighbors_prints_properties_and_ids_as_they_are(api: Routes, value: str) -> None:
    api["/v1/graph/nodes/Note:1/neighbors"] = {
        "nodes": [
            {"id": "Note:1", "labels": ["Note"], "properties": {"text": value, "v": [True, None]}},
            {"id": f"Note:{value}", "labels": ["[b]Note[/b]"], "properties": {}},
        ],
        "edges": [
            {
                "source": "Note:1",
                "type": "[i]LINKS[/i]",
                "target": f"Note:{value}",
                "properties": {},
            }
        ],
    }

    out = flat(run("graph", "neighbors", "Note:1"))

    assert flat(json.dumps({"text": value, "v": [True, None]})) in out
    assert f"Note:{value}" in out
    assert "[b]Note[/b]" in out and "[i]LINKS[/i]" in out


def test_graph_query_prints_columns_and_values_as_they_are(api: Routes) -> None:
    api["/v1/graph/query"] = {
        "columns": ["[b]name[/b]", "tags"],
        "rows": [[CLOSING, ["[red]x[/red]", None]]],
        "truncated": False,
    }

    out = flat(run("graph", "query", "MATCH (n) RETURN n"))

    assert "[b]name[/b]" in out
    assert CLOSING in out
    assert '["[red]x[/red]", null]' in out


@pytest.mark.parametrize("value", [MARKUP, CLOSING])
def test_search_prints_passages_as_they_are(api: Routes, value: str) -> None:
    hit = {"score": 0.9, "source": "[link=x]notes[/link]", "document_id": "d", "chunk": 0}
    api["/v1/search"] = {"hits": [hit | {"heading": "[red]Heading[/red]", "text": value}]}

    out = flat(run("search", "alert"))

    assert value in out
    assert "[link=x]notes[/link]#0" in out
    assert "[red]Heading[/red]" in out


def test_the_lists_print_their_rows_as_they_are(api: Routes) -> None:
    api["/v1/tasks"] = {
        "data": [
            {
                "id": TASK_ID,
                "agent": "[red]chat[/red]",
                "state": CLOSING,
                "attempts": 1,
                "created_at": "2026-12-04",
            }
        ]
    }
    api["/v1/events"] = {
        "data": [
            {
                "key": "k" * 64,
                "event_id": "[bold]e1",
                "type": ":warning:",
                "status": "unmapped",
                "reason": CLOSING,
                "received_at": "2026-12-04",
            }
        ]
    }
    api["/v1/documents"] = {
        "data": [
            {
                "id": TASK_ID,
                "status": "embedded",
                "chunk_count": 2,
                "model": "[i]m[/i]",
                "source": MARKUP,
                "created_at": "2026-12-04",
            }
        ]
    }

    tasks = flat(run("tasks", "list"))
    events = flat(run("events", "list"))
    documents = flat(run("docs", "list"))

    assert "[red]chat[/red]" in tasks and CLOSING in tasks
    assert "[bold]e1" in events and ":warning:" in events and CLOSING in events
    assert "[i]m[/i]" in documents and MARKUP in documents


def test_routing_and_experiments_print_their_names_as_they_are(api: Routes) -> None:
    api["/v1/routing/decisions"] = {
        "data": [
            {
                "time": "2026-12-04T09:00:00",
                "strategy": "[b]bandit",
                "model": CLOSING,
                "outcome": "ok",
                "decision": {"explored": True, "weights_version": 3},
                "call_id": "c1",
            }
        ]
    }
    api["/v1/routing/weights"] = {
        "version": "[red]v1[/red]",
        "events": 2,
        "models": [{"model": MARKUP, "observations": 2, "quality": 0.5}],
    }
    arm = {
        "arm": "[/arm]",
        "calls": 1,
        "errors": 0,
        "quality_mean": 0.5,
        "quality_n": 1,
        "quality_ci": None,
        "cost_mean": None,
        "latency_ms_mean": None,
    }
    api["/v1/experiments"] = {
        "data": [
            {
                "id": "x1",
                "name": MARKUP,
                "scope": {"kind": "agent", "agent": "[b]chat"},
                "arms": [{"name": "[/arm]"}],
                "status": "running",
            }
        ]
    }
    api["/v1/experiments/x1"] = {
        "arms": [arm],
        "best_arm": "[/arm]",
        "significant": False,
        "p_value": 0.5,
    }

    decisions = flat(run("routing", "decisions"))
    weights = flat(run("routing", "weights"))
    experiments = flat(run("experiments", "list"))
    shown = flat(run("experiments", "show", "x1"))

    assert "[b]bandit" in decisions and CLOSING in decisions
    assert "weights version [red]v1[/red]" in weights and MARKUP in weights
    assert MARKUP in experiments and "agent:[b]chat" in experiments and "[/arm]" in experiments
    assert "best arm: [/arm]" in shown


def test_submit_follow_prints_the_progress_and_the_answer_as_they_are(api: Routes) -> None:
    stream = "".join(
        f"event: {kind}\ndata: {json.dumps(data)}\n\n"
        for kind, data in [
            ("state", {"seq": 1, "state": "running"}),
            ("model_call", {"seq": 2, "model": "[b]m[/b]", "error": {"message": CLOSING}}),
            ("state", {"seq": 3, "state": "succeeded"}),
        ]
    )
    api["/v1/tasks"] = {"id": TASK_ID, "state": "[i]queued"}
    api[f"/v1/tasks/{TASK_ID}/events"] = httpx.Response(
        200, text=stream, headers={"content-type": "text/event-stream"}
    )
    api[f"/v1/tasks/{TASK_ID}"] = {"id": TASK_ID, "result": {"text": f"Answer: {MARKUP}"}}

    out = run("submit", "hi", "--follow")

    lines = out.splitlines()
    assert lines[0] == f"task {TASK_ID} [i]queued"
    assert "model_call: model=[b]m[/b]" in out
    assert CLOSING in out
    assert lines[-1] == f"Answer: {MARKUP}"


def test_an_api_error_and_a_platform_error_are_printed_as_they_are(
    api: Routes, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    api["/v1/graph/nodes/Note:1/neighbors"] = httpx.Response(
        400, json={"error": {"type": "invalid_request", "message": f"bad id {CLOSING}"}}
    )

    code, err = run_main(monkeypatch, capsys, "graph", "neighbors", "Note:1")
    assert code == 1
    assert f"400 invalid_request: bad id {CLOSING}" in err

    code, err = run_main(monkeypatch, capsys, "graph", "query", "x", "--param", "[/b]")
    assert code == 1
    assert "error: --param '[/b]' must be name=value" in err


def test_budgets_show_prints_the_scope_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spine = in_process_cli(tmp_path, monkeypatch)

    out = flat(spine("budgets", "show", "--key", CLOSING))

    assert f"key:{CLOSING}" in out


def test_config_status_and_doctor_print_paths_and_details_as_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spine.platform.app import doctor

    spine = in_process_cli(tmp_path, monkeypatch)
    data_dir = tmp_path / "[/x]data"
    monkeypatch.setenv("GENAI_DATA_DIR", str(data_dir))

    async def checks(settings: Any) -> list[doctor.CheckResult]:
        return [
            doctor.CheckResult(name="[b]nats", ok=True, detail=CLOSING),
            doctor.CheckResult(name="redis", ok=False, detail=MARKUP, fix="set [i]GENAI_X"),
        ]

    monkeypatch.setattr(doctor, "run_checks", checks)

    assert str(data_dir) in flat(spine("config"))
    assert f"no embedded servers recorded under {data_dir}" in flat(spine("status"))
    checked = CliRunner().invoke(app, ["doctor"], catch_exceptions=False)
    assert checked.exit_code == 1, checked.output
    out = flat(checked.output)
    assert f"[b]nats ok {CLOSING}" in out and f"redis FAIL {MARKUP}" in out
    assert "redis: set [i]GENAI_X" in out


# -- files that cannot be read ----------------------------------------------------------------


@pytest.fixture
def not_utf8(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.json"
    path.write_bytes('{"name": "café"}'.encode("latin-1"))
    return path


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (["publish", "com.example.x", "--data", "@{}"], "--data"),
        (["docs", "add", "{}"], "FILE"),
        (["experiments", "create", "{}"], "SPEC"),
        (["learn", "replay", "{}", "--knob", "0.5"], "FILE"),
    ],
)
def test_a_file_that_is_not_utf8_is_an_error_naming_its_option(
    api: Routes,
    not_utf8: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    option: str,
) -> None:
    code, err = run_main(monkeypatch, capsys, *(a.format(not_utf8) for a in command))

    assert code == 1
    assert err.startswith(f"error: {option}: cannot read {not_utf8} as UTF-8 text:"), err
    assert "can't decode byte 0xe9" in err


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (["publish", "com.example.x", "--data", "@{}"], "--data"),
        (["experiments", "create", "{}"], "SPEC"),
        (["learn", "replay", "{}", "--knob", "0.5"], "FILE"),
    ],
)
def test_a_missing_file_is_an_error_naming_its_option(
    api: Routes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    option: str,
) -> None:
    missing = tmp_path / "[red]missing[/red].json"

    code, err = run_main(monkeypatch, capsys, *(a.format(missing) for a in command))

    assert code == 1
    assert err.startswith(f"error: {option}: cannot read {missing} as UTF-8 text:"), err


def test_an_experiment_spec_that_is_not_json_is_an_error_naming_it(
    api: Routes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text("{name: oops", encoding="utf-8")

    code, err = run_main(monkeypatch, capsys, "experiments", "create", str(spec))

    assert code == 1
    assert err.startswith(f"error: SPEC: {spec} is not JSON:"), err


ADMIN_CLOSING = "stray [/bold] and [/x]"


def test_keys_list_and_audit_print_names_as_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spine = in_process_cli(tmp_path, monkeypatch)
    spine("tenants", "create", "acme")

    created = spine("keys", "create", "--tenant", "acme", "--name", ADMIN_CLOSING)
    listed = spine("keys", "list")
    audited = spine("audit")

    assert "for tenant 'acme'" in created
    assert ADMIN_CLOSING in " ".join(listed.replace("│", " ").split())
    assert "key.create" in audited


# -- the API away -----------------------------------------------------------------------------


def test_submit_follow_resumes_a_dropped_feed_after_the_last_event(
    api: Routes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The feed once ended at its first drop: a 503 while the database was away, a cut stream.
    def frame(kind: str, data: dict[str, Any]) -> str:
        return f"event: {kind}\ndata: {json.dumps(data)}\n\n"

    answers = iter(
        [
            httpx.Response(
                200,
                text=frame("state", {"seq": 1, "state": "running"}),
                headers={"content-type": "text/event-stream"},
            ),
            httpx.Response(503, json={"error": {"type": "service_unavailable", "message": "x"}}),
            httpx.Response(
                200,
                text=frame("state", {"seq": 2, "state": "succeeded"}),
                headers={"content-type": "text/event-stream"},
            ),
        ]
    )
    asked: list[str] = []

    def feed(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params.get("after", ""))
        return next(answers)

    monkeypatch.setattr("time.sleep", lambda seconds: None)
    api["/v1/tasks"] = {"id": TASK_ID, "state": "queued"}
    api[f"/v1/tasks/{TASK_ID}"] = {"id": TASK_ID, "result": {"text": "done"}}
    routes_answer = fake_api(api)
    monkeypatch.setattr(
        client,
        "api_client",
        lambda: httpx.Client(
            base_url="http://spine",
            transport=httpx.MockTransport(
                lambda r: feed(r) if r.url.path.endswith("/events") else routes_answer(r)
            ),
        ),
    )

    out = run("submit", "hi", "--follow")

    assert asked == ["", "1", "1"]
    assert "the live feed dropped (the API answered 503)" in out
    assert out.splitlines()[-1] == "done"


def test_an_api_that_cannot_be_reached_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("GENAI_API_URL", "http://127.0.0.1:9")  # nothing listens on discard
    monkeypatch.setenv("GENAI_API_KEY", "spn_test")
    monkeypatch.setenv("GENAI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(_shared, "configure_logging", lambda level: None)

    code, err = run_main(monkeypatch, capsys, "tasks", "list")

    assert code == 1
    assert "cannot reach the API at http://127.0.0.1:9/" in err and "spine up" in err
    assert "Traceback" not in err


def test_an_empty_id_is_an_error_saying_what_to_give(
    api: Routes, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_main(monkeypatch, capsys, "tasks", "show", "")
    assert code == 1
    assert "give a task id" in err and "Traceback" not in err


def test_at_80_columns_key_ids_actions_and_states_are_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `keys list` showed "7f97c5…", which `keys limits` then refused; audit showed "experi…".
    spine = in_process_cli(tmp_path, monkeypatch)
    monkeypatch.setenv("COLUMNS", "80")
    spine("tenants", "create", "acme")
    created = spine("keys", "create", "--tenant", "acme", "--name", "a rather long key name")
    key_id = created.split("key id ", 1)[1].split()[0]
    spine("keys", "revoke", key_id)
    assert key_id in spine("keys", "list")
    audit = spine("audit", "--tenant", "acme")
    assert "tenant.create" in audit and "key.revoke" in audit
