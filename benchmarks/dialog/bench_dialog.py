"""Dialog benchmark: retail and banking tasks as text calls, per-route turn latency, deadlines met; intents
and redaction.

Starts the real llm, knowledge and dialog services (the supervisor, cpu profile), loads the tau-bench
retail export into the back office, and plays the retail tasks (../shared/data/retail/tasks_dev.json,
and with --train the first N of tasks_train.json) through `services.dialog.evaluation` with the
scripted caller, twice in the same run: with the LLM route as configured (cpu profile: flows + Gemma
270M) and with the LLM route disabled (dialog.llm_deadline_s below what any answer needs). Reported:
success rate, tool precision/recall, turns per task, turn latency per route (p50/p95) and how often
the first words came within the turn deadline (`--deadline-ms`, the architecture's 300 ms on a GPU;
the cpu profile measures what it can do).

The banking tasks (../shared/data/kb/banking/tasks, tau2-bench) are played on the dialog's bank line in
the same two stacks (`services.dialog.evaluation.evaluate_banking`), with the bank's 698 documents
ingested into the knowledge collection "bank", which the bank line answers from.

Intent accuracy (BANKING77, CLINC150 out-of-scope) comes from bench_intents.py and redaction from
redaction_eval.py; their latest results are copied in when present. Prints JSON and writes --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
sys.path.insert(0, str(REPO_ROOT))
from latency_stats import percentiles  # noqa: E402

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
RETAIL = SHARED_DATA / "retail"
BANK = SHARED_DATA / "kb" / "banking"
RESULTS = REPO_ROOT / "benchmarks" / "results"
BENCH_PORT_BASE = 56960


async def run_tasks(settings, config: Path, tasks: list[dict], bank_tasks: list[dict], label: str) -> tuple[dict, dict]:
    from services.appliance.supervisor import Supervisor
    from services.dialog.evaluation import evaluate_banking, evaluate_retail
    from services.dialog.tools.backoffice import load_retail
    from services.knowledge.client import ingest_documents
    from services.knowledge.documents import read_documents_report

    supervisor = Supervisor(settings, config, only=("llm", "knowledge", "dialog"))
    started = time.perf_counter()
    await asyncio.to_thread(supervisor.up)
    try:
        dsn = supervisor.database.dsn_if_running() if not settings.database.dsn else settings.database.dsn
        await load_retail(dsn, RETAIL / "data")
        print(f"[{label}] stack up in {time.perf_counter() - started:.0f} s; {len(tasks)} tasks", file=sys.stderr)
        report = await evaluate_retail(tasks, settings.dialog.endpoint.target, dsn,
                                       lambda row: print(f"[{label}] task {row['task']}: success={row['success']} "
                                                         f"turns={row['turns']} {row['ended']}", file=sys.stderr))
        started = time.perf_counter()
        documents = read_documents_report(BANK / "documents", "bank").documents
        counts = await ingest_documents(settings.knowledge.endpoint.target, documents)
        print(f"[{label}] bank KB: {counts.documents_added} documents, {counts.chunks_written} chunks in "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
        bank_report = await evaluate_banking(
            bank_tasks, settings.dialog.endpoint.target, dsn, BANK / "db.json",
            lambda row: print(f"[{label}] {row['task']}: success={row['success']} turns={row['turns']} "
                              f"{row['ended']} {row['dialog_actions']}", file=sys.stderr))
    finally:
        await asyncio.to_thread(supervisor.down)
    return report, bank_report


def latency_by_route(rows: list[dict], deadline_ms: float) -> dict:
    by_route: dict[str, list[float]] = {}
    for row in rows:
        for route, turn_ms in zip(row["routes"], row["turn_ms"]):
            by_route.setdefault(route, []).append(turn_ms)
    every = [value for values in by_route.values() for value in values]
    first = [value for row in rows for value in row.get("first_say_ms", []) if value is not None]
    return {
        "turn_ms_by_route": {route: percentiles(values) for route, values in sorted(by_route.items())},
        # The deadline is to the first spoken words (an acknowledgement counts); the whole turn is shown too.
        "first_words_ms": percentiles(first) if first else None,
        "first_words_within_deadline": round(sum(1 for v in first if v <= deadline_ms) / len(first), 3) if first else None,
        "whole_turns_within_deadline": round(sum(1 for v in every if v <= deadline_ms) / len(every), 3) if every else None,
        "deadline_ms": deadline_ms,
    }


async def run_benchmark(args) -> dict:
    from services.appliance.port_plan import config_with_ports, write_config
    from services.dialog.evaluation import load_banking_tasks
    from services.kit.config import load_settings

    tasks = json.loads((RETAIL / "tasks_dev.json").read_text())
    if args.train:
        tasks += json.loads((RETAIL / "tasks_train.json").read_text())[: args.train]
    bank_tasks = load_banking_tasks(BANK / "tasks")
    report: dict = {
        "benchmark": "dialog",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
        "tasks": {"dev": 20, "train": args.train, "banking": len(bank_tasks)},
        "note": "text turns as the scripted caller sees them (no speech): turn_ms_by_route is the whole turn; "
                "first_words_ms is until the first Say event (the disclosure or the cached acknowledgement "
                "counts, as the caller hears it), which is what the deadline is about",
    }
    for label, llm_deadline in (("flows_and_llm", None), ("llm_disabled", 0.01)):
        state = Path(tempfile.mkdtemp(prefix=f"quietline-bench-dialog-{label}-"))
        extra = {"dialog": {"line_collections": {"bank": ["bank"]},
                            **({"llm_deadline_s": llm_deadline} if llm_deadline else {})}}
        config = write_config(state / "quietline.yaml", config_with_ports(state, BENCH_PORT_BASE, extra))
        settings = load_settings(config)
        try:
            result, bank_result = await run_tasks(settings, config, tasks, bank_tasks, label)
        finally:
            shutil.rmtree(state, ignore_errors=True)
        report[label] = {**result["summary"], **latency_by_route(result["tasks"], args.deadline_ms),
                         "rows": result["tasks"]}
        report[f"banking_{label}"] = {**bank_result["summary"], **latency_by_route(bank_result["tasks"], args.deadline_ms),
                                      "rows": bank_result["tasks"]}
    for name in ("dialog_intents", "dialog_redaction"):
        path = RESULTS / f"{name}.json"
        if path.exists():
            report[name] = json.loads(path.read_text())
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS / "dialog.json"))
    parser.add_argument("--train", type=int, default=0, help="also the first N tasks of tasks_train.json")
    parser.add_argument("--deadline-ms", type=float, default=300.0)
    args = parser.parse_args()
    if not (RETAIL / "tasks_dev.json").is_file():
        print(f"bench-dialog: shared data not found at {SHARED_DATA}: clone the repo beside ../shared", file=sys.stderr)
        return 2
    from services.kit.offline import enforce_offline

    enforce_offline()
    report = asyncio.run(run_benchmark(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    summary = {key: ({k: v for k, v in value.items() if k != "rows"} if isinstance(value, dict) else value)
               for key, value in report.items() if key not in ("dialog_intents", "dialog_redaction")}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
