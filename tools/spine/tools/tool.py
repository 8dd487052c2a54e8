"""What a tool is: a name, a description, typed arguments, a timeout, an effect class, a handler.

A tool is declared once, as a :class:`Tool`. Its arguments are an :class:`ArgumentSchema`: the
JSON schema the model sees, and the validation that turns the model's raw arguments into what
the handler takes. Built-in tools use a pydantic model (:class:`ModelArguments`); tools from MCP
servers bring a JSON schema (:class:`JsonSchemaArguments`).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeAlias, TypeVar

import jsonschema
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ValidationError

from spine.platform.errors import BadRequest, RunFailure

__all__ = [
    "TOOL_NAME",
    "ArgumentProblem",
    "ArgumentSchema",
    "ArgumentsInvalid",
    "Effect",
    "JsonSchemaArguments",
    "ModelArguments",
    "Tool",
    "ToolContext",
    "ToolFailure",
    "ToolHandler",
    "ToolOutput",
]

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""The names OpenAI's ``tools`` accept, and so the names every tool here must have."""

Effect: TypeAlias = Literal["read", "write", "external"]
"""What running a tool may change: nothing, our own state, or the world outside the platform."""

ToolOutput: TypeAlias = str | BaseModel | Mapping[str, Any] | list[Any] | int | float | None
"""What a handler may return; the registry renders it as the text the model sees."""

A = TypeVar("A")
A_co = TypeVar("A_co", covariant=True)
M = TypeVar("M", bound=BaseModel)


class ToolFailure(RunFailure):
    """A tool could not do what was asked; the message is what the model is told.

    ``retryable`` says whether the same call may succeed later (a service that is down), so the
    caller can tell a task-level retry from a mistake the model should correct.
    """

    error_type = "tool_failed"

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True, slots=True, kw_only=True)
class ArgumentProblem:
    """One reason the arguments were rejected: where, and why."""

    field: str
    message: str


class ArgumentsInvalid(BadRequest):
    """The arguments do not match the tool's schema."""

    error_type = "invalid_arguments"

    def __init__(self, problems: list[ArgumentProblem]) -> None:
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))
        self.problems = problems


class ArgumentSchema(Protocol[A_co]):
    """The arguments of a tool: the schema the model sees and how raw arguments are checked."""

    @property
    def json_schema(self) -> dict[str, Any]:
        """Return the JSON schema of the arguments (an object schema)."""
        ...

    def validate(self, raw: Mapping[str, Any]) -> A_co:
        """Return the validated arguments, or raise :class:`ArgumentsInvalid`."""
        ...


class ModelArguments(Generic[M]):
    """Arguments declared as a pydantic model; its JSON schema is what the model sees."""

    def __init__(self, model: type[M]) -> None:
        self.model = model
        schema = model.model_json_schema()
        schema.pop("title", None)
        self._schema = schema

    @property
    def json_schema(self) -> dict[str, Any]:
        """Return the model's JSON schema, without its title."""
        return self._schema

    def validate(self, raw: Mapping[str, Any]) -> M:
        """Validate with pydantic; each error names its field."""
        try:
            return self.model.model_validate(raw)
        except ValidationError as exc:
            raise ArgumentsInvalid(
                [
                    ArgumentProblem(
                        field=".".join(str(p) for p in error["loc"]) or "(arguments)",
                        message=error["msg"],
                    )
                    for error in exc.errors()
                ]
            ) from exc


class JsonSchemaArguments:
    """Arguments declared as a JSON schema (MCP tools); checked with ``jsonschema``."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self._schema = dict(schema)
        self._schema.setdefault("type", "object")
        validator_class = jsonschema.validators.validator_for(self._schema)
        try:
            validator_class.check_schema(self._schema)
        except SchemaError as exc:
            raise ValueError(f"not a valid JSON schema: {exc.message}") from exc
        self._validator = validator_class(self._schema)

    @property
    def json_schema(self) -> dict[str, Any]:
        """Return the schema as given."""
        return self._schema

    def validate(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Return the arguments unchanged when they match; name every mismatch otherwise."""
        errors = sorted(self._validator.iter_errors(dict(raw)), key=lambda e: list(e.path))
        if errors:
            raise ArgumentsInvalid(
                [
                    ArgumentProblem(
                        field=".".join(str(p) for p in error.absolute_path) or "(arguments)",
                        message=error.message,
                    )
                    for error in errors[:20]
                ]
            )
        return dict(raw)


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolContext:
    """Who is calling a tool, and from where: a task's step, or nothing at all.

    ``call_index`` tells apart the calls one model response asks for. ``idempotency_key`` is
    filled in by the registry for tools with external effects: the same task, step and call index
    give the same key, so a step replayed after a crash is deduplicated downstream.
    """

    tenant: str
    agent: str | None = None
    task_id: str | None = None
    step: int = 0
    call_index: int = 0
    idempotency_key: str | None = None

    def derived_idempotency_key(self) -> str:
        """Return the key of this call: stable within a task, unique outside of one."""
        if self.task_id is None:
            return f"call-{uuid.uuid4().hex}"
        return f"{self.task_id}.{self.step}.{self.call_index}"


ToolHandler: TypeAlias = Callable[[A, ToolContext], Awaitable[ToolOutput]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Tool(Generic[A]):
    """A tool as the registry knows it.

    ``timeout`` bounds one run, in seconds; ``max_result_chars`` caps the text the model gets
    back (``None``: the registry's default). ``source`` says where the tool comes from
    (``builtin`` or ``mcp:<server>``).
    """

    name: str
    description: str
    arguments: ArgumentSchema[A]
    handler: ToolHandler[A]
    timeout: float = 30.0
    effect: Effect = "read"
    needs_approval: bool = False
    max_result_chars: int | None = None
    source: str = "builtin"

    def __post_init__(self) -> None:
        if not TOOL_NAME.match(self.name):
            raise ValueError(f"tool name {self.name!r} must match {TOOL_NAME.pattern}")
        if self.timeout <= 0:
            raise ValueError(f"tool {self.name!r}: timeout must be positive")

    @property
    def parameters(self) -> dict[str, Any]:
        """Return the JSON schema of the arguments."""
        return self.arguments.json_schema

    def openai_schema(self) -> dict[str, Any]:
        """Render the tool as an entry of OpenAI's ``tools`` list."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }
