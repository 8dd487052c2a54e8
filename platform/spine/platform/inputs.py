"""What the platform can store: the one check of input strings, numbers, datetimes and JSON.

Every value a client sends may reach PostgreSQL, SQLite, Redis, NATS or the graph. Some cannot
be stored and must be refused as the client's mistake (a 4xx naming the field), not fail at the
database as a 500:

- text with a NUL character (PostgreSQL's ``text`` and ``jsonb`` refuse ``\\u0000``);
- text with a lone surrogate (``"\\ud800"``: JSON can spell it, UTF-8 cannot encode it);
- a datetime that leaves Python's range once converted to UTC
  (``9999-12-31T23:59:59-23:59`` is in the year 10000);
- a number JSON cannot hold (``1e400`` parses as infinity, ``NaN``), or an integer beyond 64
  bits (the graph drivers, SQL ``bigint`` and most JSON readers stop there);
- JSON nested deeper than :data:`MAX_JSON_DEPTH` levels (every recursive parser or encoder
  down the line would run out of stack).

The rules are written once, here, and applied in three ways: :func:`load_json` and
:func:`check_json` for bodies and messages read by hand (the API checks every JSON body and
every path and query parameter with them); :data:`StoredText`, :data:`StoredMoment` and
:data:`StoredJson` for the fields of the request models, so the same rules hold for input that
arrives other than over HTTP (NATS events, tasks started by triggers); and :func:`text_problem`,
:func:`moment_problem` for a value read by hand (a header, a cursor). :func:`where_in` and
:func:`place` name the field a refused value was in.

Text the platform did not take from a caller but must keep and pass on, a model's answer, is
mended rather than refused (:func:`storable_text`): the caller did nothing wrong.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime
from pydantic_core import PydanticCustomError

from spine.platform.errors import BadRequest

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "JSON_DEPTH_CEILING",
    "MAX_JSON_DEPTH",
    "REPLACEMENT",
    "InvalidInput",
    "JsonProblem",
    "StoredJson",
    "StoredMoment",
    "StoredText",
    "check_json",
    "check_moment",
    "check_text",
    "json_problem",
    "load_json",
    "moment_problem",
    "place",
    "storable_json",
    "storable_text",
    "text_problem",
    "where_in",
]

MAX_JSON_DEPTH = 64
"""How deep JSON may nest (objects and arrays) by default; the API's ``GENAI_API__MAX_JSON_DEPTH``."""
JSON_DEPTH_CEILING = 512
"""The bound of the model fields' check, and of the setting: deeper, encoders run out of stack."""
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"
"""What :func:`storable_text` puts for each character that cannot be stored (U+FFFD)."""
_MAX_PATH_PARTS = 8


class InvalidInput(BadRequest):
    """A value the platform cannot store (400); ``field`` names where it is (``metadata.k``)."""


@dataclass(frozen=True, slots=True)
class JsonProblem:
    """Where in a JSON value a rule is broken, and which."""

    path: tuple[str | int, ...]
    reason: str

    def field(self, prefix: str = "") -> str:
        """Return the dotted path (``metadata.k``, ``messages.0.content``), under ``prefix``."""
        parts = [str(part) for part in self.path[:_MAX_PATH_PARTS]]
        return ".".join([prefix, *parts] if prefix else parts) or prefix or "body"

    def message(self, prefix: str = "") -> str:
        """Return ``<field>: <reason>``."""
        return f"{self.field(prefix)}: {self.reason}"


def _has_surrogate(value: str) -> bool:
    # UTF-8 cannot encode a surrogate, and its encoder (C) finds one 4x faster than a regex
    # scan on 1,200 characters of text; ASCII text is never scanned at all.
    try:
        value.encode()
    except UnicodeEncodeError:
        return True
    return False


def storable_text(value: str) -> str:
    """Return ``value`` with each NUL character and lone surrogate replaced by U+FFFD.

    For text from elsewhere than the caller (a model may answer ``"\\u0000"`` or half an
    emoji, escaped): refusing it would fail a call that did nothing wrong, and storing it
    fails at the database, the cache, or the answer's encoding.
    """
    if "\x00" not in value and (value.isascii() or not _has_surrogate(value)):
        return value
    return _UNSTORABLE.sub(REPLACEMENT, value)


def storable_json(value: Any) -> Any:
    """Return decoded JSON with every string in it (keys too) made :func:`storable_text`; the
    value itself when nothing needs it, which is the check every call pays.

    For JSON the platform did not take from a caller but must keep: an agent's structured
    answer decoded from the model's text (``"\\u0000"`` in that text is a NUL once decoded), an
    error's details. Only text is mended; nesting beyond :data:`MAX_JSON_DEPTH` is left as it is.
    """
    if _storable(value, JSON_DEPTH_CEILING):
        return value
    return _mended(value, MAX_JSON_DEPTH)


def _mended(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return storable_text(value)
    if depth <= 0:
        return value
    if isinstance(value, dict):
        return {
            storable_text(k) if isinstance(k, str) else k: _mended(v, depth - 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_mended(item, depth - 1) for item in value]
    return value


def text_problem(value: str) -> str | None:
    """Say why a string cannot be stored, or return None when it can."""
    if "\x00" in value:
        return "contains a NUL character (\\u0000), which cannot be stored"
    if not value.isascii() and _has_surrogate(value):
        return "contains a lone surrogate (\\ud800-\\udfff), which is not valid Unicode"
    return None


def moment_problem(value: datetime) -> str | None:
    """Say why a datetime cannot be stored, or return None when it can.

    An aware datetime must stay within years 1-9999 once converted to UTC; a naive one is
    taken as UTC.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        return None
    try:
        value.astimezone(UTC)
    except OverflowError:
        return "is out of range: in UTC it must fall within the years 1 to 9999"
    return None


def json_problem(value: Any, *, max_depth: int = MAX_JSON_DEPTH) -> JsonProblem | None:
    """Find the first value in decoded JSON that breaks a rule, or return None.

    Walks without recursion, so a value nested far too deep is measured, not overflowed on.
    A first walk keeps no paths (it is the one every request pays); only when it finds
    something does a second one find where.
    """
    if _storable(value, max_depth):
        return None
    return _locate(value, max_depth)


def _storable(value: Any, max_depth: int) -> bool:
    stack: list[tuple[Any, int]] = [([value], 0)]
    pop, push, surrogate = stack.pop, stack.append, _has_surrogate
    while stack:
        item, depth = pop()
        if depth > max_depth:
            return False
        if type(item) is dict:
            for key in item:
                if type(key) is not str or "\x00" in key or (not key.isascii() and surrogate(key)):
                    return False
            children: Any = item.values()
        else:
            children = item
        for child in children:
            kind = type(child)
            if kind is str:
                if "\x00" in child or (not child.isascii() and surrogate(child)):
                    return False
            elif kind is int:
                if not INT64_MIN <= child <= INT64_MAX:
                    return False
            elif kind is float:
                if child - child != 0.0:  # infinite or NaN
                    return False
            elif kind is dict or kind is list or kind is tuple:
                push((child, depth + 1))
            elif kind is not bool and child is not None:
                return False  # a type JSON does not have: let the walk that names it say so
    return True


def _locate(value: Any, max_depth: int) -> JsonProblem | None:
    stack: list[tuple[Any, tuple[str | int, ...], int]] = [(value, (), 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            reason = text_problem(item)
            if reason:
                return JsonProblem(path, reason)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                return JsonProblem(path, "is an integer beyond 64 bits")
        elif isinstance(item, float):
            if not math.isfinite(item):
                return JsonProblem(path, "is a number JSON cannot hold (infinite or NaN)")
        elif isinstance(item, dict | list | tuple):
            if depth > max_depth:
                return JsonProblem(path, f"is nested more than {max_depth} levels deep")
            if isinstance(item, dict):
                for key, child in item.items():
                    if isinstance(key, str) and (reason := text_problem(key)):
                        return JsonProblem(path, f"has a key that {reason}")
                    stack.append((child, (*path, key), depth + 1))
            else:
                stack.extend((child, (*path, i), depth + 1) for i, child in enumerate(item))
    return None


def load_json(raw: bytes | str, *, max_depth: int = MAX_JSON_DEPTH, field: str = "body") -> Any:
    """Decode JSON and check it with :func:`check_json`.

    Raises:
        ValueError: It is not JSON (``json.JSONDecodeError``, ``UnicodeDecodeError``).
        InvalidInput: It is JSON the platform cannot store; ``field`` names where.
    """
    try:
        value = json.loads(raw)
    except RecursionError:
        where = field or "body"
        raise InvalidInput(
            f"{where}: is nested more than {max_depth} levels deep", field=where
        ) from None
    check_json(value, max_depth=max_depth, field=field)
    return value


def check_json(value: Any, *, max_depth: int = MAX_JSON_DEPTH, field: str = "") -> None:
    """Raise :class:`InvalidInput` naming the first value that cannot be stored."""
    problem = json_problem(value, max_depth=max_depth)
    if problem is not None:
        raise InvalidInput(problem.message(field), field=problem.field(field))


def check_text(value: str, *, field: str) -> str:
    """Return ``value``, or raise :class:`InvalidInput` when it cannot be stored."""
    reason = text_problem(value)
    if reason:
        raise InvalidInput(f"{field}: {reason}", field=field)
    return value


def check_moment(value: datetime, *, field: str) -> datetime:
    """Return ``value``, or raise :class:`InvalidInput` when it is out of range."""
    reason = moment_problem(value)
    if reason:
        raise InvalidInput(f"{field}: {reason}", field=field)
    return value


# -- pydantic types: the same rules on the fields of request models ----------------------------


def _stored_text(value: str) -> str:
    reason = text_problem(value)
    if reason:
        raise PydanticCustomError("unstorable_text", reason)
    return value


def _stored_moment(value: datetime) -> datetime:
    reason = moment_problem(value)
    if reason:
        raise PydanticCustomError("datetime_out_of_range", reason)
    return value


def _stored_json(value: Any) -> Any:
    # The request's own bound (the setting) was applied where its body was read.
    problem = json_problem(value, max_depth=JSON_DEPTH_CEILING)
    if problem is not None:
        where = problem.field()
        message = problem.reason if not problem.path else f"{where}: {problem.reason}"
        raise PydanticCustomError("unstorable_json", message)
    return value


StoredText = Annotated[str, AfterValidator(_stored_text)]
"""A string without NUL characters or lone surrogates."""
StoredMoment = Annotated[AwareDatetime, AfterValidator(_stored_moment)]
"""A datetime with a time zone, within years 1-9999 in UTC."""
StoredJson = AfterValidator(_stored_json)
"""Put on any JSON-valued field (``Annotated[dict[str, Any], StoredJson]``): checks it whole."""


def where_in(loc: Sequence[int | str]) -> tuple[str, str | None]:
    """The field a validation error's location names, and the key at fault when the field is
    a mapping whose key was refused (None: the field's value was).

    pydantic ends a refused key's location with ``[key]`` (``metadata.<the key>.[key]``); a key
    is not a field, so the field is ``metadata``.
    """
    parts = [str(part) for part in loc]
    if len(parts) > 1 and parts[-1] == "[key]":
        return ".".join(parts[:-2]), parts[-2]
    return ".".join(parts), None


def place(field: str, key: str | None) -> str:
    """Say where a refused value is: ``'field'``, or ``key 'k' in 'field'``."""
    return f"'{field}'" if key is None else f"key {key!r} in '{field}'"
