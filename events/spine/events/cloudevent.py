"""CloudEvents 1.0: the envelope, its three HTTP modes, and the id that deduplicates it.

Events reach the platform as CloudEvents over HTTP (structured ``application/cloudevents+json``,
batch ``application/cloudevents-batch+json``, or binary mode with ``ce-*`` headers) or straight
on NATS (on ``spine.events.<tenant>.<type>``, structured JSON or binary mode with ``ce-*``
headers). Each is checked here into a
:class:`CloudEvent`; a malformed one raises :class:`InvalidEvent` naming the attribute.

The envelope is parsed here rather than with the ``cloudevents`` SDK: the SDK checks the
required attributes but not their shapes (an empty ``id``, a ``time`` without a zone, an
extension named ``Tenant``) and its errors do not name one attribute, which a 400 must.
The tests publish with the SDK, so both agree on the wire format.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import unquote

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from spine.platform.errors import BadRequest
from spine.platform.inputs import (
    MAX_JSON_DEPTH,
    InvalidInput,
    StoredJson,
    StoredMoment,
    StoredText,
    json_problem,
    load_json,
)

__all__ = [
    "BATCH_CONTENT_TYPE",
    "STRUCTURED_CONTENT_TYPE",
    "TENANT_ATTRIBUTE",
    "CloudEvent",
    "InvalidEvent",
    "dedupe_id",
    "parse_batch",
    "parse_binary",
    "parse_structured",
    "same_json",
]

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
TENANT_ATTRIBUTE = "spinetenant"
"""The extension attribute that names an event's tenant on NATS (and in the stream)."""

_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
_CORE = frozenset(
    {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema"}
)
_MAX_BATCH = 1000
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_RFC3339_START = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Error types whose message already says what is wrong with the value.
_SELF_EXPLAINED = frozenset(
    {
        "datetime_out_of_range",
        "unstorable_text",
        "unstorable_json",
        "control_character",
        "not_rfc3339",
        "not_base64",
    }
)


class InvalidEvent(BadRequest):
    """A CloudEvent is malformed or does not match its type's schema; ``field`` names where."""

    error_type = "invalid_event"


class CloudEvent(BaseModel):
    """One CloudEvents 1.0 event: the context attributes, extensions and data.

    Extension attributes are kept as extra fields (lower-case letters and digits, at most 20
    characters, string, integer or boolean values). ``data`` is JSON; binary data travels as
    ``data_base64``. ``id`` and ``source`` hold no control characters: they make the dedupe id,
    whose hash input separates them with one.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: Literal["1.0"]
    id: StoredText = Field(min_length=1, max_length=500)
    source: StoredText = Field(min_length=1, max_length=1000)
    type: StoredText = Field(min_length=1, max_length=255)
    subject: StoredText | None = Field(None, min_length=1, max_length=1000)
    time: StoredMoment | None = None
    datacontenttype: StoredText | None = Field(None, max_length=255)
    dataschema: StoredText | None = Field(None, min_length=1, max_length=1000)
    data: Annotated[Any, StoredJson] = None
    data_base64: StoredText | None = None

    @field_validator("id", "source")
    @classmethod
    def _no_control_characters(cls, value: str) -> str:
        if _CONTROL.search(value):
            raise PydanticCustomError(
                "control_character", "must not contain control characters (U+0000-U+001F, U+007F)"
            )
        return value

    @field_validator("time", mode="before")
    @classmethod
    def _time_is_text(cls, value: Any) -> Any:
        # Left alone, pydantic reads a number (or a string of digits) as Unix time.
        if isinstance(value, datetime) or value is None:
            return value
        if not isinstance(value, str) or not _RFC3339_START.match(value):
            raise PydanticCustomError(
                "not_rfc3339",
                "must be an RFC 3339 time with a zone, such as 2026-01-01T09:30:00Z, not {value}",
                {"value": repr(value)[:80]},
            )
        return value

    @field_validator("data_base64")
    @classmethod
    def _is_base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise PydanticCustomError("not_base64", "is not valid base64") from None
        return value

    @model_validator(mode="after")
    def _check_extensions(self) -> CloudEvent:
        for name, value in (self.model_extra or {}).items():
            if not _EXTENSION_NAME.match(name):
                raise ValueError(
                    f"extension attribute {name!r} must be 1-20 lower-case letters or digits"
                )
            if value is not None and not isinstance(value, str | int | bool):
                # CloudEvents' types are string, integer, boolean (and URI, timestamp,
                # binary as strings): no fractions, no objects.
                raise ValueError(
                    f"extension attribute {name!r} must be a string, an integer or a boolean"
                )
            problem = json_problem(value)
            if problem is not None:
                raise ValueError(f"extension attribute {name!r} {problem.reason}")
        if self.data is not None and self.data_base64 is not None:
            raise ValueError("an event has data or data_base64, not both")
        return self

    @property
    def extensions(self) -> dict[str, Any]:
        """Return the extension attributes."""
        return dict(self.model_extra or {})

    @property
    def tenant(self) -> str | None:
        """Return the tenant the event names (the ``spinetenant`` extension), if any."""
        value = (self.model_extra or {}).get(TENANT_ATTRIBUTE)
        return str(value) if value is not None else None

    def attribute(self, name: str) -> Any:
        """Return a context attribute or extension by name (``None`` when absent)."""
        if name in _CORE or name in ("data", "data_base64"):
            return getattr(self, name)
        return (self.model_extra or {}).get(name)

    def with_attributes(self, **changes: Any) -> CloudEvent:
        """Return a copy with attributes (or extensions) set, checked again."""
        return CloudEvent.model_validate({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Return the structured-mode JSON object (absent attributes left out)."""
        return self.model_dump(mode="json", exclude_none=True)

    def to_json(self) -> bytes:
        """Return the event in structured mode, as UTF-8 JSON."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":")).encode()


def dedupe_id(tenant: str, source: str, event_id: str) -> str:
    """Return the id that deduplicates an event: its ``Nats-Msg-Id`` and its row's key.

    CloudEvents ids are unique per source; scoping them by tenant too keeps two tenants (or
    two sources) that pick the same id from dropping each other's events.
    """
    raw = "\x1f".join((tenant, source, event_id)).encode()
    return hashlib.sha256(raw).hexdigest()


def same_json(a: object, b: object) -> bool:
    """Tell whether two decoded JSON values are the same value.

    Numbers compare by value: an envelope read back from PostgreSQL may hold an integer where
    the event had a float (``1e300``), or ``0.0`` for ``-0.0``.
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a) == float(b) if isinstance(a, float) or isinstance(b, float) else a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def parse_structured(
    body: bytes | str | Mapping[str, Any], *, where: str = "", max_depth: int = MAX_JSON_DEPTH
) -> CloudEvent:
    """Check one event in structured mode (a JSON object), nested at most ``max_depth`` deep."""
    raw = _json(body, where or "body", max_depth) if isinstance(body, bytes | str) else body
    if not isinstance(raw, Mapping):
        raise InvalidEvent(
            f"{where or 'the body'} must be a JSON object (a CloudEvent)", field=where or "body"
        )
    return _validate(dict(raw), where)


def parse_batch(body: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> list[CloudEvent]:
    """Check a batch: a JSON array of structured events (at most 1000)."""
    raw = _json(body, "body", max_depth)
    if not isinstance(raw, list):
        raise InvalidEvent("a batch must be a JSON array of CloudEvents", field="body")
    if not raw:
        raise InvalidEvent("the batch is empty", field="body")
    if len(raw) > _MAX_BATCH:
        raise InvalidEvent(f"a batch holds at most {_MAX_BATCH} events", field="body")
    return [parse_structured(item, where=f"[{index}]") for index, item in enumerate(raw)]


def parse_binary(
    headers: Mapping[str, str], body: bytes, *, max_depth: int = MAX_JSON_DEPTH
) -> CloudEvent:
    """Check an event in binary mode: attributes in ``ce-*`` headers, the data in the body.

    Header values are percent-decoded (CloudEvents HTTP binding 3.1.3.2); one that is not
    valid percent-encoded UTF-8 is refused rather than repaired, since two different ids would
    be repaired into one. A JSON content type (``application/json``, ``*+json``) makes the body
    JSON data; any other is kept as ``data_base64``.
    """
    attributes: dict[str, Any] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith("ce-") and len(lower) > 3:
            attributes[lower[3:]] = _percent_decoded(value, lower[3:])
    if "specversion" not in attributes:
        raise InvalidEvent(
            "binary mode needs the ce-specversion header (and ce-id, ce-source, ce-type)",
            field="specversion",
        )
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    if content_type:
        attributes["datacontenttype"] = content_type
    if body:
        if _is_json(content_type):
            attributes["data"] = _json(body, "data", max_depth)
        else:
            attributes["data_base64"] = base64.b64encode(body).decode()
    return _validate(attributes, "")


def _percent_decoded(value: str, attribute: str) -> str:
    problem = None
    if _BAD_PERCENT.search(value):
        problem = "has a % not followed by two hex digits"
    else:
        try:
            return unquote(value, errors="strict")
        except UnicodeDecodeError:
            problem = "is not percent-encoded UTF-8"
    raise InvalidEvent(f"{attribute}: the ce-{attribute} header {problem}", field=attribute)


def _validate(raw: dict[str, Any], where: str) -> CloudEvent:
    if raw.get("specversion") is None:
        raise InvalidEvent(
            _named(where, "specversion", "is required"), field=_at(where, "specversion")
        )
    try:
        return CloudEvent.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = [str(part) for part in error["loc"]]
        attribute = loc[0] if loc else "body"
        message = error["msg"]
        if error["type"] == "missing":
            message = "is required"
        elif attribute == "specversion":
            message = f"must be '1.0', not {raw.get('specversion')!r}"
        elif error["type"] in _SELF_EXPLAINED:
            pass
        elif error["type"] in ("too_short", "string_too_short"):
            optional = attribute in ("subject", "dataschema")
            message = "must not be empty" + (" (leave it out instead)" if optional else "")
        elif error["type"] in ("too_long", "string_too_long"):
            message = f"is too long: at most {error.get('ctx', {}).get('max_length')} characters"
        elif attribute == "time":
            message = f"must be an RFC 3339 time with a zone ({error['msg']})"
        if not loc:  # a model-level check: the message names the attribute itself
            raise InvalidEvent(
                f"{where + ': ' if where else ''}{message.removeprefix('Value error, ')}",
                field=_at(where, _attribute_in(message)),
            ) from exc
        raise InvalidEvent(_named(where, attribute, message), field=_at(where, attribute)) from exc


def _attribute_in(message: str) -> str:
    found = re.search(r"attribute '([^']+)'", message)
    if found:
        return found.group(1)
    return "data" if "data" in message else "body"


def _named(where: str, attribute: str, message: str) -> str:
    return f"{where + '.' if where else ''}{attribute}: {message}"


def _at(where: str, attribute: str) -> str:
    return f"{where}.{attribute}" if where else attribute


def _json(body: bytes | str, field: str, max_depth: int) -> Any:
    try:
        return load_json(body, max_depth=max_depth, field="" if field == "body" else field)
    except InvalidInput as exc:
        # A batch's events are "[0]", "[1]", ... in the names of this module's errors.
        name = re.sub(r"^(\d+)(\.|$)", r"[\1]\2", exc.field or field)
        raise InvalidEvent(exc.message.replace(exc.field or "", name, 1), field=name) from None
    except ValueError as exc:
        raise InvalidEvent(f"{field} is not valid JSON: {exc}", field=field) from exc


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return True  # binary mode without a content type: JSON is the common case
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json") or media == "text/json"


def event_time_ms(event: CloudEvent, fallback: datetime) -> int:
    """Return the event's time (or ``fallback``) in milliseconds since the epoch."""
    return int((event.time or fallback).timestamp() * 1000)
