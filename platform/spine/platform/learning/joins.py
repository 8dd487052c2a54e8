"""Joining the learning loop's events into observations of the routing weights.

A model call's outcome brings its latency and cost at once, and the request's features (the
:class:`CallFacts` kept for later). Its quality comes later, joined by call id: a client's
feedback (its score), or a task signal (a task that succeeded scores its calls 1; one that
failed or was dead-lettered, 0; a model answer the run rejected — a final answer that failed its
output schema, tool arguments the registry refused, a call a person refused — scores the task's
latest call 0). The same events in the same order always give the same observations.
"""

from __future__ import annotations

import sys
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from spine.platform.learning.features import SparseFeatures
from spine.platform.learning.weights import Observation

__all__ = ["CallFacts", "CallMemory", "observations_of"]

_SCORE_OF_END = {"succeeded": 1.0, "failed": 0.0, "dead_lettered": 0.0}
_REJECTIONS = frozenset({"schema_failed", "tool_args_rejected", "approval_rejected"})


@dataclass(slots=True, kw_only=True, frozen=True)
class CallFacts:
    """What the learner keeps of a model call to score it later.

    The features are kept packed (the feature space's id, the indices as int32 bytes, the
    values as float64 bytes: exact) and rebuilt when the call is scored: as a
    :class:`SparseFeatures` a call's facts took ~1 KB, and the learner remembers 200,000 calls.
    """

    call_id: str
    model: str
    task_id: str | None
    packed: tuple[str, bytes, bytes] | SparseFeatures | None

    @classmethod
    def of(cls, call_id: str, model: str, task_id: str | None, decision: Any) -> CallFacts:
        """Build the facts from an outcome event's (or a usage row's) fields."""
        raw = decision.get("features") if isinstance(decision, Mapping) else None
        features = SparseFeatures.model_validate(raw) if raw else None
        return cls(call_id=call_id, model=model, task_id=task_id, packed=_packed(features))

    @property
    def features(self) -> SparseFeatures | None:
        """The request's features, None when the outcome carried none."""
        if not isinstance(self.packed, tuple):
            return self.packed
        space, indices, values = self.packed
        return SparseFeatures.model_construct(
            space=space,
            indices=tuple(array("i", indices)),
            values=tuple(array("d", values)),
        )


def _packed(features: SparseFeatures | None) -> tuple[str, bytes, bytes] | SparseFeatures | None:
    if features is None:
        return None
    try:
        indices = array("i", features.indices).tobytes()
    except OverflowError:  # not an index of any feature space: kept as it came
        return features
    return sys.intern(features.space), indices, array("d", features.values).tobytes()


class CallMemory:
    """The facts of recent calls by id, and each task's calls in order; bounded (LRU)."""

    def __init__(self, *, capacity: int = 200_000) -> None:
        self._capacity = capacity
        self._calls: OrderedDict[str, CallFacts] = OrderedDict()
        self._tasks: OrderedDict[str, list[str]] = OrderedDict()

    def remember(self, facts: CallFacts) -> None:
        """Keep a call's facts (and note it among its task's calls)."""
        self._calls[facts.call_id] = facts
        self._calls.move_to_end(facts.call_id)
        if facts.task_id is not None:
            calls = self._tasks.setdefault(facts.task_id, [])
            if facts.call_id not in calls:
                calls.append(facts.call_id)
            self._tasks.move_to_end(facts.task_id)
        while len(self._calls) > self._capacity:
            self._calls.popitem(last=False)
        while len(self._tasks) > self._capacity:
            self._tasks.popitem(last=False)

    def call(self, call_id: str) -> CallFacts | None:
        """A remembered call's facts."""
        return self._calls.get(call_id)

    def task_calls(self, task_id: str) -> list[CallFacts]:
        """A task's remembered calls, oldest first."""
        return [c for i in self._tasks.get(task_id, []) if (c := self._calls.get(i))]

    def knows_task(self, task_id: str) -> bool:
        """Tell whether any call of the task is remembered."""
        return task_id in self._tasks


def observations_of(event: Mapping[str, Any], memory: CallMemory) -> list[Observation]:
    """Turn one event (a parsed ``model.outcome``, ``task.signal`` or ``feedback``) into
    observations, remembering what later events will need."""
    kind = event.get("type")
    if kind == "model.outcome":
        facts = CallFacts.of(
            event["id"], event["model"], event.get("task_id"), event.get("decision")
        )
        memory.remember(facts)
        if event.get("outcome") != "ok" or event.get("cache_hit"):
            return []  # a failure is the breakers' business; a cache hit says nothing new
        return [
            Observation(
                model=facts.model,
                latency_ms=max(0.0, float(event.get("latency_ms") or 0.0)),
                cost=max(0.0, float(event.get("cost") or 0.0)),
            )
        ]
    if kind == "feedback":
        score = float(event["score"])
        return _scored((memory.call(i) for i in event.get("call_ids") or []), score)
    if kind == "task.signal":
        signal = event.get("kind")
        calls = memory.task_calls(str(event.get("task_id")))
        if signal in _SCORE_OF_END:
            return _scored(calls, _SCORE_OF_END[signal])
        if signal in _REJECTIONS and calls:
            return _scored(calls[-1:], 0.0)
    return []


def _scored(calls: Iterable[CallFacts | None], score: float) -> list[Observation]:
    return [
        Observation(model=c.model, features=c.features, quality=score)
        for c in calls
        if c is not None and c.features is not None
    ]
