"""Agent workers: JetStream pull consumers that run tasks at least once, and finish them once.

For each delivered message the worker claims the task in the database (which tells it whether
the task is already finished, held by a live worker, or free), runs the agent while it keeps the
message and the claim alive, commits the outcome, and only then acks. Failures are typed:
retryable ones are nakked with backoff until ``max_attempts``; permanent ones fail the task; both
copy the message and the reason to the dead-letter stream. Nothing is acked before its outcome
is committed, so a worker killed at any point leaves a task that JetStream will redeliver.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.errors import ServiceUnavailableError as JetStreamUnavailable

from spine.agents.base import AwaitingApproval, ModelSource, RunContext, TaskJournal
from spine.agents.catalog import AgentCatalog
from spine.events.bus import NatsBus
from spine.events.outcomes import TaskSignal, TaskSignalKind
from spine.events.streams import DLQ_STREAM, TASKS_STREAM, StreamLayout, consumer_name
from spine.events.subjects import CANCEL_ALL, DLQ_TASKS, LANES
from spine.platform.errors import (
    PermanentFailure,
    ServiceUnavailable,
    SpineError,
    TaskCancelled,
    TransientFailure,
)
from spine.platform.limits import RunningTaskLimits
from spine.platform.logs import current_task
from spine.platform.metering import CallContext
from spine.platform.periodic import unless_stopped
from spine.platform.schema import utcnow
from spine.platform.settings import WorkerSettings
from spine.platform.tasks import StepJournal, Task, TaskError, TaskEvent, TaskStore
from spine.platform.telemetry import (
    annotate,
    record_task_ended,
    record_task_started,
    task_delivered,
)
from spine.tools.registry import ToolRegistry

__all__ = ["TaskWorker", "WorkerStats"]

logger = logging.getLogger(__name__)

_ENDS: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

_FETCH_TIMEOUT = 2.0
_LOGGED_DETAILS = ("provider", "cause", "reason", "attempts")
"""Details of a dead letter's reason that its log line shows: names and counts, no content."""
# While a clustered consumer elects a new leader JetStream answers 503 and an ack finds no
# responder: wait (an unacked message is redelivered, and a finished one skipped), as for a lost link.
_LOST_CONNECTION = (
    ConnectionClosedError,
    JetStreamUnavailable,
    NoRespondersError,
    ServiceUnavailable,
    OSError,
)


@dataclass(slots=True, kw_only=True)
class WorkerStats:
    """Counters a worker keeps for its logs and tests."""

    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    running: set[str] = field(default_factory=set)


class TaskWorker:
    """Runs delivered tasks with bounded concurrency until told to stop."""

    def __init__(
        self,
        *,
        store: TaskStore,
        bus: NatsBus,
        catalog: AgentCatalog,
        models: ModelSource,
        journal: StepJournal,
        tools: ToolRegistry,
        settings: WorkerSettings,
        layout: StreamLayout,
        signals: Callable[[TaskSignal], None] | None = None,
        running: RunningTaskLimits | None = None,
    ) -> None:
        self._store = store
        self._bus = bus
        self._catalog = catalog
        self._models = models
        self._journal = journal
        self._tools = tools
        self._settings = settings
        self._layout = layout
        # Quality signals for the learning loop; published off the task's path.
        self._signals = signals
        # Tasks a tenant may run at once: one over it waits queued (spine.platform.limits).
        self._running = running if running is not None and running.active else None
        self._slots = asyncio.Semaphore(settings.concurrency)
        # Low-priority work (batches) may take at most half the slots, so it never starves
        # interactive tasks.
        self._low_slots = asyncio.Semaphore(max(1, settings.concurrency // 2))
        self._cancel_events: dict[str, asyncio.Event] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self.stats = WorkerStats()
        # The claim is made a moment after JetStream starts its ack_wait clock; a lease a bit
        # shorter than ack_wait has expired when the redelivery of a dead worker's task comes.
        self._lease = settings.ack_wait - min(1.0, settings.ack_wait / 10)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume every lane until ``stop`` is set, then finish the tasks in hand."""
        warmed = await unless_stopped(self._models.warm_up(), stop)
        if warmed is None:
            return  # stopped while warming up: nothing in hand, nothing to wait for
        warmed.result()
        await self._layout.ensure_when_ready(self._bus)
        await self._subscribe_to_cancels()
        lanes = [
            asyncio.create_task(self._consume(lane, stop), name=f"lane-{lane}") for lane in LANES
        ]
        await stop.wait()
        for lane_task in lanes:
            lane_task.cancel()
        await asyncio.gather(*lanes, return_exceptions=True)
        if self._handlers:
            logger.info("finishing %d tasks in hand before stopping", len(self._handlers))
            await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _subscribe_to_cancels(self) -> None:
        # nats-py re-subscribes by itself after a reconnect; only the first subscribe may fail.
        while True:
            try:
                await self._bus.subscribe(CANCEL_ALL, self._on_cancel)
                return
            except ServiceUnavailable:
                await asyncio.sleep(0.5)

    async def _consume(self, lane: str, stop: asyncio.Event) -> None:
        subscription = await self._bind(lane)
        while not stop.is_set():
            await self._acquire(lane)
            try:
                messages = await subscription.fetch(1, timeout=_FETCH_TIMEOUT)
            except NatsTimeout:
                self._release(lane)
                continue
            except _LOST_CONNECTION as exc:
                self._release(lane)
                logger.debug("fetch on lane %s failed: %r", lane, exc)
                await asyncio.sleep(0.5)
                continue
            except BaseException:
                self._release(lane)
                raise
            handler = asyncio.create_task(self._handle_and_release(lane, messages[0]))
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)

    async def _bind(self, lane: str) -> JetStreamContext.PullSubscription:
        while True:
            try:
                js: JetStreamContext = self._bus.js
                return await js.pull_subscribe_bind(
                    durable=consumer_name(lane), stream=TASKS_STREAM
                )
            except (*_LOST_CONNECTION, NatsTimeout) as exc:
                logger.warning("cannot bind lane %s yet (%r); retrying", lane, exc)
                await asyncio.sleep(0.5)

    async def _acquire(self, lane: str) -> None:
        if lane == "low":
            await self._low_slots.acquire()
        await self._slots.acquire()

    def _release(self, lane: str) -> None:
        self._slots.release()
        if lane == "low":
            self._low_slots.release()

    async def _handle_and_release(self, lane: str, msg: Msg) -> None:
        try:
            await self.handle(msg)
        except _LOST_CONNECTION as exc:
            # The message stays unacked; JetStream redelivers it after ack_wait.
            logger.warning("left a task for redelivery: %r", exc)
        except Exception:
            logger.exception("unexpected error handling a task message; it will be redelivered")
        finally:
            self._release(lane)

    async def handle(self, msg: Msg) -> None:
        """Claim, run, record and acknowledge one delivered task message.

        Traced in the trace its publisher started (the ``traceparent`` in its headers).
        """
        with task_delivered(msg.subject, msg.headers):
            await self._handle(msg)

    async def _handle(self, msg: Msg) -> None:
        try:
            task_id = str(json.loads(msg.data)["task_id"])
        except (ValueError, KeyError, TypeError):
            await self._dead_letter_message(
                msg, None, {"type": "malformed_message", "message": "not a task message"}
            )
            return
        try:
            claim = await self._store.claim(task_id, lease=self._lease, running_limit=self._running)
        except ServiceUnavailable:
            await msg.nak(delay=self._settings.delay_before(2))
            return
        if claim.outcome == "missing":
            await self._dead_letter_message(
                msg, task_id, {"type": "unknown_task", "message": "no such task in the database"}
            )
        elif claim.outcome in ("finished", "paused"):
            # Paused: the decision on its approval publishes the task again.
            self.stats.skipped += 1
            await msg.ack_sync()
        elif claim.outcome == "busy":
            await msg.nak(delay=max(claim.retry_in, 0.5))
        elif claim.outcome == "throttled":
            assert self._running is not None
            await msg.nak(delay=self._running.wait_before(msg.metadata.num_delivered))
        else:
            assert claim.task is not None
            await self._attempt(msg, claim.task, claim.attempt)

    async def _attempt(self, msg: Msg, task: Task, attempt: int) -> None:
        # Attempts that ended in a pause for approval are not failures.
        if task.failed_attempts > self._settings.max_attempts:
            await self._give_up(msg, task, attempt, _too_many(task.failed_attempts - 1))
            return
        current_task.set(task.id)
        annotate(
            {
                "spine.task.id": task.id,
                "spine.task.agent": task.agent,
                "spine.task.attempt": attempt,
            }
        )
        cancelled = self._cancel_events.setdefault(task.id, asyncio.Event())
        heartbeat = asyncio.create_task(self._keep_alive(msg, task.id, attempt))
        self.stats.running.add(task.id)
        record_task_started(task.agent)
        started = time.perf_counter()
        ending: list[tuple[str, dict[str, Any]]] = []  # events committed with the end
        try:
            result = await self._run_agent(task, attempt, cancelled, ending)
        except AwaitingApproval as pause:
            events = await self._store.pause(
                task.id, attempt=attempt, until=pause.until, proposal=pause.proposal
            )
            if self._still_owned(task, attempt, events):
                await msg.ack_sync()
        except TaskCancelled:
            await self._finish(
                msg,
                task,
                attempt,
                "cancelled",
                error=TaskError.of(TaskCancelled("the task was cancelled")),
            )
        except SpineError as exc:
            await self._failed(msg, task, attempt, exc)
        except Exception as exc:
            # An unexpected error may pass (or be a poison task): retry, then dead-letter.
            logger.exception("task %s raised unexpectedly", task.id)
            await self._failed(msg, task, attempt, TransientFailure(f"internal error: {exc!r}"))
        else:
            self.stats.succeeded += 1
            await self._finish(msg, task, attempt, "succeeded", result=result, events=ending)
        finally:
            heartbeat.cancel()
            self.stats.running.discard(task.id)
            self._cancel_events.pop(task.id, None)
            record_task_ended(task.agent, time.perf_counter() - started)

    async def _run_agent(
        self,
        task: Task,
        attempt: int,
        cancelled: asyncio.Event,
        ending: list[tuple[str, dict[str, Any]]],
    ) -> dict[str, Any]:
        agent = self._catalog.get(task.agent)
        request = self._catalog.parse_input(task.agent, task.input)

        async def emit(type_: str, data: dict[str, Any]) -> object:
            return await self._store.append_event(task.id, type_, data)

        async def cancel_requested() -> bool:
            return await self._store.cancel_requested(task.id)

        sent: Counter[str] = Counter()

        def signal(kind: TaskSignalKind) -> None:
            # Ids follow the run (attempt, kind, count), so a replayed stream dedupes them.
            sent[kind] += 1
            self._signal(task, kind, f"{task.id}:{attempt}:{kind}:{sent[kind]}")

        ctx = RunContext(
            task=task,
            attempt=attempt,
            models=self._models.for_caller(
                CallContext(
                    tenant=task.tenant,
                    key_id=task.key_id,
                    task_id=task.id,
                    task_category=task.agent,
                )
            ),
            journal=TaskJournal(
                journal=self._journal,
                task_id=task.id,
                attempt=attempt,
            ),
            tools=self._tools,
            emit=emit,
            cancelled=cancelled,
            cancel_requested=cancel_requested,
            signal=signal,
            ending=ending,
        )
        if task.deadline is None:
            return await agent.run(ctx, request)
        remaining = (task.deadline - utcnow()).total_seconds()
        try:
            async with asyncio.timeout(max(remaining, 0.001)):
                return await agent.run(ctx, request)
        except TimeoutError:
            raise PermanentFailure("the task's deadline passed while it ran") from None

    async def _failed(self, msg: Msg, task: Task, attempt: int, exc: SpineError) -> None:
        error = TaskError.of(exc)
        if not exc.retryable:
            self.stats.failed += 1
            await self._publish_dead_letter(msg, task.id, error.stored(), attempt, ending="failed")
            await self._finish(msg, task, attempt, "failed", error=error)
        elif task.failed_attempts >= self._settings.max_attempts:
            await self._give_up(
                msg,
                task,
                attempt,
                TaskError.model_validate(
                    {**error.stored(), "attempts": attempt, "reason": "too many attempts"}
                ),
            )
        else:
            self.stats.retried += 1
            delay = max(self._settings.delay_before(attempt + 1), _asked_wait(exc))
            events = await self._store.finish(
                task.id, attempt=attempt, state="queued", error=error, retry_in=delay
            )
            if self._still_owned(task, attempt, events):
                await msg.nak(delay=delay)

    async def _finish(
        self,
        msg: Msg,
        task: Task,
        attempt: int,
        state: Any,
        *,
        result: dict[str, Any] | None = None,
        error: TaskError | None = None,
        events: list[tuple[str, dict[str, Any]]] | None = None,
    ) -> None:
        # The task's usage rows are written behind; those not written yet are written with
        # its end, in one commit, so whoever sees the task finished also sees what it used.
        usage = await self._models.take_usage(task.id)
        try:
            written = await self._store.finish(
                task.id,
                attempt=attempt,
                state=state,
                result=result,
                error=error,
                events=events or (),
                usage=usage,
            )
        except BaseException:
            self._models.put_back_usage(usage)  # left to the writer behind: lost by no one
            raise
        if self._still_owned(task, attempt, written):
            if state in _ENDS:
                self._signal(task, state, f"{task.id}:end")
            # Not waited for (no ack of the ack): if it is lost, JetStream redelivers the
            # message and its claim finds the task finished, so it is only acked again.
            await msg.ack()

    def _signal(self, task: Task, kind: TaskSignalKind, signal_id: str) -> None:
        if self._signals is None:
            return
        self._signals(
            TaskSignal(
                id=signal_id,
                time=utcnow(),
                tenant=task.tenant,
                task_id=task.id,
                agent=task.agent,
                kind=kind,
            )
        )

    def _still_owned(self, task: Task, attempt: int, events: list[TaskEvent]) -> bool:
        # No event written: a newer attempt took the task over (this one stalled past its
        # lease). Its delivery is the live one; acking this stale one would remove the message
        # that attempt still needs if it dies too.
        if not events:
            logger.warning(
                "task %s attempt %d lost its claim; leaving the message alone", task.id, attempt
            )
        return bool(events)

    async def _give_up(self, msg: Msg, task: Task, attempt: int, reason: TaskError) -> None:
        self.stats.dead_lettered += 1
        await self._publish_dead_letter(msg, task.id, reason.stored(), attempt)
        await self._models.flush()  # as in _finish: usage before the final state
        if await self._store.dead_letter(task.id, reason=reason):
            self._signal(task, "dead_lettered", f"{task.id}:end")
        await msg.ack_sync()

    async def _dead_letter_message(
        self, msg: Msg, task_id: str | None, reason: dict[str, Any]
    ) -> None:
        await self._publish_dead_letter(msg, task_id, reason, 0)
        await msg.ack_sync()

    async def _publish_dead_letter(
        self,
        msg: Msg,
        task_id: str | None,
        reason: dict[str, Any],
        attempt: int,
        *,
        ending: str = "dead_lettered",
    ) -> None:
        # Copy first, ack after: if this publish fails the message is redelivered, not lost.
        body = {
            "task_id": task_id,
            "reason": reason,
            "attempts": attempt,
            "subject": msg.subject,
            "payload": msg.data.decode("utf-8", errors="replace"),
            "dead_lettered_at": utcnow().isoformat(),
        }
        await self._bus.publish_durable(
            DLQ_TASKS, json.dumps(body).encode(), msg_id=f"dlq:{task_id or msg.reply}:{attempt}"
        )
        # The reason's type and the details that name no content, not its message: a
        # provider's message may quote the prompt. The word is the task's state as the API and
        # CLI show it; the copy is kept either way.
        details = ", ".join(
            f"{name}={reason[name]}" for name in _LOGGED_DETAILS if reason.get(name) is not None
        )
        logger.warning(
            "task %s %s: %s%s; its message is copied to %s (%s)",
            task_id,
            ending,
            reason.get("type"),
            f" ({details})" if details else "",
            DLQ_STREAM,
            DLQ_TASKS,
        )

    async def _keep_alive(self, msg: Msg, task_id: str, attempt: int) -> None:
        # Tell JetStream and the database that this attempt is alive, well inside ack_wait.
        interval = self._settings.ack_wait / 3
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(*_LOST_CONNECTION, NatsTimeout):
                await msg.in_progress()
            with contextlib.suppress(ServiceUnavailable):
                owned = await self._store.extend_lease(task_id, attempt=attempt, lease=self._lease)
                if not owned:
                    logger.warning("task %s attempt %d lost its claim", task_id, attempt)
                    return

    async def _on_cancel(self, msg: Msg) -> None:
        task_id = msg.subject.rsplit(".", 1)[-1]
        event = self._cancel_events.get(task_id)
        if event is not None:
            event.set()


def _too_many(attempts: int) -> TaskError:
    return TaskError(
        type="too_many_attempts",
        message=f"the task was delivered {attempts} times without finishing",
        attempts=attempts,
    )


_LONGEST_ASKED_WAIT = 300.0
"""A provider's ``Retry-After`` is followed up to this many seconds (a bogus one is not)."""


def _asked_wait(exc: SpineError) -> float:
    """Seconds a provider's 429 asked to wait before trying again, else 0 (the breakers' own
    wait is not followed: the backoff already spaces the retries, and a probe may succeed)."""
    if exc.details.get("cause") != "RateLimitError":
        return 0.0
    wait = exc.details.get("retry_after")
    if isinstance(wait, int | float) and not isinstance(wait, bool) and math.isfinite(wait):
        return min(max(float(wait), 0.0), _LONGEST_ASKED_WAIT)
    return 0.0
