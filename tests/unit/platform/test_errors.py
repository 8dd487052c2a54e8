"""The error tree: who derives from whom, what is retryable, which HTTP status, one shape."""

from __future__ import annotations

import pytest

from spine.platform import errors
from spine.platform.errors import (
    BadRequest,
    BudgetExceeded,
    ConfigurationError,
    Conflict,
    ContextWindowExceeded,
    Forbidden,
    IdempotencyConflict,
    NotFound,
    PayloadTooLarge,
    PermanentFailure,
    ProviderNotConfigured,
    RateLimited,
    RunFailure,
    ServiceUnavailable,
    SpineError,
    TaskCancelled,
    TransientFailure,
    Unauthorized,
    UnknownAgent,
    UnknownModel,
)

# class, parent, retryable, HTTP status, error type
TREE = [
    (ConfigurationError, SpineError, False, 500, "configuration_error"),
    (BadRequest, SpineError, False, 400, "invalid_request"),
    (UnknownAgent, BadRequest, False, 400, "unknown_agent"),
    (UnknownModel, BadRequest, False, 404, "model_not_found"),
    (IdempotencyConflict, BadRequest, False, 409, "idempotency_conflict"),
    (PayloadTooLarge, BadRequest, False, 413, "request_too_large"),
    (Unauthorized, SpineError, False, 401, "unauthorized"),
    (Forbidden, SpineError, False, 403, "forbidden"),
    (NotFound, SpineError, False, 404, "not_found"),
    (Conflict, SpineError, False, 409, "conflict"),
    (BudgetExceeded, SpineError, False, 429, "budget_exceeded"),
    (RateLimited, SpineError, True, 429, "rate_limit_exceeded"),
    (ServiceUnavailable, SpineError, True, 503, "service_unavailable"),
    (RunFailure, SpineError, False, 500, "task_failed"),
    (TransientFailure, RunFailure, True, 500, "transient_error"),
    (PermanentFailure, RunFailure, False, 500, "permanent_error"),
    (ProviderNotConfigured, PermanentFailure, False, 500, "provider_not_configured"),
    (ContextWindowExceeded, PermanentFailure, False, 400, "context_length_exceeded"),
    (TaskCancelled, RunFailure, False, 500, "cancelled"),
]


@pytest.mark.parametrize(
    ("cls", "parent", "retryable", "status", "error_type"),
    TREE,
    ids=[row[0].__name__ for row in TREE],
)
def test_each_error_has_its_place_flag_and_status(
    cls: type[SpineError], parent: type[SpineError], retryable: bool, status: int, error_type: str
) -> None:
    assert cls.__bases__ == (parent,)
    assert issubclass(cls, SpineError)
    assert issubclass(cls, Exception)
    error = cls("something happened")
    assert error.retryable is retryable
    assert error.status_code == status
    assert error.error_type == error_type
    assert str(error) == "something happened"


def test_the_tree_is_complete_and_exported() -> None:
    exported = {getattr(errors, name) for name in errors.__all__}
    assert exported == {row[0] for row in TREE} | {SpineError}
    assert SpineError("x").retryable is False
    assert SpineError.status_code == 500
    assert SpineError.error_type == "internal_error"


def test_error_types_are_unique() -> None:
    types = [row[4] for row in TREE] + [SpineError.error_type]
    assert len(types) == len(set(types))


def test_only_transient_kinds_are_retryable() -> None:
    assert {row[0] for row in TREE if row[2]} == {
        ServiceUnavailable,
        TransientFailure,
        RateLimited,
    }


def test_to_dict_renders_type_message_field_and_details() -> None:
    assert BadRequest("deadline is in the past", field="deadline").to_dict() == {
        "type": "invalid_request",
        "message": "deadline is in the past",
        "field": "deadline",
    }
    assert NotFound("no task 'x'").to_dict() == {"type": "not_found", "message": "no task 'x'"}
    error = Conflict("task t already ended as succeeded", state="succeeded")
    assert error.to_dict() == {
        "type": "conflict",
        "message": "task t already ended as succeeded",
        "state": "succeeded",
    }
    assert error.details == {"state": "succeeded"}
    assert error.field is None
    assert error.message == "task t already ended as succeeded"


def test_catching_a_parent_catches_its_children() -> None:
    with pytest.raises(BadRequest) as caught:
        raise UnknownAgent("unknown agent 'x'", field="agent")
    assert caught.value.status_code == 400
    assert caught.value.to_dict()["field"] == "agent"
    with pytest.raises(PermanentFailure):
        raise ProviderNotConfigured("set GENAI_OLLAMA_URL")
    with pytest.raises(RunFailure):
        raise TaskCancelled("the task was cancelled")
