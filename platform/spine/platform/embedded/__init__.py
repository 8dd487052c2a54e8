"""The embedded stack: real servers started from pip packages when no URL is configured.

``stack`` starts, watches and stops them; ``servers`` (NATS, FalkorDB), ``postgres``
and ``llama`` (the toy local model) say how each one is launched; ``state`` records what runs
in a data dir so a later command can find it; ``credentials`` keeps the passwords of NATS's
users and PostgreSQL. ``supervisor`` keeps the children of ``spine up`` running (``children``:
a server or a process; ``watchdog``: what stops them all when ``spine up`` is killed).
"""

from spine.platform.embedded.stack import (
    LOCAL_MODEL,
    SERVICES,
    DeadServer,
    EmbeddedStack,
    Endpoints,
    ProgressCallback,
    apply_endpoints,
    local_model_missing,
    read_state,
    stack_status,
    stop_stack,
)

__all__ = [
    "LOCAL_MODEL",
    "SERVICES",
    "DeadServer",
    "EmbeddedStack",
    "Endpoints",
    "ProgressCallback",
    "apply_endpoints",
    "local_model_missing",
    "read_state",
    "stack_status",
    "stop_stack",
]
