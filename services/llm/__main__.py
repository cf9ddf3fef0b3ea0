"""The llm service launcher: `python -m services.llm [--profile P] [--config FILE] [--tier NAME]`.

It resolves and verifies the tier's model offline, builds the server's command line for the profile
(llama.cpp on `cpu`, vLLM on `gpu`, see launch_profiles.py) and replaces itself with that server via
`os.execve`, so the pid the supervisor records and signals is the server itself. Health is the server's
own `GET /v1/models`; both servers serve their own Prometheus metrics at `GET /metrics` on the same port.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys

from models import ModelError, resolve_model
from services.kit.config import ConfigError, LlmEndpoint, QuietLineSettings, load_settings
from services.kit.logs import configure_logging
from services.kit.offline import enforce_offline
from services.llm.launch_profiles import llama_cpp_environment, server_command, server_python, vllm_environment

# The module each server's interpreter must be able to import, and the package that provides it.
SERVER_PACKAGES = {"llama_cpp": ("llama_cpp.server", "llama-cpp-python[server]"), "vllm": ("vllm", "vllm")}


def _check_server_installed(endpoint: LlmEndpoint) -> None:
    module, package = SERVER_PACKAGES[endpoint.server]
    python = server_python(endpoint)
    # Asked of the server's own interpreter (vLLM usually has a virtual environment of its own), without
    # importing the package: vLLM's import alone takes seconds.
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module.split('.')[0]!r}) is None)"
    try:
        found = subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        found = False
    if not found:
        where = "llm.python" if endpoint.python else "this environment"
        raise ConfigError(
            f"llm.server is {endpoint.server} but {package} is not installed for {python} ({where}): install it "
            f"there (`pip install {package}`; for vLLM on CPU `make vllm-setup`), or use the profile that matches "
            "this machine"
        )


def _server_environment(endpoint: LlmEndpoint) -> dict[str, str]:
    environment = dict(os.environ)
    if endpoint.server == "llama_cpp":
        from llama_cpp.server.settings import Settings as LlamaServerSettings

        environment = llama_cpp_environment(environment, LlamaServerSettings.model_fields)
    else:
        environment = vllm_environment(environment, endpoint)
    # The server's stdout is a log file: without this its lines would sit in a buffer until exit.
    environment.setdefault("PYTHONUNBUFFERED", "1")
    return environment


def launch(settings: QuietLineSettings, tier: str | None = None) -> None:
    """Resolve the tier's model, then exec its server; returns only by raising ConfigError or ModelError."""
    endpoint = settings.llm.endpoint(tier)
    _check_server_installed(endpoint)
    model = resolve_model(endpoint.model, settings.state_dir)
    argv = server_command(settings, model.path, tier)
    environment = _server_environment(endpoint)
    logging.getLogger("quietline.llm").info(
        "launching",
        extra={"tier": tier or settings.llm.tier, "server": endpoint.server, "model": endpoint.model,
               "endpoint": endpoint.base_url},
    )
    # Flush before exec: buffered log lines would be lost with the old process image.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, environment)


def main(argv: list[str] | None = None) -> int:
    """Entry point; exits 2 with the fix named when the configuration or the model is unusable."""
    parser = argparse.ArgumentParser(prog="quietline-llm", description=__doc__)
    parser.add_argument("--profile", choices=["cpu", "gpu"], default=None)
    parser.add_argument("--config", default=None, help="operator YAML file over the profile")
    parser.add_argument("--tier", default=None, help="the llm tier to serve (default: llm.tier)")
    args = parser.parse_args(argv)
    enforce_offline()
    log = configure_logging("llm")
    try:
        launch(load_settings(args.config, args.profile), args.tier)
    except (ConfigError, ModelError) as err:
        kind = "config" if isinstance(err, ConfigError) else "model"
        log.error(str(err), extra={"error": kind})
        print(f"quietline-llm: {err}", file=sys.stderr)
        return 2
    return 0  # not reached: launch() replaces this process


if __name__ == "__main__":
    sys.exit(main())
