"""Declarative agents: what a tool-using agent is, read from YAML files.

A definition names the agent, its instructions, the tools it may use, how it picks models, and
its limits. The shipped ones live beside this module (``shipped/*.yaml``); an operator adds
or overrides agents with files in ``GENAI_AGENTS_DIR``::

    name: researcher
    description: Answers questions by fetching pages.
    instructions: |
      You research questions. Use http_fetch to read pages ...
    tools: [http_fetch, calculator]
    model: {strategy: quality}           # or {models: [gpt-4o, llama3.2]}
    max_steps: 8
    max_cost: "0.50"                     # USD for the whole task
    timeout: 300                         # seconds from the task's start
    approval_timeout: 3600               # seconds a paused call waits for a person
    output_schema: {type: object, ...}   # optional: the final answer must be this JSON
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, SchemaError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from spine.platform.errors import ConfigurationError
from spine.platform.settings import RoutingStrategy

__all__ = ["SHIPPED_DEFINITIONS", "AgentDefinition", "ModelPolicy", "load_definitions"]

SHIPPED_DEFINITIONS = Path(__file__).with_name("shipped")


class ModelPolicy(BaseModel):
    """How an agent's model calls are routed: a strategy, or models named in order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: RoutingStrategy | None = None
    models: list[str] = Field(default_factory=list)
    min_quality: float | None = Field(None, ge=0, le=1)
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)

    def params(self) -> dict[str, Any]:
        """The router parameters of each call (the first listed model is named)."""
        params: dict[str, Any] = {
            "strategy": self.strategy,
            "min_quality": self.min_quality,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        return {name: value for name, value in params.items() if value is not None}


class AgentDefinition(BaseModel):
    """One declarative agent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = Field(min_length=1)
    instructions: str = Field(min_length=1)
    tools: list[str] = Field(default_factory=list)
    model: ModelPolicy = Field(default_factory=ModelPolicy)
    max_steps: int = Field(8, ge=1, le=100)
    max_cost: Decimal | None = Field(None, ge=0)
    timeout: float | None = Field(None, gt=0)
    approval_timeout: float = Field(3600, gt=0)
    output_schema: dict[str, Any] | None = None

    @field_validator("output_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                Draft202012Validator.check_schema(value)
            except SchemaError as exc:
                raise ValueError(f"not a JSON schema: {exc.message}") from None
        return value


def load_definitions(*folders: Path | None) -> list[AgentDefinition]:
    """Read every ``*.yaml`` file of the folders; a later folder's agent replaces an earlier one.

    Raises:
        ConfigurationError: A file is not YAML or not a valid definition (the file is named).
    """
    found: dict[str, AgentDefinition] = {}
    for folder in folders:
        if folder is None:
            continue
        if not folder.is_dir():
            raise ConfigurationError(f"agents folder {folder} does not exist", field="agents_dir")
        for path in sorted(folder.glob("*.y*ml")):
            definition = _read(path)
            found[definition.name] = definition
    return list(found.values())


def _read(path: Path) -> AgentDefinition:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return AgentDefinition.model_validate(data)
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"agent file {path} is not valid YAML: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(file)"
        raise ConfigurationError(f"agent file {path}: {where}: {first['msg']}") from None
