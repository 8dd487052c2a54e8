"""The lines of a batch's output and error files, for each way a line can end."""

from __future__ import annotations

import json
from typing import Any

import pytest

from spine.platform.batches.output import line_request_id, render_line
from spine.platform.errors import ContextWindowExceeded, TransientFailure, UnknownModel

ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "usage": {"prompt_tokens": 3}}


def row(**values: Any) -> dict[str, Any]:
    base = {
        "line": 4,
        "custom_id": "r4",
        "task_id": "task-4",
        "error": None,
        "state": None,
        "result": None,
        "task_error": None,
    }
    return {**base, **values}


def render(line: dict[str, Any], *, cancelling: bool = False) -> tuple[dict[str, Any], Any]:
    text, answer = render_line("batch_1", line, cancelling=cancelling)
    assert text.endswith(b"\n")
    assert text.count(b"\n") == 1
    return json.loads(text), answer


def test_an_answer_goes_out_with_status_200_and_the_task_as_request_id() -> None:
    record, answer = render(row(state="succeeded", result=ANSWER))
    assert answer == ANSWER
    assert record == {
        "id": line_request_id("batch_1", 4),
        "custom_id": "r4",
        "response": {"status_code": 200, "request_id": "task-4", "body": ANSWER},
        "error": None,
    }


def test_request_ids_are_stable_per_line() -> None:
    assert line_request_id("batch_1", 4) == line_request_id("batch_1", 4)
    assert line_request_id("batch_1", 4) != line_request_id("batch_1", 5)
    assert line_request_id("batch_1", 4).startswith("batch_req_")


def test_a_rejected_line_keeps_its_reason() -> None:
    reason = {"code": "invalid_json", "line": 4, "message": "line 4: not JSON", "param": None}
    record, answer = render(row(custom_id=None, task_id=None, error=reason))
    assert answer is None
    assert (record["response"], record["error"], record["custom_id"]) == (None, reason, None)


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (ContextWindowExceeded("too long", model="m"), 400, "context_length_exceeded"),
        (UnknownModel("no model 'x'", field="model"), 404, "model_not_found"),
        (TransientFailure("HTTP 500", cause="InternalServerError"), 502, "provider_error"),
    ],
)
def test_a_failed_request_carries_the_status_and_body_the_gateway_would_answer(
    error: Any, status: int, code: str
) -> None:
    stored = {**error.to_dict(), "retryable": error.retryable, "attempts": 3}
    record, answer = render(row(state="dead_lettered", task_error=stored))
    assert answer is None
    assert record["error"] is None
    response = record["response"]
    assert (response["status_code"], response["request_id"]) == (status, "task-4")
    assert response["body"]["error"]["code"] == code
    assert response["body"]["error"]["message"] == error.message


def test_an_error_with_no_http_answer_is_named_in_error() -> None:
    stored = {"type": "too_many_attempts", "message": "delivered 5 times", "retryable": False}
    record, _ = render(row(state="dead_lettered", task_error=stored))
    assert record["response"] is None
    assert record["error"] == {"code": "too_many_attempts", "message": "delivered 5 times"}


def test_a_cancelled_request_says_whether_the_batch_was_cancelled() -> None:
    record, _ = render(row(state="cancelled"), cancelling=True)
    assert record["error"]["code"] == "batch_cancelled"
    record, _ = render(row(state="cancelled"))
    assert record["error"]["code"] == "request_cancelled"
