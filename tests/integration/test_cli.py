"""The real ``spine`` command, run as a subprocess against the test servers.

Each call pays the CLI's imports, so the tests are few and run independent calls concurrently.
The API the CLI talks to runs in the test's event loop, so subprocesses are awaited, never
waited for with a blocking call.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from support.cli import cli_env, service_env, spine
from support.fake_models import FakeModelServer, Rule
from support.live_platform import running_platform

pytestmark = pytest.mark.integration

KEY = re.compile(r"\bspn_[0-9a-f]{12}_[A-Za-z0-9_-]{40,}")


def row(output: str, name: str) -> str:
    """Return the table line that starts with ``name``."""
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if cells and cells[0] == name:
            return line
    raise AssertionError(f"no row {name!r} in:\n{output}")


# -- configuration ----------------------------------------------------------------------------


async def test_config_masks_secrets_and_lists_embedded_services_or_names_a_bad_value(
    tmp_path: Path,
) -> None:
    shown, as_json, invalid = await asyncio.gather(
        spine(
            "config",
            env=cli_env(
                GENAI_OPENAI_API_KEY="sk-something-secret",
                GENAI_NEO4J_PASSWORD="graph-secret",
                GENAI_DATABASE_URL="postgresql://spine:hunter2@127.0.0.1:5432/spine",
                GENAI_NATS_URL="nats://127.0.0.1:4222",
            ),
            cwd=tmp_path,
        ),
        spine(
            "config",
            "--json",
            env=cli_env(GENAI_OPENAI_API_KEY="sk-something-secret"),
            cwd=tmp_path,
        ),
        spine(
            "config",
            env=cli_env(GENAI_API__PORT="notaport", GENAI_OPENAI_API_KEY="sk-something-secret"),
            cwd=tmp_path,
        ),
    )

    assert shown.code == 0, shown.both
    for secret in ("sk-something-secret", "graph-secret", "hunter2"):
        assert secret not in shown.both
    assert "********" in row(shown.out, "GENAI_OPENAI_API_KEY")
    assert "********" in row(shown.out, "GENAI_NEO4J_PASSWORD")
    assert "postgresql://spine:***@127.0.0.1:5432/spine" in row(shown.out, "GENAI_DATABASE_URL")
    assert "(unset)" in row(shown.out, "GENAI_ANTHROPIC_API_KEY")
    assert "8100" in row(shown.out, "GENAI_API__PORT")
    assert "embedded by `spine up`: graph, redis" in shown.out

    assert as_json.code == 0, as_json.both
    data = json.loads(as_json.out)
    assert data["settings"]["GENAI_OPENAI_API_KEY"] == "********"
    assert data["embedded"] == ["nats", "postgres", "graph", "redis"]
    assert "sk-something-secret" not in as_json.both

    assert invalid.code == 1, invalid.both
    assert "GENAI_API__PORT" in invalid.err
    assert "notaport" in invalid.err
    assert "Traceback" not in invalid.both
    assert "sk-something-secret" not in invalid.both


# -- keys -------------------------------------------------------------------------------------


async def test_keys_create_list_and_revoke_against_a_running_api(
    services: Any, pg_url: str, models: FakeModelServer, tmp_path: Path
) -> None:
    env = service_env(services, pg_url)
    created = await spine(
        "keys", "create", "--tenant", "cli-tenant", "--name", "laptop", env=env, cwd=tmp_path
    )
    assert created.code == 0, created.both
    keys = KEY.findall(created.out)
    assert len(keys) == 1, created.out
    key = keys[0]
    key_id = key.split("_")[1]
    assert f"key id {key_id}" in created.out

    async with running_platform(services, pg_url, models, workers=0) as running:
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=running.url, headers=headers) as client:
            submitted = await client.post(
                "/v1/tasks", json={"agent": "chat", "input": {"prompt": "from the cli key"}}
            )
            assert submitted.status_code == 202, submitted.text
            assert submitted.json()["tenant"] == "cli-tenant"

            listed, all_keys = await asyncio.gather(
                spine("keys", "list", "--tenant", "cli-tenant", env=env, cwd=tmp_path),
                spine("keys", "list", env=env, cwd=tmp_path),
            )
            assert listed.code == 0, listed.both
            line = row(listed.out, key_id)
            assert "cli-tenant" in line
            assert "laptop" in line
            assert "member" in line
            assert key.split("_", 2)[2] not in listed.both
            assert running.tenant in all_keys.out  # the fixture's key of tenant "acme"
            assert running.tenant not in listed.out

            revoked = await spine("keys", "revoke", key_id, env=env, cwd=tmp_path)
            assert revoked.code == 0, revoked.both
            assert f"revoked {key_id}" in revoked.out
            refused = await client.get("/v1/tasks")
            assert refused.status_code == 401

        after, unknown, rejected = await asyncio.gather(
            spine("keys", "list", "--tenant", "cli-tenant", env=env, cwd=tmp_path),
            spine("keys", "revoke", "nosuchkey", env=env, cwd=tmp_path),
            spine(
                "submit",
                "hello",
                env=cli_env(GENAI_API_URL=running.url, GENAI_API_KEY=key),
                cwd=tmp_path,
            ),
        )
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row(after.out, key_id).split("laptop")[1])
    assert unknown.code == 1
    assert "no key 'nosuchkey'" in unknown.err
    assert rejected.code == 1
    assert "401 unauthorized" in rejected.err


# -- doctor -----------------------------------------------------------------------------------


async def test_doctor_reports_each_service_and_names_what_is_missing(
    services: Any, models: FakeModelServer, tmp_path: Path
) -> None:
    healthy = await spine(
        "doctor",
        env=service_env(services, services.database_url, GENAI_OLLAMA_URL=models.url),
        cwd=tmp_path,
    )
    no_model = await spine("doctor", env=service_env(services, services.database_url), cwd=tmp_path)

    assert healthy.code == 0, healthy.both
    for check in ("database", "nats", "graph", "redis", "model provider"):
        assert " ok " in row(healthy.out, check), healthy.out
    assert "FAIL" not in healthy.out
    assert "llama3.2" in row(healthy.out, "model provider")
    graph_password = urlsplit(services.falkordb_url or "").password
    assert not graph_password or graph_password not in healthy.both

    assert no_model.code == 1, no_model.both
    assert "FAIL" in row(no_model.out, "model provider")
    assert "GENAI_OLLAMA_URL" in no_model.out
    for check in ("database", "nats", "graph", "redis"):
        assert " ok " in row(no_model.out, check), no_model.out


# -- tasks over the API -----------------------------------------------------------------------


@pytest.mark.usefixtures("clean_jetstream")
async def test_submit_follow_prints_progress_and_the_answer(
    services: Any, pg_url: str, models: FakeModelServer, tmp_path: Path
) -> None:
    models.add(Rule(containing="hi", reply="Hello from the fake model."))
    async with running_platform(services, pg_url, models) as running:
        result = await spine(
            "submit",
            "hi",
            "--follow",
            env=cli_env(GENAI_API_URL=running.url, GENAI_API_KEY=running.key),
            cwd=tmp_path,
        )
    assert result.code == 0, result.both
    lines = result.out.splitlines()
    assert re.match(r"task [0-9a-f-]{36} queued", lines[0]), result.out
    progress = [line.split() for line in lines if re.match(r"\s+\d+ \w+:", line)]
    assert [p[0] for p in progress] == [str(i) for i in range(1, len(progress) + 1)]
    states = [p[2] for p in progress if p[1] == "state:"]
    assert states == ["queued", "running", "succeeded"]
    assert any(p[1] == "model_call:" for p in progress)
    assert lines[-1].strip() == "Hello from the fake model."
    assert models.count(containing="hi") == 1
