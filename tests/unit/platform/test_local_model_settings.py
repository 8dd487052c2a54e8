"""The embedded local model: when `spine up` starts it, how it is reached, how it is labelled."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from spine.platform.app import launcher as stack_module
from spine.platform.app.launcher import describe_config, plan_local_model
from spine.platform.embedded.llama import LlamaServer
from spine.platform.embedded.stack import EmbeddedStack, Endpoints, apply_endpoints
from spine.platform.errors import BadRequest, ConfigurationError, ProviderNotConfigured
from spine.platform.models import configured_providers, default_provider, resolve_provider
from spine.platform.models.litellm_upstream import chat_route
from spine.platform.models.shapes import params_for
from spine.platform.router import TOY_NOTE, ModelCatalog, ModelRouter, Requirements
from spine.platform.settings import LocalModelSettings, Settings, load_settings

URL = "http://127.0.0.1:18080/v1"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in list(os.environ):
        if name.startswith("GENAI_"):
            monkeypatch.delenv(name)


def settings(**overrides: Any) -> Settings:
    return load_settings(_env_file=None, **overrides)


# -- when `spine up` starts it ----------------------------------------------------------------


def test_auto_wants_the_local_model_only_when_no_provider_is_configured() -> None:
    assert settings().wants_local_model()
    for configured in (
        {"ollama_url": "http://127.0.0.1:11434"},
        {"openai_api_key": "sk-x"},
        {"anthropic_api_key": "sk-ant-x"},
        {"groq_api_key": "gsk-x"},
        {"aws_region": "eu-west-1"},
        {"models_file": "models.yaml"},
    ):
        assert not settings(**configured).wants_local_model(), configured


def test_enabled_true_false_and_a_running_url_override_auto() -> None:
    assert settings(ollama_url="http://o:11434", local_model={"enabled": True}).wants_local_model()
    assert not settings(local_model={"enabled": False}).wants_local_model()
    # One already runs (a detached stack, or the one `spine up` started for its children).
    assert not settings(local_model={"url": URL}).wants_local_model()
    # Asked for by name, it starts beside a cloud key.
    assert settings(openai_api_key="sk-x", default_provider="local").wants_local_model()
    assert settings(openai_api_key="sk-x", fallback_chain="openai,local").wants_local_model()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("auto", "auto"), ("true", True), ("1", True), ("false", False), ("0", False)],
)
def test_enabled_reads_auto_or_a_boolean_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: object
) -> None:
    monkeypatch.setenv("GENAI_LOCAL_MODEL__ENABLED", value)
    monkeypatch.setenv("GENAI_LOCAL_MODEL__N_CTX", "1024")
    loaded = load_settings()
    assert loaded.local_model.enabled == expected
    assert loaded.local_model.n_ctx == 1024


def test_a_bad_local_model_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENAI_LOCAL_MODEL__ENABLED", "sometimes")
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert "GENAI_LOCAL_MODEL__ENABLED" in caught.value.message


def test_plan_says_toy_quality_or_why_it_cannot_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack_module, "local_model_missing", lambda local: None)
    plan = plan_local_model(settings())
    assert plan.start
    assert "toy quality" in plan.note
    assert "smollm2-135m" in plan.note
    assert not plan_local_model(settings(openai_api_key="sk-x")).start

    monkeypatch.setattr(stack_module, "local_model_missing", lambda local: "llama_cpp missing")
    plan = plan_local_model(settings())
    assert not plan.start
    assert "llama_cpp missing" in plan.note
    # Asked for explicitly, a missing extra is an error, not a note.
    with pytest.raises(ConfigurationError) as caught:
        plan_local_model(settings(local_model={"enabled": True}))
    assert caught.value.field == "GENAI_LOCAL_MODEL__ENABLED"


def test_config_lists_the_local_model_among_embedded_services(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stack_module, "local_model_missing", lambda local: None)
    rows, embedded = describe_config(settings())
    assert embedded == ["nats", "postgres", "graph", "redis", "local_model"]
    assert ("GENAI_LOCAL_MODEL__ENABLED", "auto") in rows
    _, embedded = describe_config(settings(ollama_url="http://o:11434"))
    assert "local_model" not in embedded


# -- how it is reached ------------------------------------------------------------------------


def test_default_provider_falls_to_the_running_local_model_only_when_not_chosen() -> None:
    assert default_provider(settings()) == "ollama"
    assert default_provider(settings(local_model={"url": URL})) == "local"
    # An explicit choice stands, even when it cannot be served.
    assert default_provider(settings(default_provider="ollama", local_model={"url": URL})) == (
        "ollama"
    )
    assert default_provider(settings(ollama_url="http://o:11434", local_model={"url": URL})) == (
        "ollama"
    )
    target = resolve_provider(settings(local_model={"url": URL}))
    assert target.provider == "local"
    assert target.model == "smollm2-135m"
    assert chat_route(target) == "openai/smollm2-135m"
    assert target.kwargs == {"api_base": URL, "api_key": "none"}


def test_an_unstarted_local_model_says_how_to_get_one() -> None:
    with pytest.raises(ProviderNotConfigured) as caught:
        resolve_provider(settings(default_provider="local"))
    assert "genai-spine[local]" in caught.value.message
    with pytest.raises(ProviderNotConfigured) as nothing:
        resolve_provider(settings())
    assert "genai-spine[local]" in nothing.value.message


def test_apply_endpoints_fills_the_local_model_url() -> None:
    applied = apply_endpoints(settings(), Endpoints(local_model_url=URL))
    assert applied.local_model.url == URL
    assert configured_providers(applied) == ["local"]
    kept = settings(local_model={"url": "http://elsewhere/v1"})
    assert apply_endpoints(kept, Endpoints(local_model_url=URL)).local_model.url == (
        "http://elsewhere/v1"
    )


# -- how it is labelled -----------------------------------------------------------------------


def test_catalog_labels_it_local_free_and_toy() -> None:
    catalog = ModelCatalog.from_settings(settings(local_model={"url": URL, "n_ctx": 4096}))
    assert catalog.names == ["smollm2-135m"]
    spec = catalog.get("smollm2-135m")
    assert spec is not None
    assert spec.provider == "local"
    assert spec.local
    assert spec.toy
    assert spec.tags == {"local", "toy"}
    assert spec.note == TOY_NOTE
    assert "toy quality" in TOY_NOTE
    assert spec.input_price == spec.output_price == Decimal(0)
    assert spec.quality == pytest.approx(0.1)
    assert spec.context_window == 4096
    assert not spec.capabilities.tools
    assert spec.capabilities.json_output
    assert spec.refusal(Requirements(tools=True)) == "cannot call tools (tools)"
    assert spec.refusal(Requirements(json_output=True)) is None


def test_router_sends_auto_calls_to_the_local_model_when_it_is_all_there_is() -> None:
    router = ModelRouter(settings(local_model={"url": URL}))
    plan = router.plan(Requirements(prompt_tokens=10, max_tokens=16))
    assert [spec.name for spec in plan.models] == ["smollm2-135m"]
    # A hosted model comes first by quality; the toy one stays as a fallback.
    both = ModelRouter(settings(local_model={"url": URL}, openai_api_key="sk-x"))
    ranked = both.plan(Requirements(), strategy="quality")
    assert [spec.provider for spec in ranked.models] == ["openai", "local"]


def test_a_tool_using_call_on_the_local_model_alone_says_what_to_configure() -> None:
    router = ModelRouter(settings(local_model={"url": URL}))
    with pytest.raises(BadRequest) as refused:
        router.plan(Requirements(tools=True))
    message = refused.value.message
    assert "smollm2-135m: cannot call tools (tools)" in message
    assert "tool-using agents need a tool-capable model" in message
    assert "GENAI_OLLAMA_URL" in message


# -- how the stack runs it --------------------------------------------------------------------


def test_the_stack_starts_the_local_model_only_when_named(tmp_path: Path) -> None:
    configured = settings(data_dir=tmp_path)
    assert EmbeddedStack.from_settings(configured).servers == (
        "nats",
        "postgres",
        "falkordb",
    )
    named = EmbeddedStack.from_settings(configured, services=["nats", "local_model"])
    assert named.servers == ("nats", "llama")


def test_the_server_runs_with_our_flags_and_none_of_our_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # llama_cpp.server reads unprefixed variables, and PORT/HOST override its flags.
    monkeypatch.setenv("PORT", "1")
    monkeypatch.setenv("MODEL", "/elsewhere.gguf")
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF")
    server = LlamaServer(
        tmp_path, settings=LocalModelSettings(path=model, n_ctx=1024, threads=2), alias="tiny"
    )
    server.model_file = model
    launch = server.prepare({"client": 18080}, lambda message: None)
    argv = launch.argv
    assert argv[1:3] == ["-m", "llama_cpp.server"]
    flags = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert flags == {
        "--model": str(model),
        "--model_alias": "tiny",
        "--host": "127.0.0.1",
        "--port": "18080",
        "--n_ctx": "1024",
        "--n_threads": "2",
        "--n_threads_batch": "2",
        "--interrupt_requests": "false",
    }
    assert "PORT" not in launch.env
    assert "MODEL" not in launch.env
    assert server.endpoints({"client": 18080}) == {"local_model_url": "http://127.0.0.1:18080/v1"}
    assert not server.ready({"client": 1})


def test_json_schema_output_is_spelled_the_way_llama_cpp_takes_it() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    asked: dict[str, Any] = {
        "max_tokens": 9,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    }
    local = resolve_provider(settings(local_model={"url": URL}))
    assert params_for(local, asked) == {
        "max_tokens": 9,
        "response_format": {"type": "json_object", "schema": schema},
    }
    assert asked["response_format"]["type"] == "json_schema"  # the caller's dict is kept
    hosted = resolve_provider(settings(default_provider="openai", openai_api_key="sk-x"))
    assert params_for(hosted, asked) is asked
