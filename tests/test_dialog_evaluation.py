"""`quietline eval retail`: tau-bench retail tasks played as text calls against the real dialog service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT, free_port, start_service, write_config
from services.kit.offline import OFFLINE_ENVIRONMENT


@pytest.fixture(scope="module")
def retail_tasks(shared_data: Path) -> Path:
    return shared_data / "retail" / "tasks_train.json"


@pytest.fixture(scope="module")
def eval_config(service_config: Path, state_dir: Path) -> Path:
    config = yaml.safe_load(service_config.read_text())
    config["knowledge"] = {"endpoint": {"port": free_port(), "metrics_port": free_port()}}
    config["llm"]["port"] = free_port()
    config["dialog"] = {"endpoint": {"port": free_port(), "metrics_port": free_port()}}
    folder = state_dir / "dialog-eval"
    folder.mkdir(exist_ok=True)
    return write_config(folder / "services.yaml", config)


@pytest.fixture(scope="module")
def dialog_service(eval_config: Path, database_dsn: str):
    service = start_service("dialog", eval_config, extra_env={"QUIETLINE_DATABASE__DSN": database_dsn})
    yield service
    assert service.stop() == 0, service.log()


def quietline_eval(config: Path, dsn: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.appliance.cli", "eval", "retail", *args,
                           "--config", str(config)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, **OFFLINE_ENVIRONMENT, "QUIETLINE_DATABASE__DSN": dsn})


def test_cancel_and_return_tasks_succeed_and_unsupported_ones_fail_honestly(
    dialog_service, eval_config: Path, database_dsn: str, retail_tasks: Path, tmp_path: Path
) -> None:
    tasks = json.loads(retail_tasks.read_text())
    cancels = [t for t in tasks if [a["name"] for a in t["actions"]] == ["cancel_pending_order"]][:2]
    returns = [t for t in tasks if [a["name"] for a in t["actions"]] == ["return_delivered_order_items"]][:1]
    # A payment-method change has no flow: the caller is handed over.
    payments = [t for t in tasks if t["actions"][0]["name"] == "modify_pending_order_payment"][:1]
    chosen = tmp_path / "tasks.json"
    chosen.write_text(json.dumps(cancels + returns + payments))

    result = quietline_eval(eval_config, database_dsn, str(chosen), "--backoffice",
                            str(retail_tasks.parent / "data"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rows = report["tasks"]
    assert [row["success"] for row in rows] == [True, True, True, False], rows
    for row, tool in zip(rows[:3], ["cancel_pending_order"] * 2 + ["return_delivered_order_items"]):
        assert row["dialog_tool_calls"] == [tool]
        assert (row["tool_precision"], row["tool_recall"]) == (1.0, 1.0)
        assert "flow" in row["routes"]
    # Nothing was changed, so no wrong change either.
    assert rows[3]["dialog_tool_calls"] == [] and rows[3]["tool_recall"] == 0.0
    summary = report["summary"]
    assert summary["tasks"] == 4 and summary["success_rate"] == 0.75


def test_a_bad_task_file_is_refused_with_the_fix(eval_config: Path, database_dsn: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"not": "a task list"}')
    result = quietline_eval(eval_config, database_dsn, str(broken))
    assert result.returncode == 2
    assert "tau-bench retail format" in result.stderr
    result = quietline_eval(eval_config, database_dsn, str(tmp_path / "missing.json"))
    assert result.returncode == 2 and "does not exist" in result.stderr
