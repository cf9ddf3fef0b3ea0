"""Configurations for several appliances on one machine (tests, benchmarks, a developer's stack).

Each appliance gets its own state directory and a block of ports starting at `port_base`, so a test
stack never collides with a benchmark stack or with the default one `quietline up` uses (50461..).
"""

from __future__ import annotations

from pathlib import Path

import yaml

GRPC_SERVICES = ("asr", "tts", "knowledge", "dialog")


def config_with_ports(state_dir: Path, port_base: int, extra: dict | None = None) -> dict:
    """A configuration with the LLM on `port_base`, gRPC services on the next ports and their
    metrics 100 above, and all state under `state_dir`; `extra` sections are merged in."""
    config: dict = {"state_dir": str(state_dir), "llm": {"port": port_base}}
    for offset, name in enumerate(GRPC_SERVICES, start=1):
        config[name] = {"endpoint": {"port": port_base + offset, "metrics_port": port_base + 100 + offset}}
    for section, values in (extra or {}).items():
        config.setdefault(section, {}).update(values)
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path
