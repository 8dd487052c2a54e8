"""Checks for caller-written Cypher: read-only, one statement, and anchored to the tenant.

Neo4j enforces READ transactions; FalkorDB's Bolt server does not (a ``CREATE`` in a READ
transaction writes), and its server-side read-only path (``GRAPH.RO_QUERY``) is a Redis
command, not Bolt. So the query API checks the text itself, conservatively: a query is
tokenized (strings, comments and quoted names cannot hide a keyword), and refused if it holds
any clause that writes or calls a procedure: ``CREATE``, ``MERGE``, ``SET``, ``DELETE``,
``DETACH``, ``REMOVE``, ``DROP``, ``LOAD CSV``, ``FOREACH``, ``CALL`` (procedures and
subqueries alike), ``USE``, ``SHOW``, ``GRAPH.*``, or more than one statement.

Tenancy. Ingestion never links nodes of two tenants, so everything reachable from a node of
the caller's tenant is the caller's. A query is accepted only if every pattern it matches is
anchored: each chain of nodes and relationships must hold a node written with
``{tenant: $tenant}`` (the API always binds ``$tenant`` to the caller's tenant) or a variable
already bound by an anchored pattern. Variables survive ``WITH n`` and ``WITH n AS m``; a value
computed into a variable (``UNWIND``, ``collect``) is not anchored. Whatever the checker cannot
follow is refused with a message saying how to write it.

Cost. The server stops a query at its time and memory limits, but only between records: a
single expression runs to its end. ``range(1, 2000000000)`` allocates all its values at once
(32 GB) and ``reduce(s = 'ab', x IN range(1, 40) | s + s)`` doubles a value forty times, so
either would take the server's memory before any limit is looked at. So ``range()`` takes only
integer literals or integer parameters, and all the ``range()`` calls of a query together may
make at most :data:`MAX_RANGE_VALUES` values (nested, their sizes multiply); ``reduce()`` is
refused (``UNWIND`` with an aggregate such as ``sum()`` does the same work row by row, where
the limits apply).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spine.platform.errors import BadRequest

__all__ = ["MAX_RANGE_VALUES", "UnsafeQuery", "check_query"]

MAX_RANGE_VALUES = 1_000_000
"""Values all ``range()`` calls of one query may make together (16 MB as the server holds them)."""

_WRITES = frozenset(
    {
        "CREATE",
        "MERGE",
        "SET",
        "DELETE",
        "DETACH",
        "REMOVE",
        "DROP",
        "LOAD",
        "FOREACH",
        "CALL",
        "USE",
        "SHOW",
        "ALTER",
        "GRANT",
        "DENY",
        "REVOKE",
        "START",
        "STOP",
        "TERMINATE",
        "FINISH",
        "INSERT",
    }
)
_CLAUSES = frozenset(
    {"MATCH", "OPTIONAL", "WHERE", "RETURN", "WITH", "UNWIND", "ORDER", "SKIP", "LIMIT", "UNION"}
)
# Words after which "(" opens an expression or a pattern, not a function's arguments.
_NOT_FUNCTIONS = frozenset(
    {
        "AND",
        "OR",
        "XOR",
        "NOT",
        "WHERE",
        "RETURN",
        "WITH",
        "DISTINCT",
        "WHEN",
        "THEN",
        "ELSE",
        "IN",
        "IS",
        "UNWIND",
        "BY",
        "AS",
        "CASE",
        "MATCH",
        "OPTIONAL",
        "CONTAINS",
        "ENDS",
        "STARTS",
    }
)
_PATH_FUNCTIONS = frozenset({"SHORTESTPATH", "ALLSHORTESTPATHS"})
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>//[^\n]*|/\*.*?\*/)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<quoted>`(?:[^`]|``)*`)
  | (?P<param>\$(?:[A-Za-z_][A-Za-z0-9_]*|`[^`]*`|[0-9]+))
  | (?P<number>[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>->|<-|\.\.|<=|>=|<>|=~|\+=|[()\[\]{},:.|\-<>=+*/%^;!&])
    """,
    re.VERBOSE | re.DOTALL,
)
_ANCHOR_HINT = (
    "write one of its nodes as (x {tenant: $tenant}), or start from a variable bound that way"
)


class UnsafeQuery(BadRequest):
    """The query writes, calls a procedure, or is not anchored to the caller's tenant."""

    error_type = "query_rejected"
    refusal = True  # audited: a query refused for writing or leaving its tenant is a probe


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str
    pos: int

    @property
    def upper(self) -> str:
        return self.text.upper() if self.kind == "word" else ""


def check_query(query: str, params: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`UnsafeQuery` unless the query is one read-only, tenant-anchored statement
    whose expressions are bounded (``params`` are the values ``range()`` may be given)."""
    tokens = _tokenize(query)
    if not tokens:
        raise UnsafeQuery("the query is empty", field="query")
    _check_read_only(tokens)
    _check_bounded(tokens, params or {})
    _Anchors(tokens).check()


def _tokenize(query: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(query):
        found = _TOKEN.match(query, pos)
        if found is None:
            raise UnsafeQuery(
                f"unexpected character {query[pos]!r} at position {pos}", field="query"
            )
        kind = found.lastgroup or ""
        if kind not in ("space", "comment"):
            text = found.group()
            if kind == "quoted":
                tokens.append(_Token("qword", text[1:-1].replace("``", "`"), pos))
            else:
                tokens.append(_Token(kind, text, pos))
        pos = found.end()
    return tokens


def _check_read_only(tokens: list[_Token]) -> None:
    for index, token in enumerate(tokens):
        if token.kind == "punct" and token.text == ";" and index != len(tokens) - 1:
            raise UnsafeQuery("only one statement may be sent", field="query")
        if token.kind != "word":
            continue
        before = tokens[index - 1].text if index else ""
        after = tokens[index + 1].text if index + 1 < len(tokens) else ""
        if before in (".", ":") or (after == ":" and before in ("{", ",")):
            continue  # a property key, a label, or a map key
        word = token.upper
        if word in _WRITES:
            raise UnsafeQuery(
                f"{word} is not allowed: the query API is read-only (no writes, no procedure "
                "calls)",
                field="query",
            )
        if word == "GRAPH" and after == ".":
            raise UnsafeQuery("GRAPH.* commands are not allowed", field="query")


def _check_bounded(tokens: list[_Token], params: Mapping[str, Any]) -> None:
    """Refuse ``reduce()`` and ``range()`` calls that could make more than the values allowed."""
    total = 1
    for index, token in enumerate(tokens):
        name = token.text.upper() if token.kind in ("word", "qword") else ""
        if name not in ("RANGE", "REDUCE") or index + 1 == len(tokens):
            continue
        if tokens[index + 1].text != "(" or (index and tokens[index - 1].text in (".", ":")):
            continue  # a property key, a label, or a name that is not called
        if name == "REDUCE":
            raise UnsafeQuery(
                "reduce() is not allowed: its value grows inside one expression, where the "
                "server's time and memory limits do not apply; UNWIND the list and aggregate "
                "(sum(), collect(), ...) instead",
                field="query",
            )
        # An empty range makes no values, but must not hide the ranges after it.
        total *= max(1, _range_size(_arguments(tokens, index + 2), params))
        if total > MAX_RANGE_VALUES:
            raise UnsafeQuery(
                f"range() would make {total:,} values in this query; at most "
                f"{MAX_RANGE_VALUES:,} are allowed (nested ranges multiply)",
                field="query",
            )


def _arguments(tokens: list[_Token], start: int) -> list[list[_Token]]:
    """Split the arguments of a call whose ``(`` is just before ``start``."""
    arguments: list[list[_Token]] = [[]]
    depth = 0
    for token in tokens[start:]:
        text = token.text if token.kind == "punct" else ""
        if depth == 0 and text == ")":
            return arguments
        if text in ("(", "[", "{"):
            depth += 1
        elif text in (")", "]", "}"):
            depth -= 1
        if depth == 0 and text == ",":
            arguments.append([])
        else:
            arguments[-1].append(token)
    raise UnsafeQuery("range() is not closed", field="query")


def _range_size(arguments: list[list[_Token]], params: Mapping[str, Any]) -> int:
    if len(arguments) not in (2, 3):
        raise UnsafeQuery("range() takes a start, an end and an optional step", field="query")
    start, end, step = (*(_integer(a, params) for a in arguments), 1)[:3]
    if step == 0:
        raise UnsafeQuery("range() needs a step other than 0", field="query")
    return max(0, (end - start) // step + 1)


def _integer(argument: list[_Token], params: Mapping[str, Any]) -> int:
    """Read an argument of ``range()``: an integer literal (maybe negative) or parameter."""
    sign = 1
    if len(argument) == 2 and argument[0].text == "-" and argument[0].kind == "punct":
        sign, argument = -1, argument[1:]
    if len(argument) == 1:
        token = argument[0]
        if token.kind == "number" and token.text.isdigit():
            return sign * int(token.text)
        if token.kind == "param":
            value = params.get(token.text[1:].strip("`"))
            if isinstance(value, int) and not isinstance(value, bool):
                return sign * value
    raise UnsafeQuery(
        "range() takes integer literals or integer parameters here, so that its size can be "
        "checked; to go through a list, UNWIND the list itself",
        field="query",
    )


class _Anchors:
    """Walks the clauses, tracking which variables are bound to the caller's tenant."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.t = tokens
        self.i = 0
        self.bound: set[str] = set()
        self._scopes: list[set[str]] = []

    def check(self) -> None:
        while self.i < len(self.t):
            word = self.t[self.i].upper
            # A subquery (EXISTS { ... }, COUNT { ... }) binds nothing outside its braces.
            if self._peek("{"):
                self._scopes.append(set(self.bound))
                self.i += 1
            elif self._peek("}"):
                self.bound = self._scopes.pop() if self._scopes else set()
                self.i += 1
            elif word == "MATCH":
                self.i += 1
                self._patterns()
            elif word == "WITH":
                self.i += 1
                self._projection()
            elif word == "UNWIND":
                self.i += 1
                self._unwind()
            elif word == "UNION":
                self.bound = set()
                self.i += 1
            else:
                self._expression_token()

    # -- clauses -----------------------------------------------------------------------------

    def _patterns(self) -> None:
        while True:
            self._pattern()
            if self._peek(","):
                self.i += 1
                continue
            return

    def _pattern(self) -> None:
        path_var = None
        if self._kind(0) == "word" and self._peek("=", 1):
            path_var = self.t[self.i].text
            self.i += 2
        wrapped = False
        if self.t[self.i].upper in _PATH_FUNCTIONS if self.i < len(self.t) else False:
            self.i += 1
            self._expect("(")
            wrapped = True
        names, anchored = self._chain()
        if wrapped:
            self._expect(")")
        if not anchored:
            raise UnsafeQuery(
                f"a pattern is not bound to your tenant: {_ANCHOR_HINT}", field="query"
            )
        self.bound.update(names)
        if path_var:
            self.bound.add(path_var)

    def _chain(self) -> tuple[set[str], bool]:
        names: set[str] = set()
        anchored = self._node(names)
        while self._relationship_at(self.i):
            self._relationship(names)
            anchored = self._node(names) or anchored
        return names, anchored

    def _node(self, names: set[str]) -> bool:
        self._expect("(")
        if self._peek("("):
            raise UnsafeQuery(
                "quantified or nested path patterns are not supported here", field="query"
            )
        anchored = False
        if self._kind(0) in ("word", "qword") and not self._peek(":"):
            name = self.t[self.i].text
            names.add(name)
            anchored = name in self.bound
            self.i += 1
        anchored = self._inside_pattern(")") or anchored
        self._expect(")")
        return anchored

    def _relationship(self, names: set[str]) -> None:
        self.i += 2 if self._peek("<") else 1  # -, <-, or < - written apart
        if self._peek("["):
            self.i += 1
            if self._kind(0) in ("word", "qword") and not self._peek(":"):
                names.add(self.t[self.i].text)
                self.i += 1
            self._inside_pattern("]")
            self._expect("]")
        if self._peek("->"):
            self.i += 1
        elif self._peek("-"):
            self.i += 2 if self._peek(">", 1) else 1  # - > written apart
        else:
            raise UnsafeQuery("a relationship pattern is not closed", field="query")

    def _inside_pattern(self, closer: str) -> bool:
        """Skip labels, types, ranges, a property map or a WHERE; tell if the map anchors."""
        anchored = False
        while self.i < len(self.t) and not self._peek(closer):
            if self._peek("{"):
                anchored = self._map() or anchored
            elif self.t[self.i].upper == "WHERE":
                self.i += 1
                self._expression_until(closer)
            elif self._peek("("):
                raise UnsafeQuery("nested patterns are not supported here", field="query")
            else:
                self.i += 1
        return anchored

    def _map(self) -> bool:
        self._expect("{")
        anchored = False
        while self.i < len(self.t) and not self._peek("}"):
            key = self.t[self.i].text
            self.i += 1
            self._expect(":")
            start = self.i
            depth = 0
            while self.i < len(self.t):
                text = self.t[self.i].text if self.t[self.i].kind == "punct" else ""
                if depth == 0 and text in (",", "}"):
                    break
                if text in ("(", "[", "{"):
                    depth += 1
                elif text in (")", "]", "}"):
                    depth -= 1
                self.i += 1
            value = self.t[start : self.i]
            if key == "tenant" and len(value) == 1 and value[0].text == "$tenant":
                anchored = True
            elif any(tok.text == "(" for tok in value):
                raise UnsafeQuery("a property map may not hold a pattern", field="query")
            if self._peek(","):
                self.i += 1
        self._expect("}")
        return anchored

    def _projection(self) -> None:
        if self.t[self.i].upper == "DISTINCT" if self.i < len(self.t) else False:
            self.i += 1
        items: list[list[_Token]] = [[]]
        depth = 0
        while self.i < len(self.t):
            token = self.t[self.i]
            if depth == 0 and (token.upper in _CLAUSES or token.text == ";"):
                break
            if token.kind == "punct" and token.text in ("(", "[", "{"):
                depth += 1
            elif token.kind == "punct" and token.text in (")", "]", "}"):
                depth -= 1
            if depth == 0 and token.text == "," and token.kind == "punct":
                items.append([])
            else:
                items[-1].append(token)
            self.i += 1
        kept: set[str] = set()
        for item in items:
            _Anchors._scan(item, self.bound)
            if len(item) == 1 and item[0].text == "*":
                kept |= self.bound
            elif len(item) == 1 and item[0].kind in ("word", "qword"):
                if item[0].text in self.bound:
                    kept.add(item[0].text)
            elif (
                len(item) == 3
                and item[0].kind in ("word", "qword")
                and item[1].upper == "AS"
                and item[0].text in self.bound
            ):
                kept.add(item[2].text)
        self.bound = kept

    def _unwind(self) -> None:
        start = self.i
        while self.i < len(self.t) and self.t[self.i].upper != "AS":
            self.i += 1
        _Anchors._scan(self.t[start : self.i], self.bound)
        if self.i + 1 < len(self.t):
            self.bound.discard(self.t[self.i + 1].text)
            self.i += 2

    # -- expressions -------------------------------------------------------------------------

    def _expression_until(self, closer: str) -> None:
        depth = 0
        while self.i < len(self.t):
            text = self.t[self.i].text if self.t[self.i].kind == "punct" else ""
            if depth == 0 and text == closer:
                return
            if text in ("(", "[", "{"):
                if text == "(" and self._pattern_starts_here():
                    self._expression_pattern()
                    continue
                depth += 1
            elif text in (")", "]", "}"):
                depth -= 1
            self.i += 1

    def _expression_token(self) -> None:
        if self._peek("(") and self._pattern_starts_here():
            self._expression_pattern()
        else:
            self.i += 1

    def _expression_pattern(self) -> None:
        # Its new variables live only inside the expression (a pattern comprehension).
        _, anchored = self._chain()
        if not anchored:
            raise UnsafeQuery(
                f"a pattern in an expression is not bound to your tenant: {_ANCHOR_HINT}",
                field="query",
            )

    def _pattern_starts_here(self) -> bool:
        """Tell whether the ``(`` here opens a node pattern followed by a relationship."""
        if self.i > 0:
            before = self.t[self.i - 1]
            if before.kind in ("word", "qword") and before.upper not in _NOT_FUNCTIONS:
                return False  # a function's arguments
        j = self.i + 1
        depth = 1
        while j < len(self.t) and depth:
            text = self.t[j].text if self.t[j].kind == "punct" else ""
            if text == "(":
                depth += 1
            elif text == ")":
                depth -= 1
            j += 1
        return self._relationship_at(j)

    def _relationship_at(self, j: int) -> bool:
        """Tell whether a relationship opens at token ``j``, in any of its spellings.

        The server reads ``<-->`` as ``<-`` ``->`` and allows spaces inside an arrow (``< - -
        >``), so every one is recognised here; an arithmetic ``(a) - -(b)`` is then read as a
        pattern too, and refused unless anchored: when unsure, the guard refuses.
        """
        if self._punct(j) == "<" and self._punct(j + 1) == "-":
            j += 1
        elif self._punct(j) not in ("-", "<-"):
            return False
        return self._punct(j + 1) in ("[", "-", "->")

    @staticmethod
    def _scan(tokens: list[_Token], bound: set[str]) -> None:
        """Check the patterns inside an expression given as a token list."""
        walker = _Anchors(tokens)
        walker.bound = set(bound)
        while walker.i < len(tokens):
            walker._expression_token()

    # -- helpers -----------------------------------------------------------------------------

    def _peek(self, text: str, ahead: int = 0) -> bool:
        j = self.i + ahead
        return j < len(self.t) and self.t[j].kind == "punct" and self.t[j].text == text

    def _punct(self, j: int) -> str:
        return self.t[j].text if j < len(self.t) and self.t[j].kind == "punct" else ""

    def _kind(self, ahead: int) -> str:
        j = self.i + ahead
        return self.t[j].kind if j < len(self.t) else ""

    def _expect(self, text: str) -> None:
        if not self._peek(text):
            where = self.t[self.i].pos if self.i < len(self.t) else "the end"
            raise UnsafeQuery(f"expected {text!r} at position {where}", field="query")
        self.i += 1
