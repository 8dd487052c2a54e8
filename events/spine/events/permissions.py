"""Who may publish and subscribe to what on NATS: one grant per process role.

The embedded NATS of ``spine up`` gives each role its own user with exactly these grants
(see :mod:`spine.platform.embedded.credentials`); a NATS of one's own can be configured from
the same table. Every grant is spelled from :mod:`spine.events.subjects` plus the two NATS
namespaces a JetStream client needs:

- ``$JS.API.>``: the JetStream API (publishing waits for an acknowledgement through it;
  streams and consumers are created, bound and fetched from through it);
- ``$JS.ACK.>``: acknowledging (ack, nak, term, in-progress) a message a consumer fetched;
- ``$JS.FC.>``: answering the flow control of a push consumer (a key-value watch);
- ``_INBOX.>`` (subscribe): the replies to requests, JetStream's acknowledgements and the
  messages a pull consumer fetches.

Roles:

- ``api``: submits tasks (``spine.tasks``), takes in events (``spine.events``), publishes model-call
  outcomes of the gateway and progress nudges, cancels tasks, follows progress for SSE, watches
  the routing weights' key.
- ``worker``: consumes TASKS and EVENTS; publishes progress, outcomes, dead letters, the tasks
  that delegation and triggers submit and the events of the ``publish_event`` tool; listens for
  cancellations; watches the routing weights' key.
- ``learner``: consumes the OUTCOMES stream and announces new routing weights (the key-value
  bucket of :mod:`spine.events.weights`).
- ``replay``: ``spine learn replay`` against a running stack: creates and deletes its run's
  stream, publishes and consumes the run's learning events (``spine.replay.>``) and nothing of
  the platform's work, events or outcomes.
- an external publisher of one tenant: publishes on ``spine.events.<tenant>.>`` only, and reads
  the replies in an inbox of its own, so it never sees another client's replies.

Holding ``$JS.API.>`` is close to holding the whole account (streams can be read and deleted
through it): the internal roles are separate identities, the external publisher is the one
that is truly confined.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from spine.events.subjects import (
    BUDGET_THRESHOLD,
    CANCEL_ALL,
    EVENTS_ALL,
    OUTCOMES_ALL,
    REPLAY_ALL,
    TASKS_ALL,
    WEIGHTS_BUCKET,
    progress_subject,
    subject_token,
    tenant_token,
)

__all__ = [
    "JETSTREAM_ACK",
    "JETSTREAM_API",
    "JETSTREAM_FLOW_CONTROL",
    "REPLY_INBOXES",
    "ROLE_GRANTS",
    "SubjectGrant",
    "publisher_grant",
    "publisher_inbox_prefix",
]

JETSTREAM_API = "$JS.API.>"
JETSTREAM_ACK = "$JS.ACK.>"
JETSTREAM_FLOW_CONTROL = "$JS.FC.>"
REPLY_INBOXES = "_INBOX.>"
_PROGRESS_ALL = progress_subject(">")
_DLQ_ALL = "spine.dlq.>"
_WEIGHTS_KEYS = f"$KV.{WEIGHTS_BUCKET}.>"


class SubjectGrant(BaseModel):
    """The subjects (NATS wildcards allowed) one user may publish and subscribe to."""

    model_config = ConfigDict(frozen=True)

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


ROLE_GRANTS: dict[str, SubjectGrant] = {
    "api": SubjectGrant(
        publish=(
            TASKS_ALL,
            EVENTS_ALL,
            OUTCOMES_ALL,
            _PROGRESS_ALL,
            CANCEL_ALL,
            BUDGET_THRESHOLD,  # the gateway's calls cross budget thresholds
            JETSTREAM_API,
            JETSTREAM_FLOW_CONTROL,
        ),
        subscribe=(_PROGRESS_ALL, REPLY_INBOXES),
    ),
    "worker": SubjectGrant(
        publish=(
            TASKS_ALL,
            EVENTS_ALL,
            OUTCOMES_ALL,
            _PROGRESS_ALL,
            _DLQ_ALL,
            BUDGET_THRESHOLD,  # so do agents' calls
            JETSTREAM_API,
            JETSTREAM_ACK,
            JETSTREAM_FLOW_CONTROL,
        ),
        subscribe=(CANCEL_ALL, REPLY_INBOXES),
    ),
    "learner": SubjectGrant(
        publish=(JETSTREAM_API, JETSTREAM_ACK, JETSTREAM_FLOW_CONTROL, _WEIGHTS_KEYS),
        subscribe=(OUTCOMES_ALL, REPLY_INBOXES),
    ),
    "replay": SubjectGrant(
        publish=(REPLAY_ALL, JETSTREAM_API, JETSTREAM_ACK),
        subscribe=(REPLY_INBOXES,),
    ),
}
"""The grant of each process role of the platform."""


def publisher_inbox_prefix(user: str) -> str:
    """Return the inbox prefix an external publisher must connect with (its replies land there).

    nats-py: ``nats.connect(url, inbox_prefix=...)``; the ``nats`` CLI: ``--inbox-prefix``.
    """
    return f"_INBOX_{subject_token(user)}"


def publisher_grant(tenant: str, user: str) -> SubjectGrant:
    """Return the grant of an external system that publishes events of one tenant.

    It may publish on ``spine.events.<tenant>.>`` (core NATS or JetStream) and read the replies
    in its own inbox (:func:`publisher_inbox_prefix`), which JetStream's acknowledgements need.
    """
    return SubjectGrant(
        publish=(f"spine.events.{tenant_token(tenant)}.>",),
        subscribe=(f"{publisher_inbox_prefix(user)}.>",),
    )
