"""Reading a task's progress feed (``GET /v1/tasks/{id}/events``) in tests."""

from __future__ import annotations

import json
from typing import Any

import httpx


async def sse_events(
    client: httpx.AsyncClient, task_id: str, **headers: str
) -> list[dict[str, Any]]:
    """Read the whole feed of a task (it ends with the task); check the ids match the seqs."""
    events = []
    async with client.stream("GET", f"/v1/tasks/{task_id}/events", headers=headers) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        event_id = None
        async for line in resp.aiter_lines():
            if line.startswith("id:"):
                event_id = int(line[3:].strip())
            elif line.startswith("data:"):
                data = json.loads(line[5:].strip())
                assert data["seq"] == event_id
                events.append(data)
    return events
