"""Settings: the seed's names, nested sections, .env, masking, and errors naming the variable."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from spine.platform.app.launcher import describe_config
from spine.platform.errors import ConfigurationError
from spine.platform.settings import Settings, load_settings

SEED = {
    "GENAI_DEFAULT_PROVIDER": "openai",
    "GENAI_OLLAMA_URL": "http://ollama:11434",
    "GENAI_DATABASE_URL": "postgresql://user:pass@db:5432/genai",
    "GENAI_OPENAI_API_KEY": "sk-secret-openai",
    "GENAI_ANTHROPIC_API_KEY": "sk-ant-secret",
    "GENAI_FALLBACK_CHAIN": "ollama, openai,anthropic",
    "GENAI_REDIS_URL": "redis://redis:6379",
    "GENAI_BUDGET_DAILY": "10.00",
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in list(__import__("os").environ):
        if name.startswith("GENAI_"):
            monkeypatch.delenv(name)


def test_seed_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SEED.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.default_provider == "openai"
    assert settings.ollama_url == "http://ollama:11434"
    assert settings.fallback_chain == ["ollama", "openai", "anthropic"]
    assert settings.budget_daily == Decimal("10.00")
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == "sk-secret-openai"
    assert "sk-secret" not in repr(settings)
    assert settings.embedded_services() == ["nats", "graph"]


def test_nested_sections_and_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("GENAI_WORKER__CONCURRENCY=3\nGENAI_WORKER__BACKOFF=1,2.5\n")
    monkeypatch.setenv("GENAI_API__PORT", "9100")
    settings = load_settings()
    assert settings.worker.concurrency == 3
    assert settings.worker.backoff == [1.0, 2.5]
    assert settings.worker.delay_before(2) == 1.0
    assert settings.worker.delay_before(9) == 2.5
    assert settings.api.port == 9100


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GENAI_DEFAULT_PROVIDER", "skynet"),
        ("GENAI_BUDGET_DAILY", "lots"),
        ("GENAI_WORKER__CONCURRENCY", "0"),
        ("GENAI_FALLBACK_CHAIN", "ollama,nobody"),
        ("GENAI_API__PORT", "70000"),
        ("GENAI_TENANT_STRATEGIES", "acme"),
        ("GENAI_STREAMS__OUTCOMES_RETRY", "-1"),
        ("GENAI_STREAMS__OUTCOMES_RETRY", "soon"),
        ("GENAI_STREAMS__OUTCOMES_RETRY", "3601"),
        ("GENAI_STREAMS__OUTCOMES_MAX_BYTES", "-1"),
        ("GENAI_STREAMS__OUTCOMES_MAX_BYTES", "1GB"),
        ("GENAI_BUDGETS__LEASES", "maybe"),
        ("GENAI_API__RESPONSE_RETENTION_DAYS", "0"),
        ("GENAI_API__RESPONSE_RETENTION_DAYS", "a month"),
    ],
)
def test_invalid_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert name in caught.value.message
    assert caught.value.field == name


def test_tenant_strategies_read_as_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENAI_TENANT_STRATEGIES", "acme=quality, globex=cost_optimized")
    assert load_settings().tenant_strategies == {"acme": "quality", "globex": "cost_optimized"}
    monkeypatch.setenv("GENAI_TENANT_STRATEGIES", "acme=cheapest")
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert "GENAI_TENANT_STRATEGIES__ACME" in caught.value.message
    assert "'cheapest'" in caught.value.message


def test_invalid_secret_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENAI_NEO4J_PASSWORD", "")
    monkeypatch.setenv("GENAI_API__KEY_CACHE_SECONDS", "-1")
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert "GENAI_API__KEY_CACHE_SECONDS" in caught.value.message


def test_config_view_masks_secrets_and_names_embedded_services(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in SEED.items():
        monkeypatch.setenv(name, value)
    rows, embedded = describe_config(Settings())
    shown = dict(rows)
    assert shown["GENAI_OPENAI_API_KEY"] == "********"
    assert "pass" not in shown["GENAI_DATABASE_URL"]
    assert all("secret" not in value for value in shown.values())
    assert embedded == ["nats", "graph"]
