"""The task path's hot statements on PostgreSQL: one statement each, through asyncpg.

Each task runs a handful of writes (submit, claim, a progress event, finish with the usage rows
of its calls, journal steps).
Through SQLAlchemy each cost ~1 ms of CPU to build and execute and two statements plus BEGIN
and COMMIT round trips; here each is one prepared statement that commits on its own: a data-
modifying ``WITH`` updates the task row (numbering its events with ``event_seq``, which takes
the row lock) and inserts the events it numbered, all or nothing. SQLite keeps the portable
SQLAlchemy statements of :mod:`._rows`; both must write the same rows (the task store's tests
run on both databases).

Events travel as one JSON array parameter (``[{"type": ..., "data": ...}, ...]``), expanded by
``jsonb_array_elements`` in order, so a statement's shape does not depend on how many it writes.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from spine.platform.metering.usage import insert_calls_from_json
from spine.platform.tasks.models import TaskEvent

SUBMIT = """
WITH t AS (
  INSERT INTO tasks (id, tenant, key_id, agent, input, metadata, priority, deadline, state,
                     attempts, event_seq, idempotency_key, request_hash, cancel_requested,
                     resumes, created_at, updated_at)
  VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8, 'queued', 0, 1, $9, $10, false, 0,
          $11, $11)
  ON CONFLICT DO NOTHING
  RETURNING id, tenant, event_seq
),
  e AS (
    INSERT INTO task_events (task_id, tenant, seq, type, data, created_at)
    SELECT t.id, t.tenant, t.event_seq - jsonb_array_length($12::jsonb) + x.i,
           x.v->>'type', x.v->'data', $11::timestamptz
    FROM t, jsonb_array_elements($12::jsonb) WITH ORDINALITY AS x(v, i)
  )
SELECT id FROM t"""
"""Insert a queued task and its first event; no row when its idempotency key was used."""

CLAIM = """
WITH t AS (
  UPDATE tasks
  SET state = 'running', attempts = attempts + 1, started_at = coalesce(started_at, $2),
      lease_expires_at = $3, updated_at = $2, event_seq = event_seq + 1
  WHERE id = $1 AND cancel_requested = false AND (deadline IS NULL OR deadline > $2)
    AND (state = 'queued' OR (state = 'running' AND lease_expires_at <= $2))
  RETURNING *
), e AS (
  INSERT INTO task_events (task_id, tenant, seq, type, data, created_at)
  SELECT id, tenant, event_seq, 'state',
         jsonb_build_object('state', 'running', 'attempt', attempts), $2
  FROM t
)
SELECT * FROM t"""
"""Start an attempt of a claimable task and write its ``running`` event; no row otherwise."""

FINISH = f"""
WITH t AS (
  UPDATE tasks
  SET state = $3::varchar, result = $4::jsonb,
      error = CASE WHEN $3::varchar = 'succeeded' THEN NULL ELSE coalesce($5::jsonb, error) END,
      lease_expires_at = NULL, finished_at = CASE WHEN $6 THEN $7 ELSE finished_at END,
      updated_at = $7, event_seq = event_seq + jsonb_array_length($8::jsonb)
  WHERE id = $1 AND attempts = $2 AND state = 'running'
  RETURNING id, tenant, event_seq
),
  e AS (
    INSERT INTO task_events (task_id, tenant, seq, type, data, created_at)
    SELECT t.id, t.tenant, t.event_seq - jsonb_array_length($8::jsonb) + x.i,
           x.v->>'type', x.v->'data', $7::timestamptz
    FROM t, jsonb_array_elements($8::jsonb) WITH ORDINALITY AS x(v, i)
  ),
  u AS ({insert_calls_from_json("$9")})
SELECT tenant, event_seq FROM t"""  # noqa: S608 (constants only: no value is formatted in)
"""End the attempt ``$2`` of a task (fenced) with its last events; no row if it lost the task.
The usage rows of its calls not written yet (``$9``) are inserted whatever the fence says:
the calls were made."""

APPEND = """
WITH t AS (
  UPDATE tasks SET event_seq = event_seq + jsonb_array_length($2::jsonb)
  WHERE id = $1
  RETURNING id, tenant, event_seq
),
  e AS (
    INSERT INTO task_events (task_id, tenant, seq, type, data, created_at)
    SELECT t.id, t.tenant, t.event_seq - jsonb_array_length($2::jsonb) + x.i,
           x.v->>'type', x.v->'data', $3::timestamptz
    FROM t, jsonb_array_elements($2::jsonb) WITH ORDINALITY AS x(v, i)
  )
SELECT tenant, event_seq FROM t"""
"""Store progress events that change no state; no row if the task does not exist."""

RECORD_STEP = """
WITH t AS (
  UPDATE tasks SET event_seq = event_seq + jsonb_array_length($6::jsonb), updated_at = $7
  WHERE id = $1 AND attempts = $2 AND state = 'running'
  RETURNING id, tenant, event_seq
), s AS (
  INSERT INTO task_steps (task_id, key, kind, attempt, data, created_at)
  SELECT t.id, $3::varchar, $4::varchar, $2, $5::jsonb, $7 FROM t
),
  e AS (
    INSERT INTO task_events (task_id, tenant, seq, type, data, created_at)
    SELECT t.id, t.tenant, t.event_seq - jsonb_array_length($6::jsonb) + x.i,
           x.v->>'type', x.v->'data', $7::timestamptz
    FROM t, jsonb_array_elements($6::jsonb) WITH ORDINALITY AS x(v, i)
  )
SELECT tenant, event_seq FROM t"""
"""Journal a step (fenced by the attempt) with its events; a used key is a unique violation."""

GET = "SELECT * FROM tasks WHERE id = $1"

EVENTS = """
SELECT task_id, tenant, seq, type, data, created_at FROM task_events
WHERE task_id = $1 AND seq > $2 AND ($3::varchar IS NULL OR tenant = $3)
ORDER BY seq LIMIT $4"""

MARK_PUBLISHED = """
UPDATE tasks SET published_at = $2
WHERE id = ANY($1::varchar[]) AND published_at IS NULL
  AND (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL"""
"""Record that JetStream acknowledged tasks; its commit does not wait for the WAL's flush (a
mark lost in a crash of PostgreSQL means a harmless re-publish, see :mod:`.outbox`)."""

EXTEND_LEASE = """
UPDATE tasks SET lease_expires_at = $3 WHERE id = $1 AND attempts = $2 AND state = 'running'"""

CANCEL_REQUESTED = "SELECT cancel_requested FROM tasks WHERE id = $1"


def events_param(events: list[tuple[str, dict[str, Any]]]) -> str:
    """Render events for the ``$events`` parameter of a statement."""
    return json.dumps([{"type": type_, "data": data} for type_, data in events])


def numbered(
    task_id: str,
    tenant: str,
    last_seq: int,
    events: list[tuple[str, dict[str, Any]]],
    now: datetime,
) -> list[TaskEvent]:
    """Return the events a statement wrote, numbered as it numbered them."""
    first = last_seq - len(events) + 1
    return [
        TaskEvent(
            task_id=task_id,
            tenant=tenant,
            seq=first + i,
            type=type_,
            data=data,
            created_at=now,
        )
        for i, (type_, data) in enumerate(events)
    ]


def updated(status: str) -> bool:
    """Tell whether an UPDATE's status (``UPDATE 1``) says it changed a row."""
    return not status.endswith(" 0")
