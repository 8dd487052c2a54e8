"""The JetStream layout the settings call for: one place, for the composition root and the
learner (which needs it without the rest of the platform)."""

from __future__ import annotations

from spine.events.streams import StreamLayout
from spine.platform.settings import Settings

__all__ = ["stream_layout"]


def stream_layout(settings: Settings) -> StreamLayout:
    """The JetStream streams and consumers these settings call for."""
    return StreamLayout(
        replicas=settings.streams.replicas,
        duplicate_window=settings.streams.duplicate_window,
        outcomes_max_age=settings.streams.outcomes_max_age,
        outcomes_max_bytes=settings.streams.outcomes_max_bytes,
        events_max_age=settings.knowledge.events_max_age,
        events_duplicate_window=settings.knowledge.events_duplicate_window,
        ack_wait=settings.worker.ack_wait,
        # After a worker dies, the redelivery (ack_wait after delivery) usually comes just
        # before the dead attempt's lease (ack_wait after its claim) runs out, and is nakked
        # as "busy": an attempt can take two deliveries, and so can the one that finally
        # dead-letters. A tighter cap let JetStream drop a twice-crashed task silently.
        max_deliver=2 * (settings.worker.max_attempts + 1),
    )
