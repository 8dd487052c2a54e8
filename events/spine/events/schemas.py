"""JSON Schemas that event types may register, checked against each event's ``data``.

A schemas folder holds one file per event type: ``<type>.json``, ``<type>.yaml`` or
``<type>.yml`` (``com.example.person.hired.json``), each a JSON Schema of the event's data. A
schema may name its type itself with ``x-event-type`` instead. A type without a schema accepts
any data.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator

from spine.events.cloudevent import CloudEvent, InvalidEvent
from spine.platform.errors import ConfigurationError

__all__ = ["EventSchemas"]

logger = logging.getLogger(__name__)

_SUFFIXES = (".json", ".yaml", ".yml")
_REQUIRED = re.compile(r"^'([^']+)' is a required property")


class EventSchemas:
    """The registered schemas, by event type."""

    def __init__(self, schemas: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self._validators: dict[str, Validator] = {}
        for event_type, schema in (schemas or {}).items():
            self.register(event_type, schema)

    @classmethod
    def load(cls, folder: Path | None) -> EventSchemas:
        """Read every schema file of ``folder`` (none when it is ``None``)."""
        registry = cls()
        if folder is None:
            return registry
        if not folder.is_dir():
            raise ConfigurationError(
                f"the event schemas folder {folder} does not exist",
                field="GENAI_KNOWLEDGE__SCHEMAS_DIR",
            )
        for path in sorted(folder.iterdir()):
            if path.suffix not in _SUFFIXES or not path.is_file():
                continue
            try:
                text = path.read_text()
                schema = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
            except (OSError, ValueError, yaml.YAMLError) as exc:
                raise ConfigurationError(
                    f"cannot read the event schema {path}: {exc}",
                    field="GENAI_KNOWLEDGE__SCHEMAS_DIR",
                ) from exc
            if not isinstance(schema, dict):
                raise ConfigurationError(
                    f"{path} is not a JSON Schema object", field="GENAI_KNOWLEDGE__SCHEMAS_DIR"
                )
            event_type = str(schema.pop("x-event-type", None) or path.stem)
            try:
                registry.register(event_type, schema)
            except ValueError as exc:
                raise ConfigurationError(
                    f"{path}: {exc}", field="GENAI_KNOWLEDGE__SCHEMAS_DIR"
                ) from exc
        logger.info("loaded %d event schemas from %s", len(registry), folder)
        return registry

    def register(self, event_type: str, schema: Mapping[str, Any]) -> None:
        """Register (or replace) the schema of an event type."""
        validator_class = jsonschema.validators.validator_for(schema)
        try:
            validator_class.check_schema(dict(schema))
        except SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema for {event_type!r}: {exc.message}") from exc
        self._validators[event_type] = validator_class(dict(schema))

    def __len__(self) -> int:
        return len(self._validators)

    def types(self) -> list[str]:
        """Return the event types that have a schema."""
        return sorted(self._validators)

    def check(self, event: CloudEvent, *, where: str = "") -> None:
        """Raise :class:`InvalidEvent` naming the first place the data breaks the schema."""
        validator = self._validators.get(event.type)
        if validator is None:
            return
        errors = sorted(validator.iter_errors(event.data), key=lambda e: list(e.absolute_path))
        if not errors:
            return
        error = errors[0]
        path = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path
        )
        if error.validator == "required":
            # jsonschema puts a missing property at its parent; name the property itself.
            missing = _REQUIRED.match(error.message)
            if missing:
                path += f".{missing.group(1)}"
        field = f"{where + '.' if where else ''}data{path}"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InvalidEvent(f"{field}: {error.message} (schema of {event.type}){more}", field=field)
