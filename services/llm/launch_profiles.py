"""Launch profiles of the OpenAI-compatible LLM server: pure functions from settings to a command line.

The `llm` service is not our code (ARCHITECTURE.md): on the `cpu` profile it is llama-cpp-python's
server running a GGUF file, on the `gpu` profile vLLM's server running Mistral-7B-Instruct. What we own
is how each is started: loopback only, the model name the dialog asks for, the context size from the
configuration, and no logging of prompts or answers (caller data).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from services.kit.config import ConfigError, QuietLineSettings

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

# llama.cpp picks a chat template from the GGUF's tokenizer.chat_template; GGUFs without one (the
# Gemma 3 270M base model ships none) would silently fall back to the llama-2 format, so name the
# format per model family here.
LLAMA_CPP_CHAT_FORMATS = {"gemma3-270m-q4km": "gemma"}

# Environment variables that llama-cpp-python's server reads *over* its command line
# (`os.getenv("HOST")` / `os.getenv("PORT")` and CONFIG_FILE in its __main__).
LLAMA_CPP_OVERRIDING_ENVIRONMENT = ("HOST", "PORT", "CONFIG_FILE")


def check_loopback(settings: QuietLineSettings) -> None:
    """Refuse a non-loopback llm.host: listening beyond loopback needs mTLS, which is not configured."""
    if settings.llm.host not in LOOPBACK_HOSTS:
        raise ConfigError(
            f"llm.host {settings.llm.host} is not loopback; the LLM server may only listen on 127.0.0.1 "
            "(non-loopback listening requires mTLS, which this build does not configure): set llm.host: 127.0.0.1"
        )


def llama_cpp_command(settings: QuietLineSettings, model_path: Path, python: str = sys.executable) -> list[str]:
    """The argv of llama-cpp-python's OpenAI-compatible server for `settings.llm` and a GGUF file."""
    llm = settings.llm
    argv = [
        python, "-m", "llama_cpp.server",
        "--model", str(model_path),
        "--model_alias", llm.model,
        "--host", llm.host,
        "--port", str(llm.port),
        "--n_ctx", str(llm.context_tokens),
        "--n_threads", str(llm.threads),
        "--n_threads_batch", str(llm.threads),
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
    ]
    chat_format = LLAMA_CPP_CHAT_FORMATS.get(llm.model)
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
    return environment


def vllm_command(settings: QuietLineSettings, model_path: Path, python: str = sys.executable) -> list[str]:
    """The argv of vLLM's OpenAI-compatible server for `settings.llm` and a model folder.

    Request logging (prompts) is off by default in current vLLM (`--enable-log-requests` opts in, and
    must never be added); the old `--disable-log-requests` was removed in vLLM 0.12, so none is passed.
    """
    llm = settings.llm
    argv = [
        # The `vllm serve` command (its console script's module); `-m vllm.entrypoints.openai.api_server`
        # is deprecated upstream.
        python, "-m", "vllm.entrypoints.cli.main", "serve", str(model_path),
        "--served-model-name", llm.model,
        "--host", llm.host,
        "--port", str(llm.port),
        "--max-model-len", str(llm.context_tokens),
        # Every turn of a call repeats the system prompt and the history: reuse their KV cache.
        "--enable-prefix-caching",
        "--disable-uvicorn-access-log",
    ]
    argv += _mistral_format_arguments(model_path)
    return argv


def _mistral_format_arguments(model_path: Path) -> list[str]:
    """Mistral's own tokenizer (mistral_common) when the folder carries it, as Mistral recommends for vLLM."""
    has_mistral_tokenizer = any((model_path / name).exists() for name in ("tokenizer.model.v3", "tekken.json"))
    mistral_native = (model_path / "params.json").exists() and (model_path / "consolidated.safetensors").exists()
    arguments: list[str] = []
    if has_mistral_tokenizer or mistral_native:
        arguments += ["--tokenizer-mode", "mistral"]
    if mistral_native:
        # The folder holds Mistral's consolidated checkpoint rather than the Hugging Face layout.
        arguments += ["--config-format", "mistral", "--load-format", "mistral"]
    return arguments


def server_command(settings: QuietLineSettings, model_path: Path, python: str = sys.executable) -> list[str]:
    """The argv for the server that `settings.llm.server` names."""
    check_loopback(settings)
    if settings.llm.server == "llama_cpp":
        return llama_cpp_command(settings, model_path, python)
    if settings.llm.server == "vllm":
        return vllm_command(settings, model_path, python)
    raise ConfigError(f"llm.server '{settings.llm.server}' is not known: use llama_cpp or vllm")
