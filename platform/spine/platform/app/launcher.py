"""``spine up``: the embedded servers, then the API and worker processes, supervised until Ctrl-C.

``spine up`` stays up as long as the platform does: the database's schema and first key are
made by a one-shot child (:mod:`spine.platform.app.bootstrap`), and what only one path needs
is imported there.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from pydantic import BaseModel, SecretStr
from rich.console import Console
from rich.panel import Panel

from spine.events.permissions import ROLE_GRANTS
from spine.platform.embedded.children import ProcessChild, ServerChild
from spine.platform.embedded.credentials import credentials_path
from spine.platform.embedded.stack import (
    LOCAL_MODEL,
    EmbeddedStack,
    Endpoints,
    apply_endpoints,
    endpoints_for,
    local_model_missing,
    read_state,
    stack_status,
    stop_stack,
)
from spine.platform.embedded.state import die_with_parent, find_process, terminate_process
from spine.platform.embedded.supervisor import (
    ChildRecord,
    RestartPolicy,
    Supervisor,
    describe_exit,
    load_supervisor_state,
    stop_leftover_children,
    supervisor_state_path,
)
from spine.platform.embedded.watchdog import Watchdog
from spine.platform.errors import ConfigurationError, ServiceUnavailable
from spine.platform.settings import ENV_PREFIX, NESTED_DELIMITER, Settings

__all__ = [
    "LocalModelPlan",
    "StackRunner",
    "attach_detached_stack",
    "describe_config",
    "plan_local_model",
    "server_url",
]

ADMIN_KEY_FILE = "admin.key"
_URL_ENV = {
    "database_url": "GENAI_DATABASE_URL",
    "nats_url": "GENAI_NATS_URL",
    "redis_url": "GENAI_REDIS_URL",
    "neo4j_uri": "GENAI_NEO4J_URI",
    "falkordb_url": "GENAI_FALKORDB_URL",
}
_LOCAL_MODEL_URL_ENV = "GENAI_LOCAL_MODEL__URL"
_SUPERVISOR_STATE_ENV = "GENAI_SUPERVISOR__STATE_FILE"
_PASSWORD_IN_URL = re.compile(r"(://[^:/@]+):[^@/]+@")
_BOOTSTRAP = "spine.platform.app.bootstrap"
CHILD_MALLOC_ENV = {"MALLOC_ARENA_MAX": "2"}
"""glibc's malloc in every Python child (unless set already): two arenas, not eight per core."""


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
        from spine.platform.router.specs import TOY_NOTE

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


def attach_detached_stack(settings: Settings, *, role: str = "api") -> Settings:
    """Fill unset URLs from servers that ``spine up --detach`` left running in the data dir.

    Args:
        settings: The settings of a command.
        role: The NATS user whose credentials the NATS URL carries (``api``, ``worker``, ...).
    """
    if not settings.embedded_services() and not settings.wants_local_model():
        return settings
    state = read_state(settings.data_dir)
    if state is None or not any(s.alive for s in stack_status(settings.data_dir)):
        return settings
    return apply_endpoints(
        settings, endpoints_for(settings.data_dir, state.endpoints, nats_user=role)
    )


class StackRunner:
    """Runs the whole platform on one machine, starting what is not configured.

    ``spine up``, step by step:

    1. A ``spine up`` of this data dir that was killed left children running: stop them (its
       processes here; its servers when the stack starts, see :class:`EmbeddedStack`).
    2. Start the embedded servers, each NATS role and PostgreSQL with generated credentials.
       Over a detached stack, start only the servers of it that died (detached again).
    3. Start the watchdog, then the API and the workers, each with the URLs of its role.
    4. Supervise (:class:`Supervisor`): restart what dies, until Ctrl-C or SIGTERM; then stop
       the workers, the API, the servers, in that order.
    """

    def __init__(self, settings: Settings, *, console: Console) -> None:
        self.settings = settings
        self.console = console
        self.supervisor: Supervisor | None = None

    def run(self, *, workers: int, concurrency: int | None, detach: bool) -> int:
        """Start everything, supervise it, and stop it all on Ctrl-C; return the exit code."""
        # `kill <pid>` stops as cleanly as Ctrl-C: workers, then the API, then the servers.
        # SIGINT too, explicitly: a shell that starts us in the background ignores it for us.
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)
        settings = self.settings
        data_dir = settings.data_dir.resolve()
        for left in stop_leftover_children(data_dir, timeout=settings.supervisor.stop_timeout):
            self.console.print(f"[yellow]stopped {left}, left by a spine up that was killed")
        try:
            stack, endpoints = self._start_servers(settings, detach=detach)
        except KeyboardInterrupt:
            self.console.print("stopped while starting")
            return 130
        if detach:
            shown = apply_endpoints(settings, endpoints)
            for field, env in _URL_ENV.items():
                self.console.print(f"{env}={_shown(getattr(shown, field))}")
            if shown.local_model.url is not None:
                self.console.print(f"{_LOCAL_MODEL_URL_ENV}={shown.local_model.url}")
            self.console.print(
                f"servers run detached; credentials in {credentials_path(data_dir)} (mode 600), "
                "which `spine` commands run here use; `spine down` stops them"
            )
            return 0
        supervised = stack if stack is not None and not stack.detach else None
        watchdog = Watchdog(grace=settings.supervisor.stop_timeout).start()
        self.supervisor = supervisor = Supervisor(
            data_dir,
            policy=RestartPolicy(
                backoff_initial=settings.supervisor.backoff_initial,
                backoff_max=settings.supervisor.backoff_max,
                crash_loop_restarts=settings.supervisor.crash_loop_restarts,
                crash_loop_window=settings.supervisor.crash_loop_window,
            ),
            watchdog=watchdog,
        )
        try:
            if supervised is not None:
                # Stopped last started first, after the workers (order 0) and the API (1).
                for order, server in enumerate(reversed(supervised.servers), start=2):
                    supervisor.add(ServerChild(supervised, server), order=order)
            self._first_admin_key(apply_endpoints(settings, endpoints))
            self._spawn(settings, endpoints, workers=workers, concurrency=concurrency)
            supervisor.run()
            return 0
        except KeyboardInterrupt:
            self.console.print("stopping...")
            return 0
        finally:
            # A second Ctrl-C must not cut the ordered stop short (it is bounded by timeouts).
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            supervisor.stop(settings.supervisor.stop_timeout)
            if supervised is not None:
                supervised.stop()
                self.console.print(f"embedded servers stopped; data kept in {settings.data_dir}")
            watchdog.close()

    def stop_detached(self) -> list[str]:
        """Stop a running ``spine up`` of this data dir (as Ctrl-C would), or detached servers."""
        data_dir = self.settings.data_dir.resolve()
        state = load_supervisor_state(data_dir)
        if state is not None and not state.stopping and state.owner_alive():
            owner = find_process(state.owner_pid, state.owner_create_time)
            if owner is not None:
                terminate_process(owner, signal.SIGTERM, 4 * self.settings.supervisor.stop_timeout)
                return [f"spine up (pid {owner.pid})"]
        return stop_stack(data_dir)

    def status(self) -> list[tuple[str, str, str, str]]:
        """Describe the servers and processes of the data dir: name, state, pid, detail."""
        data_dir = self.settings.data_dir.resolve()
        supervision = load_supervisor_state(data_dir)
        children = (
            supervision.children if supervision is not None and supervision.owner_alive() else {}
        )
        rows = []
        for s in stack_status(data_dir):
            record = children.get(s.name)
            state = record.summary() if record else ("running" if s.alive else "stopped")
            detail = ", ".join(server_url(s.name, k, v) for k, v in s.ports.items())
            rows.append((s.name, state, str(s.pid or ""), _with_restarts(detail, record)))
        for name, record in children.items():
            if record.kind == "process":
                pid = str(record.pid or "") if record.state == "running" else ""
                rows.append((name, record.summary(), pid, _with_restarts("", record)))
        return rows

    def _start_servers(
        self, settings: Settings, *, detach: bool
    ) -> tuple[EmbeddedStack | None, Endpoints]:
        wanted = settings.embedded_services()
        local = plan_local_model(settings)
        services = [*wanted, LOCAL_MODEL] if local.start else wanted
        if not services:
            self.console.print("every backing service is configured; nothing embedded")
            if local.note:
                self.console.print(f"[yellow]{local.note}[/yellow]")
            return None, Endpoints()
        data_dir = settings.data_dir.resolve()
        previous = read_state(data_dir)
        # Over a detached stack that runs, stay detached: start only the servers that died.
        over_detached = (
            previous is not None
            and previous.detached
            and any(s.alive for s in stack_status(data_dir))
        )
        stack = EmbeddedStack.from_settings(
            settings, services=services, detach=detach or over_detached, nats_roles=ROLE_GRANTS
        )
        with self.console.status("starting embedded servers...") as status:
            endpoints = stack.start(lambda server, message: status.update(f"{server}: {message}"))
        for server, pid in stack.kept.items():
            self.console.print(f"[green]✓[/green] {server} (detached, already running: pid {pid})")
        recorded = previous.servers if previous is not None and previous.detached else {}
        for server in stack.started:
            if server in recorded:
                self.console.print(
                    f"[yellow]↻[/yellow] {server} was not running; restarted it (detached, "
                    f"same port, data in {settings.data_dir})"
                )
            else:
                self.console.print(
                    f"[green]✓[/green] {server} (embedded, data in {settings.data_dir})"
                )
        if local.start:
            self.console.print(
                f"[green]✓[/green] local model {settings.models.local} at "
                f"{endpoints.local_model_url} (embedded)"
            )
        if local.note:
            self.console.print(f"[yellow]{local.note}[/yellow]")
        return stack, endpoints

    def _first_admin_key(self, settings: Settings) -> None:
        secret = _prepare_database_in_child(settings)
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

    def _spawn(
        self, settings: Settings, endpoints: Endpoints, *, workers: int, concurrency: int | None
    ) -> None:
        assert self.supervisor is not None
        command = [sys.executable, "-m", "spine.platform.app.cli"]
        state_file = supervisor_state_path(settings.data_dir.resolve())
        api_env = _child_env(settings, endpoints, role="api")
        api_env[_SUPERVISOR_STATE_ENV] = str(state_file)
        api = ProcessChild("api", [*command, "api"], env=api_env)
        self.supervisor.add(api, order=1, start=True)
        worker_env = _child_env(settings, endpoints, role="worker")
        extra = ["--concurrency", str(concurrency)] if concurrency else []
        for index in range(workers):
            worker = ProcessChild(
                f"worker-{index + 1}", [*command, "worker", *extra], env=worker_env
            )
            self.supervisor.add(worker, order=0, start=True)
        # The learning consumer: outcomes and feedback into routing weights (one is enough).
        learner = ProcessChild(
            "learner", [*command, "learner"], env=_child_env(settings, endpoints, role="learner")
        )
        self.supervisor.add(learner, order=0, start=True)
        host = "127.0.0.1" if settings.api.host in {"0.0.0.0", "::"} else settings.api.host
        url = f"http://{host}:{settings.api.port}"
        with self.console.status(f"waiting for the API at {url}..."):
            self._wait_healthy(api, url)
        self.console.print(
            f"[green]✓[/green] API at {url}, {workers} worker process(es), the learner"
        )
        self.console.print("try: spine submit 'Say hello' --follow    (Ctrl-C stops everything)")

    def _wait_healthy(self, api: ProcessChild, url: str, timeout: float = 60.0) -> None:
        # A first start that fails (a port in use, a bad setting) is reported, not retried.
        assert self.supervisor is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = api.poll()
            if code is not None:
                raise SystemExit(f"the API process exited ({describe_exit(code)})")
            self.supervisor.tick()
            try:
                # The URL is the http://host:port built by _spawn, never input.
                with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise SystemExit(f"the API did not answer at {url} within {timeout:.0f} s")


_SCHEMES = {
    ("nats", "client"): "nats",
    ("postgres", "client"): "postgresql",
    ("falkordb", "client"): "redis",
}


def server_url(server: str, port_name: str, port: int) -> str:
    """Return where an embedded server's port answers, as a URL (no credentials)."""
    scheme = _SCHEMES.get((server, port_name), "http")
    path = "/v1" if server in {"llama", LOCAL_MODEL} else ""
    url = f"{scheme}://127.0.0.1:{port}{path}"
    return url if port_name == "client" else f"{port_name} {url}"


def _with_restarts(detail: str, record: ChildRecord | None) -> str:
    if record is None or not record.restarts:
        return detail
    restarts = f"{record.restarts} restart(s), last exit: {record.last_exit}"
    return f"{detail}; {restarts}" if detail else restarts


def _child_env(settings: Settings, endpoints: Endpoints, *, role: str) -> dict[str, str]:
    """The environment of a child: ours, plus the URLs with the credentials of its role."""
    mine = apply_endpoints(settings, endpoints_for(settings.data_dir, endpoints, nats_user=role))
    env = {**CHILD_MALLOC_ENV, **os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    for field, name in _URL_ENV.items():
        value = getattr(mine, field, None)
        if value is not None:
            env[name] = value
    if mine.local_model.url is not None:
        env[_LOCAL_MODEL_URL_ENV] = mine.local_model.url
    return env


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _prepare_database_in_child(settings: Settings) -> str | None:
    """Migrate and issue the first operator key in a one-shot child; return the new secret.

    The child is :mod:`spine.platform.app.bootstrap` (why a child: see there).

    Raises:
        ServiceUnavailable: The child failed (its last error line says why).
    """
    assert settings.database_url is not None
    env = {
        **CHILD_MALLOC_ENV,
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        _URL_ENV["database_url"]: settings.database_url,
    }
    done = subprocess.run(
        [sys.executable, "-m", _BOOTSTRAP],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=partial(die_with_parent, signal.SIGTERM, os.getpid()),
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [describe_exit(done.returncode)]
        reason = _PASSWORD_IN_URL.sub(r"\1:***@", lines[-1])
        raise ServiceUnavailable(f"preparing the database failed: {reason}", service="postgres")
    secret = done.stdout.strip()
    return secret or None


def admin_key_path(data_dir: Path) -> Path:
    """Return where ``spine up`` keeps the first operator key for the CLI."""
    return data_dir / ADMIN_KEY_FILE
