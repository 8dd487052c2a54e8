"""Triggers: rules that turn matching events into agent tasks, each event at most once per rule.

A triggers folder holds YAML files with a ``triggers:`` list::

    triggers:
      - name: welcome-new-hire
        event: com.example.person.hired      # a type, or a pattern with * (com.example.*)
        when:                                # optional: every path must equal its value
          data.role: engineer
        agent: chat
        priority: normal
        input:
          prompt: "Welcome {{ data.person.name }} to {{ data.company.name }}."

Strings in ``input`` may hold ``{{ path }}`` placeholders (paths as in mappings: ``data.x``,
``subject``, ``id``...); a string that is only one placeholder takes the value as it is (a
number, an object). A path that is missing becomes an empty string.

A durable pull consumer of EVENTS (``event-triggers``) submits each task through the task
backbone with the idempotency key ``trigger:<rule>:<event dedupe id>``: an event delivered
again, replayed, or seen by two workers makes the same task once.

A rule applies to the events received after it is enabled, never to older ones: every worker
runs the consumer, with no rules too, so events received before a rule existed have already
passed it by; and events sent to ingestion again by ``spine events remap`` (marked with the
``Spine-Remap`` header) fire nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from nats.js import JetStreamContext
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from spine.agents.catalog import AgentCatalog
from spine.agents.dispatch import TaskDispatcher
from spine.events.bus import NatsBus, bind_durable, fetched
from spine.events.intake import REMAP_HEADER, RejectedEvent, read_event
from spine.events.log import ReceivedEvent
from spine.events.paths import MISSING, resolve, valid_path
from spine.events.schemas import EventSchemas
from spine.events.streams import EVENTS_STREAM, TRIGGER_CONSUMER, StreamLayout
from spine.platform.errors import (
    BadRequest,
    ConfigurationError,
    IdempotencyConflict,
    ServiceUnavailable,
)
from spine.platform.keys import Principal
from spine.platform.settings import KnowledgeSettings
from spine.platform.tasks import Priority, TaskSubmission

__all__ = ["TriggerRule", "TriggerRules", "TriggerRunner", "TriggerStats"]

logger = logging.getLogger(__name__)

_PLACEHOLDER = re.compile(r"\{\{\s*([^{}\s]+)\s*\}\}")
_LOST = (ConnectionClosedError, ServiceUnavailable, OSError)


class TriggerRule(BaseModel):
    """One rule: which events, which agent, and the task's input made from the event."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    event: str = Field(min_length=1, max_length=255)
    when: dict[str, Any] = Field(default_factory=dict)
    agent: str = Field(min_length=1, max_length=100)
    priority: Priority = "normal"
    input: dict[str, Any]
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("when")
    @classmethod
    def _paths(cls, value: dict[str, Any]) -> dict[str, Any]:
        for path in value:
            if not valid_path(path):
                raise ValueError(f"{path!r} is not a path like data.a.b")
        return value

    def matches(self, received: ReceivedEvent) -> bool:
        """Tell whether the event is one this rule fires on."""
        event = received.event
        if not fnmatch.fnmatchcase(event.type, self.event):
            return False
        return all(resolve(event, path) == value for path, value in self.when.items())

    def submission(self, received: ReceivedEvent) -> TaskSubmission:
        """Return the task this rule makes of the event."""
        event = received.event
        return TaskSubmission(
            agent=self.agent,
            input=_render(self.input, received),
            priority=self.priority,
            metadata={
                **self.metadata,
                "trigger": self.name,
                "event": {"id": event.id, "source": event.source, "type": event.type},
            },
        )

    def idempotency_key(self, received: ReceivedEvent) -> str:
        """Return the key that makes this rule's task for the event once."""
        return f"trigger:{self.name}:{received.key}"


class TriggerRules:
    """The loaded rules."""

    def __init__(self, rules: list[TriggerRule] | None = None) -> None:
        self.rules = list(rules or [])
        names = [rule.name for rule in self.rules]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ConfigurationError(
                f"trigger names must be unique: {', '.join(duplicated)}",
                field="GENAI_KNOWLEDGE__TRIGGERS_DIR",
            )

    @classmethod
    def load(cls, folder: Path | None) -> TriggerRules:
        """Read every ``*.yaml``/``*.yml`` file of ``folder`` (none when it is ``None``)."""
        if folder is None:
            return cls()
        if not folder.is_dir():
            raise ConfigurationError(
                f"the triggers folder {folder} does not exist",
                field="GENAI_KNOWLEDGE__TRIGGERS_DIR",
            )
        rules: list[TriggerRule] = []
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            try:
                raw = yaml.safe_load(path.read_text())
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigurationError(
                    f"cannot read {path}: {exc}", field="GENAI_KNOWLEDGE__TRIGGERS_DIR"
                ) from exc
            items = raw.get("triggers", [raw]) if isinstance(raw, dict) else raw
            for index, item in enumerate(items or []):
                try:
                    rules.append(TriggerRule.model_validate(item))
                except ValidationError as exc:
                    error = exc.errors()[0]
                    where = ".".join(str(p) for p in error["loc"])
                    raise ConfigurationError(
                        f"{path}: triggers[{index}].{where}: {error['msg']}",
                        field="GENAI_KNOWLEDGE__TRIGGERS_DIR",
                    ) from exc
        logger.info("loaded %d trigger rules from %s", len(rules), folder)
        return cls(rules)

    def __len__(self) -> int:
        return len(self.rules)

    def check_agents(self, catalog: AgentCatalog) -> None:
        """Refuse rules naming an agent that does not exist."""
        known = set(catalog.names())
        for rule in self.rules:
            if rule.agent not in known:
                raise ConfigurationError(
                    f"trigger {rule.name!r} names the unknown agent {rule.agent!r} "
                    f"(known: {', '.join(sorted(known))})",
                    field="GENAI_KNOWLEDGE__TRIGGERS_DIR",
                )

    def matching(self, received: ReceivedEvent) -> list[TriggerRule]:
        """Return the rules an event fires."""
        return [rule for rule in self.rules if rule.matches(received)]


@dataclass(slots=True, kw_only=True)
class TriggerStats:
    """Counters for logs and tests."""

    submitted: int = 0
    repeated: int = 0
    refused: int = 0


class TriggerRunner:
    """Consumes EVENTS and submits the tasks the rules make, until told to stop."""

    def __init__(
        self,
        *,
        bus: NatsBus,
        rules: TriggerRules,
        dispatcher: TaskDispatcher,
        schemas: EventSchemas,
        layout: StreamLayout,
        settings: KnowledgeSettings,
        consumer: str = TRIGGER_CONSUMER,
    ) -> None:
        self._bus = bus
        self._rules = rules
        self._dispatcher = dispatcher
        self._schemas = schemas
        self._layout = layout
        self._settings = settings
        self._consumer = consumer
        self.stats = TriggerStats()

    async def run(self, stop: asyncio.Event) -> None:
        """Fire triggers until ``stop`` is set."""
        await self._layout.ensure_when_ready(self._bus)
        subscription = await self._bind(stop)
        logger.info("triggers running (%d rules)", len(self._rules))
        try:
            await self._consume(subscription, stop)
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _consume(
        self, subscription: JetStreamContext.PullSubscription, stop: asyncio.Event
    ) -> None:
        async for messages in fetched(subscription, 64, stop):
            for msg in messages:
                try:
                    await self.handle(msg)
                except _LOST as exc:
                    logger.warning("left an event for redelivery: %r", exc)
                except Exception:
                    logger.exception("unexpected error firing triggers; the event will return")

    async def handle(self, msg: Msg) -> None:
        """Fire the rules one delivered event matches, then acknowledge it."""
        metadata = msg.metadata
        try:
            received = read_event(
                msg.subject,
                msg.data,
                msg.headers,
                stream_time=metadata.timestamp,
                schemas=self._schemas,
                max_bytes=self._settings.max_event_bytes,  # what ingestion refuses fires nothing
            )
        except RejectedEvent:
            await msg.ack()  # ingestion dead-letters it with the reason
            return
        if (msg.headers or {}).get(REMAP_HEADER):
            await msg.ack()  # an old event mapped again: triggers apply to new events only
            return
        for rule in self._rules.matching(received):
            try:
                await self._fire(rule, received)
            except ServiceUnavailable as exc:
                logger.warning("trigger %s postponed: %s", rule.name, exc.message)
                await msg.nak(delay=self._settings.delay_before(metadata.num_delivered + 1))
                return
        await msg.ack()

    async def _fire(self, rule: TriggerRule, received: ReceivedEvent) -> None:
        principal = Principal(key_id="", tenant=received.tenant, role="member")
        try:
            task, created = await self._dispatcher.submit(
                rule.submission(received),
                principal=principal,
                idempotency_key=rule.idempotency_key(received),
            )
        except IdempotencyConflict:
            # The rule changed since it fired for this event: it fired once already.
            self.stats.repeated += 1
            return
        except (BadRequest, ValidationError) as exc:
            self.stats.refused += 1
            logger.warning(
                "trigger %s could not make a task of event %s: %s", rule.name, received.key, exc
            )
            return
        if created:
            self.stats.submitted += 1
            logger.info("trigger %s made task %s", rule.name, task.id)
        else:
            self.stats.repeated += 1

    async def _bind(self, stop: asyncio.Event) -> JetStreamContext.PullSubscription:
        return await bind_durable(self._bus, self._consumer, EVENTS_STREAM, stop)


def _render(template: Any, received: ReceivedEvent) -> Any:
    if isinstance(template, dict):
        return {key: _render(value, received) for key, value in template.items()}
    if isinstance(template, list):
        return [_render(value, received) for value in template]
    if not isinstance(template, str):
        return template
    whole = _PLACEHOLDER.fullmatch(template.strip())
    if whole:
        value = resolve(received.event, whole.group(1))
        return None if value is MISSING else value

    def text(found: re.Match[str]) -> str:
        value = resolve(received.event, found.group(1))
        if value is MISSING:
            return ""
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return _PLACEHOLDER.sub(text, template)
