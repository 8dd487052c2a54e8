"""``/ui/api``: the few reads the console needs that the public ``/v1`` API does not answer.

Everything else the console shows comes from ``/v1`` itself (the pages' JavaScript calls it
with the signed-in key). These are internal to the console (not in ``/openapi.json``), exist
only while it is on, and take the same Bearer key, scoped the same way:

- ``GET /ui/api/session``: who the key is (tenant, role), to check a key at sign-in;
- ``GET /ui/api/graph/schema``: the labels and relationship types the mappings define (the
  graph explorer's filter); shared by every tenant, as the mappings are;
- ``GET /ui/api/mappings?type=...``: what the configured mapping of each event type writes
  (the events view's "mapping" column; the mappings now, not when an event was ingested);
- ``GET /ui/api/graph/nodes/{id}/events``: the events a node and its relationships came from
  (their ``event_id`` and ``source``, looked up in the caller's event log);
- ``GET /ui/api/tasks/{id}/calls``: a task's model calls and their total cost;
- ``GET /ui/api/breakers``: the circuit breaker of each model in *this* API process's router
  (each worker holds breakers of its own, not shown here).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from spine.events.cloudevent import dedupe_id
from spine.events.log import EventEntry
from spine.platform.app.wiring import Platform
from spine.platform.errors import NotFound, Unauthorized
from spine.platform.keys import Principal, Role
from spine.platform.router.health import CallKind
from spine.platform.schema import money_text

__all__ = ["router"]

MAX_NODE_EVENTS = 20
MAX_TASK_CALLS = 500
MAX_MAPPING_TYPES = 50


def _platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


async def _caller(request: Request) -> Principal:
    # As ``spine.platform.app.api.auth`` does; not imported from there, which would make the
    # api and console packages import each other (the API app mounts the console).
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized(
            "missing API key: send 'Authorization: Bearer <key>'", field="Authorization"
        )
    return await _platform(request).keys.verify(presented.strip())


Caller = Annotated[Principal, Depends(_caller)]

router = APIRouter(prefix="/ui/api", include_in_schema=False)


class SessionView(BaseModel):
    """The signed-in key."""

    tenant: str
    role: Role
    key_id: str
    reads_other_tenants: bool


class GraphSchema(BaseModel):
    """What the graph may hold: the labels and relationship types the mappings define."""

    labels: list[str]
    types: list[str]


class NodeEvents(BaseModel):
    """The events a node and its relationships were written from, newest first."""

    node: str
    data: list[EventEntry]
    missing: list[str]


class MappingView(BaseModel):
    """What one event type's mapping writes: node labels and relationship types."""

    labels: list[str]
    types: list[str]


class MappingList(BaseModel):
    """The mapping of each event type asked about (null: the type has none)."""

    data: dict[str, MappingView | None]


class TaskCall(BaseModel):
    """One model call a task made."""

    time: str
    model: str
    provider: str
    outcome: str
    input_tokens: int
    output_tokens: int
    cost: str
    latency_ms: float


class TaskCalls(BaseModel):
    """A task's model calls and what they cost (USD, a decimal string)."""

    task_id: str
    calls: list[TaskCall]
    cost: str
    input_tokens: int
    output_tokens: int


class BreakerView(BaseModel):
    """One model's circuit breaker for one kind of call."""

    model: str
    kind: CallKind
    state: str
    failures: int
    retry_in: float
    latency_ms: float | None


class BreakerList(BaseModel):
    """The breakers of this API process's router."""

    data: list[BreakerView]


@router.get("/session", response_model=SessionView)
async def session(caller: Caller) -> SessionView:
    """Describe the key the console signed in with."""
    return SessionView(
        tenant=caller.tenant,
        role=caller.role,
        key_id=caller.key_id,
        reads_other_tenants=caller.is_operator,
    )


@router.get("/graph/schema", response_model=GraphSchema)
async def graph_schema(request: Request, caller: Caller) -> GraphSchema:
    """List the labels and relationship types the explorer may filter by."""
    allowlist = _platform(request).knowledge.graph().allowlist
    return GraphSchema(labels=sorted(allowlist.labels), types=sorted(allowlist.types))


@router.get("/mappings", response_model=MappingList)
async def mappings(
    request: Request,
    caller: Caller,
    type: Annotated[list[str], Query(max_length=50)],
) -> MappingList:
    """Say what the configured mapping of each event type makes (nothing: no mapping)."""
    configured = _platform(request).knowledge.mappings
    found: dict[str, MappingView | None] = {}
    for name in type[:MAX_MAPPING_TYPES]:
        mapping = configured.get(name)
        found[name] = (
            None
            if mapping is None
            else MappingView(
                labels=sorted({node.label for node in mapping.nodes.values()}),
                types=sorted({rel.type for rel in mapping.relationships}),
            )
        )
    return MappingList(data=found)


@router.get("/graph/nodes/{node_id:path}/events", response_model=NodeEvents)
async def node_events(node_id: str, request: Request, caller: Caller) -> NodeEvents:
    """Return the caller's events that wrote a node or its relationships (any version)."""
    platform = _platform(request)
    view = await platform.knowledge.graph().neighbors(
        node_id, tenant=caller.tenant, depth=1, history=True, limit=MAX_NODE_EVENTS
    )
    written: dict[str, None] = {}
    for item in [n.properties for n in view.nodes if n.id == node_id] + [
        e.properties for e in view.edges
    ]:
        source, event_id = item.get("source"), item.get("event_id")
        if isinstance(source, str) and isinstance(event_id, str):
            written[dedupe_id(caller.tenant, source, event_id)] = None
    found: list[EventEntry] = []
    missing: list[str] = []
    for key in list(written)[:MAX_NODE_EVENTS]:
        try:
            found.append(await platform.knowledge.log.get(key, tenant=caller.tenant))
        except NotFound:
            # Published straight to NATS and aged out of the log, or a log that was reset.
            missing.append(key)
    found.sort(key=lambda e: e.received_at, reverse=True)
    return NodeEvents(node=node_id, data=found, missing=missing)


@router.get("/tasks/{task_id}/calls", response_model=TaskCalls)
async def task_calls(task_id: str, request: Request, caller: Caller) -> TaskCalls:
    """Return a task's model calls (each attempt's) and their sums."""
    platform = _platform(request)
    await platform.tasks.get(task_id, tenant=caller.tenant)  # 404 for another tenant's
    await platform.metered.flush()
    calls, _ = await platform.metered.usage.calls_page(
        tenant=caller.tenant, task_id=task_id, limit=MAX_TASK_CALLS
    )
    total = sum((c.cost for c in calls), Decimal(0))
    return TaskCalls(
        task_id=task_id,
        calls=[
            TaskCall(
                time=c.created_at.isoformat(),
                model=c.model,
                provider=c.provider,
                outcome=c.outcome,
                input_tokens=c.input_tokens,
                output_tokens=c.output_tokens,
                cost=money_text(c.cost),
                latency_ms=c.latency_ms,
            )
            for c in reversed(calls)
        ],
        cost=money_text(total),
        input_tokens=sum(c.input_tokens for c in calls),
        output_tokens=sum(c.output_tokens for c in calls),
    )


@router.get("/breakers", response_model=BreakerList)
async def breakers(request: Request, caller: Caller) -> BreakerList:
    """Return each catalog model's breakers, one per kind of call it serves."""
    router_ = _platform(request).router
    health = router_.health
    chat = {spec.name for spec in router_.catalog.chat_models()}
    embedding = {spec.name for spec in router_.catalog.embedding_models()}
    rows: list[BreakerView] = []
    for name in router_.catalog.names:
        kinds: list[CallKind] = []
        if name in chat:
            kinds.append("chat")
        if name in embedding:
            kinds.append("embedding")
        for kind in kinds:
            breaker = health.breaker(name, kind)
            rows.append(
                BreakerView(
                    model=name,
                    kind=kind,
                    state=str(breaker.state),
                    failures=breaker.failures,
                    retry_in=round(breaker.retry_in(), 1),
                    latency_ms=health.latency_ms(name),
                )
            )
    return BreakerList(data=rows)
