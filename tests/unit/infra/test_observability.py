"""The Grafana dashboard and the Prometheus alert rules parse and name metrics the code exposes.

Every ``spine_*``, ``process_*`` and ``python_*`` name in a PromQL expression must be a sample
name of :data:`spine.platform.telemetry.REGISTRY` (a counter's ``_total``, a histogram's
``_bucket``/``_count``/``_sum``...), and every label matched on a ``spine_*`` metric must be
one of its labels: renaming a metric or a label in the code fails here.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from spine.platform.telemetry import REGISTRY

ROOT = Path(__file__).resolve().parents[3] / "infra" / "observability"
_NAME = re.compile(r"\b((?:spine|process|python)_[a-zA-Z0-9_]+)\b")
_SELECTOR = re.compile(r"\b(spine_[a-zA-Z0-9_]+)\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}
_ALWAYS = {"instance", "job"}


@cache
def exposed() -> dict[str, set[str] | None]:
    """Map each sample name the registry exposes to its label names (None: not known here)."""
    names: dict[str, set[str] | None] = {}
    collectors = REGISTRY._names_to_collectors  # the one place that lists every collector
    for family in REGISTRY.collect():
        labels: set[str] | None = None
        collector: Any = collectors.get(family.name) or collectors.get(family.name + "_total")
        if collector is not None and hasattr(collector, "_labelnames"):
            labels = set(collector._labelnames)
        elif hasattr(family, "_labelnames"):  # a custom collector's GaugeMetricFamily...
            labels = set(family._labelnames)
        for suffix in _SUFFIXES[family.type]:
            extra = {"le"} if suffix == "_bucket" else set()
            names[family.name + suffix] = None if labels is None else labels | extra
    return names


def expressions() -> list[tuple[str, str]]:
    """Every PromQL expression of the dashboard and the rules, with where it is."""
    found = []
    dashboard = json.loads((ROOT / "grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r}", target["expr"]))
    for group in yaml.safe_load((ROOT / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            found.append((f"alert {rule['alert']}", rule["expr"]))
    return found


def test_the_name_check_can_fail() -> None:
    assert "spine_http_requests_total" in exposed()
    assert "spine_model_calls_total" in exposed()
    assert "spine_http_requests" not in exposed()  # a counter is exposed as ..._total
    assert "spine_no_such_metric" not in exposed()


@pytest.mark.parametrize(("where", "expr"), expressions())
def test_every_metric_and_label_used_exists(where: str, expr: str) -> None:
    names = exposed()
    used = set(_NAME.findall(expr))
    # Prometheus's own `up` is the one other series an expression may stand on.
    assert used or re.search(r"\bup\{", expr), f"{where} uses no metric of the platform"
    missing = sorted(n for n in used if n not in names)
    assert not missing, f"{where} uses metrics the code does not expose: {missing}"
    for metric, matchers in _SELECTOR.findall(expr):
        allowed = names[metric]
        if allowed is None:
            continue
        unknown = set(_MATCHER.findall(matchers)) - allowed - _ALWAYS
        assert not unknown, f"{where} matches labels {metric} lacks: {sorted(unknown)}"


def test_alert_rules_have_the_fields_prometheus_needs() -> None:
    rules = yaml.safe_load((ROOT / "alerts.yml").read_text())
    assert set(rules) == {"groups"}
    seen: set[str] = set()
    for group in rules["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"]), rule["alert"]
            assert rule["alert"] not in seen, f"two alerts named {rule['alert']}"
            seen.add(rule["alert"])
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert rule["annotations"]["summary"]
            if "for" in rule:
                assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["for"]
            assert _balanced(rule["expr"]), f"{rule['alert']}: unbalanced brackets"


def test_the_dashboard_is_grafana_json_with_unique_panel_ids() -> None:
    dashboard = json.loads((ROOT / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert _balanced(target["expr"]), f"{panel['title']}: unbalanced brackets"


def test_the_scrape_config_loads_the_rules_file() -> None:
    config = yaml.safe_load((ROOT / "prometheus.yml").read_text())
    assert "alerts.yml" in config["rule_files"]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert "spine-api" in jobs


def _balanced(expr: str) -> bool:
    depth: list[str] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    quoted = None
    for char in expr:
        if quoted:
            quoted = None if char == quoted else quoted
        elif char in "\"'":
            quoted = char
        elif char in "([{":
            depth.append(char)
        elif char in pairs and (not depth or depth.pop() != pairs[char]):
            return False
    return not depth and quoted is None
