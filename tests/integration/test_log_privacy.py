"""Logs never hold a user's prompt or a model's completion, even when things fail.

A run with a canary string in every prompt: a task and chat calls that succeed (the fake model
echoes the prompt, so the completion carries the canary too), a provider that fails, and a
database that refuses the write carrying the prompt. The API and the worker run in this process,
so ``caplog`` holds every log line of the run (the platform's, uvicorn's, the libraries'); none
may contain the canary.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from spine.platform.router import BreakerPolicy, ModelHealth
from support.databases import create_database
from support.fake_models import FakeModelServer, Rule
from support.live_platform import RunningPlatform, running_platform

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_jetstream")]

CANARY = f"canary-{uuid.uuid4().hex}"
REFUSE_CANARY = f"""
CREATE FUNCTION refuse_canary() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.input::text LIKE '%{CANARY}-refused%' THEN
        RAISE EXCEPTION 'refused by a test trigger';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_canary BEFORE INSERT ON tasks FOR EACH ROW EXECUTE FUNCTION refuse_canary();
"""


@pytest.fixture
async def spine(services: Any, models: FakeModelServer) -> AsyncIterator[RunningPlatform]:
    database = create_database(services.database_url)
    async with running_platform(services, database, models, workers=1) as running:
        url = make_url(database).set(drivername="postgresql")
        connection = await asyncpg.connect(url.render_as_string(hide_password=False))
        try:
            await connection.execute(REFUSE_CANARY)
        finally:
            await connection.close()
        # Breakers that never stay open: each scripted failure reaches the provider.
        for platform in (running.platform, *running.workers):
            platform.router.health = ModelHealth(policy=BreakerPolicy(cooldown=0))
        yield running


async def test_no_prompt_or_completion_reaches_the_logs(
    spine: RunningPlatform, models: FakeModelServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="spine")
    caplog.set_level(logging.INFO)
    models.add(
        Rule(containing=f"{CANARY}-provider-fails", status=500, name="provider error"),
        Rule(
            containing=f"{CANARY}-provider-refuses",
            status=400,
            error=f"this provider quotes the prompt back: {CANARY}-provider-refuses",
            name="provider error quoting the prompt",
        ),
    )

    # A task and a chat call that succeed: the answer echoes the prompt.
    task = await spine.client.post(
        "/v1/tasks", json={"agent": "chat", "input": {"prompt": f"{CANARY}-task"}}
    )
    assert task.status_code == 202, task.text
    assert (await spine.wait_for(task.json()["id"]))["state"] == "succeeded"
    chat = await spine.client.post(
        "/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": f"{CANARY}-chat"}]},
    )
    assert chat.status_code == 200, chat.text
    assert CANARY in chat.text

    # The provider fails, plainly and quoting the prompt: in a chat call and in a task.
    for ending in ("provider-fails", "provider-refuses"):
        before = len(models.calls(containing=ending))
        prompt = f"{CANARY}-{ending}"
        chat = await spine.client.post(
            "/v1/chat/completions",
            json={"model": "llama3.2", "messages": [{"role": "user", "content": prompt}]},
        )
        assert chat.status_code >= 400, chat.text
        failing = await spine.client.post(
            "/v1/tasks",
            json={"agent": "chat", "input": {"prompt": prompt, "model": "llama3.2"}},
        )
        assert failing.status_code == 202, failing.text
        assert (await spine.wait_for(failing.json()["id"], timeout=30))["state"] in (
            "failed",
            "dead_lettered",
        )
        assert len(models.calls(containing=ending)) >= before + 2  # both reached the provider

    # The database refuses the row that carries the prompt.
    refused = await spine.client.post(
        "/v1/tasks", json={"agent": "chat", "input": {"prompt": f"{CANARY}-refused"}}
    )
    assert refused.status_code == 500, refused.text
    assert CANARY not in refused.text

    logged = [r for r in caplog.records if CANARY in _text(r)]
    assert not logged, "\n".join(f"{r.name}: {_text(r)[:400]}" for r in logged)
    # The failures were logged, only without the user's words.
    assert any("unhandled error on POST /v1/tasks" in r.getMessage() for r in caplog.records)


def _text(record: logging.LogRecord) -> str:
    """The whole line as a handler would write it: message, traceback and stack."""
    text = record.getMessage()
    if record.exc_info:
        text += "\n" + logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        text += "\n" + record.exc_text
    if record.stack_info:
        text += "\n" + record.stack_info
    return text
