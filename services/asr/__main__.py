"""The asr service: `python -m services.asr [--profile P] [--config FILE]`.

Loads the configured faster-whisper models once (verified through the model registry): `asr.model`
and, when set, `asr.multilingual_model` for other languages; runs one warm-up decode on each, then
serves quietline.v1.Asr; health turns SERVING only after that.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

import grpc

from models import ModelError
from quietline.v1 import asr_pb2, asr_pb2_grpc
from services.asr.languages import RecognizerSet
from services.asr.servicer import AsrServicer
from services.kit.config import ConfigError, QuietLineSettings
from services.kit.server import ServiceSpec, run_service

log = logging.getLogger("quietline.asr")


async def setup(server: grpc.aio.Server, settings: QuietLineSettings) -> list[str]:
    """Load the speech recognition models, warm them up and register the Asr servicer."""
    started = time.perf_counter()
    try:
        recognizers = await asyncio.to_thread(RecognizerSet.load, settings.asr, settings.state_dir)
    except ModelError as err:
        raise ConfigError(f"asr.model / asr.multilingual_model: {err}") from None
    except (RuntimeError, ValueError) as err:  # ctranslate2: no CUDA, unsupported compute type, ...
        raise ConfigError(
            f"asr: model {settings.asr.model} cannot run with device={settings.asr.device} "
            f"compute_type={settings.asr.compute_type} ({err}): set asr.device and asr.compute_type to what "
            "this machine supports (cpu + int8 always works)"
        ) from None
    loaded = time.perf_counter()
    await asyncio.to_thread(recognizers.warm_up)
    log.info("model ready", extra={
        "model": settings.asr.model, "multilingual_model": settings.asr.multilingual_model or "-",
        "device": settings.asr.device, "compute_type": settings.asr.compute_type,
        "load_s": round(loaded - started, 3), "warm_up_s": round(time.perf_counter() - loaded, 3),
    })
    asr_pb2_grpc.add_AsrServicer_to_server(AsrServicer(recognizers, settings.asr), server)
    return [asr_pb2.DESCRIPTOR.services_by_name["Asr"].full_name]


SPEC = ServiceSpec(name="asr", endpoint=lambda settings: settings.asr.endpoint, setup=setup)

if __name__ == "__main__":
    sys.exit(run_service(SPEC))
