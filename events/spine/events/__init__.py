"""Events: NATS subjects, JetStream streams and the shared connection."""

from spine.events.bus import NatsBus
from spine.events.streams import DLQ_STREAM, TASKS_STREAM, StreamLayout, consumer_name
from spine.events.subjects import (
    CANCEL_ALL,
    DLQ_TASKS,
    LANES,
    cancel_subject,
    lane_subject,
    progress_subject,
)

__all__ = [
    "CANCEL_ALL",
    "DLQ_STREAM",
    "DLQ_TASKS",
    "LANES",
    "TASKS_STREAM",
    "NatsBus",
    "StreamLayout",
    "cancel_subject",
    "consumer_name",
    "lane_subject",
    "progress_subject",
]
