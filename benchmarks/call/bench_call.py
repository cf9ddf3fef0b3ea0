"""Call benchmark: callers through the whole appliance, per-stage latency percentiles.

Starts its own appliance (own state directory and ports), ingests the shared bank knowledge base,
then places calls through the same Pipecat pipeline `quietline call` uses, in real time, with two
kinds of caller, reported apart:
- `recordings`: the real English recordings in ../shared/data/speech (people reading books and
  card names: they measure recognition and the "I cannot help with that" path);
- `bank_questions`: questions this project wrote about its sample bank, spoken by the tts service
  at the demo caller's rate (they measure the answering path: retrieval, LLM, fallback).
Prints JSON and writes it to --out.

    python benchmarks/call/bench_call.py --calls 8 --out benchmarks/results/call.json
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

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from latency_stats import percentiles  # noqa: E402

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
BENCH_PORT_BASE = 55460
STAGES = ("asr_final", "dialog_first_say", "tts_first_audio", "turn_total")
BANK_QUESTIONS = (
    "Hello, I think I lost my debit card yesterday. What should I do now?",
    "What time does the branch open on Saturday?",
    "How much does it cost to send money abroad?",
    "Can I take a break from my mortgage payments?",
    "What do I need to bring to open an account?",
    "Someone sent me a text message asking for my PIN. Is that really you?",
)


def english_recordings(limit: int) -> list[dict]:
    manifest = SHARED_DATA / "speech" / "manifest.jsonl"
    entries = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    return [e for e in entries if e["lang"] == "en"][:limit]


async def run_benchmark(calls: int) -> dict:
    from services.appliance.cli import synthesize_demo_question
    from services.appliance.port_plan import config_with_ports, write_config
    from services.appliance.supervisor import Supervisor
    from services.asr.scoring import word_error_rate
    from services.gateway.call_pipeline import run_recorded_call
    from services.kit.audio import read_recording
    from services.kit.config import load_settings
    from services.knowledge.client import ingest_documents
    from services.knowledge.documents import read_document_folder

    state = Path(tempfile.mkdtemp(prefix="quietline-bench-"))
    state.chmod(0o755)  # the embedded PostgreSQL runs as its own system user
    config = write_config(state / "quietline.yaml", config_with_ports(state, BENCH_PORT_BASE))
    settings = load_settings(config)
    supervisor = Supervisor(settings, config)
    started = time.perf_counter()
    await asyncio.to_thread(supervisor.up)
    startup_s = time.perf_counter() - started
    try:
        documents = list(read_document_folder(SHARED_DATA / "kb" / "banking" / "documents"))
        started = time.perf_counter()
        await ingest_documents(settings.knowledge.endpoint.target, documents)
        ingest_s = time.perf_counter() - started
        rate = settings.gateway.pipeline_sample_rate_hz
        callers = [(entry["audio"], entry["reference"], read_recording(SHARED_DATA / entry["audio"], rate), "recordings")
                   for entry in english_recordings(calls)]
        for question in BANK_QUESTIONS[:calls]:
            callers.append((question, question, await synthesize_demo_question(settings, question), "bank_questions"))
        rows = []
        for name, reference, audio, kind in callers:
            result = await run_recorded_call(settings, audio)
            heard = " ".join(turn["caller_text"] for turn in result.turns)
            first = result.turns[0] if result.turns else {}
            rows.append({
                "kind": kind,
                "caller": name,
                "duration_s": round(len(audio) / rate, 2),
                "turns": len(result.turns),
                "wer": round(word_error_rate(reference, heard), 3),
                "route": first.get("route"),
                "route_reason": first.get("route_reason"),
                "cited": bool(first.get("citations")),
                "latency_ms": first.get("latency_ms", {}),
            })
    finally:
        await asyncio.to_thread(supervisor.down)
        shutil.rmtree(state, ignore_errors=True)
    return {
        "benchmark": "call",
        "profile": settings.profile,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
        "latency_definition": "ms from the end of the caller's speech (VAD stop minus its stop window) to: "
                              "final transcript, first sentence from dialog, first bot audio out, last bot audio out",
        "startup_s": round(startup_s, 1),
        "kb_ingest_s": round(ingest_s, 1),
        "kb_documents": len(documents),
        **{kind: summarise([r for r in rows if r["kind"] == kind]) for kind in ("recordings", "bank_questions")},
        "per_call": rows,
    }


def summarise(rows: list[dict]) -> dict:
    return {
        "calls": len(rows),
        "answered_with_citation": sum(r["cited"] for r in rows),
        "routes": {route: sum(r["route"] == route for r in rows) for route in sorted({str(r["route"]) for r in rows})},
        "wer_mean": round(float(np.mean([r["wer"] for r in rows])), 3) if rows else None,
        "latency_ms_from_end_of_speech": {
            stage: percentiles([r["latency_ms"][stage] for r in rows if r["latency_ms"].get(stage) is not None])
            for stage in STAGES
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=8, help="callers of each kind (at most 6 bank questions)")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "call.json"))
    args = parser.parse_args()
    if not SHARED_DATA.is_dir():
        print(f"bench-call: shared data not found at {SHARED_DATA}: clone the repo beside ../shared", file=sys.stderr)
        return 2
    from services.kit.offline import enforce_offline

    enforce_offline()
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    report = asyncio.run(run_benchmark(args.calls))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
