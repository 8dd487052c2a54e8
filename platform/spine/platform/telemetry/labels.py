"""Label values with bounded cardinality: no ids, no free text, a cap on distinct values.

Every series a label value creates lives in Prometheus's memory until it ages out, so a label
must only ever take a small set of values. :class:`LabelGuard` enforces that at the one place
values enter a metric: a value that looks like an id (a UUID, a long hex or ULID string), that
is long, or that arrives after a label already holds ``max_values`` distinct values is counted
as ``other`` instead. Tenants are a label only when the setting allows it (they grow with the
customers); otherwise the tenant label is empty, which Prometheus treats as absent.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

__all__ = ["OTHER", "LabelGuard", "looks_like_id"]

OTHER = "other"
"""The value a label takes in place of one it may not carry."""

_MAX_LENGTH = 80
_ID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"  # UUID (task ids)
    r"|[0-9a-f]{20,}"  # long hex: hashes, call ids, key secrets
    r"|[0-9A-HJKMNP-TV-Z]{26}",  # ULID
    re.IGNORECASE,
)


def looks_like_id(value: str) -> bool:
    """Tell whether ``value`` holds something shaped like an identifier or a secret."""
    return _ID.search(value) is not None


@dataclass(slots=True, kw_only=True)
class LabelGuard:
    """Decides which value each label may carry; thread-safe (scrapes run in threads too)."""

    max_values: int = 200
    tenant_label: bool = False
    _seen: dict[str, set[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def value(self, label: str, value: str | None) -> str:
        """Return what ``label`` may carry for ``value``: itself, ``""`` (none) or ``other``."""
        if value is None or value == "":
            return ""
        if len(value) > _MAX_LENGTH or looks_like_id(value):
            return OTHER
        with self._lock:
            seen = self._seen.setdefault(label, set())
            if value in seen:
                return value
            if len(seen) >= self.max_values:
                return OTHER
            seen.add(value)
            return value

    def tenant(self, tenant: str | None) -> str:
        """Return the tenant label: empty unless tenants are labels by setting."""
        return self.value("tenant", tenant) if self.tenant_label else ""

    def configure(self, *, max_values: int, tenant_label: bool) -> None:
        """Apply the settings (values already admitted stay admitted)."""
        with self._lock:
            self.max_values = max_values
            self.tenant_label = tenant_label
