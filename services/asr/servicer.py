"""The grpc.aio servicer of quietline.v1.Asr: one bidirectional Recognize stream per call leg.

Per stream, audio is decoded from the wire format and buffered at its own rate until a final; a
streaming Silero VAD emits SpeechEvents as audio arrives. With `interim_results`, the growing
utterance is re-decoded in a worker thread at most once per `asr.interim_interval_s` of new audio.
ACTION_FLUSH, the client's half-close, or an utterance longer than `asr.max_utterance_s` finalise
the pending audio: one VAD-filtered decode with word timings, sent as a final Hypothesis.

Decodes of all streams share `asr.max_concurrent_decodes` slots: a final waits for a slot, an
interim is skipped when none is free, so interims never delay a caller's final.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np

from quietline.v1 import asr_pb2, asr_pb2_grpc
from services.asr.recognizer import (
    SAMPLE_RATE_HZ,
    SPEECH_STARTED,
    DecodeOptions,
    RecognitionError,
    Recognizer,
    SpeechDetector,
    Transcript,
    stable_prefix_length,
)
from services.kit import audio
from services.kit.config import AsrSettings
from services.kit.metrics import ERRORS, STAGE_LATENCY

log = logging.getLogger("quietline.asr")

T = TypeVar("T")

# Audio is handed to the speech detector in blocks of this length (one ONNX call per block).
DETECTOR_BLOCK_S = 0.1
_MODE_NAMES = {
    asr_pb2.RECOGNITION_MODE_DIGITS: "digits",
    asr_pb2.RECOGNITION_MODE_ALPHANUMERIC: "alphanumeric",
    asr_pb2.RECOGNITION_MODE_YES_NO: "yes_no",
}


class DecodeSlots:
    """The process-wide limit on concurrent decodes (each runs in a worker thread).

    A slot is held until its thread finishes, even when the stream that asked is cancelled: the
    thread cannot be stopped, and letting another decode start beside it would oversubscribe the CPU.
    """

    def __init__(self, slots: int) -> None:
        self._semaphore = asyncio.Semaphore(slots)

    @property
    def busy(self) -> bool:
        return self._semaphore.locked()

    async def run(self, function: Callable[..., T], *args: Any, wait: bool = True) -> T | None:
        """Run `function(*args)` in a thread once a slot is free; with wait=False, None when none is."""
        if not wait and self._semaphore.locked():
            return None
        await self._semaphore.acquire()
        try:
            task = asyncio.ensure_future(asyncio.to_thread(function, *args))
        except BaseException:
            self._semaphore.release()
            raise
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Future) -> None:
        self._semaphore.release()
        if not task.cancelled():
            task.exception()  # retrieved here so an abandoned decode's error is not reported as unhandled


class StreamError(Exception):
    """Ends a stream with a gRPC status; the message names the problem and the fix."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Outgoing:
    response: asr_pb2.RecognizeResponse
    # For finals: when the flush or half-close that asked for it arrived (perf_counter).
    requested_at: float | None = None


_END = object()


def _samples_to_ms(samples: int, rate_hz: int) -> int:
    return samples * 1000 // rate_hz


def _decode_utterance(chunks: list[np.ndarray], rate_hz: int) -> np.ndarray:
    """Join buffered chunks and resample them to the model's rate (in one pass: no chunk seams)."""
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    return audio.resample(samples, rate_hz, SAMPLE_RATE_HZ)


class RecognitionStream:
    """The state of one Recognize call: buffered audio, speech detector, interim and final decodes."""

    def __init__(self, recognizer: Recognizer, settings: AsrSettings, slots: DecodeSlots,
                 config: asr_pb2.RecognitionConfig, options: DecodeOptions) -> None:
        self.recognizer = recognizer
        self.settings = settings
        self.slots = slots
        self.config = config
        self.options = options
        self.rate_hz = config.format.sample_rate_hz
        self.encoding = config.format.encoding
        self.outgoing: asyncio.Queue = asyncio.Queue()
        self.detector = SpeechDetector()
        self._detector_backlog: list[np.ndarray] = []
        self._detector_backlog_samples = 0
        self._detector_block = max(1, int(self.rate_hz * DETECTOR_BLOCK_S))
        # Audio since the last final, at the wire's rate.
        self._pending: list[np.ndarray] = []
        self._pending_samples = 0
        # Samples before the pending utterance (all finalised audio).
        self._utterance_start = 0
        self._utterance_epoch = 0
        self._interim_task: asyncio.Task | None = None
        self._interim_decoded_samples = 0
        self._previous_interim: list[str] = []
        self.finals = 0

    @property
    def received_samples(self) -> int:
        return self._utterance_start + self._pending_samples

    # -- requests ----------------------------------------------------------------------------------
    async def consume(self, requests: AsyncIterator[asr_pb2.RecognizeRequest]) -> None:
        """Process every request after the config, then finalise at half-close; reports on `outgoing`."""
        try:
            async for request in requests:
                kind = request.WhichOneof("request")
                if kind == "audio":
                    await self._on_audio(request.audio)
                elif kind == "control":
                    if request.control.action != asr_pb2.RecognitionControl.ACTION_FLUSH:
                        raise StreamError(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"control action {request.control.action} is unknown: send ACTION_FLUSH",
                        )
                    await self._finalise(time.perf_counter())
                elif kind == "config":
                    raise StreamError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "config was already sent: send it once, as the first request, then audio or control",
                    )
                else:
                    raise StreamError(
                        grpc.StatusCode.INVALID_ARGUMENT, "empty RecognizeRequest: set one of config, audio, control"
                    )
            # Half-close: whatever arrived since the last final is finalised.
            requested_at = time.perf_counter()
            self._feed_detector(flush=True)
            self._emit_speech_events(self.detector.finish())
            if self._pending_samples:
                await self._finalise(requested_at)
            await self.outgoing.put(_END)
        except StreamError as err:
            await self.outgoing.put(err)
        except Exception as err:  # noqa: BLE001 - any failure ends this stream, never the process
            ERRORS.labels("asr", "stream").inc()
            log.exception("stream failed", extra={"call_id": self.config.call.call_id, "error": type(err).__name__})
            await self.outgoing.put(StreamError(
                grpc.StatusCode.INTERNAL,
                f"asr failed while recognising ({type(err).__name__}): retry the turn; if it persists, see the asr log",
            ))

    async def _on_audio(self, payload: bytes) -> None:
        if not payload:
            return
        try:
            samples = audio.decode(payload, self.encoding)
        except audio.AudioError as err:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None
        if (self.received_samples + samples.shape[0]) / self.rate_hz > self.settings.max_stream_s:
            raise StreamError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"stream exceeded the maximum of {self.settings.max_stream_s:g} s of audio: open a new Recognize "
                "stream (or raise asr.max_stream_s)",
            )
        self._pending.append(samples)
        self._pending_samples += samples.shape[0]
        self._detector_backlog.append(samples)
        self._detector_backlog_samples += samples.shape[0]
        if self._detector_backlog_samples >= self._detector_block:
            self._feed_detector()
        if self._pending_samples / self.rate_hz >= self.settings.max_utterance_s:
            await self._finalise(time.perf_counter())
        else:
            self._maybe_start_interim()

    # -- speech events -------------------------------------------------------------------------------
    def _feed_detector(self, flush: bool = False) -> None:
        if not self._detector_backlog or (not flush and self._detector_backlog_samples < self._detector_block):
            return
        block = np.concatenate(self._detector_backlog)
        self._detector_backlog, self._detector_backlog_samples = [], 0
        self._emit_speech_events(self.detector.feed(audio.resample(block, self.rate_hz, SAMPLE_RATE_HZ)))

    def _emit_speech_events(self, events: list[tuple[int, int]]) -> None:
        for kind, offset_ms in events:
            event_kind = (asr_pb2.SpeechEvent.KIND_SPEECH_STARTED if kind == SPEECH_STARTED
                          else asr_pb2.SpeechEvent.KIND_SPEECH_STOPPED)
            event = asr_pb2.SpeechEvent(kind=event_kind, offset_ms=offset_ms)
            self.outgoing.put_nowait(_Outgoing(asr_pb2.RecognizeResponse(speech_event=event)))

    def _utterance_has_speech(self) -> bool:
        return self.detector.peak_probability >= SpeechDetector.THRESHOLD

    # -- interim hypotheses --------------------------------------------------------------------------
    def _maybe_start_interim(self) -> None:
        if not self.config.interim_results or (self._interim_task and not self._interim_task.done()):
            return
        if (self._pending_samples - self._interim_decoded_samples) / self.rate_hz < self.settings.interim_interval_s:
            return
        # Skip silence, and leave the slots to finals when they are all busy.
        if not self._utterance_has_speech() or self.slots.busy:
            return
        self._interim_decoded_samples = self._pending_samples
        self._interim_task = asyncio.create_task(
            self._interim(list(self._pending), self._pending_samples, self._utterance_epoch)
        )

    async def _interim(self, chunks: list[np.ndarray], samples: int, epoch: int) -> None:
        def decode() -> list[str]:
            return self.recognizer.transcribe_interim(_decode_utterance(chunks, self.rate_hz), self.options)

        try:
            words = await self.slots.run(decode, wait=False)
        except Exception as err:  # noqa: BLE001 - an interim is best effort; the final still comes
            ERRORS.labels("asr", "interim").inc()
            log.warning("interim decode failed", extra={"call_id": self.config.call.call_id,
                                                         "error": type(err).__name__})
            return
        if not words or epoch != self._utterance_epoch:
            return
        stable = stable_prefix_length(self._previous_interim, words)
        self._previous_interim = words
        hypothesis = asr_pb2.Hypothesis(
            stable_text=" ".join(words[:stable]),
            unstable_text=" ".join(words[stable:]),
            is_final=False,
            language=self.options.language or "",
            audio_start_ms=_samples_to_ms(self._utterance_start, self.rate_hz),
            audio_end_ms=_samples_to_ms(self._utterance_start + samples, self.rate_hz),
        )
        await self.outgoing.put(_Outgoing(asr_pb2.RecognizeResponse(hypothesis=hypothesis)))

    # -- finals --------------------------------------------------------------------------------------
    async def _finalise(self, requested_at: float) -> None:
        """Decode everything pending and queue the final (empty when there was no speech)."""
        if self._interim_task and not self._interim_task.done():
            # One decode at a time per stream; the interim's result still goes out before the final.
            await self._interim_task
        self._feed_detector(flush=True)
        chunks, start, samples = self._pending, self._utterance_start, self._pending_samples
        has_speech = self._utterance_has_speech()
        self._pending, self._pending_samples = [], 0
        self._utterance_start += samples
        self._utterance_epoch += 1
        self._interim_decoded_samples = 0
        self._previous_interim = []
        self.detector.reset_peak()

        if samples and has_speech:
            def decode() -> Transcript:
                return self.recognizer.transcribe_final(_decode_utterance(chunks, self.rate_hz), self.options)

            transcript = await self.slots.run(decode)
        else:
            # No window reached the VAD threshold: the VAD-filtered decode would find nothing either.
            transcript = Transcript(text="", words=(), language=self.options.language or "", confidence=0.0)
        self.finals += 1
        start_ms = _samples_to_ms(start, self.rate_hz)
        hypothesis = asr_pb2.Hypothesis(
            stable_text=transcript.text,
            is_final=True,
            confidence=transcript.confidence,
            language=transcript.language,
            words=[
                asr_pb2.WordTiming(
                    word=word.text,
                    start_ms=start_ms + round(word.start_s * 1000),
                    end_ms=start_ms + round(word.end_s * 1000),
                    probability=word.probability,
                )
                for word in transcript.words
            ],
            audio_start_ms=start_ms,
            audio_end_ms=_samples_to_ms(start + samples, self.rate_hz),
        )
        await self.outgoing.put(_Outgoing(asr_pb2.RecognizeResponse(hypothesis=hypothesis), requested_at))

    def close(self) -> None:
        """Drop the buffered audio at once (the stream ended or was cancelled)."""
        if self._interim_task:
            self._interim_task.cancel()
        self._pending, self._pending_samples = [], 0
        self._detector_backlog, self._detector_backlog_samples = [], 0


class AsrServicer(asr_pb2_grpc.AsrServicer):
    """Implements quietline.v1.Asr over one shared Recognizer."""

    def __init__(self, recognizer: Recognizer, settings: AsrSettings) -> None:
        self.recognizer = recognizer
        self.settings = settings
        self.slots = DecodeSlots(settings.max_concurrent_decodes)

    def _stream_options(self, config: asr_pb2.RecognitionConfig) -> DecodeOptions:
        try:
            audio.check_format(config.format)
        except audio.AudioError as err:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, f"config.format: {err}") from None
        try:
            return self.recognizer.decode_options(
                config.language or self.settings.language, _MODE_NAMES.get(config.mode, "general"),
                list(config.hotwords),
            )
        except RecognitionError as err:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None

    async def Recognize(self, request_iterator, context: grpc.aio.ServicerContext):  # noqa: N802 - gRPC name
        """Recognise one stream: config first, then audio and controls; hypotheses and events back."""
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("request") != "config":
            got = "nothing" if first is None else (first.WhichOneof("request") or "an empty request")
            ERRORS.labels("asr", "invalid_argument").inc()
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the first RecognizeRequest must carry `config` (got {got}): send the RecognitionConfig first, "
                "then audio",
            )
        config = first.config
        call_id, turn = config.call.call_id, config.call.turn
        try:
            options = self._stream_options(config)
        except StreamError as err:
            ERRORS.labels("asr", "invalid_argument").inc()
            await context.abort(err.code, str(err))

        stream = RecognitionStream(self.recognizer, self.settings, self.slots, config, options)
        log.info("stream opened", extra={
            "call_id": call_id, "turn": turn, "encoding": config.format.encoding,
            "sample_rate_hz": stream.rate_hz, "interim_results": config.interim_results,
            "mode": config.mode, "language": options.language or "detect",
        })
        consumer = asyncio.create_task(stream.consume(requests), name=f"asr-consume-{call_id}")
        outcome = "cancelled"
        try:
            while True:
                item = await stream.outgoing.get()
                if item is _END:
                    outcome = "ok"
                    return
                if isinstance(item, StreamError):
                    outcome = item.code.name
                    if item.code != grpc.StatusCode.INTERNAL:
                        ERRORS.labels("asr", item.code.name.lower()).inc()
                    await context.abort(item.code, str(item))
                if item.requested_at is not None:
                    latency_s = time.perf_counter() - item.requested_at
                    STAGE_LATENCY.labels("asr", "final").observe(latency_s)
                    log.info("final", extra={
                        "call_id": call_id, "turn": turn, "latency_ms": round(latency_s * 1000, 1),
                        "audio_ms": item.response.hypothesis.audio_end_ms - item.response.hypothesis.audio_start_ms,
                    })
                yield item.response
        finally:
            consumer.cancel()
            log.info("stream closed", extra={
                "call_id": call_id, "turn": turn, "outcome": outcome, "finals": stream.finals,
                "audio_s": round(stream.received_samples / stream.rate_hz, 2),
            })
            stream.close()
