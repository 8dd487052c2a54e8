"""Tasks: what one is (:mod:`.models`), the store that is their source of truth (:mod:`.store`,
over :mod:`.outbox`, :mod:`.attempts` and :mod:`.approvals`), and the step journal of agent loops
(:mod:`.journal`)."""

from spine.platform.tasks._rows import TaskEventSink
from spine.platform.tasks.journal import JournalEntry, StepJournal, StepKind
from spine.platform.tasks.models import (
    TERMINAL_STATES,
    Claim,
    NewTask,
    Priority,
    Task,
    TaskError,
    TaskEvent,
    TaskPage,
    TaskState,
    TaskSubmission,
)
from spine.platform.tasks.store import TaskStore

__all__ = [
    "TERMINAL_STATES",
    "Claim",
    "JournalEntry",
    "NewTask",
    "Priority",
    "StepJournal",
    "StepKind",
    "Task",
    "TaskError",
    "TaskEvent",
    "TaskEventSink",
    "TaskPage",
    "TaskState",
    "TaskStore",
    "TaskSubmission",
]
