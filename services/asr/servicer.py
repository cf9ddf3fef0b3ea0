"""The grpc.aio servicer of quietline.v1.Asr: one bidirectional Recognize stream per call leg.

Per stream, audio is decoded from the wire format and a streaming Silero VAD emits SpeechEvents as
it arrives. The utterance is decoded incrementally while the caller speaks (services.asr.incremental:
LocalAgreement over a window of at most `asr.max_window_s`): a decode starts after each
`asr.interim_interval_s` of new speech and as soon as the voice pauses, so when the client's turn
model asks for the final (ACTION_FLUSH, or its half-close) the latest decode has usually heard all
the speech already and the final is sent at once; otherwise one more decode of the window makes it.
Each decode gives an interim Hypothesis (with `interim_results`): committed words as `stable_text`,
the rest as `unstable_text`. An utterance longer than `asr.max_utterance_s` is finalised on its own.

Decodes of all streams share `asr.max_concurrent_decodes` slots, finals first, then decodes at a
pause, then regular interim decodes (skipped when no slot or batch place is free), so interims never
delay a final. Decodes waiting at the same moment run as one batch of up to `asr.max_decode_batch`
windows (the gpu profile; services.asr.batch_decoding), so a GPU serves many streams at once.
A client sending faster than real time is read only as fast as its window is decoded (gRPC flow
control holds the rest), and a process serves at most `asr.max_streams` streams: one more is
refused with RESOURCE_EXHAUSTED at once.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
from prometheus_client import Histogram

from quietline.v1 import asr_pb2, asr_pb2_grpc
from services.asr import digits
from services.asr.incremental import IncrementalTranscript, WindowRequest, join_words
from services.asr.languages import RecognizerSet
from services.asr.recognizer import (
    SAMPLE_RATE_HZ,
    SPEECH_STARTED,
    DecodeOptions,
    RecognitionError,
    Recognizer,
    SpeechDetector,
    Transcript,
    WindowJob,
)
from services.kit import audio
from services.kit.config import AsrSettings
from services.kit.metrics import ERRORS, STAGE_LATENCY

log = logging.getLogger("quietline.asr")

DECODE_BATCH_SIZE = Histogram(
    "quietline_asr_decode_batch_size", "Stream windows decoded together in one pass of the model.",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)

T = TypeVar("T")
R = TypeVar("R")

# Audio is handed to the speech detector in blocks of this length (one ONNX call per block).
DETECTOR_BLOCK_S = 0.05
# A decode starts once the voice has paused this long after speech no decode has heard yet, so that the
# final is ready if the caller's turn ends there.
PAUSE_DECODE_S = 0.2
# The first decode of an utterance comes this long after its speech started (then every interim interval).
FIRST_DECODE_S = 0.5
# The final reuses the latest decode when it heard at least this much audio after the last voiced window.
HEARD_MARGIN_S = 0.15
# Audio is taken in pieces of at most this length, so one large chunk cannot overshoot the window bound.
MAX_PIECE_S = 0.5
# Regular interim decodes (after an utterance's first) start only while the decode slots were busy less
# than this share of the last UTILISATION_WINDOW_S: the rest is kept for pause decodes and finals.
INTERIM_UTILISATION = 0.5
UTILISATION_WINDOW_S = 5.0
# In a capture turn (digits, ids) the caller was asked for an answer, so a faint utterance is decoded too:
# a short narrowband digit can peak well below the detector's threshold (digits8k), silence and line hiss
# stay far below this.
CAPTURE_SPEECH_PEAK = 0.15
# Responses queued for a client that does not read them; interims beyond this are not queued.
MAX_QUEUED_RESPONSES = 64
_MODE_NAMES = {
    asr_pb2.RECOGNITION_MODE_DIGITS: "digits",
    asr_pb2.RECOGNITION_MODE_ALPHANUMERIC: "alphanumeric",
    asr_pb2.RECOGNITION_MODE_YES_NO: "yes_no",
}


class DecodeSlots:
    """The process-wide limit on concurrent decodes, served by priority and batched across streams.

    A decode waits for one of `slots` worker threads. When a slot frees, the waiting decode of highest
    priority (FINAL, then PAUSE, then INTERIM; first come first served within one) starts, together
    with up to `max_batch` - 1 more waiting decodes of the same runner (the same model), taken in the
    same order: one batch, one thread, one pass of the model (services.asr.batch_decoding). With
    `max_batch` 1 (the cpu profile) every decode runs alone. A slot is held until its thread finishes,
    even when the streams that asked are cancelled: the thread cannot be stopped, and letting another
    batch start beside it would oversubscribe the device.
    """

    FINAL, PAUSE, INTERIM = 0, 1, 2

    def __init__(self, slots: int, max_batch: int = 1) -> None:
        self.slots = slots
        self.max_batch = max_batch
        self._free = slots
        # (priority, order, runner, item, future of the item's result)
        self._waiters: list[tuple[int, int, Callable, Any, asyncio.Future]] = []
        self._order = itertools.count()
        # (start, end) of recent batches (end None while running), for utilisation().
        self._recent: deque[list] = deque()

    @property
    def busy(self) -> bool:
        """No slot is free and the next batch is full: a decode asked for now would wait for a whole batch."""
        return self._free == 0 and not self._joinable()

    def _joinable(self) -> bool:
        return self.max_batch > 1 and len(self._waiters) < self.max_batch

    def utilisation(self, window_s: float = UTILISATION_WINDOW_S) -> float:
        """The share of the slots' time spent decoding over the last `window_s` seconds."""
        now = time.perf_counter()
        while self._recent and self._recent[0][1] is not None and self._recent[0][1] < now - window_s:
            self._recent.popleft()
        busy_s = sum(max(0.0, min(now, end or now) - max(start, now - window_s)) for start, end in self._recent)
        return busy_s / (window_s * self.slots)

    async def decode(self, runner: Callable[[list[T]], list[R]], item: T, priority: int = FINAL,
                     wait: bool = True) -> R | None:
        """`runner([item, ...])[i]` for this item, in a batch with other waiting items of the same runner.

        With wait=False (interim decodes), None at once unless a slot is free or the item can still
        join the next batch.
        """
        if not wait and self._free == 0 and not self._joinable():
            return None
        result = asyncio.get_running_loop().create_future()
        entry = (priority, next(self._order), runner, item, result)
        heapq.heappush(self._waiters, entry)
        self._dispatch()
        try:
            return await result
        except asyncio.CancelledError:
            if entry in self._waiters:  # not started yet: leave the queue
                self._waiters.remove(entry)
                heapq.heapify(self._waiters)
            raise

    def _dispatch(self) -> None:
        """Start batches while slots are free and decodes wait."""
        while self._free and self._waiters:
            leader = heapq.heappop(self._waiters)
            batch = [leader]
            for entry in sorted(self._waiters):
                if len(batch) == self.max_batch:
                    break
                if entry[2] == leader[2]:
                    batch.append(entry)
            if len(batch) > 1:
                self._waiters = [entry for entry in self._waiters if entry not in batch]
                heapq.heapify(self._waiters)
            self._free -= 1
            record = [time.perf_counter(), None]
            self._recent.append(record)
            DECODE_BATCH_SIZE.observe(len(batch))
            task = asyncio.ensure_future(asyncio.to_thread(leader[2], [entry[3] for entry in batch]))
            task.add_done_callback(lambda done, batch=batch, record=record: self._finished(done, batch, record))

    def _finished(self, task: asyncio.Future, batch: list[tuple], record: list) -> None:
        record[1] = time.perf_counter()
        self._free += 1
        error = task.exception() if not task.cancelled() else asyncio.CancelledError()
        for index, (*_, result) in enumerate(batch):
            if result.done():  # its stream went away meanwhile
                continue
            if error is not None:
                result.set_exception(error)
            else:
                result.set_result(task.result()[index])
        self._dispatch()


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
    # For finals: how it was made (decodes of the utterance, and whether one ran after the request).
    log_fields: dict | None = None


_END = object()


def _samples_to_ms(samples: int, rate_hz: int) -> int:
    return samples * 1000 // rate_hz


class RecognitionStream:
    """The state of one Recognize call: speech detector, the utterance being decoded, its decodes."""

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
        self._detector_fed = 0
        # (stream sample at the end of a chunk, when it arrived), for the chunks the detector may still
        # look back into: when speech started, for the first-interim latency.
        self._arrivals: deque[tuple[int, float]] = deque()
        # Where the utterance's speech started, and when that audio arrived (until its first interim).
        self._speech_started_sample: int | None = None
        self._speech_started_at: float | None = None
        self.received_samples = 0
        self.utterance = IncrementalTranscript(self.rate_hz, 0, settings.max_window_s)
        self._utterance_epoch = 0
        self._decode_task: asyncio.Task | None = None
        # End of the window the latest decode was started on.
        self._decode_started_until = 0
        self._piece = max(1, int(self.rate_hz * MAX_PIECE_S))
        self.finals = 0
        self.decodes = 0

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
            if self.received_samples > self.utterance.start_sample:
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
        arrived_at = time.perf_counter()
        # In pieces, so that one large chunk cannot take the window past its bound.
        for start in range(0, samples.shape[0], self._piece):
            self._take(samples[start:start + self._piece], arrived_at)
            utterance_s = (self.received_samples - self.utterance.start_sample) / self.rate_hz
            if utterance_s >= self.settings.max_utterance_s:
                await self._finalise(time.perf_counter())
                continue
            if self.utterance.window_samples > self.utterance.max_window_samples:
                await self._make_room()
            self._maybe_decode()

    def _take(self, samples: np.ndarray, arrived_at: float) -> None:
        self.received_samples += samples.shape[0]
        self.utterance.append(samples)
        self._arrivals.append((self.received_samples, arrived_at))
        self._detector_backlog.append(samples)
        self._detector_backlog_samples += samples.shape[0]
        if self._detector_backlog_samples >= self._detector_block:
            self._feed_detector()

    # -- speech events -------------------------------------------------------------------------------
    def _feed_detector(self, flush: bool = False) -> None:
        if not self._detector_backlog or (not flush and self._detector_backlog_samples < self._detector_block):
            return
        block = np.concatenate(self._detector_backlog)
        self._detector_backlog, self._detector_backlog_samples = [], 0
        self._detector_fed += block.shape[0]
        self._emit_speech_events(self.detector.feed(audio.resample(block, self.rate_hz, SAMPLE_RATE_HZ)))
        # The detector looks back a few windows at most: older arrival times are not needed.
        while len(self._arrivals) > 1 and self._arrivals[1][0] < self._detector_fed - self.rate_hz:
            self._arrivals.popleft()

    def _emit_speech_events(self, events: list[tuple[int, int]]) -> None:
        for kind, offset_ms in events:
            if kind == SPEECH_STARTED:
                event_kind = asr_pb2.SpeechEvent.KIND_SPEECH_STARTED
                if self._speech_started_sample is None:  # the utterance's first speech
                    self._speech_started_sample = max(self.utterance.start_sample, offset_ms * self.rate_hz // 1000)
                    self._speech_started_at = self._arrival_of(self._speech_started_sample)
            else:
                event_kind = asr_pb2.SpeechEvent.KIND_SPEECH_STOPPED
            event = asr_pb2.SpeechEvent(kind=event_kind, offset_ms=offset_ms)
            self.outgoing.put_nowait(_Outgoing(asr_pb2.RecognizeResponse(speech_event=event)))

    def _arrival_of(self, sample: int) -> float:
        """When the chunk holding stream sample `sample` arrived (the oldest one known if it is older)."""
        for end, arrived_at in self._arrivals:
            if end > sample:
                return arrived_at
        return self._arrivals[-1][1] if self._arrivals else time.perf_counter()

    def _utterance_has_speech(self) -> bool:
        if self.options.mode in digits.CONSTRAINED_MODES:
            return self.detector.peak_probability >= CAPTURE_SPEECH_PEAK
        return self.detector.peak_probability >= SpeechDetector.THRESHOLD

    def _voiced_until(self) -> int:
        """The stream sample where the last voiced VAD window ends."""
        return self.detector.voiced_until_ms * self.rate_hz // 1000

    # -- decodes while audio arrives -----------------------------------------------------------------
    def _decoding(self) -> bool:
        return self._decode_task is not None and not self._decode_task.done()

    def _maybe_decode(self) -> None:
        """Start a decode when speech arrived since the last one and either a pause or enough audio followed."""
        if self._decoding():
            return
        voiced_until = self._voiced_until()
        if voiced_until <= self._decode_started_until:
            return  # nothing said since the last decode
        quiet_ms = self.detector.evaluated_ms - self.detector.voiced_until_ms
        if quiet_ms >= PAUSE_DECODE_S * 1000:
            # The voice paused: decode now, so the final is ready if the turn ends here.
            self._start_decode(DecodeSlots.PAUSE)
        elif quiet_ms == 0 and self.utterance.end_sample >= self._next_decode_at() and not self.slots.busy and (
                self.utterance.decodes == 0 or self.slots.utilisation() < INTERIM_UTILISATION):
            # Only while the voice is on: in a gap, the pause decode above comes instead, and it is the
            # one that can serve the final if the turn ends in this gap. And only while the slots have
            # time to spare, so that a pause decode or a final rarely waits for an interim.
            self._start_decode(DecodeSlots.INTERIM)

    def _next_decode_at(self) -> int:
        """The stream sample the next regular decode waits for."""
        if self.utterance.decodes == 0 and self._speech_started_sample is not None:
            return self._speech_started_sample + int(FIRST_DECODE_S * self.rate_hz)
        return self._decode_started_until + int(self.settings.interim_interval_s * self.rate_hz)

    def _start_decode(self, priority: int) -> asyncio.Task:
        request = self.utterance.request()
        self._decode_started_until = request.end_sample
        self._decode_task = asyncio.create_task(self._decode(request, priority, self._utterance_epoch))
        return self._decode_task

    def _window_job(self, request: WindowRequest, final: bool = False) -> WindowJob:
        return WindowJob(request.samples, self.options, request.previous_text, final=final, rate_hz=self.rate_hz)

    async def _decode(self, request: WindowRequest, priority: int, epoch: int) -> None:
        try:
            transcript = await self.slots.decode(self.recognizer.transcribe_windows, self._window_job(request),
                                                 priority=priority, wait=priority != DecodeSlots.INTERIM)
        except Exception as err:  # noqa: BLE001 - best effort while audio arrives; the final still comes
            ERRORS.labels("asr", "interim").inc()
            log.warning("interim decode failed", extra={"call_id": self.config.call.call_id,
                                                         "error": type(err).__name__})
            return
        if transcript is None:
            self._decode_started_until = self.utterance.decoded_until  # no slot: try again with the next audio
            return
        if epoch != self._utterance_epoch:
            return
        self.decodes += 1
        self.utterance.apply(request, transcript.words, transcript.language)
        self._send_interim()

    def _send_interim(self) -> None:
        utterance = self.utterance
        if not self.config.interim_results or (not utterance.committed and not utterance.hypothesis):
            return
        if self.outgoing.qsize() >= MAX_QUEUED_RESPONSES:
            return  # the client is not reading: an interim would only be stale when it gets there
        hypothesis = asr_pb2.Hypothesis(
            stable_text=digits.format_final(join_words(utterance.committed), self.options.mode),
            unstable_text=digits.format_final(join_words(utterance.hypothesis), self.options.mode),
            is_final=False,
            language=utterance.language or self.options.language or "",
            audio_start_ms=_samples_to_ms(utterance.start_sample, self.rate_hz),
            audio_end_ms=_samples_to_ms(utterance.decoded_until, self.rate_hz),
        )
        self.outgoing.put_nowait(_Outgoing(asr_pb2.RecognizeResponse(hypothesis=hypothesis)))
        if self._speech_started_at is not None:
            STAGE_LATENCY.labels("asr", "first_interim").observe(time.perf_counter() - self._speech_started_at)
            self._speech_started_at = None

    async def _make_room(self) -> None:
        """The window is full (audio arrives faster than it is decoded): decode before taking more.

        The stream reads no more requests meanwhile, so gRPC flow control slows the client down.
        """
        if self._decoding():
            await self._decode_task
        if self.utterance.window_samples <= self.utterance.max_window_samples:
            return
        self._feed_detector(flush=True)
        if self._voiced_until() > self.utterance.decoded_until:
            await self._start_decode(DecodeSlots.PAUSE)
        # All the speech in the window has been decoded now; what the detector judged after it is silence.
        evaluated_until = self.detector.evaluated_ms * self.rate_hz // 1000
        self.utterance.bound(max(self.utterance.decoded_until, min(self.utterance.end_sample, evaluated_until)))

    # -- finals --------------------------------------------------------------------------------------
    async def _finalise(self, requested_at: float) -> None:
        """Finish the utterance and queue its final (empty when there was no speech)."""
        if self._decoding():
            # One decode at a time per stream; its interim still goes out before the final.
            await self._decode_task
        self._feed_detector(flush=True)
        utterance = self.utterance
        end = self.received_samples
        has_speech = self._utterance_has_speech()
        self._utterance_epoch += 1
        self.utterance = IncrementalTranscript(self.rate_hz, end, self.settings.max_window_s)
        self._decode_started_until = end
        self._speech_started_sample = self._speech_started_at = None
        self.detector.reset_peak()

        words, language, decoded_at_final = [], utterance.language, False
        if has_speech and end > utterance.start_sample:
            heard_speech = utterance.has_heard(min(end, self._voiced_until() + int(HEARD_MARGIN_S * self.rate_hz)))
            # A stream still detecting its language lets a final decode settle it (services.asr.languages).
            detecting = self.options.detection is not None and self.options.detection.language is None
            if heard_speech and not detecting:
                words = utterance.final_words()
            else:
                request = utterance.request()
                transcript = await self.slots.decode(self.recognizer.transcribe_windows,
                                                     self._window_job(request, final=True), priority=DecodeSlots.FINAL)
                words = utterance.final_words(request, transcript.words)
                language = transcript.language or language
                decoded_at_final = True
        transcript = Transcript(
            # A capture mode's final is its normalised answer ("4711", "W4711B", "yes"); words keep what was heard.
            text=digits.format_final(join_words(words), self.options.mode), words=tuple(words),
            language=language or self.options.language or "",
            confidence=float(np.mean([w.probability for w in words])) if words else 0.0,
        )
        self.finals += 1
        hypothesis = asr_pb2.Hypothesis(
            stable_text=transcript.text,
            is_final=True,
            confidence=transcript.confidence,
            language=transcript.language,
            words=[
                asr_pb2.WordTiming(
                    word=word.text, start_ms=round(word.start_s * 1000), end_ms=round(word.end_s * 1000),
                    probability=word.probability,
                )
                for word in transcript.words
            ],
            audio_start_ms=_samples_to_ms(utterance.start_sample, self.rate_hz),
            audio_end_ms=_samples_to_ms(end, self.rate_hz),
        )
        await self.outgoing.put(_Outgoing(
            asr_pb2.RecognizeResponse(hypothesis=hypothesis), requested_at,
            {"decodes": utterance.decodes + decoded_at_final, "decoded_at_final": decoded_at_final},
        ))

    def close(self) -> None:
        """Drop the buffered audio at once (the stream ended or was cancelled)."""
        if self._decode_task:
            self._decode_task.cancel()
        self.utterance = IncrementalTranscript(self.rate_hz, self.received_samples, self.settings.max_window_s)
        self._detector_backlog, self._detector_backlog_samples = [], 0
        self._arrivals.clear()


async def _prepended(first: T | None, rest: AsyncIterator[T]) -> AsyncIterator[T]:
    """`first` (unless None) followed by `rest`."""
    if first is not None:
        yield first
    async for item in rest:
        yield item


class AsrServicer(asr_pb2_grpc.AsrServicer):
    """Implements quietline.v1.Asr over the process's shared models (one Recognizer per model)."""

    def __init__(self, recognizers: RecognizerSet, settings: AsrSettings) -> None:
        self.recognizers = recognizers
        self.settings = settings
        self.slots = DecodeSlots(settings.max_concurrent_decodes, settings.max_decode_batch)
        self.open_streams = 0

    def _stream_options(self, config: asr_pb2.RecognitionConfig) -> tuple[Recognizer, DecodeOptions]:
        try:
            audio.check_format(config.format)
        except audio.AudioError as err:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, f"config.format: {err}") from None
        try:
            # The hint picks the model (English or multilingual) and the language, or detection.
            return self.recognizers.decode_options(
                config.language, _MODE_NAMES.get(config.mode, "general"), list(config.hotwords),
                call_id=config.call.call_id,
            )
        except RecognitionError as err:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None

    async def Recognize(self, request_iterator, context: grpc.aio.ServicerContext):  # noqa: N802 - gRPC name
        """Recognise one stream: config first, then audio and controls; hypotheses and events back.

        Beyond `asr.max_streams` open streams, refused with RESOURCE_EXHAUSTED as soon as the config
        arrives (refusing before reading it would race the client's first write, and grpc.aio clients
        then report INTERNAL instead of the status: grpc/grpc#36066).
        """
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if self.open_streams >= self.settings.max_streams:
            ERRORS.labels("asr", "resource_exhausted").inc()
            log.warning("stream refused", extra={"open_streams": self.open_streams,
                                                 "max_streams": self.settings.max_streams})
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"asr is at capacity: {self.open_streams} Recognize streams are open and asr.max_streams is "
                f"{self.settings.max_streams}: retry shortly or use another asr instance, or raise asr.max_streams "
                "if this host has the CPU for more",
            )
        self.open_streams += 1
        try:
            async for response in self._recognize(_prepended(first, requests), context):
                yield response
        finally:
            self.open_streams -= 1

    async def _recognize(self, request_iterator, context: grpc.aio.ServicerContext):
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
            recognizer, options = self._stream_options(config)
        except StreamError as err:
            ERRORS.labels("asr", "invalid_argument").inc()
            await context.abort(err.code, str(err))

        stream = RecognitionStream(recognizer, self.settings, self.slots, config, options)
        log.info("stream opened", extra={
            "call_id": call_id, "turn": turn, "encoding": config.format.encoding,
            "sample_rate_hz": stream.rate_hz, "interim_results": config.interim_results,
            "mode": config.mode, "model": recognizer.model_name, "language": options.language or "detect",
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
                        **(item.log_fields or {}),
                    })
                yield item.response
        finally:
            consumer.cancel()
            log.info("stream closed", extra={
                "call_id": call_id, "turn": turn, "outcome": outcome, "finals": stream.finals,
                "audio_s": round(stream.received_samples / stream.rate_hz, 2),
            })
            stream.close()
