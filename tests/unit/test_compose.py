"""The container files stay true to the code.

No Docker engine runs here, so these tests read ``docker-compose.yml``, ``infra/Dockerfile``,
``infra/nats/nats-server.conf`` and ``infra/k8s/*.yaml`` as data: the services and tiers the
architecture promises, and above all that every ``GENAI_*`` name they set is one that
:class:`spine.platform.settings.Settings` reads (it ignores unknown names silently).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel

from spine.platform.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "infra" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
NATS_CONF = ROOT / "infra" / "nats" / "nats-server.conf"
POSTGRES_INIT = ROOT / "infra" / "postgres" / "init.sql"
K8S = ROOT / "infra" / "k8s"

SEED_NAMES = frozenset(
    {
        "GENAI_DEFAULT_PROVIDER",
        "GENAI_OLLAMA_URL",
        "GENAI_DATABASE_URL",
        "GENAI_OPENAI_API_KEY",
        "GENAI_ANTHROPIC_API_KEY",
        "GENAI_FALLBACK_CHAIN",
        "GENAI_REDIS_URL",
        "GENAI_BUDGET_DAILY",
    }
)
TIERS = ("tier1", "tier2", "tier3", "tier4")
BACKING = frozenset({"nats", "ollama", "postgres", "redis", "neo4j"})
TIER_BACKING = {
    "tier1": {"nats", "ollama"},
    "tier2": {"nats", "ollama", "postgres", "redis"},
    "tier3": {"nats", "ollama", "postgres", "redis"},
    "tier4": set(BACKING),
}
# Which container port each service must publish.
SERVICE_PORTS = {
    "api": {8100},
    "nats": {4222, 8222},
    "postgres": {5432},
    "redis": {6379},
    "neo4j": {7687, 7474},
    "ollama": {11434},
}
# The setting holding each backing service's URL, and the port it is reached on.
SERVICE_URLS = {
    "nats": ("nats_url", 4222),
    "postgres": ("database_url", 5432),
    "redis": ("redis_url", 6379),
    "neo4j": ("neo4j_uri", 7687),
    "ollama": ("ollama_url", 11434),
}
SECRET_NAME = re.compile(r"(_KEY|_PASSWORD|_SECRET|_TOKEN)$")
WHOLE_INTERPOLATION = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:?-[^}]*)?\}$")


# ---- the valid names, derived from the settings tree ----------------------------------------


def settings_env_names(model: type[BaseModel] = Settings, prefix: str | None = None) -> set[str]:
    """Return every environment name pydantic-settings reads for ``model``'s fields.

    Top-level fields are ``<prefix><FIELD>``; a field holding a BaseModel is a section, set
    whole (as JSON) or field by field as ``<prefix><SECTION><delimiter><FIELD>``, recursively.
    """
    config = Settings.model_config
    if prefix is None:
        prefix = config.get("env_prefix") or ""
    delimiter = config.get("env_nested_delimiter") or ""
    names: set[str] = set()
    for field_name, field in model.model_fields.items():
        alias = field.validation_alias or field.alias
        name = alias.upper() if isinstance(alias, str) else (prefix + field_name).upper()
        names.add(name)
        section = _section_model(field.annotation)
        if section is not None and delimiter:
            names |= settings_env_names(section, name + delimiter)
    return names


def _section_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # Optional sections
        for arg in typing.get_args(annotation):
            found = _section_model(arg)
            if found is not None:
                return found
    return None


VALID_NAMES = frozenset(settings_env_names())


def test_the_name_helper_reads_the_settings_tree() -> None:
    assert SEED_NAMES <= VALID_NAMES
    assert {"GENAI_NATS_URL", "GENAI_API__HOST", "GENAI_WORKER__CONCURRENCY"} <= VALID_NAMES
    assert "GENAI_API__NO_SUCH_FIELD" not in VALID_NAMES
    assert "GENAI_HOST" not in VALID_NAMES


# ---- readers ---------------------------------------------------------------------------------

_INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Resolve compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}`` and ``$$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        current = env.get(match.group("braced") or match.group("bare"))
        if match.group("op") == ":-":
            return current or match.group("arg")
        if match.group("op") == "-":
            return match.group("arg") if current is None else current
        return current or ""

    return _INTERPOLATION.sub(replace, value)


def interpolated_names(value: str) -> set[str]:
    return {
        m.group("braced") or m.group("bare")
        for m in _INTERPOLATION.finditer(value)
        if m.group(0) != "$$"
    }


@cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    return dict(compose()["services"])


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def resolved(
    service: Mapping[str, Any], host_env: Mapping[str, str] | None = None
) -> dict[str, str]:
    return {k: interpolate(v, host_env or {}) for k, v in environment(service).items()}


def published(service: Mapping[str, Any]) -> dict[int, int]:
    """Map each published container port to its host port."""
    ports: dict[int, int] = {}
    for port in service.get("ports", []):
        if isinstance(port, dict):
            long_form: dict[str, Any] = port
            target = long_form["target"]
            ports[int(target)] = int(long_form.get("published", target))
            continue
        parts = str(port).split("/")[0].rsplit(":", 2)
        ports[int(parts[-1])] = int(parts[-2] if len(parts) > 1 else parts[-1])
    return ports


def selected(profile: str) -> set[str]:
    """The services ``docker compose --profile <profile> up`` starts."""
    return {
        name
        for name, svc in services().items()
        if not svc.get("profiles") or profile in svc["profiles"]
    }


def depends_on(service: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return dict(deps)


def volume_targets(service: Mapping[str, Any]) -> dict[str, str]:
    """Map each mount target to its source."""
    mounts: dict[str, str] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts[volume["target"]] = volume.get("source", "")
        else:
            source, target = str(volume).split(":")[:2]
            mounts[target] = source
    return mounts


def is_under(path: str, directory: str) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(directory))


@cache
def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), continuations joined."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        keyword, _, args = (current + line).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        current = ""
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            env.update(token.split("=", 1) for token in shlex.split(args))  # type: ignore[misc]
    return env


def exec_form(keyword: str) -> list[str]:
    args = [args for kw, args in final_stage() if kw == keyword][-1]
    value = json.loads(args)
    assert isinstance(value, list), f"{keyword} should use the exec (JSON) form"
    return value


@cache
def k8s_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def k8s(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in k8s_documents() if doc["kind"] == kind]


def deployment(component: str) -> dict[str, Any]:
    (found,) = [
        d
        for d in k8s("Deployment")
        if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
        == component
    ]
    return found


def walk_genai_names(value: Any) -> Iterator[str]:
    """Yield every GENAI_* key, ``name:`` value or interpolated variable inside ``value``."""
    if isinstance(value, dict):
        for key, item in value.items():
            if str(key).upper().startswith("GENAI_"):
                yield str(key)
            if key == "name" and str(item).startswith("GENAI_"):
                yield str(item)
            yield from walk_genai_names(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk_genai_names(item)
    elif isinstance(value, str):
        if "=" in value and value.upper().startswith("GENAI_"):  # list-form environment
            yield value.split("=", 1)[0]
        yield from (n for n in interpolated_names(value) if n.upper().startswith("GENAI_"))


def settings_from(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.upper().startswith("GENAI_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


# The tiers' api/worker pairs; the `scale` profile's apps: tests/unit/infra/test_manifests.py.
APP_SERVICES = sorted(
    name
    for name, svc in services().items()
    if "build" in svc and set(svc.get("profiles") or []) & set(TIERS)
)


def role(name: str) -> str:
    return str(services()[name]["command"][0])


# ---- compose: services, images, ports --------------------------------------------------------


def test_the_required_services_exist_with_their_images() -> None:
    svcs = services()
    assert {"api", "worker"} | BACKING <= set(svcs)
    assert re.fullmatch(r"nats:2\.(\d+)(\.\d+)?(-alpine[\d.]*)?", svcs["nats"]["image"])
    assert int(svcs["nats"]["image"].split(".")[1].split("-")[0]) >= 10
    assert svcs["postgres"]["image"] == "pgvector/pgvector:pg16"
    assert re.fullmatch(r"neo4j:5(\.[\d.]+)?(-community)?", svcs["neo4j"]["image"])
    assert re.fullmatch(r"redis:7(\.[\d.]+)?(-\w+)?", svcs["redis"]["image"])
    assert svcs["ollama"]["image"].split(":")[0] == "ollama/ollama"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_build_the_one_image(name: str) -> None:
    build = services()[name]["build"]
    assert (ROOT / build["context"]).resolve() == ROOT
    assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert services()[name]["image"] == services()["api"]["image"]


@pytest.mark.parametrize(("name", "ports"), sorted(SERVICE_PORTS.items()))
def test_services_publish_their_ports(name: str, ports: set[int]) -> None:
    assert ports <= set(published(services()[name]))


def test_the_api_listens_on_8100_on_the_host() -> None:
    assert published(services()["api"]) == {8100: 8100}


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_run_spine_api_or_spine_worker(name: str) -> None:
    svc = services()[name]
    argv = exec_form("ENTRYPOINT") + [str(arg) for arg in svc["command"]]
    if role(name) == "api":
        assert argv == ["spine", "api"]
        assert published(svc) == {8100: 8100}
    else:
        assert argv == ["spine", "worker", "--concurrency", "8"]
        assert not svc.get("ports"), "workers serve no port"
        assert int(svc["deploy"]["replicas"]) >= 1
        # The image's HEALTHCHECK polls /healthz, which a worker does not serve.
        assert svc["healthcheck"].get("disable") is True


@pytest.mark.parametrize("name", sorted(BACKING))
def test_backing_services_have_healthchecks_and_volumes(name: str) -> None:
    svc = services()[name]
    assert svc["healthcheck"]["test"], f"{name} needs a healthcheck"
    named = set(compose().get("volumes") or {})
    assert named & set(volume_targets(svc).values()), f"{name} should keep its data in a volume"


def test_postgres_starts_the_spine_database_with_pgvector() -> None:
    svc = services()["postgres"]
    env = resolved(svc)
    assert env["POSTGRES_DB"] == "spine"
    assert "pg_isready" in " ".join(svc["healthcheck"]["test"])
    init = {
        t: s for t, s in volume_targets(svc).items() if t.startswith("/docker-entrypoint-initdb.d/")
    }
    assert [(ROOT / s).resolve() for s in init.values()] == [POSTGRES_INIT]
    assert "CREATE EXTENSION IF NOT EXISTS vector;" in POSTGRES_INIT.read_text()


def test_redis_appends_only() -> None:
    assert "--appendonly yes" in " ".join(services()["redis"]["command"])


# ---- NATS ------------------------------------------------------------------------------------


def nats_config_text() -> str:
    return "\n".join(line.split("#", 1)[0] for line in NATS_CONF.read_text().splitlines())


def test_nats_runs_jetstream_on_disk_with_fsync_always() -> None:
    text = nats_config_text()
    jetstream = re.search(r"^\s*jetstream\s*[:=]?\s*\{(?P<body>[^}]*)\}", text, re.M)
    assert jetstream, "JetStream must be enabled"
    body = jetstream.group("body")
    assert re.search(r"^\s*sync_interval\s*[:=]\s*always\s*$", body, re.M)
    store = re.search(r"^\s*store_dir\s*[:=]\s*\"?(?P<dir>[^\"\s]+)", body, re.M)
    assert store, "JetStream needs a store_dir (file storage)"
    assert re.search(r"^\s*max_payload\s*[:=]", text, re.M)
    assert re.search(r"^\s*http_port\s*[:=]\s*8222\s*$", text, re.M)
    assert not re.search(r"^\s*cluster\s*[:=]?\s*\{", text, re.M), "single node in compose"
    assert re.search(r"^#\s*cluster\s*\{", NATS_CONF.read_text(), re.M), "document the cluster"

    nats = services()["nats"]
    mounts = volume_targets(nats)
    config_path = nats["command"][nats["command"].index("--config") + 1]
    assert (ROOT / mounts[config_path]).resolve() == NATS_CONF
    assert any(
        is_under(store.group("dir"), target) and source in (compose().get("volumes") or {})
        for target, source in mounts.items()
    ), "the JetStream store must live on a named volume"
    assert "8222" in " ".join(nats["healthcheck"]["test"])


def test_the_nats_server_accepts_the_config() -> None:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    server = shutil.which("nats-server", path=path)
    if server is None:
        pytest.skip("nats-server (the embedded extra) is not installed")
    result = subprocess.run(
        [server, "-c", str(NATS_CONF), "-t"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr + result.stdout


# ---- names and values ------------------------------------------------------------------------


def test_compose_sets_only_names_the_settings_read() -> None:
    unknown = set(walk_genai_names(compose())) - VALID_NAMES
    assert not unknown, f"not fields of Settings: {sorted(unknown)}"


def test_kubernetes_sets_only_names_the_settings_read() -> None:
    unknown = set(walk_genai_names(k8s_documents())) - VALID_NAMES
    assert not unknown, f"not fields of Settings: {sorted(unknown)}"


def test_the_dockerfile_sets_only_names_the_settings_read() -> None:
    names = {n for n in dockerfile_env(final_stage()) if n.startswith("GENAI_")}
    assert names, "the image sets GENAI_API__HOST for containers"
    assert names <= VALID_NAMES, sorted(names - VALID_NAMES)


def test_the_api_service_carries_the_seed_names() -> None:
    assert set(environment(services()["api"])) >= SEED_NAMES


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_environment_is_a_valid_configuration(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = services()[name]
    settings = settings_from(resolved(svc), monkeypatch)
    assert settings.api.host == "0.0.0.0"
    assert settings.database_url, "a container must not fall back to an embedded database"
    assert settings.nats_url
    assert settings.ollama_url
    data_dir = PurePosixPath(settings.data_dir.as_posix())
    assert any(is_under(str(data_dir), target) for target in volume_targets(svc))
    if settings.database_url.startswith("sqlite:///"):
        workdir = [args for kw, args in final_stage() if kw == "WORKDIR"][-1]
        database = PurePosixPath(workdir, settings.database_url.removeprefix("sqlite:///"))
        assert any(is_under(str(database), target) for target in volume_targets(svc))


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_urls_point_at_services_started_with_them(name: str) -> None:
    svc = services()[name]
    env = resolved(svc)
    deps = depends_on(svc)
    for backing, (field, port) in SERVICE_URLS.items():
        url = env.get("GENAI_" + field.upper())
        if not url or url.startswith("sqlite"):
            assert backing not in deps or backing == "ollama"
            continue
        parts = urlsplit(url)
        assert (parts.hostname, parts.port) == (backing, port), f"{name}: {url}"
        assert deps[backing]["condition"] == "service_healthy"
        missing = set(svc["profiles"]) - set(services()[backing]["profiles"])
        assert not missing, f"{name} runs in {sorted(missing)} without {backing}"


# ---- profiles --------------------------------------------------------------------------------


@pytest.mark.parametrize("tier", TIERS)
def test_each_tier_profile_starts_a_whole_stack(tier: str) -> None:
    chosen = selected(tier)
    assert chosen & BACKING == TIER_BACKING[tier]
    apps = [n for n in chosen if n in APP_SERVICES]
    assert sorted(role(n) for n in apps) == ["api", "worker"]
    for name in chosen:
        for dep, how in depends_on(services()[name]).items():
            assert dep in chosen, f"{tier}: {name} depends on {dep}, which is not started"
            assert how["condition"] == "service_healthy"
            assert services()[dep].get("healthcheck", {}).get("test")
    hosts = [n for n in chosen if 8100 in published(services()[n]).values()]
    assert len(hosts) == 1, f"{tier}: one service on host port 8100, got {hosts}"


def test_tier1_runs_on_sqlite_and_tier4_on_everything() -> None:
    for name in selected("tier1") & set(APP_SERVICES):
        env = resolved(services()[name])
        assert env["GENAI_DATABASE_URL"] == "sqlite:///data/genai.db"
        assert not env.get("GENAI_REDIS_URL")
        assert not env.get("GENAI_NEO4J_URI")
    assert selected("tier4") >= BACKING | {"api", "worker"}
    assert selected("tier2") == selected("tier3")


def test_every_service_belongs_to_a_tier() -> None:
    for name, svc in services().items():
        assert svc.get("profiles"), f"{name} would start without a tier profile"
        assert set(svc["profiles"]) <= {*TIERS, "scale"}, name


# ---- secrets ---------------------------------------------------------------------------------


def test_no_literal_secrets_in_compose() -> None:
    for name, svc in services().items():
        for key, value in environment(svc).items():
            if SECRET_NAME.search(key):
                assert WHOLE_INTERPOLATION.match(value), f"{name}: {key} must be ${{...}}"
            if key == "NEO4J_AUTH":
                assert WHOLE_INTERPOLATION.match(value.partition("/")[2]), f"{name}: {key}"
            if "://" in value and "@" in value:
                password = value.split("://", 1)[1].rpartition("@")[0].partition(":")[2]
                assert WHOLE_INTERPOLATION.match(password), f"{name}: {key} embeds a password"


@pytest.mark.parametrize(
    "host_env", [{}, {"POSTGRES_PASSWORD": "p1", "NEO4J_PASSWORD": "n1-longer"}]
)
def test_servers_and_clients_share_their_passwords(host_env: dict[str, str]) -> None:
    postgres = resolved(services()["postgres"], host_env)
    neo4j_user, _, neo4j_password = resolved(services()["neo4j"], host_env)["NEO4J_AUTH"].partition(
        "/"
    )
    assert len(neo4j_password) >= 8, "Neo4j 5 refuses passwords shorter than 8 characters"
    for name in APP_SERVICES:
        env = resolved(services()[name], host_env)
        if env["GENAI_DATABASE_URL"].startswith("postgresql://"):
            url = urlsplit(env["GENAI_DATABASE_URL"])
            assert url.username == postgres["POSTGRES_USER"]
            assert url.password == postgres["POSTGRES_PASSWORD"]
            assert url.path == "/" + postgres["POSTGRES_DB"]
        if env.get("GENAI_NEO4J_URI"):
            assert env["GENAI_NEO4J_USER"] == neo4j_user
            assert env["GENAI_NEO4J_PASSWORD"] == neo4j_password


# ---- Dockerfile ------------------------------------------------------------------------------


def test_the_image_exposes_8100_and_runs_as_a_non_root_user() -> None:
    stage = final_stage()
    assert stage[0][1].split()[0] == "python:3.11-slim"
    assert "8100" in [
        port.split("/")[0] for kw, args in stage if kw == "EXPOSE" for port in args.split()
    ]
    users = [args for kw, args in stage if kw == "USER"]
    assert users, "the final stage must switch to a non-root USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    env = dockerfile_env(stage)
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert exec_form("ENTRYPOINT") == ["spine"]
    healthcheck = [args for kw, args in stage if kw == "HEALTHCHECK"][-1]
    assert "http://127.0.0.1:8100/healthz" in healthcheck


def test_the_image_installs_the_package_without_the_embedded_extra() -> None:
    runs = " ".join(args for kw, args in dockerfile() if kw == "RUN")
    assert re.search(r"pip install \.(\s|$)", runs)
    assert "embedded" not in runs


def test_the_build_context_carries_what_the_wheel_needs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= {
        p.split("/")[0] for p in project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    }
    copied = {
        source.rstrip("/")
        for kw, args in dockerfile()
        if kw == "COPY" and "--from" not in args
        for source in shlex.split(args)[:-1]
        if not source.startswith("--")
    }
    assert needed <= copied, f"COPY misses {sorted(needed - copied)}"

    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        verdict = False
        for pattern in patterns:
            negated = pattern.startswith("!")
            if any(fnmatch.fnmatch(p, pattern.lstrip("!").rstrip("/")) for p in prefixes):
                verdict = not negated
        return verdict

    for path in [*needed, "platform/spine/platform/settings.py"]:
        assert not ignored(path), f".dockerignore drops {path}"
    for path in [".env", ".venv", ".git", "data"]:
        assert ignored(path), f".dockerignore should drop {path}"


# ---- Kubernetes ------------------------------------------------------------------------------


def test_the_api_deployment_probes_readyz_and_healthz_with_config_and_secret() -> None:
    api = deployment("api")
    assert "replicas" not in api["spec"], "api-hpa.yaml owns the count"
    pod = api["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["api"]
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    assert 8100 in ports.values()
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert ports.get(get["port"], get["port"]) == 8100
    (config_map,) = k8s("ConfigMap")
    (secret,) = k8s("Secret")
    refs = container["envFrom"]
    assert {"configMapRef": {"name": config_map["metadata"]["name"]}} in refs
    assert {"secretRef": {"name": secret["metadata"]["name"]}} in refs


@pytest.mark.parametrize("component", ["worker", "learner"])
def test_workers_and_the_learner_expose_only_metrics_and_are_scraped(component: str) -> None:
    pod = deployment(component)["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9470}]
    annotations = pod["metadata"]["annotations"]
    assert (annotations["prometheus.io/scrape"], annotations["prometheus.io/port"]) == (
        "true",
        "9470",
    )
    (config_map,) = k8s("ConfigMap")
    assert config_map["data"]["GENAI_METRICS__HOST"] == "0.0.0.0"  # reachable from Prometheus


def test_the_worker_deployment_can_autoscale() -> None:
    worker = deployment("worker")
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "worker"
    assert container["resources"]["requests"]["cpu"], "an HPA needs CPU requests"
    assert (
        container["envFrom"]
        == deployment("api")["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    )


@pytest.mark.parametrize("component", ["api", "worker"])
def test_pods_run_as_non_root(component: str) -> None:
    security = deployment(component)["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] != 0


def test_the_service_selects_the_api_pods_only() -> None:
    (service,) = k8s("Service")
    selector = service["spec"]["selector"].items()
    assert selector <= deployment("api")["spec"]["template"]["metadata"]["labels"].items()
    assert not selector <= deployment("worker")["spec"]["template"]["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    (container,) = deployment("api")["spec"]["template"]["spec"]["containers"]
    by_name = {p.get("name"): p["containerPort"] for p in container["ports"]}
    assert by_name.get(port["targetPort"], port["targetPort"]) == 8100


def test_the_secret_is_an_empty_template_kept_out_of_kustomize() -> None:
    (secret,) = k8s("Secret")
    values = secret.get("stringData") or secret.get("data") or {}
    assert values
    assert all(v == "" for v in values.values()), "placeholders only"
    (config_map,) = k8s("ConfigMap")
    assert not set(values) & set(config_map["data"]), "a key in both: the Secret silently wins"
    (kustomization,) = k8s("Kustomization")
    resources = kustomization["resources"]
    assert all((K8S / r).is_file() for r in resources)
    assert not any("secret" in r for r in resources)


def test_the_kubernetes_configuration_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    (config_map,) = k8s("ConfigMap")
    (secret,) = k8s("Secret")
    env = {**config_map["data"], **(secret.get("stringData") or {})}
    settings = settings_from({k: str(v) for k, v in env.items()}, monkeypatch)
    assert settings.api.host == "0.0.0.0"
    assert settings.api.port == 8100
