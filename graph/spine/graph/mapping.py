"""Declarative mappings from an event type to the nodes and relationships it MERGEs.

A mappings folder holds YAML files, each with a ``mappings:`` list (or one mapping)::

    mappings:
      - event: com.example.person.hired        # the CloudEvents type
        nodes:
          person:                              # an alias, used by relationships
            label: Person
            key: id                            # the property that identifies the node
            properties:                        # property: path in the event
              id: data.person.id
              name: data.person.name
          company:
            label: Company
            key: id
            properties: {id: data.company.id, name: data.company.name}
        relationships:
          - type: WORKS_AT
            from: person
            to: company
            properties: {role: data.role}
            supersedes: true                   # one current WORKS_AT per person

A node is identified by its tenant and ``uid`` = ``<Label>:<key value>``. A relationship with
``supersedes: true`` is a fact with a validity: each event makes a new one from its time, and
the one before it (same start node and type) gets ``valid_to`` = that time instead of being
removed. An event whose data lacks a node's key cannot be mapped: it is dead-lettered with the
reason. So is one whose key ends in ASCII whitespace or holds U+0001: FalkorDB's ``uid``
index does not find such a key again, so its relationships would be dropped and its node
duplicated on replay. Other missing properties are left unset.

A write's ``version`` (compared as text: the newest one wins) is its event time in epoch
milliseconds, then its dedupe id. Times from 1970 on are 15 digits; earlier ones are ``-``
(which sorts before digits) and 15 digits that grow with the time (``10**15 + ms``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from spine.events.log import ReceivedEvent
from spine.events.paths import MISSING, resolve, valid_path
from spine.graph.identifiers import PROVENANCE_PROPERTIES, Allowlist, check_identifier
from spine.platform.errors import BadRequest, ConfigurationError

__all__ = [
    "EventMapping",
    "EventWrites",
    "MappingError",
    "MappingSet",
    "NodeSpec",
    "NodeWrite",
    "RelationshipSpec",
    "RelationshipWrite",
]

logger = logging.getLogger(__name__)

_MAX_KEY_CHARS = 500
# What FalkorDB's range index drops or splits on in a string (measured with FalkorDB 4.16):
# trailing ASCII whitespace, and U+0001 anywhere. A uid with either is stored but not found.
_UNINDEXABLE_END = " \t\n\v\f\r"
_UNINDEXABLE = "\x01"
_INT64 = 2**63


class MappingError(BadRequest):
    """An event cannot be mapped (a key is missing or unusable); never worth a retry."""

    error_type = "unmappable_event"


class NodeSpec(BaseModel):
    """A node an event MERGEs: its label, the key property, and properties from paths."""

    model_config = ConfigDict(extra="forbid")

    label: str
    key: str
    properties: dict[str, str] = Field(min_length=1)

    @field_validator("label")
    @classmethod
    def _label(cls, value: str) -> str:
        return check_identifier(value, what="label")

    @field_validator("properties")
    @classmethod
    def _properties(cls, value: dict[str, str]) -> dict[str, str]:
        return _checked_properties(value)

    @model_validator(mode="after")
    def _key_is_a_property(self) -> NodeSpec:
        if self.key not in self.properties:
            raise ValueError(f"the key {self.key!r} must be one of the properties")
        return self


class RelationshipSpec(BaseModel):
    """A relationship an event MERGEs between two of its nodes."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: str
    from_: str = Field(alias="from")
    to: str
    properties: dict[str, str] = Field(default_factory=dict)
    supersedes: bool = False

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        return check_identifier(value, what="relationship type")

    @field_validator("properties")
    @classmethod
    def _properties(cls, value: dict[str, str]) -> dict[str, str]:
        return _checked_properties(value)


class EventMapping(BaseModel):
    """What one event type becomes in the graph."""

    model_config = ConfigDict(extra="forbid")

    event: str = Field(min_length=1, max_length=255)
    nodes: dict[str, NodeSpec] = Field(min_length=1)
    relationships: list[RelationshipSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ends_are_nodes(self) -> EventMapping:
        for index, rel in enumerate(self.relationships):
            for end in (rel.from_, rel.to):
                if end not in self.nodes:
                    raise ValueError(
                        f"relationships[{index}] ({rel.type}) names node {end!r}, which the "
                        f"mapping does not define (it has {', '.join(self.nodes)})"
                    )
        return self


@dataclass(slots=True, kw_only=True)
class NodeWrite:
    """A node to MERGE, with its properties and provenance."""

    tenant: str
    label: str
    uid: str
    properties: dict[str, Any]
    time: int
    version: str
    event_id: str
    source: str


@dataclass(slots=True, kw_only=True)
class RelationshipWrite:
    """A relationship to MERGE between two nodes of the same event (so the same tenant)."""

    tenant: str
    type: str
    start_label: str
    start: str
    end_label: str
    end: str
    properties: dict[str, Any]
    supersedes: bool
    time: int
    version: str
    event_id: str
    source: str


@dataclass(slots=True, kw_only=True)
class EventWrites:
    """Everything one event writes."""

    nodes: list[NodeWrite] = field(default_factory=list)
    relationships: list[RelationshipWrite] = field(default_factory=list)


class MappingSet:
    """The mappings, by event type, and the allowlist they define."""

    def __init__(
        self,
        mappings: Iterable[EventMapping] = (),
        *,
        extra_labels: Iterable[str] = (),
        extra_types: Iterable[str] = (),
    ) -> None:
        self._by_type: dict[str, EventMapping] = {}
        for mapping in mappings:
            if mapping.event in self._by_type:
                raise ConfigurationError(
                    f"two mappings for the event type {mapping.event!r}",
                    field="GENAI_KNOWLEDGE__MAPPINGS_DIR",
                )
            self._by_type[mapping.event] = mapping
        nodes = [n for m in self._by_type.values() for n in m.nodes.values()]
        rels = [r for m in self._by_type.values() for r in m.relationships]
        kinds: dict[str, bool] = {}
        for rel in rels:
            if kinds.setdefault(rel.type, rel.supersedes) != rel.supersedes:
                raise ConfigurationError(
                    f"the relationship type {rel.type!r} supersedes in one mapping and not in "
                    "another; choose one",
                    field="GENAI_KNOWLEDGE__MAPPINGS_DIR",
                )
        self.allowlist = Allowlist.of(
            labels=[*(n.label for n in nodes), *extra_labels],
            types=[*(r.type for r in rels), *extra_types],
            properties=[
                *(p for n in nodes for p in n.properties),
                *(p for r in rels for p in r.properties),
            ],
        )

    @classmethod
    def load(cls, folder: Path | None) -> MappingSet:
        """Read every ``*.yaml``/``*.yml`` file of ``folder`` (none when it is ``None``)."""
        if folder is None:
            return cls()
        if not folder.is_dir():
            raise ConfigurationError(
                f"the mappings folder {folder} does not exist",
                field="GENAI_KNOWLEDGE__MAPPINGS_DIR",
            )
        mappings: list[EventMapping] = []
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            mappings.extend(_read(path))
        found = cls(mappings)
        logger.info("loaded %d event mappings from %s", len(found), folder)
        return found

    def __len__(self) -> int:
        return len(self._by_type)

    def get(self, event_type: str) -> EventMapping | None:
        """Return the mapping of an event type, if there is one."""
        return self._by_type.get(event_type)

    def labels_and_keys(self) -> dict[str, set[str]]:
        """Return each label with the key properties mappings give it (for indexes)."""
        found: dict[str, set[str]] = {}
        for mapping in self._by_type.values():
            for node in mapping.nodes.values():
                found.setdefault(node.label, set()).add(node.key)
        return found

    def node_properties(self, label: str) -> list[str]:
        """Return the properties mappings give nodes of ``label``."""
        names = {
            prop
            for mapping in self._by_type.values()
            for node in mapping.nodes.values()
            if node.label == label
            for prop in node.properties
        }
        return sorted(names)

    def plan(self, received: ReceivedEvent, *, time_ms: int) -> EventWrites | None:
        """Return what an event writes, or ``None`` when its type has no mapping.

        Raises:
            MappingError: A node's key is missing from the event or cannot be a key.
        """
        mapping = self._by_type.get(received.event.type)
        if mapping is None:
            return None
        event = received.event
        version = f"{_time_text(time_ms)}:{received.key[:16]}"
        writes = EventWrites()
        uids: dict[str, tuple[str, str]] = {}
        for alias, spec in mapping.nodes.items():
            key_path = spec.properties[spec.key]
            key_value = resolve(event, key_path)
            uid = f"{spec.label}:{_key_text(key_value, alias=alias, spec=spec, path=key_path)}"
            uids[alias] = (spec.label, uid)
            writes.nodes.append(
                NodeWrite(
                    tenant=received.tenant,
                    label=spec.label,
                    uid=uid,
                    properties=_values(event, spec.properties),
                    time=time_ms,
                    version=version,
                    event_id=event.id,
                    source=event.source,
                )
            )
        for rel in mapping.relationships:
            start_label, start = uids[rel.from_]
            end_label, end = uids[rel.to]
            writes.relationships.append(
                RelationshipWrite(
                    tenant=received.tenant,
                    type=rel.type,
                    start_label=start_label,
                    start=start,
                    end_label=end_label,
                    end=end,
                    properties=_values(event, rel.properties),
                    supersedes=rel.supersedes,
                    time=time_ms,
                    version=version,
                    event_id=event.id,
                    source=event.source,
                )
            )
        return writes


def _read(path: Path) -> list[EventMapping]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigurationError(
            f"cannot read the mapping file {path}: {exc}", field="GENAI_KNOWLEDGE__MAPPINGS_DIR"
        ) from exc
    items = raw.get("mappings", [raw]) if isinstance(raw, dict) else raw
    if not isinstance(items, list):
        raise ConfigurationError(
            f"{path} must hold a 'mappings' list", field="GENAI_KNOWLEDGE__MAPPINGS_DIR"
        )
    found: list[EventMapping] = []
    for index, item in enumerate(items):
        try:
            found.append(EventMapping.model_validate(item))
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"])
            raise ConfigurationError(
                f"{path}: mappings[{index}]{'.' + where if where else ''}: {error['msg']}",
                field="GENAI_KNOWLEDGE__MAPPINGS_DIR",
            ) from exc
    return found


def _checked_properties(value: dict[str, str]) -> dict[str, str]:
    for name, path in value.items():
        check_identifier(name, what="property")
        if name in PROVENANCE_PROPERTIES:
            raise ValueError(f"the property {name!r} is written by ingestion itself")
        if not isinstance(path, str) or not valid_path(path):
            raise ValueError(f"the path of {name!r} must look like data.a.b, not {path!r}")
    return value


def _key_text(value: Any, *, alias: str, spec: NodeSpec, path: str) -> str:
    if value is MISSING:
        raise MappingError(
            f"{path} is missing: it is the key ({spec.key}) of node {alias!r} ({spec.label})",
            field=path,
        )
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MappingError(
            f"{path} must be a string or an integer to key node {alias!r} ({spec.label}), "
            f"not {type(value).__name__}",
            field=path,
        )
    text = str(value)
    if not text.strip() or len(text) > _MAX_KEY_CHARS:
        raise MappingError(
            f"{path} must be a non-empty key of at most {_MAX_KEY_CHARS} characters "
            f"(node {alias!r}, {spec.label})",
            field=path,
        )
    if text.endswith(tuple(_UNINDEXABLE_END)) or _UNINDEXABLE in text:
        raise MappingError(
            f"{path} cannot key node {alias!r} ({spec.label}): a key may not end in whitespace "
            "or hold the character U+0001 (the graph's index would not find it again)",
            field=path,
        )
    return text


def _time_text(time_ms: int) -> str:
    """Return epoch milliseconds as text whose order is time order, before 1970 too."""
    if time_ms >= 0:
        return f"{time_ms:015d}"
    return f"-{10**15 + time_ms:015d}"


def _values(event: Any, paths: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, path in paths.items():
        value = resolve(event, path)
        if value is not MISSING:
            values[name] = _storable(value)
    return values


def _storable(value: Any) -> Any:
    """Return a value a graph property can hold: a scalar, a list of scalars, or JSON text."""
    if isinstance(value, bool | float | str):
        return value
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value) | all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False)
