"""What a query parameter may hold on FalkorDB, checked before the client sends it.

The official ``falkordb`` client sends parameters as a ``CYPHER name=value ...`` prefix of the
query text (``falkordb.helpers.stringify_param_value``). Measured with falkordb 1.8.1 against
FalkorDB 4.16.3 over the Redis protocol: strings are double-quoted with ``\\`` and ``"``
escaped, and the server reads them back exactly, so quotes, backslashes, newlines, control
characters, U+2028/U+2029 and any other Unicode round-trip and cannot end the literal (a
100 KB string too); map keys go in backticks. What that prefix cannot carry is refused here,
as a :class:`~spine.graph.store.GraphError` naming the parameter:

- NUL: the server reads the query as a C string and stops there (a syntax error at best);
- integers beyond 64 bits: the server clamps them to the int64 range without a word;
- NaN and the infinities: written ``nan`` and ``inf``, which are not Cypher;
- a lone surrogate: not UTF-8, the client cannot encode it;
- a map key that is empty or holds a backtick (the client refuses it) or NUL;
- any other type (bytes, dates, sets, ...): the client would send its ``str()``.

Parameter names must be identifiers (letters, digits and ``_``). :func:`cypher_prefix` writes
the checked parameters the way the client's ``Graph.query`` does, with the client's own
``stringify_param_value``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from falkordb.helpers import stringify_param_value

from spine.graph.store import GraphError

__all__ = ["checked_params", "cypher_prefix"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INT64 = (-(2**63), 2**63 - 1)
_SHOWN = 60  # characters of a refused name or key quoted back


def checked_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Return the parameters as plain dicts and lists, or refuse what FalkorDB cannot hold.

    Raises:
        GraphError: A name, key or value the ``CYPHER`` prefix cannot carry exactly; its
            ``field`` is ``params.<name>`` (with ``.key`` and ``[index]`` inside).
    """
    checked: dict[str, Any] = {}
    for name, value in params.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise GraphError(
                f"params: {str(name)[:_SHOWN]!r} is not a parameter name", field="params"
            )
        checked[name] = _checked(value, f"params.{name}")
    return checked


def cypher_prefix(params: Mapping[str, Any]) -> str:
    """Return the ``CYPHER name=value ...`` prefix of a query ("" without parameters).

    Raises:
        GraphError: See :func:`checked_params`.
    """
    checked = checked_params(params)
    if not checked:
        return ""
    return "CYPHER " + "".join(
        f"`{name}`={stringify_param_value(value)} " for name, value in checked.items()
    )


def _checked(value: Any, where: str) -> Any:
    kind = type(value)
    if kind is str:
        _check_text(value, where)
        return value
    if value is None or kind is bool:
        return value
    if kind is int:
        if not _INT64[0] <= value <= _INT64[1]:
            raise GraphError(f"{where}: integers must fit in 64 bits", field=where)
        return value
    if kind is float:
        if not math.isfinite(value):
            raise GraphError(f"{where}: {value} is not a number the graph can hold", field=where)
        return value
    if isinstance(value, Mapping):
        plain: dict[str, Any] = {}
        for key, item in value.items():
            inner = f"{where}.{str(key)[:_SHOWN]}"
            if not isinstance(key, str) or not key or "`" in key:
                raise GraphError(
                    f"{where}: the key {str(key)[:_SHOWN]!r} must be non-empty text without "
                    "backticks",
                    field=inner,
                )
            _check_text(key, inner)
            plain[key] = _checked(item, inner)
        return plain
    if isinstance(value, list | tuple):
        return [_checked(item, f"{where}[{index}]") for index, item in enumerate(value)]
    # Subclasses (enums and the like) go as their plain value, which is what they mean.
    if isinstance(value, str):
        return _checked(str.__str__(value), where)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return _checked(int(value), where)
    if isinstance(value, float):
        return _checked(float(value), where)
    raise GraphError(f"{where}: a {kind.__name__} cannot be a graph parameter", field=where)


def _check_text(text: str, where: str) -> None:
    if "\x00" in text:
        raise GraphError(f"{where}: the graph cannot hold a NUL character", field=where)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise GraphError(
            f"{where}: not valid Unicode (a lone surrogate at {exc.start})", field=where
        ) from None
