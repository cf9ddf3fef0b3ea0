"""llama-cpp-python's OpenAI-compatible server, plus llama.cpp's metrics for Prometheus at GET /metrics.

`python -m services.llm.llama_cpp_server <the arguments of python -m llama_cpp.server>`

Why this module exists: llama-cpp-python's server has no /metrics endpoint, while vLLM (the gpu profile)
serves its own on its port. This entry point builds the very same server (llama-cpp-python's argument
parsing and create_app) and adds GET /metrics, with the metric names of llama.cpp's C++ server
(`llama-server --metrics`) so that dashboards made for it work. No config file, no HOST/PORT/CONFIG_FILE
environment overrides (the launcher strips them), no uvicorn access log (request lines), one process.
"""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Iterator

import llama_cpp.llama_cpp as llama_bindings
import uvicorn
from fastapi import FastAPI, Response
from llama_cpp.server import app as server_app
from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# (name, help) in the order of _read_perf's values; names and help texts are llama-server's.
COUNTERS = (
    ("llamacpp:prompt_tokens", "Number of prompt tokens processed."),
    ("llamacpp:prompt_seconds", "Prompt process time"),
    ("llamacpp:tokens_predicted", "Number of generation tokens processed."),
    ("llamacpp:tokens_predicted_seconds", "Predict process time"),
)


def _read_perf(ctx: llama_bindings.llama_context_p) -> tuple[float, float, float, float]:
    """(prompt tokens, prompt seconds, predicted tokens, predicted seconds) of a llama.cpp context so far.

    llama.cpp counts a decode of several tokens as prompt and a decode of one token as generation; it
    reports max(1, n) as the token counts (its own printout divides by them), so a count with no time
    behind it is really 0.
    """
    perf = llama_bindings.llama_perf_context(ctx)
    prompt_tokens = perf.n_p_eval if perf.t_p_eval_ms > 0 else 0
    predicted_tokens = perf.n_eval if perf.t_eval_ms > 0 else 0
    return prompt_tokens, perf.t_p_eval_ms / 1000, predicted_tokens, perf.t_eval_ms / 1000


class LlamaCppCollector:
    """Prometheus collector of llama.cpp's own counters for the model the server has loaded.

    Counters: llama.cpp's performance counters of the model's context (llama_perf_context), read at
    scrape time. llama-cpp-python resets them (llama_perf_context_reset) at the start of every
    completion and embedding when --verbose is true; `install` wraps that reset so the counts are first
    added to `_folded`, which keeps the totals monotonic and exact. The context itself is never
    replaced: this entry point's arguments name one model, so LlamaProxy never swaps it.

    Gauges: the state of the two locks with which llama-cpp-python serialises every request that uses
    the model (app.get_llama_proxy): requests_processing is 1 while one request holds the model,
    requests_deferred counts the requests queued on the locks. Those are mostly completions, but
    /v1/models, tokenize and embeddings take the same locks, so they are counted too while they wait.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # a reset (worker thread) vs. a scrape (event loop)
        self._folded = (0.0, 0.0, 0.0, 0.0)

    def install(self) -> None:
        """Make llama.cpp's counter reset fold the counts into the totals first (call once per process)."""
        reset = llama_bindings.llama_perf_context_reset

        def fold_then_reset(ctx: llama_bindings.llama_context_p) -> None:
            with self._lock:
                self._folded = tuple(a + b for a, b in zip(self._folded, _read_perf(ctx)))
                reset(ctx)

        # llama.py and _internals.py call it through this module's attribute at call time.
        llama_bindings.llama_perf_context_reset = fold_then_reset

    def collect(self) -> Iterator[Metric]:
        """The four llama.cpp counters and the two request gauges, as llama-server names them."""
        # A read-only peek at the loaded Llama (LlamaProxy has no public accessor that cannot load one).
        llama = getattr(server_app._llama_proxy, "_current_model", None)
        ctx = llama.ctx if llama is not None else None
        with self._lock:
            current = _read_perf(ctx) if ctx else (0.0, 0.0, 0.0, 0.0)
            totals = [a + b for a, b in zip(self._folded, current)]
        for (name, documentation), value in zip(COUNTERS, totals):
            yield CounterMetricFamily(name, documentation, value=value)
        processing, deferred = model_queue()
        yield GaugeMetricFamily("llamacpp:requests_processing", "Number of requests processing.", value=processing)
        yield GaugeMetricFamily("llamacpp:requests_deferred", "Number of requests deferred.", value=deferred)


def model_queue() -> tuple[int, int]:
    """(requests holding the model, requests waiting for it), from app.get_llama_proxy's two locks.

    A request takes the outer lock, waits on the inner one (held by the request using the model), then
    drops the outer one: so one waiter can sit on the inner lock and the rest on the outer lock.
    Must run on the server's event loop (anyio locks are not thread-safe).
    """
    inner = server_app.llama_inner_lock.statistics()
    outer = server_app.llama_outer_lock.statistics()
    return int(inner.locked), inner.tasks_waiting + outer.tasks_waiting


def add_metrics_route(app: FastAPI, registry: CollectorRegistry) -> None:
    """Serve `registry` in Prometheus' text format at GET /metrics, without llama-cpp-python's API key."""

    # async: the gauges read anyio locks, which belong to the event loop's thread.
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)


def main(argv: list[str] | None = None) -> None:
    """Parse llama_cpp.server's arguments, build its app with /metrics, and serve it in this process."""
    parser = argparse.ArgumentParser(prog="llama_cpp_server", description=__doc__.splitlines()[0])
    add_args_from_model(parser, Settings)
    args = parser.parse_args(argv)
    try:
        server_settings = parse_model_from_args(ServerSettings, args)
        model_settings = parse_model_from_args(ModelSettings, args)
    except ValueError as err:  # pydantic's ValidationError, e.g. no --model
        parser.error(str(err))
    # create_app would load its settings from this file instead of the arguments.
    os.environ.pop("CONFIG_FILE", None)
    collector = LlamaCppCollector()
    collector.install()  # before the model exists, so that no reset is missed
    app = server_app.create_app(server_settings=server_settings, model_settings=[model_settings])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    add_metrics_route(app, registry)
    uvicorn.run(
        app,
        host=server_settings.host,
        port=server_settings.port,
        ssl_keyfile=server_settings.ssl_keyfile,
        ssl_certfile=server_settings.ssl_certfile,
        access_log=False,  # request lines are caller activity; errors still reach the log
    )


if __name__ == "__main__":
    main()
