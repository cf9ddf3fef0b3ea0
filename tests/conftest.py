"""Shared fixtures: real service processes on test ports, a real embedded PostgreSQL, real models.

Nothing here mocks a QuietLine part: a test that needs a service starts the real process with the
same entry point `quietline up` uses and talks to it over gRPC.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from services.appliance.port_plan import config_with_ports, write_config  # noqa: F401 (re-exported)
from services.appliance.supervisor import EmbeddedDatabase, ServiceEntry, check_health
from services.kit.config import load_settings
from services.kit.offline import OFFLINE_ENVIRONMENT, enforce_offline

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT.parent / "shared" / "data").resolve()

enforce_offline()

# Per-service tests and the whole-stack test use separate port ranges so they never collide with
# each other or with a developer's running appliance (which uses the 50461.. defaults).
SERVICE_PORT_BASE = 52460
STACK_PORT_BASE = 53460
# What the LLM tests ask (tests/test_llm.py and tests/with_vllm): a bank question, and a route decision's schema.
LLM_QUESTION = [
    {"role": "system", "content": "You answer questions about a bank's branches."},
    {"role": "user", "content": "When does the branch on Main Street open on Saturdays?"},
]
ROUTE_SCHEMA = {
    "type": "object",
    "properties": {
        "route": {"enum": ["faq", "flow", "llm", "human"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["route", "confidence"],
    "additionalProperties": False,
}
# Kept as names tests already use; the port plan lives with the supervisor.
make_test_config = config_with_ports


def free_port() -> int:
    """A loopback port nothing listens on right now (for a service of a test's own, or a closed port)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared test data not found at {SHARED_DATA}: check out the repo beside ../shared")
    return SHARED_DATA


@pytest.fixture(scope="session")
def retail(shared_data: Path) -> dict:
    """The tau-bench retail export in ../shared/data: its folder, users and orders."""
    folder = shared_data / "retail" / "data"
    return {"folder": folder, "users": json.loads((folder / "users.json").read_text()),
            "orders": json.loads((folder / "orders.json").read_text())}


@pytest.fixture(scope="session")
def customer(retail: dict) -> dict:
    """The first customer with both a pending and a delivered order (read from the export, not hard-coded)."""
    for user_id, user in retail["users"].items():
        statuses = {order_id: retail["orders"][order_id]["status"] for order_id in user["orders"]}
        if "pending" in statuses.values() and "delivered" in statuses.values():
            pending = next(order for order, status in statuses.items() if status == "pending")
            delivered = next(order for order, status in statuses.items() if status == "delivered")
            return {"id": user_id, "email": user["email"], "name": user["name"], "zip": user["address"]["zip"],
                    "pending": pending, "delivered": delivered}
    raise AssertionError("the retail export has no customer with a pending and a delivered order")


@pytest.fixture(scope="session")
def references(shared_data) -> dict[str, str]:
    """Reference text of every clip in ../shared/data/speech, by file name."""
    manifest = [json.loads(line) for line in (shared_data / "speech" / "manifest.jsonl").read_text().splitlines()]
    return {item["audio"].rsplit("/", 1)[-1]: item["reference"] for item in manifest}


def appliance_state_dir(prefix: str) -> Path:
    """A state directory the embedded PostgreSQL (which runs as its own system user) can always reach.

    pytest's own temp root is reset to mode 0700 whenever another pytest session starts, which would
    cut the database off from its data directory, so state lives in a world-traversable temp folder.
    """
    path = Path(tempfile.mkdtemp(prefix=f"quietline-{prefix}-"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def state_dir() -> Path:
    path = appliance_state_dir("test")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def service_config(state_dir: Path) -> Path:
    """The config file used by per-service tests."""
    return write_config(state_dir / "services.yaml", make_test_config(state_dir, SERVICE_PORT_BASE))


@pytest.fixture(scope="session")
def database_dsn(state_dir: Path):
    """A real embedded PostgreSQL 18 with pgvector for the whole session."""
    database = EmbeddedDatabase(state_dir)
    dsn = database.start()
    yield dsn
    database.stop()


class ServiceProcess:
    """A service started the way `quietline up` starts it (own process group), for a module or session."""

    def __init__(self, name: str, config_file: Path, env: dict[str, str]) -> None:
        self.name = name
        self.settings = load_settings(config_file)
        if name == "llm":
            # The LLM server speaks HTTP (OpenAI-compatible), not gRPC.
            self.entry = ServiceEntry(name, "http", self.settings.llm.host, self.settings.llm.port, None)
        else:
            endpoint = getattr(self.settings, name).endpoint
            self.entry = ServiceEntry(name, "grpc", endpoint.host, endpoint.port, endpoint.metrics_port)
        self.log_path = config_file.parent / f"{name}.test.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}", "--config", str(config_file)],
            stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
            start_new_session=True,
        )

    @property
    def target(self) -> str:
        return self.entry.address

    def wait_healthy(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log()}")
            if check_health(self.entry, timeout_s=1.0):
                return
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not healthy after {timeout_s} s:\n{self.log()}")

    def stop(self) -> int:
        """SIGTERM the process group (graceful shutdown); SIGKILL it after 20 s. Returns the exit code."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_service(name: str, config_file: Path, extra_env: dict[str, str] | None = None,
                  timeout_s: float = 180.0) -> ServiceProcess:
    """Start `services.<name>` (`llm` included) with `config_file` and wait until it reports healthy."""
    env = {**os.environ, **OFFLINE_ENVIRONMENT, **(extra_env or {})}
    service = ServiceProcess(name, config_file, env)
    try:
        service.wait_healthy(timeout_s)
    except BaseException:
        service.stop()
        raise
    return service
