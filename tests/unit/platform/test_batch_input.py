"""Reading batch input: the create request, and each way a JSONL line can be good or bad."""

from __future__ import annotations

import json
from typing import Any

import pytest

from spine.platform.batches import line_key
from spine.platform.batches.input import (
    MAX_CUSTOM_ID,
    BatchCreate,
    BatchInput,
    LineError,
    parse_batch_input,
)
from spine.platform.errors import BadRequest, PayloadTooLarge

ENDPOINT = "/v1/chat/completions"
BODY = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}


def line(custom_id: Any = "r1", **changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT}
    entry["body"] = changes.pop("body", BODY)
    entry.update(changes)
    if custom_id is None:
        del entry["custom_id"]
    return entry


def jsonl(*lines: dict[str, Any] | str) -> bytes:
    return "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines).encode() + b"\n"


def parse(content: bytes, max_lines: int = 100) -> BatchInput:
    return parse_batch_input(content, endpoint=ENDPOINT, max_lines=max_lines)


def only_error(content: bytes) -> LineError:
    parsed = parse(content)
    assert parsed.requests == []
    assert len(parsed.errors) == 1
    return parsed.errors[0]


def test_good_lines_keep_their_numbers_custom_ids_and_bodies() -> None:
    content = jsonl(line("a"), "", "   ", line("b")).replace(b"\n", b"\r\n", 1)
    parsed = parse(content)
    assert [(r.line, r.custom_id) for r in parsed.requests] == [(1, "a"), (4, "b")]
    assert parsed.requests[0].body == BODY
    assert parsed.errors == []
    assert parsed.total == 2
    assert parsed.model == "llama3.2"


def test_the_model_is_named_only_when_every_line_agrees() -> None:
    other = {**BODY, "model": "gpt-4o-mini"}
    assert parse(jsonl(line("a"), line("b", body=other))).model is None


@pytest.mark.parametrize(
    ("text", "code", "param", "custom_id", "says"),
    [
        ('{"custom_id": "x", "method": "POST"', "invalid_json", None, None, "not valid JSON"),
        ("[1, 2]", "invalid_request", None, None, "JSON object"),
        (json.dumps(line(None)), "missing_custom_id", "custom_id", None, "custom_id is missing"),
        (json.dumps(line(7)), "missing_custom_id", "custom_id", None, "non-empty string"),
        (json.dumps(line("")), "missing_custom_id", "custom_id", None, "non-empty string"),
        (
            json.dumps(line("x" * (MAX_CUSTOM_ID + 1))),
            "invalid_custom_id",
            "custom_id",
            "x" * (MAX_CUSTOM_ID + 1),
            "longer than",
        ),
        (json.dumps(line("m", method="GET")), "invalid_method", "method", "m", "'POST'"),
        (
            json.dumps(line("u", url="/v1/embeddings")),
            "invalid_url",
            "url",
            "u",
            "'/v1/chat/completions'",
        ),
        (json.dumps(line("b", body="hi")), "invalid_body", "body", "b", "JSON object"),
        (
            json.dumps(line("e", body={"model": "m", "messages": []})),
            "invalid_body",
            "body.messages",
            "e",
            "messages",
        ),
        (
            json.dumps(line("t", body={**BODY, "temperature": 9})),
            "invalid_body",
            "body.temperature",
            "t",
            "temperature",
        ),
        (
            json.dumps(line("k", body={**BODY, "frobnicate": 1})),
            "invalid_body",
            "body.frobnicate",
            "k",
            "unrecognized request argument",
        ),
        (
            json.dumps(line("s", body={**BODY, "stream": True})),
            "invalid_body",
            "body.stream",
            "s",
            "cannot stream",
        ),
        # Valid JSON (escaped) that cannot be stored: the line's error, its custom_id kept
        # when it can be.
        (json.dumps(line("n\x00")), "invalid_request", "custom_id", None, "NUL"),
        (json.dumps(line("\udfff")), "invalid_request", "custom_id", None, "surrogate"),
        (
            json.dumps(
                line("c", body={**BODY, "messages": [{"role": "user", "content": "\ud800"}]})
            ),
            "invalid_request",
            "body.messages.0.content",
            "c",
            "surrogate",
        ),
        ("[" * 100_000 + "]" * 100_000, "invalid_request", "body", None, "nested"),
    ],
)
def test_a_bad_line_is_named_with_its_number_field_and_reason(
    text: str, code: str, param: str | None, custom_id: str | None, says: str
) -> None:
    error = only_error(b"\n" + text.encode() + b"\n")
    assert (error.line, error.code, error.param, error.custom_id) == (2, code, param, custom_id)
    assert error.message.startswith("line 2: ")
    assert says in error.message
    assert error.openai() == {"code": code, "line": 2, "message": error.message, "param": param}


def test_a_line_that_is_not_utf8_is_named() -> None:
    error = only_error(b'{"custom_id": "\xff"}\n')
    assert (error.line, error.code) == (1, "invalid_encoding")


def test_a_reused_custom_id_is_an_error_on_the_later_line_only() -> None:
    parsed = parse(jsonl(line("a"), line("b"), line("a")))
    assert [r.line for r in parsed.requests] == [1, 2]
    [error] = parsed.errors
    assert (error.line, error.code, error.custom_id) == (3, "duplicate_custom_id", "a")
    assert "already used on line 1" in error.message


def test_bad_lines_do_not_stop_the_good_ones() -> None:
    parsed = parse(jsonl(line("a"), "{oops", line("c", method="PUT"), line("d")))
    assert [r.custom_id for r in parsed.requests] == ["a", "d"]
    assert [(e.line, e.code) for e in parsed.errors] == [(2, "invalid_json"), (3, "invalid_method")]
    assert parsed.total == 4


def test_too_many_lines_is_413_naming_the_field() -> None:
    content = jsonl(*(line(f"r{i}") for i in range(4)))
    with pytest.raises(PayloadTooLarge) as caught:
        parse_batch_input(content, endpoint=ENDPOINT, max_lines=3, field="body")
    assert caught.value.status_code == 413
    assert caught.value.field == "body"
    assert "4 requests" in caught.value.message
    assert len(parse(content, max_lines=4).requests) == 4


def test_an_empty_file_is_a_bad_request() -> None:
    with pytest.raises(BadRequest) as caught:
        parse(b"\n  \n")
    assert caught.value.field == "input_file_id"
    assert caught.value.status_code == 400


def test_the_create_request_takes_what_the_openai_client_sends() -> None:
    body = {
        "input_file_id": "file-1",
        "endpoint": ENDPOINT,
        "completion_window": "24h",
        "metadata": {"job": "nightly"},
    }
    request = BatchCreate.parse(json.dumps(body).encode())
    assert (request.input_file_id, request.metadata) == ("file-1", {"job": "nightly"})


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"endpoint": "/v1/embeddings"}, "endpoint"),
        ({"completion_window": "1h"}, "completion_window"),
        ({"input_file_id": None}, "input_file_id"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata.k"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_a_bad_create_request_names_its_field(changes: dict[str, Any], field: str) -> None:
    body = {"input_file_id": "file-1", "endpoint": ENDPOINT, "completion_window": "24h"}
    body.update(changes)
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(BadRequest) as caught:
        BatchCreate.parse(json.dumps(body).encode())
    assert caught.value.field == field
    assert field in caught.value.message


def test_a_create_request_that_is_not_json_names_the_body() -> None:
    with pytest.raises(BadRequest) as caught:
        BatchCreate.parse(b"{nope")
    assert caught.value.field == "body"


def test_line_keys_fit_the_idempotency_column() -> None:
    assert line_key("batch_1", "r1") == "batch:batch_1:r1"
    long = line_key("batch_1", "x" * MAX_CUSTOM_ID)
    assert len(long) <= 255
    assert long.startswith("batch:batch_1:sha256:")
    assert long != line_key("batch_1", "y" * MAX_CUSTOM_ID)
