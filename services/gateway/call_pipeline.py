"""The per-call Pipecat pipeline: caller audio -> VAD -> asr -> dialog -> tts -> caller.

`quietline call` runs it with the recording transport; the SIP gateway will run the same pipeline
with an RTP transport. Only the transport differs.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.workers.runner import WorkerRunner

from services.gateway.call_timeline import CallTimeline
from services.gateway.pipecat_clients import QuietLineDialogProcessor, QuietLineSTTService, QuietLineTTSService
from services.gateway.recording_transport import RecordingTransport
from services.kit.channels import open_channel
from services.kit.config import QuietLineSettings

# After the recording ends and the last answer was spoken, the caller "hangs up" after this much quiet.
HANG_UP_AFTER_IDLE_S = 1.5


@dataclass
class CallResult:
    call_id: str
    turns: list[dict]
    reply_audio: np.ndarray
    sample_rate_hz: int


class CallTimeoutError(Exception):
    """The call did not finish in time; the message says which stage was still busy."""


def build_call_pipeline(settings: QuietLineSettings, transport, timeline: CallTimeline, channels: dict) -> Pipeline:
    """The processors of one call, in order, as the gateway will run them per SIP call."""
    rate = settings.gateway.pipeline_sample_rate_hz
    vad = SileroVADAnalyzer(sample_rate=rate, params=VADParams(stop_secs=settings.gateway.vad_stop_s))
    return Pipeline([
        transport.input(),
        VADProcessor(vad_analyzer=vad),
        QuietLineSTTService(channel=channels["asr"], timeline=timeline, language=settings.asr.language or "en"),
        QuietLineDialogProcessor(channel=channels["dialog"], timeline=timeline,
                                 turn_deadline_s=settings.default_rpc_deadline_s),
        QuietLineTTSService(channel=channels["tts"], call_id=timeline.call_id, sample_rate=rate),
        transport.output(),
    ])


async def run_recorded_call(settings: QuietLineSettings, caller_audio: np.ndarray, *,
                            max_call_s: float = 180.0, realtime: bool = True) -> CallResult:
    """Place one call with a recording as the caller; returns the turns and the bot's reply audio.

    `caller_audio` is mono float32 at the pipeline rate (see services.kit.audio.read_recording).
    """
    rate = settings.gateway.pipeline_sample_rate_hz
    timeline = CallTimeline(call_id=f"cli-{uuid.uuid4().hex[:12]}")
    deadline_s = settings.default_rpc_deadline_s
    channels = {
        "asr": open_channel(settings.asr.endpoint.target, deadline_s),
        "dialog": open_channel(settings.dialog.endpoint.target, deadline_s),
        "tts": open_channel(settings.tts.endpoint.target, deadline_s),
    }
    transport = RecordingTransport(caller_audio, rate, timeline, realtime=realtime)
    pipeline = build_call_pipeline(settings, transport, timeline, channels)
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=rate, audio_out_sample_rate=rate),
        idle_timeout_secs=None,
        enable_rtvi=False,
    )
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    runner_task = asyncio.create_task(runner.run())
    try:
        await _wait_until_call_is_over(timeline, max_call_s)
    finally:
        timeline.call_over.set()
        await worker.stop_when_done()
        try:
            await asyncio.wait_for(runner_task, timeout=15)
        except asyncio.TimeoutError:
            await worker.cancel(reason="call did not end cleanly")
        for channel in channels.values():
            await channel.close()
    audio = np.frombuffer(bytes(transport.output().audio), dtype="<i2").astype(np.float32) / 32768.0
    return CallResult(call_id=timeline.call_id, turns=timeline.summary(), reply_audio=audio, sample_rate_hz=rate)


async def _wait_until_call_is_over(timeline: CallTimeline, max_call_s: float) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + max_call_s
    while True:
        if timeline.recording_played.is_set() and not timeline.busy() and timeline.idle_for() > HANG_UP_AFTER_IDLE_S:
            return
        if loop.time() > give_up:
            stage = "waiting for the transcript" if timeline.awaiting_transcript else "answering"
            raise CallTimeoutError(f"the call did not finish within {max_call_s:.0f} s ({stage}): "
                                   "check `quietline status` and the service logs")
        await asyncio.sleep(0.05)


def write_reply(result: CallResult, path: Path) -> Path:
    from services.kit.audio import write_wav

    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, result.reply_audio, result.sample_rate_hz)
    return path
