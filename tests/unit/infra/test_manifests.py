"""The deployment files validate against their schemas and agree with the code.

No cluster and no Docker engine run here, so every Kubernetes manifest under ``infra/k8s`` is
checked against the Kubernetes API's own JSON schemas (``kubernetes-validate``, strict: an
unknown field fails), ``docker-compose.yml`` against the Compose specification (the copy that
``check-jsonschema`` ships), and the NATS configs by ``nats-server -t``. Then the facts that
break a deployment silently: probe paths and ports are routes and ports the API serves, every
``GENAI_*`` name is a field of :class:`~spine.platform.settings.Settings`, the commands are
``spine`` commands, the KEDA triggers name the real stream and consumers, the NATS cluster is
as large as the stream replicas, and memory requests cover what ``bench/memory.py`` measured.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import types
import typing
from collections.abc import Iterator, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import typer.main
import yaml
from kubernetes_validate import utils as k8s_validate  # type: ignore[import-untyped]
from pydantic import BaseModel

from spine.events.streams import TASKS_STREAM, consumer_name
from spine.events.subjects import LANES
from spine.platform.app.api import create_app
from spine.platform.app.cli import app as cli_app
from spine.platform.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "infra" / "k8s"
COMPOSE = ROOT / "docker-compose.yml"
HAPROXY = ROOT / "infra" / "haproxy" / "haproxy.cfg"
DOCKERFILE = ROOT / "infra" / "Dockerfile"
MEMORY_RESULTS = sorted((ROOT / "bench" / "results").glob("memory*.json"))
KUBERNETES_VERSION = "1.37"
# Kinds the Kubernetes schemas do not carry, and why skipping them is safe.
NO_SCHEMA = {
    "Kustomization": "kustomize's own file, read by `kubectl apply -k`, never sent to the API",
    "ScaledObject": "a KEDA CRD: its fields are checked against KEDA's documented ones below",
}
# The nats-jetstream scaler's documented metadata (keda.sh/docs/scalers/nats-jetstream).
KEDA_JETSTREAM_FIELDS = {
    "natsServerMonitoringEndpoint",
    "account",
    "stream",
    "consumer",
    "lagThreshold",
    "activationLagThreshold",
    "useHttps",
}
KEDA_JETSTREAM_REQUIRED = {"natsServerMonitoringEndpoint", "stream", "consumer", "lagThreshold"}
PLATFORM = "genai-spine"  # app.kubernetes.io/name of the platform's own pods, and its image
SCALE_APPS = {"api-scale": "api", "worker-scale": "worker", "learner-scale": "learner"}


# ---- readers ---------------------------------------------------------------------------------


def env_names(model: type[BaseModel] = Settings, prefix: str = "") -> set[str]:
    """Return every environment name the settings read: GENAI_FIELD, GENAI_SECTION__FIELD."""
    config = Settings.model_config
    prefix = prefix or config.get("env_prefix") or ""
    delimiter = config.get("env_nested_delimiter") or "__"
    names: set[str] = set()
    for field_name, field in model.model_fields.items():
        alias = field.validation_alias or field.alias
        name = alias.upper() if isinstance(alias, str) else (prefix + field_name).upper()
        names.add(name)
        annotation = field.annotation
        options = (
            typing.get_args(annotation)
            if typing.get_origin(annotation) in (typing.Union, types.UnionType)
            else (annotation,)
        )
        for option in options:
            if isinstance(option, type) and issubclass(option, BaseModel):
                names |= env_names(option, name + delimiter)
    return names


VALID_NAMES = frozenset(env_names())


@cache
def manifests() -> tuple[tuple[str, dict[str, Any]], ...]:
    """Every YAML document under infra/k8s, with the file it came from."""
    found: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((str(path.relative_to(ROOT)), doc))
    return tuple(found)


def kind(name: str) -> list[dict[str, Any]]:
    return [doc for _, doc in manifests() if doc["kind"] == name]


def named(kind_name: str, name: str) -> dict[str, Any]:
    (found,) = [doc for doc in kind(kind_name) if doc["metadata"]["name"] == name]
    return found


def container(workload: Mapping[str, Any]) -> dict[str, Any]:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return dict(only)


def component(name: str) -> dict[str, Any]:
    (found,) = [
        d
        for d in kind("Deployment")
        if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == name
    ]
    return found


def platform_workloads() -> list[dict[str, Any]]:
    return [
        d
        for d in kind("Deployment") + kind("StatefulSet")
        if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name") == PLATFORM
    ]


def genai_names(value: Any) -> Iterator[str]:
    """Yield every GENAI_* key or ``name:`` value inside ``value``."""
    if isinstance(value, dict):
        for key, item in value.items():
            if str(key).startswith("GENAI_"):
                yield str(key)
            if key == "name" and str(item).startswith("GENAI_"):
                yield str(item)
            yield from genai_names(item)
    elif isinstance(value, list):
        for item in value:
            yield from genai_names(item)


def settings_from(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.upper().startswith("GENAI_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


def mebibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return float(number) * (1024 if unit == "Gi" else 1)


def conf_text(path: Path) -> str:
    """A NATS config without its comments."""
    return "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())


def nats_server() -> str:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    server = shutil.which("nats-server", path=path)
    if server is None:
        pytest.skip("nats-server (the embedded extra) is not installed")
    return server


def check_nats_config(path: Path, env: Mapping[str, str]) -> None:
    result = subprocess.run(
        [nats_server(), "-c", str(path), "-t"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr + result.stdout


@cache
def api_paths() -> frozenset[str]:
    app = create_app(Settings(_env_file=None))
    return frozenset(str(getattr(route, "path", "")) for route in app.routes)


def spine_commands() -> set[str]:
    return set(typer.main.get_command(cli_app).commands)  # type: ignore[attr-defined]


# ---- schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "doc"),
    manifests(),
    ids=[f"{p}:{d['kind']}/{d.get('metadata', {}).get('name', '')}" for p, d in manifests()],
)
def test_every_manifest_validates_against_the_kubernetes_schema(
    path: str, doc: dict[str, Any]
) -> None:
    try:
        k8s_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except k8s_validate.SchemaNotFoundError:
        assert doc["kind"] in NO_SCHEMA, f"{path}: no schema for {doc['kind']}"
    except k8s_validate.ValidationError as exc:
        where = ".".join(str(part) for part in exc.path)
        pytest.fail(f"{path}: {doc['kind']} {where}: {exc.message}")


def test_the_validator_rejects_an_unknown_field() -> None:
    bad = json.loads(json.dumps(component("api")))
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(k8s_validate.ValidationError):
        k8s_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_each_kustomization_lists_every_manifest_beside_it() -> None:
    for path in sorted(K8S.rglob("kustomization.yaml")):
        kustomization = yaml.safe_load(path.read_text())
        listed = set(kustomization["resources"])
        beside = {p.name for p in path.parent.glob("*.yaml")} - {path.name}
        beside -= {p for p in beside if p.endswith(".template.yaml")}  # applied by hand
        assert listed == beside, f"{path.relative_to(ROOT)}: {sorted(listed ^ beside)}"
        for generator in kustomization.get("configMapGenerator", []):
            assert all((path.parent / f).is_file() for f in generator["files"])
        assert kustomization["namespace"] == "genai-spine"


def test_the_compose_file_validates_against_the_compose_specification() -> None:
    spec = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(spec.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(compose())]
    assert not errors, errors
    bad = json.loads(json.dumps(compose()))
    bad["services"]["lb"]["deploy"] = {"replica": 2}
    assert not validator.is_valid(bad), "the schema must reject an unknown key"


@pytest.mark.parametrize(
    ("conf", "env"),
    [
        (K8S / "nats" / "nats.conf", {"POD_NAME": "nats-0"}),
        (ROOT / "infra" / "nats" / "nats-cluster.conf", {"NATS_SERVER_NAME": "nats-1"}),
    ],
    ids=["k8s", "compose"],
)
def test_the_nats_server_accepts_the_cluster_configs(conf: Path, env: dict[str, str]) -> None:
    check_nats_config(conf, env)


# ---- Kubernetes: the API ---------------------------------------------------------------------


def test_the_api_probes_routes_it_serves_on_its_port() -> None:
    api = container(component("api"))
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    paths = {}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = api[probe]["httpGet"]
        assert ports.get(get["port"], get["port"]) == Settings(_env_file=None).api.port
        paths[probe] = get["path"]
    assert paths == {
        "startupProbe": "/healthz",
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
    }
    assert set(paths.values()) <= api_paths()
    service = named("Service", "genai-spine-api")
    (port,) = service["spec"]["ports"]
    assert ports.get(port["targetPort"], port["targetPort"]) == Settings(_env_file=None).api.port


def test_the_autoscalers_own_the_replica_counts() -> None:
    (hpa,) = kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == component("api")["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2
    (scaled,) = kind("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == component("worker")["metadata"]["name"]
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    for name in ("api", "worker"):
        assert "replicas" not in component(name)["spec"], f"{name}: an autoscaler owns it"
    learner = component("learner")
    # One leads, one stands by (a lock on the database keeps a second from consuming).
    assert learner["spec"]["replicas"] == 2
    assert learner["spec"]["strategy"]["type"] == "RollingUpdate"


def test_keda_scales_the_workers_on_the_task_consumers() -> None:
    (scaled,) = kind("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    consumers = set()
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "nats-jetstream"
        meta = trigger["metadata"]
        assert KEDA_JETSTREAM_REQUIRED <= set(meta) <= KEDA_JETSTREAM_FIELDS, sorted(meta)
        assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata is strings"
        assert meta["stream"] == TASKS_STREAM
        assert int(meta["lagThreshold"]) >= 1
        consumers.add(meta["consumer"])
        # KEDA asks the consumer's leader as <server_name>.<endpoint>: the headless Service,
        # fully qualified (KEDA runs in another namespace), on the monitoring port.
        host, _, port = meta["natsServerMonitoringEndpoint"].partition(":")
        service, namespace = host.split(".")[:2]
        headless = named("Service", service)
        assert headless["spec"]["clusterIP"] == "None"
        assert host == f"{service}.{namespace}.svc.cluster.local"
        assert namespace == "genai-spine"
        assert int(port) in {p["port"] for p in headless["spec"]["ports"] if p["name"] == "monitor"}
        assert named("StatefulSet", "nats")["spec"]["serviceName"] == service
    assert consumers == {consumer_name(lane) for lane in LANES}


# ---- Kubernetes: every workload --------------------------------------------------------------


def test_platform_pods_run_spine_commands_from_one_image() -> None:
    workloads = platform_workloads()
    assert {
        w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        for w in workloads
    } == {"api", "worker", "learner"}
    (kustomization,) = [d for p, d in manifests() if p == "infra/k8s/kustomization.yaml"]
    assert [i["name"] for i in kustomization["images"]] == [PLATFORM]
    for workload in workloads:
        spec = container(workload)
        role = workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        assert spec["image"] == PLATFORM
        # Each component runs the `spine` command of its name (ENTRYPOINT is `spine`).
        assert spec["args"][0] == role and role in spine_commands()
        assert spec["envFrom"] == container(component("api"))["envFrom"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True


def test_selectors_match_their_pods() -> None:
    for workload in kind("Deployment") + kind("StatefulSet"):
        selector = workload["spec"]["selector"]["matchLabels"].items()
        assert selector <= workload["spec"]["template"]["metadata"]["labels"].items()
    pod_labels = [
        w["spec"]["template"]["metadata"]["labels"]
        for w in kind("Deployment") + kind("StatefulSet")
    ]
    for budget in kind("PodDisruptionBudget"):
        selector = budget["spec"]["selector"]["matchLabels"].items()
        matched = [labels for labels in pod_labels if selector <= labels.items()]
        assert len(matched) == 1, f"{budget['metadata']['name']} selects {len(matched)} workloads"
    for service in kind("Service"):
        selector = service["spec"]["selector"].items()
        assert sum(selector <= labels.items() for labels in pod_labels) == 1


def test_kubernetes_sets_only_names_the_settings_read(monkeypatch: pytest.MonkeyPatch) -> None:
    unknown = {n for _, doc in manifests() for n in genai_names(doc)} - VALID_NAMES
    assert not unknown, f"not fields of Settings: {sorted(unknown)}"
    (config_map,) = [c for c in kind("ConfigMap") if c["metadata"]["name"] == PLATFORM]
    (secret,) = kind("Secret")
    settings = settings_from({**config_map["data"], **secret["stringData"]}, monkeypatch)
    # R3 needs as many NATS nodes as replicas; the client URL is the NATS client Service.
    nats = named("StatefulSet", "nats")
    assert settings.streams.replicas == 3 == nats["spec"]["replicas"]
    url = urlsplit(settings.nats_url or "")
    client = named("Service", url.hostname or "")
    assert url.port in {p["port"] for p in client["spec"]["ports"]}
    assert client["spec"].get("clusterIP") != "None"
    assert settings.api.port == Settings(_env_file=None).api.port


def test_the_nats_cluster_routes_to_every_pod_with_fsync_and_a_volume() -> None:
    nats = named("StatefulSet", "nats")
    replicas, service = nats["spec"]["replicas"], nats["spec"]["serviceName"]
    text = conf_text(K8S / "nats" / "nats.conf")
    routes = re.findall(r"nats-route://([\w.-]+):6222", text)
    assert routes == [f"nats-{i}.{service}" for i in range(replicas)]
    assert re.search(r"^\s*server_name:\s*\$POD_NAME\s*$", text, re.M)
    assert re.search(r"^\s*sync_interval:\s*always\s*$", text, re.M)
    store = re.search(r'^\s*store_dir:\s*"?([^"\s]+)', text, re.M)
    spec = container(nats)
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}) for e in spec["env"]}
    assert env["POD_NAME"] == {"fieldPath": "metadata.name"}
    claims = {c["metadata"]["name"] for c in nats["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in spec["volumeMounts"]}
    assert store and mounts[store.group(1)] in claims, "JetStream must live on a volume"
    (budget,) = [b for b in kind("PodDisruptionBudget") if b["metadata"]["name"] == "nats"]
    assert replicas - budget["spec"]["maxUnavailable"] >= replicas // 2 + 1, "keep a quorum"
    assert spec["image"] == services()["nats"]["image"], "one NATS version everywhere"


@pytest.mark.skipif(not MEMORY_RESULTS, reason="no bench/results/memory*.json")
def test_memory_requests_cover_what_was_measured() -> None:
    idle: dict[str, float] = {}
    peak: dict[str, float] = {}
    for path in MEMORY_RESULTS:
        result = json.loads(path.read_text())
        for phase, seen in (("idle", idle), ("after_work", peak)):
            for child, figures in result[phase]["children"].items():
                role = child.split("-")[0]
                seen[role] = max(seen.get(role, 0.0), figures["rss_mib"])
    for role in ("api", "worker", "learner"):
        resources_ = container(component(role))["resources"]
        assert mebibytes(resources_["requests"]["memory"]) >= idle[role], role
        assert mebibytes(resources_["limits"]["memory"]) >= 1.5 * peak[role], role


# ---- compose: the scale profile --------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    return dict(compose()["services"])


def defaults(value: str) -> str:
    """Resolve compose's ``${VAR:-default}`` with nothing set in the shell."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def in_profile(profile: str) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services().items() if profile in (s.get("profiles") or [])}


def test_the_scale_profile_runs_a_cluster_two_apis_a_balancer_and_workers() -> None:
    scale = in_profile("scale")
    nodes = sorted(n for n in scale if re.fullmatch(r"nats-\d+", n))
    assert nodes == ["nats-1", "nats-2", "nats-3"]
    assert set(scale) == {*nodes, *SCALE_APPS, "lb", "postgres", "redis", "ollama"}
    for name, role in SCALE_APPS.items():
        assert scale[name]["command"][0] == role and role in spine_commands()
        assert scale[name]["image"] == services()["api"]["image"]
        assert not scale[name].get("ports"), f"{name}: only the balancer publishes"
    assert scale["api-scale"]["deploy"]["replicas"] == 2
    assert scale["worker-scale"]["deploy"]["replicas"] >= 2
    assert "replicas" not in scale["learner-scale"].get("deploy", {})
    assert scale["lb"]["ports"] == ["8100:8100"]
    for name, svc in scale.items():
        for dep, how in (svc.get("depends_on") or {}).items():
            assert dep in scale, f"{name} depends on {dep}, outside the profile"
            assert how["condition"] == "service_healthy"
            check = scale[dep].get("healthcheck", {})
            if "build" in scale[dep]:  # the image's HEALTHCHECK on /healthz, unless disabled
                assert not check.get("disable") and "HEALTHCHECK" in DOCKERFILE.read_text()
            else:
                assert check["test"], f"{dep} needs a healthcheck"


def test_the_nats_nodes_form_one_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = ROOT / "infra" / "nats" / "nats-cluster.conf"
    text = conf_text(conf)
    nodes = {n: s for n, s in in_profile("scale").items() if n.startswith("nats-")}
    assert sorted(re.findall(r"nats-route://([\w.-]+):6222", text)) == sorted(nodes)
    assert re.search(r"^\s*sync_interval:\s*always\s*$", text, re.M)
    volumes = set()
    for name, node in nodes.items():
        assert node["image"] == services()["nats"]["image"]
        assert node["environment"]["NATS_SERVER_NAME"] == name
        assert "nats" in node["networks"]["default"]["aliases"]
        mounts = dict(reversed(v.split(":")[:2]) for v in node["volumes"])
        assert (ROOT / mounts[node["command"][-1]]).resolve() == conf
        volumes.add(mounts["/data"])
    assert len(volumes) == len(nodes) and volumes <= set(compose()["volumes"])
    for app in SCALE_APPS:
        env = {k: defaults(str(v)) for k, v in services()[app]["environment"].items()}
        assert set(env) <= VALID_NAMES, sorted(set(env) - VALID_NAMES)
        settings = settings_from(env, monkeypatch)
        assert settings.streams.replicas == len(nodes)
        url = urlsplit(settings.nats_url or "")
        assert (url.hostname, url.port) == ("nats", 4222), "the alias every node carries"
        assert settings.database_url and settings.database_url.startswith("postgresql://")


def test_the_balancer_sends_requests_to_ready_apis() -> None:
    lb = services()["lb"]
    mounts = dict(reversed(v.split(":")[:2]) for v in lb["volumes"])
    assert (ROOT / mounts["/usr/local/etc/haproxy/haproxy.cfg"]).resolve() == HAPROXY
    text = "\n".join(line.split("#", 1)[0] for line in HAPROXY.read_text().splitlines())
    assert re.search(r"^\s*bind\s+:8100\s*$", text, re.M)
    readiness = re.search(r"^\s*option\s+httpchk\s+GET\s+(\S+)\s*$", text, re.M)
    assert readiness and readiness.group(1) == "/readyz" and "/readyz" in api_paths()
    monitor = re.search(r"^\s*monitor-uri\s+(\S+)", text, re.M)
    assert monitor and monitor.group(1) in " ".join(lb["healthcheck"]["test"])
    template = re.search(r"^\s*server-template\s+\S+\s+(\d+)\s+([\w-]+):(\d+)", text, re.M)
    assert template, "the backends come from DNS"
    slots, host, port = int(template.group(1)), template.group(2), int(template.group(3))
    assert host == "api-scale" and port == Settings(_env_file=None).api.port
    assert slots >= services()["api-scale"]["deploy"]["replicas"]
