"""A/B tests of routing: arms, a traffic split over a scope, sticky assignment, a report.

An experiment belongs to a tenant and covers its calls in a ``scope``: every call of the tenant
(``tenant``), the calls of one agent's tasks (``agent``), or the gateway's calls (``gateway``).
Each arm routes its calls by a strategy, to one model, or to a weighted list of models. A call
is assigned by a hash of (experiment, tenant, key or task), so one caller stays in one arm.
``stop`` ends the experiment (calls route as before); ``promote`` makes one arm take all of the
scope's traffic from then on. The report reads the usage ledger (cost, latency, errors) and the
quality signals (feedback, task outcomes) of each arm's calls.
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from spine.platform.db import Database
from spine.platform.errors import BadRequest, Conflict, NotFound
from spine.platform.schema import (
    ExperimentRow,
    FeedbackRow,
    ModelCallRow,
    TaskRow,
    utcnow,
)

__all__ = [
    "Arm",
    "ArmReport",
    "Assignment",
    "Experiment",
    "ExperimentBook",
    "ExperimentInput",
    "ExperimentReport",
    "Scope",
]

_EXPERIMENTS: sa.Table = ExperimentRow.__table__  # type: ignore[assignment]
_CALLS: sa.Table = ModelCallRow.__table__  # type: ignore[assignment]
_FEEDBACK: sa.Table = FeedbackRow.__table__  # type: ignore[assignment]
_TASKS: sa.Table = TaskRow.__table__  # type: ignore[assignment]
_SPLIT_TOLERANCE = 1e-6
# The first key of the advisory lock that queues one tenant's experiment creations.
_CREATE_LOCK = 4242003
_Z95 = 1.959963984540054


class Scope(BaseModel):
    """Which calls of the tenant an experiment covers."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["tenant", "agent", "gateway"]
    agent: str | None = Field(None, max_length=100, description="For kind 'agent'.")

    @model_validator(mode="after")
    def _agent_named(self) -> Scope:
        if (self.kind == "agent") != (self.agent is not None):
            raise ValueError("scope.agent is given exactly when scope.kind is 'agent'")
        return self

    def overlaps(self, other: Scope) -> bool:
        """Tell whether a call could be in both scopes (a tenant's scope holds every call)."""
        if "tenant" in (self.kind, other.kind):
            return True
        return self.kind == other.kind and self.agent == other.agent


class WeightedModel(BaseModel):
    """A model of an arm's list and its share of the arm's traffic."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    weight: float = Field(gt=0)


class Arm(BaseModel):
    """One way to route: a strategy, a model, or a weighted list of models (exactly one)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    share: float = Field(ge=0, le=1, description="The arm's share of the scope's traffic.")
    strategy: str | None = Field(None, max_length=64)
    model: str | None = Field(None, max_length=200)
    models: list[WeightedModel] | None = Field(None, min_length=1, max_length=20)

    @model_validator(mode="after")
    def _one_route(self) -> Arm:
        given = [x for x in (self.strategy, self.model, self.models) if x is not None]
        if len(given) != 1:
            raise ValueError(f"arm {self.name!r} gives exactly one of strategy, model, models")
        return self

    def named_models(self) -> list[str]:
        """The models this arm names (none for a strategy arm)."""
        if self.model is not None:
            return [self.model]
        return [m.model for m in self.models or []]


class ExperimentInput(BaseModel):
    """The body of ``POST /v1/experiments``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    scope: Scope
    arms: list[Arm] = Field(min_length=2, max_length=10)

    @field_validator("arms")
    @classmethod
    def _arm_names_differ(cls, arms: list[Arm]) -> list[Arm]:
        names = [arm.name for arm in arms]
        if len(set(names)) != len(names):
            raise ValueError("arm names must differ")
        return arms

    def check_split(self) -> None:
        """Refuse a split that does not sum to 1 (400 naming ``arms``)."""
        total = sum(arm.share for arm in self.arms)
        if abs(total - 1.0) > _SPLIT_TOLERANCE:
            raise BadRequest(f"the arms' shares sum to {total:g}, not 1", field="arms")


class Experiment(BaseModel):
    """A stored experiment."""

    id: str
    tenant: str
    name: str
    scope: Scope
    arms: list[Arm]
    status: Literal["running", "stopped", "promoted"]
    promoted_arm: str | None
    created_at: datetime
    stopped_at: datetime | None

    def covers(self, *, tenant: str, task_category: str | None) -> bool:
        """Tell whether a call of ``tenant`` (of an agent's task, or the gateway's) is in scope."""
        if tenant != self.tenant or self.status == "stopped":
            return False
        if self.scope.kind == "agent":
            return task_category == self.scope.agent
        if self.scope.kind == "gateway":
            return task_category is None
        return True

    def assign(self, *, tenant: str, caller: str) -> Arm:
        """The arm of a caller (a key, or a task): sticky, by a hash of who asks."""
        if self.status == "promoted":
            return next(a for a in self.arms if a.name == self.promoted_arm)
        point = _unit(f"{self.id}|{tenant}|{caller}")
        edge = 0.0
        for arm in self.arms:
            edge += arm.share
            if point < edge:
                return arm
        return self.arms[-1]


@dataclass(slots=True, kw_only=True, frozen=True)
class Assignment:
    """How an experiment routes one call: its arm, and the model or strategy that follows."""

    experiment_id: str
    arm: str
    strategy: str | None
    model: str | None


class ArmReport(BaseModel):
    """One arm's calls and how they went, with 95% confidence intervals of the means."""

    arm: str
    calls: int
    errors: int
    quality_n: int
    quality_mean: float | None
    quality_ci: tuple[float, float] | None
    cost_mean: float | None
    cost_ci: tuple[float, float] | None
    latency_ms_mean: float | None


class ExperimentReport(BaseModel):
    """Per-arm results, and whether the best arm's quality differs significantly."""

    experiment: Experiment
    arms: list[ArmReport]
    best_arm: str | None
    significant: bool
    p_value: float | None


class ExperimentBook:
    """Stores experiments and assigns calls; the running set is re-read every few seconds."""

    def __init__(self, db: Database, *, refresh_seconds: float = 5.0) -> None:
        self._db = db
        self._refresh = refresh_seconds
        self._active: list[Experiment] = []
        self._read_at = -math.inf

    async def create(self, given: ExperimentInput, *, tenant: str, key_id: str) -> Experiment:
        """Store a running experiment (its models are checked by the caller).

        Raises:
            Conflict: A running or promoted experiment of the tenant covers some of the same
                calls (a call gets one arm: the other would silently get no traffic).
        """
        given.check_split()
        row = {
            "id": str(uuid.uuid4()),
            "tenant": tenant,
            "name": given.name,
            "scope": given.scope.model_dump(),
            "arms": [arm.model_dump(exclude_none=True) for arm in given.arms],
            "status": "running",
            "promoted_arm": None,
            "created_by": key_id or None,
            "created_at": utcnow(),
            "stopped_at": None,
        }
        async with self._db.transaction() as conn:
            if not self._db.is_sqlite:
                # A tenant's creations queue here, so each reads the ones committed before it:
                # two overlapping experiments made at once cannot both pass the check.
                await conn.execute(
                    sa.select(sa.func.pg_advisory_xact_lock(_CREATE_LOCK, sa.func.hashtext(tenant)))
                )
            query = (
                sa.select(_EXPERIMENTS)
                .where(_EXPERIMENTS.c.tenant == tenant, _EXPERIMENTS.c.status != "stopped")
                .order_by(_EXPERIMENTS.c.created_at.desc())
            )
            for found in (await conn.execute(query)).mappings():
                other = Experiment.model_validate(dict(found))
                if other.scope.overlaps(given.scope):
                    raise Conflict(
                        f"experiment {other.id} ({other.name!r}, {other.status}) already covers "
                        "calls of this scope; stop it first",
                        field="scope",
                        experiment_id=other.id,
                    )
            await conn.execute(sa.insert(_EXPERIMENTS).values(row))
        self._read_at = -math.inf
        return Experiment.model_validate(row)

    async def get(self, experiment_id: str, *, tenant: str) -> Experiment:
        """Return one of the tenant's experiments."""
        query = sa.select(_EXPERIMENTS).where(
            _EXPERIMENTS.c.id == experiment_id, _EXPERIMENTS.c.tenant == tenant
        )
        async with self._db.transaction() as conn:
            row = (await conn.execute(query)).mappings().one_or_none()
        if row is None:
            raise NotFound(f"no experiment {experiment_id!r}", field="experiment_id")
        return Experiment.model_validate(dict(row))

    async def listing(self, *, tenant: str) -> list[Experiment]:
        """The tenant's experiments, newest first."""
        query = (
            sa.select(_EXPERIMENTS)
            .where(_EXPERIMENTS.c.tenant == tenant)
            .order_by(_EXPERIMENTS.c.created_at.desc())
        )
        async with self._db.transaction() as conn:
            rows = (await conn.execute(query)).mappings()
            return [Experiment.model_validate(dict(r)) for r in rows]

    async def stop(self, experiment_id: str, *, tenant: str) -> Experiment:
        """End a running or promoted experiment; its calls route as they did before it."""
        return await self._end(experiment_id, tenant=tenant, status="stopped", arm=None)

    async def promote(self, experiment_id: str, arm: str, *, tenant: str) -> Experiment:
        """Give one arm all of the scope's traffic from now on."""
        found = await self.get(experiment_id, tenant=tenant)
        if arm not in {a.name for a in found.arms}:
            raise BadRequest(f"experiment {experiment_id} has no arm {arm!r}", field="arm")
        return await self._end(experiment_id, tenant=tenant, status="promoted", arm=arm)

    async def assignment(
        self, *, tenant: str, task_category: str | None, caller: str
    ) -> Assignment | None:
        """The arm that routes a call, if a running (or promoted) experiment covers it."""
        for experiment in await self._running():
            if experiment.covers(tenant=tenant, task_category=task_category):
                arm = experiment.assign(tenant=tenant, caller=caller)
                model = arm.model
                if arm.models:
                    model = _weighted(arm.models, f"{experiment.id}|{arm.name}|{caller}")
                return Assignment(
                    experiment_id=experiment.id, arm=arm.name, strategy=arm.strategy, model=model
                )
        return None

    async def report(self, experiment_id: str, *, tenant: str) -> ExperimentReport:
        """Count, average and compare the arms' calls."""
        experiment = await self.get(experiment_id, tenant=tenant)
        calls = sa.select(
            _CALLS.c.id,
            _CALLS.c.arm,
            _CALLS.c.outcome,
            _CALLS.c.cost,
            _CALLS.c.latency_ms,
            _CALLS.c.task_id,
        ).where(_CALLS.c.experiment_id == experiment_id, _CALLS.c.tenant == tenant)
        feedback = sa.select(_FEEDBACK.c.call_ids, _FEEDBACK.c.score).where(
            _FEEDBACK.c.tenant == tenant
        )
        async with self._db.transaction() as conn:
            rows = list((await conn.execute(calls)).mappings())
            scores: dict[str, list[float]] = {}
            for given in (await conn.execute(feedback)).mappings():
                for call_id in given["call_ids"] or []:
                    scores.setdefault(call_id, []).append(float(given["score"]))
            task_ids = sorted({r["task_id"] for r in rows if r["task_id"]})
            ended: dict[str, str] = {}
            if task_ids:
                states = await conn.execute(
                    sa.select(_TASKS.c.id, _TASKS.c.state).where(_TASKS.c.id.in_(task_ids))
                )
                ended = {str(t.id): str(t.state) for t in states}
        reports = [_arm_report(arm.name, rows, scores, ended) for arm in experiment.arms]
        return _compare(experiment, reports, rows, scores, ended)

    async def _end(
        self, experiment_id: str, *, tenant: str, status: str, arm: str | None
    ) -> Experiment:
        async with self._db.transaction() as conn:
            done = await conn.execute(
                sa.update(_EXPERIMENTS)
                .where(
                    _EXPERIMENTS.c.id == experiment_id,
                    _EXPERIMENTS.c.tenant == tenant,
                    # A promotion can be undone by a stop; it is kept as it was promoted.
                    _EXPERIMENTS.c.status.in_(
                        ["running", "promoted"] if status == "stopped" else ["running"]
                    ),
                )
                .values(status=status, stopped_at=utcnow())
                .values(**({"promoted_arm": arm} if arm is not None else {}))
            )
        if not done.rowcount:
            found = await self.get(experiment_id, tenant=tenant)
            raise Conflict(f"experiment {experiment_id} is {found.status}", state=found.status)
        self._read_at = -math.inf
        return await self.get(experiment_id, tenant=tenant)

    async def _running(self) -> list[Experiment]:
        now = time.monotonic()
        if now - self._read_at >= self._refresh:
            # Oldest first: of experiments created before overlaps were refused, the first wins.
            query = (
                sa.select(_EXPERIMENTS)
                .where(_EXPERIMENTS.c.status != "stopped")
                .order_by(_EXPERIMENTS.c.created_at, _EXPERIMENTS.c.id)
            )
            async with self._db.transaction() as conn:
                rows = (await conn.execute(query)).mappings()
                self._active = [Experiment.model_validate(dict(r)) for r in rows]
            self._read_at = now
        return self._active


def _unit(text: str) -> float:
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _weighted(models: list[WeightedModel], key: str) -> str:
    point = _unit(key) * sum(m.weight for m in models)
    edge = 0.0
    for entry in models:
        edge += entry.weight
        if point < edge:
            return entry.model
    return models[-1].model


def _quality(row: Any, scores: dict[str, list[float]], ended: dict[str, str]) -> float | None:
    """A call's quality: its feedback if any, else its task's end, else nothing."""
    given = scores.get(row["id"])
    if given:
        return sum(given) / len(given)
    state = ended.get(row["task_id"] or "")
    if state in ("succeeded", "failed", "dead_lettered"):
        return 1.0 if state == "succeeded" else 0.0
    return None


def _mean_ci(values: list[float]) -> tuple[float | None, tuple[float, float] | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    half = _Z95 * math.sqrt(variance / len(values))
    return mean, (mean - half, mean + half)


def _arm_report(
    arm: str, rows: list[Any], scores: dict[str, list[float]], ended: dict[str, str]
) -> ArmReport:
    mine = [r for r in rows if r["arm"] == arm]
    qualities = [q for r in mine if (q := _quality(r, scores, ended)) is not None]
    quality_mean, quality_ci = _mean_ci(qualities)
    cost_mean, cost_ci = _mean_ci([float(r["cost"] or 0) for r in mine])
    latencies = [float(r["latency_ms"]) for r in mine]
    return ArmReport(
        arm=arm,
        calls=len(mine),
        errors=sum(1 for r in mine if r["outcome"] != "ok"),
        quality_n=len(qualities),
        quality_mean=quality_mean,
        quality_ci=quality_ci,
        cost_mean=cost_mean,
        cost_ci=cost_ci,
        latency_ms_mean=sum(latencies) / len(latencies) if latencies else None,
    )


def _compare(
    experiment: Experiment,
    reports: list[ArmReport],
    rows: list[Any],
    scores: dict[str, list[float]],
    ended: dict[str, str],
) -> ExperimentReport:
    """Welch's t-test (normal approximation) of quality: the best arm against the runner-up."""
    ranked = sorted(
        (r for r in reports if r.quality_mean is not None and r.quality_n >= 2),
        key=lambda r: r.quality_mean or 0.0,
        reverse=True,
    )
    if len(ranked) < 2:
        return ExperimentReport(
            experiment=experiment,
            arms=reports,
            best_arm=ranked[0].arm if ranked else None,
            significant=False,
            p_value=None,
        )
    best, second = ranked[0], ranked[1]
    samples = {
        arm: [q for r in rows if r["arm"] == arm and (q := _quality(r, scores, ended)) is not None]
        for arm in (best.arm, second.arm)
    }
    p_value = _welch_p(samples[best.arm], samples[second.arm])
    return ExperimentReport(
        experiment=experiment,
        arms=reports,
        best_arm=best.arm,
        significant=p_value < 0.05,
        p_value=p_value,
    )


def _welch_p(a: list[float], b: list[float]) -> float:
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    var_a = sum((x - mean_a) ** 2 for x in a) / (len(a) - 1)
    var_b = sum((x - mean_b) ** 2 for x in b) / (len(b) - 1)
    spread = math.sqrt(var_a / len(a) + var_b / len(b))
    if spread == 0:
        return 0.0 if mean_a != mean_b else 1.0
    z = abs(mean_a - mean_b) / spread
    return math.erfc(z / math.sqrt(2))  # two-sided
