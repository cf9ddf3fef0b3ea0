"""A Pipecat transport that plays a caller recording in and records the bot's audio out.

It stands where the SIP/RTP transport will stand: the input side paces 20 ms audio frames in real
time, as RTP would deliver them, and keeps sending silence after the recording ends (a caller waiting
on the line) until the call is finished; the output side collects the bot's audio and stamps when
each turn's first and last audio frame leave, which is what the turn latencies are measured against.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from pipecat.frames.frames import InputAudioRawFrame, OutputAudioRawFrame, StartFrame
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams

from services.gateway.call_timeline import CallTimeline

FRAME_MS = 20


class RecordingInputTransport(BaseInputTransport):
    """Feeds a recording (mono float32 at the pipeline rate) as real-time 20 ms frames."""

    def __init__(self, samples: np.ndarray, timeline: CallTimeline, params: TransportParams, realtime: bool = True):
        super().__init__(params)
        self._pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        self._timeline = timeline
        self._realtime = realtime
        self._feed_task: asyncio.Task | None = None

    async def start(self, frame: StartFrame):
        await super().start(frame)
        await self.set_transport_ready(frame)
        self._feed_task = self.create_task(self._feed(), name="recording_feed")

    async def stop(self, frame):
        await self._cancel_feed()
        await super().stop(frame)

    async def cancel(self, frame):
        await self._cancel_feed()
        await super().cancel(frame)

    async def _cancel_feed(self) -> None:
        if self._feed_task:
            await self.cancel_task(self._feed_task)
            self._feed_task = None

    async def _feed(self) -> None:
        rate = self.sample_rate
        frame_bytes = rate * FRAME_MS // 1000 * 2
        silence = bytes(frame_bytes)
        started = time.perf_counter()
        sent = 0
        offset = 0
        while not self._timeline.call_over.is_set():
            if offset < len(self._pcm):
                chunk = self._pcm[offset:offset + frame_bytes].ljust(frame_bytes, b"\0")
                offset += frame_bytes
                if offset >= len(self._pcm):
                    self._timeline.recording_played.set()
                    self._timeline.touch()
            else:
                chunk = silence
            await self.push_audio_frame(InputAudioRawFrame(audio=chunk, sample_rate=rate, num_channels=1))
            sent += 1
            # Absolute schedule, so processing time does not stretch the caller's audio.
            delay = started + sent * FRAME_MS / 1000 - time.perf_counter() if self._realtime else 0
            await asyncio.sleep(max(delay, 0))


class ReplyRecorderOutputTransport(BaseOutputTransport):
    """Collects the bot's audio and stamps each turn's first and last audio frame."""

    def __init__(self, timeline: CallTimeline, params: TransportParams):
        super().__init__(params)
        self._timeline = timeline
        self.audio = bytearray()

    async def start(self, frame: StartFrame):
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        # The output adds silence between utterances; only frames with sound mark the bot speaking.
        if any(frame.audio):
            self._timeline.bot_audio_written()
        self.audio.extend(frame.audio)
        return True


class RecordingTransport(BaseTransport):
    """The file-based stand-in for the RTP transport: one recording in, one reply recording out."""

    def __init__(self, samples: np.ndarray, sample_rate_hz: int, timeline: CallTimeline, realtime: bool = True):
        super().__init__()
        params = TransportParams(
            audio_in_enabled=True,
            audio_in_sample_rate=sample_rate_hz,
            audio_out_enabled=True,
            audio_out_sample_rate=sample_rate_hz,
            audio_out_end_silence_secs=0,
        )
        self._input = RecordingInputTransport(samples, timeline, params, realtime=realtime)
        self._output = ReplyRecorderOutputTransport(timeline, params)

    def input(self) -> RecordingInputTransport:
        return self._input

    def output(self) -> ReplyRecorderOutputTransport:
        return self._output
