"""What a batch is made from: the create request, and its JSONL read line by line.

``POST /v1/batches`` names an uploaded file, the endpoint and the completion window
(:class:`BatchCreate`); :func:`parse_batch_input` reads the file.

A line reads ``{"custom_id": "...", "method": "POST", "url": "/v1/chat/completions",
"body": {...}}``. A line that cannot run (not JSON, no ``custom_id``, a ``custom_id`` already
used, another method or URL, a body the gateway would refuse) becomes a :class:`LineError`
naming its line number, its ``custom_id`` when it has one, the parameter at fault and why; the
other lines run. Blank lines are skipped; line numbers count every line of the file from 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError

from spine.platform.errors import BadRequest, PayloadTooLarge
from spine.platform.inputs import InvalidInput, load_json, place, text_problem, where_in
from spine.platform.models.openai_errors import GatewayError
from spine.platform.models.openai_wire import ChatCompletionRequest
from spine.platform.settings import BatchSettings

__all__ = [
    "CHAT_COMPLETIONS",
    "COMPLETION_WINDOW",
    "ENDPOINTS",
    "MAX_CUSTOM_ID",
    "BatchCreate",
    "BatchInput",
    "BatchLimits",
    "BatchRequest",
    "LineError",
    "check_endpoint",
    "check_window",
    "parse_batch_input",
]

CHAT_COMPLETIONS = "/v1/chat/completions"
ENDPOINTS = frozenset({CHAT_COMPLETIONS})
COMPLETION_WINDOW = "24h"

MAX_CUSTOM_ID = 512
"""The longest ``custom_id`` accepted, in characters."""


BatchLimits = BatchSettings
"""How large a batch may be (``GENAI_BATCHES__*``); over a limit is a 413."""


MetadataKey = Annotated[str, StringConstraints(max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]


class BatchCreate(BaseModel):
    """The body of ``POST /v1/batches``, as the official OpenAI clients send it."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: str
    completion_window: str
    metadata: dict[MetadataKey, MetadataValue] | None = Field(None, max_length=16)
    # Accepted for compatibility; files here are kept until deleted.
    output_expires_after: dict[str, Any] | None = None

    @field_validator("endpoint")
    @classmethod
    def _supported_endpoint(cls, value: str) -> str:
        check_endpoint(value)
        return value

    @field_validator("completion_window")
    @classmethod
    def _supported_window(cls, value: str) -> str:
        check_window(value)
        return value

    @classmethod
    def parse(cls, raw: bytes) -> BatchCreate:
        """Read and validate a JSON body; problems are :class:`BadRequest` naming the field."""
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise BadRequest(f"the body is not valid JSON ({exc})", field="body") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object", field="body")
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            field, key = where_in(first["loc"]) if first["loc"] else ("body", None)
            raise BadRequest(f"invalid {place(field, key)}: {first['msg']}", field=field) from None


def check_endpoint(endpoint: str) -> None:
    """Refuse an endpoint batches cannot run."""
    if endpoint not in ENDPOINTS:
        raise PydanticCustomError(
            "unsupported_endpoint",
            "'{endpoint}' is not supported; batches run {supported}",
            {"endpoint": endpoint, "supported": ", ".join(sorted(ENDPOINTS))},
        )


def check_window(window: str) -> None:
    """Refuse a completion window other than 24h (OpenAI's only one)."""
    if window != COMPLETION_WINDOW:
        raise PydanticCustomError(
            "unsupported_window", "only '24h' is supported, got '{window}'", {"window": window}
        )


@dataclass(slots=True, kw_only=True)
class BatchRequest:
    """A line that can run: its number, its ``custom_id`` and the request body."""

    line: int
    custom_id: str
    body: dict[str, Any]


@dataclass(slots=True, kw_only=True)
class LineError:
    """A line that cannot run, and why."""

    line: int
    custom_id: str | None
    code: str
    message: str
    param: str | None = None

    def openai(self) -> dict[str, Any]:
        """Render as OpenAI's batch error object (``code``, ``line``, ``message``, ``param``)."""
        return {"code": self.code, "line": self.line, "message": self.message, "param": self.param}


@dataclass(slots=True, kw_only=True)
class BatchInput:
    """What an input file holds: the lines that can run and those that cannot."""

    requests: list[BatchRequest] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Count the requests in the file, good and bad."""
        return len(self.requests) + len(self.errors)

    @property
    def model(self) -> str | None:
        """The model every runnable line names, or None when they name several (or none)."""
        models = {str(request.body.get("model")) for request in self.requests}
        return models.pop() if len(models) == 1 else None


def parse_batch_input(
    content: bytes, *, endpoint: str, max_lines: int, field: str = "input_file_id"
) -> BatchInput:
    """Read a batch input file.

    Args:
        content: The file's bytes (UTF-8 JSONL).
        endpoint: The batch's endpoint; every line's ``url`` must name it.
        max_lines: The most requests a file may hold.
        field: The request field that carried the file, named in errors about the whole file.

    Raises:
        PayloadTooLarge: The file holds more than ``max_lines`` requests.
        BadRequest: The file holds no request at all.
    """
    numbered = [
        (number, raw.rstrip(b"\r"))
        for number, raw in enumerate(content.split(b"\n"), start=1)
        if raw.strip()
    ]
    if len(numbered) > max_lines:
        raise PayloadTooLarge(
            f"the input file holds {len(numbered)} requests; a batch takes at most {max_lines}",
            field=field,
        )
    if not numbered:
        raise BadRequest("the input file holds no requests (it is empty)", field=field)
    parsed = BatchInput()
    first_seen: dict[str, int] = {}
    for number, raw in numbered:
        outcome = _read_line(number, raw, endpoint, first_seen)
        if isinstance(outcome, LineError):
            parsed.errors.append(outcome)
        else:
            parsed.requests.append(outcome)
    return parsed


def _read_line(
    number: int, raw: bytes, endpoint: str, first_seen: dict[str, int]
) -> BatchRequest | LineError:
    def error(code: str, message: str, param: str | None = None) -> LineError:
        return LineError(
            line=number,
            custom_id=custom_id,
            code=code,
            message=f"line {number}: {message}",
            param=param,
        )

    custom_id: str | None = None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return error("invalid_encoding", f"not UTF-8 ({exc.reason} at byte {exc.start})")
    try:
        # Bounded in depth, and checked as every request body is: a line holding what cannot
        # be stored (an escaped NUL in its custom_id) is that line's error, not the batch's 500.
        line = load_json(text, field="")
    except InvalidInput as exc:
        custom_id = _custom_id_of(text)
        return error("invalid_request", exc.message, exc.field)
    except ValueError as exc:
        return error("invalid_json", f"not valid JSON ({exc})")
    if not isinstance(line, dict):
        return error("invalid_request", "a line must be a JSON object")
    given = line.get("custom_id")
    if not isinstance(given, str) or not given:
        what = "is missing" if given is None else "must be a non-empty string"
        return error("missing_custom_id", f"custom_id {what}", "custom_id")
    custom_id = given
    if len(custom_id) > MAX_CUSTOM_ID:
        return error(
            "invalid_custom_id",
            f"custom_id is longer than {MAX_CUSTOM_ID} characters",
            "custom_id",
        )
    if custom_id in first_seen:
        return error(
            "duplicate_custom_id",
            f"custom_id {custom_id!r} is already used on line {first_seen[custom_id]}",
            "custom_id",
        )
    first_seen[custom_id] = number
    if line.get("method") != "POST":
        return error("invalid_method", "method must be 'POST'", "method")
    if line.get("url") != endpoint:
        return error(
            "invalid_url",
            f"url must be {endpoint!r}, the batch's endpoint (got {line.get('url')!r})",
            "url",
        )
    body = line.get("body")
    if not isinstance(body, dict):
        return error("invalid_body", "body must be a JSON object", "body")
    try:
        request = ChatCompletionRequest.from_body(body)
    except GatewayError as exc:
        param = exc.body.get("param")
        return error("invalid_body", str(exc), f"body.{param}" if param else "body")
    if request.stream:
        return error("invalid_body", "a batch request cannot stream", "body.stream")
    return BatchRequest(line=number, custom_id=custom_id, body=body)


def _custom_id_of(text: str) -> str | None:
    """The custom_id of a line refused for another of its values, when it can be kept."""
    try:
        line = json.loads(text)
    except (ValueError, RecursionError):
        return None
    given = line.get("custom_id") if isinstance(line, dict) else None
    if not isinstance(given, str) or not given or len(given) > MAX_CUSTOM_ID:
        return None
    return given if text_problem(given) is None else None
