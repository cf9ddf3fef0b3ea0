"""The llm service: the real llama.cpp server started by `python -m services.llm`, and the client.

The model is Gemma 3 270M *base* (not instruction-tuned): nothing here asserts on what it says, only on
streaming, limits, deadlines and failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import LLM_QUESTION, REPO_ROOT, ROUTE_SCHEMA, ServiceProcess, free_port, start_service
from services.kit.config import ConfigError, load_settings
from services.kit.offline import OFFLINE_ENVIRONMENT
from services.llm.client import LlmClient, LlmFailure, merge_system_messages
from services.llm.launch_profiles import (
    llama_cpp_command,
    llama_cpp_environment,
    server_command,
)

# Generous: the test machine has two cores shared with other test runs.
ANSWER_DEADLINE_S = 30.0
QUESTION = LLM_QUESTION


def _launcher(config_file: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "services.llm", "--config", str(config_file), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
        env={**os.environ, **OFFLINE_ENVIRONMENT, **(env or {})}, start_new_session=True,
    )


@pytest.fixture(scope="module")
def llm_server(service_config: Path):
    server = start_service("llm", service_config)
    yield server
    server.stop()


@pytest.fixture
async def llm_client(llm_server):
    client = LlmClient.from_settings(llm_server.settings.llm)
    yield client
    await client.aclose()


# -- the launcher ---------------------------------------------------------------------------------

def test_launcher_execs_the_server_itself_serving_the_configured_name(llm_server: ServiceProcess) -> None:
    # The pid the supervisor records must be the server, not a wrapper that would outlive a SIGTERM.
    cmdline = Path(f"/proc/{llm_server.process.pid}/cmdline").read_bytes().split(b"\0")
    assert b"services.llm.llama_cpp_server" in cmdline
    assert cmdline[cmdline.index(b"--host") + 1] == b"127.0.0.1"
    models = httpx.get(f"{llm_server.settings.llm.base_url}/models", timeout=5).json()
    assert [m["id"] for m in models["data"]] == [llm_server.settings.llm.model]


def test_llama_cpp_profile_names_the_chat_format_and_keeps_requests_queued(tmp_path: Path) -> None:
    settings = load_settings(profile="cpu")
    argv = llama_cpp_command(settings, settings.llm.endpoint(), tmp_path / "model.gguf")
    options = dict(zip(argv[3::2], argv[4::2]))
    # The Gemma 3 270M GGUF carries no tokenizer.chat_template; without this llama.cpp would use llama-2's.
    assert options["--chat_format"] == "gemma"
    assert options["--interrupt_requests"] == "false"
    assert options["--verbose"] == "false"
    assert options["--n_ctx"] == str(settings.llm.context_tokens)
    assert options["--model_alias"] == settings.llm.model
    environment = llama_cpp_environment({"HOST": "0.0.0.0", "API_KEY": "x", "PATH": "/bin"}, ["api_key"])
    assert environment == {"PATH": "/bin", "OMP_WAIT_POLICY": "PASSIVE", **OFFLINE_ENVIRONMENT}


def test_non_loopback_host_is_refused_before_anything_starts(tmp_path: Path) -> None:
    config = tmp_path / "open.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path), "llm": {"host": "0.0.0.0", "port": free_port()}}))
    with pytest.raises(ConfigError, match="not loopback"):
        server_command(load_settings(config), tmp_path)
    process = _launcher(config)
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 2
    assert "llm.host 0.0.0.0 is not loopback" in output


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_gpu_profile_without_vllm_installed_says_so(tmp_path: Path) -> None:
    config = tmp_path / "gpu.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path), "llm": {"port": free_port()}}))
    process = _launcher(config, "--profile", "gpu", env={"QUIETLINE_MODELS_DIR": str(tmp_path)})
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 2
    assert "vllm is not installed" in output and "make vllm-setup" in output


# -- the client against the real server -----------------------------------------------------------

def test_system_messages_are_merged_into_the_first_user_turn() -> None:
    merged = merge_system_messages([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ])
    assert merged == [
        {"role": "user", "content": "Be brief.\n\nHi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]


async def test_stream_yields_several_text_deltas(llm_client: LlmClient) -> None:
    deltas = [text async for text in llm_client.stream_chat(
        QUESTION, max_tokens=12, temperature=0.0, deadline_s=ANSWER_DEADLINE_S)]
    assert len(deltas) >= 2
    assert all(isinstance(text, str) and text for text in deltas)


async def test_max_tokens_is_honoured(llm_client: LlmClient) -> None:
    # llama.cpp streams one token per delta (fewer when a character spans tokens): never more deltas.
    deltas = [text async for text in llm_client.stream_chat(
        QUESTION, max_tokens=4, temperature=0.0, deadline_s=ANSWER_DEADLINE_S)]
    assert 1 <= len(deltas) <= 4
    longer = await llm_client.complete_chat(QUESTION, max_tokens=16, temperature=0.0, deadline_s=ANSWER_DEADLINE_S)
    assert len(longer) > len("".join(deltas))


async def test_short_deadline_raises_timeout_promptly(llm_client: LlmClient) -> None:
    started = time.perf_counter()
    with pytest.raises(LlmFailure) as failure:
        await llm_client.complete_chat(QUESTION, max_tokens=60, temperature=0.0, deadline_s=0.05)
    assert failure.value.kind == "timeout"
    assert "dialog.llm_deadline_s" in str(failure.value)
    assert time.perf_counter() - started < 1.0


async def test_closed_port_is_unavailable_quickly() -> None:
    started = time.perf_counter()
    async with LlmClient(f"http://127.0.0.1:{free_port()}/v1", "gemma3-270m-q4km") as client:
        with pytest.raises(LlmFailure) as failure:
            await client.complete_chat(QUESTION, max_tokens=4, temperature=0.0, deadline_s=ANSWER_DEADLINE_S)
    assert failure.value.kind == "unavailable"
    assert "llm.host/llm.port" in str(failure.value)
    assert time.perf_counter() - started < 1.0


def _disconnects_logged(server: ServiceProcess) -> int:
    return server.log().count("Disconnected from client")


async def test_leaving_the_stream_early_stops_generation_and_frees_the_server(
    llm_server: ServiceProcess, llm_client: LlmClient
) -> None:
    before = _disconnects_logged(llm_server)
    async with contextlib.aclosing(llm_client.stream_chat(
            QUESTION, max_tokens=200, temperature=0.0, deadline_s=ANSWER_DEADLINE_S)) as deltas:
        async for _ in deltas:
            break
    # The server notices the closed connection and stops generating (it logs the disconnect).
    for _ in range(50):
        if _disconnects_logged(llm_server) > before:
            break
        await asyncio.sleep(0.1)
    assert _disconnects_logged(llm_server) > before
    answer = await llm_client.complete_chat(QUESTION, max_tokens=6, temperature=0.0, deadline_s=ANSWER_DEADLINE_S)
    assert answer


async def test_cancelling_the_task_closes_the_stream(llm_server: ServiceProcess, llm_client: LlmClient) -> None:
    first_delta = asyncio.Event()

    async def consume() -> None:
        async for _ in llm_client.stream_chat(QUESTION, max_tokens=200, temperature=0.0, deadline_s=ANSWER_DEADLINE_S):
            first_delta.set()

    before = _disconnects_logged(llm_server)
    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_delta.wait(), ANSWER_DEADLINE_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(50):
        if _disconnects_logged(llm_server) > before:
            break
        await asyncio.sleep(0.1)
    assert _disconnects_logged(llm_server) > before
    assert await llm_client.complete_chat(QUESTION, max_tokens=4, temperature=0.0, deadline_s=ANSWER_DEADLINE_S)


async def test_prompt_longer_than_the_context_is_a_context_overflow(
    llm_server: ServiceProcess, llm_client: LlmClient
) -> None:
    words = llm_server.settings.llm.context_tokens * 2  # "word " is at least one token each
    too_long = [{"role": "user", "content": "word " * words}]
    started = time.perf_counter()
    with pytest.raises(LlmFailure) as failure:
        await llm_client.complete_chat(too_long, max_tokens=4, temperature=0.0, deadline_s=ANSWER_DEADLINE_S)
    assert failure.value.kind == "context_overflow"
    assert f"context window of {llm_server.settings.llm.context_tokens} tokens" in str(failure.value)
    assert "llm.context_tokens" in str(failure.value)
    assert "word word" not in str(failure.value)  # never the caller's text
    assert time.perf_counter() - started < 10.0
    # The server is still serving afterwards.
    assert await llm_client.complete_chat(QUESTION, max_tokens=4, temperature=0.0, deadline_s=ANSWER_DEADLINE_S)


async def test_concurrent_answers_queue_instead_of_cutting_each_other_off(llm_client: LlmClient) -> None:
    # llama-cpp-python's default (--interrupt_requests true) would end the first answer when the second
    # request arrives; the launch profile turns that off, so both callers get a finished answer.
    first, second = await asyncio.gather(*(
        llm_client.complete_chat(QUESTION, max_tokens=8, temperature=0.0, deadline_s=ANSWER_DEADLINE_S)
        for _ in range(2)
    ))
    assert first and second


# -- structured output, priorities, tiers ---------------------------------------------------------

async def test_structured_output_from_llama_cpp_matches_the_schema(llm_client: LlmClient) -> None:
    # The base model left to itself writes prose; the grammar built from the schema makes it a valid call.
    messages = [{"role": "user", "content": "Caller: I lost my card. Decide the route as JSON."}]
    decision = await llm_client.complete_json(messages, ROUTE_SCHEMA, max_tokens=40, deadline_s=ANSWER_DEADLINE_S)
    assert set(decision) == {"route", "confidence"}
    assert decision["route"] in ("faq", "flow", "llm", "human")
    assert 0 <= decision["confidence"] <= 1


async def test_structured_output_cut_off_is_invalid_output(llm_client: LlmClient) -> None:
    with pytest.raises(LlmFailure) as failure:
        await llm_client.complete_json([{"role": "user", "content": "Route as JSON."}], ROUTE_SCHEMA,
                                       max_tokens=2, deadline_s=ANSWER_DEADLINE_S)
    assert failure.value.kind == "invalid_output"
    assert "raise max_tokens" in str(failure.value)


async def test_a_bad_schema_is_refused_before_any_request() -> None:
    async with LlmClient(f"http://127.0.0.1:{free_port()}/v1", "gemma3-270m-q4km") as client:
        with pytest.raises(Exception, match="is not valid under any of the given schemas|is not of type"):
            await client.complete_json(QUESTION, {"type": "objekt"}, max_tokens=4, deadline_s=1.0)


def test_each_server_gets_its_own_request_dialect() -> None:
    llama = LlmClient("http://127.0.0.1:1/v1", "m", server="llama_cpp")._request(
        QUESTION, 8, 0.0, None, "background", ROUTE_SCHEMA)
    vllm = LlmClient("http://127.0.0.1:1/v1", "m", server="vllm")._request(
        QUESTION, 8, 0.0, None, "background", ROUTE_SCHEMA)
    # llama-cpp-python takes the schema inside "json_object" and has no priorities.
    assert llama["extra_body"] == {"response_format": {"type": "json_object", "schema": ROUTE_SCHEMA}}
    assert vllm["extra_body"]["priority"] == 10
    assert vllm["extra_body"]["response_format"]["json_schema"]["schema"] == ROUTE_SCHEMA
    turn = LlmClient("http://127.0.0.1:1/v1", "m", server="vllm")._request(QUESTION, 8, 0.0, None, "turn", None)
    assert turn["extra_body"] == {"priority": 0}
    with pytest.raises(ValueError, match="unknown request priority"):
        LlmClient("http://127.0.0.1:1/v1", "m")._request(QUESTION, 8, 0.0, None, "urgent", None)


async def test_background_priority_is_accepted_by_llama_cpp(llm_client: LlmClient) -> None:
    assert await llm_client.complete_chat(QUESTION, max_tokens=4, temperature=0.0, deadline_s=ANSWER_DEADLINE_S,
                                          priority="background")


def test_tiers_are_named_endpoints_each_started_as_its_own_service(tmp_path: Path) -> None:
    from services.appliance.supervisor import Supervisor, service_entries

    config = tmp_path / "tiers.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path), "llm": {
        "tier": "fast", "tiers": {"large": {"server": "vllm", "model": "mistral-7b-instruct", "port": 8471}}}}))
    settings = load_settings(config)
    assert list(settings.llm.endpoints()) == ["fast", "large"]
    assert settings.llm.endpoint("large").base_url == "http://127.0.0.1:8471/v1"
    entries = {entry.name: entry for entry in service_entries(settings)}
    assert entries["llm"].port == entries["llm"].metrics_port == settings.llm.port  # metrics at /metrics
    assert entries["llm-large"].port == 8471
    argv = Supervisor(settings, config)._service_argv("llm-large")
    assert argv[-2:] == ["--tier", "large"] and argv[2] == "services.llm"
    with pytest.raises(ConfigError, match="LLM tier 'huge' is not configured: use one of fast, large"):
        settings.llm.endpoint("huge")
    config.write_text(yaml.safe_dump({"llm": {"tiers": {"large": {"port": 8461}}}}))
    with pytest.raises(ConfigError, match="both use port 8461: give each tier its own port"):
        load_settings(config)


# -- servers that misbehave -------------------------------------------------------------------------
# llama.cpp cannot be made to send broken JSON or to drop a connection on cue, so these tests talk to
# a raw TCP peer that does exactly that (fault injection, not a stand-in for a working server).

class MisbehavingPeer:
    """A loopback TCP listener that answers every connection with `reply` bytes (or closes it at once)."""

    def __init__(self, reply: bytes = b"") -> None:
        self.reply = reply
        self.connections = 0
        self.server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> str:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            if self.reply:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(self.reply)
                await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(answer, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()


def _event_stream(*events: str) -> bytes:
    body = "".join(f"data: {event}\n\n" for event in events).encode()
    return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n" + body)


async def test_connection_dropped_before_the_stream_is_retried_a_bounded_number_of_times() -> None:
    peer = MisbehavingPeer()
    started = time.perf_counter()
    async with peer as base_url, LlmClient(base_url, "gemma3-270m-q4km") as client:
        with pytest.raises(LlmFailure) as failure:
            await client.complete_chat(QUESTION, max_tokens=4, temperature=0.0, deadline_s=ANSWER_DEADLINE_S)
    assert failure.value.kind == "unavailable"
    assert peer.connections == 3  # CONNECT_ATTEMPTS, then the typed failure
    assert time.perf_counter() - started < 3.0


async def test_malformed_json_in_the_stream_is_a_bad_response_and_not_retried() -> None:
    peer = MisbehavingPeer(_event_stream('{"id": "x", "choices": [{"delta": {"content": "Hel'))
    async with peer as base_url, LlmClient(base_url, "gemma3-270m-q4km") as client:
        with pytest.raises(LlmFailure) as failure:
            await client.complete_chat(QUESTION, max_tokens=4, temperature=0.0, deadline_s=ANSWER_DEADLINE_S)
    assert failure.value.kind == "bad_response"
    assert "not OpenAI-compatible JSON" in str(failure.value)
    assert peer.connections == 1


async def test_stream_that_stops_mid_answer_is_a_typed_failure_after_what_was_said() -> None:
    chunk = json.dumps({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                        "choices": [{"index": 0, "delta": {"content": "The branch"}, "finish_reason": None}]})
    peer = MisbehavingPeer(_event_stream(chunk))  # then the connection closes: no finish reason, no [DONE]
    received = []
    async with peer as base_url, LlmClient(base_url, "gemma3-270m-q4km") as client:
        with pytest.raises(LlmFailure) as failure:
            async for text in client.stream_chat(QUESTION, max_tokens=4, temperature=0.0, deadline_s=ANSWER_DEADLINE_S):
                received.append(text)
    assert received == ["The branch"]
    assert failure.value.kind == "bad_response"
    assert "without a finish reason" in str(failure.value)
    assert peer.connections == 1  # a started answer is never repeated
