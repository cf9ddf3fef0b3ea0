"""llama.cpp's Prometheus metrics at GET /metrics of the llm server (services.llm.llama_cpp_server).

The real server runs the real Gemma 3 270M GGUF with the arguments the cpu profile's launcher gives
it; the metrics are scraped over HTTP and parsed as Prometheus would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from llama_cpp.server.settings import Settings as LlamaServerSettings
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO_ROOT
from models import resolve_model
from services.kit.config import load_settings
from services.kit.offline import OFFLINE_ENVIRONMENT
from services.llm.launch_profiles import llama_cpp_command, llama_cpp_environment

STARTUP_TIMEOUT_S = 120.0
PROMPT_TOKENS = "llamacpp:prompt_tokens_total"
PROMPT_SECONDS = "llamacpp:prompt_seconds_total"
PREDICTED_TOKENS = "llamacpp:tokens_predicted_total"
PREDICTED_SECONDS = "llamacpp:tokens_predicted_seconds_total"
PROCESSING = "llamacpp:requests_processing"
DEFERRED = "llamacpp:requests_deferred"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MetricsServer:
    """The server started with the argv and environment the launcher gives it, on a free port."""

    def __init__(self, log_path: Path) -> None:
        settings = load_settings(profile="cpu")
        self.endpoint = settings.llm.endpoint().model_copy(update={"port": _free_port()})
        model_path = resolve_model(self.endpoint.model, settings.state_dir).path
        argv = llama_cpp_command(settings, self.endpoint, model_path)
        assert argv[1:3] == ["-m", "services.llm.llama_cpp_server"]
        environment = llama_cpp_environment({**os.environ, **OFFLINE_ENVIRONMENT}, LlamaServerSettings.model_fields)
        self.url = f"http://{self.endpoint.host}:{self.endpoint.port}"
        self.log_path = log_path
        self.process = subprocess.Popen(
            argv, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, env=environment, cwd=REPO_ROOT,
            start_new_session=True,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {STARTUP_TIMEOUT_S} s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def scrape(self) -> dict[str, float]:
        """Every sample of GET /metrics by sample name, parsed with Prometheus' own text parser."""
        response = httpx.get(f"{self.url}/metrics", timeout=10)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return {
            sample.name: sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }

    def chat_body(self, question: str, **extra) -> dict:
        return {
            "model": self.endpoint.model,
            "messages": [{"role": "user", "content": question}],
            "temperature": 0,
            **extra,
        }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    started = MetricsServer(tmp_path_factory.mktemp("llm-metrics") / "server.log")
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


def test_a_completion_adds_llama_cpp_counts_to_the_counters(server: MetricsServer) -> None:
    question = "Which river flows through the old town of Heidelberg?"
    before = server.scrape()
    assert set(before) >= {PROMPT_TOKENS, PROMPT_SECONDS, PREDICTED_TOKENS, PREDICTED_SECONDS, PROCESSING, DEFERRED}

    response = httpx.post(
        f"{server.url}/v1/chat/completions", json=server.chat_body(question, max_tokens=8), timeout=60
    )
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    after = server.scrape()

    prompt_tokens = after[PROMPT_TOKENS] - before[PROMPT_TOKENS]
    predicted_tokens = after[PREDICTED_TOKENS] - before[PREDICTED_TOKENS]
    # The chat template adds tokens around the question, and every word is at least one token.
    assert len(question.split()) <= prompt_tokens <= usage["prompt_tokens"]
    # llama.cpp counts single-token decodes: the sampled tokens fed back, not the last one sampled.
    assert 1 <= predicted_tokens <= min(8, usage["completion_tokens"])
    assert after[PROMPT_SECONDS] - before[PROMPT_SECONDS] > 0
    assert after[PREDICTED_SECONDS] - before[PREDICTED_SECONDS] > 0
    assert after[PROCESSING] == 0
    assert after[DEFERRED] == 0


def _stream(server: MetricsServer, question: str, results: list[str]) -> None:
    # min_tokens = max_tokens: each answer keeps the model long enough for the other to queue behind it.
    body = server.chat_body(question, max_tokens=64, min_tokens=64, stream=True)
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    results.append(f"{response.status_code} {lines[-1] if lines else 'no data'}")


def test_a_second_request_is_deferred_while_the_first_holds_the_model(server: MetricsServer) -> None:
    results: list[str] = []
    streams = [
        threading.Thread(target=_stream, args=(server, question, results))
        for question in ("Tell me about the history of Rome.", "Tell me about the history of Athens.")
    ]
    for stream in streams:
        stream.start()
    seen: list[tuple[float, float]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(stream.is_alive() for stream in streams):
        metrics = server.scrape()
        seen.append((metrics[PROCESSING], metrics[DEFERRED]))
        if seen[-1] == (1, 1):
            break
        time.sleep(0.05)
    for stream in streams:
        stream.join(timeout=120)

    assert (1, 1) in seen, f"never saw one request processing and one deferred; (processing, deferred) seen: {seen}"
    assert results == ["200 data: [DONE]", "200 data: [DONE]"]
    # The stream's publisher gives the model back just after it sends [DONE].
    deadline = time.monotonic() + 5
    while True:
        metrics = server.scrape()
        if (metrics[PROCESSING], metrics[DEFERRED]) == (0, 0) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert (metrics[PROCESSING], metrics[DEFERRED]) == (0, 0)
