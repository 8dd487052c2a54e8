"""``spine up``: the embedded servers, then the API and worker processes, watched until Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import BaseModel, SecretStr
from rich.console import Console
from rich.panel import Panel

from spine.platform.db import Database
from spine.platform.embedded.stack import (
    LOCAL_MODEL,
    EmbeddedStack,
    apply_endpoints,
    local_model_missing,
    read_state,
    stack_status,
    stop_stack,
)
from spine.platform.embedded.state import die_with_parent
from spine.platform.errors import ConfigurationError
from spine.platform.keys import KeyStore
from spine.platform.router import TOY_NOTE
from spine.platform.settings import ENV_PREFIX, NESTED_DELIMITER, Settings

__all__ = [
    "LocalModelPlan",
    "StackRunner",
    "attach_detached_stack",
    "describe_config",
    "plan_local_model",
]

ADMIN_KEY_FILE = "admin.key"
_URL_ENV = {
    "database_url": "GENAI_DATABASE_URL",
    "nats_url": "GENAI_NATS_URL",
    "redis_url": "GENAI_REDIS_URL",
    "neo4j_uri": "GENAI_NEO4J_URI",
}
_LOCAL_MODEL_URL_ENV = "GENAI_LOCAL_MODEL__URL"
_PASSWORD_IN_URL = re.compile(r"(://[^:/@]+):[^@/]+@")


@dataclass(slots=True, kw_only=True, frozen=True)
class LocalModelPlan:
    """Whether ``spine up`` starts the embedded local model, and the line to tell people."""

    start: bool
    note: str = ""


def plan_local_model(settings: Settings) -> LocalModelPlan:
    """Decide whether ``spine up`` starts the local model (it is toy quality: say so).

    Raises:
        ConfigurationError: The local model is asked for by ``GENAI_LOCAL_MODEL__ENABLED=true``
            or ``GENAI_DEFAULT_PROVIDER=local`` but the ``local`` extra or its model is missing.
    """
    if not settings.wants_local_model():
        return LocalModelPlan(start=False)
    missing = local_model_missing(settings.local_model)
    if missing is None:
        return LocalModelPlan(start=True, note=f"local model {settings.models.local} is {TOY_NOTE}")
    if settings.local_model.enabled is True or settings.default_provider == "local":
        raise ConfigurationError(missing, field="GENAI_LOCAL_MODEL__ENABLED")
    return LocalModelPlan(
        start=False, note=f"no model provider is configured, and no local model: {missing}"
    )


def describe_config(settings: Settings) -> tuple[list[tuple[str, str]], list[str]]:
    """List every setting as (variable, shown value), secrets masked; and what is embedded.

    The embedded list names ``local_model`` when ``spine up`` would start the local model.
    """
    rows: list[tuple[str, str]] = []

    def walk(model: BaseModel, prefix: str) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            variable = prefix + name.upper()
            if isinstance(value, BaseModel):
                walk(value, variable + NESTED_DELIMITER)
            else:
                rows.append((variable, _shown(value)))

    walk(settings, ENV_PREFIX)
    embedded = settings.embedded_services()
    if settings.wants_local_model() and local_model_missing(settings.local_model) is None:
        embedded.append(LOCAL_MODEL)
    return rows, embedded


def _shown(value: object) -> str:
    if isinstance(value, SecretStr):
        return "********" if value.get_secret_value() else ""
    if value is None:
        return "(unset)"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return _PASSWORD_IN_URL.sub(r"\1:***@", str(value))


def attach_detached_stack(settings: Settings) -> Settings:
    """Fill unset URLs from servers that ``spine up --detach`` left running in the data dir."""
    if not settings.embedded_services() and not settings.wants_local_model():
        return settings
    state = read_state(settings.data_dir)
    if state is None or not any(s.alive for s in stack_status(settings.data_dir)):
        return settings
    return apply_endpoints(settings, state.endpoints)


class StackRunner:
    """Runs the whole platform on one machine, starting what is not configured."""

    def __init__(self, settings: Settings, *, console: Console) -> None:
        self.settings = settings
        self.console = console
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def run(self, *, workers: int, concurrency: int | None, detach: bool) -> int:
        """Start everything, watch it, and stop it all on Ctrl-C; return the exit code."""
        # `kill <pid>` stops as cleanly as Ctrl-C: workers, then the API, then the servers.
        signal.signal(signal.SIGTERM, _interrupt)
        settings = attach_detached_stack(self.settings)
        stack = None
        wanted = settings.embedded_services()
        local = plan_local_model(settings)
        if wanted or local.start:
            services = [*wanted, LOCAL_MODEL] if local.start else wanted
            stack = EmbeddedStack.from_settings(settings, services=services, detach=detach)
            with self.console.status("starting embedded servers...") as status:
                endpoints = stack.start(
                    lambda server, message: status.update(f"{server}: {message}")
                )
            for service in wanted:
                self.console.print(
                    f"[green]✓[/green] {service} (embedded, data in {settings.data_dir})"
                )
            settings = apply_endpoints(settings, endpoints)
        if not wanted:
            self.console.print("every backing service is configured; nothing embedded")
        if local.start:
            self.console.print(
                f"[green]✓[/green] local model {settings.models.local} at "
                f"{settings.local_model.url} (embedded)"
            )
        if local.note:
            self.console.print(f"[yellow]{local.note}[/yellow]")
        if detach:
            for field, env in _URL_ENV.items():
                self.console.print(f"{env}={getattr(settings, field)}")
            if settings.local_model.url is not None:
                self.console.print(f"{_LOCAL_MODEL_URL_ENV}={settings.local_model.url}")
            self.console.print("servers run detached; `spine down` stops them")
            return 0
        try:
            self._first_admin_key(settings)
            self._spawn(settings, workers=workers, concurrency=concurrency)
            return self._watch(stack)
        except KeyboardInterrupt:
            self.console.print("stopping...")
            return 0
        finally:
            self._stop_children()
            if stack is not None:
                stack.stop()
                self.console.print(f"embedded servers stopped; data kept in {settings.data_dir}")

    def stop_detached(self) -> list[str]:
        """Stop servers started with ``--detach``."""
        return stop_stack(self.settings.data_dir)

    def status(self) -> list[tuple[str, str, str, str]]:
        """Describe the recorded servers of the data dir."""
        return [
            (
                s.name,
                "running" if s.alive else "stopped",
                str(s.pid or ""),
                ", ".join(f"{k} 127.0.0.1:{v}" for k, v in s.ports.items()),
            )
            for s in stack_status(self.settings.data_dir)
        ]

    def _first_admin_key(self, settings: Settings) -> None:
        secret = asyncio.run(_prepare_database(settings))
        if secret is None:
            return
        path = settings.data_dir / ADMIN_KEY_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secret + "\n")
        self.console.print(
            Panel(
                f"{secret}\n\nShown once. The CLI reads it from {path} (mode 600); other clients "
                "send it as 'Authorization: Bearer <key>'.",
                title="first operator key (tenant 'default'; reads across tenants)",
            )
        )

    def _spawn(self, settings: Settings, *, workers: int, concurrency: int | None) -> None:
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        for field, name in _URL_ENV.items():
            value = getattr(settings, field)
            if value is not None:
                env[name] = value
        if settings.local_model.url is not None:
            env[_LOCAL_MODEL_URL_ENV] = settings.local_model.url
        command = [sys.executable, "-m", "spine.platform.app.cli"]
        self._children["api"] = subprocess.Popen([*command, "api"], env=env)
        for index in range(workers):
            extra = ["--concurrency", str(concurrency)] if concurrency else []
            self._children[f"worker-{index + 1}"] = subprocess.Popen(
                [*command, "worker", *extra], env=env
            )
        host = "127.0.0.1" if settings.api.host in {"0.0.0.0", "::"} else settings.api.host
        url = f"http://{host}:{settings.api.port}"
        with self.console.status(f"waiting for the API at {url}..."):
            self._wait_healthy(url)
        self.console.print(f"[green]✓[/green] API at {url}, {workers} worker process(es)")
        self.console.print("try: spine submit 'Say hello' --follow    (Ctrl-C stops everything)")

    def _wait_healthy(self, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            api = self._children["api"]
            if api.poll() is not None:
                raise SystemExit(f"the API process exited with code {api.returncode}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the API did not answer at {url} within {timeout:.0f} s")

    def _watch(self, stack: EmbeddedStack | None) -> int:
        while True:
            time.sleep(1)
            for dead in stack.dead() if stack is not None else []:
                self.console.print(
                    f"[red]embedded {dead.name} died (exit code "
                    f"{dead.exit_code})[/red]; end of {dead.log_path}:\n"
                    f"{dead.log_tail}"
                )
                return 1
            for name, child in self._children.items():
                if child.poll() is not None:
                    self.console.print(f"[red]{name} exited with code {child.returncode}[/red]")
                    return 1

    def _stop_children(self) -> None:
        # Workers first, so they finish their tasks while the API and the servers still run.
        workers = [c for name, c in self._children.items() if name != "api"]
        api = [c for name, c in self._children.items() if name == "api"]
        for group in (workers, api):
            for child in group:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 20
            for child in group:
                try:
                    child.wait(max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        self._children.clear()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _child(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Its own process group, so Ctrl-C reaches only `spine up`, which stops children in order;
    # and on Linux the child gets SIGTERM if `spine up` itself dies.
    return subprocess.Popen(command, env=env, process_group=0, preexec_fn=die_with_parent)


async def _prepare_database(settings: Settings) -> str | None:
    """Migrate, and on a fresh database issue the first operator key; return its secret."""
    assert settings.database_url is not None
    db = Database(settings.database_url)
    try:
        await db.migrate()
        keys = KeyStore(db)
        if await keys.any_exist():
            return None
        issued = await keys.create(tenant="default", role="operator", name="first operator key")
        return issued.secret
    finally:
        await db.dispose()


def admin_key_path(data_dir: Path) -> Path:
    """Return where ``spine up`` keeps the first operator key for the CLI."""
    return data_dir / ADMIN_KEY_FILE
