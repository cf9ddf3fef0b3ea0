"""The tts service process: `python -m services.tts [--profile P] [--config FILE]`.

Loads the Piper voice and synthesises the stock prompts once, then serves the Tts gRPC contract.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

import grpc
from prometheus_client import Gauge

from models import ModelError
from quietline.v1 import tts_pb2, tts_pb2_grpc
from services.kit.config import ConfigError, QuietLineSettings
from services.kit.server import ServiceSpec, run_service
from services.tts.prompt_cache import PromptCache
from services.tts.servicer import TtsServicer
from services.tts.synthesizer import Synthesizer


PROMPTS_AT_START = Gauge(
    "quietline_tts_prompts_at_start",
    "Stock prompts the cache held at start, by where their audio came from (loaded from disk or synthesised).",
    ["source"],
)


async def setup(server: grpc.aio.Server, settings: QuietLineSettings) -> list[str]:
    """Speech synthesis (Piper): load the voice, cache the stock prompts, serve quietline.v1.Tts."""
    log = logging.getLogger("quietline.tts")
    started = time.perf_counter()
    try:
        synthesizer = await asyncio.to_thread(
            Synthesizer.load, settings.tts.voice, settings.state_dir, settings.tts.cpu_threads,
            settings.tts.language_voices,
        )
    except ModelError as err:
        # A voice that is missing or corrupt is a deployment problem: stop with the registry's fix.
        raise ConfigError(f"tts.voice / tts.language_voices: {err}") from None
    loaded = time.perf_counter()
    prompt_cache = await asyncio.to_thread(
        PromptCache.build, synthesizer, settings.tts.cached_prompts,
        Path(settings.state_dir).expanduser() / "tts" / "prompts", settings.tts.prompt_cache_bytes,
    )
    PROMPTS_AT_START.labels("loaded").set(prompt_cache.counts.loaded)
    PROMPTS_AT_START.labels("synthesised").set(prompt_cache.counts.synthesised)
    log.info(
        "voice loaded",
        extra={"voice": synthesizer.default_voice, "load_s": round(loaded - started, 3),
               "cached_prompts": len(prompt_cache), "prompts_loaded": prompt_cache.counts.loaded,
               "prompts_synthesised": prompt_cache.counts.synthesised,
               "cache_s": round(time.perf_counter() - loaded, 3)},
    )
    tts_pb2_grpc.add_TtsServicer_to_server(TtsServicer(synthesizer, prompt_cache, settings.tts), server)
    return [tts_pb2.DESCRIPTOR.services_by_name["Tts"].full_name]


SPEC = ServiceSpec(name="tts", endpoint=lambda settings: settings.tts.endpoint, setup=setup)

if __name__ == "__main__":
    sys.exit(run_service(SPEC))
