"""Metrics in one process: bounded labels, scrape-time probes, and a worker's /metrics port."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from spine.platform.settings import MetricsSettings
from spine.platform.telemetry import (
    OTHER,
    REGISTRY,
    LabelGuard,
    MetricsServer,
    ProbeSet,
    TaskCount,
    looks_like_id,
    observe_breakers,
    process_server,
    record_http_request,
    record_model_call,
    record_task_ended,
    record_task_started,
    record_task_submitted,
    record_tool_call,
    set_active_tasks,
)
from support.ports import free_port

TASK_ID = "3f2b6c1e-8a4d-4e6f-9b1a-2c3d4e5f6a7b"


def sample(name: str, **labels: str) -> float:
    """Return a sample's value in this process's registry (0 when it has none yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_ids_and_long_values_never_become_label_values() -> None:
    guard = LabelGuard(max_values=10)
    assert guard.value("model", "openai/gpt-4o-2024-08-06") == "openai/gpt-4o-2024-08-06"
    assert guard.value("agent", TASK_ID) == OTHER
    assert guard.value("agent", f"task-{TASK_ID}") == OTHER
    assert guard.value("tool", "a" * 40 + "0123456789abcdef0123") == OTHER
    assert guard.value("tool", "x" * 200) == OTHER
    assert looks_like_id("01J9ZQ3V7K2M8N4P6R0S1T2V3W")  # a ULID
    assert not looks_like_id("llama3.2")


def test_a_label_keeps_at_most_max_values_distinct_values() -> None:
    guard = LabelGuard(max_values=3)
    kept = [guard.value("model", f"model-{i}") for i in range(5)]
    assert kept == ["model-0", "model-1", "model-2", OTHER, OTHER]
    assert guard.value("model", "model-1") == "model-1"  # admitted values stay
    assert guard.value("provider", "openai") == "openai"  # each label has its own cap


def test_the_tenant_is_a_label_only_when_the_setting_allows_it() -> None:
    guard = LabelGuard()
    assert guard.tenant("acme") == ""
    guard.configure(max_values=5, tenant_label=True)
    assert guard.tenant("acme") == "acme"


def test_recording_bounds_label_values() -> None:
    before = sample("spine_tool_calls_total", tool=OTHER, outcome="ok")
    record_tool_call(TASK_ID, None, 0.01)
    assert sample("spine_tool_calls_total", tool=OTHER, outcome="ok") == before + 1


def test_http_requests_are_counted_each_time_under_bounded_labels() -> None:
    route = "/v1/things/{thing_id}"
    ok = {"method": "POST", "route": route, "status": "200"}
    before = sample("spine_http_requests_total", **ok)
    timed = sample("spine_http_request_seconds_count", method="POST", route=route)
    for _ in range(3):  # the first looks its series up; the others reuse them
        record_http_request("POST", route, 200, 0.01)
    assert sample("spine_http_requests_total", **ok) == before + 3
    assert sample("spine_http_request_seconds_count", method="POST", route=route) == timed + 3
    odd = {"method": "other", "route": OTHER, "status": "404"}
    before = sample("spine_http_requests_total", **odd)
    for _ in range(2):  # a method no one uses, on a path that is an id: bounded both times
        record_http_request("BREW", f"/{TASK_ID}", 404, 0.01)
    assert sample("spine_http_requests_total", **odd) == before + 2


def test_a_model_call_counts_its_latency_tokens_cost_and_cache_hit() -> None:
    labels = {"model": "unit-model", "provider": "unit"}
    calls = sample("spine_model_calls_total", **labels, strategy="quality", outcome="ok", tenant="")
    seen = sample("spine_model_call_seconds_count", **labels)
    record_model_call("unit-model", "unit", "quality", "ok", 0.2, 10, 5, 0.25, cache_hit=True)
    record_model_call("unit-model", "unit", "quality", "rate_limited", 0.1, 10, 0, 0.0)
    assert sample(
        "spine_model_calls_total", **labels, strategy="quality", outcome="ok", tenant=""
    ) == (calls + 1)
    assert sample("spine_model_call_seconds_count", **labels) == seen + 2
    assert sample("spine_model_tokens_total", **labels, direction="input", tenant="") >= 20
    assert sample("spine_model_tokens_total", **labels, direction="output", tenant="") >= 5
    assert sample("spine_model_cost_usd_total", **labels, tenant="") >= 0.25
    assert sample("spine_model_cache_hits_total", model="unit-model") >= 1


def test_a_workers_running_tasks_go_up_and_down() -> None:
    submitted = sample("spine_tasks_submitted_total", agent="unit-agent", tenant="")
    record_task_submitted("unit-agent", tenant="acme")
    record_task_started("unit-agent")
    assert sample("spine_tasks_running", agent="unit-agent") == 1
    record_task_ended("unit-agent", 1.5)
    assert sample("spine_tasks_running", agent="unit-agent") == 0
    assert sample("spine_task_run_seconds_count", agent="unit-agent") >= 1
    assert sample("spine_tasks_submitted_total", agent="unit-agent", tenant="") == submitted + 1


def test_active_task_counts_are_replaced_not_left_stale() -> None:
    set_active_tasks([TaskCount(state="queued", agent="unit-agent", count=3)])
    assert sample("spine_tasks_active", state="queued", agent="unit-agent") == 3
    set_active_tasks([])
    assert sample("spine_tasks_active", state="queued", agent="unit-agent") == 0


def test_breakers_are_read_when_scraped() -> None:
    breakers = [("unit-model", "chat", "open")]
    observe_breakers(lambda: breakers)
    try:
        assert sample("spine_model_breaker_state", model="unit-model", kind="chat") == 2
        breakers[0] = ("unit-model", "chat", "half_open")
        assert sample("spine_model_breaker_state", model="unit-model", kind="chat") == 1
    finally:
        breakers.clear()


async def test_probes_run_at_most_once_per_max_age_and_failures_are_counted() -> None:
    now = [100.0]
    runs: list[str] = []

    async def good() -> None:
        runs.append("good")

    async def bad() -> None:
        runs.append("bad")
        raise ConnectionError("NATS is down")

    async def slow() -> None:
        await asyncio.sleep(10)

    probes = ProbeSet(max_age=5.0, timeout=0.1, clock=lambda: now[0])
    probes.add("good", good)
    probes.add("bad-probe", bad)
    probes.add("slow-probe", slow)
    failed = sample("spine_metrics_probe_failures_total", probe="bad-probe")
    timed_out = sample("spine_metrics_probe_failures_total", probe="slow-probe")
    await asyncio.gather(probes.refresh(), probes.refresh())  # concurrent scrapes share a run
    await probes.refresh()
    assert sorted(runs) == ["bad", "good"]
    now[0] += 6
    await probes.refresh()
    assert sorted(runs) == ["bad", "bad", "good", "good"]
    assert sample("spine_metrics_probe_failures_total", probe="bad-probe") == failed + 2
    assert sample("spine_metrics_probe_failures_total", probe="slow-probe") == timed_out + 2


async def test_a_worker_serves_metrics_on_the_first_free_port_of_its_span() -> None:
    port = free_port()
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    taken.bind(("127.0.0.1", port))
    taken.listen()
    settings = MetricsSettings(port=port, port_span=8)
    server = process_server(settings, role="worker")
    try:
        bound = await server.start()
        assert bound is not None and port < bound < port + 8
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bound}") as client:
            answer = await client.get("/metrics")
            missing = await client.get("/")
            posted = await client.post("/metrics")
    finally:
        await server.close()
        taken.close()
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
    roles = {s.labels["role"] for s in families["spine_process_info"].samples}
    assert "worker" in roles
    assert "process_resident_memory_bytes" in families
    assert missing.status_code == 404
    assert posted.status_code == 405


async def test_port_zero_or_disabled_means_no_metrics_server() -> None:
    assert await process_server(MetricsSettings(port=0), role="worker").start() is None
    off = process_server(MetricsSettings(enabled=False), role="worker")
    assert await off.start() is None and off.bound is None


async def test_no_free_port_leaves_the_process_running_without_metrics() -> None:
    port = free_port()
    taken = socket.socket()
    taken.bind(("127.0.0.1", port))
    taken.listen()
    try:
        server = MetricsServer(port=port, port_span=1)
        assert await server.start() is None
    finally:
        taken.close()


@pytest.mark.parametrize("accept", ["application/openmetrics-text; version=1.0.0", None])
async def test_the_exposition_format_follows_accept(accept: str | None) -> None:
    server = MetricsServer(port=free_port(), port_span=4)
    bound = await server.start()
    try:
        headers = {"accept": accept} if accept else {}
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"http://127.0.0.1:{bound}/metrics", headers=headers)
    finally:
        await server.close()
    kind = "application/openmetrics-text" if accept else "text/plain"
    assert answer.headers["content-type"].startswith(kind)
    assert "spine_http_requests" in answer.text
