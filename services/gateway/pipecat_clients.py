"""Pipecat services that are gRPC clients of QuietLine's asr, dialog and tts services.

They are the per-call pipeline's only links to the rest of the appliance: each one turns Pipecat
frames into calls on our contracts and the replies back into frames, and stamps the call's timeline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

import grpc
from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    InterimTranscriptionFrame,
    StartFrame,
    TranscriptionFrame,
    TTSSpeakFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.settings import STTSettings, TTSSettings
from pipecat.services.stt_service import STTService
from pipecat.services.tts_service import TTSService
from pipecat.utils.time import time_now_iso8601

from quietline.v1 import asr_pb2, asr_pb2_grpc, common_pb2, dialog_pb2, dialog_pb2_grpc, tts_pb2, tts_pb2_grpc
from services.gateway.call_timeline import CallTimeline

_END_OF_AUDIO = object()


class QuietLineSTTService(STTService):
    """Streams the caller's audio to the `asr` service and turns its finals into TranscriptionFrames.

    One Recognize stream lives for the whole call. When the VAD decides the caller stopped, the
    service asks asr to flush, so the final arrives without waiting for more audio.
    """

    def __init__(self, *, channel: grpc.aio.Channel, timeline: CallTimeline, language: str = "en",
                 call_deadline_s: float = 3600.0, **kwargs):
        # Model and language are the asr service's business, not this client's.
        super().__init__(settings=STTSettings(model=None, language=None), ttfs_p99_latency=1.0, **kwargs)
        self._stub = asr_pb2_grpc.AsrStub(channel)
        self._timeline = timeline
        self._language = language
        self._call_deadline_s = call_deadline_s
        self._requests: asyncio.Queue = asyncio.Queue()
        self._call: grpc.aio.StreamStreamCall | None = None
        self._reader: asyncio.Task | None = None

    def can_generate_metrics(self) -> bool:
        return True

    async def start(self, frame: StartFrame):
        await super().start(frame)
        config = asr_pb2.RecognitionConfig(
            call=common_pb2.CallRef(call_id=self._timeline.call_id),
            format=common_pb2.AudioFormat(encoding=common_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=self.sample_rate),
            language=self._language,
            mode=asr_pb2.RECOGNITION_MODE_GENERAL,
            interim_results=True,
        )
        await self._requests.put(asr_pb2.RecognizeRequest(config=config))
        self._call = self._stub.Recognize(self._request_stream(), timeout=self._call_deadline_s)
        self._reader = self.create_task(self._read_hypotheses(), name="asr_reader")

    async def _request_stream(self):
        while True:
            request = await self._requests.get()
            if request is _END_OF_AUDIO:
                return
            yield request

    async def _read_hypotheses(self) -> None:
        try:
            async for response in self._call:
                if not response.HasField("hypothesis"):
                    continue
                hypothesis = response.hypothesis
                text = (hypothesis.stable_text + " " + hypothesis.unstable_text).strip()
                if hypothesis.is_final:
                    turn = self._timeline.transcript_final(text)
                    if turn is not None:
                        await self.push_frame(TranscriptionFrame(
                            text, self._user_id, time_now_iso8601(), language=None, finalized=True
                        ))
                elif text:
                    await self.push_frame(InterimTranscriptionFrame(text, self._user_id, time_now_iso8601()))
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                self._timeline.awaiting_transcript = False
                await self.push_error(f"asr failed: {err.code().name}: {err.details()}")

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        await self._requests.put(asr_pb2.RecognizeRequest(audio=audio))
        yield None

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, VADUserStartedSpeakingFrame):
            self._timeline.caller_started()
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._timeline.caller_stopped(frame.stop_secs)
            flush = asr_pb2.RecognitionControl(action=asr_pb2.RecognitionControl.ACTION_FLUSH)
            await self._requests.put(asr_pb2.RecognizeRequest(control=flush))

    async def _close_stream(self) -> None:
        await self._requests.put(_END_OF_AUDIO)
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            await self.cancel_task(self._reader)
            self._reader = None

    async def stop(self, frame: EndFrame):
        await super().stop(frame)
        await self._close_stream()

    async def cancel(self, frame: CancelFrame):
        await super().cancel(frame)
        await self._close_stream()


class QuietLineDialogProcessor(FrameProcessor):
    """Sends each final transcript to the `dialog` service and speaks its answer sentence by sentence.

    Every `say` event becomes a TTSSpeakFrame at once, so synthesis of the first sentence starts while
    the router is still producing the next.
    """

    def __init__(self, *, channel: grpc.aio.Channel, timeline: CallTimeline, language: str = "en",
                 turn_deadline_s: float = 30.0, **kwargs):
        super().__init__(**kwargs)
        self._stub = dialog_pb2_grpc.DialogStub(channel)
        self._timeline = timeline
        self._language = language
        self._turn_deadline_s = turn_deadline_s
        self._turn_task: asyncio.Task | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame) and direction == FrameDirection.DOWNSTREAM:
            turn = self._timeline.turns[-1] if self._timeline.turns else None
            if turn is not None and turn.dialog_done is None:
                # Turns are answered one at a time; the gateway issue adds barge-in.
                if self._turn_task is not None:
                    await self._turn_task
                self._turn_task = self.create_task(self._answer(turn, len(self._timeline.turns)), name="dialog_turn")
            return
        if isinstance(frame, (EndFrame, CancelFrame)) and self._turn_task is not None:
            await self.cancel_task(self._turn_task)
            self._turn_task = None
        await self.push_frame(frame, direction)

    async def _answer(self, turn, number: int) -> None:
        request = dialog_pb2.TurnRequest(
            call=common_pb2.CallRef(call_id=self._timeline.call_id, turn=number),
            transcript=turn.caller_text,
            context=dialog_pb2.CallContext(language=self._language),
        )
        try:
            async for event in self._stub.Turn(request, timeout=self._turn_deadline_s):
                kind = event.WhichOneof("event")
                if kind == "route":
                    turn.route, turn.route_reason = event.route.route, event.route.reason
                elif kind == "say":
                    if turn.dialog_first_say is None:
                        turn.dialog_first_say = time.perf_counter()
                    turn.bot_sentences.append(event.say.text)
                    for citation in event.say.citations:
                        entry = {"document_id": citation.document_id, "title": citation.title}
                        if entry not in turn.citations:
                            turn.citations.append(entry)
                    await self.push_frame(TTSSpeakFrame(event.say.text))
                elif kind == "action":
                    action = event.action
                    turn.actions.append({
                        "kind": dialog_pb2.Action.Kind.Name(action.kind).removeprefix("KIND_").lower(),
                        "target": action.target,
                    })
                self._timeline.touch()
        except grpc.aio.AioRpcError as err:
            turn.error = f"dialog failed: {err.code().name}: {err.details()}"
            logger.error(f"call {self._timeline.call_id} turn {number}: {turn.error}")
        finally:
            turn.dialog_done = time.perf_counter()
            self._timeline.touch()


class QuietLineTTSService(TTSService):
    """Synthesises each sentence with the `tts` service, as PCM16 at the pipeline's rate."""

    def __init__(self, *, channel: grpc.aio.Channel, call_id: str, voice: str = "", chunk_ms: int = 20,
                 sentence_deadline_s: float = 30.0, **kwargs):
        # Piper returns a sentence's audio once the sentence is synthesised; on a busy CPU that can take
        # seconds, so Pipecat must not declare the sentence silent after its default 3 s.
        super().__init__(push_start_frame=True, push_stop_frames=True, stop_frame_timeout_s=sentence_deadline_s,
                         settings=TTSSettings(model=None, voice=voice or None, language=None), **kwargs)
        self._stub = tts_pb2_grpc.TtsStub(channel)
        self._call_id = call_id
        self._voice = voice
        self._chunk_ms = chunk_ms
        self._sentence_deadline_s = sentence_deadline_s

    def can_generate_metrics(self) -> bool:
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        request = tts_pb2.SynthesizeRequest(
            call=common_pb2.CallRef(call_id=self._call_id),
            text=text,
            voice=self._voice,
            format=common_pb2.AudioFormat(encoding=common_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=self.sample_rate),
            chunk_ms=self._chunk_ms,
        )

        async def audio_chunks():
            async for reply in self._stub.Synthesize(request, timeout=self._sentence_deadline_s):
                yield reply.audio

        try:
            await self.start_tts_usage_metrics(text)
            async for frame in self._stream_audio_frames_from_iterator(
                audio_chunks(), in_sample_rate=self.sample_rate, context_id=context_id
            ):
                await self.stop_ttfb_metrics()
                yield frame
        except grpc.aio.AioRpcError as err:
            yield ErrorFrame(error=f"tts failed: {err.code().name}: {err.details()}")
        finally:
            await self.stop_ttfb_metrics()
