"""What a task row keeps of an error (:class:`~spine.platform.tasks.TaskError`)."""

from __future__ import annotations

from spine.platform.errors import TransientFailure
from spine.platform.inputs import json_problem
from spine.platform.tasks import TaskError


def test_an_error_quoting_text_that_cannot_be_stored_is_kept_mended() -> None:
    # A provider's message, or a tool's, quoted as it came: PostgreSQL's jsonb refuses the NUL.
    failure = TransientFailure("upstream said a\x00b", provider="p\ud800", cause="Timeout")
    stored = TaskError.of(failure).stored()
    assert json_problem(stored) is None
    assert stored["message"] == "upstream said a\ufffdb"
    assert (stored["provider"], stored["cause"], stored["retryable"]) == (
        "p\ufffd",
        "Timeout",
        True,
    )
    plain = TaskError(type="cancelled", message="the task was cancelled")
    assert plain.stored() == {
        "type": "cancelled",
        "message": "the task was cancelled",
        "retryable": False,
    }
