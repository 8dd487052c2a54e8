"""Events: NATS subjects, JetStream streams and the shared connection."""

from spine.events.bus import NatsBus
from spine.events.outcomes import ModelOutcome, OutcomePublisher
from spine.events.streams import (
    DLQ_STREAM,
    OUTCOMES_STREAM,
    TASKS_STREAM,
    StreamLayout,
    consumer_name,
)
from spine.events.subjects import (
    CANCEL_ALL,
    DLQ_TASKS,
    LANES,
    OUTCOMES_ALL,
    cancel_subject,
    lane_subject,
    outcome_subject,
    progress_subject,
)

__all__ = [
    "CANCEL_ALL",
    "DLQ_STREAM",
    "DLQ_TASKS",
    "LANES",
    "OUTCOMES_ALL",
    "OUTCOMES_STREAM",
    "TASKS_STREAM",
    "ModelOutcome",
    "NatsBus",
    "OutcomePublisher",
    "StreamLayout",
    "cancel_subject",
    "consumer_name",
    "lane_subject",
    "outcome_subject",
    "progress_subject",
]
