"""How many tasks of a tenant may run at once, and how long one over the limit waits.

The limit is checked where a worker claims a task (:meth:`spine.platform.tasks.TaskStore.claim`
given a ``running_limit``): the task's row is claimed only while fewer of its tenant's tasks
are ``running`` with a live lease, in one statement (on PostgreSQL behind a per-tenant advisory
lock, so two workers cannot both take the last slot). A slot is therefore the running row
itself: it frees when the attempt ends in any way (success, failure, retry, pause for approval,
cancellation) and, when its worker died, when the attempt's lease runs out, the same lease that
lets another worker take the task over. Nothing is held in Redis that could drift from the task's
state.

A task over the limit is not failed: the worker hands its message back to JetStream with a
delay (:meth:`RunningTaskLimits.wait_before`: ``GENAI_LIMITS__TASK_WAIT`` doubling per delivery
up to ``GENAI_LIMITS__TASK_WAIT_MAX``, with jitter so waiting tasks do not come back together),
and the task stays ``queued``. A task that waits so long that JetStream stops delivering it
(``max_deliver``) is published again by the API's sweeper (``GENAI_API__REPUBLISH_AFTER``).
"""

from __future__ import annotations

import random

from spine.platform.settings import LimitSettings

__all__ = ["RunningTaskLimits"]


class RunningTaskLimits:
    """The running-task limit of each tenant (a callable: tenant -> limit, None: no limit)."""

    def __init__(self, settings: LimitSettings, *, jitter: float = 0.2) -> None:
        self._settings = settings
        self._jitter = jitter

    @property
    def active(self) -> bool:
        """Tell whether any tenant is limited."""
        settings = self._settings
        return bool(settings.tenant_running_tasks) or any(
            own.running_tasks for own in settings.tenants.values()
        )

    def __call__(self, tenant: str) -> int | None:
        """Return how many tasks of ``tenant`` may run at once; None: no limit."""
        own = self._settings.tenants.get(tenant)
        value = own.running_tasks if own is not None and own.running_tasks is not None else None
        limit = self._settings.tenant_running_tasks if value is None else value
        return limit or None

    def wait_before(self, delivered: int) -> float:
        """Return the seconds a task over its limit waits, on its ``delivered``-th delivery."""
        settings = self._settings
        base = settings.task_wait * 2 ** min(max(delivered - 1, 0), 16)
        delay = min(base, settings.task_wait_max)
        spread = random.uniform(1 - self._jitter, 1 + self._jitter)  # noqa: S311  # jitter only
        return float(delay * spread)
