"""The app's paths as its OpenAPI document lists them: what a request path is, and its methods.

Middleware runs before routing, and FastAPI's routes do not say which parameters a path holds
until they handle it; the OpenAPI document does (``/v1/tasks/{task_id}``), and is what clients
read. Used to name the path parameter that holds a bad value, and to answer a 405 with every
method the path allows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["PathTemplate", "match_path"]

_PARAMETER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::path)?\}")


@dataclass(frozen=True, slots=True)
class PathTemplate:
    """One path of the OpenAPI document and the methods it answers."""

    template: str
    pattern: re.Pattern[str]
    methods: frozenset[str]

    @classmethod
    def of(cls, template: str, operations: dict[str, Any]) -> PathTemplate:
        """Compile ``/v1/tasks/{task_id}``; every parameter matches one path segment."""
        parts: list[str] = []
        position = 0
        for found in _PARAMETER.finditer(template):
            parts.append(re.escape(template[position : found.start()]))
            parts.append(f"(?P<{found.group(1)}>[^/]+)")
            position = found.end()
        parts.append(re.escape(template[position:]))
        methods = frozenset(m.upper() for m in operations if m.lower() != "parameters")
        return cls(template, re.compile("^" + "".join(parts) + "$", re.DOTALL), methods)


def match_path(app: Any, path: str) -> list[tuple[PathTemplate, dict[str, str]]]:
    """Return the templates ``path`` fits, with the parameter values, most literal first."""
    templates: list[PathTemplate] | None = getattr(app.state, "path_templates", None)
    if templates is None:
        paths: dict[str, dict[str, Any]] = app.openapi().get("paths", {})
        templates = [PathTemplate.of(t, ops) for t, ops in paths.items()]
        templates.sort(key=lambda t: t.template.count("{"))
        app.state.path_templates = templates
    found = []
    for template in templates:
        matched = template.pattern.match(path)
        if matched:
            found.append((template, matched.groupdict()))
    return found
