"""Labels, relationship types and property names: only known ones ever reach a query.

Cypher cannot take a label, a relationship type or a property key as a parameter, so those are
spliced into query text; every one of them is first checked against an :class:`Allowlist` built
from the mappings (what ingestion can create), so nothing a caller sends is spliced unchecked.
Values are always parameters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from spine.platform.errors import BadRequest

__all__ = [
    "IDENTIFIER",
    "PROVENANCE_PROPERTIES",
    "Allowlist",
    "UnknownIdentifier",
    "check_identifier",
]

IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
"""What a label, relationship type or property name may look like."""

PROVENANCE_PROPERTIES = frozenset(
    {
        "tenant",
        "uid",
        "event_id",
        "source",
        "event_time",
        "version",
        "valid_from",
        "valid_to",
        "superseded_by",
    }
)
"""Properties ingestion writes on every node and relationship; mappings cannot set them."""


class UnknownIdentifier(BadRequest):
    """A label, relationship type or property name that is not in the allowlist."""

    error_type = "unknown_identifier"


def check_identifier(name: str, *, what: str) -> str:
    """Return ``name`` if it is written as an identifier; raise ``ValueError`` otherwise."""
    if not IDENTIFIER.match(name):
        raise ValueError(
            f"{what} {name!r} must start with a letter and hold only letters, digits and _ "
            "(at most 64)"
        )
    return name


@dataclass(frozen=True, slots=True)
class Allowlist:
    """The labels, relationship types and property names queries may name."""

    labels: frozenset[str] = field(default_factory=frozenset)
    types: frozenset[str] = field(default_factory=frozenset)
    properties: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(
        cls, labels: Iterable[str], types: Iterable[str], properties: Iterable[str]
    ) -> Allowlist:
        """Build an allowlist; each name must be written as an identifier."""
        return cls(
            labels=frozenset(check_identifier(n, what="label") for n in labels),
            types=frozenset(check_identifier(n, what="relationship type") for n in types),
            properties=frozenset(
                check_identifier(n, what="property") for n in [*properties, *PROVENANCE_PROPERTIES]
            ),
        )

    def label(self, name: str, *, field: str = "label") -> str:
        """Return ``name`` if it is an allowed label; else raise :class:`UnknownIdentifier`."""
        return self._check(name, self.labels, "label", field)

    def type(self, name: str, *, field: str = "types") -> str:
        """Return ``name`` if it is an allowed relationship type."""
        return self._check(name, self.types, "relationship type", field)

    def property(self, name: str, *, field: str = "property") -> str:
        """Return ``name`` if it is an allowed property name."""
        return self._check(name, self.properties, "property", field)

    @staticmethod
    def _check(name: str, allowed: frozenset[str], what: str, field: str) -> str:
        if name in allowed and IDENTIFIER.match(name):
            return name
        known = ", ".join(sorted(allowed)[:30]) or "none"
        hint = ""
        if not allowed:
            # What a first try meets: the graph knows only what the mappings name.
            hint = (
                "; no mappings are loaded: set GENAI_KNOWLEDGE__MAPPINGS_DIR to a folder of "
                "mappings (examples in graph/spine/graph/examples/mappings) and restart"
            )
        raise UnknownIdentifier(
            f"{field}: {name[:80]!r} is not a known {what} (known: {known}){hint}", field=field
        )
