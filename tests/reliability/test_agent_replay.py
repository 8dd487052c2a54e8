"""A worker SIGKILLed in the middle of an agent's loop: the next attempt replays the journal.

The agent's first model answer asks for a tool; the second model call hangs, and the worker
running it is killed then. After redelivery the new attempt must not call the model for step 1
again, nor run the tool again: both come from the step journal.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from spine.platform.schema import TaskStepRow
from support.fake_models import FakeModelServer, ModelRequest, Rule, ToolCall
from support.live_platform import running_platform
from support.reliability import (
    WorkerProcess,
    nats_url_of,
    own_nats,
    running_workers,
    worker_env,
)
from support.task_feed import sse_events

pytestmark = pytest.mark.reliability

AGENT = (
    "name: math\ndescription: arithmetic\ninstructions: You do sums.\n"
    "tools: [calculator]\nmodel: {models: [llama3.2]}\nmax_steps: 4\n"
)


def after_tool(request: ModelRequest) -> bool:
    return request.last_role == "tool"


def first_call(request: ModelRequest) -> bool:
    return request.last_role != "tool"


async def test_a_killed_agent_resumes_from_its_journal_without_repeating_steps(
    services: Any, pg_url: str, tmp_path: Path
) -> None:
    prompt = f"replay me {uuid.uuid4().hex[:8]}"
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "math.yaml").write_text(AGENT)
    with own_nats(tmp_path / "nats") as nats, FakeModelServer(latency=0.02) as models:
        models.add(
            Rule(
                when=first_call,
                containing=prompt,
                tool_calls=[ToolCall(name="calculator", arguments={"expression": "5*7"})],
            )
        )
        models.add(Rule(when=after_tool, containing=prompt, hang=True, times=1))
        models.add(Rule(when=after_tool, containing=prompt, reply="It is 35."))
        nats_url = nats_url_of(nats)
        worker = WorkerProcess(
            "worker",
            worker_env(
                database_url=pg_url,
                nats_url=nats_url,
                ollama_url=models.url,
                data_dir=tmp_path / "data",
                GENAI_AGENTS_DIR=str(agents),
            ),
            tmp_path / "worker",
        )
        async with running_platform(
            services, pg_url, models, workers=0, nats_url=nats_url, agents_dir=agents
        ) as spine:
            with running_workers([worker]):
                await worker.wait_ready()
                response = await spine.client.post(
                    "/v1/tasks", json={"agent": "math", "input": {"prompt": prompt}}
                )
                assert response.status_code == 202, response.text
                task_id = response.json()["id"]

                deadline = time.monotonic() + 30
                while models.count(containing=prompt) < 2:  # step 2's call is hanging now
                    assert time.monotonic() < deadline, worker.log()
                    await asyncio.sleep(0.01)
                # A read-only tool's result is journalled behind, overlapping the next model
                # call; killed before that commit, the tool would rightly run again.
                while not await _journalled_tool(spine.platform.db, task_id):
                    assert time.monotonic() < deadline, worker.log()
                    await asyncio.sleep(0.01)
                worker.kill()
                worker.start()
                done = await spine.wait_for(task_id, timeout=60)
                events = await sse_events(spine.client, task_id)
            async with spine.platform.db.transaction() as conn:
                steps = {
                    row.key: row.attempt
                    for row in await conn.execute(
                        sa.select(TaskStepRow.key, TaskStepRow.attempt).where(
                            TaskStepRow.task_id == task_id
                        )
                    )
                }

    assert done["state"] == "succeeded", (done, worker.full_log()[-3000:])
    assert done["result"]["text"] == "It is 35."
    assert done["attempts"] == 2
    calls = models.calls(containing=prompt)
    # Step 1's model call was made once; step 2's twice (the hung one died with its worker).
    assert sum(1 for c in calls if first_call(c.request)) == 1
    assert sum(1 for c in calls if after_tool(c.request)) == 2
    # The tool ran once: one start event, one journal entry, written by the first attempt.
    assert [e["tool"] for e in events if e["type"] == "tool_call_started"] == ["calculator"]
    tool_keys = [key for key in steps if ".tool." in key]
    assert len(tool_keys) == 1
    assert steps["s1.model"] == 1
    assert steps[tool_keys[0]] == 1
    assert steps["s2.model"] == 2


async def _journalled_tool(db: Any, task_id: str) -> bool:
    async with db.transaction() as conn:
        keys = await conn.scalars(sa.select(TaskStepRow.key).where(TaskStepRow.task_id == task_id))
        return any(".tool." in key for key in keys)
