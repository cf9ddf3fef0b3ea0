"""The llm service launcher: `python -m services.llm [--profile P] [--config FILE]`.

It resolves and verifies the configured model offline, builds the server's command line for the profile
(llama.cpp on `cpu`, vLLM on `gpu`, see launch_profiles.py) and replaces itself with that server via
`os.execve`, so the pid the supervisor records and signals is the server itself. Health is the server's
own `GET /v1/models`.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys

from models import ModelError, resolve_model
from services.kit.config import ConfigError, QuietLineSettings, load_settings
from services.kit.logs import configure_logging
from services.kit.offline import enforce_offline
from services.llm.launch_profiles import llama_cpp_environment, server_command

SERVER_MODULES = {"llama_cpp": "llama_cpp.server", "vllm": "vllm.entrypoints.cli.main"}


def _server_environment(settings: QuietLineSettings) -> dict[str, str]:
    environment = dict(os.environ)
    if settings.llm.server == "llama_cpp":
        from llama_cpp.server.settings import Settings as LlamaServerSettings

        environment = llama_cpp_environment(environment, LlamaServerSettings.model_fields)
    # The server's stdout is a log file: without this its lines would sit in a buffer until exit.
    environment.setdefault("PYTHONUNBUFFERED", "1")
    return environment


def launch(settings: QuietLineSettings) -> None:
    """Resolve the model, then exec the server; returns only by raising ConfigError or ModelError."""
    module = SERVER_MODULES[settings.llm.server]
    if importlib.util.find_spec(module.split(".")[0]) is None:
        package = "vllm" if settings.llm.server == "vllm" else "llama-cpp-python[server]"
        raise ConfigError(
            f"llm.server is {settings.llm.server} but {package} is not installed in {sys.prefix}: install it "
            f"on this host (`pip install {package}`), or use the profile that matches this machine"
        )
    model = resolve_model(settings.llm.model, settings.state_dir)
    argv = server_command(settings, model.path)
    environment = _server_environment(settings)
    logging.getLogger("quietline.llm").info(
        "launching",
        extra={"server": settings.llm.server, "model": settings.llm.model, "endpoint": settings.llm.base_url},
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
    args = parser.parse_args(argv)
    enforce_offline()
    log = configure_logging("llm")
    try:
        launch(load_settings(args.config, args.profile))
    except (ConfigError, ModelError) as err:
        kind = "config" if isinstance(err, ConfigError) else "model"
        log.error(str(err), extra={"error": kind})
        print(f"quietline-llm: {err}", file=sys.stderr)
        return 2
    return 0  # not reached: launch() replaces this process


if __name__ == "__main__":
    sys.exit(main())
