"""Credentials of the embedded servers, generated once and kept in ``<data>/credentials.json``.

The file is mode 600, like ``<data>/admin.key``, and written atomically under a lock (``spine up``
and ``spine keys nats`` may write it at once). It holds:

- PostgreSQL's password (user ``postgres``; SCRAM over TCP on loopback, nothing else accepted);
- one NATS user per process role, with the role's grant (subjects it may publish and subscribe
  to): ``operator`` (everything: tools, tests, an operator's ``nats`` CLI) and those the caller
  names (``spine up`` names ``api``, ``worker`` and ``learner``);
- NATS users minted for external publishers, each confined to its tenant's event subjects.

Every start rewrites the roles' grants from the code (a new subject reaches every role), keeps
their passwords, and never drops a minted publisher. The URLs a process is given carry its
credentials (``nats://api:<password>@127.0.0.1:<port>``), which nats-py and SQLAlchemy read.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

from spine.platform.errors import ConfigurationError

__all__ = [
    "CREDENTIALS_FILE",
    "OPERATOR",
    "NatsUser",
    "StackCredentials",
    "SubjectGrant",
    "add_nats_user",
    "credentials_path",
    "ensure_credentials",
    "load_credentials",
    "new_password",
    "remove_nats_user",
    "with_userinfo",
    "without_userinfo",
]

CREDENTIALS_FILE = "credentials.json"
OPERATOR = "operator"
_VERSION = 1


class SubjectGrant(Protocol):
    """What a NATS user may publish and subscribe to (subjects, wildcards allowed)."""

    @property
    def publish(self) -> Sequence[str]:
        """Subjects the user may publish on."""

    @property
    def subscribe(self) -> Sequence[str]:
        """Subjects the user may subscribe to."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsUser:
    """One NATS user; ``publish``/``subscribe`` of ``None`` means no restriction."""

    user: str
    password: str = field(repr=False)
    publish: tuple[str, ...] | None = None
    subscribe: tuple[str, ...] | None = None
    tenant: str | None = None
    """The tenant of an external publisher; ``None`` for a process role."""
    inbox_prefix: str | None = None
    """The inbox prefix the user must connect with, when its replies are confined."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StackCredentials:
    """Every credential of the embedded servers of one data directory."""

    postgres_password: str = field(repr=False)
    nats_users: dict[str, NatsUser]

    def nats_user(self, user: str) -> NatsUser:
        """Return a NATS user, or raise naming the ones there are."""
        try:
            return self.nats_users[user]
        except KeyError:
            raise ConfigurationError(
                f"no NATS user {user!r} in {CREDENTIALS_FILE}; there are {sorted(self.nats_users)}"
            ) from None

    def nats_url(self, url: str, user: str = OPERATOR) -> str:
        """Return ``url`` carrying the credentials of one NATS user."""
        found = self.nats_user(user)
        return with_userinfo(url, found.user, found.password)

    def database_url(self, url: str) -> str:
        """Return a PostgreSQL ``url`` carrying the password (its user stays as it is)."""
        user = urlsplit(url).username or "postgres"
        return with_userinfo(url, user, self.postgres_password)


def credentials_path(data_dir: Path) -> Path:
    """Return where the credentials of a data directory are kept."""
    return data_dir / CREDENTIALS_FILE


def new_password() -> str:
    """Return a fresh password: 32 URL-safe characters (192 bits), safe in a URL unquoted."""
    return secrets.token_urlsafe(24)


def load_credentials(data_dir: Path) -> StackCredentials | None:
    """Read the credentials of ``data_dir``; ``None`` when there are none yet.

    Raises:
        ConfigurationError: The file exists but cannot be read or understood.
    """
    path = credentials_path(data_dir)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"cannot read the embedded servers' credentials {path}: {exc}"
        ) from exc
    try:
        return _from_json(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"malformed embedded servers' credentials {path} ({exc}); move it away to start "
            "over (the servers' data must then be given the new passwords)"
        ) from exc


def ensure_credentials(
    data_dir: Path, roles: Mapping[str, SubjectGrant | None] | None = None
) -> StackCredentials:
    """Create what is missing (passwords, users of ``roles``) and return every credential.

    Args:
        data_dir: The data directory.
        roles: NATS users to have, each with its grant (``None``: no restriction). The
            ``operator`` user, unrestricted, is always there.
    """
    wanted: dict[str, SubjectGrant | None] = {OPERATOR: None, **(roles or {})}
    with _locked(data_dir):
        current = load_credentials(data_dir)
        users = dict(current.nats_users) if current else {}
        for name, grant in wanted.items():
            old = users.get(name)
            users[name] = NatsUser(
                user=name,
                password=old.password if old else new_password(),
                publish=tuple(grant.publish) if grant is not None else None,
                subscribe=tuple(grant.subscribe) if grant is not None else None,
            )
        updated = StackCredentials(
            postgres_password=current.postgres_password if current else new_password(),
            nats_users=users,
        )
        if updated != current:
            _save(data_dir, updated)
    return updated


def add_nats_user(data_dir: Path, user: NatsUser) -> StackCredentials:
    """Add (or replace) one NATS user; the server picks it up when its config is reloaded."""
    with _locked(data_dir):
        current = load_credentials(data_dir)
        if current is None:
            raise ConfigurationError(
                f"no embedded servers' credentials in {data_dir}; run `spine up` first"
            )
        updated = replace(current, nats_users={**current.nats_users, user.user: user})
        _save(data_dir, updated)
    return updated


def remove_nats_user(data_dir: Path, user: str) -> StackCredentials:
    """Remove a minted NATS user (a process role's user cannot be removed)."""
    with _locked(data_dir):
        current = load_credentials(data_dir)
        found = current.nats_users.get(user) if current else None
        if current is None or found is None:
            raise ConfigurationError(f"no NATS user {user!r} in {data_dir}")
        if found.tenant is None:
            raise ConfigurationError(f"{user!r} is the user of a process role; it stays")
        users = {name: u for name, u in current.nats_users.items() if name != user}
        updated = replace(current, nats_users=users)
        _save(data_dir, updated)
    return updated


def with_userinfo(url: str, user: str, password: str) -> str:
    """Return ``url`` with ``user:password@`` in front of its host (replacing any there)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def without_userinfo(url: str) -> str:
    """Return ``url`` without ``user:password@`` (for a file or a log line)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _from_json(raw: dict[str, Any]) -> StackCredentials:
    users = {}
    for name, item in raw["nats"].items():
        users[name] = NatsUser(
            user=name,
            password=str(item["password"]),
            publish=tuple(item["publish"]) if item.get("publish") is not None else None,
            subscribe=tuple(item["subscribe"]) if item.get("subscribe") is not None else None,
            tenant=item.get("tenant"),
            inbox_prefix=item.get("inbox_prefix"),
        )
    return StackCredentials(postgres_password=str(raw["postgres"]["password"]), nats_users=users)


def _save(data_dir: Path, credentials: StackCredentials) -> None:
    body = {
        "version": _VERSION,
        "postgres": {"user": "postgres", "password": credentials.postgres_password},
        "nats": {
            name: {
                "password": u.password,
                "publish": list(u.publish) if u.publish is not None else None,
                "subscribe": list(u.subscribe) if u.subscribe is not None else None,
                "tenant": u.tenant,
                "inbox_prefix": u.inbox_prefix,
            }
            for name, u in credentials.nats_users.items()
        },
    }
    path = credentials_path(data_dir)
    # mkstemp creates the file mode 600 before a byte of it is written.
    fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=".credentials.", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(body, out, indent=2)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    import fcntl  # POSIX only, like the whole embedded stack

    (data_dir / "run").mkdir(parents=True, exist_ok=True)
    with (data_dir / "run" / "credentials.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
