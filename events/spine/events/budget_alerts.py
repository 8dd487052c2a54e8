"""Budget alerts on NATS: each threshold a budget reaches, published on ``spine.budget.threshold``.

The budget ledger records each threshold once across processes (a database row) and hands the
one process that recorded it the :class:`~spine.platform.metering.budget_alerts.BudgetAlert`;
:class:`BudgetAlertPublisher` is that hook. It publishes a core NATS message (JSON, the alert's
fields, ``type`` ``budget.threshold``) off the call path: a subscriber connected at the time
gets it, at most once. When NATS is down the message is dropped and counted; the row stays,
shown with the budget over the API (``alerts``).
"""

from __future__ import annotations

import asyncio
import logging

from spine.events.bus import NatsBus
from spine.events.subjects import BUDGET_THRESHOLD
from spine.platform.metering.budget_alerts import BudgetAlert

__all__ = ["BudgetAlertPublisher"]

logger = logging.getLogger(__name__)


class BudgetAlertPublisher:
    """Publishes budget alerts as core NATS messages in the background; never blocks a call."""

    def __init__(self, bus: NatsBus, *, subject: str = BUDGET_THRESHOLD) -> None:
        self._bus = bus
        self.subject = subject
        self._sending: set[asyncio.Task[None]] = set()
        self.published = 0
        """Alerts handed to NATS."""
        self.dropped = 0
        """Alerts not published: NATS was not connected."""

    def __call__(self, alert: BudgetAlert) -> None:
        """Publish ``alert`` from the running event loop, without waiting for it."""
        task = asyncio.get_running_loop().create_task(self._publish(alert), name="budget-alert")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _publish(self, alert: BudgetAlert) -> None:
        if not self._bus.connected:
            self.dropped += 1
            logger.warning("budget alert %s not published: NATS is not connected", alert.id)
            return
        await self._bus.signal(self.subject, alert.model_dump_json().encode())
        self.published += 1

    async def close(self) -> None:
        """Wait for the alerts being published."""
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
