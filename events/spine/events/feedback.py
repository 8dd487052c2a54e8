"""Announcing feedback: each stored rating becomes a ``feedback`` event on OUTCOMES.

Announced at once after it is stored (the API awaits JetStream's acknowledgement); what NATS
did not acknowledge the API's sweeper announces again, so the learner gets every rating even
when NATS was down when it was given. The event id is the feedback's id (``Nats-Msg-Id``), so a
repeat is deduplicated by JetStream and by the learner.
"""

from __future__ import annotations

import logging

from spine.events.bus import NatsBus
from spine.events.outcomes import FeedbackGiven, feedback_subject
from spine.platform.errors import ServiceUnavailable
from spine.platform.learning.feedback import Feedback, FeedbackStore

__all__ = ["FeedbackAnnouncer"]

logger = logging.getLogger(__name__)


class FeedbackAnnouncer:
    """Publishes feedback events and records which ones JetStream acknowledged."""

    def __init__(self, bus: NatsBus, store: FeedbackStore, *, grace: float = 2.0) -> None:
        self._bus = bus
        self._store = store
        self._grace = grace

    async def announce(self, given: list[Feedback]) -> int:
        """Publish ``given``; return how many JetStream acknowledged (the rest wait)."""
        done: list[str] = []
        for feedback in given:
            event = FeedbackGiven(
                id=feedback.id,
                time=feedback.created_at,
                tenant=feedback.tenant,
                key_id=feedback.key_id,
                target_kind=feedback.target_kind,
                target_id=feedback.target_id,
                call_ids=feedback.call_ids,
                score=feedback.score,
                label=feedback.label,
            )
            try:
                await self._bus.publish_durable(
                    feedback_subject(feedback.tenant),
                    event.model_dump_json().encode(),
                    msg_id=event.id,
                )
            except ServiceUnavailable as exc:
                logger.info("feedback %s not announced yet: %s", feedback.id, exc.message)
                break
            done.append(feedback.id)
        await self._store.announced(done)
        return len(done)

    async def sweep_once(self) -> int:
        """Announce feedback that was stored but never acknowledged; return how many."""
        if not self._bus.connected:
            return 0
        return await self.announce(await self._store.unannounced(grace=self._grace, limit=200))
