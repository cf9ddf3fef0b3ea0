"""Launch profiles of the OpenAI-compatible LLM server: pure functions from settings to a command line.

The `llm` service is not our code (ARCHITECTURE.md): on the `cpu` profile it is llama-cpp-python's
server running a GGUF file, on the `gpu` profile vLLM's server running Mistral-7B-Instruct. What we own
is how each is started: loopback only, the model name the dialog asks for, the context size from the
configuration, and no logging of prompts or answers (caller data).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from services.kit.config import REPO_ROOT, ConfigError, LlmEndpoint, QuietLineSettings
from services.kit.offline import OFFLINE_ENVIRONMENT

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
CHAT_TEMPLATE_DIR = Path(__file__).resolve().parent / "chat_templates"

# llama.cpp picks a chat template from the GGUF's tokenizer.chat_template; GGUFs without one (the
# Gemma 3 270M base model ships none) would silently fall back to the llama-2 format, so name the
# format per model family here. vLLM gets the same prompt from chat_templates/gemma.jinja.
LLAMA_CPP_CHAT_FORMATS = {"gemma3-270m-q4km": "gemma"}
VLLM_CHAT_TEMPLATES = {"gemma3-270m-bf16": CHAT_TEMPLATE_DIR / "gemma.jinja"}

# Environment variables that llama-cpp-python's server reads *over* its command line
# (`os.getenv("HOST")` / `os.getenv("PORT")` and CONFIG_FILE in its __main__).
LLAMA_CPP_OVERRIDING_ENVIRONMENT = ("HOST", "PORT", "CONFIG_FILE")

KV_BYTES_PER_VALUE = 2  # float16 / bfloat16 KV cache


def check_loopback(endpoint: LlmEndpoint, tier: str = "") -> None:
    """Refuse a non-loopback host: listening beyond loopback needs mTLS, which is not configured."""
    if endpoint.host not in LOOPBACK_HOSTS:
        key = f"llm.tiers.{tier}.host" if tier else "llm.host"
        raise ConfigError(
            f"{key} {endpoint.host} is not loopback; the LLM server may only listen on 127.0.0.1 "
            f"(non-loopback listening requires mTLS, which this build does not configure): set {key}: 127.0.0.1"
        )


def server_python(endpoint: LlmEndpoint) -> str:
    """The interpreter that runs the endpoint's server (relative paths are relative to the repository)."""
    if not endpoint.python:
        return sys.executable
    path = Path(endpoint.python)
    return str(path if path.is_absolute() else REPO_ROOT / path)


def sequences_for(settings: QuietLineSettings) -> int:
    """Sequences a server must run at once: one per call the appliance is sized for, plus background work."""
    return settings.call_capacity + settings.llm.background_sequences


def llama_cpp_command(settings: QuietLineSettings, endpoint: LlmEndpoint, model_path: Path) -> list[str]:
    """The argv of llama-cpp-python's OpenAI-compatible server (with llama.cpp's metrics) for a GGUF file."""
    argv = [
        server_python(endpoint), "-m", "services.llm.llama_cpp_server",
        "--model", str(model_path),
        "--model_alias", endpoint.model,
        "--host", endpoint.host,
        "--port", str(endpoint.port),
        "--n_ctx", str(endpoint.context_tokens),
        "--n_threads", str(endpoint.threads),
        "--n_threads_batch", str(endpoint.threads),
        # Its default keeps logits for every context position (n_ctx x 262k vocabulary floats for
        # Gemma 3, about 2 GiB); only the last position is needed for sampling.
        "--logits_all", "false",
        # Verbose mode prints per-request timings and model internals to stderr; keep the log small.
        "--verbose", "false",
        # Default true: a new request would cut off the answer streaming to another caller. Queue instead;
        # the dialog's deadline decides when waiting is no longer worth it.
        "--interrupt_requests", "false",
        # mlock needs a raised RLIMIT_MEMLOCK, which laptops and CI containers lack; mmap is enough here.
        "--use_mlock", "false",
        # llama.cpp runs one sequence at a time and always reuses the previous prompt's common front;
        # the RAM cache also keeps the states of earlier prompts (other calls' fronts).
        "--cache", "true" if endpoint.prefix_caching else "false",
    ]
    chat_format = LLAMA_CPP_CHAT_FORMATS.get(endpoint.model)
    if chat_format:
        argv += ["--chat_format", chat_format]
    return argv


def llama_cpp_environment(environ: Mapping[str, str], setting_names: Iterable[str] = ()) -> dict[str, str]:
    """The server's environment: `environ` without the variables that would override its command line.

    `setting_names` are llama-cpp-python's settings fields (it is a pydantic BaseSettings without a
    prefix, so a stray `API_KEY` or `CHAT_FORMAT` in the environment would silently change the server).
    """
    dropped = {name.upper() for name in LLAMA_CPP_OVERRIDING_ENVIRONMENT} | {name.upper() for name in setting_names}
    environment = {key: value for key, value in environ.items() if key.upper() not in dropped}
    # llama.cpp's CPU build uses OpenMP, whose threads spin while waiting. On a box shared with asr and
    # tts that spinning starves everyone (measured: 42 s instead of 6 s for one answer under load).
    environment["OMP_WAIT_POLICY"] = "PASSIVE"
    environment.pop("OMP_NUM_THREADS", None)  # n_threads on the command line decides
    return {**environment, **OFFLINE_ENVIRONMENT}


def vllm_environment(environ: Mapping[str, str], endpoint: LlmEndpoint) -> dict[str, str]:
    """vLLM's environment: offline, no usage statistics, and (on CPU builds) the configured threads."""
    environment = {key: value for key, value in environ.items() if key != "VLLM_CPU_KVCACHE_SPACE"}
    # VLLM_CPU_KVCACHE_SPACE would override --kv-cache-memory-bytes; the command line decides.
    environment.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    environment["OMP_NUM_THREADS"] = str(endpoint.threads)
    return {**environment, **OFFLINE_ENVIRONMENT}


def kv_bytes_per_token(model_path: Path) -> int:
    """Bytes of KV cache one token takes, from the model's config (Hugging Face or Mistral layout)."""
    hf_config, mistral_params = model_path / "config.json", model_path / "params.json"
    if hf_config.exists():
        config = json.loads(hf_config.read_text())
        config = config.get("text_config", config)
        layers, kv_heads = config["num_hidden_layers"], config.get("num_key_value_heads", config["num_attention_heads"])
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    elif mistral_params.exists():
        params = json.loads(mistral_params.read_text())
        layers, kv_heads = params["n_layers"], params.get("n_kv_heads", params["n_heads"])
        head_dim = params.get("head_dim") or params["dim"] // params["n_heads"]
    else:
        raise ConfigError(
            f"{model_path} has neither config.json nor params.json: vLLM needs a Hugging Face or Mistral model folder"
        )
    return 2 * layers * kv_heads * head_dim * KV_BYTES_PER_VALUE  # keys and values


def kv_cache_bytes(settings: QuietLineSettings, endpoint: LlmEndpoint, model_path: Path) -> int:
    """KV cache for every sequence at full context: calls never wait for cache, whatever their length."""
    return sequences_for(settings) * endpoint.context_tokens * kv_bytes_per_token(model_path)


def vllm_command(settings: QuietLineSettings, endpoint: LlmEndpoint, model_path: Path) -> list[str]:
    """The argv of vLLM's OpenAI-compatible server for an endpoint and a model folder.

    Request logging (prompts) is off by default in current vLLM (`--enable-log-requests` opts in, and
    must never be added); the old `--disable-log-requests` was removed in vLLM 0.12, so none is passed.
    """
    argv = [
        # `python -m vllm.entrypoints.openai.api_server`: the `vllm` console script looks up the
        # distribution named "vllm", which CPU builds (vllm-cpu) do not have.
        server_python(endpoint), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_path),
        "--served-model-name", endpoint.model,
        "--host", endpoint.host,
        "--port", str(endpoint.port),
        "--max-model-len", str(endpoint.context_tokens),
        "--max-num-seqs", str(sequences_for(settings)),
        "--kv-cache-memory-bytes", str(kv_cache_bytes(settings, endpoint, model_path)),
        # Live turns (priority 0) go before summaries and briefings (REQUEST_PRIORITIES).
        "--scheduling-policy", "priority",
        # Every turn of a call repeats the system prompt, policy, tool schemas and history.
        "--enable-prefix-caching" if endpoint.prefix_caching else "--no-enable-prefix-caching",
        "--disable-uvicorn-access-log",
        # The generation_config.json beside a model would silently change sampling defaults.
        "--generation-config", "vllm",
    ]
    argv += _mistral_format_arguments(model_path)
    template = VLLM_CHAT_TEMPLATES.get(endpoint.model)
    if template:
        argv += ["--chat-template", str(template)]
    return argv


def _mistral_format_arguments(model_path: Path) -> list[str]:
    """Mistral's tokenizer, chat template and tool-call parser when the folder holds a Mistral model."""
    has_mistral_tokenizer = any((model_path / name).exists() for name in ("tokenizer.model.v3", "tekken.json"))
    mistral_native = (model_path / "params.json").exists() and (model_path / "consolidated.safetensors").exists()
    arguments: list[str] = []
    if has_mistral_tokenizer or mistral_native:
        # mistral_common formats the chat (its own template) and tool calls, as Mistral recommends for vLLM.
        arguments += ["--tokenizer-mode", "mistral", "--enable-auto-tool-choice", "--tool-call-parser", "mistral"]
    if mistral_native:
        # The folder holds Mistral's consolidated checkpoint rather than the Hugging Face layout.
        arguments += ["--config-format", "mistral", "--load-format", "mistral"]
    return arguments


def server_command(settings: QuietLineSettings, model_path: Path, tier: str | None = None) -> list[str]:
    """The argv for the server of `tier` (None: the default tier)."""
    endpoint = settings.llm.endpoint(tier)
    check_loopback(endpoint, "" if tier in (None, settings.llm.tier) else tier)
    if endpoint.server == "llama_cpp":
        return llama_cpp_command(settings, endpoint, model_path)
    if endpoint.server == "vllm":
        return vllm_command(settings, endpoint, model_path)
    raise ConfigError(f"llm.server '{endpoint.server}' is not known: use llama_cpp or vllm")
